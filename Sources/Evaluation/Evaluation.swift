/// # Evaluation
///
/// Tells a user whether an NVFP4 checkpoint is usable before it is served, by comparing the perplexity of the
/// original model with that of the quantized one on held-out text.
///
/// - ``QuantizedCheckpoint`` opens a checkpoint of either layout (compressed-tensors or modelopt), checks it
///   against the original model's config, and gives each Linear's dequantized weight `value(q)·sf·S2` and its
///   activation scale `Sx` (nil for weight-only checkpoints).
/// - ``DequantizedWeightSource`` is the original model with every Linear weight replaced by its dequantized
///   NVFP4 weight, computed on demand, so memory stays at about one Linear beyond what the backend holds.
/// - ``NVFP4InputFakeQuantization`` fake-quantizes each Linear input to NVFP4 with dynamic per-16 block scales
///   under the calibrated `Sx`, as the W4A4 GEMM does at run time.
/// - ``PerplexityEvaluator`` streams the model layer by layer (as calibration does) and returns a
///   ``QualityReport`` with both perplexities and a verdict.
///
/// The emulation runs in f32: it models the rounding of weights and activations to NVFP4, not the BF16
/// arithmetic of a serving engine, so small differences from a real deployment remain.
import Foundation

public enum EvaluationOverview {}

/// A checkpoint or input that cannot be evaluated; `subject` names the file, field or tensor at fault.
public struct EvaluationError: Error, CustomStringConvertible, Equatable, Sendable {
    public let subject: String
    public let message: String

    public init(_ subject: String, _ message: String) {
        self.subject = subject
        self.message = message
    }

    public var description: String { "\(subject): \(message)" }
}
