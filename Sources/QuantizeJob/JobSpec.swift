import CPUBackend
import Calibration
import Checkpoint
import CUDABackend
import ComputeBackend
import Foundation
import LlamaModel
import Logging
import Tokenizer

// The job's enums travel inside JobSpec by their raw values (the command-line spellings).
extension QuantizationScheme: Codable {}
extension CheckpointLayout: Codable {}

/// Everything a worker and the coordinator need to run one job, as it travels between them. Paths are the same on
/// every machine (the model directory is shared or copied to the same place); ``ModelCheck`` proves it is the same
/// model before a worker starts.
public struct JobSpec: Codable, Sendable, Equatable {
    /// How calibration samples are chosen and run (W4A4).
    public struct Calibration: Codable, Sendable, Equatable {
        /// A .jsonl, .txt/.md file or directory; nil for the bundled default set.
        public var dataPath: String?
        public var samples: Int
        public var seed: UInt64?
        public var minTokens: Int
        public var maxTokens: Int
        public var chunkTokens: Int
        public var activationPrecision: ActivationPrecision
        /// Bytes of f32 hidden states kept in memory before spilling to `scratchDirectory`.
        public var activationMemoryBudget: Int
        public var scratchDirectory: String?
        /// `cpu`, `auto`, `cuda` or `cuda:N`.
        public var device: String

        public var selection: CalibrationOptions {
            CalibrationOptions(samples: samples, minTokens: minTokens, maxTokens: maxTokens, seed: seed)
        }
    }

    /// Names the `OUTPUT.partial-<id>` directory and the workers' scratch directories.
    public var jobID: String
    public var modelPath: String
    public var outputPath: String
    public var scheme: QuantizationScheme
    public var layout: CheckpointLayout
    public var maxShardSize: Int
    public var omitScaleDTypeKeys: Bool
    public var force: Bool
    public var calibration: Calibration
    public var evaluationSamples: Int
    public var evaluationMaxTokens: Int
    /// The job fails when the quantized perplexity exceeds this multiple of the original's (or is not finite);
    /// nil turns the gate off. No gate without evaluation samples.
    public var maxPerplexityRatio: Double?
    /// SHA-256 (lower-case hex) of `<modelPath>/config.json` when the job was made.
    public var configSHA256: String

    /// The spec of `options`, hashing the model's config.json now.
    public init(options: QuantizeOptions) throws {
        let calibration = options.calibration
        jobID = options.jobID
        modelPath = options.modelDirectory.path
        outputPath = options.outputDirectory.path
        scheme = options.scheme
        layout = options.layout
        maxShardSize = options.maxShardSize
        omitScaleDTypeKeys = options.omitScaleDTypeKeys
        force = options.force
        self.calibration = Calibration(
            dataPath: calibration.dataPath, samples: calibration.selection.samples, seed: calibration.selection.seed,
            minTokens: calibration.selection.minTokens, maxTokens: calibration.selection.maxTokens,
            chunkTokens: calibration.chunkTokens, activationPrecision: calibration.activationPrecision,
            activationMemoryBudget: calibration.activationMemoryBudget,
            scratchDirectory: calibration.scratchDirectory?.path, device: calibration.device)
        evaluationSamples = options.evaluationSamples
        evaluationMaxTokens = options.evaluationMaxTokens
        maxPerplexityRatio = options.maxPerplexityRatio
        configSHA256 = try ModelCheck.configSHA256(modelDirectory: options.modelDirectory)
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
        return options
    }

    public var modelDirectory: URL { URL(fileURLWithPath: modelPath) }
    public var outputDirectory: URL { URL(fileURLWithPath: outputPath) }
    /// Where workers keep spilled and boundary hidden states.
    public var scratchDirectory: URL {
        calibration.scratchDirectory.map { URL(fileURLWithPath: $0) } ?? FileManager.default.temporaryDirectory
    }
    public var tensorLayout: LinearTensorLayout { LinearTensorLayout(layout: layout, scheme: scheme) }

    /// The calibration samples of this job, chunked: the same selection `coordctl quantize` makes (the model's
    /// tokenizer; the `--calib` data or the built-in set).
    public func makeCalibrationPlan(config: LlamaConfig, logger: Logger) throws -> CalibrationPlan {
        let tokenizer: BPETokenizer?
        do {
            tokenizer = try BPETokenizer.load(modelDirectory: modelPath)
        } catch {
            // Token-id calibration files need no tokenizer; text ones fail below with the reason.
            logger.warning("no usable tokenizer: \(error)")
            tokenizer = nil
        }
        let set: CalibrationSet
        let source: String
        if let path = calibration.dataPath {
            set = try CalibrationData.load(path: path, tokenizer: tokenizer, vocabSize: config.vocabSize,
                                           options: calibration.selection)
            source = path
        } else {
            guard let tokenizer else {
                throw QuantizeJobError.tokenizerRequired(model: modelPath)
            }
            set = try CalibrationData.loadDefault(tokenizer: tokenizer, vocabSize: config.vocabSize,
                                                  options: calibration.selection)
            source = "built-in default set (\(CalibrationData.defaultCalibrationURL.lastPathComponent))"
        }
        logger.info("calibration data: \(set.summary)")
        return try CalibrationPlan(set: set, source: source, chunkTokens: calibration.chunkTokens)
    }

    /// The device calibration runs on; fails for a device this build cannot use.
    public func computeDevice(logger: Logger) throws -> ComputeDevice {
        try ComputeDevice.select(calibration.device, logger: logger)
    }

    /// What `calibration.json` says about `plan` (its amax values are added as layers complete).
    public func calibrationRecord(plan: CalibrationPlan, device: ComputeDevice) -> CalibrationRecord {
        calibrationRecord(plan: plan, deviceLabel: deviceLabel(device))
    }

    /// ``calibrationRecord(plan:device:)`` with the device already described (by the workers that computed).
    public func calibrationRecord(plan: CalibrationPlan, deviceLabel: String) -> CalibrationRecord {
        CalibrationRecord(source: plan.source, samples: plan.sampleCount, tokens: plan.tokenCount,
                          contentHash: plan.contentHash, device: deviceLabel)
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

/// A model directory that is not the one the job was planned on.
public enum ModelCheckError: Error, CustomStringConvertible, Equatable, Sendable {
    case unreadable(path: String, reason: String)
    case configMismatch(path: String, expectedSHA256: String, actualSHA256: String)

    public var description: String {
        switch self {
        case .unreadable(let path, let reason):
            return "\(path): cannot read the model's config: \(reason)"
        case .configMismatch(let path, let expected, let actual):
            return "\(path) has SHA-256 \(actual), but the job was planned on a config.json with SHA-256 \(expected); "
                + "this machine holds a different model at the same path"
        }
    }
}

/// What a worker checks before it starts: its `<model>/config.json` is byte for byte the coordinator's.
public enum ModelCheck {
    /// SHA-256 (lower-case hex) of `<modelDirectory>/config.json`.
    public static func configSHA256(modelDirectory: URL) throws -> String {
        let path = ModelDirectory(modelDirectory).configURL.path
        do {
            return sha256Hex(try Data(contentsOf: URL(fileURLWithPath: path)))
        } catch {
            throw ModelCheckError.unreadable(path: path, reason: error.localizedDescription)
        }
    }

    /// Throws ``ModelCheckError/configMismatch(path:expectedSHA256:actualSHA256:)`` unless the config.json at the
    /// spec's model path hashes to `spec.configSHA256`.
    public static func verify(_ spec: JobSpec) throws {
        let path = ModelDirectory(spec.modelDirectory).configURL.path
        let actual = try configSHA256(modelDirectory: spec.modelDirectory)
        guard actual == spec.configSHA256 else {
            throw ModelCheckError.configMismatch(path: path, expectedSHA256: spec.configSHA256, actualSHA256: actual)
        }
    }
}

/// SHA-256 (lower-case hex) of `bytes`.
func sha256Hex(_ bytes: Data) -> String { SHA256Hasher.hexDigest(of: bytes) }
