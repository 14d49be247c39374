import Checkpoint
import Foundation
import LlamaModel
import NVFP4
import SafeTensors

/// An NVFP4 checkpoint directory opened for evaluation, in either layout (spec §6, §7).
///
/// Opening checks, before any arithmetic: `config.json` declares an NVFP4 `quantization_config`, its model
/// dimensions equal the original model's, and every Linear has its packed weight, block scales and global
/// scale (and, for W4A4, its input scale) with the dtypes and shapes the original config implies. A Linear that the
/// config's ignore list (compressed-tensors) or exclude_modules (modelopt) names is unquantized instead: its
/// `<module>.weight` is read as stored and its input is not fake-quantized, as vLLM serves it.
// @unchecked: immutable after init; it holds SafeTensorsModel maps (raw pointers) that are only read.
public final class QuantizedCheckpoint: @unchecked Sendable {
    public let directory: URL
    public let layout: CheckpointLayout
    /// `.nvfp4` (W4A4) when activations are quantized, `.nvfp4a16` for weight-only.
    public let scheme: QuantizationScheme
    /// The original model's config, which the checkpoint was checked against.
    public let config: LlamaConfig
    let model: SafeTensorsModel
    let tensorLayout: LinearTensorLayout
    /// Module names of the Linears kept unquantized, in model order.
    public let excludedModules: [String]

    /// Opens `directory` and checks it against `originalConfig`.
    public init(directory: URL, originalConfig: LlamaConfig) throws {
        self.directory = directory
        self.config = originalConfig
        let configPath = ModelDirectory(directory).configURL.path
        guard FileManager.default.fileExists(atPath: configPath) else {
            throw EvaluationError(configPath, "not found; the quantized directory must be an NVFP4 checkpoint with a config.json")
        }
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: configPath))
        } catch {
            throw EvaluationError(configPath, "cannot read: \(error.localizedDescription)")
        }
        guard let root = (try? JSONSerialization.jsonObject(with: data)) as? [String: Any] else {
            throw EvaluationError(configPath, "is not a JSON object")
        }
        (layout, scheme) = try Self.detectQuantization(root, path: configPath)
        try Self.checkDimensions(root, path: configPath, against: originalConfig)
        model = try SafeTensorsModel(directory: directory.path)
        let listed = Self.exclusionList(root, layout: layout)
        var excluded: [String: SafeTensorsDType] = [:]
        for linear in originalConfig.allLinears where listed.contains(linear.name) {
            excluded[linear.name] = try Self.checkUnquantizedWeight(linear, in: model, directory: directory)
        }
        tensorLayout = LinearTensorLayout(layout: layout, scheme: scheme, excluded: excluded)
        excludedModules = tensorLayout.excludedModuleNames(config: originalConfig)
        storedNonLinear = try Self.checkEveryTensorIsUnderstood(model, directory: directory, config: originalConfig,
                                                                layout: tensorLayout)
        for linear in originalConfig.allLinears where !tensorLayout.isExcluded(linear) {
            for role in tensorLayout.roles { try checkTensor(role, of: linear) }
        }
    }

    /// The embeddings, norms and `lm_head` the checkpoint stores, by name: a server loads these, not the original's.
    let storedNonLinear: [String: WeightTensorDescription]

    /// Every tensor must be one this evaluation applies: a Linear's NVFP4 tensors (or an excluded Linear's weight),
    /// or an embedding, norm or `lm_head` of the original's shape. Anything else changes what the served model
    /// computes (AWQ's `pre_quant_scale` scales a Linear's input), so skipping it would report a perplexity the
    /// checkpoint does not have. Returns the stored non-Linear tensors.
    static func checkEveryTensorIsUnderstood(_ model: SafeTensorsModel, directory: URL, config: LlamaConfig,
                                             layout: LinearTensorLayout) throws -> [String: WeightTensorDescription] {
        var linearTensors = Set<String>()
        for linear in config.allLinears {
            if layout.isExcluded(linear) {
                linearTensors.insert(linear.weightName)
            } else {
                for role in layout.roles { linearTensors.insert(layout.tensorName(role, of: linear)) }
            }
        }
        var nonLinear = Dictionary(uniqueKeysWithValues: config.nonQuantizedTensors.map { ($0.name, $0.shape) })
        // Some exporters write lm_head beside tied embeddings; a server then computes logits from embed_tokens.
        nonLinear[LlamaConfig.lmHeadName] = [config.vocabSize, config.hiddenSize]
        var stored: [String: WeightTensorDescription] = [:]
        for name in model.tensorNames where !linearTensors.contains(name) {
            let place = ((try? model.file(containing: name).path) ?? directory.path) + ": " + name
            guard let shape = nonLinear[name] else {
                let why = name.hasSuffix("pre_quant_scale")
                    ? "an input pre-scale (AWQ), which multiplies the Linear's input before quantization"
                    : "not a tensor of an NVFP4 Llama checkpoint"
                throw EvaluationError(place, "is \(why); this evaluation cannot apply it, so it would report a "
                                      + "perplexity the checkpoint does not have")
            }
            let info = try model.info(name)
            guard WeightElementType(rawValue: info.dtype.rawValue) != nil else {
                throw EvaluationError(place, "has dtype \(info.dtype.rawValue); embeddings and norms must be BF16, F16 or F32")
            }
            guard info.shape == shape else {
                throw EvaluationError(place, "has shape \(info.shape), but the original model implies \(shape)")
            }
            stored[name] = WeightTensorDescription(dtype: info.dtype.rawValue, shape: info.shape)
        }
        return stored
    }

    /// A stored embedding, norm or `lm_head` (nil when the checkpoint leaves it to the original model).
    public func storedNonLinearTensor(_ name: String) -> WeightTensorDescription? { storedNonLinear[name] }

    public func withStoredNonLinearTensor<R>(_ name: String, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        try model.withBytes(name, body)
    }

    /// The module names the loader keeps unquantized: `ignore` (compressed-tensors; also modelopt's copy in
    /// config.json, which vLLM prefers), else modelopt's `exclude_modules`. Exact names: what this project writes.
    static func exclusionList(_ root: [String: Any], layout: CheckpointLayout) -> Set<String> {
        let quantization = root["quantization_config"] as? [String: Any] ?? [:]
        let list = quantization["ignore"] as? [String] ?? quantization["exclude_modules"] as? [String] ?? []
        return Set(list)
    }

    /// An excluded Linear's stored weight: a float tensor of the original shape. Returns its dtype.
    static func checkUnquantizedWeight(_ linear: LinearSpec, in model: SafeTensorsModel,
                                       directory: URL) throws -> SafeTensorsDType {
        let name = linear.weightName
        guard model.contains(name) else {
            throw EvaluationError("\(directory.path): \(name)", "missing; the config lists \(linear.name) as unquantized")
        }
        let info = try model.info(name)
        guard WeightElementType(rawValue: info.dtype.rawValue) != nil else {
            throw EvaluationError("\(directory.path): \(name)", "has dtype \(info.dtype.rawValue); an unquantized Linear must be BF16, F16 or F32")
        }
        guard info.shape == linear.shape else {
            throw EvaluationError("\(directory.path): \(name)", "has shape \(info.shape), but the original model implies \(linear.shape)")
        }
        return info.dtype
    }

    public func isExcluded(_ linear: LinearSpec) -> Bool { tensorLayout.isExcluded(linear) }

    /// The stored dtype of an excluded Linear's weight; nil for a quantized Linear.
    public func unquantizedWeightDType(_ linear: LinearSpec) -> SafeTensorsDType? { tensorLayout.excluded[linear.name] }

    /// The stored weight of an excluded Linear, its dtype and bytes as written.
    public func withUnquantizedWeight<R>(_ linear: LinearSpec,
                                         _ body: (SafeTensorsDType, UnsafeRawBufferPointer) throws -> R) throws -> R {
        let info = try model.info(linear.weightName)
        return try model.withBytes(linear.weightName) { try body(info.dtype, $0) }
    }

    /// Reads `quantization_config`: `quant_method` picks the layout; compressed-tensors declares weight-only
    /// with `input_activations: null`, while modelopt NVFP4 is always W4A4.
    static func detectQuantization(_ root: [String: Any], path: String) throws -> (CheckpointLayout, QuantizationScheme) {
        guard let quantization = root["quantization_config"] as? [String: Any] else {
            throw EvaluationError("\(path): quantization_config",
                                  "missing; this is not a quantized checkpoint (did you pass the original model as --quantized?)")
        }
        guard let method = quantization["quant_method"] as? String else {
            throw EvaluationError("\(path): quantization_config.quant_method", "missing or not a string")
        }
        switch method {
        case CheckpointLayout.compressedTensors.rawValue:
            guard let groups = quantization["config_groups"] as? [String: Any], groups.count == 1,
                  let group = groups.values.first as? [String: Any] else {
                throw EvaluationError("\(path): quantization_config.config_groups", "expected exactly one quantization group")
            }
            if let format = (group["format"] as? String) ?? (quantization["format"] as? String), format != "nvfp4-pack-quantized" {
                throw EvaluationError("\(path): quantization_config.format", "is \"\(format)\", not nvfp4-pack-quantized")
            }
            guard let weights = group["weights"] as? [String: Any], weights["num_bits"] as? Int == 4,
                  weights["group_size"] as? Int == 16, weights["type"] as? String == "float" else {
                throw EvaluationError("\(path): quantization_config.config_groups.weights",
                                      "is not NVFP4 (4-bit float weights in groups of 16)")
            }
            let activations = group["input_activations"]
            return (.compressedTensors, activations == nil || activations is NSNull ? .nvfp4a16 : .nvfp4)
        case CheckpointLayout.modelopt.rawValue:
            let algorithm = (quantization["quant_algo"] as? String)
                ?? ((root["quantization"] as? [String: Any])?["quant_algo"] as? String)
            guard algorithm == "NVFP4" else {
                throw EvaluationError("\(path): quantization_config.quant_algo",
                                      "is \(algorithm.map { "\"\($0)\"" } ?? "missing"), expected \"NVFP4\"")
            }
            return (.modelopt, .nvfp4)
        default:
            throw EvaluationError("\(path): quantization_config.quant_method",
                                  "is \"\(method)\"; only NVFP4 checkpoints in the compressed-tensors or modelopt layout can be evaluated")
        }
    }

    /// The checkpoint must describe the same architecture as the original model.
    static func checkDimensions(_ root: [String: Any], path: String, against original: LlamaConfig) throws {
        let quantized: LlamaConfig
        do {
            quantized = try LlamaConfig(json: try JSONSerialization.data(withJSONObject: root), source: path)
        } catch {
            throw EvaluationError(path, "cannot be read as a Llama config: \(error)")
        }
        let fields: [(String, Int, Int)] = [
            ("hidden_size", quantized.hiddenSize, original.hiddenSize),
            ("intermediate_size", quantized.intermediateSize, original.intermediateSize),
            ("num_hidden_layers", quantized.numHiddenLayers, original.numHiddenLayers),
            ("num_attention_heads", quantized.numAttentionHeads, original.numAttentionHeads),
            ("num_key_value_heads", quantized.numKeyValueHeads, original.numKeyValueHeads),
            ("head_dim", quantized.headDim, original.headDim),
            ("vocab_size", quantized.vocabSize, original.vocabSize),
        ]
        for (field, value, expected) in fields where value != expected {
            throw EvaluationError("\(path): \(field)",
                                  "is \(value), but the original model has \(expected); the checkpoint is for another model")
        }
    }

    /// The file holding `name`, for error messages.
    func location(_ name: String) -> String {
        ((try? model.file(containing: name).path) ?? directory.path) + ": " + name
    }

    func checkTensor(_ role: LinearTensorLayout.Role, of linear: LinearSpec) throws {
        let name = tensorLayout.tensorName(role, of: linear)
        guard model.contains(name) else {
            let what = role == .inputScale ? "the activation scale of a W4A4 checkpoint" : "part of every NVFP4 Linear"
            throw EvaluationError("\(directory.path): \(name)", "missing (\(what))")
        }
        let info = try model.info(name)
        let expectedDType = tensorLayout.dtype(role)
        guard info.dtype == expectedDType else {
            throw EvaluationError(location(name), "has dtype \(info.dtype.rawValue), expected \(expectedDType.rawValue)")
        }
        switch role {
        case .packedWeight, .blockScales:
            let expected = tensorLayout.shape(role, of: linear)
            guard info.shape == expected else {
                throw EvaluationError(location(name), "has shape \(info.shape), but the original model implies \(expected); "
                                      + "the checkpoint is for another model")
            }
        case .weightGlobalScale, .inputScale:
            guard info.elementCount == 1, info.shape.count <= 1 else {
                throw EvaluationError(location(name), "has shape \(info.shape), expected a scalar")
            }
        }
    }

    /// A stored f32 scalar, checked finite and positive.
    func scalar(_ role: LinearTensorLayout.Role, of linear: LinearSpec) throws -> Float {
        let name = tensorLayout.tensorName(role, of: linear)
        let value: Float = try model.withBytes(name) { bytes in
            guard bytes.count == 4 else { throw EvaluationError(location(name), "holds \(bytes.count) bytes, expected 4") }
            return Float(bitPattern: UInt32(littleEndian: bytes.loadUnaligned(as: UInt32.self)))
        }
        guard value.isFinite, value > 0 else {
            throw EvaluationError(location(name), "is \(value); a scale must be finite and positive")
        }
        return value
    }

    /// A stored global scale converted to the scale itself. compressed-tensors stores `f32(1/S)`, which is
    /// read back as `f32(1/stored)`: the reciprocal does not always round-trip, and where two f32 values of
    /// `S` share one stored reciprocal the original cannot be told apart, so `S` may differ from the value the
    /// quantizer used by one ulp (modelopt stores `S` itself and is exact).
    func scale(_ role: LinearTensorLayout.Role, of linear: LinearSpec) throws -> Float {
        let stored = try scalar(role, of: linear)
        return layout == .compressedTensors ? 1 / stored : stored
    }

    /// The Linear's NVFP4 tensors as stored, with `S2` (not its reciprocal).
    public func nvfp4Weight(_ linear: LinearSpec) throws -> NVFP4Weight {
        let packedName = tensorLayout.tensorName(.packedWeight, of: linear)
        let scalesName = tensorLayout.tensorName(.blockScales, of: linear)
        let packed = [UInt8](try model.data(packedName))
        let blockScales = [UInt8](try model.data(scalesName))
        guard packed.count == linear.outFeatures * linear.inFeatures / 2 else {
            throw EvaluationError(location(packedName), "holds \(packed.count) bytes, expected \(linear.outFeatures * linear.inFeatures / 2)")
        }
        guard blockScales.count == linear.outFeatures * linear.inFeatures / 16 else {
            throw EvaluationError(location(scalesName), "holds \(blockScales.count) bytes, expected \(linear.outFeatures * linear.inFeatures / 16)")
        }
        if let bad = blockScales.firstIndex(where: { $0 & 0x7F == 0x7F }) {
            throw EvaluationError(location(scalesName), "block scale \(bad) is NaN (FP8 code 0x\(String(blockScales[bad], radix: 16)))")
        }
        return NVFP4Weight(rows: linear.outFeatures, cols: linear.inFeatures, packed: packed, blockScales: blockScales,
                           weightScale2: try scale(.weightGlobalScale, of: linear))
    }

    /// The dequantized f32 weight `[out, in]`: `value(q) · sf · S2` (spec §3).
    public func dequantizedWeight(_ linear: LinearSpec) throws -> [Float] {
        let weight = try nvfp4Weight(linear)
        // The mapped pages are not needed again; dropping them keeps resident memory at about one Linear.
        try? model.releasePages(tensorLayout.tensorName(.packedWeight, of: linear))
        try? model.releasePages(tensorLayout.tensorName(.blockScales, of: linear))
        return NVFP4Quantizer.dequantize(weight)
    }

    /// The Linear's activation scale `Sx`, or nil for a weight-only checkpoint.
    public func inputScale(_ linear: LinearSpec) throws -> InputScale? {
        scheme.quantizesActivations ? tensorLayout.inputScale(stored: try scalar(.inputScale, of: linear)) : nil
    }

    /// One `Sx` per fused group of `layer`, as vLLM reduces the members' scales when it fuses them
    /// (spec §5: modelopt takes the largest `Sx`, compressed-tensors the largest stored `1/Sx`); the
    /// members are equal in checkpoints this project writes. Empty for a weight-only checkpoint; an excluded
    /// group (unquantized, whole) has none, so its input is not fake-quantized.
    public func inputScales(layer: Int) throws -> [FusedGroup: InputScale] {
        guard scheme.quantizesActivations else { return [:] }
        let linears = config.linears(layer: layer).filter { !tensorLayout.isExcluded($0) }
        var scales: [FusedGroup: InputScale] = [:]
        for group in FusedGroup.allCases {
            let members = linears.filter { $0.kind.group == group }
            guard !members.isEmpty else { continue }
            let largestStored = try members.map { try scalar(.inputScale, of: $0) }.max()!
            scales[group] = tensorLayout.inputScale(stored: largestStored)
        }
        return scales
    }
}
