/// The seven Linears of a decoder layer; the raw value is the module path below `model.layers.N.`.
public enum LinearKind: String, CaseIterable, Sendable {
    case q = "self_attn.q_proj"
    case k = "self_attn.k_proj"
    case v = "self_attn.v_proj"
    case o = "self_attn.o_proj"
    case gate = "mlp.gate_proj"
    case up = "mlp.up_proj"
    case down = "mlp.down_proj"

    /// The fused group the Linear belongs to (spec §5).
    public var group: FusedGroup {
        switch self {
        case .q, .k, .v: .qkv
        case .o: .o
        case .gate, .up: .gateUp
        case .down: .down
        }
    }
}

/// Linears that read one input tensor and share a weight global scale and an input scale (spec §5).
/// Each group is also one observed activation in calibration.
public enum FusedGroup: String, CaseIterable, Sendable, Codable, CodingKeyRepresentable {
    /// q/k/v read the input_layernorm output.
    case qkv
    /// gate/up read the post_attention_layernorm output.
    case gateUp
    /// o_proj reads the attention output.
    case o
    /// down_proj reads `silu(gate) ⊙ up`.
    case down

    public var members: [LinearKind] {
        switch self {
        case .qkv: [.q, .k, .v]
        case .gateUp: [.gate, .up]
        case .o: [.o]
        case .down: [.down]
        }
    }
}
