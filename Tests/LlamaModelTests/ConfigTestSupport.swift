import Foundation
@testable import LlamaModel

/// Config JSON built from ordered (key, JSON text) fields, so that tests can change or drop single fields.
struct ConfigJSON {
    var fields: [(key: String, json: String)]

    /// A small valid Llama config: hidden 32, 2 heads, 1 KV head, head_dim 16, 1 layer.
    static var small: ConfigJSON {
        ConfigJSON(fields: [
            ("model_type", "\"llama\""),
            ("architectures", "[\"LlamaForCausalLM\"]"),
            ("hidden_size", "32"),
            ("intermediate_size", "64"),
            ("num_attention_heads", "2"),
            ("num_key_value_heads", "1"),
            ("num_hidden_layers", "1"),
            ("vocab_size", "8"),
            ("rms_norm_eps", "1e-06"),
            ("hidden_act", "\"silu\""),
            ("attention_bias", "false"),
            ("mlp_bias", "false"),
            ("rope_theta", "10000.0"),
            ("max_position_embeddings", "2048"),
        ])
    }

    func setting(_ key: String, _ json: String) -> ConfigJSON {
        var copy = self
        if let index = copy.fields.firstIndex(where: { $0.key == key }) {
            copy.fields[index].json = json
        } else {
            copy.fields.append((key, json))
        }
        return copy
    }

    func removing(_ key: String) -> ConfigJSON {
        var copy = self
        copy.fields.removeAll { $0.key == key }
        return copy
    }

    var text: String { "{" + fields.map { "\"\($0.key)\": \($0.json)" }.joined(separator: ", ") + "}" }

    func parse(source: String = "test/config.json") throws -> LlamaConfig {
        try LlamaConfig(json: Data(text.utf8), source: source)
    }
}

enum Fixtures {
    static var directory: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("Fixtures")
    }

    static func path(_ relative: String) -> String { directory.appendingPathComponent(relative).path }
}
