import Foundation
import Testing
@testable import Calibration

@Suite struct JSONLineParserTests {
    @Test func parsesObjectsArraysAndScalars() throws {
        let value = try JSONLineParser.parse(#" {"a": [1, -0, 2.5, 1e3, 1.0, true, null, "x\"\u00e9\ud83d\ude00\n"], "b": {}} "#)
        #expect(value == .object([
            (key: "a", value: .array([.integer(1), .integer(0), .float(2.5), .float(1000), .float(1), .bool(true), .null,
                                      .string("x\"é😀\n")])),
            (key: "b", value: .object([])),
        ]))
    }

    @Test func integerBeyondInt64IsNotAnInteger() throws {
        #expect(try JSONLineParser.parse("99999999999999999999") == .float(1e20))
        #expect(try JSONLineParser.parse("-9223372036854775808") == .integer(Int64.min))
    }

    @Test(arguments: [
        ("[1,]", 4), ("{\"a\":1,}", 8), ("{\"a\" 1}", 6), ("[01]", 3), ("[1.]", 4), ("\"abc", 5), ("tru", 1),
        ("{} {}", 4), ("[\"\\x\"]", 3), ("[\"\\ud800\"]", 9), ("'a'", 1), ("", 1), ("[1 2]", 4),
    ])
    func rejectsInvalidJSON(text: String, column: Int) {
        #expect(throws: JSONSyntaxError.self) { try JSONLineParser.parse(Substring(text)) }
        do {
            _ = try JSONLineParser.parse(Substring(text))
        } catch {
            #expect(error.column == column, "\(text): \(error.message)")
        }
    }
}

/// `CalibrationData.jsonlRecordContents` (the CalibrationLine fuzz target's entry) reads contents as `load` reads a
/// `.jsonl` file.
@Suite struct InMemoryJSONLTests {
    @Test func readsRecordsAsTheFileReaderDoes() throws {
        let text = "\u{FEFF}{\"input_ids\": [1, 2]}\r\n\n  \n{\"text\": \"hi\", \"other\": 1}\n"
        let records = try CalibrationData.jsonlRecordContents(Data(text.utf8), vocabSize: 10)
        #expect(records.count == 2)
        #expect(records[0].tokenIDs == [1, 2] && records[0].text == nil)
        #expect(records[1].tokenIDs == nil && records[1].text == "hi")
        #expect(throws: CalibrationDataError.self) {
            try CalibrationData.jsonlRecordContents(Data("{\"input_ids\": [10]}".utf8), vocabSize: 10)
        }
        #expect(throws: CalibrationDataError.self) { try CalibrationData.jsonlRecordContents(Data([0xFF, 0x0A]), vocabSize: 10) }
    }
}
