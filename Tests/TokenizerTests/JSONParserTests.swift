import Foundation
import Testing
@testable import Tokenizer

/// The tokenizer's own JSON reader, against inputs whose meaning is fixed by RFC 8259.
@Suite struct JSONParserTests {
    private func parse(_ text: String) throws -> JSONValue {
        let bytes = Array(text.utf8)
        return try bytes.withUnsafeBytes { buffer in
            try Result { () throws(JSONParseError) -> JSONValue in try JSONParser.parse(buffer) }.get()
        }
    }

    private func parseError(_ text: String) -> JSONParseError? {
        do {
            _ = try parse(text)
            return nil
        } catch {
            return error as? JSONParseError
        }
    }

    @Test func decodesEscapesAndSurrogatePairs() throws {
        let value = try parse(#"["a\"b\\c\/d\n\t\r\b\f", "\u0120t", "\ud83e\udd99", "\ud800x", "raw ✅ é"]"#)
        guard case .array(let items) = value else { Issue.record("not an array"); return }
        let strings = items.compactMap { item -> String? in
            if case .string(let s) = item { return s }
            return nil
        }
        #expect(strings == ["a\"b\\c/d\n\t\r\u{8}\u{c}", "\u{120}t", "🦙", "\u{FFFD}x", "raw ✅ é"])
    }

    @Test func readsNumbersLiteralsAndNesting() throws {
        let value = try parse(#" {"i": -12, "d": 1.5e3, "t": true, "f": false, "n": null, "o": {"a": [1, [2]]}, "i": 7} "#)
        guard case .object(let object) = value else { Issue.record("not an object"); return }
        guard case .int(7)? = object["i"] else { Issue.record("duplicate key should take the last value"); return }
        guard case .double(1500)? = object["d"] else { Issue.record("d"); return }
        guard case .bool(true)? = object["t"], case .bool(false)? = object["f"], case .null? = object["n"] else {
            Issue.record("literals")
            return
        }
        guard case .object(let inner)? = object["o"], case .array(let list)? = inner["a"], list.count == 2 else {
            Issue.record("nesting")
            return
        }
    }

    @Test(arguments: [
        ("{\"a\": 1,}", 8), ("[1 2]", 3), ("{\"a\" 1}", 5), ("\"unterminated", 13), ("[tru]", 1), ("{} x", 3),
        ("[\"\\q\"]", 2), ("[-]", 2), ("", 0),
    ])
    func rejectsMalformedInputWithOffset(text: String, offset: Int) {
        let error = parseError(text)
        #expect(error != nil, "accepted \(text.debugDescription)")
        #expect(error?.offset == offset, "\(text.debugDescription): \(String(describing: error))")
    }
}
