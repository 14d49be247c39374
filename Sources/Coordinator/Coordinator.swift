/// # Coordinator
///
/// The `Coordinator` distributed actor that coordd hosts. It keeps jobs and workers in ``ClusterStateStore``
/// (SQLite), plans layer ranges, routes every calibration chunk through the workers in order (hidden states flow
/// worker to worker; the coordinator stays off that path), merges the amax statistics they report, orders each
/// layer's export and writes the final checkpoint from the streamed tensors.
///
/// One ``JobRunner`` drives each job; it survives worker loss (re-plan and resume) and a coordd restart (jobs
/// resume from the state on disk once their workers register again).
import ActorSystem
import ClusterMetrics
import ClusterProtocol
import ClusterState
import Distributed
import Foundation
import LlamaModel
import Logging
import Transport

public distributed actor Coordinator: CoordinatorEndpoint {
    public typealias ActorSystem = ClusterActorSystem

    let store: ClusterStateStore
    let logger: Logger
    let settings: CoordinatorSettings
    let registry = WorkerRegistry()
    let mailbox = BulkMailbox()
    private var runners: [String: JobRunner] = [:]
    /// Jobs waiting for the workers, in submission order. coordd runs one job at a time: a job uses every worker
    /// it plans onto, and two jobs on one worker would evict each other's layers.
    private var queue: [(jobID: String, submission: JobSubmission, calibrationPlan: CalibrationPlan?)] = []
    /// The job whose runner is running now.
    private var runningJob: String?
    /// Set by `drain()`: a runner that stops for shutdown does not start the next job.
    private var draining = false
    /// The output size of jobs that ended since coordd started, for `status` once their runner is gone.
    /// The last figures of jobs that ended since coordd started (rates stopped, ETA gone, totals kept).
    private var endedFigures: [String: JobRunner.LiveFigures] = [:]
    /// In-process mode: worker name → the worker actor itself (no lookup by address).
    private var localWorkers: [String: any WorkerEndpoint] = [:]
    /// Worker name → the connection it registered on: only that connection's loss marks the worker lost, and
    /// another connection under the same name is refused while it lives.
    private var registeredConnections: [String: ConnectionID] = [:]

    public init(actorSystem: ClusterActorSystem, store: ClusterStateStore, settings: CoordinatorSettings,
                logger: Logger) {
        self.actorSystem = actorSystem
        self.store = store
        self.settings = settings
        self.logger = logger
        // Jobs kept from an earlier run count from the start.
        CoordinatorMetrics.registerAll()
        CoordinatorMetrics.recordJobStates(store, logger: logger)
    }

    // MARK: Worker-facing

    public distributed func register(_ info: WorkerInfo) async throws -> RegistrationReply {
        if let caller = ClusterActorSystem.callingPeer {
            try checkCaller(claims: info.name)
            // Cleared when that connection goes (peerDisconnected): a restarted worker is refused until then.
            if let holder = registeredConnections[info.name], holder != caller.connection {
                logger.warning("refused a second live registration", metadata: ["worker": "\(info.name)"])
                throw CoordinatorError.workerNameTaken(worker: info.name)
            }
            registeredConnections[info.name] = caller.connection
        }
        try store.registerWorker(name: info.name, address: info.address.description, device: info.device,
                                 memoryBytes: info.memoryBytes, freeDiskBytes: info.freeDiskBytes,
                                 softwareVersion: info.softwareVersion)
        await registry.register(info)
        await mailbox.peerReturned(info.name)
        logger.info("worker registered", metadata: ["worker": "\(info.name)", "address": "\(info.address)",
                                                    "device": "\(info.device)", "version": "\(info.softwareVersion)"])
        // A worker that was away when a job ended still keeps that job's hidden states: drop them now.
        if localWorkers[info.name] == nil {
            Task { _ = await self.collectGarbage(on: info) }
        }
        return RegistrationReply(coordinatorVersion: NVFP4ClusterVersion.current,
                                 heartbeatSeconds: settings.heartbeatSeconds)
    }

    public distributed func heartbeat(worker: String, freeDiskBytes: Int64) async throws {
        try checkCaller(claims: worker)
        // A coordd that restarted knows the worker from SQLite but has no live endpoint for it yet.
        guard await registry.info(worker) != nil else {
            throw CoordinatorError.workerNotRegistered(worker: worker)
        }
        do {
            try store.recordHeartbeat(workerName: worker, freeDiskBytes: freeDiskBytes)
        } catch ClusterStateError.workerIsDead {
            throw CoordinatorError.workerMarkedDead(worker: worker)
        }
    }

    public distributed func reportLinkTransport(worker: String, linkTransport: String) async throws {
        try checkCaller(claims: worker)
        try store.recordLinkTransport(workerName: worker, linkTransport: linkTransport)
        logger.info("worker link transport", metadata: ["worker": "\(worker)", "link": "\(linkTransport)"])
    }

    public distributed func reportChunk(_ report: ChunkReport) async throws {
        try checkCaller(claims: report.worker)
        guard let runner = runners[report.jobID] else {
            throw CoordinatorError.jobNotRunning(jobID: report.jobID)
        }
        try await runner.record(report)
    }

    public distributed func reportFailure(jobID: String, attempt: Int, worker: String, message: String) async throws {
        try checkCaller(claims: worker)
        logger.error("worker reports a failure", metadata: ["job": "\(jobID)", "worker": "\(worker)",
                                                           "reason": "\(message)"])
        await runners[jobID]?.workerFailed(worker: worker, attempt: attempt, message: message)
    }

    public distributed func reportLinkDown(jobID: String, attempt: Int, worker: String, successor: String,
                                           message: String) async throws {
        try checkCaller(claims: worker)
        logger.error("a link between workers is down", metadata: ["job": "\(jobID)", "worker": "\(worker)",
                                                                  "successor": "\(successor)", "reason": "\(message)"])
        await runners[jobID]?.linkDown(from: worker, to: successor, attempt: attempt, message: message)
    }

    public distributed func reportEvaluationProgress(jobID: String, worker: String, completedLayers: Int,
                                                     totalLayers: Int) async throws {
        try checkCaller(claims: worker)
        await runners[jobID]?.evaluationProgressed(worker: worker, completedLayers: completedLayers, totalLayers: totalLayers)
    }

    /// A remote caller speaks for the worker it proved to be, never for another.
    private func checkCaller(claims worker: String) throws {
        guard let caller = ClusterActorSystem.callingPeer else { return }
        guard caller.identity.role == .worker, caller.identity.name == worker else {
            logger.warning("refused a call made in another node's name",
                           metadata: ["claimed": "\(worker)", "caller": "\(caller.identity)"])
            throw CoordinatorError.identityMismatch(claimed: worker, proven: "\(caller.identity)")
        }
    }

    // MARK: Client-facing

    public distributed func submit(_ submission: JobSubmission) async throws -> String {
        var submission = submission
        let spec = submission.spec
        let jobID = spec.jobID
        try JobRunner.checkSubmission(submission, outputRoots: settings.outputRoots)
        // A queued job's output does not exist yet, so the check above cannot see that two jobs would write it.
        if let other = try store.listJobs().first(where: {
            !$0.state.isTerminal && JobRunner.realPath($0.outputPath) == JobRunner.realPath(spec.outputPath)
        }) {
            throw CoordinatorError.invalidSubmission(
                field: "--output", reason: "\(spec.outputPath) is the output of job \(other.id), which is \(other.state.rawValue); "
                    + "choose another directory, or cancel that job")
        }
        // The calibration set is read now: a bad file is refused at submit, and the fingerprint records it.
        let (plan, fingerprint) = try JobRunner.fingerprintAtSubmit(spec, logger: logger)
        submission.fingerprint = fingerprint
        let record: JobRecord
        do {
            record = try store.createJob(modelPath: spec.modelPath, outputPath: spec.outputPath,
                                         options: submission, configHash: spec.configSHA256, id: jobID)
        } catch ClusterStateError.jobAlreadyExists {
            throw CoordinatorError.jobAlreadyExists(jobID: jobID)
        }
        logger.info("job submitted", metadata: ["job": "\(record.id)", "model": "\(spec.modelPath)",
                                                "output": "\(spec.outputPath)"])
        MetricName.jobsSubmitted.counter().increment()
        CoordinatorMetrics.recordJobStates(store, logger: logger)
        start(jobID: record.id, submission: submission, calibrationPlan: plan)
        return record.id
    }

    public distributed func status(jobID: String) async throws -> JobStatus {
        guard let job = try store.job(id: jobID) else {
            throw CoordinatorError.jobNotFound(jobID: jobID)
        }
        let live: JobRunner.LiveFigures?
        if let runner = runners[jobID] { live = await runner.liveFigures() } else { live = endedFigures[jobID] }
        var status = try store.status(jobID: jobID, tokensPerSecond: live?.tokensPerSecond,
                                      etaSeconds: job.state.isTerminal ? nil : live?.etaSeconds, outputBytes: live?.outputBytes)
        if let live {
            for index in status.workers.indices {
                guard let figures = live.workers[status.workers[index].name] else { continue }
                if let device = figures.device { status.workers[index].device = device }
                status.workers[index].currentLayer = figures.currentLayer
                status.workers[index].layerTokensPerSecond = figures.layerTokensPerSecond
            }
            status.progress = live.progress
            status.warnings = live.warnings
            status.linears = live.linears
            if let activity = live.lastActivity, activity > job.updatedAt {
                status.updatedAt = JobStatus.timestamp(activity)
            }
        }
        status.elapsedSeconds = max(0, (job.state.isTerminal ? job.updatedAt : Date()).timeIntervalSince(job.createdAt))
        status.fingerprint = try job.decodeOptions(as: JobSubmission.self).fingerprint?.digest
        if let index = queue.firstIndex(where: { $0.jobID == jobID }) {
            status.queuePosition = index + 1
            status.waitingFor = runningJob
        }
        return status
    }

    public distributed func list() async throws -> [JobStatus] {
        var result: [JobStatus] = []
        for job in try store.listJobs() { result.append(try await status(jobID: job.id)) }
        return result
    }

    public distributed func workers() async throws -> [WorkerRecord] {
        try store.listWorkers()
    }

    public distributed func cancel(jobID: String) async throws -> JobStatus {
        guard let job = try store.job(id: jobID) else {
            throw CoordinatorError.jobNotFound(jobID: jobID)
        }
        if job.state.isTerminal {
            throw CoordinatorError.jobAlreadyEnded(jobID: jobID, state: job.state.rawValue)
        }
        if let runner = runners[jobID] {
            await runner.cancel()
        } else {
            queue.removeAll { $0.jobID == jobID }
            try store.updateJobState(jobID: jobID, to: .cancelled, reason: "cancelled by coordctl")
            CoordinatorMetrics.recordJobStates(store, logger: logger)
        }
        return try await status(jobID: jobID)
    }

    public distributed func collectGarbage() async throws -> [GarbageReport] {
        var reports: [GarbageReport] = []
        for info in await registry.liveWorkers() {
            reports.append(await collectGarbage(on: info))
        }
        return reports
    }

    /// Asks one worker to drop the hidden states of jobs that are neither queued nor running.
    private func collectGarbage(on info: WorkerInfo) async -> GarbageReport {
        do {
            let unfinished = try store.listJobs().filter { !$0.state.isTerminal }.map(\.id)
            let endpoint: any WorkerEndpoint = try localWorkers[info.name]
                ?? $WorkerEndpoint.resolve(id: actorSystem.wellKnownID(WellKnownActor.worker, at: info.address, node: info.name),
                                           using: actorSystem)
            let removed = try await endpoint.collectGarbage(keep: unfinished)
            if !removed.isEmpty {
                logger.info("removed kept hidden states of ended jobs", metadata: ["worker": "\(info.name)",
                                                                                    "jobs": "\(removed.joined(separator: ","))"])
            }
            return GarbageReport(worker: info.name, removedJobs: removed)
        } catch {
            logger.warning("could not collect kept hidden states", metadata: ["worker": "\(info.name)", "reason": "\(error)"])
            return GarbageReport(worker: info.name, removedJobs: [], error: operatorDescription(of: error))
        }
    }

    // MARK: Local API (coordd)

    /// In-process mode (`coordctl quantize`): jobs reach this worker directly instead of through its address.
    public func addLocalWorker(_ worker: any WorkerEndpoint, info: WorkerInfo) async throws {
        localWorkers[info.name] = worker
        _ = try await register(info)
    }

    /// Resumes every job that was queued or running when coordd stopped: the ones that had started first, then the
    /// queued ones in submission order.
    public func resumeUnfinishedJobs() async throws {
        let unfinished = try store.listJobs().filter { !$0.state.isTerminal }
        for job in unfinished.filter({ $0.state != .queued }) + unfinished.filter({ $0.state == .queued }) {
            let submission = try job.decodeOptions(as: JobSubmission.self)
            logger.info("resuming job after a restart", metadata: ["job": "\(job.id)", "phase": "\(job.state.rawValue)"])
            start(jobID: job.id, submission: submission)
        }
    }

    /// A peer's connection went away. A worker's in-flight work is lost; its jobs re-plan or wait for it.
    /// `connection`, when given, must be the one the worker registered on: another connection under its name (a
    /// refused duplicate, a client claiming it) going away says nothing about the worker.
    public func peerDisconnected(name: String, connection: ConnectionID? = nil, reason: String) async {
        if let connection, let registered = registeredConnections[name], registered != connection { return }
        // Cleared first: even when the registry already let the worker go, its name must be free to register again.
        registeredConnections[name] = nil
        guard await registry.lose(name) else { return }
        logger.warning("worker connection lost", metadata: ["worker": "\(name)", "reason": "\(reason)"])
        _ = try? store.markWorkerDead(workerName: name, reason: reason)
        await mailbox.failAll(peer: name, error: JobFailure.connectionLost(worker: name, reason: reason))
        for runner in runners.values { await runner.workerLost(name: name, reason: reason) }
    }

    /// Marks lost every registered worker that sent no heartbeat for `staleHeartbeatSeconds` (its connection may still
    /// be up: a wedged process answers pings from its event loop). Its jobs re-plan or wait for it, as for a drop.
    public func loseWorkersWithStaleHeartbeats(now: Date = Date()) async {
        let silent = (try? store.workersSilent(since: now.addingTimeInterval(-settings.staleHeartbeatSeconds))) ?? []
        for worker in silent where await registry.info(worker.name) != nil && localWorkers[worker.name] == nil {
            let seconds = Int(now.timeIntervalSince(worker.lastHeartbeat))
            await peerDisconnected(name: worker.name, reason: "no heartbeat for \(seconds) s")
        }
    }

    /// The most bytes an exported tensor from `peer` may hold: the largest tensor of the layer being exported, when
    /// `peer` is a worker of a running job and `id` an export id; nil otherwise (the data path refuses it).
    public func expectedExportBytes(from peer: String, id: UInt64) async -> Int? {
        guard BulkTensorID.isExport(id) else { return nil }
        for runner in runners.values {
            if let limit = await runner.exportTensorLimit(from: peer) { return limit }
        }
        return nil
    }

    /// Exported tensors from a worker's data path.
    public func receiveExportedTensor(from peer: String, id: UInt64, bytes: Data) async {
        await mailbox.deliver(peer: peer, id: id, bytes: bytes)
    }

    /// Stops every runner at its next step (graceful shutdown); their jobs stay running on disk and resume later.
    public func drain() async {
        draining = true
        for runner in runners.values { await runner.stopForShutdown() }
        for runner in runners.values { await runner.waitUntilStopped() }
    }

    /// Queues the job; it starts when every job before it has ended.
    private func start(jobID: String, submission: JobSubmission, calibrationPlan: CalibrationPlan? = nil) {
        queue.append((jobID, submission, calibrationPlan))
        if let runningJob {
            logger.info("job queued behind \(runningJob), position \(queue.count)", metadata: ["job": "\(jobID)"])
        }
        startNextJob()
    }

    private func startNextJob() {
        guard runningJob == nil, !draining, !queue.isEmpty else { return }
        let (jobID, submission, calibrationPlan) = queue.removeFirst()
        let runner = JobRunner(jobID: jobID, submission: submission, store: store, registry: registry,
                               mailbox: mailbox, system: actorSystem, localWorkers: localWorkers, settings: settings,
                               calibrationPlan: calibrationPlan, logger: logger.withMetadata("job", jobID))
        runners[jobID] = runner
        runningJob = jobID
        // Unstructured: a job outlives the submit call that starts it; `drain()` stops and awaits every runner.
        Task {
            await runner.run()
            await self.jobEnded(jobID, figures: await runner.liveFigures())
        }
    }

    private func jobEnded(_ jobID: String, figures: JobRunner.LiveFigures) {
        guard runningJob == jobID else { return }
        runningJob = nil
        endedFigures[jobID] = figures
        // A runner stopped for shutdown stays, so that `drain()` can wait for it; its job resumes at the next start.
        if !draining { runners[jobID] = nil }
        startNextJob()
    }
}

public struct CoordinatorSettings: Sendable {
    public var heartbeatSeconds = 1.0
    /// How long a job waits for a lost worker (or for the planned workers after a restart) before re-planning.
    public var workerGraceSeconds = 30.0
    /// Deadline of one compute call (load, calibrate a chunk) (`--compute-timeout`).
    public var computeCallTimeoutSeconds = 3600.0
    /// How long a worker that owes a chunk report, or an export, may go without progress before it counts as hung
    /// (`--progress-timeout`); the deadline grows with the work between two reports (see `JobRunner.progressDeadline`).
    public var progressTimeoutSeconds = 300.0
    /// A worker without a heartbeat for this long is lost, even if its connection stays up.
    public var staleHeartbeatSeconds = 15.0
    /// Directories inside which job outputs may be written (`--output-root`); nil: anywhere (the embedded mode, which
    /// writes for the user running it). coordd refuses every job while this is empty.
    public var outputRoots: [String]?
    /// Deadline of the quality report, which a worker computes on its CPU over two whole models.
    public var qualityCallTimeoutSeconds = 86_400.0

    public init() {}
}

extension Logger {
    func withMetadata(_ key: String, _ value: String) -> Logger {
        var copy = self
        copy[metadataKey: key] = "\(value)"
        return copy
    }
}
