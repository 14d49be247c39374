import Foundation
import LlamaModel
import Logging
import NVFP4
import SafeTensors

/// A layer's tensors that do not fit the output plan, naming the layer and tensor.
public enum CheckpointAssemblyError: Error, CustomStringConvertible, Equatable, Sendable {
    case layerOutOfOrder(received: Int, expected: Int?)
    case checksumMismatch(layer: Int, tensor: String, expected: String, actual: String)
    case missingTensors(layer: Int, tensors: [String])
    case unexpectedTensors(layer: Int, tensors: [String])
    case tensorMismatch(layer: Int, tensor: String, reason: String)
    case wrongStep(String)

    public var description: String {
        switch self {
        case .layerOutOfOrder(let received, let expected):
            let next = expected.map { "layer \($0) is next" } ?? "every layer was already added"
            return "checkpoint assembly: layer \(received) arrived out of order; \(next)"
        case .checksumMismatch(let layer, let tensor, let expected, let actual):
            return "checkpoint assembly: layer \(layer): \(tensor) was sent with SHA-256 \(expected), but its bytes hash "
                + "to \(actual); the transfer damaged it"
        case .missingTensors(let layer, let tensors):
            return "checkpoint assembly: layer \(layer) lacks \(tensors.joined(separator: ", "))"
        case .unexpectedTensors(let layer, let tensors):
            return "checkpoint assembly: layer \(layer) has tensors the checkpoint does not plan: \(tensors.joined(separator: ", "))"
        case .tensorMismatch(let layer, let tensor, let reason):
            return "checkpoint assembly: layer \(layer): \(tensor): \(reason)"
        case .wrongStep(let message):
            return "checkpoint assembly: \(message)"
        }
    }
}

/// Writes the output checkpoint from exported layers (the coordinator's side, and `coordctl quantize`'s): plans
/// the shards from the config alone, writes into `OUTPUT.partial-<jobID>`, embeddings first, then each layer's
/// tensors in layer order, then the final norm and `lm_head`, `config.json` and the tokenizer files,
/// `calibration.json` (W4A4), verifies everything with ``CheckpointVerifier`` (every stored activation scale against
/// the calibration it came from), and, once the caller has also judged its quality, renames the directory into place
/// with ``commit()``. Call ``discard()`` after a failure that leaves nothing worth inspecting. Not thread-safe: one
/// caller at a time.
public final class CheckpointAssembler {
    public let spec: JobSpec
    public let config: LlamaConfig
    public let plan: ShardPlan
    /// Where the checkpoint is written until ``commit()`` renames it.
    public var partialDirectory: URL { output.partial }
    /// The layer ``add(layer:tensors:)`` expects next (nil once all are added).
    public var nextLayer: Int? { layersAdded < config.numHiddenLayers ? layersAdded : nil }

    private let source: SafeTensorsModel
    private let logger: Logger
    private let output: OutputDirectory
    private let writer: CheckpointWriter
    private let layout: LinearTensorLayout
    private var embeddingsWritten = false
    private var layersAdded = 0
    private var finished = false
    /// What `calibration.json` was written from, for adding the output errors once the quality report has them.
    private var calibrationRecord: CalibrationRecord?

    /// Checks the output path (see `OutputDirectory`) and creates a fresh partial directory.
    public init(spec: JobSpec, config: LlamaConfig, source: SafeTensorsModel, logger: Logger) throws {
        self.spec = spec
        self.config = config
        self.source = source
        self.logger = logger
        layout = try spec.tensorLayout(config: config, source: source)
        plan = try Self.plan(spec: spec, config: config, source: source)
        output = try OutputDirectory(final: spec.outputDirectory, jobID: spec.jobID, force: spec.force)
        try output.create()
        writer = CheckpointWriter(directory: output.partial, plan: plan)
    }

    /// The shards the job writes, known from the config and the source's dtypes alone.
    public static func plan(spec: JobSpec, config: LlamaConfig, source: SafeTensorsModel) throws -> ShardPlan {
        var sourceDTypes: [String: SafeTensorsDType] = [:]
        for tensor in config.nonQuantizedTensors { sourceDTypes[tensor.name] = try source.info(tensor.name).dtype }
        return ShardPlanner.plan(groups: checkpointTensorGroups(config: config, layout: try spec.tensorLayout(config: config, source: source),
                                                                 sourceDTypes: sourceDTypes),
                                 maxShardSize: spec.maxShardSize)
    }

    /// Refuses, before any work, an output that cannot be written: it exists and is not empty (without `force`, or
    /// not a checkpoint with it), or its filesystem has less free space than the planned checkpoint.
    /// `freeBytes` says how much a filesystem holding a path has free (nil: unknown); tests give it a small disk.
    public static func checkOutput(spec: JobSpec, config: LlamaConfig, source: SafeTensorsModel,
                                   freeBytes: (URL) -> Int64? = systemFreeBytes) throws {
        _ = try OutputDirectory(final: spec.outputDirectory, jobID: spec.jobID, force: spec.force)
        let needed = try plan(spec: spec, config: config, source: source).totalSize
        var existing = spec.outputDirectory.standardizedFileURL
        while !FileManager.default.fileExists(atPath: existing.path), existing.path != "/" {
            existing = existing.deletingLastPathComponent()
        }
        if let free = freeBytes(existing), Int64(needed) > free {
            throw CheckpointError(spec.outputPath, "needs \(formatBytes(needed)), \(formatBytes(Int(free))) free on the "
                                  + "filesystem of \(existing.path); free space or choose another output")
        }
    }

    /// Free bytes on the filesystem holding `url`, as the system reports them.
    public static func systemFreeBytes(_ url: URL) -> Int64? {
        let attributes = try? FileManager.default.attributesOfFileSystem(forPath: url.path)
        return (attributes?[.systemFreeSize] as? NSNumber)?.int64Value
    }

    /// The tensors of `layer` the plan expects, in write order.
    public func plannedTensors(layer: Int) -> [PlannedTensor] {
        let norms = config.layerNorms(layer: layer).map { norm in
            plan.shards.lazy.flatMap(\.tensors).first { $0.name == norm.name }!
        }
        return norms + config.linears(layer: layer).flatMap { layout.plannedTensors(for: $0) }
    }

    /// Copies `model.embed_tokens.weight` from the source (first in every plan).
    public func writeEmbeddings() throws {
        guard !embeddingsWritten else { throw CheckpointAssemblyError.wrongStep("the embeddings were already written") }
        try copyVerbatim(LlamaConfig.embedTokensName)
        embeddingsWritten = true
    }

    /// Writes the tensors of `layer`, which must be the next layer, after checking that they are exactly the planned
    /// ones (names, dtypes, shapes, sizes) and that each one's bytes match its SHA-256 where it has one (the caller
    /// refuses tensors that crossed a network without one). Any order of `tensors` works.
    public func add(layer: Int, tensors: [ExportedTensor]) throws {
        guard embeddingsWritten else { throw CheckpointAssemblyError.wrongStep("layer \(layer) added before the embeddings") }
        guard layer == nextLayer else { throw CheckpointAssemblyError.layerOutOfOrder(received: layer, expected: nextLayer) }
        let planned = plannedTensors(layer: layer)
        var byName: [String: ExportedTensor] = [:]
        for tensor in tensors {
            guard byName.updateValue(tensor, forKey: tensor.name) == nil else {
                throw CheckpointAssemblyError.tensorMismatch(layer: layer, tensor: tensor.name, reason: "sent twice")
            }
        }
        let plannedNames = Set(planned.map(\.name))
        let unexpected = byName.keys.filter { !plannedNames.contains($0) }.sorted()
        guard unexpected.isEmpty else { throw CheckpointAssemblyError.unexpectedTensors(layer: layer, tensors: unexpected) }
        let missing = planned.map(\.name).filter { byName[$0] == nil }
        guard missing.isEmpty else { throw CheckpointAssemblyError.missingTensors(layer: layer, tensors: missing) }
        // Hash every tensor on all cores first; checking them one by one below then costs nothing.
        let actualHashes = try concurrentMap(planned) { plan in
            byName[plan.name]!.sha256 == nil ? nil : SHA256Hasher.hexDigest(of: byName[plan.name]!.data)
        }
        for (expected, actual) in zip(planned, actualHashes) {
            let tensor = byName[expected.name]!
            guard tensor.dtype == expected.dtype, tensor.shape == expected.shape else {
                throw CheckpointAssemblyError.tensorMismatch(
                    layer: layer, tensor: tensor.name,
                    reason: "is \(tensor.dtype.rawValue) \(tensor.shape), the plan has \(expected.dtype.rawValue) \(expected.shape)")
            }
            guard tensor.data.count == expected.byteCount else {
                throw CheckpointAssemblyError.tensorMismatch(layer: layer, tensor: tensor.name,
                                                             reason: "holds \(tensor.data.count) bytes, expected \(expected.byteCount)")
            }
            if let digest = tensor.sha256, let actual, actual != digest {
                throw CheckpointAssemblyError.checksumMismatch(layer: layer, tensor: tensor.name, expected: digest, actual: actual)
            }
        }
        for expected in planned { try writer.write(expected.name, data: byName[expected.name]!.data) }
        layersAdded += 1
    }

    /// Writes the final norm and `lm_head`, the model files and (W4A4) `calibration.json` from `calibration`, and
    /// verifies the whole checkpoint in ``partialDirectory``: every loader rule, and for W4A4 every stored activation
    /// scale against `calibration`'s amax, bit for bit.
    @discardableResult
    public func finish(calibration: CalibrationRecord?) throws -> VerificationReport {
        guard nextLayer == nil else {
            throw CheckpointAssemblyError.wrongStep("finish called before layer \(layersAdded) was added")
        }
        try copyVerbatim(LlamaConfig.finalNormName)
        if !config.tieWordEmbeddings { try copyVerbatim(LlamaConfig.lmHeadName) }
        try writer.finish()
        let directory = output.partial
        _ = try writeModelFiles(sourceDirectory: spec.modelDirectory, outputDirectory: directory,
                                configWriter: QuantizationConfigWriter(layout: spec.layout, scheme: spec.scheme,
                                                                       omitScaleDTypeKeys: spec.omitScaleDTypeKeys,
                                                                       excludedModules: layout.excludedModuleNames(config: config)))
        var activationAmax: [Int: [FusedGroup: ActivationAmax]]?
        if spec.scheme.quantizesActivations {
            guard let calibration else {
                throw CheckpointAssemblyError.wrongStep("a W4A4 checkpoint needs the calibration its scales came from")
            }
            try calibration.write(to: directory.appendingPathComponent("calibration.json"), scheme: spec.scheme, config: config,
                                  excluded: Set(layout.excluded.keys))
            activationAmax = calibration.activationAmax
            calibrationRecord = calibration
        }
        logger.info("verifying the written checkpoint")
        let report = try CheckpointVerifier(config: config, layout: layout, source: source, activationAmax: activationAmax)
            .verify(directory: directory)
        logger.info("verified", metadata: ["files": "\(report.files)", "tensors": "\(report.tensors)",
                                           "linears": "\(report.quantizedLinears)"])
        finished = true
        return report
    }

    /// Renames the verified checkpoint to its final name.
    /// Writes `quality.json` (the closing quality report and the gate's verdict, as `status --json` has them, plus each
    /// Linear's output error) beside the verified checkpoint, for `coordctl report`, and adds the output errors to
    /// `calibration.json` (W4A4) beside the other per-Linear figures. Neither is part of what a loader reads, and the
    /// verified tensors, scales and amax values stay as they are.
    public func writeQualityRecord(_ quality: JobQuality, linearOutputRelativeError: [String: Double]) throws {
        guard finished else { throw CheckpointAssemblyError.wrongStep("the quality record comes after verification") }
        if var calibration = calibrationRecord, !linearOutputRelativeError.isEmpty {
            for (name, error) in linearOutputRelativeError { calibration.linearQuality[name]?.outputRelativeError = error }
            calibration.outputErrorInputs = quality.outputErrorInputs
            try calibration.write(to: partialDirectory.appendingPathComponent("calibration.json"), scheme: spec.scheme,
                                  config: config, excluded: Set(layout.excluded.keys))
            calibrationRecord = calibration
        }
        guard var object = try JSONSerialization.jsonObject(with: JSONEncoder().encode(quality)) as? [String: Any] else {
            throw CheckpointAssemblyError.wrongStep("the quality report did not encode as an object")
        }
        object[Self.linearOutputErrorKey] = linearOutputRelativeError
        try DurableFile.write(try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .prettyPrinted]) + Data("\n".utf8),
                              to: partialDirectory.appendingPathComponent(Self.qualityRecordName))
    }

    /// The member of `quality.json` that maps each Linear to its output error.
    public static let linearOutputErrorKey = "linear_output_relative_error"

    /// The file ``writeQualityRecord(_:linearOutputRelativeError:)`` writes.
    public static let qualityRecordName = "quality.json"

    public func commit() throws {
        guard finished else { throw CheckpointAssemblyError.wrongStep("commit called before the checkpoint was verified") }
        try output.commit()
    }

    /// Removes the partial directory after a failure.
    public func discard() { output.discard() }

    private func copyVerbatim(_ name: String) throws {
        try source.withBytes(name) { try writer.write(name, bytes: $0) }
        try source.releasePages(name)
    }
}
