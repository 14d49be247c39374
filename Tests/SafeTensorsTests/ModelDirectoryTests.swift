import Foundation
import Testing
@testable import SafeTensors

@Suite struct ModelDirectoryTests {
    /// Writes a small valid shard holding `names` (U8 [2] each) and returns its file name.
    @discardableResult
    private func writeShard(_ fileName: String, in directory: URL, names: [String]) throws -> String {
        let writer = try SafeTensorsWriter(
            path: directory.appendingPathComponent(fileName).path,
            tensors: names.map { PlannedTensor(name: $0, dtype: .u8, shape: [2]) })
        for (index, name) in names.enumerated() { try writer.write(name, data: Data([UInt8(index), 0xEE])) }
        try writer.finish()
        return fileName
    }

    private func writeIndex(_ text: String, in directory: URL) throws -> String {
        let url = directory.appendingPathComponent("model.safetensors.index.json")
        try Data(text.utf8).write(to: url)
        return url.path
    }

    @Test func singleFileModel() throws {
        try withTemporaryDirectory { directory in
            try writeShard("model.safetensors", in: directory, names: ["z.weight", "a.weight"])
            let model = try SafeTensorsModel(directory: directory.path)
            #expect(model.files.count == 1)
            #expect(model.indexPath == nil && model.weightMap == nil)
            #expect(model.tensorNames == ["a.weight", "z.weight"])
            #expect(try model.withBytes("a.weight") { Array($0) } == [1, 0xEE])
            #expect(try model.data("z.weight") == Data([0, 0xEE]))
            #expect(try model.file(containing: "a.weight") === model.files[0])
            let single = directory.appendingPathComponent("model.safetensors").path
            #expect(model.files[0].path == single)
            expectSafeTensorsError(.unknownTensor, path: single, tensor: "b.weight") { _ = try model.info("b.weight") }
        }
    }

    @Test func indexIsPreferredAndEachShardOpensOnce() throws {
        try withTemporaryDirectory { directory in
            try writeShard("model.safetensors", in: directory, names: ["stale"])
            try writeShard("s1.safetensors", in: directory, names: ["a", "b"])
            try writeShard("s2.safetensors", in: directory, names: ["c"])
            _ = try writeIndex(#"{"metadata":{"total_size":6},"weight_map":{"c":"s2.safetensors","a":"s1.safetensors","b":"s1.safetensors"}}"#,
                               in: directory)
            let model = try SafeTensorsModel(directory: directory.path + "/")
            #expect(model.files.count == 2)
            #expect(model.tensorNames == ["a", "b", "c"])
            #expect(!model.contains("stale"))
            #expect(try model.file(containing: "b") === model.files[0])
            #expect(try model.file(containing: "c") === model.files[1])
            #expect(try model.info("c").dataOffsets == 0..<2)
        }
    }

    @Test func directoryWithoutAModel() throws {
        try withTemporaryDirectory { directory in
            let error = expectSafeTensorsError(.noModel, path: directory.path, tensor: nil) {
                _ = try SafeTensorsModel(directory: directory.path)
            }
            #expect(error?.message == "no model.safetensors or model.safetensors.index.json in \(directory.path)")
        }
    }

    @Test(arguments: [#"{"weight_map": "#, #"[]"#, #"{"metadata":{}}"#, #"{"weight_map":["a"]}"#])
    func malformedIndex(text: String) throws {
        try withTemporaryDirectory { directory in
            let index = try writeIndex(text, in: directory)
            expectSafeTensorsError(.index, path: index, tensor: nil) { _ = try SafeTensorsModel(directory: directory.path) }
        }
    }

    @Test func malformedWeightMapEntriesNameTheTensor() throws {
        try withTemporaryDirectory { directory in
            try writeShard("s1.safetensors", in: directory, names: ["a"])
            var index = try writeIndex(#"{"weight_map":{"a":1}}"#, in: directory)
            expectSafeTensorsError(.index, path: index, tensor: "a") { _ = try SafeTensorsModel(directory: directory.path) }
            index = try writeIndex(#"{"weight_map":{"a":"../s1.safetensors"}}"#, in: directory)
            expectSafeTensorsError(.index, path: index, tensor: "a") { _ = try SafeTensorsModel(directory: directory.path) }
            index = try writeIndex(#"{"weight_map":{"a":"s1.safetensors","a":"s1.safetensors"}}"#, in: directory)
            expectSafeTensorsError(.index, path: index, tensor: "a") { _ = try SafeTensorsModel(directory: directory.path) }
        }
    }

    @Test func indexNamingAMissingShard() throws {
        try withTemporaryDirectory { directory in
            try writeShard("s1.safetensors", in: directory, names: ["a"])
            let index = try writeIndex(#"{"weight_map":{"a":"s1.safetensors","b":"s9.safetensors"}}"#, in: directory)
            let error = expectSafeTensorsError(.missingShard, path: index, tensor: "b") {
                _ = try SafeTensorsModel(directory: directory.path)
            }
            #expect(error?.message.contains("s9.safetensors") == true)
        }
    }

    @Test func indexMappingATensorToTheWrongShard() throws {
        try withTemporaryDirectory { directory in
            try writeShard("s1.safetensors", in: directory, names: ["a"])
            try writeShard("s2.safetensors", in: directory, names: ["b"])
            let index = try writeIndex(#"{"weight_map":{"a":"s1.safetensors","b":"s1.safetensors"}}"#, in: directory)
            let error = expectSafeTensorsError(.shardMissingTensor, path: index, tensor: "b") {
                _ = try SafeTensorsModel(directory: directory.path)
            }
            #expect(error?.message.contains("s1.safetensors") == true)
        }
    }

    @Test func corruptShardIsReportedAgainstTheShard() throws {
        try withTemporaryDirectory { directory in
            let shard = directory.appendingPathComponent("s1.safetensors")
            try Data([1, 2, 3]).write(to: shard)
            _ = try writeIndex(#"{"weight_map":{"a":"s1.safetensors"}}"#, in: directory)
            expectSafeTensorsError(.fileTooShort, path: shard.path, tensor: nil) {
                _ = try SafeTensorsModel(directory: directory.path)
            }
        }
    }

    @Test func unknownTensorInAModel() throws {
        let directory = Fixtures.path("tiny-llama")
        let model = try SafeTensorsModel(directory: directory)
        let index = directory + "/model.safetensors.index.json"
        #expect(!model.contains("model.layers.9.mlp.up_proj.weight"))
        expectSafeTensorsError(.unknownTensor, path: index, tensor: "model.layers.9.mlp.up_proj.weight") {
            _ = try model.floats("model.layers.9.mlp.up_proj.weight")
        }
        expectSafeTensorsError(.unknownTensor, path: index, tensor: "x") { _ = try model.info("x") }
        expectSafeTensorsError(.unknownTensor, path: index, tensor: "x") { _ = try model.withBytes("x") { $0.count } }
    }
}
