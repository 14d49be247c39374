import Foundation
import Testing
@testable import Tokenizer

/// Inputs the TokenizerJSON fuzz target (Fuzz/TokenizerJSON) crashed on: each must now be refused with a
/// `TokenizerError`, not trap or exhaust memory.
@Suite struct TokenizerFuzzRegressionTests {
    /// The seed Fuzz/Corpus/TokenizerJSON/array-merges with one id replaced.
    private func tokenizerJSON(vocabID: String = "8", addedID: String = "14", templateID: String? = nil) -> Data {
        let postProcessor = templateID.map {
            """
            {"type":"TemplateProcessing","single":[{"SpecialToken":{"id":"<s>","type_id":0}},\
            {"Sequence":{"id":"A","type_id":0}}],"special_tokens":{"<s>":{"id":"<s>","ids":[\($0)],"tokens":["<s>"]}}}
            """
        } ?? "null"
        return Data(("""
            {"version":"1.0","added_tokens":[{"id":\(addedID),"content":"<s>","single_word":false,"lstrip":false,\
            "rstrip":false,"normalized":false,"special":true}],"normalizer":null,"pre_tokenizer":{"type":"ByteLevel",\
            "add_prefix_space":true,"trim_offsets":true,"use_regex":true},"post_processor":\(postProcessor),"decoder":{"type":"ByteLevel"},\
            "model":{"type":"BPE","dropout":null,"unk_token":null,"continuing_subword_prefix":null,"end_of_word_suffix":null,\
            "fuse_unk":false,"byte_fallback":false,"ignore_merges":false,"vocab":{"a":0,"b":1,"c":2,"\u{120}":3,"h":4,\
            "e":5,"l":6,"o":7,"ab":\(vocabID),"\u{120}a":9},"merges":[["a","b"],["\u{120}","a"]]}}
            """).utf8)
    }

    @Test func theSeedLoads() throws {
        let tokenizer = try BPETokenizer(json: tokenizerJSON(), path: "tokenizer.json")
        #expect(tokenizer.vocabSize == 15)
        // add_prefix_space: "Ġab"; the merge "a b" ranks before "Ġ a".
        #expect(tokenizer.encode("ab", addSpecialTokens: false) == [3, 8])
    }

    /// `(max added id) + 1` overflowed Int.
    @Test func addedTokenIDIntMaxIsRefused() throws {
        let error = try #require(throws: TokenizerError.self) {
            try BPETokenizer(json: tokenizerJSON(addedID: "9223372036854775807"), path: "tokenizer.json")
        }
        #expect(error.kind == .invalidValue)
        #expect(error.description.contains("added_tokens[0].id"))
    }

    /// A 10^11 added id sized the id table at 800 GB.
    @Test func hugeAddedTokenIDIsRefused() throws {
        let error = try #require(throws: TokenizerError.self) {
            try BPETokenizer(json: tokenizerJSON(addedID: "100000000000"), path: "tokenizer.json")
        }
        #expect(error.kind == .invalidValue)
    }

    /// A vocabulary id of Int32.max sized the id table at 16 GiB.
    @Test func hugeVocabularyIDIsRefused() throws {
        let error = try #require(throws: TokenizerError.self) {
            try BPETokenizer(json: tokenizerJSON(vocabID: "2147483647"), path: "tokenizer.json")
        }
        #expect(error.kind == .invalidValue)
        #expect(error.description.contains("model.vocab[\"ab\"]"))
    }

    /// The post-processor's template added id 99 (or -1) to every encoding of a 15-token vocabulary.
    @Test(arguments: ["99", "15", "-1"])
    func templateIDOutsideTheVocabularyIsRefused(id: String) throws {
        let error = try #require(throws: TokenizerError.self) {
            try BPETokenizer(json: tokenizerJSON(templateID: id), path: "tokenizer.json")
        }
        #expect(error.kind == .invalidValue)
        #expect(error.description.contains("post_processor adds token id \(id)"))
        let tokenizer = try BPETokenizer(json: tokenizerJSON(templateID: "14"), path: "tokenizer.json")
        #expect(tokenizer.encode("ab") == [14, 3, 8])
    }

    @Test func theLargestIDAllowedLoads() throws {
        let tokenizer = try BPETokenizer(json: tokenizerJSON(addedID: String(BPETokenizer.maximumTokenID)), path: "tokenizer.json")
        #expect(tokenizer.vocabSize == BPETokenizer.maximumTokenID + 1)
    }
}
