import Checkpoint
import Foundation
import LlamaModel
import NVFP4
import QuantizeJob
import SafeTensors
import Testing

/// Whole jobs on the tiny model, in process, against the reference exports. (These live here rather than in
/// CheckpointTests because only this test target depends on QuantizeJob.)
@Suite struct QuantizeJobOutputTests {
    @Test func weightOnlyCompressedTensorsMatchesTheReference() throws {
        try withTemporaryDirectory { parent throws in
            let output = parent.appendingPathComponent("OUT")
            let summary = try makeJob(model: Fixtures.tinyLlama, output: output, scheme: .nvfp4a16).run()
            #expect(summary.layers == 2)
            #expect(summary.quantizedLinears == 14)
            #expect(summary.shards == 1)
            #expect(try entries(of: parent, prefix: "") == ["OUT"])

            let written = try SafeTensorsModel(directory: output.path)
            let reference = try SafeTensorsModel(directory: Fixtures.modelopt.path)
            let source = try SafeTensorsModel(directory: Fixtures.tinyLlama.path)
            let config = try Fixtures.tinyConfig()

            for linear in config.allLinears {
                let p = linear.name
                #expect(try written.data(p + ".weight_packed") == reference.data(p + ".weight"), "\(p)")
                #expect(try written.data(p + ".weight_scale") == reference.data(p + ".weight_scale"), "\(p)")
                let s2 = try float32(reference, p + ".weight_scale_2")
                #expect(try float32(written, p + ".weight_global_scale").bitPattern == (1 / s2).bitPattern, "\(p)")
            }
            for layer in 0..<config.numHiddenLayers {
                for group in [FusedGroup.qkv, .gateUp] {
                    let values = try group.members.map {
                        try float32(written, "\(LlamaConfig.layerPrefix(layer)).\($0.rawValue).weight_global_scale").bitPattern
                    }
                    #expect(Set(values).count == 1, "layer \(layer) \(group)")
                }
            }

            let expected = try tensorSignature(SafeTensorsModel(directory: Fixtures.llmCompressor.path))
                .filter { !$0.key.hasSuffix(".input_global_scale") }
            #expect(try tensorSignature(written) == expected)
            for tensor in config.nonQuantizedTensors {
                #expect(try written.data(tensor.name) == source.data(tensor.name), "\(tensor.name)")
                #expect(try written.info(tensor.name).dtype == source.info(tensor.name).dtype)
            }

            let writtenConfig = try jsonObject(output.appendingPathComponent("config.json"))
            let sourceConfig = try jsonObject(Fixtures.tinyLlama.appendingPathComponent("config.json"))
            #expect(Set(writtenConfig.keys) == Set(sourceConfig.keys).union(["quantization_config"]))
            for (key, value) in sourceConfig { #expect(sameJSON(writtenConfig[key], value), "\(key)") }
            let quantization = try #require(writtenConfig["quantization_config"] as? [String: Any])
            let group = try #require((quantization["config_groups"] as? [String: Any])?["group_0"] as? [String: Any])
            #expect(group["input_activations"] is NSNull)
            #expect(quantization["quant_method"] as? String == "compressed-tensors")
            #expect(quantization["ignore"] as? [String] == ["lm_head"])

            for name in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
                #expect(try Data(contentsOf: output.appendingPathComponent(name))
                    == Data(contentsOf: Fixtures.tinyLlama.appendingPathComponent(name)), "\(name)")
            }
            #expect(!FileManager.default.fileExists(atPath: output.appendingPathComponent("hf_quant_config.json").path))
        }
    }

    @Test func w4a4ModeloptMatchesTheReference() throws {
        try withTemporaryDirectory { parent throws in
            let output = parent.appendingPathComponent("OUT")
            let calibrator = try FixtureCalibrator()
            let summary = try makeJob(model: Fixtures.tinyLlama, output: output, scheme: .nvfp4, layout: .modelopt)
                .run(calibrator: calibrator)
            #expect(calibrator.layersAsked == [0, 1])

            let written = try SafeTensorsModel(directory: output.path)
            let reference = try SafeTensorsModel(directory: Fixtures.modelopt.path)
            #expect(try tensorSignature(written) == tensorSignature(reference))
            for linear in try Fixtures.tinyConfig().allLinears {
                let p = linear.name
                #expect(try written.data(p + ".weight") == reference.data(p + ".weight"), "\(p)")
                #expect(try written.data(p + ".weight_scale") == reference.data(p + ".weight_scale"), "\(p)")
                #expect(try float32(written, p + ".weight_scale_2").bitPattern
                    == float32(reference, p + ".weight_scale_2").bitPattern, "\(p)")
                let amax = try calibrator.value(module: p)
                let inputScale = try float32(written, p + ".input_scale")
                #expect(inputScale.bitPattern == (amax / 2688).bitPattern, "\(p)")
                let referenceScale = try float32(reference, p + ".input_scale")
                #expect(abs(inputScale - referenceScale) / referenceScale < 0.01, "\(p): \(inputScale) vs \(referenceScale)")
                #expect(summary.activationAmax[p] == amax)
                for suffix in [".weight_scale_2", ".input_scale"] {
                    #expect(try written.info(p + suffix).shape == [], "\(p)\(suffix) must be 0-d")
                }
            }

            let hf = try jsonObject(output.appendingPathComponent("hf_quant_config.json"))
            #expect(sameJSON(hf, try jsonObject(Fixtures.modelopt.appendingPathComponent("hf_quant_config.json"))))
            let nested = try #require(hf["quantization"] as? [String: Any])
            #expect(Set(nested.keys) == ["quant_algo", "kv_cache_quant_algo", "group_size", "exclude_modules"])
            #expect(nested["quant_algo"] as? String == "NVFP4")
            #expect(nested["kv_cache_quant_algo"] is NSNull)
            #expect(nested["group_size"] as? Int == 16)
            #expect(nested["exclude_modules"] as? [String] == ["lm_head", "model.embed_tokens"])

            let writtenConfig = try jsonObject(output.appendingPathComponent("config.json"))
            let referenceConfig = try jsonObject(Fixtures.modelopt.appendingPathComponent("config.json"))
            #expect(sameJSON(writtenConfig["quantization_config"], referenceConfig["quantization_config"]))
            let quantization = try #require(writtenConfig["quantization_config"] as? [String: Any])
            #expect(quantization["quant_method"] as? String == "modelopt")
            #expect(quantization["quant_algo"] as? String == "NVFP4")
            // The source's own spelling is kept; modelopt's re-serialization (rope_parameters, dtype) is not copied.
            #expect(writtenConfig["rope_scaling"] != nil && writtenConfig["rope_parameters"] == nil)
        }
    }

    @Test func w4a4CompressedTensorsStoresReciprocalInputScales() throws {
        try withTemporaryDirectory { parent throws in
            let output = parent.appendingPathComponent("OUT")
            let calibrator = try FixtureCalibrator()
            _ = try makeJob(model: Fixtures.tinyLlama, output: output, scheme: .nvfp4).run(calibrator: calibrator)

            let written = try SafeTensorsModel(directory: output.path)
            let reference = try SafeTensorsModel(directory: Fixtures.modelopt.path)
            #expect(try tensorSignature(written) == tensorSignature(SafeTensorsModel(directory: Fixtures.llmCompressor.path)))
            for linear in try Fixtures.tinyConfig().allLinears {
                let p = linear.name
                let inputScale = try calibrator.value(module: p) / 2688
                #expect(try float32(written, p + ".input_global_scale").bitPattern == (1 / inputScale).bitPattern, "\(p)")
                #expect(try written.info(p + ".input_global_scale").shape == [1])
                #expect(try written.info(p + ".weight_global_scale").shape == [1])
                #expect(try written.data(p + ".weight_packed") == reference.data(p + ".weight"), "\(p)")
            }
            let config = try jsonObject(output.appendingPathComponent("config.json"))
            let quantization = try #require(config["quantization_config"] as? [String: Any])
            let group = try #require((quantization["config_groups"] as? [String: Any])?["group_0"] as? [String: Any])
            let activations = try #require(group["input_activations"] as? [String: Any])
            #expect(activations["dynamic"] as? String == "local")
            let referenceConfig = try jsonObject(Fixtures.llmCompressor.appendingPathComponent("config.json"))
            #expect(sameJSON(quantization, referenceConfig["quantization_config"]))
        }
    }

    @Test func smallShardsGiveTheSameTensorsAndVerify() throws {
        try withTemporaryDirectory { parent throws in
            let single = parent.appendingPathComponent("SINGLE")
            let sharded = parent.appendingPathComponent("SHARDED")
            _ = try makeJob(model: Fixtures.tinyLlama, output: single).run()
            let summary = try makeJob(model: Fixtures.tinyLlama, output: sharded) { $0.maxShardSize = 100_000 }.run()
            #expect(summary.shards > 2)

            let names = try entries(of: sharded, prefix: "model-")
            #expect(names == (1...summary.shards).map { String(format: "model-%05d-of-%05d.safetensors", $0, summary.shards) })
            let model = try SafeTensorsModel(directory: sharded.path)
            let reference = try SafeTensorsModel(directory: single.path)
            #expect(model.tensorNames == reference.tensorNames)
            for name in reference.tensorNames { #expect(try model.data(name) == reference.data(name), "\(name)") }
            let index = try jsonObject(sharded.appendingPathComponent(SafeTensorsModel.indexFileName))
            let total = try #require((index["metadata"] as? [String: Any])?["total_size"] as? Int)
            #expect(total == (try model.tensorNames.reduce(0) { $0 + (try model.info($1).byteCount) }))
            for linear in try Fixtures.tinyConfig().allLinears {
                let files = Set(try ["weight_packed", "weight_scale", "weight_global_scale"].map {
                    try model.file(containing: "\(linear.name).\($0)").path
                })
                #expect(files.count == 1, "\(linear.name) is split over \(files)")
            }
            let config = try Fixtures.tinyConfig()
            let verifier = CheckpointVerifier(config: config, layout: LinearTensorLayout(layout: .compressedTensors, scheme: .nvfp4a16),
                                              source: try SafeTensorsModel(directory: Fixtures.tinyLlama.path))
            let report = try verifier.verify(directory: sharded)
            #expect(report.files == summary.shards)
            #expect(report.quantizedLinears == 14)
        }
    }

    @Test func omitScaleDTypeKeysReachesTheConfig() throws {
        try withTemporaryDirectory { parent throws in
            let output = parent.appendingPathComponent("OUT")
            _ = try makeJob(model: Fixtures.tinyLlama, output: output) { $0.omitScaleDTypeKeys = true }.run()
            let text = try String(contentsOf: output.appendingPathComponent("config.json"), encoding: .utf8)
            #expect(!text.contains("scale_dtype") && !text.contains("zp_dtype"))
            #expect(text.contains("\"group_size\": 16"))
        }
    }

    @Test func calibratorThatThrowsLeavesNoOutput() throws {
        try withTemporaryDirectory { parent throws in
            let output = parent.appendingPathComponent("OUT")
            let job = makeJob(model: Fixtures.tinyLlama, output: output, scheme: .nvfp4) { $0.jobID = "fail1" }
            let thrown = expectFailure { _ = try job.run(calibrator: try FailingCalibrator(failingLayer: 1)) }
            #expect(thrown as? CalibrationFailure == CalibrationFailure(layer: 1))
            #expect(try entries(of: parent, prefix: "OUT") == [], "neither OUT nor OUT.partial-* may remain")
        }
    }

    @Test func failedForcedJobKeepsTheOldOutput() throws {
        try withTemporaryDirectory { parent throws in
            let output = parent.appendingPathComponent("OUT")
            try FileManager.default.createDirectory(at: output, withIntermediateDirectories: false)
            try Data("old".utf8).write(to: output.appendingPathComponent("old.txt"))
            let job = makeJob(model: Fixtures.tinyLlama, output: output, scheme: .nvfp4) { $0.force = true }
            _ = expectFailure { _ = try job.run(calibrator: try FailingCalibrator(failingLayer: 1)) }
            #expect(try entries(of: parent, prefix: "") == ["OUT"])
            #expect(try entries(of: output, prefix: "") == ["old.txt"])
        }
    }

    @Test func forcedJobReplacesTheOldOutput() throws {
        try withTemporaryDirectory { parent throws in
            let output = parent.appendingPathComponent("OUT")
            try FileManager.default.createDirectory(at: output, withIntermediateDirectories: false)
            try Data("old".utf8).write(to: output.appendingPathComponent("old.txt"))
            _ = try makeJob(model: Fixtures.tinyLlama, output: output) { $0.force = true }.run()
            #expect(try entries(of: parent, prefix: "") == ["OUT"])
            #expect(!FileManager.default.fileExists(atPath: output.appendingPathComponent("old.txt").path))
            #expect(FileManager.default.fileExists(atPath: output.appendingPathComponent("model.safetensors").path))
        }
    }

    @Test(arguments: [Float.nan, 0, -1, .infinity])
    func unusableActivationAmaxIsRefused(bad: Float) throws {
        // Spec §10 rule 10: every amax_x is finite and > 0.
        try withTemporaryDirectory { parent throws in
            let output = parent.appendingPathComponent("OUT")
            let calibrator = ConstantCalibrator([.qkv: 1, .gateUp: 1, .o: bad, .down: 1])
            let thrown = expectFailure {
                _ = try makeJob(model: Fixtures.tinyLlama, output: output, scheme: .nvfp4).run(calibrator: calibrator)
            }
            #expect(thrown is QuantizeJobError)
            #expect("\(thrown.map { "\($0)" } ?? "")".contains("model.layers.0.self_attn.o_proj"))
            #expect(try entries(of: parent, prefix: "OUT") == [])
        }
    }

    @Test func missingFusedGroupInCalibrationIsRefused() throws {
        try withTemporaryDirectory { parent throws in
            let output = parent.appendingPathComponent("OUT")
            let calibrator = ConstantCalibrator([.qkv: 1, .gateUp: 1, .o: 1])
            let thrown = expectFailure {
                _ = try makeJob(model: Fixtures.tinyLlama, output: output, scheme: .nvfp4, layout: .modelopt)
                    .run(calibrator: calibrator)
            }
            #expect("\(thrown.map { "\($0)" } ?? "")".contains("model.layers.0.mlp.down_proj"))
            #expect(try entries(of: parent, prefix: "OUT") == [])
        }
    }
}
