import CUDABackend
import Checkpoint
import Foundation
import LocalCluster
import LlamaModel
import NVFP4
import QuantizeJob
import SafeTensors
import Testing
import W4A4Probes

/// Whole jobs on the tiny model through the production path in process (LocalCluster: the coordinator and a worker,
/// as `coordctl quantize` runs them), against the reference exports; and the exporter every worker runs.
@Suite struct QuantizeJobOutputTests {
    @Test func weightOnlyCompressedTensorsMatchesTheReference() async throws {
        try await withTemporaryDirectory { parent async throws in
            let output = parent.appendingPathComponent("OUT")
            let summary = try await quantize(model: Fixtures.tinyLlama, output: output, scheme: .nvfp4a16)
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

    @Test func w4a4ModeloptMatchesTheReference() async throws {
        try await withTemporaryDirectory { parent async throws in
            let output = parent.appendingPathComponent("OUT")
            let summary = try await LocalCluster.quantize(options: fixtureW4A4Options(output: output, layout: .modelopt),
                                                          logger: quietLogger())
            #expect(summary.activationAmax.keys.sorted() == [0, 1])

            let written = try SafeTensorsModel(directory: output.path)
            let reference = try SafeTensorsModel(directory: Fixtures.modelopt.path)
            #expect(try tensorSignature(written) == tensorSignature(reference))
            for linear in try Fixtures.tinyConfig().allLinears {
                let p = linear.name
                #expect(try written.data(p + ".weight") == reference.data(p + ".weight"), "\(p)")
                #expect(try written.data(p + ".weight_scale") == reference.data(p + ".weight_scale"), "\(p)")
                #expect(try float32(written, p + ".weight_scale_2").bitPattern
                    == float32(reference, p + ".weight_scale_2").bitPattern, "\(p)")
                for suffix in [".weight_scale_2", ".input_scale"] {
                    #expect(try written.info(p + suffix).shape == [], "\(p)\(suffix) must be 0-d")
                }
            }
            // The stored tensors against calibration.json (exact) and against modelopt's BF16 calibration.
            let scales = try StoredActivationScales(directory: output)
            #expect(scales.layout == "modelopt")
            #expect(scales.mismatchesWithRecordedAmax() == [])
            let agreement = ScaleAgreement(scales.inputScale, reference: try modeloptInputScales(Fixtures.modelopt))
            #expect(agreement.count == 14 && agreement.withinBF16Noise, "\(agreement)")

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

    @Test func w4a4CompressedTensorsStoresReciprocalInputScales() async throws {
        try await withTemporaryDirectory { parent async throws in
            let output = parent.appendingPathComponent("OUT")
            _ = try await LocalCluster.quantize(options: fixtureW4A4Options(output: output, layout: .compressedTensors),
                                                logger: quietLogger())

            let written = try SafeTensorsModel(directory: output.path)
            let reference = try SafeTensorsModel(directory: Fixtures.modelopt.path)
            #expect(try tensorSignature(written) == tensorSignature(SafeTensorsModel(directory: Fixtures.llmCompressor.path)))
            for linear in try Fixtures.tinyConfig().allLinears {
                let p = linear.name
                #expect(try written.info(p + ".input_global_scale").shape == [1])
                #expect(try written.info(p + ".weight_global_scale").shape == [1])
                #expect(try written.data(p + ".weight_packed") == reference.data(p + ".weight"), "\(p)")
            }
            let scales = try StoredActivationScales(directory: output)
            #expect(scales.layout == "compressed-tensors")
            #expect(scales.mismatchesWithRecordedAmax() == [])
            let agreement = ScaleAgreement(scales.inputScale, reference: try modeloptInputScales(Fixtures.modelopt))
            #expect(agreement.count == 14 && agreement.withinBF16Noise, "\(agreement)")

            let config = try jsonObject(output.appendingPathComponent("config.json"))
            let quantization = try #require(config["quantization_config"] as? [String: Any])
            let group = try #require((quantization["config_groups"] as? [String: Any])?["group_0"] as? [String: Any])
            let activations = try #require(group["input_activations"] as? [String: Any])
            #expect(activations["dynamic"] as? String == "local")
            let referenceConfig = try jsonObject(Fixtures.llmCompressor.appendingPathComponent("config.json"))
            #expect(sameJSON(quantization, referenceConfig["quantization_config"]))
        }
    }

    @Test func smallShardsGiveTheSameTensorsAndVerify() async throws {
        try await withTemporaryDirectory { parent async throws in
            let single = parent.appendingPathComponent("SINGLE")
            let sharded = parent.appendingPathComponent("SHARDED")
            _ = try await quantize(model: Fixtures.tinyLlama, output: single)
            let summary = try await quantize(model: Fixtures.tinyLlama, output: sharded) { $0.maxShardSize = 100_000 }
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

    @Test func omitScaleDTypeKeysReachesTheConfig() async throws {
        try await withTemporaryDirectory { parent async throws in
            let output = parent.appendingPathComponent("OUT")
            _ = try await quantize(model: Fixtures.tinyLlama, output: output) { $0.omitScaleDTypeKeys = true }
            let text = try String(contentsOf: output.appendingPathComponent("config.json"), encoding: .utf8)
            #expect(!text.contains("scale_dtype") && !text.contains("zp_dtype"))
            #expect(text.contains("\"group_size\": 16"))
        }
    }

    /// A model whose layer-1 activations overflow to Inf (a finite but huge norm weight passes the input checks):
    /// calibration fails mid-job, naming the layer.
    func overflowingModel(in parent: URL) throws -> (model: URL, calibration: URL) {
        let model = try TinyModelBuilder().write(to: parent.appendingPathComponent("model"), editTensors: { tensors in
            let index = tensors.firstIndex { $0.name == "model.layers.1.post_attention_layernorm.weight" }!
            let count = tensors[index].bytes.count / 2
            tensors[index].bytes = Data(repeating: 0, count: 0)
            for _ in 0..<count { withUnsafeBytes(of: UInt16(0x7F7F).littleEndian) { tensors[index].bytes.append(contentsOf: $0) } }
        })
        let calibration = parent.appendingPathComponent("calib.jsonl")
        let lines = (0..<4).map { sample in "{\"input_ids\": [\((0..<40).map { String(($0 * 7 + sample) % 48) }.joined(separator: ", "))]}" }
        try Data(lines.joined(separator: "\n").utf8).write(to: calibration)
        return (model, calibration)
    }

    @Test func calibrationThatFailsMidJobLeavesNoOutput() async throws {
        try await withTemporaryDirectory { parent async throws in
            let (model, calibration) = try overflowingModel(in: parent)
            let output = parent.appendingPathComponent("OUT")
            let thrown = await expectFailure {
                _ = try await quantize(model: model, output: output, scheme: .nvfp4) { options in
                    options.calibration.dataPath = calibration.path
                    options.calibration.selection.minTokens = 1
                }
            }
            #expect("\(thrown.map { "\($0)" } ?? "")".contains("layer 1"), "\(String(describing: thrown))")
            #expect(try entries(of: parent, prefix: "OUT") == [], "neither OUT nor OUT.partial-* may remain")
        }
    }

    /// An earlier checkpoint (config.json beside safetensors weights), with one more file of its own.
    func makeOldCheckpoint(at url: URL) throws {
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: false)
        try Data("{}".utf8).write(to: url.appendingPathComponent("config.json"))
        try Data("old".utf8).write(to: url.appendingPathComponent("model.safetensors"))
        try Data("old".utf8).write(to: url.appendingPathComponent("old.txt"))
    }

    @Test func failedForcedJobKeepsTheOldOutput() async throws {
        try await withTemporaryDirectory { parent async throws in
            let (model, calibration) = try overflowingModel(in: parent)
            let output = parent.appendingPathComponent("OUT")
            try makeOldCheckpoint(at: output)
            _ = await expectFailure {
                _ = try await quantize(model: model, output: output, scheme: .nvfp4) { options in
                    options.force = true
                    options.calibration.dataPath = calibration.path
                    options.calibration.selection.minTokens = 1
                }
            }
            #expect(try entries(of: parent, prefix: "OUT") == ["OUT"])
            #expect(try entries(of: output, prefix: "") == ["config.json", "model.safetensors", "old.txt"])
        }
    }

    @Test func forcedJobReplacesTheOldOutput() async throws {
        try await withTemporaryDirectory { parent async throws in
            let output = parent.appendingPathComponent("OUT")
            try makeOldCheckpoint(at: output)
            _ = try await quantize(model: Fixtures.tinyLlama, output: output) { $0.force = true }
            #expect(try entries(of: parent, prefix: "") == ["OUT"])
            #expect(!FileManager.default.fileExists(atPath: output.appendingPathComponent("old.txt").path))
            #expect(FileManager.default.fileExists(atPath: output.appendingPathComponent("model.safetensors").path))
        }
    }

    /// The exporter each worker runs: an amax that cannot make a scale, or a group without one, is refused naming
    /// the Linear (spec §10 rule 10: every amax_x is finite and > 0).
    @Test(arguments: [Float.nan, 0, -1, .infinity])
    func unusableActivationAmaxIsRefused(bad: Float) throws {
        let exporter = try w4a4Exporter(layout: .compressedTensors)
        let amax: [FusedGroup: ActivationAmax] = [.qkv: ActivationAmax(1), .gateUp: ActivationAmax(1),
                                                  .o: ActivationAmax(bad), .down: ActivationAmax(1)]
        let thrown = expectFailure { _ = try exporter.export(layer: 0, activationAmax: amax) }
        #expect(thrown is QuantizeJobError)
        #expect("\(thrown.map { "\($0)" } ?? "")".contains("model.layers.0.self_attn.o_proj"))
    }

    @Test func missingFusedGroupInCalibrationIsRefused() throws {
        let exporter = try w4a4Exporter(layout: .modelopt)
        let amax: [FusedGroup: ActivationAmax] = [.qkv: ActivationAmax(1), .gateUp: ActivationAmax(1), .o: ActivationAmax(1)]
        let thrown = expectFailure { _ = try exporter.export(layer: 0, activationAmax: amax) }
        #expect("\(thrown.map { "\($0)" } ?? "")".contains("model.layers.0.mlp.down_proj"))
        #expect(expectFailure { _ = try exporter.export(layer: 1, activationAmax: nil) } is QuantizeJobError)
    }

    /// The amax of each fused group becomes every member's input scale, exactly f32(amax / 2688).
    @Test(arguments: CheckpointLayout.allCases)
    func exporterDerivesEachMembersScaleFromItsGroupsAmax(layout: CheckpointLayout) throws {
        let exporter = try w4a4Exporter(layout: layout)
        let amax: [FusedGroup: ActivationAmax] = [.qkv: ActivationAmax(3.5), .o: ActivationAmax(0.75),
                                                  .gateUp: ActivationAmax(11.0625), .down: ActivationAmax(40)]
        let tensors = try exporter.export(layer: 1, activationAmax: amax)
        let suffix = layout == .modelopt ? ".input_scale" : ".input_global_scale"
        for linear in try Fixtures.tinyConfig().linears(layer: 1) {
            let tensor = try #require(tensors.first { $0.name == linear.name + suffix })
            let stored = Float(bitPattern: tensor.data.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self)) })
            let sx = try #require(amax[linear.kind.group]).value / 2688
            #expect(stored.bitPattern == (layout == .modelopt ? sx : 1 / sx).bitPattern, "\(linear.name)")
        }
    }

    /// For bytes that cross a network each tensor carries the SHA-256 of exactly its bytes; in process the same bytes
    /// go without one.
    @Test func exportedTensorsCarryTheirDigestOnlyWhenAsked() throws {
        let exporter = try w4a4Exporter(layout: .compressedTensors)
        let amax: [FusedGroup: ActivationAmax] = [.qkv: ActivationAmax(3.5), .o: ActivationAmax(0.75),
                                                  .gateUp: ActivationAmax(11.0625), .down: ActivationAmax(40)]
        var timings = ExportTimings()
        var quality: [LinearQuality] = []
        let hashed = try exporter.export(layer: 1, activationAmax: amax, timings: &timings, quality: &quality, digests: true)
        let bare = try exporter.export(layer: 1, activationAmax: amax, timings: &timings, quality: &quality, digests: false)
        #expect(hashed.count == bare.count && hashed.count > 9)
        for (withDigest, without) in zip(hashed, bare) {
            #expect(withDigest.name == without.name && withDigest.data == without.data)
            #expect(without.sha256 == nil, "\(without.name)")
            #expect(withDigest.sha256 == SHA256Hasher.hexDigest(of: withDigest.data), "\(withDigest.name)")
        }
    }

    /// A layer the GPU quantized during calibration is written as given (its codes, its amax for the quality figures),
    /// with the bytes the exporter computes itself when the weights are the CPU quantizer's.
    @Test func aLayerQuantizedDuringCalibrationIsWrittenAsGiven() throws {
        let exporter = try w4a4Exporter(layout: .modelopt)
        let config = try Fixtures.tinyConfig()
        let model = try SafeTensorsModel(directory: Fixtures.tinyLlama.path)
        let amax: [FusedGroup: ActivationAmax] = [.qkv: ActivationAmax(3.5), .o: ActivationAmax(0.75),
                                                  .gateUp: ActivationAmax(11.0625), .down: ActivationAmax(40)]
        var weightAmax: [String: Float] = [:]
        for linear in config.linears(layer: 1) {
            weightAmax[linear.weightName] = try model.floats(linear.weightName).withUnsafeBufferPointer {
                try NVFP4Quantizer.amax(f32: $0, cols: linear.inFeatures, tensor: linear.weightName)
            }
        }
        var weights: [String: NVFP4Weight] = [:]
        for linear in config.linears(layer: 1) {
            let s2 = FusedScales.sharedWeightScale2(memberAmax: config.linears(layer: 1).filter { $0.kind.group == linear.kind.group }
                .map { weightAmax[$0.weightName]! })
            weights[linear.name] = try model.floats(linear.weightName).withUnsafeBufferPointer {
                try NVFP4Quantizer.quantize(f32: $0, rows: linear.outFeatures, cols: linear.inFeatures, weightScale2: s2,
                                            tensor: linear.weightName)
            }
        }
        var timings = ExportTimings()
        var quality: [LinearQuality] = []
        let own = try exporter.export(layer: 1, activationAmax: amax, timings: &timings, quality: &quality)
        var givenQuality: [LinearQuality] = []
        let given = try exporter.export(layer: 1, activationAmax: amax, timings: &timings, quality: &givenQuality,
                                        loaded: LoadedLayerQuantization(layer: 1, weights: weights, weightAmax: weightAmax))
        #expect(given.map(\.name) == own.map(\.name))
        #expect(given.map(\.data) == own.map(\.data))
        #expect(givenQuality == quality)

        // Codes and amax go through as they are (the exporter did not quantize or measure the source itself), except
        // that the first, middle and last rows of each weight are checked against the CPU quantizer on the source.
        let q = config.linears(layer: 1).first { $0.kind == .q }!
        func altering(row: Int) -> [String: NVFP4Weight] {
            var packed = weights[q.name]!.packed
            packed[row * q.inFeatures / 2] ^= 0x11
            var altered = weights
            altered[q.name] = NVFP4Weight(rows: q.outFeatures, cols: q.inFeatures, packed: packed,
                                          blockScales: weights[q.name]!.blockScales, weightScale2: weights[q.name]!.weightScale2)
            return altered
        }
        var alteredAmax = weightAmax
        alteredAmax[q.weightName] = weightAmax[q.weightName]! * 0.5
        var alteredQuality: [LinearQuality] = []
        let written = try exporter.export(layer: 1, activationAmax: amax, timings: &timings, quality: &alteredQuality,
                                          loaded: LoadedLayerQuantization(layer: 1, weights: altering(row: 1), weightAmax: alteredAmax))
        let offset = q.inFeatures / 2
        let writtenQ = try #require(written.first { $0.name == q.weightName }).data
        let ownQ = try #require(own.first { $0.name == q.weightName }).data
        #expect(writtenQ[writtenQ.startIndex + offset] == ownQ[ownQ.startIndex + offset] ^ 0x11)
        #expect(alteredQuality.first { $0.name == q.name }?.weightAmax == weightAmax[q.weightName]! * 0.5)

        for row in [0, q.outFeatures / 2, q.outFeatures - 1] {
            let refused = expectFailure {
                _ = try exporter.export(layer: 1, activationAmax: amax, timings: &timings, quality: &alteredQuality,
                                        loaded: LoadedLayerQuantization(layer: 1, weights: altering(row: row), weightAmax: weightAmax))
            }
            #expect(refused as? QuantizeJobError == .deviceQuantizationMismatch(tensor: q.weightName, row: row))
        }
    }

    func w4a4Exporter(layout: CheckpointLayout) throws -> LayerExporter {
        let options = jobOptions(model: Fixtures.tinyLlama, output: URL(fileURLWithPath: "/nonexistent/OUT"), scheme: .nvfp4,
                                 layout: layout)
        return try LayerExporter(spec: try JobSpec(options: options), config: try Fixtures.tinyConfig(),
                             source: try SafeTensorsModel(directory: Fixtures.tinyLlama.path))
    }
}
