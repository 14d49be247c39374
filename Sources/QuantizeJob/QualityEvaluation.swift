import CPUBackend
import Calibration
import Checkpoint
import Evaluation
import Foundation
import LlamaModel
import Logging
import SafeTensors
import Tokenizer

/// The quality report of a written checkpoint: perplexity of the original model against it (W4A4 emulated, or
/// dequantized weights for weight-only) on held-out text that calibration never saw, and each Linear's output error,
/// on the CPU.
public enum QualityEvaluation {
    /// `outputErrorSamples`: the calibration samples (token ids) to measure each Linear's output error on; nil
    /// measures it on the held-out text.
    public static func report(spec: JobSpec, config: LlamaConfig, original: SafeTensorsModel, checkpointDirectory: URL,
                              outputErrorSamples: [[Int]]? = nil, logger: Logger,
                              progress report: ((EvaluationProgress) -> Void)? = nil) throws -> QualityReport {
        let tokenizer = try BPETokenizer.load(modelDirectory: spec.modelPath)
        let set = try CalibrationData.loadHeldOutEvaluation(
            tokenizer: tokenizer, vocabSize: config.vocabSize,
            options: CalibrationOptions(samples: spec.evaluationSamples, minTokens: 1, maxTokens: spec.evaluationMaxTokens))
        logger.info("quality report: perplexity on \(set.samples.count) held-out samples (\(set.tokenTotal) tokens)")
        let checkpoint = try QuantizedCheckpoint(directory: checkpointDirectory, originalConfig: config)
        let evaluator = PerplexityEvaluator(backend: CPUBackend(config: config), logger: logger)
        let started = ContinuousClock.now
        return try evaluator.evaluate(original: original, checkpoint: checkpoint,
                                      samples: set.samples.map { $0.tokens.map(Int.init) },
                                      outputErrorSamples: outputErrorSamples) { progress in
            // Progress on a slow step: a 70B model takes a while on a CPU.
            let elapsed = secondsSince(started)
            let remaining = elapsed / Double(max(progress.completedLayers, 1))
                * Double(progress.totalLayers - progress.completedLayers)
            logger.info("quality report: layer \(progress.completedLayers)/\(progress.totalLayers) of both models, ETA \(formatDuration(remaining))")
            report?(progress)
        }
    }
}
