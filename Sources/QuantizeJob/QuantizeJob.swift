/// # QuantizeJob
///
/// One whole quantization job on one machine: check the input, plan the output, stream every decoder layer
/// through the NVFP4 quantizer (and, for W4A4, through calibration), write, verify, and rename the output
/// into place. `coordctl quantize` is a thin shell around ``QuantizeJob``.
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
    public func run(calibrator givenCalibrator: ActivationCalibrator? = nil) throws -> QuantizeSummary {
        let start = Date()
        logger.info("checking input", metadata: ["model": "\(options.modelDirectory.path)"])
        let inputs = try checkInputs()
        let config = inputs.config
        var calibrator = givenCalibrator
        var calibrationRecord: CalibrationRecord?
        if options.scheme.quantizesActivations && calibrator == nil {
            let (made, record) = try makeCalibrator(inputs: inputs)
            calibrator = made
            calibrationRecord = record
        }
        defer { (calibrator as? Finishable)?.finish() }
        let output = try OutputDirectory(final: options.outputDirectory, jobID: options.jobID, force: options.force)
        try output.create()
        do {
            var summary = try write(inputs: inputs, into: output.partial, calibrator: calibrator,
                                    calibrationRecord: calibrationRecord)
            try output.commit()
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
            output.discard()
            throw error
        }
    }

    func write(inputs: Inputs, into directory: URL, calibrator: ActivationCalibrator?,
               calibrationRecord: CalibrationRecord?) throws -> QuantizeSummary {
        let config = inputs.config, source = inputs.source
        let layout = LinearTensorLayout(layout: options.layout, scheme: options.scheme)
        var sourceDTypes: [String: SafeTensorsDType] = [:]
        for tensor in config.nonQuantizedTensors { sourceDTypes[tensor.name] = try source.info(tensor.name).dtype }
        let plan = ShardPlanner.plan(groups: checkpointTensorGroups(config: config, layout: layout, sourceDTypes: sourceDTypes),
                                     maxShardSize: options.maxShardSize)
        let writer = CheckpointWriter(directory: directory, plan: plan)
        var summary = QuantizeSummary(outputDirectory: options.outputDirectory)
        summary.sourceBytes = try source.tensorNames.reduce(0) { $0 + (try source.info($1).byteCount) }
        let linearBytes = try config.allLinears.reduce(0) { $0 + (try source.info($1.weightName).byteCount) }
        progress.start(totalLayers: config.numHiddenLayers, totalBytes: linearBytes)

        func copyVerbatim(_ name: String) throws {
            try source.withBytes(name) { try writer.write(name, bytes: $0) }
            try source.releasePages(name)
        }

        /// Quantizes and writes one layer. Weight quantization does not depend on calibration, only the
        /// activation scalars do, so layer L is exported while calibration runs layer L+1.
        func export(layer: Int, activationAmax: [FusedGroup: Float]?) throws -> (amax: [String: Float], bytes: Int) {
            for norm in config.layerNorms(layer: layer) { try copyVerbatim(norm.name) }
            let linears = config.linears(layer: layer)
            var sharedScale: [FusedGroup: Float] = [:]
            for group in FusedGroup.allCases {
                let members = linears.filter { $0.kind.group == group }
                sharedScale[group] = FusedScales.sharedWeightScale2(memberAmax: members.map { inputs.weightAmax[$0.weightName]! })
            }
            var recorded: [String: Float] = [:]
            var bytes = 0
            for linear in linears {
                var inputScale: Float?
                if options.scheme.quantizesActivations {
                    guard let amax = activationAmax?[linear.kind.group], amax.isFinite, amax > 0 else {
                        throw QuantizeJobError("\(linear.name): calibration produced no usable activation amax "
                                               + "(\(activationAmax?[linear.kind.group].map { "\($0)" } ?? "none")); "
                                               + "every Linear must be exercised by the calibration samples")
                    }
                    inputScale = FusedScales.inputScale(activationAmax: amax)
                    recorded[linear.name] = amax
                }
                let weight = try quantize(source: source, linear: linear, weightScale2: sharedScale[linear.kind.group]!)
                try source.releasePages(linear.weightName)
                for (name, data) in try layout.tensorBytes(QuantizedLinear(spec: linear, weight: weight, inputScale: inputScale)) {
                    try writer.write(name, data: data)
                }
                bytes += try source.info(linear.weightName).byteCount
            }
            return (recorded, bytes)
        }

        try copyVerbatim(LlamaConfig.embedTokensName)
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
            let activationAmax = try calibrator?.activationAmax(layer: layer)
            // At most one layer is in flight: wait for layer L-1 before handing over layer L.
            try collectExport(finishedLayer: layer - 1)
            exportStage.submit { try export(layer: layer, activationAmax: activationAmax) }
        }
        try collectExport(finishedLayer: config.numHiddenLayers - 1)
        try copyVerbatim(LlamaConfig.finalNormName)
        if !config.tieWordEmbeddings { try copyVerbatim(LlamaConfig.lmHeadName) }
        try writer.finish()
        progress.finish()
        _ = try writeModelFiles(sourceDirectory: options.modelDirectory, outputDirectory: directory,
                                configWriter: QuantizationConfigWriter(layout: options.layout, scheme: options.scheme,
                                                                       omitScaleDTypeKeys: options.omitScaleDTypeKeys))
        if options.scheme.quantizesActivations {
            var record = calibrationRecord ?? CalibrationRecord(source: "provided by the caller", samples: 0, tokens: 0,
                                                                  contentHash: "", device: "n/a")
            record.activationAmax = summary.activationAmax
            try record.write(to: directory.appendingPathComponent("calibration.json"), scheme: options.scheme)
        }
        logger.info("verifying the written checkpoint")
        let report = try CheckpointVerifier(config: config, layout: layout, source: source).verify(directory: directory)
        logger.info("verified", metadata: ["files": "\(report.files)", "tensors": "\(report.tensors)",
                                           "linears": "\(report.quantizedLinears)"])
        summary.outputBytes = report.bytes
        summary.shards = plan.shards.count
        return summary
    }

    func quantize(source: SafeTensorsModel, linear: LinearSpec, weightScale2: Float) throws -> NVFP4Weight {
        let info = try source.info(linear.weightName)
        if info.dtype == .bf16 {
            return try source.withBytes(linear.weightName) { bytes in
                try withBF16(bytes) {
                    try NVFP4Quantizer.quantize(bf16: $0, rows: linear.outFeatures, cols: linear.inFeatures,
                                                weightScale2: weightScale2, tensor: linear.weightName)
                }
            }
        }
        let values = try source.floats(linear.weightName)
        return try values.withUnsafeBufferPointer {
            try NVFP4Quantizer.quantize(f32: $0, rows: linear.outFeatures, cols: linear.inFeatures,
                                        weightScale2: weightScale2, tensor: linear.weightName)
        }
    }
}

func formatBytes(_ bytes: Int) -> String {
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
