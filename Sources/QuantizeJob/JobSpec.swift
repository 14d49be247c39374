import CPUBackend
import Calibration
import Checkpoint
import CUDABackend
import ComputeBackend
import Foundation
import LlamaModel
import Logging
import Tokenizer

extension JobSpec {
    /// The spec of `options`, hashing the model's config.json now.
    public init(options: QuantizeOptions) throws {
        let calibration = options.calibration
        self.init(
            jobID: options.jobID, modelPath: options.modelDirectory.path, outputPath: options.outputDirectory.path,
            scheme: options.scheme, layout: options.layout, maxShardSize: options.maxShardSize,
            omitScaleDTypeKeys: options.omitScaleDTypeKeys, force: options.force,
            calibration: Calibration(
                dataPath: calibration.dataPath, samples: calibration.selection.samples, seed: calibration.selection.seed,
                minTokens: calibration.selection.minTokens, maxTokens: calibration.selection.maxTokens,
                chunkTokens: calibration.chunkTokens, activationPrecision: calibration.activationPrecision,
                activationMemoryBudget: calibration.activationMemoryBudget,
                scratchDirectory: calibration.scratchDirectory?.path, device: calibration.device),
            evaluationSamples: options.evaluationSamples, evaluationMaxTokens: options.evaluationMaxTokens,
            maxPerplexityRatio: options.maxPerplexityRatio,
            configSHA256: try ModelCheck.configSHA256(modelDirectory: options.modelDirectory),
            excludePatterns: options.excludePatterns, gptq: options.gptq, scaleSearch: options.scaleSearch)
    }

    /// The options that `coordctl quantize` would run this job with.
    public var quantizeOptions: QuantizeOptions {
        var options = QuantizeOptions(modelDirectory: modelDirectory, outputDirectory: outputDirectory)
        options.jobID = jobID
        options.scheme = scheme
        options.layout = layout
        options.maxShardSize = maxShardSize
        options.omitScaleDTypeKeys = omitScaleDTypeKeys
        options.force = force
        options.calibration.dataPath = calibration.dataPath
        options.calibration.selection = calibration.selection
        options.calibration.chunkTokens = calibration.chunkTokens
        options.calibration.activationPrecision = calibration.activationPrecision
        options.calibration.activationMemoryBudget = calibration.activationMemoryBudget
        options.calibration.scratchDirectory = calibration.scratchDirectory.map { URL(fileURLWithPath: $0) }
        options.calibration.device = calibration.device
        options.evaluationSamples = evaluationSamples
        options.evaluationMaxTokens = evaluationMaxTokens
        options.maxPerplexityRatio = maxPerplexityRatio
        options.excludePatterns = excludePatterns
        options.gptq = gptq
        options.scaleSearch = scaleSearch
        return options
    }

    /// How `calibration.json` names a device and the precision its activations were rounded to.
    public func deviceLabel(_ device: ComputeDevice) -> String {
        "\(device) (\(device.activationLabel(calibration.activationPrecision)) activations)"
    }

    /// The calibration backend of `device`, handed to `body` (generic over the backend type).
    public func withBackend<R>(on device: ComputeDevice, config: LlamaConfig,
                               _ body: (any ComputeBackend) throws -> R) throws -> R {
        switch device {
        case .cpu: try body(CPUBackend(config: config, activationPrecision: calibration.activationPrecision))
        case .cuda(let gpu): try body(CUDABackend(config: config, device: gpu))
        }
    }
}

