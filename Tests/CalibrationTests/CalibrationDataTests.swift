import Foundation
import Testing
@testable import Calibration
import SafeTensors

@Suite struct CalibrationDataJSONLTests {
    let tokenizer = WordTokenizer()

    @Test func inputIDsAreUsedExactlyAndBlankLinesKeepLineNumbers() throws {
        let dir = try TemporaryDirectory()
        let file = try dir.write("a.jsonl", idsLine([5, 6, 7]) + "\n\n   \t\n" + idsLine([0, 999]) + "\n")
        let set = try CalibrationData.load(path: file, tokenizer: nil, vocabSize: 1000, options: .init(minTokens: 1))
        #expect(set.samples == [CalibrationSample(source: "\(file):1", tokens: [5, 6, 7]),
                                CalibrationSample(source: "\(file):4", tokens: [0, 999])])
        #expect(set.recordsRead == 2 && set.recordsUsed == 2 && set.tokenTotal == 5)
    }

    @Test func textIsTokenizedAndInputIDsWinOverText() throws {
        let dir = try TemporaryDirectory()
        let file = try dir.write("a.jsonl", """
            {"text": "4 5 hello"}
            {"text": "4 5", "input_ids": [9, 8, 7, 6]}
            {"input_ids": [2, 2], "text": 17, "other": [1.5]}
            """)
        let set = try CalibrationData.load(path: file, tokenizer: tokenizer, vocabSize: 1000, options: .init(minTokens: 1))
        #expect(set.samples.map(\.tokens) == [[1, 4, 5, 3], [9, 8, 7, 6], [2, 2]])
    }

    @Test func windowsLineEndsAndByteOrderMarkAreAccepted() throws {
        let dir = try TemporaryDirectory()
        let file = try dir.write("a.jsonl", "\u{FEFF}" + idsLine([1, 2]) + "\r\n\r\n" + idsLine([3]) + "\r\n")
        let set = try CalibrationData.load(path: file, tokenizer: nil, vocabSize: 10, options: .init(minTokens: 1))
        #expect(set.samples == [CalibrationSample(source: "\(file):1", tokens: [1, 2]),
                                CalibrationSample(source: "\(file):3", tokens: [3])])
    }

    @Test(arguments: [
        ("{\"input_ids\": [1, 2}", "malformed JSON at column 20: expected ',' or ']' in an array"),
        ("{\"input_ids\": [1, 2],}", "malformed JSON at column 22: expected a string key"),
        ("[1, 2, 3]", "expected a JSON object, found an array"),
        ("{\"ids\": [1, 2]}", "object has neither \"input_ids\" nor \"text\""),
        ("{\"input_ids\": [1, 1.5]}", "input_ids[1] is 1.5, not an integer"),
        ("{\"input_ids\": [1, 2, \"7\"]}", "input_ids[2] is \"7\", not an integer"),
        ("{\"input_ids\": [true]}", "input_ids[0] is true, not an integer"),
        ("{\"input_ids\": [1e2]}", "input_ids[0] is 100.0, not an integer"),
        ("{\"input_ids\": null}", "input_ids must be an array of integers, found null"),
        ("{\"input_ids\": [3, 4, 1000]}", "token id 1000 at input_ids[2] is outside the vocabulary [0, 1000)"),
        ("{\"input_ids\": [-1]}", "token id -1 at input_ids[0] is outside the vocabulary [0, 1000)"),
        ("{\"text\": [\"a\"]}", "text must be a string, found an array"),
    ])
    func badLineNamesFileAndLine(badLine: String, message: String) throws {
        let dir = try TemporaryDirectory()
        let file = try dir.write("bad.jsonl", idsLine([1, 2]) + "\n\n" + badLine + "\n" + idsLine([3]) + "\n")
        let error = loadError { () throws(CalibrationDataError) in
            try CalibrationData.load(path: file, tokenizer: tokenizer, vocabSize: 1000, options: .init(minTokens: 1))
        }
        #expect(error == CalibrationDataError(path: file, line: 3, message: message))
        #expect(error?.description == "\(file):3: \(message)")
    }

    @Test func textWithoutTokenizerIsAnError() throws {
        let dir = try TemporaryDirectory()
        let file = try dir.write("a.jsonl", idsLine([1]) + "\n{\"text\": \"hello\"}\n")
        let error = loadError { () throws(CalibrationDataError) in
            try CalibrationData.load(path: file, tokenizer: nil, vocabSize: 10, options: .init(minTokens: 1))
        }
        #expect(error == CalibrationDataError(path: file, line: 2, message: "text needs a tokenizer, but none was given"))
    }

    @Test func tokenizerOutputOutsideVocabularyNamesIDAndLine() throws {
        let dir = try TemporaryDirectory()
        let file = try dir.write("a.jsonl", "{\"text\": \"1 2\"}\n{\"text\": \"4 5000 6\"}\n")
        let error = loadError { () throws(CalibrationDataError) in
            try CalibrationData.load(path: file, tokenizer: tokenizer, vocabSize: 1000, options: .init(minTokens: 1))
        }
        #expect(error == CalibrationDataError(
            path: file, line: 2, message: "tokenizer produced token id 5000, outside the vocabulary [0, 1000)"))
    }

    @Test func invalidUTF8IsAnError() throws {
        let dir = try TemporaryDirectory()
        let file = (dir.path as NSString).appendingPathComponent("bin.jsonl")
        try Data([0x7B, 0xFF, 0xFE, 0x7D, 0x0A]).write(to: URL(fileURLWithPath: file))
        let error = loadError { () throws(CalibrationDataError) in
            try CalibrationData.load(path: file, tokenizer: nil, vocabSize: 10, options: .init(minTokens: 1))
        }
        #expect(error == CalibrationDataError(path: file, message: "file is not valid UTF-8"))
    }
}

@Suite struct CalibrationDataSelectionTests {
    let tokenizer = WordTokenizer()

    /// Lines with 1, 2, ... tokens of distinct ids: record k (1-based) is [k, k, ...] with `lengths[k-1]` ids.
    func file(_ dir: TemporaryDirectory, lengths: [Int]) throws -> String {
        try dir.write("r.jsonl", lengths.enumerated().map { idsLine(Array(repeating: $0.offset + 1, count: $0.element)) }
            .joined(separator: "\n"))
    }

    @Test func shortRecordsAreSkippedAndLongOnesTruncated() throws {
        let dir = try TemporaryDirectory()
        let path = try file(dir, lengths: [3, 4, 9, 2, 6])
        let set = try CalibrationData.load(path: path, tokenizer: nil, vocabSize: 100,
                                           options: .init(minTokens: 4, maxTokens: 6))
        #expect(set.samples.map(\.tokens) == [[2, 2, 2, 2], [3, 3, 3, 3, 3, 3], [5, 5, 5, 5, 5, 5]])
        #expect(set.samples.map(\.source) == ["\(path):2", "\(path):3", "\(path):5"])
        #expect(set.recordsRead == 5 && set.recordsExamined == 5 && set.recordsSkipped == 2)
        #expect(set.recordsUsed == 3 && set.recordsTruncated == 1 && set.tokenTotal == 16)
    }

    @Test func recordOfExactlyMinAndMaxTokensIsKeptWhole() throws {
        let dir = try TemporaryDirectory()
        let path = try file(dir, lengths: [5, 5])
        let set = try CalibrationData.load(path: path, tokenizer: nil, vocabSize: 100,
                                           options: .init(minTokens: 5, maxTokens: 5))
        #expect(set.samples.map(\.tokens) == [[1, 1, 1, 1, 1], [2, 2, 2, 2, 2]])
        #expect(set.recordsSkipped == 0 && set.recordsTruncated == 0)
    }

    @Test func selectionStopsAfterSamplesUsed() throws {
        let dir = try TemporaryDirectory()
        let path = try file(dir, lengths: [1, 3, 1, 3, 3, 3])
        let set = try CalibrationData.load(path: path, tokenizer: nil, vocabSize: 100,
                                           options: .init(samples: 2, minTokens: 2))
        #expect(set.samples.map(\.tokens) == [[2, 2, 2], [4, 4, 4]])
        #expect(set.recordsRead == 6 && set.recordsExamined == 4 && set.recordsSkipped == 2 && set.recordsUsed == 2)
        #expect(set.summary.contains("6 records read, 4 examined, 2 skipped"))
        #expect(set.summary.contains("2 used (0 truncated), 6 tokens"))
    }

    @Test func emptyAfterFilteringSaysWhatWasReadAndTooShort() throws {
        let dir = try TemporaryDirectory()
        let path = try file(dir, lengths: [3, 4, 2])
        let error = loadError { () throws(CalibrationDataError) in
            try CalibrationData.load(path: path, tokenizer: nil, vocabSize: 100, options: .init(minTokens: 150))
        }
        #expect(error == CalibrationDataError(
            path: path, message: "no calibration samples: 3 records read, 3 shorter than minTokens (150 tokens)"))
    }

    @Test func seededShuffleFollowsSplitMix64FisherYates() throws {
        let dir = try TemporaryDirectory()
        let path = try dir.write("r.jsonl", (0..<10).map { idsLine([$0]) }.joined(separator: "\n"))
        func order(_ seed: UInt64?) throws -> [Int32] {
            try CalibrationData.load(path: path, tokenizer: nil, vocabSize: 100,
                                     options: .init(minTokens: 1, seed: seed)).samples.map { $0.tokens[0] }
        }
        // The same permutation as SplitMix64Tests (Python-computed), applied to records.
        #expect(try order(42) == [0, 9, 5, 8, 6, 4, 7, 2, 1, 3])
        #expect(try order(7) == [8, 1, 5, 9, 0, 4, 3, 2, 6, 7])
        #expect(try order(nil) == Array(0..<10))
        let set = try CalibrationData.load(path: path, tokenizer: nil, vocabSize: 100,
                                           options: .init(samples: 3, minTokens: 1, seed: 42))
        #expect(set.samples.map(\.source) == ["\(path):1", "\(path):10", "\(path):6"])
    }

    @Test func contentHashDependsOnSelectedTokensOnly() throws {
        let dir = try TemporaryDirectory()
        let a = try dir.write("a.jsonl", idsLine([1, -0, 3].map { $0 }) + "\n" + idsLine([7]))
        let b = try dir.write("b.txt", "\n\n1 3\n\n\n")  // tokenizes to [1, 1, 3]
        let setA = try CalibrationData.load(path: a, tokenizer: nil, vocabSize: 10, options: .init(minTokens: 2))
        let setB = try CalibrationData.load(path: b, tokenizer: tokenizer, vocabSize: 10, options: .init(minTokens: 2))
        #expect(setA.samples.map(\.tokens) == [[1, 0, 3]])
        #expect(setA.contentHash == SHA256Hasher.hexDigest(of: [1, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0] as [UInt8]))
        #expect(setB.contentHash == SHA256Hasher.hexDigest(of: [1, 0, 0, 0, 1, 0, 0, 0, 3, 0, 0, 0] as [UInt8]))
        #expect(setA.contentHash != setB.contentHash)
    }

    @Test(arguments: [
        (CalibrationOptions(samples: 0), "samples must be at least 1, got 0"),
        (CalibrationOptions(minTokens: 0), "minTokens must be at least 1, got 0"),
        (CalibrationOptions(minTokens: 10, maxTokens: 9), "maxTokens (9) must be at least minTokens (10)"),
    ])
    func invalidOptionsAreRejected(options: CalibrationOptions, message: String) throws {
        let dir = try TemporaryDirectory()
        let path = try dir.write("a.jsonl", idsLine([1]))
        let error = loadError { () throws(CalibrationDataError) in
            try CalibrationData.load(path: path, tokenizer: nil, vocabSize: 10, options: options)
        }
        #expect(error == CalibrationDataError(path: nil, message: message))
        #expect(error?.description == "calibration data: \(message)")
    }

    @Test func invalidVocabSizeIsRejected() throws {
        let dir = try TemporaryDirectory()
        let path = try dir.write("a.jsonl", idsLine([1]))
        let error = loadError { () throws(CalibrationDataError) in
            try CalibrationData.load(path: path, tokenizer: nil, vocabSize: 0, options: .init(minTokens: 1))
        }
        #expect(error?.message == "vocabSize must be in 1...2147483647, got 0")
    }
}

@Suite struct CalibrationDataTextAndDirectoryTests {
    let tokenizer = WordTokenizer()

    @Test func paragraphsSplitOnBlankAndWhitespaceOnlyLines() {
        let lines: [Substring] = ["", "  first line", "second line", "", "   ", "\t", "third", "", "last a", "last b"]
        let records = CalibrationData.paragraphRecords(file: "f.txt", lines: lines)
        #expect(records.map(\.line) == [2, 7, 9])
        #expect(records.map(\.source) == ["f.txt:2", "f.txt:7", "f.txt:9"])
        let texts = records.map { record -> String in
            if case let .text(text) = record.content { return text }
            return "not text"
        }
        #expect(texts == ["  first line\nsecond line", "third", "last a\nlast b"])
    }

    @Test func textAndMarkdownFilesBecomeParagraphRecords() throws {
        let dir = try TemporaryDirectory()
        let txt = try dir.write("a.txt", "7 8 9\n10 11\n\n\n  \n12\r\n\r\n13 14 15")
        let set = try CalibrationData.load(path: txt, tokenizer: tokenizer, vocabSize: 100, options: .init(minTokens: 3))
        #expect(set.samples == [CalibrationSample(source: "\(txt):1", tokens: [1, 7, 8, 9, 10, 11]),
                                CalibrationSample(source: "\(txt):8", tokens: [1, 13, 14, 15])])
        #expect(set.recordsRead == 3 && set.recordsSkipped == 1)
        let md = try dir.write("b.md", "# Title\n\nsome words here")
        let mdSet = try CalibrationData.load(path: md, tokenizer: tokenizer, vocabSize: 100, options: .init(minTokens: 1))
        #expect(mdSet.samples.map(\.tokens) == [[1, 3, 3], [1, 3, 3, 3]])
    }

    @Test func textFileWithoutTokenizerNamesFirstParagraph() throws {
        let dir = try TemporaryDirectory()
        let txt = try dir.write("a.txt", "\n\nhello there\n")
        let error = loadError { () throws(CalibrationDataError) in
            try CalibrationData.load(path: txt, tokenizer: nil, vocabSize: 100, options: .init(minTokens: 1))
        }
        #expect(error == CalibrationDataError(path: txt, line: 3, message: "text needs a tokenizer, but none was given"))
    }

    @Test func directoryFilesLoadInSortedNameOrderNotRecursively() throws {
        let dir = try TemporaryDirectory()
        try dir.write("b.txt", "2 2")
        try dir.write("a.jsonl", idsLine([1, 1]))
        try dir.write("c.md", "3 3")
        try dir.write("D.TXT", "4 4")
        try dir.write("10.txt", "10 10")
        try dir.write("notes.csv", "5 5")
        try dir.write(".hidden.txt", "6 6")
        try FileManager.default.createDirectory(atPath: dir.path + "/sub.txt", withIntermediateDirectories: false)
        try dir.write("sub.txt/inner.txt", "7 7")
        let before = try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted()
        let set = try CalibrationData.load(path: dir.path, tokenizer: tokenizer, vocabSize: 100, options: .init(minTokens: 1))
        #expect(set.samples.map(\.tokens) == [[1, 10, 10], [1, 4, 4], [1, 1], [1, 2, 2], [1, 3, 3]])
        let names = set.samples.map { ($0.source as NSString).lastPathComponent }
        #expect(names == ["10.txt:1", "D.TXT:1", "a.jsonl:1", "b.txt:1", "c.md:1"])
        #expect(set.samples[0].source == (dir.path as NSString).appendingPathComponent("10.txt") + ":1")
        // Loading writes nothing.
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted() == before)
    }

    @Test func seededShuffleSpansAllFilesOfADirectory() throws {
        let dir = try TemporaryDirectory()
        try dir.write("a.jsonl", (0..<5).map { idsLine([$0]) }.joined(separator: "\n"))
        try dir.write("b.jsonl", (5..<10).map { idsLine([$0]) }.joined(separator: "\n"))
        let set = try CalibrationData.load(path: dir.path, tokenizer: nil, vocabSize: 100,
                                           options: .init(minTokens: 1, seed: 42))
        #expect(set.samples.map { $0.tokens[0] } == [0, 9, 5, 8, 6, 4, 7, 2, 1, 3])
    }

    @Test func emptyDirectoryIsAnError() throws {
        let dir = try TemporaryDirectory()
        try dir.write("readme.rst", "not data")
        let error = loadError { () throws(CalibrationDataError) in
            try CalibrationData.load(path: dir.path, tokenizer: tokenizer, vocabSize: 100)
        }
        #expect(error == CalibrationDataError(path: dir.path, message: "directory holds no .jsonl, .txt or .md files"))
    }

    @Test func missingPathAndUnsupportedFileAreErrors() throws {
        let dir = try TemporaryDirectory()
        let missing = dir.path + "/nope.jsonl"
        #expect(loadError { () throws(CalibrationDataError) in
            try CalibrationData.load(path: missing, tokenizer: nil, vocabSize: 10)
        } == CalibrationDataError(path: missing, message: "no such file or directory"))
        let csv = try dir.write("x.csv", "1,2")
        #expect(loadError { () throws(CalibrationDataError) in
            try CalibrationData.load(path: csv, tokenizer: nil, vocabSize: 10)
        } == CalibrationDataError(path: csv, message: "unsupported file type '.csv': expected .jsonl, .txt or .md"))
    }

    @Test func emptyFileIsEmptyAfterFiltering() throws {
        let dir = try TemporaryDirectory()
        let txt = try dir.write("e.txt", "\n \n")
        let error = loadError { () throws(CalibrationDataError) in
            try CalibrationData.load(path: txt, tokenizer: tokenizer, vocabSize: 10, options: .init(minTokens: 1))
        }
        #expect(error?.message == "no calibration samples: 0 records read, 0 shorter than minTokens (1 tokens)")
    }

    /// The content hash is SHA-256 over the ids as little-endian Int32 (value from Python's struct + hashlib).
    @Test func contentHashUsesLittleEndianInt32() {
        let set = CalibrationSet(samples: [CalibrationSample(source: "a", tokens: [1, -2]),
                                           CalibrationSample(source: "b", tokens: [3])])
        #expect(set.contentHash == "66d9f6ea4448712f79044d7fea826fbd59b1447689ef6ca1c7f71c785f0e25e0")
        #expect(set.tokenTotal == 3)
        #expect(set.recordsUsed == 2)
    }
}
