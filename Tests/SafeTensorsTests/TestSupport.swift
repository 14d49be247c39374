import Foundation
import Testing
@testable import SafeTensors

/// Fixtures copied into the package (never read from /work/shared).
enum Fixtures {
    static let directory = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().appendingPathComponent("Fixtures")
    static func path(_ relative: String) -> String { directory.appendingPathComponent(relative).path }
}

/// A fresh directory under the system temp folder, removed when the test's closure returns.
func withTemporaryDirectory<R>(_ body: (URL) throws -> R) throws -> R {
    let url = FileManager.default.temporaryDirectory
        .appendingPathComponent("SafeTensorsTests-\(UUID().uuidString)", isDirectory: true)
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: url) }
    return try body(url)
}

/// Writes `8-byte length + header + data` exactly as given, so tests can build malformed files.
@discardableResult
func writeRawSafeTensors(
    at url: URL, header: [UInt8], data: [UInt8] = [], declaredLength: UInt64? = nil
) throws -> String {
    var bytes: [UInt8] = []
    withUnsafeBytes(of: (declaredLength ?? UInt64(header.count)).littleEndian) { bytes.append(contentsOf: $0) }
    bytes.append(contentsOf: header)
    bytes.append(contentsOf: data)
    try Data(bytes).write(to: url)
    return url.path
}

@discardableResult
func writeRawSafeTensors(at url: URL, header: String, dataByteCount: Int = 0) throws -> String {
    try writeRawSafeTensors(at: url, header: Array(header.utf8), data: [UInt8](repeating: 0xAB, count: dataByteCount))
}

/// Expects `body` to throw a SafeTensorsError of `kind` naming `path` and `tensor`, and returns it.
@discardableResult
func expectSafeTensorsError(
    _ kind: SafeTensorsError.Kind, path: String, tensor: String?,
    sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void
) -> SafeTensorsError? {
    let error = #expect(throws: SafeTensorsError.self, sourceLocation: sourceLocation) { try body() }
    guard let error else { return nil }
    #expect(error.kind == kind, "\(error)", sourceLocation: sourceLocation)
    #expect(error.path == path, "\(error)", sourceLocation: sourceLocation)
    #expect(error.tensor == tensor, "\(error)", sourceLocation: sourceLocation)
    #expect(error.description.hasPrefix(path + ": "), "\(error)", sourceLocation: sourceLocation)
    if let tensor {
        #expect(error.description.contains("tensor '\(tensor)'"), "\(error)", sourceLocation: sourceLocation)
    }
    return error
}

/// A second, independent reading of a safetensors file (Foundation's JSONSerialization, whole-file Data),
/// to check the module's reader against.
struct IndependentReading {
    struct Entry {
        let dtype: String
        let shape: [Int]
        let begin: Int
        let end: Int
    }

    let fileBytes: Data
    let headerLength: Int
    let entries: [String: Entry]
    let metadata: [String: String]?

    init(path: String) throws {
        fileBytes = try Data(contentsOf: URL(fileURLWithPath: path))
        var length = 0
        for (index, byte) in fileBytes.prefix(8).enumerated() { length |= Int(byte) << (8 * index) }
        headerLength = length
        let object = try #require(
            try JSONSerialization.jsonObject(with: fileBytes.subdata(in: 8..<(8 + length))) as? [String: Any])
        var entries: [String: Entry] = [:]
        var metadata: [String: String]?
        for (key, value) in object {
            if key == "__metadata__" {
                metadata = try #require(value as? [String: String])
                continue
            }
            let fields = try #require(value as? [String: Any])
            let offsets = try #require(fields["data_offsets"] as? [NSNumber]).map(\.intValue)
            entries[key] = Entry(
                dtype: try #require(fields["dtype"] as? String),
                shape: try #require(fields["shape"] as? [NSNumber]).map(\.intValue),
                begin: offsets[0], end: offsets[1])
        }
        self.entries = entries
        self.metadata = metadata
    }

    func bytes(_ name: String) -> Data {
        let entry = entries[name]!
        let start = 8 + headerLength
        return fileBytes.subdata(in: (start + entry.begin)..<(start + entry.end))
    }

    /// BF16 widened by composing the F32 bit pattern from the two little-endian bytes.
    func bfloat16Values(_ name: String) -> [Float] {
        let raw = [UInt8](bytes(name))
        return stride(from: 0, to: raw.count, by: 2).map { index in
            Float(bitPattern: UInt32(raw[index]) << 16 | UInt32(raw[index + 1]) << 24)
        }
    }

    func float32Values(_ name: String) -> [Float] {
        let raw = [UInt8](bytes(name))
        return stride(from: 0, to: raw.count, by: 4).map { index in
            Float(bitPattern: UInt32(raw[index]) | UInt32(raw[index + 1]) << 8 | UInt32(raw[index + 2]) << 16
                | UInt32(raw[index + 3]) << 24)
        }
    }
}

/// Bitwise equality, so NaNs and signed zeros compare exactly.
func sameBits(_ lhs: [Float], _ rhs: [Float]) -> Bool {
    lhs.count == rhs.count && zip(lhs, rhs).allSatisfy { $0.bitPattern == $1.bitPattern }
}

/// A deterministic byte pattern for round-trip tests.
func patternBytes(count: Int, seed: Int) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 37 &+ seed) }
}
