import Foundation
import Testing
@testable import Tokenizer

/// Variants of the tiny fixture's tokenizer.json covering the SmolLM2 pre-tokenizer, prefix spaces, Llama-3.1-style
/// post-processors and stripping added tokens. Expected ids come from Hugging Face tokenizers 0.23.3 run on the
/// same modified JSON (`Tokenizer.from_str(json).encode(text, add_special_tokens=...).ids`).
@Suite struct PipelineVariantTests {
    private func tokenizer(_ modify: (inout [String: Any]) -> Void) throws -> BPETokenizer {
        var json = try tinyTokenizerJSON()
        modify(&json)
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        return try BPETokenizer(contentsOf: try directory.write("tokenizer.json", json: json))
    }

    private static var byteLevelWithRegex: [String: Any] { [
        "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true,
    ] }

    /// SmolLM2's pre-tokenizer: Sequence[Digits(individual_digits), ByteLevel(use_regex)]. HF isolates every
    /// numeric scalar, so " 555" gives "Ġ" then "5","5","5" even though the GPT-2 regex alone would keep " 555".
    @Test func smolLM2DigitsSplitEveryDigit() throws {
        let tokenizer = try tokenizer { json in
            json["pre_tokenizer"] = ["type": "Sequence", "pretokenizers": [
                ["type": "Digits", "individual_digits": true], Self.byteLevelWithRegex,
            ]]
        }
        #expect(tokenizer.encode("Call 555-0123 in 2024, room 7B.", addSpecialTokens: false)
                == [34, 493, 220, 20, 20, 20, 12, 15, 16, 17, 18, 289, 220, 17, 15, 17, 19, 11, 220, 295, 374, 220,
                    22, 33, 13])
        #expect(tokenizer.encode("x1y22 33 ", addSpecialTokens: false) == [87, 16, 88, 17, 17, 220, 18, 18, 220])
        #expect(tokenizer.encode("\u{663}\u{664} \u{bd}", addSpecialTokens: false) == [149, 96, 149, 97, 220, 126, 121])
    }

    /// Piece boundaries of `Digits`, from HF's `pre_tokenizers.Digits(...).pre_tokenize_str`.
    @Test func digitsPiecesMatchHuggingFace() {
        let text = ScalarText(utf8: Array("Call 555-0123 in 2024,\u{a0}room 7B.".utf8))
        func pieces(_ step: PreTokenizerStep) -> [String] {
            var result: [String] = []
            PreTokenizerPipeline(steps: [step]).run(text, 0, text.scalarCount) { result.append(String(decoding: $0, as: UTF8.self)) }
            return result
        }
        #expect(pieces(.digits(individual: true))
                == ["Call ", "5", "5", "5", "-", "0", "1", "2", "3", " in ", "2", "0", "2", "4", ",\u{a0}room ", "7", "B."])
        #expect(pieces(.digits(individual: false))
                == ["Call ", "555", "-", "0123", " in ", "2024", ",\u{a0}room ", "7", "B."])
    }

    /// ByteLevel's add_prefix_space applies to every run between added tokens, not only the first.
    @Test func prefixSpaceIsAddedToEachRun() throws {
        let tokenizer = try tokenizer { json in
            var preTokenizer = Self.byteLevelWithRegex
            preTokenizer["add_prefix_space"] = true
            json["pre_tokenizer"] = preTokenizer
        }
        #expect(tokenizer.encode("hi<|end_of_text|>there you") == [510, 391, 72, 511, 258, 488, 310])
        #expect(tokenizer.encode("Hello world") == [510, 220, 39, 68, 356, 78, 277, 262, 75, 67])
        #expect(tokenizer.encode(" already spaced") == [510, 259, 75, 267, 64, 67, 88, 283, 79, 423, 274])
    }

    /// Llama-3.1+ spell the post-processor as Sequence[ByteLevel, TemplateProcessing].
    @Test func sequencePostProcessorAddsTemplateTokens() throws {
        let special: [String: Any] = [
            "<|begin_of_text|>": ["id": "<|begin_of_text|>", "ids": [510], "tokens": ["<|begin_of_text|>"]],
            "<|end_of_text|>": ["id": "<|end_of_text|>", "ids": [511], "tokens": ["<|end_of_text|>"]],
        ]
        let tokenizer = try tokenizer { json in
            json["post_processor"] = ["type": "Sequence", "processors": [
                ["type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true],
                ["type": "TemplateProcessing", "single": [
                    ["SpecialToken": ["id": "<|begin_of_text|>", "type_id": 0]],
                    ["Sequence": ["id": "A", "type_id": 0]],
                    ["SpecialToken": ["id": "<|end_of_text|>", "type_id": 0]],
                ], "pair": [], "special_tokens": special],
            ]]
        }
        #expect(tokenizer.encode("The end.") == [510, 51, 443, 220, 265, 67, 13, 511])
        #expect(tokenizer.encode("The end.", addSpecialTokens: false) == [51, 443, 220, 265, 67, 13])
        #expect(tokenizer.bosTokenID == 510)
    }

    @Test func addedTokenStripsSurroundingWhitespace() throws {
        let tokenizer = try tokenizer { json in
            var added = json["added_tokens"] as! [[String: Any]]
            added[1]["lstrip"] = true
            added[1]["rstrip"] = true
            json["added_tokens"] = added
        }
        #expect(tokenizer.encode("before  <|end_of_text|>  after", addSpecialTokens: false)
                == [65, 68, 475, 68, 511, 64, 69, 450])
        #expect(tokenizer.encode("a<|end_of_text|>b", addSpecialTokens: false) == [64, 511, 65])
    }

    @Test func specialTokensInTextMapToTheirIDs() throws {
        let tokenizer = try BPETokenizer(contentsOf: TestPaths.tinyTokenizer)
        let ids = tokenizer.encode("<|begin_of_text|>a<|end_of_text|><|end_of_text|>", addSpecialTokens: false)
        #expect(ids.first == 510)
        #expect(ids.suffix(2) == [511, 511])
        #expect(tokenizer.decode(ids) == "<|begin_of_text|>a<|end_of_text|><|end_of_text|>")
        #expect(tokenizer.encode("", addSpecialTokens: true) == [510])
        #expect(tokenizer.encode("", addSpecialTokens: false).isEmpty)
    }
}
