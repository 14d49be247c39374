// libFuzzer target: StrictJSONParser, both lone-surrogate policies. Built by Scripts/fuzz.sh.
// Invariants: no input traps or overflows; what the strict policy accepts, the lenient one accepts too; an error's
// offset lies inside the input; every string parsed re-encodes (appendJSONString) to text that parses back to it.
import FuzzDriver
import StrictJSON

runFuzzer(fuzz)

func fuzz(_ bytes: UnsafeRawBufferPointer) {
    let size = bytes.count
    let strict = Result { () throws(JSONParseError) -> JSONNode in try StrictJSONParser.parse(bytes) }
    let lenient = Result { () throws(JSONParseError) -> JSONNode in
        try StrictJSONParser.parse(bytes, loneSurrogates: .replaceWithU_FFFD)
    }
    // Whatever the strict policy accepts, the lenient one accepts too (it only turns lone surrogates into U+FFFD).
    if case .success = strict, case .failure(let error) = lenient {
        fatalError("accepted with lone surrogates rejected, refused when replaced: \(error)")
    }
    if case .failure(let error) = strict {
        precondition(error.offset >= 0 && error.offset <= size, "error offset \(error.offset) outside the \(size)-byte input")
    }
    if case .success(let node) = strict { _ = walk(node) }
}

/// Touches every value (strings, keys), so a malformed String the parser built would show up under ASan.
private func walk(_ node: JSONNode) -> Int {
    switch node {
    case .object(let members): return members.reduce(1) { $0 + $1.key.utf8.count + walk($1.value) }
    case .array(let items): return items.reduce(1) { $0 + walk($1) }
    case .string(let text):
        // The string encoder's output parses back to the same string.
        var encoded: [UInt8] = []
        appendJSONString(text, to: &encoded)
        let back = encoded.withUnsafeBytes { try? StrictJSONParser.parse($0) }
        guard case .string(let decoded)? = back, decoded == text else {
            fatalError("appendJSONString(\(text.debugDescription)) does not parse back to the same string")
        }
        return text.utf8.count
    case .number(let text): return text.utf8.count
    case .integer, .bool, .null: return 1
    }
}
