// libFuzzer target: the calibration JSONL reader (lines, JSONLineParser, input_ids / text records).
// Invariants: no input traps; every accepted record is token ids inside the vocabulary, or text.
import FuzzSupport
import Calibration
import Foundation
#if canImport(Glibc)
import Glibc
#endif

var argc = CommandLine.argc
var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
exit(LLVMFuzzerRunDriver(&argc, &argv) { data, size in fuzzOne(data, size) })

@_cdecl("LLVMFuzzerTestOneInput")
func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    fuzz(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}

func fuzz(_ bytes: UnsafeRawBufferPointer) {
    let vocabSize = 1000
    guard let records = try? CalibrationData.jsonlRecordContents(Data(bytes), vocabSize: vocabSize) else { return }
    for record in records {
        precondition((record.tokenIDs == nil) != (record.text == nil), "a record is both or neither ids and text")
        for id in record.tokenIDs ?? [] { precondition(id >= 0 && id < vocabSize, "token id \(id) outside the vocabulary") }
    }
}
