import Foundation

/// The `quantization_config` entry of `config.json`, and modelopt's `hf_quant_config.json` (spec §6, §7).
public struct QuantizationConfigWriter: Sendable {
    public let layout: CheckpointLayout
    public let scheme: QuantizationScheme
    /// Omit `scale_dtype` and `zp_dtype`, for vLLM builds pinned to compressed-tensors ≤ 0.12 (spec §6).
    public let omitScaleDTypeKeys: Bool
    /// Linear modules kept unquantized (`--exclude`), by exact name in model order. Both loaders expand a fused
    /// module (qkv_proj, gate_up_proj) into its members' names and look each up, so every member is listed.
    public let excludedModules: [String]

    public static let compressedTensorsVersion = "0.19.0"
    public static let modeloptVersion = "0.47.0"

    public init(layout: CheckpointLayout, scheme: QuantizationScheme, omitScaleDTypeKeys: Bool = false,
                excludedModules: [String] = []) {
        self.layout = layout
        self.scheme = scheme
        self.omitScaleDTypeKeys = omitScaleDTypeKeys
        self.excludedModules = excludedModules
    }

    /// compressed-tensors' `ignore`: lm_head, then the excluded Linears.
    public var compressedTensorsIgnore: [String] { ["lm_head"] + excludedModules }

    /// modelopt's `ignore` and `exclude_modules` (the same list): lm_head and the embeddings, then the excluded Linears.
    public var modeloptExcludeModules: [String] { ["lm_head", "model.embed_tokens"] + excludedModules }

    /// The `quantization_config` value as JSON text, indented to sit one level deep in config.json.
    public func quantizationConfigJSON(indent: String = "  ") -> String {
        switch layout {
        case .compressedTensors: return compressedTensorsConfig(indent: indent)
        case .modelopt: return modeloptConfig(indent: indent)
        }
    }

    func quantizationArgs(observer: String, dynamic: String) -> [(String, String)] {
        var args: [(String, String)] = [
            ("actorder", "null"), ("block_structure", "null"), ("dynamic", dynamic), ("group_size", "16"),
            ("num_bits", "4"), ("observer", "\"\(observer)\""), ("observer_kwargs", "{}"),
            ("scale_dtype", "\"torch.float8_e4m3fn\""), ("strategy", "\"tensor_group\""), ("symmetric", "true"),
            ("type", "\"float\""), ("zp_dtype", "null"),
        ]
        if omitScaleDTypeKeys { args.removeAll { $0.0 == "scale_dtype" || $0.0 == "zp_dtype" } }
        return args
    }

    func compressedTensorsConfig(indent: String) -> String {
        let inputActivations: JSONText = scheme.quantizesActivations
            ? .object(quantizationArgs(observer: "static_minmax", dynamic: "\"local\"").map { ($0.0, .raw($0.1)) })
            : .raw("null")
        let weights = JSONText.object(quantizationArgs(observer: "memoryless_minmax", dynamic: "false")
            .map { ($0.0, .raw($0.1)) })
        let config = JSONText.object([
            ("config_groups", .object([
                ("group_0", .object([
                    ("format", .string("nvfp4-pack-quantized")),
                    ("input_activations", inputActivations),
                    ("output_activations", .raw("null")),
                    ("targets", .array([.string("Linear")])),
                    ("weights", weights),
                ])),
            ])),
            ("format", .string("nvfp4-pack-quantized")),
            ("global_compression_ratio", .raw("null")),
            ("ignore", .array(compressedTensorsIgnore.map(JSONText.string))),
            ("kv_cache_scheme", .raw("null")),
            ("quant_method", .string("compressed-tensors")),
            ("quantization_status", .string("compressed")),
            ("sparsity_config", .raw("{}")),
            ("transform_config", .raw("{}")),
            ("version", .string(Self.compressedTensorsVersion)),
        ])
        return config.render(indentUnit: "  ", level: 1, baseIndent: indent)
    }

    func modeloptConfig(indent: String) -> String {
        let args = JSONText.object([
            ("dynamic", .raw("false")), ("num_bits", .raw("4")), ("type", .string("float")), ("group_size", .raw("16")),
        ])
        let config = JSONText.object([
            ("config_groups", .object([
                ("group_0", .object([
                    ("input_activations", args), ("weights", args), ("targets", .array([.string("Linear")])),
                ])),
            ])),
            ("ignore", .array(modeloptExcludeModules.map(JSONText.string))),
            ("quant_algo", .string("NVFP4")),
            ("producer", .object([("name", .string("modelopt")), ("version", .string(Self.modeloptVersion))])),
            ("quant_method", .string("modelopt")),
        ])
        return config.render(indentUnit: "  ", level: 1, baseIndent: indent)
    }

    /// modelopt's `hf_quant_config.json`, key order as modelopt 0.47 writes it, 4-space indent.
    public func hfQuantConfigJSON() -> String {
        JSONText.object([
            ("producer", .object([("name", .string("modelopt")), ("version", .string(Self.modeloptVersion))])),
            ("quantization", .object([
                ("quant_algo", .string("NVFP4")),
                ("kv_cache_quant_algo", .raw("null")),
                ("group_size", .raw("16")),
                ("exclude_modules", .array(modeloptExcludeModules.map(JSONText.string))),
            ])),
        ]).render(indentUnit: "    ", level: 0, baseIndent: "") + "\n"
    }

    /// The source `config.json` bytes with `quantization_config` appended as the last key. Every original byte
    /// before the closing brace is kept, so no field is renamed, reordered or re-spelled (spec §9).
    public func configWithQuantization(original: Data, source: String) throws -> Data {
        guard let object = try? JSONSerialization.jsonObject(with: original) as? [String: Any] else {
            throw CheckpointError(source, "is not a JSON object")
        }
        if object["quantization_config"] != nil {
            throw CheckpointError(source, "already has a quantization_config: the model is already quantized")
        }
        guard var text = String(data: original, encoding: .utf8),
              let closing = text.lastIndex(of: "}") else {
            throw CheckpointError(source, "is not UTF-8 JSON text")
        }
        var body = String(text[..<closing])
        while let last = body.last, last.isWhitespace { body.removeLast() }
        let empty = object.isEmpty
        text = body + (empty ? "" : ",") + "\n  \"quantization_config\": " + quantizationConfigJSON() + "\n}\n"
        return Data(text.utf8)
    }
}

/// A tiny ordered JSON builder: the reference writers' key orders matter to people diffing configs.
indirect enum JSONText {
    case raw(String)
    case string(String)
    case array([JSONText])
    case object([(String, JSONText)])

    func render(indentUnit: String, level: Int, baseIndent: String) -> String {
        let pad = String(repeating: indentUnit, count: level)
        let inner = String(repeating: indentUnit, count: level + 1)
        switch self {
        case .raw(let text): return text
        case .string(let value): return Self.quote(value)
        case .array(let items):
            if items.isEmpty { return "[]" }
            let rendered = items.map { inner + $0.render(indentUnit: indentUnit, level: level + 1, baseIndent: baseIndent) }
            return "[\n" + rendered.joined(separator: ",\n") + "\n" + pad + "]"
        case .object(let members):
            if members.isEmpty { return "{}" }
            let rendered = members.map {
                inner + Self.quote($0.0) + ": " + $0.1.render(indentUnit: indentUnit, level: level + 1, baseIndent: baseIndent)
            }
            return "{\n" + rendered.joined(separator: ",\n") + "\n" + pad + "}"
        }
    }

    static func quote(_ value: String) -> String {
        var out = "\""
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case "\r": out += "\\r"
            default:
                if scalar.value < 0x20 { out += String(format: "\\u%04x", scalar.value) } else { out.unicodeScalars.append(scalar) }
            }
        }
        return out + "\""
    }
}
