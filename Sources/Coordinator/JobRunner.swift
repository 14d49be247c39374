import ActorSystem
import ClusterProtocol
import ClusterState
import Calibration
import Checkpoint
import Distributed
import Foundation
import LlamaModel
import Logging
import NVFP4
import SafeTensors

/// Drives one job from queued to a terminal state: plan, load, route calibration chunks, merge statistics, export,
/// write. Survives the loss of a worker (waits for it, or re-plans over the survivors) and a coordd restart (every
/// decision is made again from the state in SQLite, whose chunk statistics are idempotent).
///
/// This file holds the state, the events and the attempt loop; the seams are in their own files: planning and
/// recovery (`JobRunner+Planning`), chunk routing and reports (`JobRunner+Calibration`), export, merge and the
/// quality gate (`JobRunner+Export`). `Tests/CoordinatorTests` drives it against fake workers.
actor JobRunner {
    let jobID: String
    let submission: JobSubmission
    let store: ClusterStateStore
    let registry: WorkerRegistry
    let mailbox: BulkMailbox
    let system: ClusterActorSystem
    let localWorkers: [String: any WorkerEndpoint]
    let settings: CoordinatorSettings
    let logger: Logger

    var cancelRequested = false
    var shutdownRequested = false
    var stopped = false
    /// What wakes the runner's waits (calibration, export and `cancel` waiting for the stop); see ``wait(until:)``.
    var events = EventBroadcast<JobEvent>()
    /// Workers of the current plan lost during the current attempt, with the reason.
    var lost: [String: String] = [:]
    var workerFailure: (worker: String, message: String)?
    /// Workers this job plans around from now on, with why: their predecessor could not reach them within its link
    /// timeout, or they made no progress within their deadline (hung).
    var excluded: [String: String] = [:]
    /// When each worker of the current attempt last made progress (a chunk report), for the watchdog.
    var lastProgress: [String: ContinuousClock.Instant] = [:]
    /// Grows with every attempt; workers tag reports with the attempt that loaded them.
    var attemptNumber = 0
    /// Reports count only once this attempt's workers are loaded.
    var acceptingReports = false

    // Known once an attempt has planned.
    var config: LlamaConfig?
    var calibrationPlan: CalibrationPlan?
    /// What the loaded workers compute on, for `calibration.json`.
    var deviceLabel = ""
    var plan: [LayerAssignment] = []
    /// layer → chunks recorded.
    var recorded: [Int: Set<Int>] = [:]
    /// Every layer's scales are final (the export of the last layers may go ahead).
    var calibrationDone = false
    /// Calibration and export run side by side; the first of them to fail stops the other through this.
    var siblingFailure: String?

    /// The largest tensor of one exported layer (every decoder layer has the same tensors), once the export began.
    var largestExportTensorBytes: Int?

    /// How large an exported tensor from `peer` may be: set while this job exports and `peer` holds part of its plan.
    func exportTensorLimit(from peer: String) -> Int? {
        guard let largestExportTensorBytes, plan.contains(where: { $0.worker == peer }) else { return nil }
        return largestExportTensorBytes
    }

    // Live figures (`status`): running totals and rates over the last minute.
    var calibrationStart: ContinuousClock.Instant?
    var calibrationEnd: ContinuousClock.Instant?
    var layerTokensThisRun = 0
    /// Layer-tokens (one token through one layer) recorded, job-wide and per worker.
    var calibrationWindow = RateWindow()
    var workerWindows: [String: RateWindow] = [:]
    var layersExported = 0
    var exportByteWindow = RateWindow()
    var exportLayerWindow = RateWindow()
    var evaluationLayers: (done: Int, total: Int)?
    var evaluationWindow = RateWindow()
    var outputBytes: Int64?
    /// Each exported Linear's weight amax and quantization error, by module name.
    var linearQuality: [String: LinearQuality] = [:]
    /// What each worker computes on, as it reported when it loaded.
    var loadedDevices: [String: String] = [:]
    /// What the job waits for, in words, while it waits (lost workers, workers to register).
    var waitingFor: String?
    /// The last time anything of the job moved (a chunk, a layer written, a phase), for `updated_at`.
    var lastActivity = Date()

    init(jobID: String, submission: JobSubmission, store: ClusterStateStore, registry: WorkerRegistry,
         mailbox: BulkMailbox, system: ClusterActorSystem, localWorkers: [String: any WorkerEndpoint] = [:],
         settings: CoordinatorSettings, calibrationPlan: CalibrationPlan? = nil, logger: Logger) {
        self.calibrationPlan = calibrationPlan
        self.jobID = jobID
        self.submission = submission
        self.store = store
        self.registry = registry
        self.mailbox = mailbox
        self.system = system
        self.localWorkers = localWorkers
        self.settings = settings
        self.logger = logger
    }

    /// The calibration plan (read and tokenized now, so that a bad calibration file is refused at submit) and the
    /// fingerprint of the job's inputs.
    static func fingerprintAtSubmit(_ spec: JobSpec, logger: Logger) throws -> (CalibrationPlan?, JobFingerprint) {
        var plan: CalibrationPlan?
        if spec.scheme.quantizesActivations {
            do {
                let config = try ModelDirectory(spec.modelDirectory).loadConfig()
                plan = try spec.makeCalibrationPlan(config: config, logger: logger)
            } catch {
                throw CoordinatorError.invalidSubmission(field: "--calib", reason: "\(error)")
            }
        }
        do {
            return (plan, try JobFingerprint.compute(spec: spec, plan: plan))
        } catch {
            throw CoordinatorError.invalidSubmission(field: "--model", reason: "coordd cannot fingerprint \(spec.modelPath): \(error)")
        }
    }

    /// Rejects a submission that cannot run before it is stored.
    static func checkSubmission(_ submission: JobSubmission, outputRoots: [String]? = nil) throws {
        if let outputRoots {
            try checkOutput(submission.spec.outputPath, within: outputRoots)
        }
        if let count = submission.workerCount, count < 1 {
            throw CoordinatorError.invalidSubmission(field: "--workers", reason: "must be at least 1, got \(count)")
        }
        if let split = submission.split, split.isEmpty || split.contains(where: { $0 < 1 }) {
            throw CoordinatorError.invalidSubmission(field: "--split", reason: "needs positive layer counts, got \(split)")
        }
        let spec = submission.spec
        if let problem = spec.gptq?.problem(scheme: spec.scheme) {
            throw CoordinatorError.invalidSubmission(field: "--algorithm", reason: problem)
        }
        let model = ModelDirectory(spec.modelDirectory)
        let config: LlamaConfig
        let source: SafeTensorsModel
        do {
            config = try model.loadConfig()
            source = try SafeTensorsModel(directory: spec.modelPath)
        } catch {
            throw CoordinatorError.invalidSubmission(field: "--model", reason: "coordd cannot use \(spec.modelPath): \(error)")
        }
        // What `quantize` checks before any work, at submit rather than after calibration.
        do {
            _ = try spec.linearExclusion(config: config)
        } catch {
            throw CoordinatorError.invalidSubmission(field: "--exclude", reason: error.description)
        }
        do {
            try CheckpointAssembler.checkOutput(spec: spec, config: config, source: source)
        } catch {
            throw CoordinatorError.invalidSubmission(field: "--output", reason: "\(error)")
        }
    }

    /// The server decides where output may go: strictly inside one of `roots`, judged on real paths (symbolic links
    /// of the existing part resolved), so neither `..` nor a link leads out.
    static func checkOutput(_ output: String, within roots: [String]) throws {
        guard !roots.isEmpty else {
            throw CoordinatorError.invalidSubmission(
                field: "--output", reason: "coordd was started without --output-root, so it writes no job's output; "
                    + "restart it with --output-root DIR (repeatable)")
        }
        let resolved = realPath(output)
        let inside = roots.map(realPath).contains { root in resolved.hasPrefix(root == "/" ? "/" : root + "/") && resolved != root }
        guard inside else {
            throw CoordinatorError.invalidSubmission(
                field: "--output", reason: "\(output) is outside coordd's output roots (\(roots.joined(separator: ", "))); "
                    + "choose a directory inside one of them")
        }
    }

    /// `path` made absolute and normalized, with the symbolic links of its longest existing prefix resolved.
    static func realPath(_ path: String) -> String {
        var url = URL(fileURLWithPath: path).standardizedFileURL
        var missing: [String] = []
        while !FileManager.default.fileExists(atPath: url.path), url.path != "/" {
            missing.insert(url.lastPathComponent, at: 0)
            url = url.deletingLastPathComponent()
        }
        var resolved = url.resolvingSymlinksInPath()
        for component in missing { resolved.appendPathComponent(component) }
        return resolved.standardizedFileURL.path
    }

    /// What changed in the job, for whoever waits on it.
    enum JobEvent: Sendable, Equatable {
        case chunkRecorded(chunk: Int, worker: String)
        case calibrationFinished
        case workerLost(String)
        case workerFailed(String)
        /// Calibration or export failed; the other stops.
        case siblingFailed
        case cancelRequested
        case shutdownRequested
        case stopped
    }

    struct LiveFigures: Sendable {
        struct Worker: Sendable {
            var device: String?
            var currentLayer: Int?
            var layerTokensPerSecond: Double?
        }

        var tokensPerSecond: Double?
        var etaSeconds: Double?
        var outputBytes: Int64?
        var progress: JobProgress?
        var workers: [String: Worker] = [:]
        var lastActivity: Date?
        var warnings: [String] = []
        var linears: [LinearQuality] = []
    }

    func liveFigures(now: ContinuousClock.Instant = .now) -> LiveFigures {
        var figures = LiveFigures(outputBytes: outputBytes, lastActivity: lastActivity)
        figures.linears = linearQuality.values.sorted { ($0.layer, $0.name) < ($1.layer, $1.name) }
        if let calibrationPlan, let shortfall = submission.spec.calibration.sampleShortfall(used: calibrationPlan.sampleCount) {
            figures.warnings.append(shortfall)
        }
        for (name, device) in loadedDevices { figures.workers[name, default: .init()].device = device }
        guard let config else { return figures }
        let layers = config.numHiddenLayers
        var progress = JobProgress(layersTotal: layers, layersExported: layersExported, exportedBytes: outputBytes ?? 0,
                                   waiting: waitingFor)
        let calibrating = calibrationStart != nil && calibrationEnd == nil && !stopped
        if let calibrationPlan, !calibrationPlan.chunks.isEmpty {
            let chunkCount = calibrationPlan.chunks.count
            progress.layersCalibrated = (0..<layers).filter { (recorded[$0]?.count ?? 0) == chunkCount }.count
            progress.calibrationLayerTokensTotal = calibrationPlan.tokenCount * layers
            progress.calibrationLayerTokensDone = recorded.reduce(0) { total, entry in
                total + entry.value.reduce(0) { $0 + calibrationPlan.chunks[$1].tokenCount }
            }
            if calibrating {
                progress.calibrationLayerTokensPerSecond = calibrationWindow.perSecond(now: now)
                for assignment in plan {
                    var worker = figures.workers[assignment.worker, default: .init()]
                    worker.currentLayer = assignment.range.first { (recorded[$0]?.count ?? 0) < chunkCount }
                    worker.layerTokensPerSecond = workerWindows[assignment.worker]?.perSecond(now: now)
                    figures.workers[assignment.worker] = worker
                }
            }
        }
        // Calibration tokens through the whole model per second: over the last minute while it runs, then the
        // average of the run, frozen.
        if calibrating {
            figures.tokensPerSecond = progress.calibrationLayerTokensPerSecond.map { $0 / Double(layers) }
        } else if let start = calibrationStart, let end = calibrationEnd, end > start, layerTokensThisRun > 0 {
            let seconds = Double((end - start).components.seconds) + Double((end - start).components.attoseconds) * 1e-18
            figures.tokensPerSecond = Double(layerTokensThisRun) / seconds / Double(layers)
        }
        let exporting = layersExported < layers && !stopped
        if exporting { progress.exportBytesPerSecond = exportByteWindow.perSecond(now: now) }
        if let evaluationLayers {
            progress.evaluationLayersDone = evaluationLayers.done
            progress.evaluationLayersTotal = evaluationLayers.total
        }
        // What is left of the phase in progress, at its rate over the last minute.
        if !stopped {
            if calibrating, let rate = progress.calibrationLayerTokensPerSecond, rate > 0 {
                let remaining = max(0, progress.calibrationLayerTokensTotal - progress.calibrationLayerTokensDone)
                figures.etaSeconds = Double(remaining) / rate
            } else if calibrationStart == nil || calibrationEnd != nil, exporting, let rate = exportLayerWindow.perSecond(now: now), rate > 0 {
                figures.etaSeconds = Double(layers - layersExported) / rate
            } else if let evaluationLayers, let rate = evaluationWindow.perSecond(now: now), rate > 0 {
                figures.etaSeconds = Double(evaluationLayers.total - evaluationLayers.done) / rate
            }
        }
        figures.progress = progress
        return figures
    }

    /// The worker measuring the quality report finished another layer of both models.
    func evaluationProgressed(worker: String, completedLayers: Int, totalLayers: Int) {
        guard completedLayers >= 0, totalLayers > 0, completedLayers <= totalLayers else { return }
        let previous = evaluationLayers?.done ?? 0
        if evaluationLayers == nil { evaluationWindow.start() }
        evaluationLayers = (completedLayers, totalLayers)
        evaluationWindow.add(Double(max(0, completedLayers - previous)))
        lastActivity = Date()
    }

    // MARK: Events

    func workerLost(name: String, reason: String) {
        guard plan.contains(where: { $0.worker == name }) else { return }
        lost[name] = reason
        signal(.workerLost(name))
    }

    func linkDown(from worker: String, to successor: String, attempt: Int, message: String) {
        guard attempt == attemptNumber, acceptingReports, plan.contains(where: { $0.worker == successor }) else { return }
        excluded[successor] = "cannot be reached from \(worker), the previous range"
        workerFailure = (worker, message)
        signal(.workerFailed(worker))
    }

    func workerFailed(worker: String, attempt: Int, message: String) {
        guard attempt == attemptNumber, acceptingReports else { return }
        workerFailure = (worker, message)
        signal(.workerFailed(worker))
    }

    func cancel() async {
        cancelRequested = true
        signal(.cancelRequested)
        await tellWorkersToStop(discardState: true)
        await waitUntilStopped()
    }

    func stopForShutdown() {
        shutdownRequested = true
        signal(.shutdownRequested)
    }

    func waitUntilStopped() async {
        try? await wait { stopped }
    }

    func signal(_ event: JobEvent) {
        events.send(event)
    }

    /// Returns once `condition` holds, re-checking it after every job event; rethrows what `condition` throws, and
    /// throws `CancellationError` when the waiting task is cancelled or the runner has stopped.
    func wait(until condition: () throws -> Bool) async throws {
        if try condition() { return }
        for await _ in events.subscribe() {
            if try condition() { return }
        }
        throw CancellationError()
    }

    // MARK: The loop

    func run() async {
        defer {
            stopped = true
            signal(.stopped)
            events.finish()
        }
        while true {
            do {
                try await attempt()
                return
            } catch {
                if cancelRequested {
                    finish(as: .cancelled, reason: "cancelled by coordctl")
                    return
                }
                if shutdownRequested {
                    logger.info("stopped for shutdown; the job resumes when coordd starts again")
                    return
                }
                acceptingReports = false
                // A worker's connection often drops a moment after its calls start failing.
                try? await Task.sleep(for: .milliseconds(500))
                // Lost during the attempt (it may already be back), or not registered now.
                let dead = Array(Set(lost.keys).union(await deadPlannedWorkers())).sorted()
                if dead.isEmpty {
                    logger.error("job failed: \(operatorDescription(of: error))")
                    // A failed job never resumes: its kept hidden states go too.
                    await tellWorkersToStop(discardState: true)
                    finish(as: .failed, reason: operatorDescription(of: error))
                    return
                }
                let lostNames = dead.joined(separator: ", ")
                if Set(dead).isSubset(of: excluded.keys) {
                    let why = dead.map { "\($0) \(excluded[$0]!)" }.joined(separator: "; ")
                    logger.warning("\(why): re-planning without \(lostNames) (\(operatorDescription(of: error)))")
                } else {
                    logger.warning("lost worker(s) \(lostNames): \(operatorDescription(of: error)); waiting up to \(Int(settings.workerGraceSeconds)) s for them, then re-planning")
                }
                let cause = operatorDescription(of: error)
                do {
                    try await recoverPlan(dead: dead)
                } catch {
                    let reason = "\(operatorDescription(of: error)) (after: \(cause))"
                    logger.error("job failed: \(reason)")
                    // A failed job never resumes: its kept hidden states go too.
                    await tellWorkersToStop(discardState: true)
                    finish(as: .failed, reason: reason)
                    return
                }
            }
        }
    }

    func finish(as state: JobState, reason: String?) {
        do {
            if let job = try store.job(id: jobID), !job.state.isTerminal {
                try store.updateJobState(jobID: jobID, to: state, reason: reason)
                CoordinatorMetrics.recordJobStates(store, logger: logger)
            }
        } catch {
            logger.error("could not record the job's end: \(error)")
        }
    }

    func checkInterrupted() throws {
        if cancelRequested { throw CancellationError() }
        if shutdownRequested { throw CancellationError() }
        if let (name, reason) = lost.first { throw JobFailure.workerLost(worker: name, reason: reason) }
        if let failure = workerFailure {
            throw JobFailure.workerFailed(worker: failure.worker, message: failure.message)
        }
        if let siblingFailure { throw JobFailure.stoppedBeside(reason: siblingFailure) }
    }

    /// Runs `work`; if it fails, wakes the sibling task so that it stops too.
    func stoppingSiblingOnFailure(_ work: () async throws -> Void) async throws {
        do {
            try await work()
        } catch {
            if siblingFailure == nil { siblingFailure = operatorDescription(of: error) }
            signal(.siblingFailed)
            throw error
        }
    }

    /// One pass from the state on disk to the end. Any failure throws; `run` decides what follows.
    func attempt() async throws {
        lost = [:]
        workerFailure = nil
        siblingFailure = nil
        calibrationDone = false
        acceptingReports = false
        attemptNumber += 1
        let spec = submission.spec
        // Stopped between renaming the verified output into place and recording the success: only the record is due.
        if OutputDirectory.wasCommitted(final: spec.outputDirectory, jobID: spec.jobID) {
            logger.info("the output was renamed into place before coordd stopped; recording the job as succeeded",
                        metadata: ["output": "\(spec.outputPath)"])
            try move(to: .succeeded)
            OutputDirectory.finishCommit(final: spec.outputDirectory, jobID: spec.jobID)
            return
        }
        let config = try ModelDirectory(spec.modelDirectory).loadConfig()
        self.config = config
        plan = try await ensurePlan(layerCount: config.numHiddenLayers)
        try checkInterrupted()

        try move(to: .loading)
        if calibrationPlan == nil {
            // A weight-only job reads no calibration data (the model may have no tokenizer).
            calibrationPlan = spec.scheme.quantizesActivations
                ? try spec.makeCalibrationPlan(config: config, logger: logger)
                : .uncalibrated(chunkTokens: spec.calibration.chunkTokens)
        }
        let calibrationPlan = self.calibrationPlan!
        // Statistics on disk belong to the inputs recorded at submit; a resume on other inputs would mix them.
        try checkInputsUnchanged(calibrationPlan: calibrationPlan)
        let workers = try await resolveWorkers()
        try checkScratchSpace(workers: workers, calibrationPlan: calibrationPlan, config: config)
        try await load(workers: workers, calibrationPlan: calibrationPlan)
        try checkInterrupted()

        if spec.scheme.quantizesActivations {
            // Layer L is exported as soon as its scales are final, while later layers still calibrate.
            try move(to: .calibrating)
            try await withThrowingTaskGroup(of: Void.self) { group in
                group.addTask {
                    try await self.stoppingSiblingOnFailure {
                        try await self.calibrate(workers: workers, calibrationPlan: calibrationPlan, config: config)
                    }
                }
                group.addTask {
                    try await self.stoppingSiblingOnFailure {
                        try await self.exportAndWrite(workers: workers, calibrationPlan: calibrationPlan, config: config)
                    }
                }
                try await group.waitForAll()
            }
        } else {
            try move(to: .exporting)
            try await exportAndWrite(workers: workers, calibrationPlan: calibrationPlan, config: config)
        }
        try move(to: .succeeded)
        OutputDirectory.finishCommit(final: spec.outputDirectory, jobID: spec.jobID)
        logger.info("job succeeded", metadata: ["output": "\(spec.outputPath)"])
        await tellWorkersToStop(discardState: true)
    }

    /// Every range after the first keeps the hidden states entering it (f32, every calibration token) on its worker's
    /// scratch filesystem: refuse before any work when the worker's last reported free space cannot hold them. (A
    /// resume is not checked: the states it already kept use part of that space.)
    func checkScratchSpace(workers: [PlannedWorker], calibrationPlan: CalibrationPlan, config: LlamaConfig) throws {
        guard submission.spec.scheme.quantizesActivations, try store.recordedChunks(jobID: jobID).isEmpty else { return }
        let needed = Int64(calibrationPlan.tokenCount) * Int64(config.hiddenSize) * 4
        let records = Dictionary((try store.listWorkers()).map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        for worker in workers.dropFirst() {
            guard let free = records[worker.info.name]?.freeDiskBytes, free > 0 else { continue }
            if needed > free {
                throw JobFailure.scratchTooSmall(worker: worker.info.name, needed: needed, free: free)
            }
        }
    }

    /// Throws ``JobFailure/inputsChanged(jobID:changes:)`` when the model files or the calibration set differ from
    /// the fingerprint recorded at submit.
    func checkInputsUnchanged(calibrationPlan: CalibrationPlan) throws {
        guard let recorded = submission.fingerprint else { return }
        let spec = submission.spec
        let changes = try JobFingerprint.compute(spec: spec, plan: spec.scheme.quantizesActivations ? calibrationPlan : nil)
            .changes(since: recorded)
        guard changes.isEmpty else { throw JobFailure.inputsChanged(jobID: jobID, changes: changes) }
    }

    func move(to state: JobState) throws {
        guard let job = try store.job(id: jobID) else { throw JobFailure.jobVanished(jobID: jobID) }
        if job.state == state { return }
        lastActivity = Date()
        if state == .succeeded && job.state == .exporting {
            try store.updateJobState(jobID: jobID, to: .merging)
        }
        try store.updateJobState(jobID: jobID, to: state)
        CoordinatorMetrics.recordJobStates(store, logger: logger)
    }

    func tellWorkersToStop(discardState: Bool) async {
        for entry in plan {
            guard let info = await registry.info(entry.worker) else { continue }
            do {
                try await endpoint(of: info).cancel(jobID: jobID, discardState: discardState)
            } catch {
                logger.warning("could not tell \(entry.worker) to stop: \(error)")
            }
        }
    }
}
