import Checkpoint
import Foundation
import LlamaModel
import NVFP4
import SafeTensors
import Testing

/// Each test corrupts one thing in a valid checkpoint and expects the verifier to name it (spec §10).
@Suite struct CheckpointVerifierTests {
    static let q0 = "model.layers.0.self_attn.q_proj"
    static let k0 = "model.layers.0.self_attn.k_proj"
    static let up1 = "model.layers.1.mlp.up_proj"

    /// Writes a valid checkpoint, checks it verifies, applies `corrupt`, and returns the verifier's error.
    func verifyCorrupted(
        _ checkpoint: ReferenceCheckpoint = ReferenceCheckpoint(layout: .compressedTensors, scheme: .nvfp4),
        sourceLocation: SourceLocation = #_sourceLocation,
        _ corrupt: (URL) throws -> Void
    ) throws -> CheckpointError? {
        try withTemporaryDirectory("ckverify") { directory in
            try checkpoint.write(to: directory)
            let verifier = try checkpoint.verifier()
            _ = try verifier.verify(directory: directory)
            try corrupt(directory)
            return expectCheckpointError(sourceLocation: sourceLocation) { _ = try verifier.verify(directory: directory) }
        }
    }

    static let sharded = ReferenceCheckpoint(layout: .compressedTensors, scheme: .nvfp4, maxShardSize: 100_000)
    static let modelopt = ReferenceCheckpoint(layout: .modelopt, scheme: .nvfp4)

    @Test(arguments: [
        ReferenceCheckpoint(layout: .compressedTensors, scheme: .nvfp4),
        ReferenceCheckpoint(layout: .compressedTensors, scheme: .nvfp4a16),
        ReferenceCheckpoint(layout: .modelopt, scheme: .nvfp4),
        sharded,
    ])
    func validCheckpointsVerify(checkpoint: ReferenceCheckpoint) throws {
        try withTemporaryDirectory { directory in
            let plan = try checkpoint.write(to: directory)
            let report = try checkpoint.verifier().verify(directory: directory)
            #expect(report.quantizedLinears == 14)
            #expect(report.tensors == plan.tensorCount)
            #expect(report.files == plan.shards.count)
        }
    }

    /// Rule 10: the verifier reads each stored activation scale and holds it to the job's calibrated amax. A
    /// checkpoint whose scales came from anything else (here: amax 2688× too small, as when a scale was passed where
    /// an amax was expected) is refused, naming the tensor; so is one whose calibration lacks a group.
    @Test(arguments: [CheckpointLayout.compressedTensors, .modelopt])
    func storedActivationScalesMustComeFromTheCalibratedAmax(layout: CheckpointLayout) throws {
        let checkpoint = ReferenceCheckpoint(layout: layout, scheme: .nvfp4)
        let config = try Fixtures.tinyConfig()
        let reference = try Fixtures.modeloptReference()
        try withTemporaryDirectory("ckverify") { directory in
            try checkpoint.write(to: directory)
            var amax: [Int: [FusedGroup: ActivationAmax]] = [:]
            for linear in config.allLinears {
                let sx = try float32(reference, linear.name + ".input_scale")
                amax[linear.layer, default: [:]][linear.kind.group] = ActivationAmax(sx)  // a scale, not an amax
            }
            let verifier = CheckpointVerifier(config: config, layout: try checkpoint.linearLayout,
                                              source: try Fixtures.tinySource(), activationAmax: amax)
            let error = expectCheckpointError { _ = try verifier.verify(directory: directory) }
            let first = try checkpoint.linearLayout.tensorName(.inputScale, of: config.linears(layer: 0)[0])
            #expect(error?.subject == first)
            #expect(error?.message.contains("do not come from its calibration") == true, "\(String(describing: error))")

            amax[1]?[.down] = nil
            let missing = CheckpointVerifier(config: config, layout: try checkpoint.linearLayout, source: nil,
                                             activationAmax: [1: amax[1]!])
            let missingError = expectCheckpointError { _ = try missing.verify(directory: directory) }
            #expect(missingError?.message.contains("no calibrated activation amax") == true)
        }
    }

    @Test func missingTensor() throws {
        let name = Self.k0 + ".weight_scale"
        let error = try verifyCorrupted { directory in
            try rewriteSafeTensors(try shardURL(of: name, in: directory)) { $0.removeAll { $0.name == name } }
        }
        #expect(error?.subject == name)
        #expect(error?.message.contains("missing") == true)
    }

    @Test func missingTensorInAShardedCheckpointNamesIt() throws {
        let name = Self.up1 + ".weight_global_scale"
        let error = try verifyCorrupted(Self.sharded) { directory in
            try rewriteSafeTensors(try shardURL(of: name, in: directory)) { $0.removeAll { $0.name == name } }
        }
        #expect(error?.description.contains(name) == true)
    }

    @Test func extraTensor() throws {
        // A leftover BF16 weight next to the packed one would make vLLM's Llama loader fail.
        let name = Self.q0 + ".weight"
        let error = try verifyCorrupted { directory in
            let shard = try shardURL(of: Self.q0 + ".weight_packed", in: directory)
            try rewriteSafeTensors(shard) { tensors in
                tensors.append(EditableTensor(name: name, dtype: .bf16, shape: [128, 128],
                                              bytes: Data(count: 128 * 128 * 2)))
            }
        }
        #expect(error?.subject == name)
        #expect(error?.message.contains("not part of") == true)
        #expect(error?.message.contains("model.safetensors") == true)
    }

    @Test func blockScalesStoredAsU8() throws {
        let name = Self.q0 + ".weight_scale"
        let error = try verifyCorrupted { directory in
            try editTensor(name, in: directory) { $0.dtype = .u8 }
        }
        #expect(error?.subject == name)
        #expect(error?.message.contains("U8") == true)
        #expect(error?.message.contains("F8_E4M3") == true)
    }

    @Test(arguments: [CheckpointLayout.compressedTensors, .modelopt])
    func scalarStoredAs1x1(layout: CheckpointLayout) throws {
        let checkpoint = ReferenceCheckpoint(layout: layout, scheme: .nvfp4)
        let name = try checkpoint.linearLayout.tensorName(.inputScale, of: try #require(
            try Fixtures.tinyConfig().linears(layer: 1).first { $0.kind == .o }))
        let error = try verifyCorrupted(checkpoint) { directory in
            try editTensor(name, in: directory) { $0.shape = [1, 1] }
        }
        #expect(error?.subject == name)
        #expect(error?.message.contains("[1, 1]") == true)
    }

    @Test func transposedPackedWeight() throws {
        let name = "model.layers.0.mlp.down_proj.weight_packed"
        let error = try verifyCorrupted { directory in
            try editTensor(name, in: directory) { $0.shape = [176, 128] }
        }
        #expect(error?.subject == name)
        #expect(error?.message.contains("[128, 176]") == true)
    }

    @Test(arguments: [UInt8(0x00), 0x7F, 0xFF, 0x80, 0xB8])
    func badBlockScaleByte(byte: UInt8) throws {
        let name = Self.up1 + ".weight_scale"
        let error = try verifyCorrupted { directory in
            try editTensor(name, in: directory) { $0.bytes[$0.bytes.startIndex + 17] = byte }
        }
        #expect(error?.subject == name)
        #expect(error?.message.contains(String(format: "0x%02X", byte)) == true)
        #expect(error?.message.contains("byte 17") == true)
    }

    @Test(arguments: [Float(-1), 0, -0.0, .nan, .infinity, -.infinity])
    func badGlobalScale(value: Float) throws {
        let name = "model.layers.1.self_attn.o_proj.weight_global_scale"
        let error = try verifyCorrupted { directory in
            try editTensor(name, in: directory) { $0.bytes = float32Data(value) }
        }
        #expect(error?.subject == name)
        #expect(error?.message.contains("finite and > 0") == true)
    }

    @Test(arguments: [Float(-0.5), .nan, 0])
    func badModeloptInputScale(value: Float) throws {
        let name = "model.layers.0.mlp.down_proj.input_scale"
        let error = try verifyCorrupted(Self.modelopt) { directory in
            try editTensor(name, in: directory) { $0.bytes = float32Data(value) }
        }
        #expect(error?.subject == name)
    }

    @Test func unequalQKVGlobalScales() throws {
        let error = try verifyCorrupted { directory in
            try editTensor(Self.k0 + ".weight_global_scale", in: directory) { tensor in
                let value = Float(bitPattern: tensor.bytes.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) })
                tensor.bytes = float32Data(value.nextUp)
            }
        }
        #expect(error?.subject == Self.q0 + ".weight_global_scale")
        #expect(error?.message.contains("qkv") == true)
    }

    @Test func unequalGateUpInputScales() throws {
        let error = try verifyCorrupted(Self.modelopt) { directory in
            try editTensor(Self.up1 + ".input_scale", in: directory) { $0.bytes = float32Data(0.5) }
        }
        #expect(error?.subject == "model.layers.1.mlp.gate_proj.input_scale")
        #expect(error?.message.contains("gateUp") == true)
    }

    @Test func lmHeadMissingFromIgnore() throws {
        let error = try verifyCorrupted { directory in
            try editJSON(directory.appendingPathComponent("config.json")) { config in
                var quantization = config["quantization_config"] as! [String: Any]
                quantization["ignore"] = [String]()
                config["quantization_config"] = quantization
            }
        }
        #expect(error?.subject.hasSuffix("config.json") == true)
        #expect(error?.message.contains("lm_head") == true)
    }

    @Test func embedTokensMissingFromModeloptExcludeModules() throws {
        let error = try verifyCorrupted(Self.modelopt) { directory in
            try editJSON(directory.appendingPathComponent("hf_quant_config.json")) { config in
                var quantization = config["quantization"] as! [String: Any]
                quantization["exclude_modules"] = ["lm_head"]
                config["quantization"] = quantization
            }
        }
        #expect(error?.subject.hasSuffix("hf_quant_config.json") == true)
        #expect(error?.message.contains("model.embed_tokens") == true)
    }

    @Test(arguments: ["rope_theta", "eos_token_id", "torch_dtype", "rope_scaling"])
    func changedOriginalConfigKey(key: String) throws {
        let error = try verifyCorrupted { directory in
            try editJSON(directory.appendingPathComponent("config.json")) { config in
                if key == "rope_scaling" {
                    // Renaming to rope_parameters would make transformers 4.x fall back to default RoPE.
                    config["rope_parameters"] = config.removeValue(forKey: "rope_scaling")
                } else {
                    config[key] = key == "rope_theta" ? 10000.0 as Any : "changed" as Any
                }
            }
        }
        #expect(error?.subject.hasSuffix("config.json") == true)
        #expect(error?.message.contains("'\(key)'") == true)
    }

    @Test func weightOnlyConfigWithActivationsIsRefused() throws {
        let error = try verifyCorrupted(ReferenceCheckpoint(layout: .compressedTensors, scheme: .nvfp4a16)) { directory in
            // Swap in the W4A4 config: it declares input activations the weight-only checkpoint lacks.
            let w4a4 = try QuantizationConfigWriter(layout: .compressedTensors, scheme: .nvfp4)
                .configWithQuantization(original: Data(contentsOf: Fixtures.tinyLlama.appendingPathComponent("config.json")),
                                        source: "config.json")
            try w4a4.write(to: directory.appendingPathComponent("config.json"))
        }
        #expect(error?.message.contains("input_activations") == true)
    }

    /// Edits `quantization_config` of the written config.json.
    func editQuantizationConfig(_ directory: URL, _ edit: @escaping (inout [String: Any]) -> Void) throws {
        try editJSON(directory.appendingPathComponent("config.json")) { config in
            var quantization = config["quantization_config"] as! [String: Any]
            edit(&quantization)
            config["quantization_config"] = quantization
        }
    }

    @Test(arguments: [("quant_method", "modelopt"), ("format", "float-quantized")])
    func compressedTensorsConfigWithTheWrongMethodOrFormat(key: String, value: String) throws {
        let error = try verifyCorrupted { directory in
            try editQuantizationConfig(directory) { $0[key] = value }
        }
        #expect(error?.subject.hasSuffix("config.json") == true)
        #expect(error?.message.contains(key) == true)
    }

    @Test(arguments: [("quant_method", "compressed-tensors"), ("quant_algo", "FP8")])
    func modeloptConfigWithTheWrongMethodOrAlgorithm(key: String, value: String) throws {
        let error = try verifyCorrupted(Self.modelopt) { directory in
            try editQuantizationConfig(directory) { $0[key] = value }
        }
        #expect(error?.subject.hasSuffix("config.json") == true)
        #expect(error?.message.contains(key) == true)
    }

    @Test(arguments: ["true", "null", "\"global\""])
    func w4a4ConfigWhoseActivationsAreNotLocal(dynamicJSON: String) throws {
        // dynamic: true tells compressed-tensors there is no input_global_scale to load.
        let error = try verifyCorrupted { directory in
            try editQuantizationConfig(directory) { quantization in
                var groups = quantization["config_groups"] as! [String: Any]
                var group = groups["group_0"] as! [String: Any]
                var activations = group["input_activations"] as! [String: Any]
                activations["dynamic"] = try! JSONSerialization.jsonObject(with: Data(dynamicJSON.utf8), options: .fragmentsAllowed)
                group["input_activations"] = activations
                groups["group_0"] = group
                quantization["config_groups"] = groups
            }
        }
        #expect(error?.message.contains("local") == true)
    }

    @Test func weightGroupSizeOtherThan16() throws {
        let error = try verifyCorrupted { directory in
            try editQuantizationConfig(directory) { quantization in
                var groups = quantization["config_groups"] as! [String: Any]
                var group = groups["group_0"] as! [String: Any]
                var weights = group["weights"] as! [String: Any]
                weights["group_size"] = 32
                group["weights"] = weights
                groups["group_0"] = group
                quantization["config_groups"] = groups
            }
        }
        #expect(error?.message.contains("group_size 16") == true)
    }

    @Test func configWithoutQuantizationConfig() throws {
        let error = try verifyCorrupted { directory in
            try FileManager.default.copyItem(at: Fixtures.tinyLlama.appendingPathComponent("config.json"),
                                             to: directory.appendingPathComponent("source-config.json"))
            try FileManager.default.removeItem(at: directory.appendingPathComponent("config.json"))
            try FileManager.default.moveItem(at: directory.appendingPathComponent("source-config.json"),
                                             to: directory.appendingPathComponent("config.json"))
        }
        #expect(error?.message.contains("quantization_config") == true)
    }

    @Test func unmappedShardOnDisk() throws {
        let error = try verifyCorrupted(Self.sharded) { directory in
            let first = directory.appendingPathComponent("model-00001-of-00003.safetensors")
            let anyShard = FileManager.default.fileExists(atPath: first.path)
                ? first : try shardURL(of: LlamaConfig.embedTokensName, in: directory)
            try FileManager.default.copyItem(at: anyShard, to: directory.appendingPathComponent("model-00099-of-00099.safetensors"))
        }
        #expect(error?.subject == "model-00099-of-00099.safetensors")
        #expect(error?.message.contains("not in the index") == true)
    }

    @Test func extraShardNextToASingleFile() throws {
        let error = try verifyCorrupted { directory in
            try FileManager.default.copyItem(at: directory.appendingPathComponent("model.safetensors"),
                                             to: directory.appendingPathComponent("model-00002-of-00002.safetensors"))
        }
        #expect(error?.message.contains("model-00002-of-00002.safetensors") == true)
    }

    /// vLLM loads every tensor of every mapped file (the map only picks files), so a tensor that sits in a shard
    /// but not in `weight_map` is still loaded; rule 7 requires every tensor to be in the map.
    @Test
    func tensorInAShardButNotInTheIndex() throws {
        let name = Self.q0 + ".weight"
        let error = try verifyCorrupted(Self.sharded) { directory in
            try rewriteSafeTensors(try shardURL(of: Self.q0 + ".weight_packed", in: directory)) { tensors in
                tensors.append(EditableTensor(name: name, dtype: .bf16, shape: [128, 128], bytes: Data(count: 128 * 128 * 2)))
            }
        }
        #expect(error?.description.contains(name) == true)
    }

    @Test
    func tensorDuplicatedInTwoShards() throws {
        let name = LlamaConfig.finalNormName
        let error = try verifyCorrupted(Self.sharded) { directory in
            let copy = try SafeTensorsModel(directory: directory.path).data(name)
            let other = try shardURL(of: LlamaConfig.embedTokensName, in: directory)
            #expect(other != (try shardURL(of: name, in: directory)))
            try rewriteSafeTensors(other) { tensors in
                tensors.append(EditableTensor(name: name, dtype: .bf16, shape: [128], bytes: copy))
            }
        }
        #expect(error?.description.contains(name) == true)
    }

    @Test func wrongIndexTotalSize() throws {
        let error = try verifyCorrupted(Self.sharded) { directory in
            try editJSON(directory.appendingPathComponent(SafeTensorsModel.indexFileName)) { index in
                var metadata = index["metadata"] as! [String: Any]
                metadata["total_size"] = (metadata["total_size"] as! Int) + 1
                index["metadata"] = metadata
            }
        }
        #expect(error?.subject.hasSuffix(SafeTensorsModel.indexFileName) == true)
        #expect(error?.message.contains("total_size") == true)
    }

    @Test(arguments: ["quant_algo", "kv_cache_quant_algo", "group_size", "exclude_modules"])
    func missingHFQuantConfigKey(key: String) throws {
        let error = try verifyCorrupted(Self.modelopt) { directory in
            try editJSON(directory.appendingPathComponent("hf_quant_config.json")) { config in
                var quantization = config["quantization"] as! [String: Any]
                quantization.removeValue(forKey: key)
                config["quantization"] = quantization
            }
        }
        #expect(error?.subject.hasSuffix("hf_quant_config.json") == true)
        #expect(error?.message.contains(key) == true)
    }

    @Test func missingHFQuantConfigFile() throws {
        let error = try verifyCorrupted(Self.modelopt) { directory in
            try FileManager.default.removeItem(at: directory.appendingPathComponent("hf_quant_config.json"))
        }
        #expect(error?.subject.hasSuffix("hf_quant_config.json") == true)
    }

    @Test func changedUnquantizedTensor() throws {
        let name = LlamaConfig.inputLayerNormName(layer: 1)
        let error = try verifyCorrupted { directory in
            try editTensor(name, in: directory) { $0.bytes[$0.bytes.startIndex] ^= 1 }
        }
        #expect(error?.subject == name)
        #expect(error?.message.contains("verbatim") == true)
    }

    @Test func mixedLayoutsAreRefused() throws {
        // A modelopt-named scale in a compressed-tensors checkpoint.
        let error = try verifyCorrupted { directory in
            try rewriteSafeTensors(try shardURL(of: Self.q0 + ".weight_global_scale", in: directory)) { tensors in
                let index = tensors.firstIndex { $0.name == Self.q0 + ".weight_global_scale" }!
                tensors[index].name = Self.q0 + ".weight_scale_2"
            }
        }
        #expect(error?.subject == Self.q0 + ".weight_global_scale")
    }
}

extension ReferenceCheckpoint: CustomTestStringConvertible {
    var testDescription: String {
        "\(layout.rawValue) \(scheme.rawValue)" + (maxShardSize == .max ? "" : " shards ≤ \(maxShardSize)")
    }
}
