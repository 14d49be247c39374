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
