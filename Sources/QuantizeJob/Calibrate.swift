import CPUBackend
import CUDARuntime
import Calibration
import Checkpoint
import ComputeBackend
import Evaluation
import Foundation
import LlamaModel
import Logging
import NVFP4
import SafeTensors
import Tokenizer

/// Where calibration runs.
public enum ComputeDevice: CustomStringConvertible, Equatable {
    case cpu

    public var description: String { "cpu" }

    /// `auto` picks CUDA when present and usable, otherwise the CPU with one log line. The CUDA backend is not
    /// written yet, so an explicit `cuda` fails at once, saying whether a driver was even found.
    static func select(_ name: String, logger: Logger, locator: CUDALibraryLocator = CUDALibraryLocator()) throws -> ComputeDevice {
        switch name {
        case "cpu": return .cpu
        case "auto":
            if (try? locator.open(.driver)) != nil {
                logger.info("device auto: a CUDA driver is present, but this build has no CUDA backend yet; using the CPU")
            } else {
                logger.info("device auto: no CUDA driver found; using the CPU")
            }
            return .cpu
        default:
            guard name == "cuda" || name.hasPrefix("cuda:") else {
                throw QuantizeJobError("--device \(name): expected cpu, cuda, cuda:N or auto")
            }
            do {
                _ = try locator.open(.driver)
            } catch {
                throw QuantizeJobError("--device \(name): no usable GPU here: \(error)")
            }
            throw QuantizeJobError("--device \(name): this build has no CUDA backend yet; use --device cpu or auto")
        }
    }
}


extension QuantizeJob {
    /// Perplexity of the original model against the written checkpoint (W4A4 emulated, or dequantized weights for
    /// weight-only) on held-out text that calibration never saw.
    public func qualityReport(inputs: Inputs) throws -> QualityReport {
        let tokenizer = try BPETokenizer.load(modelDirectory: options.modelDirectory.path)
        let set = try CalibrationData.loadHeldOutEvaluation(
            tokenizer: tokenizer, vocabSize: inputs.config.vocabSize,
            options: CalibrationOptions(samples: options.evaluationSamples, minTokens: 1,
                                        maxTokens: options.evaluationMaxTokens))
        logger.info("quality report: perplexity on \(set.samples.count) held-out samples (\(set.tokenTotal) tokens)")
        let checkpoint = try QuantizedCheckpoint(directory: options.outputDirectory, originalConfig: inputs.config)
        let evaluator = PerplexityEvaluator(backend: CPUBackend(config: inputs.config), logger: logger)
        return try evaluator.evaluate(original: inputs.source, checkpoint: checkpoint,
                                      samples: set.samples.map { $0.tokens.map(Int.init) })
    }
}
