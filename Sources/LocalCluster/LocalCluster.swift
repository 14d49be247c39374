/// # LocalCluster
///
/// The embedded mode: the cluster in one process, as `coordctl quantize` runs it and as the tests drive it.
import ActorSystem
import Calibration
import Checkpoint
import ClusterProtocol
import ClusterState
import Coordinator
import Distributed
import Evaluation
import Foundation
import Logging
import QuantizeJob
import Transport
import Worker

/// `coordctl quantize` is the cluster in one process: the same `Coordinator` and `Worker` actors as coordd and
/// workerd, with one worker holding every layer, calling each other directly and passing exported tensors over an
/// in-process data path (`LocalActivationTransport`). The job state lives in a temporary SQLite file. Its output is
/// byte-identical to a multi-worker run on the same inputs, and it is gated on quality the same way.
public enum LocalCluster {
    /// Runs the job to its end. Throws when it did not succeed (input checks, calibration, verification, or a
    /// failed quality gate, whose checkpoint stays as `OUTPUT.partial-<id>`).
    ///
    /// Each element of `interrupts` (Ctrl-C, for `coordctl quantize`) cancels the job, which removes its partial
    /// output; the call then throws ``QuantizeJobError/interrupted(jobID:partialKept:)``.
    ///
    /// `observe` sees the job's status about five times a second (`coordctl quantize` draws it as `status --watch`
    /// does); without it, phase changes are logged.
    /// `gpuMemoryLimit`: most GPU memory the worker may allocate (`--gpu-memory`).
    public static func quantize(options: QuantizeOptions, gpuMemoryLimit: Int? = nil, logger: Logger, interrupts: AsyncStream<Void>? = nil,
                                observe: (@Sendable (JobStatus) -> Void)? = nil) async throws -> QuantizeSummary {
        let start = Date()
        // Every input check, with its message, before any work (the cluster runs them too, but later and remotely).
        let job = QuantizeJob(options: options, logger: logger)
        let inputs = try job.checkInputs()
        let spec = try JobSpec(options: options)

        let stateDirectory = FileManager.default.temporaryDirectory
            .appendingPathComponent("coordctl-state-\(options.jobID)-\(UUID().uuidString.prefix(8))")
        defer { try? FileManager.default.removeItem(at: stateDirectory) }
        let store = try ClusterStateStore(stateDirectory: stateDirectory.path)
        defer { try? store.close() }

        var quiet = logger
        quiet.logLevel = .warning
        let system = try await ClusterActorSystem.start(identity: NodeIdentity(name: "coordctl", role: .coordinator),
                                                        listen: nil as NodeAddress?, token: nil,
                                                        configuration: TransportConfiguration(), logger: quiet)
        let coordinator = Coordinator(actorSystem: system, store: store, settings: CoordinatorSettings(), logger: logger)
        let scratch = spec.scratchDirectory
        let worker = Worker(actorSystem: system, name: "local", device: spec.calibration.device,
                            scratchDirectory: scratch, coordinator: NodeAddress(host: "127.0.0.1", port: 0),
                            gpuMemoryLimit: gpuMemoryLimit, logger: logger)
        let (workerEnd, coordinatorEnd) = LocalActivationTransport.makePair(bufferBytes: 64 << 20, names: ("worker", "coordinator"))
        await worker.whenLocal { $0.useLocalCoordinator(coordinator, dataPath: workerEnd) }
        // Unstructured: the receiver runs for the whole job, beside the polling below; it is cancelled on return.
        let receiving = Task {
            for try await tensor in coordinatorEnd.incomingTensors {
                let bytes = try await tensor.chunks.collectData()
                await coordinator.whenLocal { await $0.receiveExportedTensor(from: "local", id: tensor.id, bytes: bytes) }
            }
        }
        defer { receiving.cancel() }
        let info = WorkerInfo(name: "local", address: NodeAddress(host: "127.0.0.1", port: 0), device: spec.calibration.device,
                              memoryBytes: Int64(ProcessInfo.processInfo.physicalMemory),
                              freeDiskBytes: freeDiskBytes(at: scratch), softwareVersion: workerSoftwareVersion)
        try await coordinator.whenLocal { try await $0.addLocalWorker(worker, info: info) }

        let jobID = try await coordinator.submit(JobSubmission(spec: spec, workerCount: 1))
        let cancelling = Task {
            guard let interrupts else { return false }
            for await _ in interrupts {
                logger.warning("interrupted: cancelling job \(jobID) and removing its partial output")
                _ = try? await coordinator.cancel(jobID: jobID)
                return true
            }
            return false
        }
        defer { cancelling.cancel() }
        let status = try await follow(jobID: jobID, coordinator: coordinator, logger: logger, observe: observe)
        await workerEnd.close()
        await system.shutdown()
        if status.state == .cancelled {
            cancelling.cancel()
            if await cancelling.value {
                let partial = OutputDirectory.partial(final: options.outputDirectory, jobID: jobID)
                let kept = FileManager.default.fileExists(atPath: partial.path) ? partial.path : nil
                throw QuantizeJobError.interrupted(jobID: jobID, partialKept: kept)
            }
        }
        guard status.state == .succeeded else {
            throw QuantizeJobError.jobFailed(jobID: jobID, reason: status.failureReason ?? "it ended \(status.phase.rawValue)")
        }

        var summary = QuantizeSummary(outputDirectory: options.outputDirectory)
        summary.layers = inputs.config.numHiddenLayers
        summary.quantizedLinears = inputs.config.allLinears.count - (try spec.linearExclusion(config: inputs.config)).count
        summary.sourceBytes = try inputs.source.tensorNames.reduce(0) { $0 + (try inputs.source.info($1).byteCount) }
        summary.outputBytes = Int(status.outputBytes ?? 0)
        summary.shards = try FileManager.default.contentsOfDirectory(atPath: options.outputDirectory.path)
            .filter { $0.hasSuffix(".safetensors") }.count
        summary.activationAmax = try store.activationAmax(jobID: jobID).mapValues(activationAmaxByGroup)
        summary.seconds = Date().timeIntervalSince(start)
        if let quality = status.quality {
            summary.quality = QualityReport(samples: quality.samples, tokens: quality.tokens,
                                            predictedTokens: quality.tokens - quality.samples,
                                            originalPerplexity: quality.originalPerplexity,
                                            quantizedPerplexity: quality.quantizedPerplexity,
                                            scheme: spec.scheme, layout: spec.layout,
                                            excludedLinears: quality.excludedLinears ?? 0)
            summary.maxPerplexityRatio = quality.maxPerplexityRatio
        }
        return summary
    }

    /// Polls the job until it ends, showing each status to `observe`, or logging the phase when it changes.
    private static func follow(jobID: String, coordinator: Coordinator, logger: Logger,
                               observe: (@Sendable (JobStatus) -> Void)?) async throws -> JobStatus {
        var lastPhase: JobState?
        while true {
            let status = try await coordinator.status(jobID: jobID)
            if let observe {
                observe(status)
            } else if status.phase != lastPhase {
                logger.info("phase \(status.phase.rawValue)")
                lastPhase = status.phase
            }
            if status.phase.isTerminal { return status }
            try await Task.sleep(for: .milliseconds(200))
        }
    }
}
