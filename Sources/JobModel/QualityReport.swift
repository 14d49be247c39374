import Foundation

/// How much worse the quantized model is, judged from the relative perplexity increase.
///
/// The thresholds are heuristics, not guarantees: perplexity on a few samples is a coarse proxy for task
/// quality. Published NVFP4 W4A4 results on Llama-class models typically cost a few percent of perplexity
/// (fine); above ~15% users tend to notice it in generations (degraded). Check task benchmarks before relying
/// on a "noticeable" model.
public enum QualityVerdict: String, Codable, Sendable, Equatable, CaseIterable {
    /// Increase below ``fineLimit``.
    case fine
    /// Increase below ``noticeableLimit``.
    case noticeable
    /// Increase of ``noticeableLimit`` or more, or a perplexity that is not finite.
    case degraded

    /// +5%.
    public static let fineLimit = 0.05
    /// +15%.
    public static let noticeableLimit = 0.15

    public init(relativeIncrease: Double) {
        if !relativeIncrease.isFinite || relativeIncrease >= Self.noticeableLimit {
            self = .degraded
        } else if relativeIncrease >= Self.fineLimit {
            self = .noticeable
        } else {
            self = .fine
        }
    }

    public var explanation: String {
        switch self {
        case .fine: "the quantized model should behave like the original"
        case .noticeable: "some quality loss; check it on your own tasks before serving"
        case .degraded: "large quality loss; the quantized model is probably not usable as is"
        }
    }
}

/// The result of ``PerplexityEvaluator``: perplexity of the original and of the emulated quantized model.
public struct QualityReport: Codable, Sendable, Equatable, CustomStringConvertible {
    /// Evaluation samples (each its own sequence).
    public let samples: Int
    /// Tokens of all samples together.
    public let tokens: Int
    /// Next-token predictions scored: `tokens − samples`.
    public let predictedTokens: Int
    public let originalPerplexity: Double
    public let quantizedPerplexity: Double
    /// `quantized / original − 1`.
    public let relativeIncrease: Double
    public let scheme: QuantizationScheme
    public let layout: CheckpointLayout
    public let verdict: QualityVerdict
    /// Module name → ‖X·Wᵀ − X̃·Q(W)ᵀ‖ / ‖X·Wᵀ‖ on the first ``LinearQuality/outputErrorTokenLimit`` tokens of
    /// ``linearOutputErrorInputs`` in the original model (X̃: the input as the NVFP4 GEMM sees it); see
    /// `LinearOutputErrorProbe`.
    public var linearOutputRelativeError: [String: Double] = [:]
    /// What ``linearOutputRelativeError`` was measured on; nil when nothing was measured.
    public var linearOutputErrorInputs: LinearOutputErrorInputs?
    /// Linears the checkpoint keeps unquantized (`--exclude`), evaluated with their BF16 weights and unquantized
    /// inputs; nil when there are none (so older reports and reports without exclusions read alike).
    public var excludedLinears: Int?

    public init(samples: Int, tokens: Int, predictedTokens: Int, originalPerplexity: Double, quantizedPerplexity: Double,
                scheme: QuantizationScheme, layout: CheckpointLayout, excludedLinears: Int = 0) {
        self.samples = samples
        self.tokens = tokens
        self.predictedTokens = predictedTokens
        self.originalPerplexity = originalPerplexity
        self.quantizedPerplexity = quantizedPerplexity
        self.relativeIncrease = quantizedPerplexity / originalPerplexity - 1
        self.scheme = scheme
        self.layout = layout
        self.verdict = QualityVerdict(relativeIncrease: relativeIncrease)
        self.excludedLinears = excludedLinears > 0 ? excludedLinears : nil
    }

    var schemeDescription: String {
        switch scheme {
        case .nvfp4: "W4A4 (NVFP4 weights and activations, emulated)"
        case .nvfp4a16: "weight-only NVFP4 (dequantized weights)"
        }
    }

    /// One paragraph with the numbers.
    public var summary: String {
        let percent = String(format: "%+.1f%%", relativeIncrease * 100)
        return "\(schemeDescription), \(layout.rawValue) layout: perplexity "
            + String(format: "%.2f", originalPerplexity) + " → " + String(format: "%.2f", quantizedPerplexity)
            + " (\(percent)) on \(samples) sample\(samples == 1 ? "" : "s"), \(tokens) tokens."
            + (excludedLinears.map { " \($0) Linear\($0 == 1 ? "" : "s") kept unquantized (--exclude)." } ?? "")
    }

    /// The verdict with its (heuristic) thresholds.
    public var verdictLine: String {
        "verdict: \(verdict.rawValue) — \(verdict.explanation) (heuristic thresholds on the perplexity increase: "
            + "fine < +\(Int(QualityVerdict.fineLimit * 100))%, noticeable < +\(Int(QualityVerdict.noticeableLimit * 100))%, "
            + "degraded otherwise)"
    }

    /// The summary and the verdict line, as `coordctl eval` prints them.
    public var description: String { summary + "\n" + verdictLine }
}

/// Whether a written checkpoint is good enough to be called a success: the perplexity of the W4A4-emulated (or
/// dequantized) model on held-out text must be finite and at most ``maxPerplexityRatio`` times the original's.
/// A 135M model loses about 40% in W4A4 and a 70B far less, so the default of 2× only catches broken checkpoints.
public struct QualityGate: Sendable, Equatable {
    public static let defaultMaxPerplexityRatio = 2.0

    public var maxPerplexityRatio: Double

    public init(maxPerplexityRatio: Double = Self.defaultMaxPerplexityRatio) {
        self.maxPerplexityRatio = maxPerplexityRatio
    }

    /// Nil when `report` passes; otherwise why it does not, with the numbers.
    public func failure(of report: QualityReport) -> QualityGateFailure? {
        let ratio = report.quantizedPerplexity / report.originalPerplexity
        guard report.originalPerplexity.isFinite, report.quantizedPerplexity.isFinite, ratio.isFinite,
              ratio <= maxPerplexityRatio else {
            return QualityGateFailure(originalPerplexity: report.originalPerplexity,
                                      quantizedPerplexity: report.quantizedPerplexity,
                                      maxPerplexityRatio: maxPerplexityRatio, samples: report.samples,
                                      tokens: report.tokens)
        }
        return nil
    }
}

/// A checkpoint that failed its quality gate; the job keeps it only as `OUTPUT.partial-<id>` for inspection.
public struct QualityGateFailure: Error, Sendable, Equatable, CustomStringConvertible {
    public var originalPerplexity: Double
    public var quantizedPerplexity: Double
    public var maxPerplexityRatio: Double
    public var samples: Int
    public var tokens: Int
    /// Where the rejected checkpoint was left, when the job kept it.
    public var keptAt: String?

    public var description: String {
        let ratio = quantizedPerplexity / originalPerplexity
        var text = "quality gate failed: perplexity on \(samples) held-out samples (\(tokens) tokens) rose from "
            + "\(formatPerplexity(originalPerplexity)) to \(formatPerplexity(quantizedPerplexity))"
        text += ratio.isFinite ? String(format: " (%.3g×, limit %.3g×)", ratio, maxPerplexityRatio)
                               : " (not finite, limit \(String(format: "%.3g", maxPerplexityRatio))×)"
        text += "; the checkpoint is broken or far worse than the original"
        if let keptAt { text += "; it was kept for inspection at \(keptAt), not at the output path" }
        return text + ". Use --max-perplexity-ratio X to allow more, or --no-quality-gate to accept it."
    }
}

/// `48.04`, `4.9e+37`, `inf`: perplexities in messages.
public func formatPerplexity(_ value: Double) -> String {
    guard value.isFinite else { return "\(value)" }
    return value < 1e6 ? String(format: "%.2f", value) : String(format: "%.3g", value)
}
