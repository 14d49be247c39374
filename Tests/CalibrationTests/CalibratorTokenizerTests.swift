import Foundation
import Testing
import Tokenizer
@testable import Calibration

/// `BPETokenizer` as the data loader's tokenizer: the fixture's texts give its recorded `input_ids`, BOS included.
@Suite struct CalibratorTokenizerTests {
    @Test func fixtureTextsTokenizeToTheirInputIDs() throws {
        struct Line: Decodable {
            let text: String
            let input_ids: [Int]
        }
        let contents = try String(contentsOfFile: TinyLlama.samplesPath, encoding: .utf8)
        let lines = try contents.split(separator: "\n").map { try JSONDecoder().decode(Line.self, from: Data($0.utf8)) }
        #expect(lines.count == 8)

        // The same records with only their text, so the loader has to tokenize.
        let directory = try TemporaryDirectory()
        let textOnly = try lines.map { line -> String in
            String(decoding: try JSONEncoder().encode(["text": line.text]), as: UTF8.self)
        }
        let path = try directory.write("text-only.jsonl", textOnly.joined(separator: "\n") + "\n")

        let tokenizer: any CalibrationTokenizer = try BPETokenizer.load(modelDirectory: TinyLlama.modelDirectory)
        #expect(tokenizer.vocabSize == 512)
        let set = try CalibrationData.load(path: path, tokenizer: tokenizer, vocabSize: 512,
                                           options: CalibrationOptions(samples: 8, minTokens: 1))
        #expect(set.samples.count == 8)
        for (sample, line) in zip(set.samples, lines) {
            #expect(sample.tokens.map(Int.init) == line.input_ids, "\(sample.source)")
            #expect(sample.tokens.first == 510, "BOS <|begin_of_text|> comes first")
        }
        // Same ids as loading the recorded input_ids, so the content hash agrees too.
        #expect(set.contentHash == (try CalibrationData.load(path: TinyLlama.samplesPath, tokenizer: nil, vocabSize: 512,
                                                             options: CalibrationOptions(samples: 8, minTokens: 1))).contentHash)
    }
}
