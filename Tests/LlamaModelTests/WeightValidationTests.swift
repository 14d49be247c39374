import Foundation
import Testing
import LlamaModel
import SafeTensors

@Suite struct WeightValidationTests {
    /// A complete F32 source for `config`, every value 0.5.
    static func completeSource(_ config: LlamaConfig) -> InMemoryWeightSource {
        var source = InMemoryWeightSource()
        var tensors = config.allLinears.map { TensorSpec(name: $0.weightName, shape: $0.shape) }
        tensors += config.nonQuantizedTensors
        for tensor in tensors {
            source.set(tensor.name, shape: tensor.shape, floats: [Float](repeating: 0.5, count: tensor.shape.reduce(1, *)))
        }
        return source
    }

    @Test func acceptsACompleteModel() throws {
        let config = try ConfigJSON.small.parse()
        try validateWeights(config: config, source: Self.completeSource(config))
    }

    @Test func acceptsATiedModelWithoutLmHead() throws {
        let config = try ConfigJSON.small.setting("tie_word_embeddings", "true").parse()
        let source = Self.completeSource(config)
        #expect(source.describeTensor("lm_head.weight") == nil)
        try validateWeights(config: config, source: source)
    }

    @Test(arguments: ["model.layers.0.self_attn.q_proj.weight", "model.layers.0.mlp.down_proj.weight",
                      "model.layers.0.post_attention_layernorm.weight", "model.embed_tokens.weight",
                      "model.norm.weight", "lm_head.weight"])
    func namesAMissingTensor(_ name: String) throws {
        let config = try ConfigJSON.small.parse()
        let complete = Self.completeSource(config)
        let error = try #require(throws: LlamaWeightError.self) {
            try validateWeights(config: config) { $0 == name ? nil : complete.describeTensor($0) }
        }
        #expect(error == .missingTensor(name: name))
        #expect(error.description.contains(name))
    }

    @Test func namesATensorWhoseShapeDiffersFromTheConfig() throws {
        let config = try ConfigJSON.small.parse()
        var source = Self.completeSource(config)
        source.set("model.layers.0.self_attn.k_proj.weight", shape: [32, 32], floats: [Float](repeating: 0, count: 1024))
        let error = try #require(throws: LlamaWeightError.self) { try validateWeights(config: config, source: source) }
        #expect(error == .shapeMismatch(name: "model.layers.0.self_attn.k_proj.weight", expected: [16, 32], actual: [32, 32]))
        #expect(error.description.contains("k_proj"))
    }

    @Test func namesATensorWithANonFloatDType() throws {
        let config = try ConfigJSON.small.parse()
        var source = Self.completeSource(config)
        source.set("model.norm.weight", dtype: "I32", shape: [32], bytes: Data(count: 128))
        let error = try #require(throws: LlamaWeightError.self) { try validateWeights(config: config, source: source) }
        #expect(error == .unsupportedDType(name: "model.norm.weight", dtype: "I32"))
    }

    @Test func namesALinearWhoseInFeaturesAreNotAMultipleOf16() throws {
        let config = try ConfigJSON.small.setting("intermediate_size", "40").parse()
        let error = try #require(throws: LlamaWeightError.self) {
            try validateWeights(config: config, source: Self.completeSource(config))
        }
        #expect(error == .inFeaturesNotMultipleOf16(name: "model.layers.0.mlp.down_proj.weight", inFeatures: 40))
        #expect(error.description.contains("down_proj"))
    }

    @Test func floatsWidensBF16AndF16AndChecksTheTensor() throws {
        var source = InMemoryWeightSource()
        let bf16: [UInt16] = [0x3F80, 0xC000, 0x3EAB]          // 1, -2, 0.333984375
        source.set("b", dtype: "BF16", shape: [3], bytes: bf16.withUnsafeBytes { Data($0) })
        let f16: [UInt16] = [0x3C00, 0xC100, 0x3555]           // 1, -2.5, 0.33325195
        source.set("h", dtype: "F16", shape: [3], bytes: f16.withUnsafeBytes { Data($0) })
        #expect(try source.floats("b", expectedShape: [3]) == [1, -2, 0.333984375])
        #expect(try source.floats("h", expectedShape: [3]) == [1, -2.5, Float(Float16(bitPattern: 0x3555))])
        #expect(throws: LlamaWeightError.shapeMismatch(name: "b", expected: [1, 3], actual: [3])) {
            try source.floats("b", expectedShape: [1, 3])
        }
        source.set("short", dtype: "BF16", shape: [3], bytes: Data(count: 4))
        #expect(throws: LlamaWeightError.byteCountMismatch(name: "short", expected: 6, actual: 4)) {
            try source.floats("short", expectedShape: [3])
        }
        #expect(throws: LlamaWeightError.missingTensor(name: "absent")) {
            try source.floats("absent", expectedShape: [3])
        }
    }

    @Test func overlayPrefersItsOverrides() throws {
        var base = InMemoryWeightSource()
        base.set("w", shape: [2], floats: [1, 2])
        base.set("n", shape: [1], floats: [3])
        var overrides = InMemoryWeightSource()
        overrides.set("w", shape: [2], floats: [5, 6])
        let overlay = OverlayWeightSource(base: base, overrides: overrides)
        #expect(try overlay.floats("w", expectedShape: [2]) == [5, 6])
        #expect(try overlay.floats("n", expectedShape: [1]) == [3])
        #expect(overlay.describeTensor("x") == nil)
    }
}

@Suite struct CheckpointWeightValidationTests {
    @Test func theShardedTinyLlamaCheckpointMatchesItsConfig() throws {
        let config = try LlamaConfig.load(path: Fixtures.path("tiny-llama/config.json"))
        let model = try SafeTensorsModel(directory: Fixtures.path("tiny-llama"))
        try validateWeights(config: config, model: model)
        #expect(model.describeTensor("model.layers.1.mlp.down_proj.weight") == WeightTensorDescription(dtype: "BF16", shape: [128, 352]))
        let norm = try model.floats("model.norm.weight", expectedShape: [128])
        #expect(norm == (try model.floats("model.norm.weight")))
    }

    @Test func aConfigThatDisagreesWithTheCheckpointNamesTheTensor() throws {
        let fixture = try String(contentsOfFile: Fixtures.path("tiny-llama/config.json"), encoding: .utf8)
        let config = try LlamaConfig(json: Data(fixture.replacingOccurrences(of: "\"intermediate_size\": 352", with: "\"intermediate_size\": 384").utf8),
                                     source: "edited.json")
        let model = try SafeTensorsModel(directory: Fixtures.path("tiny-llama"))
        #expect(throws: LlamaWeightError.shapeMismatch(name: "model.layers.0.mlp.gate_proj.weight", expected: [384, 128], actual: [352, 128])) {
            try validateWeights(config: config, model: model)
        }
    }

    @Test func aQuantizedCheckpointIsRejectedAsInput() throws {
        // The modelopt export stores Linear weights as packed U8.
        let config = try LlamaConfig.load(path: Fixtures.path("tiny-llama-nvfp4-modelopt/config.json"))
        let model = try SafeTensorsModel(directory: Fixtures.path("tiny-llama-nvfp4-modelopt"))
        #expect(throws: LlamaWeightError.shapeMismatch(name: "model.layers.0.self_attn.q_proj.weight", expected: [128, 128], actual: [128, 64])) {
            try validateWeights(config: config, model: model)
        }
    }
}
