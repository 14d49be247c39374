// libFuzzer target: the calibration JSONL reader (lines, JSONLineParser, input_ids / text records).
// Invariants: no input traps; every accepted record is token ids inside the vocabulary, or text.
import FuzzDriver
import Calibration
import Foundation

runFuzzer(fuzz)

func fuzz(_ bytes: UnsafeRawBufferPointer) {
    let vocabSize = 1000
    guard let records = try? CalibrationData.jsonlRecordContents(Data(bytes), vocabSize: vocabSize) else { return }
    for record in records {
        precondition((record.tokenIDs == nil) != (record.text == nil), "a record is both or neither ids and text")
        for id in record.tokenIDs ?? [] { precondition(id >= 0 && id < vocabSize, "token id \(id) outside the vocabulary") }
    }
}
