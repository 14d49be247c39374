import Foundation
import Testing
@testable import Tokenizer

/// Every refusal names its file and what is wrong.
@Suite struct LoadingErrorTests {
    private func loadError(_ json: [String: Any]) throws -> (TokenizerError, String) {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let path = try directory.write("tokenizer.json", json: json)
        let error = try #require(throws: TokenizerError.self) { try BPETokenizer(contentsOf: path) }
        return (error, path)
    }

    @Test(arguments: ["Unigram", "WordPiece", "WordLevel"])
    func unsupportedModelTypeIsNamed(type: String) throws {
        var json = try tinyTokenizerJSON()
        var model = json["model"] as! [String: Any]
        model["type"] = type
        json["model"] = model
        let (error, path) = try loadError(json)
        #expect(error.kind == .unsupportedModelType)
        #expect(error.description.contains(path))
        #expect(error.description.contains("\"\(type)\""))
    }

    @Test func sentencePieceOnlyDirectoryIsRefused() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let modelPath = try directory.write("tokenizer.model", "\u{0a}\u{0b}not really a protobuf")
        let error = try #require(throws: TokenizerError.self) {
            try BPETokenizer.load(modelDirectory: directory.url.path)
        }
        #expect(error.kind == .sentencePieceOnly)
        #expect(error.description.contains(modelPath))
        #expect(error.description.contains("SentencePiece"))
    }

    @Test func directoryWithoutTokenizerIsRefused() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let error = try #require(throws: TokenizerError.self) {
            try BPETokenizer.load(modelDirectory: directory.url.path)
        }
        #expect(error.kind == .unreadableFile)
        #expect(error.description.contains("tokenizer.json"))
    }

    @Test func loadFindsTokenizerJSONInDirectory() throws {
        let tokenizer = try BPETokenizer.load(modelDirectory: TestPaths.fixtures.appendingPathComponent("tiny-llama").path)
        #expect(tokenizer.path.hasSuffix("tiny-llama/tokenizer.json"))
        #expect(tokenizer.encode("of sections") == [510, 381, 435, 66, 393])
    }

    @Test func malformedJSONNamesTheFile() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let path = try directory.write("tokenizer.json", "{\"model\": {\"type\": \"BPE\", ")
        let error = try #require(throws: TokenizerError.self) { try BPETokenizer(contentsOf: path) }
        #expect(error.kind == .malformedJSON)
        #expect(error.description.contains(path))
    }

    @Test func missingFileIsUnreadable() throws {
        let error = try #require(throws: TokenizerError.self) {
            try BPETokenizer(contentsOf: "/nonexistent/dir/tokenizer.json")
        }
        #expect(error.kind == .unreadableFile)
        #expect(error.description.contains("/nonexistent/dir/tokenizer.json"))
    }

    @Test func missingModelIsNamed() throws {
        var json = try tinyTokenizerJSON()
        json.removeValue(forKey: "model")
        let (error, path) = try loadError(json)
        #expect(error.kind == .missingField)
        #expect(error.description == "\(path): model is missing")
    }

    @Test func mergeNamingUnknownTokenIsNamed() throws {
        var json = try tinyTokenizerJSON()
        var model = json["model"] as! [String: Any]
        var merges = model["merges"] as! [Any]
        merges[3] = ["\u{120}", "nonexistent-token"]
        model["merges"] = merges
        json["model"] = model
        let (error, path) = try loadError(json)
        #expect(error.kind == .invalidValue)
        #expect(error.description.contains(path))
        #expect(error.description.contains("model.merges[3]"))
        #expect(error.description.contains("nonexistent-token"))
    }

    @Test func unknownNormalizerIsNamed() throws {
        var json = try tinyTokenizerJSON()
        json["normalizer"] = ["type": "NFKC"]
        let (error, path) = try loadError(json)
        #expect(error.kind == .unsupportedComponent)
        #expect(error.description.contains(path))
        #expect(error.description.contains("normalizer \"NFKC\""))
    }

    @Test func unknownSplitPatternIsNamed() throws {
        var json = try tinyTokenizerJSON()
        json["pre_tokenizer"] = ["type": "Sequence", "pretokenizers": [
            ["type": "Split", "pattern": ["Regex": "\\w+"], "behavior": "Isolated", "invert": false],
            ["type": "ByteLevel", "add_prefix_space": false, "use_regex": false],
        ]]
        let (error, _) = try loadError(json)
        #expect(error.kind == .unsupportedComponent)
        #expect(error.description.contains("pre_tokenizer.pretokenizers[0].pattern"))
    }

    @Test func preTokenizerWithoutByteLevelIsRefused() throws {
        var json = try tinyTokenizerJSON()
        json["pre_tokenizer"] = ["type": "Digits", "individual_digits": true]
        let (error, _) = try loadError(json)
        #expect(error.kind == .unsupportedComponent)
        #expect(error.description.contains("ByteLevel"))
    }

    @Test func byteLevelBeforeAnotherStepIsRefused() throws {
        var json = try tinyTokenizerJSON()
        json["pre_tokenizer"] = ["type": "Sequence", "pretokenizers": [
            ["type": "ByteLevel", "add_prefix_space": false, "use_regex": true],
            ["type": "Digits", "individual_digits": true],
        ]]
        let (error, _) = try loadError(json)
        #expect(error.kind == .unsupportedComponent)
        #expect(error.description.contains("pre_tokenizer.pretokenizers[0] is ByteLevel but is not the last step"))
    }
}
