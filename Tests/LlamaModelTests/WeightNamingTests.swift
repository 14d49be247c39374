import Foundation
import Testing
import LlamaModel

@Suite struct WeightNamingTests {
    @Test func linearsOfALayerHaveHuggingFaceNamesAndShapes() throws {
        let config = try LlamaConfig.load(path: Fixtures.path("tiny-llama/config.json"))
        let linears = config.linears(layer: 1)
        #expect(linears.map(\.name) == [
            "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj", "model.layers.1.self_attn.v_proj",
            "model.layers.1.self_attn.o_proj", "model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj",
            "model.layers.1.mlp.down_proj",
        ])
        #expect(linears.map(\.shape) == [[128, 128], [64, 128], [64, 128], [128, 128], [352, 128], [352, 128], [128, 352]])
        #expect(linears[0].weightName == "model.layers.1.self_attn.q_proj.weight")
        #expect(linears.allSatisfy { $0.layer == 1 })
        #expect(config.allLinears.count == 14)
    }

    @Test func fusedGroupsPartitionTheLinears() {
        #expect(FusedGroup.allCases.flatMap(\.members).sorted { $0.rawValue < $1.rawValue }
                == LinearKind.allCases.sorted { $0.rawValue < $1.rawValue })
        for group in FusedGroup.allCases {
            #expect(group.members.allSatisfy { $0.group == group })
        }
        #expect(FusedGroup.qkv.members == [.q, .k, .v])
        #expect(FusedGroup.gateUp.members == [.gate, .up])
    }

    @Test func nonQuantizedTensorsIncludeLmHeadOnlyWhenUntied() throws {
        let untied = try ConfigJSON.small.parse()
        #expect(untied.nonQuantizedTensors.map(\.name) == [
            "model.embed_tokens.weight", "model.layers.0.input_layernorm.weight",
            "model.layers.0.post_attention_layernorm.weight", "model.norm.weight", "lm_head.weight",
        ])
        #expect(untied.nonQuantizedTensors.first?.shape == [8, 32])
        #expect(untied.outputEmbeddingName == "lm_head.weight")
        let tied = try ConfigJSON.small.setting("tie_word_embeddings", "true").parse()
        #expect(!tied.nonQuantizedTensors.map(\.name).contains("lm_head.weight"))
        #expect(tied.outputEmbeddingName == "model.embed_tokens.weight")
    }
}
