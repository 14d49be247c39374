import ActorSystem
import ClusterProtocol
import ClusterState
import Calibration
import Distributed
import Evaluation
import Foundation
import LlamaModel
import Logging
import NVFP4
import QuantizeJob
import SafeTensors

/// Drives one job from queued to a terminal state: plan, load, route calibration chunks, merge statistics, export,
/// write. Survives the loss of a worker (waits for it, or re-plans over the survivors) and a coordd restart (every
/// decision is made again from the state in SQLite, whose chunk statistics are idempotent).
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

    private var cancelRequested = false
    private var shutdownRequested = false
    private var stopped = false
    private var stopWaiters: [CheckedContinuation<Void, Never>] = []
    /// Workers of the current plan lost during the current attempt, with the reason.
    private var lost: [String: String] = [:]
    private var workerFailure: (worker: String, message: String)?
    private var progressWaiters: [CheckedContinuation<Void, Never>] = []
    /// Grows with every attempt; workers tag reports with the attempt that loaded them.
    private var attemptNumber = 0
    /// Reports count only once this attempt's workers are loaded.
    private var acceptingReports = false

    // Known once an attempt has planned.
    private var config: LlamaConfig?
    private var calibrationPlan: CalibrationPlan?
    /// What the loaded workers compute on, for `calibration.json`.
    private var deviceLabel = ""
    private var plan: [LayerAssignment] = []
    /// layer → chunks recorded.
    private var recorded: [Int: Set<Int>] = [:]
    /// Every layer's scales are final (the export of the last layers may go ahead).
    private var calibrationDone = false
    /// Calibration and export run side by side; the first of them to fail stops the other through this.
    private var siblingFailure: String?

    /// Runs the quality report off the actor's executor (it computes for seconds to hours).
    private let evaluationQueue = ComputeQueue(label: "coordd.evaluation")

    // Live figures.
    private var calibrationStart: ContinuousClock.Instant?
    private var layerTokensThisRun = 0
    private var outputBytes: Int64?

    init(jobID: String, submission: JobSubmission, store: ClusterStateStore, registry: WorkerRegistry,
         mailbox: BulkMailbox, system: ClusterActorSystem, localWorkers: [String: any WorkerEndpoint] = [:],
         settings: CoordinatorSettings, logger: Logger) {
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

    /// Rejects a submission that cannot run before it is stored.
    static func checkSubmission(_ submission: JobSubmission) throws {
        if let count = submission.workerCount, count < 1 {
            throw CoordinatorError.invalidSubmission(field: "--workers", reason: "must be at least 1, got \(count)")
        }
        if let split = submission.split, split.isEmpty || split.contains(where: { $0 < 1 }) {
            throw CoordinatorError.invalidSubmission(field: "--split", reason: "needs positive layer counts, got \(split)")
        }
        let model = ModelDirectory(submission.spec.modelDirectory)
        do {
            _ = try model.loadConfig()
        } catch {
            throw CoordinatorError.invalidSubmission(field: "--model", reason: "coordd cannot use \(model.configURL.path): \(error)")
        }
    }

    struct LiveFigures: Sendable {
        var tokensPerSecond: Double?
        var etaSeconds: Double?
        var outputBytes: Int64?
    }

    func liveFigures() -> LiveFigures {
        guard let start = calibrationStart, let config, let calibrationPlan else {
            return LiveFigures(outputBytes: outputBytes)
        }
        let seconds = secondsSince(start)
        guard seconds > 0, layerTokensThisRun > 0 else { return LiveFigures(outputBytes: outputBytes) }
        let layers = config.numHiddenLayers
        let rate = Double(layerTokensThisRun) / seconds / Double(layers)
        let done = recorded.reduce(0) { total, entry in
            total + entry.value.reduce(0) { $0 + calibrationPlan.chunks[$1].tokenCount }
        }
        let remaining = max(0, calibrationPlan.tokenCount * layers - done)
        return LiveFigures(tokensPerSecond: rate, etaSeconds: Double(remaining) / (rate * Double(layers)),
                           outputBytes: outputBytes)
    }

    // MARK: Events

    func record(_ report: ChunkReport) throws {
        // Work of an earlier attempt (before a resume) may still arrive; its results are redone by this one.
        guard report.attempt == attemptNumber, acceptingReports, let config, let calibrationPlan else {
            logger.debug("ignoring a report of attempt \(report.attempt) from \(report.worker) (now \(attemptNumber))")
            return
        }
        guard calibrationPlan.chunks.indices.contains(report.chunk) else {
            throw CoordinatorError.chunkNotInJob(jobID: jobID, chunk: report.chunk)
        }
        for layerAmax in report.layers {
            guard (0..<config.numHiddenLayers).contains(layerAmax.layer) else {
                throw CoordinatorError.layerNotInModel(jobID: jobID, worker: report.worker, layer: layerAmax.layer)
            }
            // One value per observed input (fused group), as the worker measured it.
            let amax = Dictionary(uniqueKeysWithValues: FusedGroup.allCases.map { ($0.rawValue, layerAmax[$0]) })
            try store.recordChunkAmax(jobID: jobID, layer: layerAmax.layer, chunk: report.chunk,
                                      sampleCount: report.sampleCount, amax: amax)
            recorded[layerAmax.layer, default: []].insert(report.chunk)
        }
        layerTokensThisRun += report.tokenCount * report.layers.count
        signalProgress()
    }

    func workerLost(name: String, reason: String) {
        guard plan.contains(where: { $0.worker == name }) else { return }
        lost[name] = reason
        signalProgress()
    }

    func workerFailed(worker: String, attempt: Int, message: String) {
        guard attempt == attemptNumber, acceptingReports else { return }
        workerFailure = (worker, message)
        signalProgress()
    }

    func cancel() async {
        cancelRequested = true
        signalProgress()
        await tellWorkersToStop(discardState: true)
        await waitUntilStopped()
    }

    func stopForShutdown() {
        shutdownRequested = true
        signalProgress()
    }

    func waitUntilStopped() async {
        if stopped { return }
        await withCheckedContinuation { stopWaiters.append($0) }
    }

    private func signalProgress() {
        let waiters = progressWaiters
        progressWaiters = []
        for waiter in waiters { waiter.resume() }
    }

    private func waitForProgress() async {
        await withCheckedContinuation { progressWaiters.append($0) }
    }

    // MARK: The loop

    func run() async {
        defer {
            stopped = true
            for waiter in stopWaiters { waiter.resume() }
            stopWaiters = []
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
                    await tellWorkersToStop(discardState: false)
                    finish(as: .failed, reason: operatorDescription(of: error))
                    return
                }
                let lostNames = dead.joined(separator: ", ")
                logger.warning("lost worker(s) \(lostNames): \(operatorDescription(of: error)); waiting up to \(Int(settings.workerGraceSeconds)) s for them, then re-planning")
                do {
                    try await recoverPlan(dead: dead)
                } catch {
                    logger.error("job failed: \(operatorDescription(of: error))")
                    await tellWorkersToStop(discardState: false)
                    finish(as: .failed, reason: operatorDescription(of: error))
                    return
                }
            }
        }
    }

    private func finish(as state: JobState, reason: String?) {
        do {
            if let job = try store.job(id: jobID), !job.state.isTerminal {
                try store.updateJobState(jobID: jobID, to: state, reason: reason)
            }
        } catch {
            logger.error("could not record the job's end: \(error)")
        }
    }

    private func checkInterrupted() throws {
        if cancelRequested { throw CancellationError() }
        if shutdownRequested { throw CancellationError() }
        if let (name, reason) = lost.first { throw JobFailure.workerLost(worker: name, reason: reason) }
        if let failure = workerFailure {
            throw JobFailure.workerFailed(worker: failure.worker, message: failure.message)
        }
        if let siblingFailure { throw JobFailure.stoppedBeside(reason: siblingFailure) }
    }

    /// Runs `work`; if it fails, wakes the sibling task so that it stops too.
    private func stoppingSiblingOnFailure(_ work: () async throws -> Void) async throws {
        do {
            try await work()
        } catch {
            if siblingFailure == nil { siblingFailure = operatorDescription(of: error) }
            signalProgress()
            throw error
        }
    }

    /// One pass from the state on disk to the end. Any failure throws; `run` decides what follows.
    private func attempt() async throws {
        lost = [:]
        workerFailure = nil
        siblingFailure = nil
        calibrationDone = false
        acceptingReports = false
        attemptNumber += 1
        let spec = submission.spec
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
        let workers = try await resolveWorkers()
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
        logger.info("job succeeded", metadata: ["output": "\(spec.outputPath)"])
        await tellWorkersToStop(discardState: true)
    }

    private func move(to state: JobState) throws {
        guard let job = try store.job(id: jobID) else { throw JobFailure.jobVanished(jobID: jobID) }
        if job.state == state { return }
        if state == .succeeded && job.state == .exporting {
            try store.updateJobState(jobID: jobID, to: .merging)
        }
        try store.updateJobState(jobID: jobID, to: state)
    }

    // MARK: Planning

    private func deadPlannedWorkers() async -> [String] {
        var dead: [String] = []
        for entry in plan where await registry.info(entry.worker) == nil { dead.append(entry.worker) }
        return dead
    }

    /// The stored plan when all its workers are live; otherwise waits for enough workers and plans anew.
    private func ensurePlan(layerCount: Int) async throws -> [LayerAssignment] {
        let stored = try store.plan(jobID: jobID)
        let deadline = ContinuousClock.now + .seconds(settings.workerGraceSeconds)
        while true {
            try checkInterrupted()
            let generation = await registry.generation
            let live = await registry.liveWorkers()
            let liveNames = Set(live.map(\.name))
            if !stored.isEmpty, stored.allSatisfy({ liveNames.contains($0.worker) }) { return stored }
            let wanted = submission.split?.count ?? submission.workerCount ?? max(1, live.count)
            if stored.isEmpty, live.count >= wanted, !live.isEmpty {
                let chosen = Array(live.prefix(wanted))
                let plan = try LayerPlanner.plan(layerCount: layerCount,
                                                 workers: chosen.map { WorkerCapacity(name: $0.name, memoryBytes: $0.memoryBytes) },
                                                 split: submission.split)
                try store.savePlan(jobID: jobID, plan: plan)
                logger.info(Logger.Message(stringLiteral: "planned: " + plan.map { "\($0.worker) \($0.range.lowerBound)..<\($0.range.upperBound)" }
                    .joined(separator: ", ")))
                return plan
            }
            if ContinuousClock.now >= deadline {
                if !stored.isEmpty {
                    let missing = stored.map(\.worker).filter { !liveNames.contains($0) }
                    self.plan = stored
                    try await recoverPlan(dead: missing)
                    return try store.plan(jobID: jobID)
                }
                throw JobFailure.notEnoughWorkers(needed: wanted, registered: live.count,
                                                  graceSeconds: Int(settings.workerGraceSeconds))
            }
            await registry.waitForChange(after: generation, timeout: deadline - ContinuousClock.now)
        }
    }

    /// Waits for lost workers to come back; after the grace period hands their ranges to neighbours.
    private func recoverPlan(dead: [String]) async throws {
        let deadline = ContinuousClock.now + .seconds(settings.workerGraceSeconds)
        while ContinuousClock.now < deadline {
            if cancelRequested || shutdownRequested { throw CancellationError() }
            let generation = await registry.generation
            if await deadPlannedWorkers().isEmpty {
                logger.info("every planned worker is back; resuming with the same plan")
                return
            }
            await registry.waitForChange(after: generation, timeout: deadline - ContinuousClock.now)
        }
        guard let config else { throw JobFailure.noModelConfig(jobID: jobID) }
        var current = plan
        let live = await registry.liveWorkers()
        let completed = try store.lastCompletedLayer(jobID: jobID).map { $0 + 1 } ?? 0
        for name in await deadPlannedWorkers() {
            current = try LayerPlanner.replan(plan: current, deadWorker: name, completedLayers: completed,
                                              survivors: live.map { WorkerCapacity(name: $0.name, memoryBytes: $0.memoryBytes) },
                                              bytesPerLayer: Self.residentBytesPerLayer(config))
        }
        try store.savePlan(jobID: jobID, plan: current)
        plan = current
        logger.info(Logger.Message(stringLiteral: "re-planned: " + current.map { "\($0.worker) \($0.range.lowerBound)..<\($0.range.upperBound)" }
            .joined(separator: ", ")))
    }

    /// f32 weights of one decoder layer, as the CPU backend holds them.
    static func residentBytesPerLayer(_ config: LlamaConfig) -> Int64 {
        Int64(config.linears(layer: 0).reduce(0) { $0 + $1.inFeatures * $1.outFeatures }) * 4
    }

    // MARK: Loading

    private struct PlannedWorker {
        let assignment: LayerAssignment
        let info: WorkerInfo
        let endpoint: any WorkerEndpoint
    }

    private func resolveWorkers() async throws -> [PlannedWorker] {
        var result: [PlannedWorker] = []
        for entry in plan {
            guard let info = await registry.info(entry.worker) else {
                throw JobFailure.workerNotRegistered(worker: entry.worker)
            }
            result.append(PlannedWorker(assignment: entry, info: info, endpoint: try endpoint(of: info)))
        }
        return result
    }

    private func endpoint(of info: WorkerInfo) throws -> any WorkerEndpoint {
        if let local = localWorkers[info.name] { return local }
        return try $WorkerEndpoint.resolve(id: system.wellKnownID(WellKnownActor.worker, at: info.address), using: system)
    }

    private func load(workers: [PlannedWorker], calibrationPlan: CalibrationPlan) async throws {
        let spec = submission.spec
        let timeout = Duration.seconds(settings.computeCallTimeoutSeconds)
        try await withThrowingTaskGroup(of: LoadReport.self) { group in
            for (index, worker) in workers.enumerated() {
                let next = index + 1 < workers.count ? workers[index + 1] : nil
                let assignment = WorkerAssignment(
                    jobID: jobID, attempt: attemptNumber, spec: spec, firstLayer: worker.assignment.range.lowerBound,
                    endLayer: worker.assignment.range.upperBound, embeddings: worker.assignment.embeddings,
                    successor: next?.info.address, successorName: next?.info.name,
                    plan: calibrationPlan)
                let endpoint = worker.endpoint
                group.addTask {
                    try await ClusterActorSystem.withCallTimeout(timeout) { try await endpoint.loadLayers(assignment) }
                }
            }
            var devices: [String] = []
            for try await report in group {
                if !devices.contains(report.device) { devices.append(report.device) }
                logger.info("worker loaded its range", metadata: ["worker": "\(report.worker)", "layers": "\(report.layers)",
                                                                  "seconds": "\(String(format: "%.1f", report.seconds))"])
            }
            deviceLabel = devices.sorted().joined(separator: ", ")
        }
    }

    // MARK: Calibration

    private func calibrate(workers: [PlannedWorker], calibrationPlan: CalibrationPlan, config: LlamaConfig) async throws {
        let chunkCount = calibrationPlan.chunks.count
        let layerCount = config.numHiddenLayers
        recorded = try store.recordedChunks(jobID: jobID)
        acceptingReports = true
        calibrationStart = .now
        layerTokensThisRun = 0

        // Where each unfinished chunk must start: the range holding its first unrecorded layer, if that worker kept
        // the chunk's input hidden states on disk; the first range otherwise.
        var startRange: [Int: Int] = [:]
        var keptByRange: [Int: Set<Int>] = [:]
        for chunk in 0..<chunkCount {
            guard let layer = (0..<layerCount).first(where: { !(recorded[$0]?.contains(chunk) ?? false) }) else { continue }
            let range = workers.firstIndex { $0.assignment.range.contains(layer) }!
            if range > 0 && keptByRange[range] == nil {
                keptByRange[range] = Set(try await workers[range].endpoint.storedChunks(jobID: jobID))
            }
            startRange[chunk] = range > 0 && keptByRange[range]!.contains(chunk) ? range : 0
        }
        let pending = startRange.count
        logger.info(Logger.Message(stringLiteral: "calibrating \(chunkCount) chunks (\(calibrationPlan.sampleCount) samples, \(calibrationPlan.tokenCount) "
                    + "tokens) through \(workers.count) worker(s); \(chunkCount - pending) chunks already done"))
        for range in workers.indices.dropFirst() {
            let chunks = startRange.filter { $0.value == range }.map(\.key).sorted()
            if chunks.isEmpty { continue }
            let replayed = try await workers[range].endpoint.replayStoredChunks(jobID: jobID, chunks: chunks)
            logger.info("resuming \(replayed.count) chunks at \(workers[range].info.name) from its kept hidden states")
        }
        let first = workers[0].endpoint
        let timeout = Duration.seconds(settings.computeCallTimeoutSeconds)
        if workers.count == 1 && pending > 0 {
            // One range holds every layer: a layer-at-a-time pass keeps a single layer resident.
            try await first.calibrateAll(jobID: jobID)
            startRange = [:]
        }
        for chunk in startRange.filter({ $0.value == 0 }).map(\.key).sorted() {
            try checkInterrupted()
            let order = CalibrateOrder(jobID: jobID, chunk: chunk)
            try await ClusterActorSystem.withCallTimeout(timeout) { try await first.calibrate(order) }
        }
        // Wait for the last range to report every chunk.
        while !(0..<layerCount).allSatisfy({ (recorded[$0]?.count ?? 0) == chunkCount }) {
            try checkInterrupted()
            await waitForProgress()
        }
        for layer in 0..<layerCount {
            try store.completeLayer(jobID: jobID, layer: layer, expectedChunkCount: chunkCount)
        }
        logger.info("calibration complete: activation scales of \(layerCount) layers are final")
        try move(to: .exporting)
        calibrationDone = true
        signalProgress()
    }

    // MARK: Export and merge

    /// Exports every layer in order and merges the checkpoint. For W4A4 it runs beside ``calibrate``: each layer waits
    /// until every chunk has passed it, then freezes its scales and exports; the merge waits for the whole calibration.
    /// Two layers are asked for ahead of the one being written, so a worker quantizes layer L+1 while it still streams
    /// layer L, and the coordinator checks and writes L meanwhile.
    private func exportAndWrite(workers: [PlannedWorker], calibrationPlan: CalibrationPlan, config: LlamaConfig) async throws {
        let spec = submission.spec
        let source = try SafeTensorsModel(directory: spec.modelPath)
        let assembler = try CheckpointAssembler(spec: spec, config: config, source: source, logger: logger)
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
                outputBytes = (outputBytes ?? 0) + Int64(tensors.reduce(0) { $0 + $1.data.count })
            }
            var record: CalibrationRecord?
            if spec.scheme.quantizesActivations {
                while !calibrationDone {
                    await waitForProgress()
                    try checkInterrupted()
                }
                var calibration = spec.calibrationRecord(plan: calibrationPlan, deviceLabel: deviceLabel)
                calibration.activationAmax = try store.activationAmax(jobID: jobID).mapValues(activationAmaxByGroup)
                record = calibration
            }
            try move(to: .merging)
            let report = try assembler.finish(calibration: record)
            outputBytes = Int64(report.bytes)
            if spec.evaluationSamples > 0 {
                try move(to: .evaluating)
                try await judgeQuality(spec: spec, config: config, source: source, assembler: assembler)
            }
            try assembler.commit()
        } catch let failure as QualityGateFailure {
            // The rejected checkpoint stays as OUTPUT.partial-<id>, for inspection.
            throw failure
        } catch {
            // Look-ahead exports must not outlive this attempt (a later one reuses the tensor ids).
            if !pending.isEmpty {
                if siblingFailure == nil { siblingFailure = operatorDescription(of: error) }
                signalProgress()
                for task in pending { _ = await task.result }
            }
            assembler.discard()
            throw error
        }
    }

    /// Measures the perplexity of the verified checkpoint (still in its partial directory) against the original,
    /// records it for `status`, and throws ``QualityGateFailure`` when the gate rejects it.
    private func judgeQuality(spec: JobSpec, config: LlamaConfig, source: SafeTensorsModel,
                              assembler: CheckpointAssembler) async throws {
        let directory = assembler.partialDirectory
        let logger = self.logger
        let report: QualityReport
        do {
            report = try await evaluationQueue.run {
                try QualityEvaluation.report(spec: spec, config: config, original: source, checkpointDirectory: directory,
                                             logger: logger)
            }
        } catch {
            throw JobFailure.qualityReportFailed(reason: "\(error)")
        }
        try checkInterrupted()
        let gate = spec.maxPerplexityRatio.map { QualityGate(maxPerplexityRatio: $0) }
        let failure = gate?.failure(of: report)
        let verdict: JobQuality.Gate = gate == nil ? .off : failure == nil ? .passed : .failed
        try store.recordQuality(jobID: jobID, quality: JobQuality(
            samples: report.samples, tokens: report.tokens, originalPerplexity: report.originalPerplexity,
            quantizedPerplexity: report.quantizedPerplexity, maxPerplexityRatio: spec.maxPerplexityRatio, gate: verdict))
        logger.info("quality: perplexity \(formatPerplexity(report.originalPerplexity)) → \(formatPerplexity(report.quantizedPerplexity)) on \(report.samples) held-out samples; gate \(verdict.rawValue)")
        if var failure {
            failure.keptAt = directory.path
            throw failure
        }
    }

    /// Waits until `layer`'s scales are final (W4A4), freezes them, has the owning worker export the layer and takes
    /// its tensors from the data path.
    private func exportLayer(_ layer: Int, workers: [PlannedWorker], chunkCount: Int) async throws -> [ExportedTensor] {
        try checkInterrupted()
        let owner = workers.first { $0.assignment.range.contains(layer) }!
        var activationAmax: [FusedGroup: ActivationAmax]?
        if submission.spec.scheme.quantizesActivations {
            while !calibrationDone && (recorded[layer]?.count ?? 0) < chunkCount {
                await waitForProgress()
                try checkInterrupted()
            }
            activationAmax = try activationAmaxByGroup(try store.completeLayer(jobID: jobID, layer: layer, expectedChunkCount: chunkCount))
        }
        let request = ExportRequest(jobID: jobID, layer: layer, activationAmax: activationAmax)
        let endpoint = owner.endpoint
        let timeout = Duration.seconds(settings.computeCallTimeoutSeconds)
        let manifest = try await ClusterActorSystem.withCallTimeout(timeout) { try await endpoint.exportLayer(request) }
        var tensors: [ExportedTensor] = []
        for entry in manifest.entries {
            let bytes = try await mailbox.take(peer: owner.info.name, id: entry.bulkID)
            guard let dtype = SafeTensorsDType(rawValue: entry.dtype) else {
                throw JobFailure.unknownTensorDType(worker: owner.info.name, tensor: entry.name, dtype: entry.dtype)
            }
            tensors.append(ExportedTensor(name: entry.name, dtype: dtype, shape: entry.shape, data: bytes, sha256: entry.sha256))
        }
        return tensors
    }

    private func tellWorkersToStop(discardState: Bool) async {
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
