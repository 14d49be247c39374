import Foundation
import Testing
@testable import Tokenizer

/// Exact agreement with Hugging Face `tokenizers` on reference ids produced by it.
@Suite struct ReferenceVectorTests {
    struct CalibrationLine: Decodable {
        let text: String
        let input_ids: [Int]
    }

    @Test func tinyLlamaMatchesCalibrationIDsWithBOS() throws {
        let tokenizer = try BPETokenizer(contentsOf: TestPaths.tinyTokenizer)
        let url = TestPaths.fixtures.appendingPathComponent("tiny-llama-calib.jsonl")
        let lines = try String(contentsOf: url, encoding: .utf8).split(separator: "\n").filter { !$0.isEmpty }
        #expect(lines.count == 8)
        for (index, line) in lines.enumerated() {
            let sample = try JSONDecoder().decode(CalibrationLine.self, from: Data(line.utf8))
            let ids = tokenizer.encode(sample.text)
            #expect(ids == sample.input_ids, "line \(index): \(sample.text.prefix(60))")
            #expect(tokenizer.decode(Array(ids.dropFirst())) == sample.text)
        }
        #expect(tokenizer.bosTokenID == 510)
        #expect(tokenizer.vocabSize == 512)
    }

    /// llama.cpp's vectors: each text is followed by "\n__ggml_vocab_test__\n"; `.out` has one line of ids per
    /// text (empty for the empty text), without BOS.
    static func llama3Vectors() throws -> [(text: String, ids: [Int])] {
        let directory = TestPaths.fixtures.appendingPathComponent("tokenizer-vectors")
        let input = try String(contentsOf: directory.appendingPathComponent("llama3.inp"), encoding: .utf8)
        let output = try String(contentsOf: directory.appendingPathComponent("llama3.out"), encoding: .utf8)
        var texts = input.components(separatedBy: "\n__ggml_vocab_test__\n")
        #expect(texts.last == "")
        texts.removeLast()
        var idLines = output.components(separatedBy: "\n")
        #expect(idLines.last == "")
        idLines.removeLast()
        #expect(texts.count == idLines.count)
        return zip(texts, idLines).map { text, line in
            (text, line.split(separator: " ").map { Int($0)! })
        }
    }

    @Test func llama3MatchesLlamaCppVectors() throws {
        let tokenizer = try Llama3TokenizerFixture.tokenizer()
        let vectors = try Self.llama3Vectors()
        #expect(vectors.count == 46)
        for (text, expected) in vectors {
            #expect(tokenizer.encode(text, addSpecialTokens: false) == expected, "text: \(text.debugDescription)")
            #expect(tokenizer.decode(expected) == text)
        }
        #expect(tokenizer.vocabSize == 128256)
        // The first-release tokenizer.json post-processes with ByteLevel only: no BOS.
        #expect(tokenizer.bosTokenID == nil)
        #expect(tokenizer.encode("Hello world") == tokenizer.encode("Hello world", addSpecialTokens: false))
    }

    @Test func llama3MatchesExtraHuggingFaceVectors() throws {
        let tokenizer = try Llama3TokenizerFixture.tokenizer()
        for vector in ExtraVectors.llama3 {
            #expect(tokenizer.encode(vector.text, addSpecialTokens: false) == vector.ids,
                    "text: \(vector.text.debugDescription)")
        }
    }
}
