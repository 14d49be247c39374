import Foundation
import Testing
@testable import Calibration

/// One token per whitespace-separated word, after a BOS of 1. A word that is a decimal integer becomes that id
/// (so tests can write exact ids, including out-of-range ones) unless `numbersAreIDs` is false; any other word
/// becomes 3.
struct WordTokenizer: CalibrationTokenizer {
    var vocabSize: Int = 1000
    var numbersAreIDs = true
    func encode(_ text: String) -> [Int] {
        [1] + text.split(whereSeparator: { $0.isWhitespace }).map { numbersAreIDs ? Int($0) ?? 3 : 3 }
    }
}

/// A fresh temporary directory per test; removed when the value goes away.
final class TemporaryDirectory {
    let path: String

    init() throws {
        path = (NSTemporaryDirectory() as NSString).appendingPathComponent("calib-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    @discardableResult
    func write(_ name: String, _ contents: String) throws -> String {
        let file = (path as NSString).appendingPathComponent(name)
        try contents.write(toFile: file, atomically: false, encoding: .utf8)
        return file
    }
}

/// `n` words, as a text.
func words(_ n: Int) -> String { Array(repeating: "w", count: n).joined(separator: " ") }

/// A JSONL line with the given ids.
func idsLine(_ ids: [Int]) -> String { "{\"input_ids\": [\(ids.map(String.init).joined(separator: ", "))]}" }

/// The error `body` throws; fails the test if it throws none.
func loadError(_ body: () throws(CalibrationDataError) -> CalibrationSet) -> CalibrationDataError? {
    do {
        let set = try body()
        Issue.record("expected an error, got \(set.summary)")
        return nil
    } catch {
        return error
    }
}

let fixturesDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Fixtures")
