// libFuzzer target: the tokenizer.json loader (BPETokenizer from in-memory contents), then a short encode/decode.
// Invariants: no input traps or exhausts memory; an accepted tokenizer encodes text to ids below vocabSize, and
// decodes them without trapping.
import FuzzDriver
import Foundation
import Tokenizer

runFuzzer(fuzz)

func fuzz(_ bytes: UnsafeRawBufferPointer) {
    guard let tokenizer = try? BPETokenizer(json: Data(bytes), path: "<fuzz>/tokenizer.json") else { return }
    for text in ["", "Hello world", " a  b\n\tc 123 é漢字 🙂", "<s></s><|begin_of_text|>"] {
        let ids = tokenizer.encode(text)
        for id in ids { precondition(id >= 0 && id < tokenizer.vocabSize, "id \(id) outside [0, \(tokenizer.vocabSize))") }
        _ = tokenizer.decode(ids)
    }
}
