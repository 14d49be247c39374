import Foundation
import Testing
@testable import LlamaModel

/// `--exclude` patterns: fnmatch semantics on module names, fused groups whole, and a clear refusal otherwise.
@Suite struct LinearExclusionTests {
    static func config(layers: Int = 16) throws -> LlamaConfig {
        try ConfigJSON.small.setting("num_hidden_layers", "\(layers)").parse()
    }

    @Test(arguments: [
        ("model.layers.0.*", "model.layers.0.mlp.down_proj", true),
        ("model.layers.0.*", "model.layers.10.mlp.down_proj", false),
        ("*.down_proj", "model.layers.7.mlp.down_proj", true),
        ("*down_proj", "model.layers.7.mlp.down_proj", true),
        ("*.o_proj", "model.layers.7.self_attn.q_proj", false),
        ("model.layers.?.mlp.*", "model.layers.3.mlp.up_proj", true),
        ("model.layers.?.mlp.*", "model.layers.13.mlp.up_proj", false),
        ("model.layers.1[0-5].*", "model.layers.12.self_attn.k_proj", true),
        ("model.layers.1[0-5].*", "model.layers.16.self_attn.k_proj", false),
        ("model.layers.1[!0-5].*", "model.layers.16.self_attn.k_proj", true),
        ("model.layers.*.self_attn.*", "model.layers.4.self_attn.v_proj", true),
        ("*", "model.layers.4.self_attn.v_proj", true),
        ("model.layers.4.self_attn.v_proj", "model.layers.4.self_attn.v_proj", true),
        ("model.layers.4.self_attn.v_pro", "model.layers.4.self_attn.v_proj", false),
        ("**.mlp.*_proj", "model.layers.4.mlp.gate_proj", true),
    ])
    func fnmatchSemantics(pattern: String, name: String, matches: Bool) throws {
        let glob = try #require(FnmatchPattern(pattern))
        #expect(glob.matches(name) == matches)
    }

    @Test func resolvesInModelOrderAcrossPatterns() throws {
        let config = try Self.config(layers: 3)
        let exclusion = try LinearExclusion(patterns: ["*.down_proj", "model.layers.1.*"], config: config)
        #expect(exclusion.moduleNames == [
            "model.layers.0.mlp.down_proj",
            "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.k_proj", "model.layers.1.self_attn.v_proj",
            "model.layers.1.self_attn.o_proj", "model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj",
            "model.layers.1.mlp.down_proj",
            "model.layers.2.mlp.down_proj",
        ])
        #expect(exclusion.count == 9)
        #expect(exclusion.contains(config.linears(layer: 2)[6]))
        #expect(!exclusion.contains(config.linears(layer: 2)[0]))
    }

    @Test func wholeFusedGroupsAreAccepted() throws {
        let config = try Self.config(layers: 2)
        let qkv = try LinearExclusion(patterns: ["*.q_proj", "*.k_proj", "*.v_proj"], config: config)
        #expect(qkv.count == 6)
        let gateUp = try LinearExclusion(patterns: ["model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"], config: config)
        #expect(gateUp.count == 2)
    }

    @Test func partOfAFusedGroupIsRefusedNamingThePatternAndTheMissingMembers() throws {
        let config = try Self.config(layers: 2)
        #expect(throws: LinearExclusionError.splitsFusedGroup(
            pattern: "*.q_proj", group: "q/k/v (qkv_proj)",
            matched: ["model.layers.0.self_attn.q_proj"],
            missing: ["model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj"])) {
            try LinearExclusion(patterns: ["*.q_proj"], config: config)
        }
        do {
            _ = try LinearExclusion(patterns: ["model.layers.1.mlp.up_proj"], config: config)
            Issue.record("a lone up_proj was accepted")
        } catch {
            let text = error.description
            #expect(text.contains("'model.layers.1.mlp.up_proj'") && text.contains("but not model.layers.1.mlp.gate_proj"), "\(text)")
            #expect(text.contains("gate/up") && text.contains("'model.layers.1.mlp.*'"), "\(text)")
        }
    }

    @Test func aPatternMatchingNothingIsRefused() throws {
        let config = try Self.config(layers: 2)
        do {
            _ = try LinearExclusion(patterns: ["*.down_proj", "model.layers.2.*"], config: config)
            Issue.record("a pattern matching nothing was accepted")
        } catch {
            #expect(error == .matchesNothing(pattern: "model.layers.2.*", example: "model.layers.0.self_attn.q_proj"))
            #expect(error.description.contains("'model.layers.2.*' matches no Linear"))
        }
        #expect(throws: LinearExclusionError.self) { try LinearExclusion(patterns: ["lm_head"], config: config) }
        #expect(throws: LinearExclusionError.self) { try LinearExclusion(patterns: ["model.layers.0.mlp"], config: config) }
    }

    @Test func malformedPatternsAreRefused() throws {
        let config = try Self.config(layers: 2)
        #expect(throws: LinearExclusionError.malformedPattern(pattern: "", reason: "an empty pattern matches nothing")) {
            try LinearExclusion(patterns: [""], config: config)
        }
        do {
            _ = try LinearExclusion(patterns: ["model.layers.[0"], config: config)
            Issue.record("an unclosed set was accepted")
        } catch {
            guard case .malformedPattern(let pattern, _) = error else { Issue.record("\(error)"); return }
            #expect(pattern == "model.layers.[0")
        }
    }

    @Test func noPatternsExcludeNothing() throws {
        let exclusion = try LinearExclusion(patterns: [], config: try Self.config(layers: 2))
        #expect(exclusion.isEmpty && exclusion.moduleNames.isEmpty)
        #expect(exclusion == .empty)
    }
}
