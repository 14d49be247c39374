import CPUBackend
import Calibration
import Checkpoint
import Evaluation
import Foundation
import LlamaModel
import Logging
import SafeTensors
import Tokenizer

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

/// The quality report of a written checkpoint: perplexity of the original model against it (W4A4 emulated, or
/// dequantized weights for weight-only) on held-out text that calibration never saw, on the CPU.
public enum QualityEvaluation {
    public static func report(spec: JobSpec, config: LlamaConfig, original: SafeTensorsModel, checkpointDirectory: URL,
                              logger: Logger) throws -> QualityReport {
        let tokenizer = try BPETokenizer.load(modelDirectory: spec.modelPath)
        let set = try CalibrationData.loadHeldOutEvaluation(
            tokenizer: tokenizer, vocabSize: config.vocabSize,
            options: CalibrationOptions(samples: spec.evaluationSamples, minTokens: 1, maxTokens: spec.evaluationMaxTokens))
        logger.info("quality report: perplexity on \(set.samples.count) held-out samples (\(set.tokenTotal) tokens)")
        let checkpoint = try QuantizedCheckpoint(directory: checkpointDirectory, originalConfig: config)
        let evaluator = PerplexityEvaluator(backend: CPUBackend(config: config), logger: logger)
        let started = ContinuousClock.now
        return try evaluator.evaluate(original: original, checkpoint: checkpoint,
                                      samples: set.samples.map { $0.tokens.map(Int.init) }) { progress in
            // Progress on a slow step: a 70B model takes a while on a CPU.
            let elapsed = secondsSince(started)
            let remaining = elapsed / Double(max(progress.completedLayers, 1))
                * Double(progress.totalLayers - progress.completedLayers)
            logger.info("quality report: layer \(progress.completedLayers)/\(progress.totalLayers) of both models, ETA \(formatDuration(remaining))")
        }
    }
}
