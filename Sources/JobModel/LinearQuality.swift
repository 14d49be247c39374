/// How one Linear fared in quantization, for `calibration.json`, `status --json` and `coordctl report`.
///
/// - `weightAmax`: max |W| of the source weight (what its global scale is made from).
/// - `weightRelativeError`: ‖W − Q(W)‖ / ‖W‖ (Frobenius) of the NVFP4 weight as written against the source weight;
///   0 for a Linear kept in 16-bit.
/// - `activationAmax`: the calibrated max |x| of its input (W4A4; shared within a fused group).
/// - `outputRelativeError`: ‖X·Wᵀ − X̃·Q(W)ᵀ‖ / ‖X·Wᵀ‖, X being the Linear's input in the original model's forward over
///   the first ``outputErrorTokenLimit`` calibration tokens (held-out tokens when the job calibrated nothing, see
///   ``LinearOutputErrorInputs``) and X̃ that input as the NVFP4 GEMM sees it; nil without a quality report.
/// - `keptUnquantized`: `--exclude` kept it in its source dtype (both errors are then 0).
public struct LinearQuality: Codable, Sendable, Equatable {
    /// Tokens of the inputs each Linear's output error is measured on: enough for a stable figure, few enough that
    /// the measurement (two GEMMs of this many rows per Linear) stays small beside the quality report.
    public static let outputErrorTokenLimit = 1024

    /// The module name, e.g. `model.layers.0.self_attn.q_proj`.
    public var name: String
    public var layer: Int
    public var weightAmax: Float
    public var weightRelativeError: Double
    public var activationAmax: Float?
    public var outputRelativeError: Double?
    public var keptUnquantized: Bool

    public init(name: String, layer: Int, weightAmax: Float, weightRelativeError: Double, activationAmax: Float? = nil,
                outputRelativeError: Double? = nil, keptUnquantized: Bool = false) {
        self.name = name
        self.layer = layer
        self.weightAmax = weightAmax
        self.weightRelativeError = weightRelativeError
        self.activationAmax = activationAmax
        self.outputRelativeError = outputRelativeError
        self.keptUnquantized = keptUnquantized
    }

    enum CodingKeys: String, CodingKey {
        case name, layer
        case weightAmax = "weight_amax"
        case weightRelativeError = "weight_relative_error"
        case activationAmax = "activation_amax"
        case outputRelativeError = "output_relative_error"
        case keptUnquantized = "kept_unquantized"
    }

    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        name = try container.decode(String.self, forKey: .name)
        layer = try container.decode(Int.self, forKey: .layer)
        weightAmax = try container.decode(Float.self, forKey: .weightAmax)
        weightRelativeError = try container.decode(Double.self, forKey: .weightRelativeError)
        activationAmax = try container.decodeIfPresent(Float.self, forKey: .activationAmax)
        outputRelativeError = try container.decodeIfPresent(Double.self, forKey: .outputRelativeError)
        keptUnquantized = try container.decodeIfPresent(Bool.self, forKey: .keptUnquantized) ?? false
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(name, forKey: .name)
        try container.encode(layer, forKey: .layer)
        try container.encode(weightAmax, forKey: .weightAmax)
        try container.encode(weightRelativeError, forKey: .weightRelativeError)
        try container.encode(activationAmax, forKey: .activationAmax)
        try container.encode(outputRelativeError, forKey: .outputRelativeError)
        try container.encode(keptUnquantized, forKey: .keptUnquantized)
    }
}

/// Which inputs the Linears' output errors were measured on.
public enum LinearOutputErrorInputs: String, Codable, Sendable {
    /// The leading calibration samples (what the issue of per-Linear quality asks for: the inputs calibration saw).
    case calibration
    /// The quality report's held-out text: for a job that calibrated nothing (weight-only), and for `coordctl eval`,
    /// which has no calibration set.
    case heldOut = "held_out"

    /// "calibration inputs" / "held-out inputs", for reports.
    public var phrase: String {
        switch self {
        case .calibration: "calibration inputs"
        case .heldOut: "held-out inputs"
        }
    }
}
