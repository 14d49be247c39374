import Foundation
import Testing
@testable import Calibration

@Suite struct TinyLlamaFixtureTests {
    let path = fixturesDirectory.appendingPathComponent("tiny-llama-calib.jsonl").path

    @Test func loadsEightSamplesExactly() throws {
        let set = try CalibrationData.load(path: path, tokenizer: nil, vocabSize: 512, options: .init(minTokens: 1))
        #expect(set.samples.count == 8 && set.recordsRead == 8 && set.recordsSkipped == 0)
        #expect(set.samples.map(\.tokens.count) == [25, 28, 83, 108, 52, 25, 63, 106])
        #expect(set.samples.map(\.source) == (1...8).map { "\(path):\($0)" })
        #expect(Array(set.samples[0].tokens.prefix(5)) == [510, 21, 13, 323, 46])
        #expect(Array(set.samples[7].tokens.suffix(3)) == [88, 349, 13])
        #expect(set.samples.allSatisfy { $0.tokens.first == 510 })  // BOS, as the fixture's tokenizer adds it
        #expect(set.tokenTotal == 490)
        // Python: hashlib.sha256(b"".join(struct.pack("<%di" % len(x), *x) for x in ids)).hexdigest()
        #expect(set.contentHash == "85c644210e044cd56868dd5bb8f0492c8b4dd3415445de83017bb1a6b996226b")
    }

    @Test func everyIDIsCheckedAgainstTheModelVocabulary() {
        let error = loadError { () throws(CalibrationDataError) in
            try CalibrationData.load(path: path, tokenizer: nil, vocabSize: 510, options: .init(minTokens: 1))
        }
        #expect(error == CalibrationDataError(
            path: path, line: 1, message: "token id 510 at input_ids[0] is outside the vocabulary [0, 510)"))
    }

    @Test func defaultMinTokensSkipsAllOfThem() {
        let error = loadError { () throws(CalibrationDataError) in
            try CalibrationData.load(path: path, tokenizer: nil, vocabSize: 512)
        }
        #expect(error?.message == "no calibration samples: 8 records read, 8 shorter than minTokens (150 tokens)")
    }
}

@Suite struct DefaultDataTests {
    struct Record { var origin: String; var text: String }

    func records(_ url: URL) throws -> [Record] {
        let text = try String(contentsOf: url, encoding: .utf8)
        return try text.split(separator: "\n").map { line in
            let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: String])
            return Record(origin: try #require(object["origin"]), text: try #require(object["text"]))
        }
    }

    @Test func bundleFindsTheResources() throws {
        for url in [CalibrationData.defaultCalibrationURL, CalibrationData.heldOutEvaluationURL] {
            #expect(FileManager.default.fileExists(atPath: url.path), "\(url.path)")
        }
        let readme = CalibrationData.defaultCalibrationURL.deletingLastPathComponent().appendingPathComponent("README.md")
        #expect(FileManager.default.fileExists(atPath: readme.path))
    }

    @Test func defaultSetLoadsWithDefaultOptions() throws {
        let set = try CalibrationData.loadDefault(tokenizer: WordTokenizer(numbersAreIDs: false), vocabSize: 1000)
        #expect(set.recordsRead == 390 && set.recordsUsed == 256 && set.recordsSkipped == 0)
        #expect(set.samples.allSatisfy { (150...1200).contains($0.tokens.count) })
        let file = CalibrationData.defaultCalibrationURL.path
        #expect(set.samples.map(\.source) == (1...256).map { "\(file):\($0)" })
    }

    @Test func heldOutSetLoadsWhole() throws {
        let set = try CalibrationData.loadHeldOutEvaluation(tokenizer: WordTokenizer(numbersAreIDs: false), vocabSize: 1000)
        #expect(set.recordsRead == 64 && set.recordsUsed == 64 && set.recordsSkipped == 0)
    }

    @Test func defaultSetIsAMixAndHeldOutNeverOverlapsIt() throws {
        let calibration = try records(CalibrationData.defaultCalibrationURL)
        let heldOut = try records(CalibrationData.heldOutEvaluationURL)
        #expect(calibration.count >= 300 && heldOut.count >= 32)
        let firstUsed = calibration.prefix(256).map(\.origin)
        for work in ["Emma", "Mansfield Park", "Northanger Abbey", "Pride and Prejudice", "Sense and Sensibility",
                     "Constitution", "Declaration", "Devil's Dictionary"] {
            #expect(firstUsed.contains { $0.contains(work) }, "\(work) missing from the first 256 records")
        }
        #expect(heldOut.allSatisfy { $0.origin.contains("Persuasion") })
        #expect(!calibration.contains { $0.origin.contains("Persuasion") })
        // Records are built from whole paragraphs, so a shared paragraph would show up as an equal one.
        let calibrationParagraphs = Set(calibration.flatMap { $0.text.components(separatedBy: "\n\n") })
        let shared = heldOut.flatMap { $0.text.components(separatedBy: "\n\n") }
            .filter { $0.count > 80 && calibrationParagraphs.contains($0) }
        #expect(shared.isEmpty, "held-out paragraphs found in calibration: \(shared.map { $0.prefix(60) })")
        for record in calibration + heldOut {
            let words = record.text.split(whereSeparator: { $0.isWhitespace }).count
            #expect((200...1000).contains(words), "\(record.origin): \(words) words")
        }
    }
}
