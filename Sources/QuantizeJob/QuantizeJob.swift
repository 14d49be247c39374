/// # QuantizeJob
///
/// One whole quantization job on one machine: check the input, plan the output, stream every decoder layer
/// through the NVFP4 quantizer (and, for W4A4, through calibration), write, verify, and rename the output
/// into place. `coordctl quantize` is a thin shell around ``QuantizeJob``.
///
/// The same job split across machines uses the same pieces, which know nothing of the network:
/// - ``JobSpec`` (what travels to every worker) and ``ModelCheck`` (a worker's model is the coordinator's);
/// - `CalibrationPlan` (Calibration): the samples in chunks, built once by the coordinator;
/// - ``LayerRangeRunner``: a worker's contiguous range of layers, chunk by chunk (pipelined) or layer by layer;
/// - ``BoundaryStateStore``: the hidden states entering a range, on disk, so a restart resumes at the range's start;
/// - ``LayerExporter``: one layer's output tensors with their SHA-256;
/// - ``CheckpointAssembler``: the coordinator's writer, verifier and atomic rename.
/// ``QuantizeJob/run(calibrator:)`` is one range over all layers feeding the exporter and assembler, so a cluster
/// run and `coordctl quantize` write byte-identical checkpoints.
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

/// The tool's version, recorded in `calibration.json`.
public enum NVFP4ClusterVersion {
    public static let current = "0.1.0"
}

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
    public var activationPrecision: CPUBackend.ActivationPrecision = .bfloat16

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
    public var evaluationMaxTokens = 1200

    public init(modelDirectory: URL, outputDirectory: URL) {
        self.modelDirectory = modelDirectory
        self.outputDirectory = outputDirectory
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
    /// Activation amax per Linear module name (W4A4 only).
    public var activationAmax: [String: Float] = [:]
    /// Perplexity of the original against the quantized model, when it was measured.
    public var quality: QualityReport?
    /// Why the quality report is missing, when it was asked for and failed.
    public var qualityFailure: String?

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
        if let quality { return "\nquality on held-out text (not used for calibration):\n" + quality.description }
        if let qualityFailure { return "\nquality report not available: \(qualityFailure)" }
        return ""
    }
}

public struct QuantizeJobError: Error, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

public final class QuantizeJob {
    public let options: QuantizeOptions
    let logger: Logger
    let progress: ProgressReporter

    public init(options: QuantizeOptions, logger: Logger, progress: ProgressReporter? = nil) {
        self.options = options
        self.logger = logger
        self.progress = progress ?? ProgressReporter(logger: logger)
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
        let modelPath = options.modelDirectory.standardizedFileURL.resolvingSymlinksInPath().path
        let outputPath = options.outputDirectory.standardizedFileURL.resolvingSymlinksInPath().path
        if modelPath == outputPath || modelPath.hasPrefix(outputPath.hasSuffix("/") ? outputPath : outputPath + "/") {
            throw QuantizeJobError("--output \(options.outputDirectory.path) is or contains the source model directory "
                                   + "\(options.modelDirectory.path); choose another output directory")
        }
        let configPath = options.modelDirectory.appendingPathComponent("config.json").path
        guard FileManager.default.fileExists(atPath: configPath) else {
            throw QuantizeJobError("\(configPath): not found; --model must be a Hugging Face model directory")
        }
        let config = try LlamaConfig.load(path: configPath)
        let source = try SafeTensorsModel(directory: options.modelDirectory.path)
        try validateWeights(config: config, model: source)
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

    /// Runs the job. For W4A4 the job calibrates on `options.calibration` unless a calibrator is given (tests
    /// pass fixed amax values that way); weight-only jobs use none.
    ///
    /// This is the cluster's pipeline on one machine: a ``CalibrationPlan``, one ``LayerRangeRunner`` over every
    /// layer (layer-streaming schedule), a ``LayerExporter`` per layer and a ``CheckpointAssembler``.
    public func run(calibrator givenCalibrator: ActivationCalibrator? = nil) throws -> QuantizeSummary {
        let start = Date()
        logger.info("checking input", metadata: ["model": "\(options.modelDirectory.path)"])
        let inputs = try checkInputs()
        let config = inputs.config
        let spec = try JobSpec(options: options)
        var calibrator = givenCalibrator
        var calibrationRecord: CalibrationRecord?
        if options.scheme.quantizesActivations && calibrator == nil {
            let (made, record) = try makeCalibrator(spec: spec, inputs: inputs)
            calibrator = made
            calibrationRecord = record
        }
        defer { (calibrator as? Finishable)?.finish() }
        let assembler = try CheckpointAssembler(spec: spec, config: config, source: inputs.source, logger: logger)
        do {
            var summary = try write(spec: spec, inputs: inputs, into: assembler, calibrator: calibrator,
                                    calibrationRecord: calibrationRecord)
            summary.seconds = Date().timeIntervalSince(start)
            summary.layers = config.numHiddenLayers
            if options.evaluationSamples > 0 {
                // The checkpoint is complete at this point; a failed report is told, not fatal.
                do {
                    summary.quality = try qualityReport(inputs: inputs)
                } catch {
                    logger.warning("quality report failed: \(error)")
                    summary.qualityFailure = "\(error)"
                }
            }
            return summary
        } catch {
            assembler.discard()
            throw error
        }
    }

    /// Chooses the device, plans the calibration chunks and starts a layer-streaming pass over every layer.
    func makeCalibrator(spec: JobSpec, inputs: Inputs) throws -> (ActivationCalibrator, CalibrationRecord) {
        let device = try spec.computeDevice(logger: logger)
        let plan = try spec.makeCalibrationPlan(config: inputs.config, logger: logger)
        let model = inputs.source
        let calibrator = try spec.withBackend(on: device, config: inputs.config) { backend in
            func streaming<Backend: ComputeBackend>(_ backend: Backend) throws -> ActivationCalibrator {
                let runner = try LayerRangeRunner(
                    spec: spec, config: inputs.config, weights: model, backend: backend,
                    range: 0..<inputs.config.numHiddenLayers, embeds: true, logger: logger,
                    releaseWeights: { names in for name in names { try? model.releasePages(name) } })
                return try runner.streamingPass(plan: plan, progress: { [progress] in progress.calibration($0) })
            }
            return try streaming(backend)
        }
        return (calibrator, spec.calibrationRecord(plan: plan, device: device))
    }

    /// Streams every layer through calibration, export and the assembler, then finishes the checkpoint.
    /// Weight quantization does not depend on calibration, only the activation scalars do, so layer L is exported
    /// and written on a background stage while calibration runs layer L+1.
    func write(spec: JobSpec, inputs: Inputs, into assembler: CheckpointAssembler, calibrator: ActivationCalibrator?,
               calibrationRecord: CalibrationRecord?) throws -> QuantizeSummary {
        let config = inputs.config, source = inputs.source
        var summary = QuantizeSummary(outputDirectory: options.outputDirectory)
        summary.sourceBytes = try source.tensorNames.reduce(0) { $0 + (try source.info($1).byteCount) }
        let linearBytes = try config.allLinears.reduce(0) { $0 + (try source.info($1.weightName).byteCount) }
        progress.start(totalLayers: config.numHiddenLayers, totalBytes: linearBytes)
        let exporter = LayerExporter(spec: spec, config: config, source: source, weightAmax: inputs.weightAmax)

        try assembler.writeEmbeddings()
        let exportStage = PipelineStage<(amax: [String: Float], bytes: Int)>(label: "nvfp4.export")
        var bytesDone = 0
        /// Waits for the layer in flight, if any, and folds its result into the summary.
        func collectExport(finishedLayer: Int) throws {
            guard let finished = try exportStage.waitForResult() else { return }
            summary.activationAmax.merge(finished.amax) { a, _ in a }
            bytesDone += finished.bytes
            summary.quantizedLinears += LinearKind.allCases.count
            progress.layerDone(layer: finishedLayer, bytesDone: bytesDone)
        }
        for layer in 0..<config.numHiddenLayers {
            let activationAmax: [FusedGroup: Float]?
            do {
                activationAmax = try calibrator?.activationAmax(layer: layer)
            } catch {
                // Let the layer in flight finish before the caller discards the directory it writes into.
                _ = try? exportStage.waitForResult()
                throw error
            }
            // At most one layer is in flight: wait for layer L-1 before handing over layer L.
            try collectExport(finishedLayer: layer - 1)
            exportStage.submit {
                let tensors = try exporter.export(layer: layer, activationAmax: activationAmax)
                try assembler.add(layer: layer, tensors: tensors)
                var recorded: [String: Float] = [:]
                if spec.scheme.quantizesActivations, let activationAmax {
                    for linear in config.linears(layer: layer) { recorded[linear.name] = activationAmax[linear.kind.group] }
                }
                return (recorded, try exporter.sourceLinearBytes(layer: layer))
            }
        }
        try collectExport(finishedLayer: config.numHiddenLayers - 1)
        progress.finish()
        var record: CalibrationRecord?
        if options.scheme.quantizesActivations {
            record = calibrationRecord ?? CalibrationRecord(source: "provided by the caller", samples: 0, tokens: 0,
                                                            contentHash: "", device: "n/a")
            record?.activationAmax = summary.activationAmax
        }
        let report = try assembler.finish(calibration: record)
        summary.outputBytes = report.bytes
        summary.shards = assembler.plan.shards.count
        return summary
    }
}

/// `478 kB`, `12.3 MB`, `4.02 GB`: sizes in summaries and status lines.
public func formatBytes(_ bytes: Int) -> String {
    let value = Double(bytes)
    if value >= 1e9 { return String(format: "%.2f GB", value / 1e9) }
    if value >= 1e6 { return String(format: "%.1f MB", value / 1e6) }
    return String(format: "%.0f kB", value / 1e3)
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

/// A one-slot background stage: `submit` starts work on a serial queue, `waitForResult` blocks until it is done
/// and rethrows its error. Used to overlap a layer's export with the next layer's calibration.
final class PipelineStage<Result>: @unchecked Sendable {
    private let queue: DispatchQueue
    private let group = DispatchGroup()
    private var outcome: Swift.Result<Result, Error>?

    init(label: String) { queue = DispatchQueue(label: label) }

    /// The work touches state owned by the caller, which does not use it until `waitForResult` returns.
    func submit(_ work: @escaping () throws -> Result) {
        let box = UncheckedSendableBox(work)
        group.enter()
        queue.async {
            self.outcome = Swift.Result { try box.value() }
            self.group.leave()
        }
    }

    /// The result of the last submitted work, or nil when nothing was submitted since the last call.
    func waitForResult() throws -> Result? {
        group.wait()
        defer { outcome = nil }
        return try outcome?.get()
    }
}

struct UncheckedSendableBox<Value>: @unchecked Sendable {
    let value: Value
    init(_ value: Value) { self.value = value }
}
