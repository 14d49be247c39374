import Checkpoint
import Foundation
import LlamaModel
import NVFP4
import SafeTensors
import Testing

/// The Checkpoint module writes exactly the tensors and configs of the two reference exports.
@Suite struct CheckpointLayoutTests {
    @Test func compressedTensorsW4A4NamesDTypesShapesMatchLLMCompressor() throws {
        try withTemporaryDirectory { directory in
            try ReferenceCheckpoint(layout: .compressedTensors, scheme: .nvfp4).write(to: directory)
            let written = try tensorSignature(SafeTensorsModel(directory: directory.path))
            let expected = try tensorSignature(Fixtures.llmCompressorReference())
            #expect(written == expected)
        }
    }

    @Test func compressedTensorsWeightOnlyHasNoInputGlobalScale() throws {
        try withTemporaryDirectory { directory in
            try ReferenceCheckpoint(layout: .compressedTensors, scheme: .nvfp4a16).write(to: directory)
            let written = try tensorSignature(SafeTensorsModel(directory: directory.path))
            let expected = try tensorSignature(Fixtures.llmCompressorReference())
                .filter { !$0.key.hasSuffix(".input_global_scale") }
            #expect(written == expected)
        }
    }

    @Test func modeloptW4A4IsByteIdenticalToTheReferenceTensors() throws {
        try withTemporaryDirectory { directory in
            try ReferenceCheckpoint(layout: .modelopt, scheme: .nvfp4).write(to: directory)
            let written = try SafeTensorsModel(directory: directory.path)
            let reference = try Fixtures.modeloptReference()
            #expect(try tensorSignature(written) == tensorSignature(reference))
            for name in reference.tensorNames {
                #expect(try written.data(name) == reference.data(name), "\(name)")
            }
            // Scalars are 0-d in modelopt, never [1] or [1, 1].
            #expect(try written.info("model.layers.0.self_attn.q_proj.weight_scale_2").shape == [])
            #expect(try written.info("model.layers.1.mlp.down_proj.input_scale").shape == [])
        }
    }

    @Test func shardsCarryPtFormatMetadataAndTileExactly() throws {
        try withTemporaryDirectory { directory in
            try ReferenceCheckpoint(layout: .modelopt, scheme: .nvfp4, maxShardSize: 100_000).write(to: directory)
            let model = try SafeTensorsModel(directory: directory.path)
            #expect(model.files.count > 1)
            for file in model.files {
                #expect(file.metadata == ["format": "pt"], "\(file.path)")
                #expect(file.dataSectionOffset % 8 == 0)
                try file.validateTiling()
            }
        }
    }

    @Test func compressedTensorsStoresReciprocalGlobalScales() throws {
        try withTemporaryDirectory { directory in
            try ReferenceCheckpoint(layout: .compressedTensors, scheme: .nvfp4).write(to: directory)
            let written = try SafeTensorsModel(directory: directory.path)
            let reference = try Fixtures.modeloptReference()
            for linear in try Fixtures.tinyConfig().allLinears {
                let weightScale2 = try float32(reference, linear.name + ".weight_scale_2")
                let inputScale = try float32(reference, linear.name + ".input_scale")
                #expect(try float32(written, linear.name + ".weight_global_scale").bitPattern == (1 / weightScale2).bitPattern)
                #expect(try float32(written, linear.name + ".input_global_scale").bitPattern == (1 / inputScale).bitPattern)
                #expect(try written.data(linear.name + ".weight_packed") == reference.data(linear.name + ".weight"))
                #expect(try written.data(linear.name + ".weight_scale") == reference.data(linear.name + ".weight_scale"))
            }
        }
    }

    @Test func compressedTensorsConfigMatchesLLMCompressorAndKeepsTheSource() throws {
        try withTemporaryDirectory { directory in
            try ReferenceCheckpoint(layout: .compressedTensors, scheme: .nvfp4).write(to: directory)
            let written = try jsonObject(directory.appendingPathComponent("config.json"))
            let source = try jsonObject(Fixtures.tinyLlama.appendingPathComponent("config.json"))
            let reference = try jsonObject(Fixtures.llmCompressor.appendingPathComponent("config.json"))
            #expect(Set(written.keys) == Set(source.keys).union(["quantization_config"]))
            for (key, value) in source { #expect(sameJSON(written[key], value), "\(key)") }
            #expect(sameJSON(written["quantization_config"], reference["quantization_config"]))
        }
    }

    @Test func compressedTensorsWeightOnlyConfigHasNullInputActivations() throws {
        try withTemporaryDirectory { directory in
            try ReferenceCheckpoint(layout: .compressedTensors, scheme: .nvfp4a16).write(to: directory)
            let written = try jsonObject(directory.appendingPathComponent("config.json"))
            var expected = try #require(
                try jsonObject(Fixtures.llmCompressor.appendingPathComponent("config.json"))["quantization_config"]
                    as? [String: Any])
            var groups = try #require(expected["config_groups"] as? [String: Any])
            var group = try #require(groups["group_0"] as? [String: Any])
            group["input_activations"] = NSNull()
            groups["group_0"] = group
            expected["config_groups"] = groups
            #expect(sameJSON(written["quantization_config"], expected))
        }
    }

    @Test func modeloptConfigsMatchTheReference() throws {
        try withTemporaryDirectory { directory in
            try ReferenceCheckpoint(layout: .modelopt, scheme: .nvfp4).write(to: directory)
            let written = try jsonObject(directory.appendingPathComponent("config.json"))
            let reference = try jsonObject(Fixtures.modelopt.appendingPathComponent("config.json"))
            let source = try jsonObject(Fixtures.tinyLlama.appendingPathComponent("config.json"))
            #expect(sameJSON(written["quantization_config"], reference["quantization_config"]))
            // The source spelling is kept (rope_scaling, torch_dtype), not modelopt's re-serialization.
            for (key, value) in source { #expect(sameJSON(written[key], value), "\(key)") }
            #expect(written["rope_parameters"] == nil)

            let hfURL = directory.appendingPathComponent("hf_quant_config.json")
            #expect(sameJSON(try jsonObject(hfURL), try jsonObject(Fixtures.modelopt.appendingPathComponent("hf_quant_config.json"))))
            // Key order as modelopt writes it; vLLM's nested form needs all four keys.
            let text = try String(contentsOf: hfURL, encoding: .utf8)
            let order = ["\"producer\"", "\"quantization\"", "\"quant_algo\"", "\"kv_cache_quant_algo\"",
                         "\"group_size\"", "\"exclude_modules\""]
            let positions = try order.map { try #require(text.range(of: $0)?.lowerBound, "\($0)") }
            #expect(positions == positions.sorted())
            #expect(text.contains("\n    \"producer\""), "4-space indent")
        }
    }

    @Test func modeloptRefusesWeightOnly() throws {
        let error = expectCheckpointError { try CheckpointLayout.modelopt.validate(scheme: .nvfp4a16) }
        #expect(error?.subject == "--format modelopt")
        #expect(error?.message.contains("nvfp4a16") == true)
        try CheckpointLayout.modelopt.validate(scheme: .nvfp4)
        try CheckpointLayout.compressedTensors.validate(scheme: .nvfp4a16)
        try CheckpointLayout.compressedTensors.validate(scheme: .nvfp4)
    }

    @Test func tokenizerAndGenerationFilesAreCopiedVerbatim() throws {
        try withTemporaryDirectory { directory in
            try ReferenceCheckpoint(layout: .compressedTensors, scheme: .nvfp4a16).write(to: directory)
            var copied = 0
            for name in verbatimModelFiles {
                let source = Fixtures.tinyLlama.appendingPathComponent(name)
                let output = directory.appendingPathComponent(name)
                if FileManager.default.fileExists(atPath: source.path) {
                    #expect(try Data(contentsOf: output) == Data(contentsOf: source), "\(name)")
                    copied += 1
                } else {
                    #expect(!FileManager.default.fileExists(atPath: output.path), "\(name) has no source")
                }
            }
            #expect(copied == 3)
            #expect(!FileManager.default.fileExists(atPath: directory.appendingPathComponent("hf_quant_config.json").path))
        }
    }

    @Test(arguments: CheckpointLayout.allCases)
    func writeModelFilesListsWhatItWrote(layout: CheckpointLayout) throws {
        try withTemporaryDirectory { directory in
            // A read-only source file must not make the output read-only.
            let source = directory.appendingPathComponent("source")
            let output = directory.appendingPathComponent("output")
            try FileManager.default.createDirectory(at: output, withIntermediateDirectories: true)
            try FileManager.default.copyItem(at: Fixtures.tinyLlama, to: source)
            try FileManager.default.setAttributes([.posixPermissions: 0o444],
                                                  ofItemAtPath: source.appendingPathComponent("tokenizer.json").path)
            let written = try writeModelFiles(sourceDirectory: source, outputDirectory: output,
                                              configWriter: QuantizationConfigWriter(layout: layout, scheme: .nvfp4))
            let expected = ["config.json"] + (layout == .modelopt ? ["hf_quant_config.json"] : [])
                + ["generation_config.json", "tokenizer.json", "tokenizer_config.json"]
            #expect(written == expected)
            #expect(try FileManager.default.contentsOfDirectory(atPath: output.path).sorted() == expected.sorted())
            let permissions = try FileManager.default.attributesOfItem(
                atPath: output.appendingPathComponent("tokenizer.json").path)[.posixPermissions] as? Int
            #expect(permissions.map { $0 & 0o200 != 0 } == true)
        }
    }

    @Test func writeModelFilesRefusesAnAlreadyQuantizedSource() throws {
        try withTemporaryDirectory { directory in
            let error = expectCheckpointError {
                _ = try writeModelFiles(sourceDirectory: Fixtures.modelopt, outputDirectory: directory,
                                        configWriter: QuantizationConfigWriter(layout: .modelopt, scheme: .nvfp4))
            }
            #expect(error?.subject == Fixtures.modelopt.appendingPathComponent("config.json").path)
        }
    }

    @Test func linearTensorLayoutNamesShapesAndScalars() throws {
        let spec = try #require(try Fixtures.tinyConfig().linears(layer: 1).first { $0.kind == .down })
        let compressed = LinearTensorLayout(layout: .compressedTensors, scheme: .nvfp4)
        #expect(compressed.plannedTensors(for: spec) == [
            PlannedTensor(name: "model.layers.1.mlp.down_proj.weight_packed", dtype: .u8, shape: [128, 176]),
            PlannedTensor(name: "model.layers.1.mlp.down_proj.weight_scale", dtype: .f8e4m3, shape: [128, 22]),
            PlannedTensor(name: "model.layers.1.mlp.down_proj.weight_global_scale", dtype: .f32, shape: [1]),
            PlannedTensor(name: "model.layers.1.mlp.down_proj.input_global_scale", dtype: .f32, shape: [1]),
        ])
        let modelopt = LinearTensorLayout(layout: .modelopt, scheme: .nvfp4)
        #expect(modelopt.plannedTensors(for: spec).map(\.shape) == [[128, 176], [128, 22], [], []])
        #expect(LinearTensorLayout(layout: .compressedTensors, scheme: .nvfp4a16).plannedTensors(for: spec).count == 3)
    }

    @Test func w4a4LinearWithoutInputScaleIsRefused() throws {
        let spec = try #require(try Fixtures.tinyConfig().linears(layer: 0).first)
        let weight = NVFP4Weight(rows: spec.outFeatures, cols: spec.inFeatures,
                                 packed: [UInt8](repeating: 0, count: spec.outFeatures * spec.inFeatures / 2),
                                 blockScales: [UInt8](repeating: 0x38, count: spec.outFeatures * spec.inFeatures / 16),
                                 weightScale2: 1)
        let error = expectCheckpointError {
            _ = try LinearTensorLayout(layout: .modelopt, scheme: .nvfp4)
                .tensorBytes(QuantizedLinear(spec: spec, weight: weight, inputScale: nil))
        }
        #expect(error?.subject == spec.name)
    }
}

/// `QuantizationConfigWriter.configWithQuantization` and the scale-dtype compatibility option.
@Suite struct QuantizationConfigWriterTests {
    let sourceConfig = Fixtures.tinyLlama.appendingPathComponent("config.json")

    @Test func refusesAnAlreadyQuantizedConfig() throws {
        let original = try Data(contentsOf: Fixtures.llmCompressor.appendingPathComponent("config.json"))
        let error = expectCheckpointError {
            _ = try QuantizationConfigWriter(layout: .compressedTensors, scheme: .nvfp4)
                .configWithQuantization(original: original, source: "some/config.json")
        }
        #expect(error?.subject == "some/config.json")
        #expect(error?.message.contains("quantization_config") == true)
    }

    @Test func refusesAConfigThatIsNotAJSONObject() throws {
        for text in ["[1, 2]", "not json", ""] {
            let error = expectCheckpointError {
                _ = try QuantizationConfigWriter(layout: .modelopt, scheme: .nvfp4)
                    .configWithQuantization(original: Data(text.utf8), source: "bad/config.json")
            }
            #expect(error?.subject == "bad/config.json")
        }
    }

    @Test(arguments: CheckpointLayout.allCases)
    func keepsTheOriginalBytesBeforeTheClosingBrace(layout: CheckpointLayout) throws {
        let original = try Data(contentsOf: sourceConfig)
        let output = try QuantizationConfigWriter(layout: layout, scheme: .nvfp4)
            .configWithQuantization(original: original, source: sourceConfig.path)
        let originalText = try #require(String(data: original, encoding: .utf8))
        let closing = try #require(originalText.lastIndex(of: "}"))
        let kept = String(originalText[..<closing]).trimmingCharacters(in: .whitespacesAndNewlines)
        let outputText = try #require(String(data: output, encoding: .utf8))
        #expect(outputText.hasPrefix(kept + ",\n  \"quantization_config\": {"))
        #expect(outputText.hasSuffix("}\n"))
        let parsed = try #require(try JSONSerialization.jsonObject(with: output) as? [String: Any])
        #expect(parsed["quantization_config"] is [String: Any])
    }

    @Test func handlesAnEmptyObject() throws {
        let output = try QuantizationConfigWriter(layout: .compressedTensors, scheme: .nvfp4a16)
            .configWithQuantization(original: Data("{}".utf8), source: "empty.json")
        let parsed = try #require(try JSONSerialization.jsonObject(with: output) as? [String: Any])
        #expect(Array(parsed.keys) == ["quantization_config"])
    }

    @Test func omitScaleDTypeKeysRemovesExactlyThoseKeys() throws {
        func args(_ omit: Bool) throws -> (weights: [String: Any], inputs: [String: Any]) {
            let output = try QuantizationConfigWriter(layout: .compressedTensors, scheme: .nvfp4, omitScaleDTypeKeys: omit)
                .configWithQuantization(original: Data(contentsOf: sourceConfig), source: "config.json")
            let root = try #require(try JSONSerialization.jsonObject(with: output) as? [String: Any])
            let quantization = try #require(root["quantization_config"] as? [String: Any])
            let group = try #require((quantization["config_groups"] as? [String: Any])?["group_0"] as? [String: Any])
            return (try #require(group["weights"] as? [String: Any]), try #require(group["input_activations"] as? [String: Any]))
        }
        let full = try args(false)
        let reduced = try args(true)
        for (fullArgs, reducedArgs) in [(full.weights, reduced.weights), (full.inputs, reduced.inputs)] {
            #expect(Set(fullArgs.keys).subtracting(reducedArgs.keys) == ["scale_dtype", "zp_dtype"])
            #expect(Set(reducedArgs.keys).isSubset(of: Set(fullArgs.keys)))
            for (key, value) in reducedArgs { #expect(sameJSON(value, fullArgs[key]), "\(key)") }
        }
    }

    @Test func modeloptHFQuantConfigText() throws {
        let text = QuantizationConfigWriter(layout: .modelopt, scheme: .nvfp4).hfQuantConfigJSON()
        let parsed = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
        let reference = try jsonObject(Fixtures.modelopt.appendingPathComponent("hf_quant_config.json"))
        #expect(sameJSON(parsed, reference))
    }
}
