import Checkpoint
import Foundation
import LlamaModel
import SafeTensors
import Testing

/// `--exclude`: an excluded Linear is its source weight, byte for byte, with no scale tensors; every other Linear is
/// quantized; and the loaders' lists (compressed-tensors `ignore`, modelopt `ignore` and `exclude_modules`) name
/// exactly the excluded modules besides their fixed entries.
@Suite struct ExcludedLinearVerifierTests {
    static let layer0 = ReferenceCheckpoint(layout: .compressedTensors, scheme: .nvfp4, excludePatterns: ["model.layers.0.*"])
    static let downModelopt = ReferenceCheckpoint(layout: .modelopt, scheme: .nvfp4, excludePatterns: ["*.down_proj"])
    static let down1 = "model.layers.1.mlp.down_proj"

    func verifyCorrupted(_ checkpoint: ReferenceCheckpoint, sourceLocation: SourceLocation = #_sourceLocation,
                         _ corrupt: (URL) throws -> Void) throws -> CheckpointError? {
        try withTemporaryDirectory("ckexclude") { directory in
            try checkpoint.write(to: directory)
            let verifier = try checkpoint.verifier()
            _ = try verifier.verify(directory: directory)
            try corrupt(directory)
            return expectCheckpointError(sourceLocation: sourceLocation) { _ = try verifier.verify(directory: directory) }
        }
    }

    @Test(arguments: [
        (layer0, 7),
        (downModelopt, 2),
        (ReferenceCheckpoint(layout: .modelopt, scheme: .nvfp4, excludePatterns: ["model.layers.1.self_attn.*", "*.0.mlp.*"]), 7),
        (ReferenceCheckpoint(layout: .compressedTensors, scheme: .nvfp4a16, excludePatterns: ["*.down_proj"]), 2),
    ])
    func excludedCheckpointsVerify(checkpoint: ReferenceCheckpoint, excluded: Int) throws {
        try withTemporaryDirectory { directory in
            let plan = try checkpoint.write(to: directory)
            let report = try checkpoint.verifier().verify(directory: directory)
            #expect(report.excludedLinears == excluded)
            #expect(report.quantizedLinears == 14 - excluded)
            #expect(report.tensors == plan.tensorCount)
            let config = try jsonObject(directory.appendingPathComponent("config.json"))
            let ignore = try #require((config["quantization_config"] as? [String: Any])?["ignore"] as? [String])
            let names = try checkpoint.linearLayout.excludedModuleNames(config: try Fixtures.tinyConfig())
            #expect(names.count == excluded)
            let fixed = checkpoint.layout == .modelopt ? ["lm_head", "model.embed_tokens"] : ["lm_head"]
            #expect(ignore == fixed + names)
            if checkpoint.layout == .modelopt {
                let hf = try jsonObject(directory.appendingPathComponent("hf_quant_config.json"))
                #expect((hf["quantization"] as? [String: Any])?["exclude_modules"] as? [String] == fixed + names)
            }
        }
    }

    @Test func excludedWeightMustBeTheSourceBytes() throws {
        let name = Self.down1 + ".weight"
        let error = try verifyCorrupted(Self.downModelopt) { directory in
            try editTensor(name, in: directory) { tensor in tensor.bytes[0] ^= 0x01 }
        }
        #expect(error?.subject == name)
        #expect(error?.message.contains("differs from the source") == true, "\(String(describing: error))")
    }

    @Test func excludedLinearWithScaleTensorsIsRefused() throws {
        let name = Self.down1 + ".input_scale"
        let error = try verifyCorrupted(Self.downModelopt) { directory in
            try rewriteSafeTensors(try shardURL(of: Self.down1 + ".weight", in: directory)) { tensors in
                tensors.append(EditableTensor(name: name, dtype: .f32, shape: [], bytes: float32Data(0.01)))
            }
        }
        #expect(error?.subject == name)
    }

    /// A checkpoint with layer 0 kept BF16 is not a valid checkpoint of a job that quantizes everything: each Linear
    /// that is not excluded must be quantized.
    @Test func nonExcludedLinearMustBeQuantized() throws {
        try withTemporaryDirectory { directory in
            try Self.layer0.write(to: directory)
            // The config as a job without --exclude writes it, so only the tensors tell.
            try editJSON(directory.appendingPathComponent("config.json")) { config in
                var quantization = config["quantization_config"] as! [String: Any]
                quantization["ignore"] = ["lm_head"]
                config["quantization_config"] = quantization
            }
            let strict = try ReferenceCheckpoint(layout: .compressedTensors, scheme: .nvfp4).verifier()
            let error = expectCheckpointError { _ = try strict.verify(directory: directory) }
            #expect(error?.message.contains("missing") == true, "\(String(describing: error))")
            #expect(error?.subject.hasPrefix("model.layers.0.") == true)
        }
    }

    @Test func ignoreListMissingAnExcludedModuleIsRefused() throws {
        let dropped = "model.layers.0.self_attn.k_proj"
        let error = try verifyCorrupted(Self.layer0) { directory in
            try editJSON(directory.appendingPathComponent("config.json")) { config in
                var quantization = config["quantization_config"] as! [String: Any]
                quantization["ignore"] = (quantization["ignore"] as! [String]).filter { $0 != dropped }
                config["quantization_config"] = quantization
            }
        }
        #expect(error?.subject.hasSuffix("config.json") == true)
        #expect(error?.message.contains("lacks \(dropped)") == true, "\(String(describing: error))")
    }

    @Test func modeloptExcludeModulesMissingAnEntryIsRefused() throws {
        let error = try verifyCorrupted(Self.downModelopt) { directory in
            try editJSON(directory.appendingPathComponent("hf_quant_config.json")) { config in
                var quantization = config["quantization"] as! [String: Any]
                quantization["exclude_modules"] = (quantization["exclude_modules"] as! [String]).filter { $0 != Self.down1 }
                config["quantization"] = quantization
            }
        }
        #expect(error?.subject.hasSuffix("hf_quant_config.json") == true)
        #expect(error?.message.contains("exclude_modules lacks \(Self.down1)") == true, "\(String(describing: error))")
    }

    /// Listing a quantized Linear would make vLLM load it as BF16 and leave its packed tensors unread.
    @Test(arguments: [ReferenceCheckpoint(layout: .compressedTensors, scheme: .nvfp4), downModelopt])
    func listedModuleThatIsQuantizedIsRefused(checkpoint: ReferenceCheckpoint) throws {
        let extra = "model.layers.1.self_attn.o_proj"
        let error = try verifyCorrupted(checkpoint) { directory in
            try editJSON(directory.appendingPathComponent("config.json")) { config in
                var quantization = config["quantization_config"] as! [String: Any]
                quantization["ignore"] = (quantization["ignore"] as! [String]) + [extra]
                config["quantization_config"] = quantization
            }
        }
        #expect(error?.message.contains("lists \(extra)") == true, "\(String(describing: error))")
    }
}
