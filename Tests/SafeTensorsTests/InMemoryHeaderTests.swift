import Foundation
import Testing
@testable import SafeTensors

/// `SafeTensorsFile.parseHeader(fileImage:)` (the fuzz target's entry) reads a file image in memory exactly as
/// `init(path:)` reads the mapped file.
@Suite struct InMemoryHeaderTests {
    private func image(header: String, dataByteCount: Int, declaredLength: UInt64? = nil) -> [UInt8] {
        var bytes: [UInt8] = []
        withUnsafeBytes(of: (declaredLength ?? UInt64(header.utf8.count)).littleEndian) { bytes.append(contentsOf: $0) }
        return bytes + Array(header.utf8) + [UInt8](repeating: 0, count: dataByteCount)
    }

    @Test func agreesWithTheMappedFile() throws {
        let header = #"{"__metadata__":{"format":"pt"},"b":{"dtype":"BF16","shape":[3],"data_offsets":[16,22]},"#
            + #""a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}}"#
        let bytes = image(header: header, dataByteCount: 22)
        let parsed = try bytes.withUnsafeBytes { try SafeTensorsFile.parseHeader(fileImage: $0) }
        try withTemporaryDirectory { directory in
            let path = directory.appendingPathComponent("m.safetensors").path
            try Data(bytes).write(to: URL(fileURLWithPath: path))
            let file = try SafeTensorsFile(path: path)
            #expect(parsed.headerLength == file.headerLength)
            #expect(parsed.metadata == file.metadata)
            #expect(parsed.tensors.map(\.name) == ["a", "b"])
            #expect(parsed.tensors.map(\.name) == file.tensorNames)
            #expect(parsed.tensors.map(\.dataOffsets) == file.tensors.map(\.dataOffsets))
        }
    }

    @Test func refusesWhatTheFileReaderRefuses() throws {
        for length in [0, 7] {
            let error = #expect(throws: SafeTensorsError.self) {
                try [UInt8](repeating: 0, count: length).withUnsafeBytes { _ = try SafeTensorsFile.parseHeader(fileImage: $0) }
            }
            #expect(error?.kind == .fileTooShort)
        }
        let beyond = image(header: "{}", dataByteCount: 0, declaredLength: 3)
        #expect(throws: SafeTensorsError.self) { try beyond.withUnsafeBytes { _ = try SafeTensorsFile.parseHeader(fileImage: $0) } }
        let outside = image(header: #"{"x":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#, dataByteCount: 3)
        let error = #expect(throws: SafeTensorsError.self) {
            try outside.withUnsafeBytes { _ = try SafeTensorsFile.parseHeader(fileImage: $0) }
        }
        #expect(error?.kind == .outOfBounds)
        let overlap = image(header: #"{"x":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"#
            + #""y":{"dtype":"U8","shape":[2],"data_offsets":[3,5]}}"#, dataByteCount: 5)
        let overlapError = #expect(throws: SafeTensorsError.self) {
            try overlap.withUnsafeBytes { _ = try SafeTensorsFile.parseHeader(fileImage: $0) }
        }
        #expect(overlapError?.kind == .overlap)
    }
}
