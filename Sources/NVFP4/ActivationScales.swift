/// The two quantities of W4A4 activation calibration, as distinct types so that one cannot be passed where the
/// other is meant (a checkpoint once stored `input_scale / 2688` because both were a bare `Float`).
///
/// - ``ActivationAmax`` is what calibration measures: `max |x|` of a Linear's input over every calibration token.
/// - ``InputScale`` is what the checkpoint stores: `Sx = f32(amax / 2688)` (spec §4), made only from an amax.

/// `max |x|` of a Linear's input over the calibration set, in the units of the activation itself.
public struct ActivationAmax: Hashable, Sendable, Codable, CustomStringConvertible {
    public let value: Float

    public init(_ value: Float) { self.value = value }

    /// Usable for a scale: finite and positive.
    public var isUsable: Bool { value.isFinite && value > 0 }

    public var description: String { "\(value)" }

    // Encoded as the bare number, so wire messages and JSON stay as compact as a Float.
    public init(from decoder: any Decoder) throws { value = try decoder.singleValueContainer().decode(Float.self) }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(value)
    }
}

/// A Linear's activation global scale `Sx = f32(amax / 2688)`, modelopt's `input_scale`. compressed-tensors stores
/// its reciprocal (``globalScale``) as `input_global_scale`.
public struct InputScale: Hashable, Sendable, CustomStringConvertible {
    /// `Sx` in modelopt's terms.
    public let value: Float

    /// The one way to make a scale from calibration: `f32(amax / 2688)`.
    public init(_ amax: ActivationAmax) { value = amax.value / NVFP4Quantizer.scaleDenominator }

    /// A scale read back from a checkpoint, in `input_scale` terms (readers and verifiers only).
    public init(stored value: Float) { self.value = value }

    /// `f32(1 / Sx)`: compressed-tensors' `input_global_scale`.
    public var globalScale: Float { 1 / value }

    public var description: String { "\(value)" }
}
