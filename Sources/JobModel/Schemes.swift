/// Where a job computes, as `--device` spells it: `cpu`, `auto` (GPU 0 when one is usable, else the CPU), `cuda`
/// (GPU 0) or `cuda:N`. The one parser of that option, for coordctl, workerd and the engine.
public enum DeviceChoice: Equatable, Sendable, CustomStringConvertible {
    case cpu
    case auto
    case cuda(ordinal: Int)

    public init(parsing text: String) throws(DeviceChoiceError) {
        switch text {
        case "cpu": self = .cpu
        case "auto": self = .auto
        case "cuda": self = .cuda(ordinal: 0)
        default:
            guard text.hasPrefix("cuda:"), let ordinal = Int(text.dropFirst(5)), ordinal >= 0 else {
                throw DeviceChoiceError(text: text)
            }
            self = .cuda(ordinal: ordinal)
        }
    }

    public var description: String {
        switch self {
        case .cpu: "cpu"
        case .auto: "auto"
        case .cuda(let ordinal): "cuda:\(ordinal)"
        }
    }
}

/// A `--device` value that is none of the accepted spellings.
public struct DeviceChoiceError: Error, Equatable, Sendable, CustomStringConvertible {
    public let text: String
    public init(text: String) { self.text = text }
    public var description: String { "--device must be cpu, auto, cuda or cuda:N with N a GPU number (got '\(text)')" }
}

/// Which tensor names and config the checkpoint uses.
public enum CheckpointLayout: String, Codable, Sendable, CaseIterable {
    /// compressed-tensors `nvfp4-pack-quantized`, vLLM's default (spec §6).
    case compressedTensors = "compressed-tensors"
    /// NVIDIA modelopt's layout (spec §7).
    case modelopt
}

/// What is quantized.
public enum QuantizationScheme: String, Codable, Sendable, CaseIterable {
    /// W4A4: NVFP4 weights and calibrated NVFP4 activations.
    case nvfp4
    /// Weight-only NVFP4 (activations stay 16-bit).
    case nvfp4a16

    public var quantizesActivations: Bool { self == .nvfp4 }
}

/// Where calibration activations are rounded: to BF16 wherever transformers' BF16 forward rounds (as modelopt
/// calibrates; the GPU always does this), or kept in f32 (the spec's alternative). Plain data, so a job's settings
/// can carry it without linking a backend.
public enum ActivationPrecision: String, Sendable, CaseIterable, Codable {
    case float32 = "f32"
    case bfloat16 = "bf16"
}

/// How weights are rounded to the NVFP4 grid. Both keep round-to-nearest's per-16 block scales and global scale, so
/// the checkpoint has the same tensors, dtypes and scales; only the E2M1 codes differ.
public enum QuantizationAlgorithm: String, Codable, Sendable, CaseIterable {
    /// Round-to-nearest: modelopt's bytes, bit for bit.
    case rtn
    /// GPTQ: each column's rounding error is compensated by the columns after it, weighted by the Hessian of the
    /// Linear's input (gathered during calibration).
    case gptq
}

/// GPTQ's parameters as a job carries them (the numerics take them as `GPTQParameters`).
public struct GPTQSettings: Codable, Sendable, Equatable {
    /// Columns quantized between two lazy updates of the remaining weights (the standard 128).
    public var blockSize: Int
    /// Added to the Hessian's diagonal, as a fraction of its mean (the standard 0.01).
    public var dampening: Double
    /// Quantize columns in descending order of their input's energy (the Hessian's diagonal).
    public var activationOrder: Bool
    /// What the next layer calibrates on.
    public var propagation: GPTQPropagationMode

    public static let standardBlockSize = 128
    public static let standardDampening = 0.01

    public init(blockSize: Int = standardBlockSize, dampening: Double = standardDampening, activationOrder: Bool = false,
                propagation: GPTQPropagationMode = .quantized) {
        self.blockSize = blockSize
        self.dampening = dampening
        self.activationOrder = activationOrder
        self.propagation = propagation
    }

    /// Why these settings cannot run a job of `scheme`, or nil: GPTQ needs the Hessians of a calibration forward
    /// (W4A4) and parameters in range.
    public func problem(scheme: QuantizationScheme) -> String? {
        if !scheme.quantizesActivations {
            return "--algorithm gptq needs the Hessians of a calibration forward, and --scheme \(scheme.rawValue) "
                + "calibrates nothing; use --scheme nvfp4, or --algorithm rtn"
        }
        if blockSize < 1 { return "--gptq-block-size must be at least 1 (got \(blockSize))" }
        if !(dampening > 0) || !dampening.isFinite { return "--gptq-dampening must be a number above 0 (got \(dampening))" }
        return nil
    }

    enum CodingKeys: String, CodingKey {
        case blockSize = "block_size"
        case dampening
        case activationOrder = "activation_order"
        case propagation
    }
}

/// With GPTQ, what layer L+1 calibrates on (`--propagate`).
public enum GPTQPropagationMode: String, Codable, Sendable, CaseIterable {
    /// The outputs of layer L with its GPTQ weights (dequantized), as the quantized model computes them: layer L is
    /// quantized as soon as every chunk has passed it, and run again. The default.
    case quantized
    /// The outputs of the original layer L: one forward per layer, and the layers may be quantized later.
    case original
}

/// How block scales are chosen (`--scale-search`).
public enum ScaleSearch: String, Codable, Sendable, CaseIterable {
    /// Round-to-nearest's: the block maximum onto 6 (`none`).
    case off = "none"
    /// Per block of 16, the FP8 code near round-to-nearest's with the smallest squared rounding error, weighted by the
    /// diagonal of the input's Hessian where GPTQ gathered one.
    case mse
}
