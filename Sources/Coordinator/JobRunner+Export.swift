import ActorSystem
import Checkpoint
import ClusterMetrics
import ClusterProtocol
import ClusterState
import Distributed
import Foundation
import JobModel
import LlamaModel
import Logging
import NVFP4
import SafeTensors

/// Export and merge: layer by layer as each layer's statistics are final, the checkpoint written, verified, judged on
/// quality and renamed.
extension JobRunner {
    // MARK: Export and merge

    /// Exports every layer in order and merges the checkpoint. For W4A4 it runs beside ``calibrate``: each layer waits
    /// until every chunk has passed it, then freezes its scales and exports; the merge waits for the whole calibration.
    /// Two layers are asked for ahead of the one being written, so a worker quantizes layer L+1 while it still streams
    /// layer L, and the coordinator checks and writes L meanwhile.
    func exportAndWrite(workers: [PlannedWorker], calibrationPlan: CalibrationPlan, config: LlamaConfig) async throws {
        let spec = submission.spec
        let source = try SafeTensorsModel(directory: spec.modelPath)
        let assembler = try CheckpointAssembler(spec: spec, config: config, source: source, logger: logger)
        largestExportTensorBytes = assembler.plannedTensors(layer: 0).map(\.byteCount).max()
        let layerCount = config.numHiddenLayers
        var pending: [Task<(tensors: [ExportedTensor], seconds: Double), any Error>] = []
        let lookAhead = 2
        // Unstructured: the look-ahead window slides (start L+2 when L is written), which a task group's
        // all-or-nothing scope cannot express; every started task is awaited below, also on failure.
        func startExport(_ layer: Int) -> Task<(tensors: [ExportedTensor], seconds: Double), any Error> {
            Task {
                let started = ContinuousClock.now
                let tensors = try await self.exportLayer(layer, workers: workers, chunkCount: calibrationPlan.chunks.count)
                return (tensors, secondsSince(started))
            }
        }
        layersExported = 0
        linearQuality = [:]
        exportByteWindow.start()
        exportLayerWindow.start()
        do {
            try assembler.writeEmbeddings()
            pending = (0..<min(lookAhead, layerCount)).map { startExport($0) }
            for layer in 0..<layerCount {
                let (tensors, exportSeconds) = try await pending.removeFirst().value
                if layer + lookAhead < layerCount { pending.append(startExport(layer + lookAhead)) }
                try checkInterrupted()
                let writeStart = ContinuousClock.now
                try assembler.add(layer: layer, tensors: tensors)
                logger.info("wrote layer \(layer): exported in \(String(format: "%.2f", exportSeconds)) s, checked and written in \(String(format: "%.2f", secondsSince(writeStart))) s")
                let layerBytes = tensors.reduce(0) { $0 + $1.data.count }
                outputBytes = (outputBytes ?? 0) + Int64(layerBytes)
                layersExported += 1
                exportByteWindow.add(Double(layerBytes))
                exportLayerWindow.add(1)
                lastActivity = Date()
                MetricName.layersExported.counter().increment()
                if layer == 0 { await DebugFaultPoint.coordinatorExport.pauseIfRequested { [logger] in logger.warning("\($0)") } }
            }
            var record: CalibrationRecord?
            if spec.scheme.quantizesActivations {
                try await wait {
                    try checkInterrupted()
                    return calibrationDone
                }
                var calibration = spec.calibrationRecord(plan: calibrationPlan, deviceLabel: deviceLabel)
                calibration.activationAmax = try store.activationAmax(jobID: jobID).mapValues(activationAmaxByGroup)
                calibration.linearQuality = linearQuality
                record = calibration
            }
            try move(to: .merging)
            await DebugFaultPoint.coordinatorMerge.pauseIfRequested { [logger] in logger.warning("\($0)") }
            let report = try assembler.finish(calibration: record)
            outputBytes = Int64(report.bytes)
            if spec.evaluationSamples > 0 {
                try move(to: .evaluating)
                try await judgeQuality(spec: spec, workers: workers, assembler: assembler, calibrationPlan: calibrationPlan)
            }
            // The model must still be the one the job read (the layers were read as they were exported).
            try checkInputsUnchanged(calibrationPlan: calibrationPlan)
            try assembler.commit()
            await DebugFaultPoint.coordinatorAfterRename.pauseIfRequested { [logger] in logger.warning("\($0)") }
        } catch let failure as QualityGateFailure {
            // The rejected checkpoint stays as OUTPUT.partial-<id>, for inspection.
            throw failure
        } catch {
            // Look-ahead exports must not outlive this attempt (a later one reuses the tensor ids).
            if !pending.isEmpty {
                if siblingFailure == nil { siblingFailure = operatorDescription(of: error) }
                signal(.siblingFailed)
                for task in pending { _ = await task.result }
            }
            assembler.discard()
            throw error
        }
    }

    /// Has a worker measure the perplexity of the verified checkpoint (still in its partial directory) against the
    /// original, records it for `status`, and throws ``QualityGateFailure`` when the gate rejects it. coordd computes
    /// nothing itself: the first worker of the route that reads the same checkpoint (the same machine, or shared
    /// storage) evaluates it on its CPU.
    /// Each Linear's output error is measured on the leading calibration samples, the inputs calibration saw.
    func judgeQuality(spec: JobSpec, workers: [PlannedWorker], assembler: CheckpointAssembler,
                      calibrationPlan: CalibrationPlan) async throws {
        let directory = assembler.partialDirectory
        let outputErrorSamples = calibrationPlan.leadingSamples(tokenLimit: LinearQuality.outputErrorTokenLimit)
        let request = QualityRequest(spec: spec, checkpointPath: directory.path,
                                     fingerprint: try CheckpointFingerprint.of(directory: directory),
                                     outputErrorSamples: outputErrorSamples.isEmpty ? nil : outputErrorSamples)
        let timeout = Duration.seconds(settings.qualityCallTimeoutSeconds)
        var report: QualityReport?
        var refusals: [String] = []
        for worker in workers {
            let endpoint = worker.endpoint
            do {
                report = try await ClusterActorSystem.withCallTimeout(timeout) { try await endpoint.evaluateQuality(request) }
                break
            } catch {
                // A remote worker's refusal arrives encoded; an in-process worker's as itself.
                let refusal = (error as? WorkerError) ?? (try? (error as? RemoteCallError)?.decode(as: WorkerError.self))
                guard let refusal, case .checkpointNotVisible = refusal else {
                    throw JobFailure.qualityReportFailed(reason: operatorDescription(of: error))
                }
                logger.info("quality report: \(refusal)")
                refusals.append(refusal.description)
            }
        }
        guard let report else {
            throw JobFailure.noWorkerSeesCheckpoint(path: directory.path, refusals: refusals)
        }
        try checkInterrupted()
        let gate = spec.maxPerplexityRatio.map { QualityGate(maxPerplexityRatio: $0) }
        let failure = gate?.failure(of: report)
        let verdict: JobQuality.Gate = gate == nil ? .off : failure == nil ? .passed : .failed
        let quality = JobQuality(
            samples: report.samples, tokens: report.tokens, originalPerplexity: report.originalPerplexity,
            quantizedPerplexity: report.quantizedPerplexity, maxPerplexityRatio: spec.maxPerplexityRatio, gate: verdict,
            excludedLinears: report.excludedLinears, outputErrorInputs: report.linearOutputErrorInputs)
        try store.recordQuality(jobID: jobID, quality: quality)
        let names = Set(config?.allLinears.map(\.name) ?? [])
        for (name, error) in report.linearOutputRelativeError {
            guard names.contains(name), error.isFinite, error >= 0 else {
                throw JobFailure.implausibleOutputError(linear: name, value: error)
            }
            linearQuality[name]?.outputRelativeError = error
        }
        try assembler.writeQualityRecord(quality, linearOutputRelativeError: report.linearOutputRelativeError)
        logger.info("quality: perplexity \(formatPerplexity(report.originalPerplexity)) → \(formatPerplexity(report.quantizedPerplexity)) on \(report.samples) held-out samples, Linear output errors on \(report.linearOutputErrorInputs?.phrase ?? "no inputs"); gate \(verdict.rawValue)")
        if var failure {
            failure.keptAt = directory.path
            throw failure
        }
    }

    /// Waits until `layer`'s scales are final (W4A4), freezes them, has the owning worker export the layer and takes
    /// its tensors from the data path.
    func exportLayer(_ layer: Int, workers: [PlannedWorker], chunkCount: Int) async throws -> [ExportedTensor] {
        try checkInterrupted()
        let owner = workers.first { $0.assignment.range.contains(layer) }!
        var activationAmax: [FusedGroup: ActivationAmax]?
        if submission.spec.scheme.quantizesActivations {
            try await wait {
                try checkInterrupted()
                return calibrationDone || (recorded[layer]?.count ?? 0) >= chunkCount
            }
            activationAmax = try activationAmaxByGroup(try store.completeLayer(jobID: jobID, layer: layer, expectedChunkCount: chunkCount))
        }
        let request = ExportRequest(jobID: jobID, layer: layer, activationAmax: activationAmax)
        let endpoint = owner.endpoint
        // `--progress-timeout` plus the layer's f32 weights moved at a slow 100 MB/s: past it the owner counts as hung.
        let deadline = Duration.milliseconds(Int64((settings.progressTimeoutSeconds
            + Double(config.map(Self.residentBytesPerLayer) ?? 0) / 1e8) * 1000))
        let started = ContinuousClock.now
        let manifest: ExportManifest
        do {
            manifest = try await untilInterrupted {
                try await ClusterActorSystem.withCallTimeout(deadline) { try await endpoint.exportLayer(request) }
            }
        } catch {
            let waited = ContinuousClock.now - started
            guard waited >= deadline else { throw error }
            let doing = "exporting layer \(layer)"
            workerHung(owner.info.name, endpoint: endpoint, doing: doing, seconds: Int(waited.components.seconds))
            throw JobFailure.workerHung(worker: owner.info.name, doing: doing, seconds: Int(waited.components.seconds))
        }
        try recordWeightQuality(manifest, layer: layer, worker: owner.info.name)
        var tensors: [ExportedTensor] = []
        // In process the bytes cross no network; over mutual TLS every record is authenticated (AES-GCM), so a
        // changed byte closes the connection instead of arriving.
        try manifest.requireDigests(from: owner.info.name,
                                    arriveIntact: localWorkers[owner.info.name] != nil || system.configuration.tls != nil)
        for entry in manifest.entries {
            let bytes = try await mailbox.take(peer: owner.info.name, id: entry.bulkID)
            guard let dtype = SafeTensorsDType(rawValue: entry.dtype) else {
                throw JobFailure.unknownTensorDType(worker: owner.info.name, tensor: entry.name, dtype: entry.dtype)
            }
            tensors.append(ExportedTensor(name: entry.name, dtype: dtype, shape: entry.shape, data: bytes, sha256: entry.sha256))
        }
        MetricName.exportLayerSeconds.timer().record(seconds: secondsSince(started))
        MetricName.exportReceivedBytes.counter(owner.info.name).increment(by: tensors.reduce(0) { $0 + $1.data.count })
        return tensors
    }

    /// Keeps a layer's per-Linear weight figures (for `calibration.json` and `status`), after checking that they
    /// name this layer's Linears and hold finite, non-negative numbers.
    func recordWeightQuality(_ manifest: ExportManifest, layer: Int, worker: String) throws {
        let names = Set(config?.linears(layer: layer).map(\.name) ?? [])
        for entry in manifest.weightQuality {
            func refuse(_ reason: String) -> JobFailure {
                .implausibleWeightQuality(worker: worker, layer: layer, linear: entry.name, reason: reason)
            }
            guard entry.layer == layer, names.contains(entry.name) else { throw refuse("not a Linear of layer \(layer)") }
            guard entry.weightAmax.isFinite, entry.weightAmax >= 0 else { throw refuse("weight amax \(entry.weightAmax)") }
            guard entry.weightRelativeError.isFinite, entry.weightRelativeError >= 0 else {
                throw refuse("relative error \(entry.weightRelativeError)")
            }
            linearQuality[entry.name] = entry
        }
    }
}

extension ExportManifest {
    /// Throws ``JobFailure/missingTensorDigest(worker:tensor:)`` for the first tensor without its SHA-256, unless the
    /// bytes arrive intact by other means: the worker runs in coordd's own process, or the data path is mutual TLS.
    func requireDigests(from worker: String, arriveIntact: Bool) throws {
        guard !arriveIntact, let unhashed = entries.first(where: { $0.sha256 == nil }) else { return }
        throw JobFailure.missingTensorDigest(worker: worker, tensor: unhashed.name)
    }
}
