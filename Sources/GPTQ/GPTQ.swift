/// # GPTQ
///
/// Error-compensating NVFP4 weight quantization (GPTQ, Frantar et al. 2022) on the CPU, as an alternative to the
/// round-to-nearest `NVFP4Quantizer` that produces the same `NVFP4Weight` layout, so an exporter can
/// write either one.
///
/// - ``HessianAccumulator`` collects `H = (2/n) Σ xᵀx` over the calibration rows of one Linear input. Linears that
///   read the same input (q/k/v, gate/up) share one accumulator.
/// - ``GPTQQuantizer`` quantizes a weight `[out, in]` column by column, spreading each column's rounding error over
///   the columns not yet quantized so that the layer's output on the calibration inputs, not the weight itself,
///   stays close to the original.
///
/// NVFP4 specifics: the FP8-E4M3 block scales and `weight_scale_2` are exactly those of round-to-nearest
/// (`nvfp4-checkpoint-spec.md` §3, computed from the original weights up front, with `S2` shared by a fused group);
/// GPTQ only chooses different E2M1 codes under them.
///
/// Precision: the Hessian and its factorizations are Double (a sum over millions of rows, and a Cholesky of a matrix
/// that is often nearly singular); the column loop runs in Float, like the weights and the NVFP4 rounding.
/// Pure numerics over OpenBLAS and its LAPACK; no I/O.
public enum GPTQOverview {}

/// The knobs of ``GPTQQuantizer``.
public struct GPTQParameters: Sendable, Equatable {
    /// Columns quantized between two lazy updates of the remaining columns (a GEMM); it changes the float rounding
    /// only, not the algorithm.
    public var blockSize: Int
    /// Added to the Hessian's diagonal as a fraction of its mean diagonal entry, so that it can be inverted and a few
    /// loud inputs do not dominate.
    public var dampening: Double
    /// Quantizes the columns of the loudest inputs (largest `H[i,i]`) first, so their errors can be compensated by
    /// the quieter ones.
    public var activationOrder: Bool
    /// When the damped Hessian is not positive definite, the dampening is multiplied by 10 and the factorization
    /// tried again, at most this many times.
    public var dampeningRetries: Int

    public init(blockSize: Int = 128, dampening: Double = 0.01, activationOrder: Bool = false, dampeningRetries: Int = 3) {
        self.blockSize = blockSize
        self.dampening = dampening
        self.activationOrder = activationOrder
        self.dampeningRetries = dampeningRetries
    }
}

/// Why GPTQ could not quantize a tensor; every case names the tensor.
public enum GPTQError: Error, CustomStringConvertible, Equatable {
    /// The Hessian does not have `columns × columns` elements for a weight of `columns` inputs.
    case hessianShapeMismatch(tensor: String, columns: Int, hessianElements: Int)
    /// The Hessian holds NaN or Inf (first at row `row`).
    case nonFiniteHessian(tensor: String, row: Int)
    /// Even with the largest dampening tried, the Hessian (or its inverse) could not be Cholesky-factorized.
    case hessianNotPositiveDefinite(tensor: String, dampening: Double)
    /// `weight_scale_2` must be positive and finite.
    case invalidWeightScale2(tensor: String, value: Float)
    case invalidParameters(tensor: String, reason: String)

    public var description: String {
        switch self {
        case let .hessianShapeMismatch(tensor, columns, elements):
            return "\(tensor): the Hessian has \(elements) elements, but a weight with \(columns) input columns needs "
                + "\(columns)×\(columns) = \(columns * columns)"
        case let .nonFiniteHessian(tensor, row):
            return "\(tensor): the Hessian contains NaN or Inf (first at row \(row))"
        case let .hessianNotPositiveDefinite(tensor, dampening):
            return "\(tensor): the Hessian is not positive definite even with dampening \(dampening) of its mean "
                + "diagonal; the calibration inputs of this Linear are degenerate"
        case let .invalidWeightScale2(tensor, value):
            return "\(tensor): weight_scale_2 \(value) is not a positive finite number"
        case let .invalidParameters(tensor, reason):
            return "\(tensor): invalid GPTQ parameters: \(reason)"
        }
    }
}
