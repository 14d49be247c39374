import Foundation
import Testing
@testable import SafeTensors

@Suite struct WriterTests {
    @Test func headerIsCompactMetadataFirstAndSpacePaddedToEightBytes() throws {
        let plan = [PlannedTensor(name: "b", dtype: .f32, shape: []),
                    PlannedTensor(name: "a", dtype: .u8, shape: [2, 3])]
        let header = try SafeTensorsWriter.headerData(tensors: plan, metadata: ["format": "pt"])
        let json = #"{"__metadata__":{"format":"pt"},"b":{"dtype":"F32","shape":[],"data_offsets":[0,4]},"#
            + #""a":{"dtype":"U8","shape":[2,3],"data_offsets":[4,10]}}"#
        let padded = json + String(repeating: " ", count: (8 - json.utf8.count % 8) % 8)
        #expect(padded.utf8.count % 8 == 0)
        var expected = Data()
        withUnsafeBytes(of: UInt64(padded.utf8.count).littleEndian) { expected.append(contentsOf: $0) }
        expected.append(contentsOf: Array(padded.utf8))
        #expect(header == expected)
        #expect(try SafeTensorsWriter.fileSize(tensors: plan, metadata: ["format": "pt"]) == expected.count + 10)
    }

    @Test func metadataKeysAreSortedAndEmptyMetadataIsOmitted() throws {
        let plan = [PlannedTensor(name: "t", dtype: .bool, shape: [1])]
        let sorted = try SafeTensorsWriter.headerData(tensors: plan, metadata: ["z": "1", "a": "2", "format": "pt"])
        #expect(String(decoding: sorted.dropFirst(8), as: UTF8.self)
            .hasPrefix(#"{"__metadata__":{"a":"2","format":"pt","z":"1"},"t":"#))
        let bare = try SafeTensorsWriter.headerData(tensors: plan, metadata: [:])
        #expect(String(decoding: bare.dropFirst(8), as: UTF8.self)
            .trimmingCharacters(in: .whitespaces) == #"{"t":{"dtype":"BOOL","shape":[1],"data_offsets":[0,1]}}"#)
    }

    /// Every dtype, 0-d and zero-size shapes, written whole, as Data, and in chunks.
    @Test func everyDTypeRoundTrips() throws {
        let plan: [PlannedTensor] = [
            PlannedTensor(name: "bf16.matrix", dtype: .bf16, shape: [2, 3]),
            PlannedTensor(name: "f16.vector", dtype: .f16, shape: [4]),
            PlannedTensor(name: "f32.scalar", dtype: .f32, shape: []),
            PlannedTensor(name: "f32.one", dtype: .f32, shape: [1]),
            PlannedTensor(name: "f8.empty", dtype: .f8e4m3, shape: [3, 0]),
            PlannedTensor(name: "f8.scales", dtype: .f8e4m3, shape: [2, 2]),
            PlannedTensor(name: "u8.packed", dtype: .u8, shape: [5]),
            PlannedTensor(name: "i64.ids", dtype: .i64, shape: [2]),
            PlannedTensor(name: "i32.cube", dtype: .i32, shape: [1, 1, 3]),
            PlannedTensor(name: "bool.empty", dtype: .bool, shape: [0]),
            PlannedTensor(name: "bool.mask", dtype: .bool, shape: [3]),
            PlannedTensor(name: "i64.scalar", dtype: .i64, shape: []),
        ]
        #expect(Set(plan.map(\.dtype)) == Set(SafeTensorsDType.allCases))
        let contents: [String: [UInt8]] = Dictionary(uniqueKeysWithValues: plan.enumerated().map { index, tensor in
            (tensor.name, tensor.dtype == .bool ? (0..<tensor.byteCount).map { UInt8($0 % 2) }
                : patternBytes(count: tensor.byteCount, seed: index * 11))
        })
        try withTemporaryDirectory { directory in
            let path = directory.appendingPathComponent("all.safetensors").path
            let metadata = ["format": "pt", "note": "round trip"]
            let writer = try SafeTensorsWriter(path: path, tensors: plan, metadata: metadata)
            for (index, tensor) in plan.enumerated() {
                let bytes = contents[tensor.name]!
                switch index % 3 {
                case 0: try bytes.withUnsafeBytes { try writer.write(tensor.name, bytes: $0) }
                case 1: try writer.write(tensor.name, data: Data(bytes))
                default:
                    // Chunks of one byte, then the rest (a zero-size tensor gets one empty chunk).
                    try writer.append(tensor.name, data: Data(bytes.prefix(1)))
                    if bytes.count > 1 { try writer.append(tensor.name, data: Data(bytes.dropFirst())) }
                }
            }
            try writer.finish()

            let file = try SafeTensorsFile(path: path)
            #expect(file.metadata == metadata)
            #expect(file.tensorNames == plan.map(\.name))
            #expect(file.dataSectionOffset % 8 == 0)
            #expect(file.fileSize == (try SafeTensorsWriter.fileSize(tensors: plan, metadata: metadata)))
            try file.validateTiling()
            for tensor in plan {
                let info = try file.info(tensor.name)
                #expect(info.dtype == tensor.dtype && info.shape == tensor.shape)
                #expect(info.byteCount == tensor.byteCount)
                #expect(try file.data(tensor.name) == Data(contents[tensor.name]!), "\(tensor.name)")
            }
            #expect(try file.info("f32.scalar").elementCount == 1)
            #expect(try file.info("f8.empty").byteCount == 0)
            #expect(try file.info("i32.cube").byteCount == 12)
            let header = try IndependentReading(path: path)
            #expect(String(decoding: header.fileBytes[8..<24], as: UTF8.self) == #"{"__metadata__":"#)
        }
    }

    @Test func metadataAndNamesNeedingEscapesRoundTrip() throws {
        let metadata = ["quote\"key": "back\\slash", "lines": "a\nb\tc\r\u{01}", "unicode": "café ✓ 😀", "format": "pt"]
        let name = "layer.\"odd\"\\name/é"
        try withTemporaryDirectory { directory in
            let path = directory.appendingPathComponent("escape.safetensors").path
            let writer = try SafeTensorsWriter(
                path: path, tensors: [PlannedTensor(name: name, dtype: .u8, shape: [1])], metadata: metadata)
            try writer.write(name, data: Data([7]))
            try writer.finish()
            let file = try SafeTensorsFile(path: path)
            #expect(file.metadata == metadata)
            #expect(file.tensorNames == [name])
            let independent = try IndependentReading(path: path)
            #expect(independent.metadata == metadata)
            #expect(Array(independent.entries.keys) == [name])
        }
    }

    @Test func largeTensorsInUnevenChunksMixedWithScalars() throws {
        let plan = [PlannedTensor(name: "scale", dtype: .f32, shape: []),
                    PlannedTensor(name: "big", dtype: .bf16, shape: [1024, 1536]),  // 3 MiB, over the buffer
                    PlannedTensor(name: "scale2", dtype: .f32, shape: []),
                    PlannedTensor(name: "medium", dtype: .u8, shape: [700_000])]
        let big = patternBytes(count: plan[1].byteCount, seed: 3)
        let medium = patternBytes(count: plan[3].byteCount, seed: 5)
        try withTemporaryDirectory { directory in
            let path = directory.appendingPathComponent("big.safetensors").path
            let writer = try SafeTensorsWriter(path: path, tensors: plan)
            try writer.write("scale", data: Data([0, 0, 0x80, 0x3F]))
            var offset = 0
            for chunk in [1, 1_500_000, 17, 1_000_000] {
                let end = offset + chunk
                try big[offset..<end].withUnsafeBytes { try writer.append("big", bytes: $0) }
                offset = end
            }
            try big[offset...].withUnsafeBytes { try writer.append("big", bytes: $0) }
            try writer.write("scale2", data: Data([0, 0, 0, 0x40]))
            try writer.write("medium", data: Data(medium))
            try writer.finish()

            let file = try SafeTensorsFile(path: path)
            try file.validateTiling()
            #expect(file.metadata == ["format": "pt"])
            #expect(try file.floats("scale") == [1.0])
            #expect(try file.floats("scale2") == [2.0])
            #expect(try file.data("big") == Data(big))
            #expect(try file.data("medium") == Data(medium))
        }
    }

    @Test func emptyPlanWritesAHeaderOnlyFile() throws {
        try withTemporaryDirectory { directory in
            let path = directory.appendingPathComponent("empty.safetensors").path
            try SafeTensorsWriter(path: path, tensors: []).finish()
            let file = try SafeTensorsFile(path: path)
            #expect(file.tensorNames.isEmpty)
            #expect(file.metadata == ["format": "pt"])
            try file.validateTiling()
        }
    }

    @Test func invalidPlansAreRejected() throws {
        try withTemporaryDirectory { directory in
            let path = directory.appendingPathComponent("plan.safetensors").path
            let duplicate = [PlannedTensor(name: "w", dtype: .u8, shape: [1]), PlannedTensor(name: "w", dtype: .f32, shape: [])]
            expectSafeTensorsError(.duplicateName, path: path, tensor: "w") {
                _ = try SafeTensorsWriter(path: path, tensors: duplicate)
            }
            #expect(!FileManager.default.fileExists(atPath: path))
            let negative = [PlannedTensor(name: "n", dtype: .u8, shape: [4, -2])]
            expectSafeTensorsError(.invalidShape, path: path, tensor: "n") {
                _ = try SafeTensorsWriter(path: path, tensors: negative)
            }
            let overflow = [PlannedTensor(name: "o", dtype: .i64, shape: [1 << 40, 1 << 40])]
            expectSafeTensorsError(.invalidShape, path: path, tensor: "o") {
                _ = try SafeTensorsWriter(path: path, tensors: overflow)
            }
            let reserved = [PlannedTensor(name: "__metadata__", dtype: .u8, shape: [1])]
            expectSafeTensorsError(.invalidPlan, path: path, tensor: "__metadata__") {
                _ = try SafeTensorsWriter(path: path, tensors: reserved)
            }
        }
    }

    @Test func staticPlanningRejectsInvalidPlans() {
        let duplicate = [PlannedTensor(name: "w", dtype: .u8, shape: [1]), PlannedTensor(name: "w", dtype: .f32, shape: [])]
        expectSafeTensorsError(.duplicateName, path: "(safetensors header)", tensor: "w") {
            _ = try SafeTensorsWriter.headerData(tensors: duplicate, metadata: [:])
        }
        let negative = [PlannedTensor(name: "n", dtype: .u8, shape: [-1])]
        expectSafeTensorsError(.invalidShape, path: "(safetensors header)", tensor: "n") {
            _ = try SafeTensorsWriter.fileSize(tensors: negative, metadata: [:])
        }
    }

    @Test func unwritablePathIsAnIOError() throws {
        try withTemporaryDirectory { directory in
            let path = directory.appendingPathComponent("no/such/dir/x.safetensors").path
            expectSafeTensorsError(.io, path: path, tensor: nil) { _ = try SafeTensorsWriter(path: path, tensors: []) }
        }
    }

    @Test func misuseNamesTheTensorAndWritesNothing() throws {
        let plan = [PlannedTensor(name: "a", dtype: .f32, shape: [2]),
                    PlannedTensor(name: "b", dtype: .u8, shape: [3]),
                    PlannedTensor(name: "c", dtype: .i64, shape: [])]
        try withTemporaryDirectory { directory in
            let path = directory.appendingPathComponent("misuse.safetensors").path
            let writer = try SafeTensorsWriter(path: path, tensors: plan)
            // Out of order, unknown name, wrong byte count: all rejected before any byte is written.
            let order = expectSafeTensorsError(.writeOrder, path: path, tensor: "b") {
                try writer.write("b", data: Data([1, 2, 3]))
            }
            #expect(order?.message.contains("'a'") == true)
            expectSafeTensorsError(.writeOrder, path: path, tensor: "zz") { try writer.write("zz", data: Data()) }
            let size = expectSafeTensorsError(.sizeMismatch, path: path, tensor: "a") {
                try writer.write("a", data: Data(count: 7))
            }
            #expect(size?.message.contains("8") == true)
            try writer.write("a", data: Data(patternBytes(count: 8, seed: 1)))
            expectSafeTensorsError(.writeOrder, path: path, tensor: "a") { try writer.write("a", data: Data(count: 8)) }

            // Chunks: overrunning the tensor, or switching tensors mid-way, is rejected.
            try writer.append("b", data: Data([9]))
            expectSafeTensorsError(.sizeMismatch, path: path, tensor: "b") { try writer.append("b", data: Data(count: 3)) }
            expectSafeTensorsError(.writeOrder, path: path, tensor: "b") { try writer.write("c", data: Data(count: 8)) }
            expectSafeTensorsError(.writeOrder, path: path, tensor: "b") { try writer.write("b", data: Data(count: 3)) }
            let incomplete = expectSafeTensorsError(.incomplete, path: path, tensor: "b") { try writer.finish() }
            #expect(incomplete?.message.contains("1 of 3 bytes") == true)
            try writer.append("b", data: Data([8, 7]))
            expectSafeTensorsError(.incomplete, path: path, tensor: "c") { try writer.finish() }
            try writer.write("c", data: Data(patternBytes(count: 8, seed: 2)))
            expectSafeTensorsError(.writeOrder, path: path, tensor: "c") { try writer.write("c", data: Data(count: 8)) }
            try writer.finish()
            expectSafeTensorsError(.writerClosed, path: path, tensor: "c") { try writer.write("c", data: Data(count: 8)) }
            expectSafeTensorsError(.writerClosed, path: path, tensor: nil) { try writer.finish() }

            let file = try SafeTensorsFile(path: path)
            try file.validateTiling()
            #expect(try file.data("a") == Data(patternBytes(count: 8, seed: 1)))
            #expect(try file.data("b") == Data([9, 8, 7]))
            #expect(try file.data("c") == Data(patternBytes(count: 8, seed: 2)))
        }
    }

    @Test func reopeningAPathTruncatesIt() throws {
        try withTemporaryDirectory { directory in
            let path = directory.appendingPathComponent("again.safetensors").path
            try Data(count: 4096).write(to: URL(fileURLWithPath: path))
            let writer = try SafeTensorsWriter(path: path, tensors: [PlannedTensor(name: "x", dtype: .u8, shape: [1])])
            try writer.write("x", data: Data([1]))
            try writer.finish()
            try SafeTensorsFile(path: path).validateTiling()
        }
    }
}
