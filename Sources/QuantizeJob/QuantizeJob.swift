/// # QuantizeJob
///
/// The engine of a quantization job, which knows nothing of the network. A worker runs it (in workerd, or in one
/// process for `coordctl quantize` through LocalCluster); the coordinator links none of it.
/// - ``QuantizeOptions`` and ``QuantizeJob/checkInputs()``: every input check, before any work;
/// - ``ComputeDevice`` and `JobSpec.withBackend`: the CPU or CUDA backend a job computes on;
/// - ``LayerRangeRunner``: a worker's contiguous range of layers, chunk by chunk (pipelined) or layer by layer;
/// - ``BoundaryStateStore``: the hidden states entering a range, on disk, so a restart resumes at the range's start;
/// - ``LayerExporter``: one layer's output tensors with their SHA-256, input scales derived from the calibrated
///   amax per fused group;
/// - ``QualityEvaluation``: the perplexity report a worker measures on a written checkpoint.
///
/// The plain job types (JobSpec, CalibrationPlan, QualityReport, QualityGate) are in JobModel; the checkpoint's
/// assembler and calibration.json in Checkpoint.
import CPUBackend
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

/// How W4A4 calibration data is chosen and run.
public struct CalibrationJobOptions: Sendable {
    /// A .jsonl, .txt/.md file or directory; nil for the bundled default set.
    public var dataPath: String?
    public var selection = CalibrationOptions()
    /// Bytes of f32 hidden states kept in memory before spilling to `scratchDirectory`.
    public var activationMemoryBudget = 8 << 30
    public var scratchDirectory: URL?
    /// Most tokens batched into one forward pass.
    public var chunkTokens = 4096
    /// `cpu`, `auto`, `cuda` or `cuda:N`.
    public var device = "auto"
    /// BF16 rounding points reproduce the BF16 forward that modelopt calibrates with; f32 is the spec's alternative.
    public var activationPrecision: ActivationPrecision = .bfloat16

    public init() {}
}

public struct QuantizeOptions: Sendable {
    public var modelDirectory: URL
    public var outputDirectory: URL
    public var scheme: QuantizationScheme = .nvfp4
    public var layout: CheckpointLayout = .compressedTensors
    public var maxShardSize: Int = 5_000_000_000
    public var force = false
    public var omitScaleDTypeKeys = false
    /// Names the `OUTPUT.partial-<id>` directory.
    public var jobID: String = String(UInt32.random(in: 0...UInt32.max), radix: 16)
    public var calibration = CalibrationJobOptions()
    /// Held-out samples for the closing quality report (0 skips it). The bundled held-out text is never part of
    /// the calibration set.
    public var evaluationSamples = 16
    public var evaluationMaxTokens = JobSpec.defaultEvaluationMaxTokens
    /// The quality gate: the job fails when the quantized perplexity exceeds this multiple of the original's (or is
    /// not finite). nil turns it off.
    public var maxPerplexityRatio: Double? = QualityGate.defaultMaxPerplexityRatio
    /// `--exclude` patterns: matching Linears stay unquantized (see ``LinearExclusion``).
    public var excludePatterns: [String] = []
    /// `--algorithm gptq` with its parameters; nil rounds to nearest.
    public var gptq: GPTQSettings?
    /// `--scale-search`: how block scales are chosen.
    public var scaleSearch: ScaleSearch = .off

    public init(modelDirectory: URL, outputDirectory: URL) {
        self.modelDirectory = modelDirectory
        self.outputDirectory = outputDirectory
    }
}

extension QuantizeOptions {
    /// GPTQ needs a calibration forward (W4A4) and sane parameters.
    public func checkGPTQ() throws {
        if let problem = gptq?.problem(scheme: scheme) { throw QuantizeJobError.unusableGPTQSettings(reason: problem) }
    }
}

public struct QuantizeSummary: Sendable {
    public var layers = 0
    public var quantizedLinears = 0
    public var sourceBytes = 0
    public var outputBytes = 0
    public var seconds = 0.0
    public var outputDirectory: URL
    public var shards = 0
    /// Layer → fused group → activation amax (W4A4 only).
    public var activationAmax: [Int: [FusedGroup: ActivationAmax]] = [:]
    /// Perplexity of the original against the quantized model, when it was measured.
    public var quality: QualityReport?
    /// The gate's limit on quantized/original perplexity; nil when the gate was off.
    public var maxPerplexityRatio: Double?

    public init(outputDirectory: URL) { self.outputDirectory = outputDirectory }

    public var description: String {
        let ratio = outputBytes > 0 ? Double(sourceBytes) / Double(outputBytes) : 0
        return """
            quantized \(layers) layers (\(quantizedLinears) Linears) in \(String(format: "%.1f", seconds)) s
              source \(formatBytes(sourceBytes)) -> output \(formatBytes(outputBytes)) (\(String(format: "%.2f", ratio))x smaller), \(shards) shard(s)
              written to \(outputDirectory.path)
            """ + qualityDescription
    }

    var qualityDescription: String {
        guard let quality else {
            return "\nquality report: skipped (--eval-samples 0), so no quality gate was applied"
        }
        let gate = maxPerplexityRatio.map { String(format: "quality gate: passed (limit %.3g× the original perplexity)", $0) }
            ?? "quality gate: off (--no-quality-gate)"
        return "\nquality on held-out text (not used for calibration):\n" + quality.description + "\n" + gate
    }
}

/// Why a job cannot run or did not finish, naming the option, file, layer or Linear at fault.
public enum QuantizeJobError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The job ran and ended without success; `reason` is the coordinator's (it names the node or tensor).
    case jobFailed(jobID: String, reason: String)
    /// `--output` is the model directory or holds it.
    case outputContainsModel(output: String, model: String)
    /// No `config.json` in `--model`.
    case modelConfigMissing(path: String)
    /// `--device` named a GPU this machine cannot open.
    case deviceUnavailable(device: String, reason: String)
    case layerOutOfRange(layer: Int, layerCount: Int)
    /// A W4A4 Linear whose fused group has no finite, positive calibrated amax.
    case unusableActivationAmax(linear: String, amax: Float?)
    /// Ctrl-C: the job was cancelled; `partialKept` is its staging directory when it could not be removed.
    case interrupted(jobID: String, partialKept: String?)
    /// `--algorithm gptq` on a scheme that calibrates nothing, or with parameters out of range.
    case unusableGPTQSettings(reason: String)
    /// A GPTQ export found a Hessian that did not see every calibration chunk (the worker lost it, e.g. in a
    /// restart): quantizing with it would silently weight a part of the data.
    case incompleteHessian(layer: Int, group: String, chunksSeen: Int, chunks: Int)
    /// A GPTQ job's layer was exported without Hessians.
    case missingHessians(layer: Int)
    /// A weight the GPU quantized differs, in a row checked against the CPU quantizer on the source, from what that
    /// quantizer gives: the export stops rather than write it.
    case deviceQuantizationMismatch(tensor: String, row: Int)

    public var description: String {
        switch self {
        case .jobFailed(let jobID, let reason): "job \(jobID) failed: \(reason)"
        case .outputContainsModel(let output, let model):
            "--output \(output) is or contains the source model directory \(model); choose another output directory"
        case .modelConfigMissing(let path): "\(path): not found; --model must be a Hugging Face model directory"
        case .deviceUnavailable(let device, let reason): "--device \(device): no usable GPU here: \(reason)"
        case .layerOutOfRange(let layer, let count): "layer \(layer) does not exist; the model has \(count) layers"
        case .unusableActivationAmax(let linear, let amax):
            "\(linear): calibration produced no usable activation amax (\(amax.map { "\($0)" } ?? "none")); every Linear "
                + "must be exercised by the calibration samples"
        case .interrupted(let jobID, let partialKept?):
            "interrupted: job \(jobID) cancelled; its partial output \(partialKept) could not be removed (delete it)"
        case .interrupted(let jobID, nil):
            "interrupted: job \(jobID) cancelled; its partial output was removed and no output was written"
        case .unusableGPTQSettings(let reason): reason
        case .missingHessians(let layer): "layer \(layer): a GPTQ export needs the layer's Hessians, and none were given"
        case .deviceQuantizationMismatch(let tensor, let row):
            "\(tensor): row \(row) as quantized on the GPU differs from the CPU quantizer's bytes for the same source row and scale; nothing was written"
        case .incompleteHessian(let layer, let group, let seen, let chunks):
            "layer \(layer) \(group): its GPTQ Hessian saw \(seen) of \(chunks) calibration chunks (the worker lost its "
                + "state, e.g. in a restart); GPTQ needs all of them, so the job stops rather than weight part of the data"
        }
    }
}

public final class QuantizeJob {
    public let options: QuantizeOptions
    let logger: Logger

    public init(options: QuantizeOptions, logger: Logger) {
        self.options = options
        self.logger = logger
    }

    /// Everything the job checks before doing any work; each failure names the file, field or tensor.
    public struct Inputs {
        public let config: LlamaConfig
        public let source: SafeTensorsModel
        /// Per Linear weight name: max |W|, from a first pass that also rejects NaN and Inf.
        public let weightAmax: [String: Float]
    }

    public func checkInputs() throws -> Inputs {
        try options.layout.validate(scheme: options.scheme)
        try options.checkGPTQ()
        let modelPath = options.modelDirectory.standardizedFileURL.resolvingSymlinksInPath().path
        let outputPath = options.outputDirectory.standardizedFileURL.resolvingSymlinksInPath().path
        if modelPath == outputPath || modelPath.hasPrefix(outputPath.hasSuffix("/") ? outputPath : outputPath + "/") {
            throw QuantizeJobError.outputContainsModel(output: options.outputDirectory.path, model: options.modelDirectory.path)
        }
        let model = ModelDirectory(options.modelDirectory)
        guard model.hasConfig else { throw QuantizeJobError.modelConfigMissing(path: model.configURL.path) }
        let config = try model.loadConfig()
        let source = try SafeTensorsModel(directory: options.modelDirectory.path)
        try validateWeights(config: config, model: source)
        _ = try LinearExclusion(patterns: options.excludePatterns, config: config)
        // The output must not already exist (unless --force) before we spend time reading weights.
        _ = try OutputDirectory(final: options.outputDirectory, jobID: options.jobID, force: options.force)

        var weightAmax: [String: Float] = [:]
        for linear in config.allLinears {
            weightAmax[linear.weightName] = try Self.weightAmax(source: source, name: linear.weightName,
                                                                cols: linear.inFeatures)
            try source.releasePages(linear.weightName)
        }
        for tensor in config.nonQuantizedTensors {
            try Self.checkFinite(source: source, name: tensor.name)
            try source.releasePages(tensor.name)
        }
        return Inputs(config: config, source: source, weightAmax: weightAmax)
    }

    /// `max |W|` of a float tensor, rejecting NaN and Inf with an error naming the tensor and row.
    static func tensorAmax(source: SafeTensorsModel, name: String, cols: Int) throws -> Float {
        if try source.info(name).dtype == .bf16 {
            return try source.withBytes(name) { bytes in
                try withBF16(bytes) { try NVFP4Quantizer.amax(bf16: $0, cols: cols, tensor: name) }
            }
        }
        let values = try source.floats(name)
        return try values.withUnsafeBufferPointer { try NVFP4Quantizer.amax(f32: $0, cols: cols, tensor: name) }
    }

    static func weightAmax(source: SafeTensorsModel, name: String, cols: Int) throws -> Float {
        let amax = try tensorAmax(source: source, name: name, cols: cols)
        if amax == 0 { throw NVFP4Error.allZero(tensor: name) }
        return amax
    }

    static func checkFinite(source: SafeTensorsModel, name: String) throws {
        _ = try tensorAmax(source: source, name: name, cols: try source.info(name).shape.last ?? 1)
    }
}

/// BF16 elements of a mapped tensor; copies only when the data offset is not 2-byte aligned.
func withBF16<R>(_ bytes: UnsafeRawBufferPointer, _ body: (UnsafeBufferPointer<UInt16>) throws -> R) rethrows -> R {
    if Int(bitPattern: bytes.baseAddress) % 2 == 0 || bytes.isEmpty {
        return try body(bytes.bindMemory(to: UInt16.self))
    }
    let copy = [UInt16](unsafeUninitializedCapacity: bytes.count / 2) { buffer, count in
        UnsafeMutableRawBufferPointer(buffer).copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[0..<(bytes.count / 2 * 2)]))
        count = bytes.count / 2
    }
    return try copy.withUnsafeBufferPointer(body)
}
