import Foundation
import Testing
@testable import SafeTensors

/// The module's reader against the reference fixtures, cross-checked with an independent reading.
@Suite struct FixtureTests {
    static let tinyLlama = Fixtures.path("tiny-llama")

    @Test func shardedTinyLlamaOpensWithEveryIndexedTensorInItsShard() throws {
        let model = try SafeTensorsModel(directory: Self.tinyLlama)
        let indexData = try Data(contentsOf: URL(fileURLWithPath: Self.tinyLlama + "/model.safetensors.index.json"))
        let index = try #require(try JSONSerialization.jsonObject(with: indexData) as? [String: Any])
        let weightMap = try #require(index["weight_map"] as? [String: String])

        #expect(model.files.count == 2)
        #expect(model.files.map { URL(fileURLWithPath: $0.path).lastPathComponent }
            == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"])
        #expect(model.tensorNames == weightMap.keys.sorted())
        // embed, final norm, lm_head, and 9 tensors per layer for 2 layers.
        #expect(model.tensorNames.count == 3 + 2 * 9)
        #expect(model.weightMap == weightMap)
        for (name, shard) in weightMap {
            #expect(model.contains(name))
            #expect(URL(fileURLWithPath: try model.file(containing: name).path).lastPathComponent == shard)
            #expect(try model.info(name).dtype == .bf16)
        }
    }

    @Test func tinyLlamaShapesFollowItsConfig() throws {
        // hidden 128, intermediate 352, 4 heads / 2 KV heads of 32, vocab 512 (Fixtures/README.md).
        let model = try SafeTensorsModel(directory: Self.tinyLlama)
        let expected: [String: [Int]] = [
            "model.embed_tokens.weight": [512, 128],
            "lm_head.weight": [512, 128],
            "model.norm.weight": [128],
            "model.layers.1.input_layernorm.weight": [128],
            "model.layers.0.self_attn.q_proj.weight": [128, 128],
            "model.layers.0.self_attn.k_proj.weight": [64, 128],
            "model.layers.1.self_attn.v_proj.weight": [64, 128],
            "model.layers.1.self_attn.o_proj.weight": [128, 128],
            "model.layers.0.mlp.gate_proj.weight": [352, 128],
            "model.layers.1.mlp.up_proj.weight": [352, 128],
            "model.layers.0.mlp.down_proj.weight": [128, 352],
        ]
        for (name, shape) in expected {
            let info = try model.info(name)
            #expect(info.shape == shape, "\(name)")
            #expect(info.elementCount == shape.reduce(1, *))
            #expect(info.byteCount == shape.reduce(1, *) * 2)
            #expect(info.dataOffsets.count == info.byteCount)
        }
    }

    @Test func tinyLlamaShardsMatchAnIndependentReadingAndTileExactly() throws {
        let model = try SafeTensorsModel(directory: Self.tinyLlama)
        for file in model.files {
            let independent = try IndependentReading(path: file.path)
            #expect(file.metadata == ["format": "pt"])
            #expect(file.metadata == independent.metadata)
            #expect(file.headerLength == independent.headerLength)
            #expect(file.fileSize == independent.fileBytes.count)
            #expect(Set(file.tensorNames) == Set(independent.entries.keys))
            let offsets = try file.tensorNames.map { try file.info($0).dataOffsets.lowerBound }
            #expect(offsets == offsets.sorted())
            for name in file.tensorNames {
                let info = try file.info(name)
                let entry = try #require(independent.entries[name])
                #expect(info.dtype.rawValue == entry.dtype)
                #expect(info.shape == entry.shape)
                #expect(info.dataOffsets == entry.begin..<entry.end)
                #expect(try file.data(name) == independent.bytes(name))
            }
            try file.validateTiling()
        }
    }

    @Test func bfloat16WideningMatchesBytesComposedByHand() throws {
        let model = try SafeTensorsModel(directory: Self.tinyLlama)
        for name in ["model.layers.0.self_attn.k_proj.weight", "lm_head.weight", "model.norm.weight"] {
            let independent = try IndependentReading(path: try model.file(containing: name).path)
            let values = try model.floats(name)
            #expect(values.count == (try model.info(name)).elementCount)
            #expect(sameBits(values, independent.bfloat16Values(name)), "\(name)")
            #expect(values.allSatisfy { $0.isFinite })
        }
    }

    /// Tensors are read with pread when asked for: a shard truncated under a running job fails the read with an
    /// error naming the file (with a memory map, touching the lost pages would kill the process with SIGBUS).
    @Test func aShardTruncatedWhileOpenFailsTheReadNamingItInsteadOfCrashing() throws {
        try withTemporaryDirectory { directory in
            let copy = directory.appendingPathComponent("shard.safetensors")
            try FileManager.default.copyItem(atPath: Fixtures.path("tiny-llama/model-00001-of-00002.safetensors"), toPath: copy.path)
            let file = try SafeTensorsFile(path: copy.path)
            let last = try #require(file.tensors.last)
            let before = try file.data(last.name)
            #expect(before.count == last.byteCount)
            try file.checkUnchanged()
            #expect(truncate(copy.path, off_t(file.dataSectionOffset + last.dataOffsets.lowerBound + 2)) == 0)
            for read in [{ _ = try file.data(last.name) }, { _ = try file.floats(last.name) },
                         { try file.withBytes(last.name) { _ in } }, { try file.checkUnchanged() }] {
                do {
                    try read()
                    Issue.record("a read of the truncated file succeeded")
                } catch let error as SafeTensorsError {
                    #expect(error.kind == .changedOnDisk && error.path == copy.path, "\(error)")
                    #expect("\(error)".contains("size went from"), "\(error)")
                }
            }
        }
    }

    /// Rewritten in place (same size, new bytes) or replaced by another file under the same name: refused too.
    @Test func aShardRewrittenOrReplacedWhileOpenIsRefused() throws {
        try withTemporaryDirectory { directory in
            let copy = directory.appendingPathComponent("shard.safetensors")
            let original = Fixtures.path("tiny-llama/model-00001-of-00002.safetensors")
            try FileManager.default.copyItem(atPath: original, toPath: copy.path)
            let file = try SafeTensorsFile(path: copy.path)
            let name = try #require(file.tensorNames.first)
            try FileManager.default.setAttributes([.modificationDate: Date(timeIntervalSince1970: 1_000_000)], ofItemAtPath: copy.path)
            #expect(throws: SafeTensorsError.self) { _ = try file.data(name) }
            #expect((try? file.checkUnchanged()) == nil)

            let replaced = try SafeTensorsFile(path: copy.path)
            try FileManager.default.removeItem(at: copy)
            try FileManager.default.copyItem(atPath: original, toPath: copy.path)
            do {
                _ = try replaced.data(name)
                Issue.record("a read through a replaced path succeeded")
            } catch let error as SafeTensorsError {
                #expect(error.kind == .changedOnDisk && "\(error)".contains("replaced"), "\(error)")
            }
        }
    }

    @Test func goldenVectorsHaveTheDTypesAndShapesTheirNamesImply() throws {
        let path = Fixtures.path("nvfp4-golden.safetensors")
        let file = try SafeTensorsFile(path: path)
        let independent = try IndependentReading(path: path)
        #expect(file.metadata["producer"] == "nvidia-modelopt NVFP4QTensor.quantize, block 16")
        #expect(Set(file.tensorNames) == Set(independent.entries.keys))
        try file.validateTiling()

        let cases = Set(file.tensorNames.map { String($0.split(separator: ".")[0]) })
        #expect(cases.count >= 8)
        for name in cases {
            // Case names end in ROWSxCOLS, e.g. "huge_16x32".
            let dims = try #require(name.split(separator: "_").last).split(separator: "x").compactMap { Int($0) }
            try #require(dims.count == 2, "\(name)")
            let (rows, cols) = (dims[0], dims[1])
            #expect(try file.info("\(name).input") == TensorInfo(
                name: "\(name).input", dtype: .bf16, shape: [rows, cols],
                dataOffsets: try file.info("\(name).input").dataOffsets))
            #expect(try file.info("\(name).weight").dtype == .u8)
            #expect(try file.info("\(name).weight").shape == [rows, cols / 2])
            #expect(try file.info("\(name).weight_scale").dtype == .f8e4m3)
            #expect(try file.info("\(name).weight_scale").shape == [rows, cols / 16])
            let scale2 = try file.info("\(name).weight_scale_2")
            #expect(scale2.dtype == .f32 && scale2.shape == [] && scale2.elementCount == 1 && scale2.byteCount == 4)
            #expect(try file.info("\(name).dequantized").dtype == .f32)
            #expect(try file.info("\(name).dequantized").shape == [rows, cols])

            for tensor in ["input", "weight", "weight_scale", "weight_scale_2", "dequantized"] {
                let full = "\(name).\(tensor)"
                #expect(try file.data(full) == independent.bytes(full), "\(full)")
            }
            #expect(sameBits(try file.floats("\(name).input"), independent.bfloat16Values("\(name).input")))
            #expect(sameBits(try file.floats("\(name).dequantized"), independent.float32Values("\(name).dequantized")))
            let globalScale = try file.floats("\(name).weight_scale_2")
            #expect(sameBits(globalScale, independent.float32Values("\(name).weight_scale_2")))
            #expect(globalScale.count == 1 && globalScale[0].isFinite && globalScale[0] > 0)
        }
    }

    @Test func floatsRejectsPackedAndFP8Tensors() throws {
        let path = Fixtures.path("nvfp4-golden.safetensors")
        let file = try SafeTensorsFile(path: path)
        let packed = try #require(file.tensorNames.first { $0.hasSuffix(".weight") })
        let scales = try #require(file.tensorNames.first { $0.hasSuffix(".weight_scale") })
        let error = expectSafeTensorsError(.unsupportedDType, path: path, tensor: packed) { _ = try file.floats(packed) }
        #expect(error?.message.contains("U8") == true)
        expectSafeTensorsError(.unsupportedDType, path: path, tensor: scales) { _ = try file.floats(scales) }
        expectSafeTensorsError(.unsupportedDType, path: path, tensor: scales) { _ = try file.int64s(scales) }
    }

    @Test func forwardReferenceTokenIdsMatchTheCalibrationSamples() throws {
        let path = Fixtures.path("tiny-llama-forward.safetensors")
        let file = try SafeTensorsFile(path: path)
        let independent = try IndependentReading(path: path)
        try file.validateTiling()
        let lines = try String(contentsOfFile: Fixtures.path("tiny-llama-calib.jsonl"), encoding: .utf8)
            .split(separator: "\n")
        for sample in 0..<2 {
            let sampleObject = try JSONSerialization.jsonObject(with: Data(lines[sample].utf8)) as? [String: Any]
            let expectedIds = try #require(sampleObject?["input_ids"] as? [Int]).map(Int64.init)
            let name = "sample\(sample).input_ids"
            let info = try file.info(name)
            #expect(info.dtype == .i64)
            #expect(info.shape == [expectedIds.count])
            #expect(try file.int64s(name) == expectedIds)
            #expect(expectedIds.first == 510)  // BOS
            expectSafeTensorsError(.unsupportedDType, path: path, tensor: name) { _ = try file.floats(name) }

            let embeddings = "sample\(sample).layer_input.0"
            #expect(try file.info(embeddings).shape == [expectedIds.count, 128])
            #expect(sameBits(try file.floats(embeddings), independent.float32Values(embeddings)))
        }
    }
}
