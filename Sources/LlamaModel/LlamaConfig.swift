import Foundation
import StrictJSON

/// The error thrown for a `config.json` that this project cannot or will not handle.
///
/// It names the config file (`source`) and the offending field, using dotted paths for nested fields
/// (for example `rope_scaling.rope_type`).
public struct LlamaConfigError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The config file (path or other label given by the caller).
    public let source: String
    /// The JSON field at fault; empty when the document as a whole is at fault.
    public let field: String
    /// What is wrong with it.
    public let problem: String

    public init(source: String, field: String, problem: String) {
        self.source = source
        self.field = field
        self.problem = problem
    }

    public var description: String {
        field.isEmpty ? "\(source): \(problem)" : "\(source): field '\(field)': \(problem)"
    }
}

/// Parameters of `rope_type: "llama3"` frequency scaling (spec §11).
public struct Llama3RopeScaling: Sendable, Equatable {
    public var factor: Double
    public var lowFreqFactor: Double
    public var highFreqFactor: Double
    public var originalMaxPositionEmbeddings: Int

    public init(factor: Double, lowFreqFactor: Double, highFreqFactor: Double, originalMaxPositionEmbeddings: Int) {
        self.factor = factor
        self.lowFreqFactor = lowFreqFactor
        self.highFreqFactor = highFreqFactor
        self.originalMaxPositionEmbeddings = originalMaxPositionEmbeddings
    }
}

/// Rotary position embedding parameters: the base `theta` and the frequency-scaling kind.
public struct RopeParameters: Sendable, Equatable {
    public enum Kind: Sendable, Equatable {
        /// Plain RoPE: `inv_freq[i] = 1 / theta^(2i/hd)`.
        case `default`
        /// Llama-3.x scaling of the low and medium frequencies.
        case llama3(Llama3RopeScaling)
    }

    public var theta: Double
    public var kind: Kind

    public init(theta: Double, kind: Kind) {
        self.theta = theta
        self.kind = kind
    }
}

/// A Llama-family `config.json`, validated against what this project supports (spec §11):
/// bias-free SiLU decoders with full causal attention, default or llama3 RoPE.
public struct LlamaConfig: Sendable, Equatable {
    /// The original bytes of `config.json`, kept so that a writer can preserve every field it does not change.
    public let raw: Data

    public var modelType: String
    public var architectures: [String]
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var numAttentionHeads: Int
    /// Defaults to `numAttentionHeads` when absent or null.
    public var numKeyValueHeads: Int
    /// `head_dim` when present and non-null, else `hiddenSize / numAttentionHeads`.
    public var headDim: Int
    public var numHiddenLayers: Int
    public var vocabSize: Int
    public var rmsNormEps: Double
    public var tieWordEmbeddings: Bool
    public var bosTokenID: Int?
    /// `eos_token_id`, which may be an int or a list in the file.
    public var eosTokenIDs: [Int]
    public var maxPositionEmbeddings: Int?
    public var rope: RopeParameters
    /// `torch_dtype` (older transformers) or `dtype` (newer).
    public var torchDtype: String?

    /// Model types accepted; "mistral" only without a sliding window.
    public static let supportedModelTypes = ["llama", "mistral"]
    public static let supportedArchitectures = ["LlamaForCausalLM", "MistralForCausalLM"]
    /// transformers' `LlamaConfig` default, used when neither `rope_parameters` nor `rope_theta` give one.
    public static let defaultRopeTheta = 10000.0

    /// Reads and validates the `config.json` at `path`.
    public static func load(path: String) throws -> LlamaConfig {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw LlamaConfigError(source: path, field: "", problem: "cannot read the file: \(error.localizedDescription)")
        }
        return try LlamaConfig(json: data, source: path)
    }

    /// Parses and validates config JSON; `source` names the file in errors.
    public init(json: Data, source: String) throws {
        let parsed = json.withUnsafeBytes { bytes in
            Result { () throws(JSONParseError) -> JSONNode in try StrictJSONParser.parse(bytes) }
        }
        let root: JSONNode
        switch parsed {
        case .success(let node): root = node
        case .failure(let error): throw LlamaConfigError(source: source, field: "", problem: "not valid JSON: \(error)")
        }
        guard case .object(let members) = root else {
            throw LlamaConfigError(source: source, field: "", problem: "the top level is a \(root.typeName), expected an object")
        }
        let top = ConfigFields(members: members, path: "", source: source)
        raw = json

        modelType = try top.requiredString("model_type")
        guard Self.supportedModelTypes.contains(modelType) else {
            throw top.error("model_type", "unsupported model type \"\(modelType)\" (supported: \(Self.supportedModelTypes.joined(separator: ", ")))")
        }
        architectures = try top.optionalStringArray("architectures") ?? []
        for architecture in architectures where !Self.supportedArchitectures.contains(architecture) {
            throw top.error("architectures", "unsupported architecture \"\(architecture)\" (supported: \(Self.supportedArchitectures.joined(separator: ", ")))")
        }
        if let window = top.value("sliding_window"), !window.isNull {
            throw top.error("sliding_window", "sliding-window attention is not supported (found \(window.typeName)); it must be absent or null")
        }
        if try top.optionalBool("attention_bias") == true {
            throw top.error("attention_bias", "attention biases are not supported; it must be false")
        }
        if try top.optionalBool("mlp_bias") == true {
            throw top.error("mlp_bias", "MLP biases are not supported; it must be false")
        }
        if let activation = try top.optionalString("hidden_act"), activation != "silu" {
            throw top.error("hidden_act", "activation \"\(activation)\" is not supported; it must be \"silu\"")
        }

        hiddenSize = try top.requiredPositiveInt("hidden_size")
        intermediateSize = try top.requiredPositiveInt("intermediate_size")
        numAttentionHeads = try top.requiredPositiveInt("num_attention_heads")
        numKeyValueHeads = try top.optionalPositiveInt("num_key_value_heads") ?? numAttentionHeads
        guard numAttentionHeads % numKeyValueHeads == 0 else {
            throw top.error("num_key_value_heads", "\(numKeyValueHeads) does not divide num_attention_heads \(numAttentionHeads)")
        }
        if let explicitHeadDim = try top.optionalPositiveInt("head_dim") {
            headDim = explicitHeadDim
        } else {
            guard hiddenSize % numAttentionHeads == 0 else {
                throw top.error("hidden_size", "\(hiddenSize) is not divisible by num_attention_heads \(numAttentionHeads), and head_dim is absent")
            }
            headDim = hiddenSize / numAttentionHeads
        }
        guard headDim % 2 == 0 else {
            throw top.error("head_dim", "\(headDim) is odd; rotary embeddings need an even head dimension")
        }
        numHiddenLayers = try top.requiredPositiveInt("num_hidden_layers")
        vocabSize = try top.requiredPositiveInt("vocab_size")
        rmsNormEps = try top.requiredPositiveNumber("rms_norm_eps")
        tieWordEmbeddings = try top.optionalBool("tie_word_embeddings") ?? false
        bosTokenID = try top.optionalInt("bos_token_id")
        eosTokenIDs = try top.optionalIntOrIntArray("eos_token_id") ?? []
        maxPositionEmbeddings = try top.optionalPositiveInt("max_position_embeddings")
        torchDtype = try top.optionalString("torch_dtype") ?? top.optionalString("dtype")
        rope = try Self.parseRope(top, maxPositionEmbeddings: maxPositionEmbeddings)
    }

    /// Rope from `rope_parameters` (holds `rope_theta`), else `rope_scaling` plus the top-level `rope_theta`.
    private static func parseRope(_ top: ConfigFields, maxPositionEmbeddings: Int?) throws -> RopeParameters {
        let scaling: ConfigFields?
        let theta: Double
        if let parameters = try top.optionalObject("rope_parameters") {
            scaling = parameters
            theta = try parameters.optionalPositiveNumber("rope_theta")
                ?? top.optionalPositiveNumber("rope_theta") ?? defaultRopeTheta
        } else {
            scaling = try top.optionalObject("rope_scaling")
            theta = try top.optionalPositiveNumber("rope_theta") ?? defaultRopeTheta
        }
        guard let scaling else { return RopeParameters(theta: theta, kind: .default) }

        let typeKey = scaling.value("rope_type") != nil ? "rope_type" : "type"
        let ropeType = try scaling.optionalString(typeKey) ?? "default"
        switch ropeType {
        case "default":
            return RopeParameters(theta: theta, kind: .default)
        case "llama3":
            let factor = try scaling.requiredPositiveNumber("factor")
            let low = try scaling.requiredPositiveNumber("low_freq_factor")
            let high = try scaling.requiredPositiveNumber("high_freq_factor")
            guard high > low else {
                throw scaling.error("high_freq_factor", "\(high) must be greater than low_freq_factor \(low)")
            }
            guard let original = try scaling.optionalPositiveInt("original_max_position_embeddings") ?? maxPositionEmbeddings else {
                throw scaling.error("original_max_position_embeddings",
                                    "missing, and there is no max_position_embeddings to fall back on")
            }
            return RopeParameters(theta: theta, kind: .llama3(Llama3RopeScaling(
                factor: factor, lowFreqFactor: low, highFreqFactor: high, originalMaxPositionEmbeddings: original)))
        default:
            throw scaling.error(typeKey, "unsupported RoPE type \"\(ropeType)\" (supported: default, llama3)")
        }
    }
}

/// Typed access to the fields of one JSON object, with errors that name the file and the dotted field path.
struct ConfigFields {
    /// Members by key; a repeated key keeps its last value, as Python's json (and so transformers) reads it.
    let object: [String: JSONNode]
    let path: String
    let source: String

    init(members: [JSONMember], path: String, source: String) {
        object = Dictionary(members.map { ($0.key, $0.value) }, uniquingKeysWith: { _, last in last })
        self.path = path
        self.source = source
    }

    func fieldPath(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }

    func error(_ key: String, _ problem: String) -> LlamaConfigError {
        LlamaConfigError(source: source, field: fieldPath(key), problem: problem)
    }

    func value(_ key: String) -> JSONNode? { object[key] }

    /// The value, with an absent key and JSON null both meaning "not given".
    private func given(_ key: String) -> JSONNode? {
        guard let value = object[key], !value.isNull else { return nil }
        return value
    }

    private func wrongType(_ key: String, _ value: JSONNode, expected: String) -> LlamaConfigError {
        error(key, "expected \(expected), found \(value.typeName)")
    }

    func optionalInt(_ key: String) throws -> Int? {
        guard let value = given(key) else { return nil }
        switch value {
        case .integer(let number): return number
        case .number(let text):
            // `4096.0` is an integer written as a float (some exporters do); a fraction is not.
            guard let number = Double(text), number.rounded() == number, abs(number) < 1e15 else {
                throw wrongType(key, value, expected: "an integer")
            }
            return Int(number)
        default: throw wrongType(key, value, expected: "an integer")
        }
    }

    func optionalPositiveInt(_ key: String) throws -> Int? {
        guard let number = try optionalInt(key) else { return nil }
        guard number > 0 else { throw error(key, "must be positive, found \(number)") }
        return number
    }

    func requiredPositiveInt(_ key: String) throws -> Int {
        guard let number = try optionalPositiveInt(key) else { throw error(key, "missing (required)") }
        return number
    }

    func optionalNumber(_ key: String) throws -> Double? {
        guard let value = given(key) else { return nil }
        switch value {
        case .integer(let number): return Double(number)
        case .number(let text):
            guard let number = Double(text) else { throw wrongType(key, value, expected: "a number") }
            return number
        default: throw wrongType(key, value, expected: "a number")
        }
    }

    func optionalPositiveNumber(_ key: String) throws -> Double? {
        guard let number = try optionalNumber(key) else { return nil }
        guard number > 0, number.isFinite else { throw error(key, "must be a positive finite number, found \(number)") }
        return number
    }

    func requiredPositiveNumber(_ key: String) throws -> Double {
        guard let number = try optionalPositiveNumber(key) else { throw error(key, "missing (required)") }
        return number
    }

    func optionalBool(_ key: String) throws -> Bool? {
        guard let value = given(key) else { return nil }
        guard case .bool(let flag) = value else { throw wrongType(key, value, expected: "a boolean") }
        return flag
    }

    func optionalString(_ key: String) throws -> String? {
        guard let value = given(key) else { return nil }
        guard case .string(let text) = value else { throw wrongType(key, value, expected: "a string") }
        return text
    }

    func requiredString(_ key: String) throws -> String {
        guard let text = try optionalString(key) else { throw error(key, "missing (required)") }
        return text
    }

    func optionalStringArray(_ key: String) throws -> [String]? {
        guard let value = given(key) else { return nil }
        guard case .array(let items) = value else { throw wrongType(key, value, expected: "an array of strings") }
        return try items.map { item in
            guard case .string(let text) = item else { throw wrongType(key, item, expected: "an array of strings") }
            return text
        }
    }

    func optionalIntOrIntArray(_ key: String) throws -> [Int]? {
        guard let value = given(key) else { return nil }
        let items: [JSONNode]
        if case .array(let list) = value { items = list } else { items = [value] }
        return try items.map { item in
            guard case .integer(let number) = item else { throw wrongType(key, item, expected: "an integer or a list of integers") }
            return number
        }
    }

    func optionalObject(_ key: String) throws -> ConfigFields? {
        guard let value = given(key) else { return nil }
        guard case .object(let nested) = value else { throw wrongType(key, value, expected: "an object") }
        return ConfigFields(members: nested, path: fieldPath(key), source: source)
    }
}

extension JSONNode {
    var isNull: Bool {
        if case .null = self { return true }
        return false
    }

    /// The value's JSON type in config errors (`found string`).
    var typeName: String {
        switch self {
        case .null: "null"
        case .bool: "boolean"
        case .integer: "integer"
        case .number: "number"
        case .string: "string"
        case .array: "array"
        case .object: "object"
        }
    }
}
