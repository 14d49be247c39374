import Foundation
import Testing
@testable import LlamaModel

@Suite struct LlamaConfigTests {
    @Test func parsesTheTinyLlamaFixtureWithRopeScalingSpelling() throws {
        let path = Fixtures.path("tiny-llama/config.json")
        let config = try LlamaConfig.load(path: path)
        #expect(config.raw == (try Data(contentsOf: URL(fileURLWithPath: path))))
        #expect(config.modelType == "llama")
        #expect(config.architectures == ["LlamaForCausalLM"])
        #expect(config.hiddenSize == 128)
        #expect(config.intermediateSize == 352)
        #expect(config.numAttentionHeads == 4)
        #expect(config.numKeyValueHeads == 2)
        #expect(config.headDim == 32)
        #expect(config.numHiddenLayers == 2)
        #expect(config.vocabSize == 512)
        #expect(config.rmsNormEps == 1e-5)
        #expect(config.tieWordEmbeddings == false)
        #expect(config.bosTokenID == 510)
        #expect(config.eosTokenIDs == [511])
        #expect(config.maxPositionEmbeddings == 4096)
        #expect(config.torchDtype == "bfloat16")
        #expect(config.rope == RopeParameters(theta: 500000, kind: .llama3(Llama3RopeScaling(
            factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 1024))))
    }

    @Test func parsesTheRopeParametersSpellingOfTheModeloptExport() throws {
        let scalingSpelling = try LlamaConfig.load(path: Fixtures.path("tiny-llama/config.json"))
        let parametersSpelling = try LlamaConfig.load(path: Fixtures.path("tiny-llama-nvfp4-modelopt/config.json"))
        #expect(parametersSpelling.rope == scalingSpelling.rope)
        #expect(parametersSpelling.torchDtype == "bfloat16")  // spelled "dtype" there
        #expect(parametersSpelling.eosTokenIDs == [511])
        #expect(parametersSpelling.headDim == 32)
        #expect(parametersSpelling.numKeyValueHeads == 2)
    }

    @Test func appliesDefaultsForOptionalFields() throws {
        let config = try ConfigJSON.small
            .removing("num_key_value_heads").removing("rope_theta").removing("hidden_act")
            .removing("attention_bias").removing("mlp_bias").removing("architectures")
            .parse()
        #expect(config.numKeyValueHeads == 2)
        #expect(config.headDim == 16)
        #expect(config.tieWordEmbeddings == false)
        #expect(config.bosTokenID == nil)
        #expect(config.eosTokenIDs == [])
        #expect(config.torchDtype == nil)
        #expect(config.architectures == [])
        #expect(config.rope == RopeParameters(theta: LlamaConfig.defaultRopeTheta, kind: .default))
    }

    @Test func nullMeansAbsent() throws {
        let config = try ConfigJSON.small
            .setting("num_key_value_heads", "null").setting("head_dim", "null")
            .setting("rope_scaling", "null").setting("sliding_window", "null").setting("bos_token_id", "null")
            .parse()
        #expect(config.numKeyValueHeads == 2)
        #expect(config.headDim == 16)
        #expect(config.rope.kind == .default)
        #expect(config.bosTokenID == nil)
    }

    @Test func explicitHeadDimNeedNotDivideHidden() throws {
        let config = try ConfigJSON.small.setting("hidden_size", "48").setting("head_dim", "32").parse()
        #expect(config.headDim == 32)
        #expect(config.expectedShape(of: .q) == [64, 48])
    }

    @Test func eosTokenIDMayBeAnIntOrAList() throws {
        #expect(try ConfigJSON.small.setting("eos_token_id", "2").parse().eosTokenIDs == [2])
        #expect(try ConfigJSON.small.setting("eos_token_id", "[2, 7, 9]").parse().eosTokenIDs == [2, 7, 9])
    }

    @Test func readsDtypeFromEitherSpelling() throws {
        #expect(try ConfigJSON.small.setting("torch_dtype", "\"float16\"").parse().torchDtype == "float16")
        #expect(try ConfigJSON.small.setting("dtype", "\"bfloat16\"").parse().torchDtype == "bfloat16")
    }

    @Test func ropeSpellings() throws {
        let llama3 = RopeParameters.Kind.llama3(Llama3RopeScaling(
            factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192))
        let typeAlias = try ConfigJSON.small.setting("rope_scaling", """
            {"type": "llama3", "factor": 32, "low_freq_factor": 1, "high_freq_factor": 4, "original_max_position_embeddings": 8192}
            """).parse()
        #expect(typeAlias.rope == RopeParameters(theta: 10000, kind: llama3))

        let parameters = try ConfigJSON.small.removing("rope_theta").setting("rope_parameters", """
            {"rope_type": "default", "rope_theta": 1000000.0}
            """).parse()
        #expect(parameters.rope == RopeParameters(theta: 1_000_000, kind: .default))

        let explicitDefault = try ConfigJSON.small.setting("rope_theta", "5e5")
            .setting("rope_scaling", "{\"rope_type\": \"default\"}").parse()
        #expect(explicitDefault.rope == RopeParameters(theta: 500000, kind: .default))

        let fallback = try ConfigJSON.small.setting("rope_scaling", """
            {"rope_type": "llama3", "factor": 8, "low_freq_factor": 1, "high_freq_factor": 4}
            """).parse()
        #expect(fallback.rope.kind == .llama3(Llama3RopeScaling(
            factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 2048)))
    }

    @Test func acceptsMistralWithoutSlidingWindow() throws {
        let config = try ConfigJSON.small.setting("model_type", "\"mistral\"")
            .setting("architectures", "[\"MistralForCausalLM\"]").setting("sliding_window", "null").parse()
        #expect(config.modelType == "mistral")
    }

    /// Each case: a change to a valid config, and the field the error must name.
    static let rejections: [(name: String, config: ConfigJSON, field: String)] = [
        ("other model type", ConfigJSON.small.setting("model_type", "\"qwen2\""), "model_type"),
        ("other architecture", ConfigJSON.small.setting("architectures", "[\"Qwen2ForCausalLM\"]"), "architectures"),
        ("mistral sliding window", ConfigJSON.small.setting("model_type", "\"mistral\"").setting("sliding_window", "4096"), "sliding_window"),
        ("llama sliding window", ConfigJSON.small.setting("sliding_window", "4096"), "sliding_window"),
        ("yarn", ConfigJSON.small.setting("rope_scaling", "{\"rope_type\": \"yarn\", \"factor\": 4}"), "rope_scaling.rope_type"),
        ("linear via type alias", ConfigJSON.small.setting("rope_scaling", "{\"type\": \"linear\", \"factor\": 2}"), "rope_scaling.type"),
        ("dynamic", ConfigJSON.small.setting("rope_scaling", "{\"rope_type\": \"dynamic\", \"factor\": 2}"), "rope_scaling.rope_type"),
        ("yarn in rope_parameters", ConfigJSON.small.setting("rope_parameters", "{\"rope_type\": \"yarn\", \"rope_theta\": 1e4}"), "rope_parameters.rope_type"),
        ("llama3 without factor", ConfigJSON.small.setting("rope_scaling", "{\"rope_type\": \"llama3\", \"low_freq_factor\": 1, \"high_freq_factor\": 4}"), "rope_scaling.factor"),
        ("llama3 without any context length", ConfigJSON.small.removing("max_position_embeddings").setting("rope_scaling", "{\"rope_type\": \"llama3\", \"factor\": 8, \"low_freq_factor\": 1, \"high_freq_factor\": 4}"), "rope_scaling.original_max_position_embeddings"),
        ("llama3 high not above low", ConfigJSON.small.setting("rope_scaling", "{\"rope_type\": \"llama3\", \"factor\": 8, \"low_freq_factor\": 4, \"high_freq_factor\": 4}"), "rope_scaling.high_freq_factor"),
        ("rope_scaling not an object", ConfigJSON.small.setting("rope_scaling", "\"llama3\""), "rope_scaling"),
        ("attention bias", ConfigJSON.small.setting("attention_bias", "true"), "attention_bias"),
        ("mlp bias", ConfigJSON.small.setting("mlp_bias", "true"), "mlp_bias"),
        ("gelu", ConfigJSON.small.setting("hidden_act", "\"gelu\""), "hidden_act"),
        ("missing model_type", ConfigJSON.small.removing("model_type"), "model_type"),
        ("missing hidden_size", ConfigJSON.small.removing("hidden_size"), "hidden_size"),
        ("missing intermediate_size", ConfigJSON.small.removing("intermediate_size"), "intermediate_size"),
        ("missing num_attention_heads", ConfigJSON.small.removing("num_attention_heads"), "num_attention_heads"),
        ("missing num_hidden_layers", ConfigJSON.small.removing("num_hidden_layers"), "num_hidden_layers"),
        ("missing vocab_size", ConfigJSON.small.removing("vocab_size"), "vocab_size"),
        ("missing rms_norm_eps", ConfigJSON.small.removing("rms_norm_eps"), "rms_norm_eps"),
        ("string size", ConfigJSON.small.setting("hidden_size", "\"32\""), "hidden_size"),
        ("fractional size", ConfigJSON.small.setting("hidden_size", "32.5"), "hidden_size"),
        ("string eps", ConfigJSON.small.setting("rms_norm_eps", "\"1e-6\""), "rms_norm_eps"),
        ("string tie flag", ConfigJSON.small.setting("tie_word_embeddings", "\"yes\""), "tie_word_embeddings"),
        ("numeric bias flag", ConfigJSON.small.setting("attention_bias", "0"), "attention_bias"),
        ("string eos", ConfigJSON.small.setting("eos_token_id", "\"</s>\""), "eos_token_id"),
        ("architectures not a list", ConfigJSON.small.setting("architectures", "\"LlamaForCausalLM\""), "architectures"),
        ("zero hidden size", ConfigJSON.small.setting("hidden_size", "0"), "hidden_size"),
        ("negative layer count", ConfigJSON.small.setting("num_hidden_layers", "-1"), "num_hidden_layers"),
        ("zero eps", ConfigJSON.small.setting("rms_norm_eps", "0"), "rms_norm_eps"),
        ("zero head_dim", ConfigJSON.small.setting("head_dim", "0"), "head_dim"),
        ("negative rope theta", ConfigJSON.small.setting("rope_theta", "-1"), "rope_theta"),
        ("kv heads not dividing heads", ConfigJSON.small.setting("num_attention_heads", "4").setting("num_key_value_heads", "3"), "num_key_value_heads"),
        ("hidden not divisible by heads", ConfigJSON.small.setting("hidden_size", "33"), "hidden_size"),
        ("odd head dim", ConfigJSON.small.setting("head_dim", "15"), "head_dim"),
    ]

    @Test(arguments: 0..<rejections.count)
    func rejectsUnsupportedOrInvalidConfigs(_ index: Int) throws {
        let testCase = Self.rejections[index]
        let error = try #require(throws: LlamaConfigError.self, "\(testCase.name)") {
            try testCase.config.parse(source: "models/x/config.json")
        }
        #expect(error.field == testCase.field, "\(testCase.name): \(error)")
        #expect(error.source == "models/x/config.json")
        #expect(error.description.contains("models/x/config.json"))
        #expect(error.description.contains(testCase.field))
    }

    @Test func rejectsDocumentsThatAreNotConfigObjects() throws {
        for text in ["{not json", "[1, 2]"] {
            let error = try #require(throws: LlamaConfigError.self) {
                try LlamaConfig(json: Data(text.utf8), source: "bad.json")
            }
            #expect(error.description.hasPrefix("bad.json"))
        }
    }

    @Test func reportsAnUnreadableFile() throws {
        let error = try #require(throws: LlamaConfigError.self) {
            try LlamaConfig.load(path: "/nonexistent/config.json")
        }
        #expect(error.source == "/nonexistent/config.json")
    }
}
