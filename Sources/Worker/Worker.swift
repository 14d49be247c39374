/// # Worker
///
/// The `Worker` distributed actor that workerd hosts: it holds one contiguous range of decoder layers of a job,
/// runs calibration chunks through them, forwards hidden states to the next worker of the route, reports amax to
/// the coordinator, and exports its layers.
///
/// Compute runs on a dedicated thread (``ComputeQueue``), never on the concurrency pool, so that calls, heartbeats
/// and the data path stay responsive while a chunk is being computed.
import ActorSystem
import Calibration
import Checkpoint
import ClusterProtocol
import Distributed
import Foundation
import JobModel
import LlamaModel
import Logging
import QuantizeJob
import RDMATransport
import SafeTensors
import Transport

public distributed actor Worker: WorkerEndpoint {
    public typealias ActorSystem = ClusterActorSystem

    public let name: String
    public let device: String
    let scratchDirectory: URL
    let coordinatorAddress: NodeAddress
    /// The node name coordd must prove when this worker dials it.
    let coordinatorName: String
    let logger: Logger
    let chunkDelay: Duration
    /// Bytes of layer weights this worker may hold at once; a range above it is calibrated one layer at a time.
    let memoryBudget: Int
    /// `--gpu-memory`: most GPU memory a job's compute may allocate; nil: the driver's free memory.
    let gpuMemoryLimit: Int?
    /// How the data path to the next range recovers from a dropped link (`--link-timeout`).
    let linkPolicy: SuccessorLink.RetryPolicy
    /// What links to the next range run on (`--transport`); see ``ActivationLinks``.
    let activationLinks: ActivationLinkSetup
    /// The current job's link to the next range: its transport now, and why.
    private var successorChoice: ActivationLinkChoice?
    let compute = ComputeQueue(label: "workerd.compute")
    /// Exports run beside calibration (layer L quantizes and streams while layer L+1 calibrates).
    let exportQueue = ComputeQueue(label: "workerd.export")
    private var job: ActiveRangeJob?
    private var coordinatorBulk: (any ActivationTransport)?
    /// In-process mode (`coordctl quantize`): the coordinator actor itself, no lookup.
    private var localCoordinator: (any CoordinatorEndpoint)?
    let metrics: WorkerMetrics

    public init(actorSystem: ClusterActorSystem, name: String, device: String, scratchDirectory: URL,
                coordinator: NodeAddress, coordinatorName: String = WellKnownActor.coordinatorNode,
                chunkDelay: Duration = .zero,
                memoryBudget: Int = Int(ProcessInfo.processInfo.physicalMemory) / 10 * 8,
                gpuMemoryLimit: Int? = nil,
                linkTimeout: Duration = .seconds(60), activationLinks: ActivationLinkSetup = .tcp(), logger: Logger) {
        self.actorSystem = actorSystem
        self.name = name
        self.device = device
        self.scratchDirectory = scratchDirectory
        self.coordinatorAddress = coordinator
        self.coordinatorName = coordinatorName
        self.chunkDelay = chunkDelay
        self.memoryBudget = memoryBudget
        self.gpuMemoryLimit = gpuMemoryLimit
        self.linkPolicy = SuccessorLink.RetryPolicy(reconnectDeadline: linkTimeout)
        self.activationLinks = activationLinks
        self.logger = logger
        self.metrics = WorkerMetrics(worker: name)
        // Present from the start (0 until a job), so a scrape sees every series of this worker.
        metrics.hiddenStates(gpu: 0, host: 0, spilled: 0)
        metrics.keptHiddenStates(bytes: RangeCompute.keptBytes(workerName: name, scratchDirectory: scratchDirectory))
        metrics.gpuMemoryInUse(bytes: 0)
    }

    private func coordinator() throws -> any CoordinatorEndpoint {
        if let localCoordinator { return localCoordinator }
        return try $CoordinatorEndpoint.resolve(id: actorSystem.wellKnownID(WellKnownActor.coordinator, at: coordinatorAddress, node: coordinatorName),
                                         using: actorSystem)
    }

    // MARK: Distributed API

    public distributed func loadLayers(_ assignment: WorkerAssignment) async throws -> LoadReport {
        if let old = job {
            logger.info("dropping the previous state of job \(old.assignment.jobID) before loading",
                        metadata: ["job": "\(assignment.jobID)"])
            await drop(old)
        }
        let start = ContinuousClock.now
        let name = self.name
        let scratch = scratchDirectory
        let logger = self.logger
        logger.info("loading layers \(assignment.firstLayer)..<\(assignment.endLayer)",
                    metadata: ["job": "\(assignment.jobID)"])
        let deviceName = device
        let budget = memoryBudget
        let gpuLimit = gpuMemoryLimit
        let compute = try await self.compute.run {
            try RangeCompute(assignment: assignment, workerName: name, device: deviceName, scratchDirectory: scratch,
                             memoryBudget: budget, gpuMemoryLimit: gpuLimit, logger: logger)
        }
        var successor: SuccessorLink?
        successorChoice = nil
        if let next = assignment.successor {
            // The successor must prove it is the planned node (its certificate's name, with TLS).
            let endpoint = ClusterEndpoint(host: next.host, port: next.port, node: assignment.successorName ?? "")
            let system = actorSystem
            let (jobID, attempt) = (assignment.jobID, assignment.attempt)
            let successorName = assignment.successorName ?? "\(next)"
            let setup = activationLinks
            let choice = ActivationLinkChoice(initial: setup.decision, peer: successorName, logger: logger) { [weak self] _ in
                Task { await self?.whenLocal { await $0.reportLinkTransport() } }
            }
            successorChoice = choice
            let link = SuccessorLink(worker: name, successor: successorName,
                                     policy: linkPolicy, metrics: metrics, logger: logger, dial: {
                let transport = try await system.openBulkTransport(to: endpoint)
                return try await ActivationLinks.connection(over: transport, setup: setup, choice: choice,
                                                            worker: name, logger: logger,
                                                            redial: { try await system.openBulkTransport(to: endpoint) })
            }, onLinkDown: { [weak self] error in
                await self?.whenLocal { await $0.reportLinkDown(jobID: jobID, attempt: attempt, error: error) }
            })
            do {
                try await link.connect()
            } catch {
                compute.close()
                throw error
            }
            successor = link
            // What the first dial settled on (a fallback during it has reported itself already).
            if choice.summary == choice.current.transport.rawValue { await reportLinkTransport() }
        }
        job = ActiveRangeJob(assignment: assignment, compute: compute, successor: successor,
                             awaitsTokenIDs: assignment.tokenIDsOnDataPath && assignment.embeddings)
        metrics.gpuMemoryInUse(bytes: compute.deviceMemoryInUse())
        let seconds = secondsSince(start)
        logger.info("loaded \(assignment.range.count) layers in \(String(format: "%.1f", seconds)) s",
                    metadata: ["job": "\(assignment.jobID)"])
        return LoadReport(worker: name, layers: assignment.range.count, seconds: seconds, device: compute.deviceLabel)
    }

    public distributed func calibrate(_ order: CalibrateOrder) async throws {
        let job = try activeJob(order.jobID)
        guard job.assignment.embeddings else {
            throw WorkerError.wrongRange(worker: name, call: "calibrate(chunk:) goes to the first range only",
                                         range: job.assignment.range)
        }
        try await job.tokenIDsArrived()
        try await process(job: job, chunk: order.chunk, input: nil)
    }

    public distributed func calibrateAll(jobID: String) async throws {
        let job = try activeJob(jobID)
        guard job.assignment.embeddings, job.assignment.successor == nil else {
            throw WorkerError.wrongRange(worker: name, call: "calibrateAll needs a range holding every layer",
                                         range: job.assignment.range)
        }
        try await job.tokenIDsArrived()
        startLayerAtATimePass(job)
    }

    /// Runs every chunk through the range one layer at a time in the background, reporting each layer's chunks as
    /// the layer completes, then (with a successor) forwards every chunk's output in order.
    private func startLayerAtATimePass(_ job: ActiveRangeJob) {
        let compute = self.compute
        let metrics = self.metrics
        job.enqueueBackground { [weak self] in
            do {
                let pass = try await compute.run { try job.compute.startStreamingPass() }
                defer { metrics.hiddenStates(gpu: 0, host: 0, spilled: 0) }
                for _ in job.assignment.range {
                    if job.isCancelled { return }
                    let start = ContinuousClock.now
                    let (layer, bytes) = try await compute.run { () throws -> (StreamedLayer, (gpu: Int, host: Int, spilled: Int)) in
                        (try job.compute.streamNextLayer(pass), job.compute.stateBytes(of: pass))
                    }
                    let seconds = secondsSince(start)
                    metrics.hiddenStates(gpu: bytes.gpu, host: bytes.host, spilled: bytes.spilled)
                    metrics.gpuMemoryInUse(bytes: job.compute.deviceMemoryInUse())
                    let tokens = job.assignment.chunks.reduce(0) { $0 + $1.tokenCount }
                    metrics.computed(tokens: tokens, layers: 1, wholeRange: layer.layer == job.assignment.endLayer - 1)
                    let perChunk = seconds / Double(max(layer.chunkAmax.count, 1))
                    for _ in layer.chunkAmax { metrics.chunkLatency(seconds: perChunk) }
                    if job.isCancelled { return }
                    guard let self else { return }
                    try await self.whenLocal { try await $0.reportLayer(job: job, layer: layer, start: start) }
                }
                if let successor = job.successor {
                    for chunk in job.assignment.chunks.indices {
                        if job.isCancelled { return }
                        let output = try await compute.run { try job.compute.output(of: pass, chunk: chunk) }
                        try await successor.send(id: BulkTensorID.hiddenStates(chunk: chunk), bytes: output)
                    }
                }
                _ = try? await compute.run { job.compute.finishStreamingPass(pass) }
            } catch {
                guard let self, !job.isCancelled else { return }
                await self.whenLocal { await $0.reportFailure(job: job, message: "\(error)") }
            }
        }
    }

    /// Reports every chunk's amax for one layer of a layer-at-a-time pass.
    private func reportLayer(job: ActiveRangeJob, layer: StreamedLayer, start: ContinuousClock.Instant) async throws {
        let seconds = secondsSince(start)
        for (index, amax) in layer.chunkAmax.enumerated() {
            let chunk = job.assignment.chunks[index]
            if chunkDelay > .zero { try await Task.sleep(for: chunkDelay) }
            try await coordinator().reportChunk(ChunkReport(
                jobID: job.assignment.jobID, attempt: job.assignment.attempt, worker: name, chunk: index,
                sampleCount: chunk.sampleRange.count, tokenCount: chunk.tokenCount,
                seconds: seconds / Double(layer.chunkAmax.count), layers: [amax]))
        }
    }

    public distributed func replayStoredChunks(jobID: String, chunks: [Int]) async throws -> [Int] {
        let job = try activeJob(jobID)
        let stored = Set(try job.compute.storedChunks())
        let replay = chunks.filter { stored.contains($0) }
        // Run in the background in order; failures go to the coordinator like any incoming chunk's.
        job.enqueueBackground { [weak self] in
            for chunk in replay {
                guard let self else { return }
                try await self.whenLocal { try await $0.processStored(jobID: jobID, chunk: chunk) }
            }
        }
        return replay
    }

    public distributed func storedChunks(jobID: String) async throws -> [Int] {
        let job = try activeJob(jobID)
        return try job.compute.storedChunks()
    }

    public distributed func exportLayer(_ request: ExportRequest) async throws -> ExportManifest {
        let job = try activeJob(request.jobID)
        await DebugFaultPoint.workerExport.pauseIfRequested { [logger] in logger.warning("\($0)") }
        guard job.assignment.range.contains(request.layer) else {
            throw WorkerError.layerNotInRange(worker: name, layer: request.layer, range: job.assignment.range)
        }
        let exportStart = ContinuousClock.now
        // An in-process coordinator takes the bytes as they are, and TLS authenticates every record on the way;
        // only over a plaintext connection do they carry their SHA-256.
        let digests = localCoordinator == nil && actorSystem.configuration.tls == nil
        let (tensors, timings, quality) = try await exportQueue.run {
            try job.compute.export(layer: request.layer, activationAmax: request.activationAmax, digests: digests)
        }
        let sendStart = ContinuousClock.now
        defer {
            let bytes = tensors.reduce(0) { $0 + $1.data.count }
            logger.info("exported layer \(request.layer): \(formatBytes(bytes)); weight amax \(String(format: "%.2f", timings.weightAmax)) s, quantize \(String(format: "%.2f", timings.quantize)) s, pack\(digests ? " and hash" : " (no SHA-256: \(localCoordinator == nil ? "TLS" : "in process"))") \(String(format: "%.2f", timings.packAndHash)) s, quantization error \(String(format: "%.2f", timings.qualityMeasure)) s, send \(String(format: "%.2f", secondsSince(sendStart))) s")
        }
        let transport = try await coordinatorDataPath()
        var entries: [ExportManifest.Entry] = []
        for (index, tensor) in tensors.enumerated() {
            let id = BulkTensorID.exportedTensor(layer: request.layer, index: index)
            entries.append(ExportManifest.Entry(name: tensor.name, dtype: tensor.dtype.rawValue, shape: tensor.shape,
                                                byteCount: tensor.data.count, sha256: tensor.sha256, bulkID: id))
            do {
                try await transport.sendTensor(id: id, data: tensor.data)
            } catch {
                coordinatorBulk = nil
                throw error
            }
        }
        metrics.exported(bytes: tensors.reduce(0) { $0 + $1.data.count }, seconds: secondsSince(exportStart))
        return ExportManifest(layer: request.layer, entries: entries, weightQuality: quality)
    }

    public distributed func evaluateQuality(_ request: QualityRequest) async throws -> QualityReport {
        let path = request.checkpointPath
        let directory = URL(fileURLWithPath: path)
        let found: String
        do {
            found = try CheckpointFingerprint.of(directory: directory)
        } catch {
            throw WorkerError.checkpointNotVisible(worker: name, path: path, reason: "\(error.localizedDescription)")
        }
        guard found == request.fingerprint else {
            throw WorkerError.checkpointNotVisible(
                worker: name, path: path, reason: "the files there are not the checkpoint coordd wrote (no shared storage)")
        }
        let spec = request.spec
        let logger = self.logger
        try ModelCheck.verify(spec)
        logger.info("measuring the quality of \(path)", metadata: ["job": "\(spec.jobID)"])
        let coordinator = try coordinator()
        let name = self.name
        // The compute thread: the report runs both models through every layer on the CPU. Each layer done is told
        // to the coordinator (for `status`); a lost progress report costs nothing but a stale figure.
        return try await compute.run {
            let config = try ModelDirectory(spec.modelDirectory).loadConfig()
            let original = try SafeTensorsModel(directory: spec.modelPath)
            return try QualityEvaluation.report(spec: spec, config: config, original: original,
                                                checkpointDirectory: directory,
                                                outputErrorSamples: request.outputErrorSamples, logger: logger) { progress in
                Task {
                    try? await coordinator.reportEvaluationProgress(jobID: spec.jobID, worker: name,
                                                                    completedLayers: progress.completedLayers,
                                                                    totalLayers: progress.totalLayers)
                }
            }
        }
    }

    public distributed func status() async throws -> WorkerStatusReport {
        WorkerStatusReport(name: name, device: device, jobID: job?.assignment.jobID,
                           range: job.map { "\($0.assignment.firstLayer)-\($0.assignment.endLayer - 1)" },
                           chunksDone: job?.chunksDone ?? 0, freeDiskBytes: freeDiskBytes(at: scratchDirectory))
    }

    public distributed func cancel(jobID: String, discardState: Bool) async throws {
        if let job, job.assignment.jobID == jobID {
            await drop(job)
            logger.info("job stopped\(discardState ? "; its kept hidden states are removed" : "")", metadata: ["job": "\(jobID)"])
        }
        if discardState {
            try RangeCompute.discardKeptState(jobID: jobID, workerName: name, scratchDirectory: scratchDirectory)
            metrics.keptHiddenStates(bytes: RangeCompute.keptBytes(workerName: name, scratchDirectory: scratchDirectory))
        }
    }

    public distributed func collectGarbage(keep: [String]) async throws -> [String] {
        let kept = Set(keep).union(job.map { [$0.assignment.jobID] } ?? [])
        var removed: [String] = []
        for jobID in RangeCompute.keptJobs(workerName: name, scratchDirectory: scratchDirectory) where !kept.contains(jobID) {
            try RangeCompute.discardKeptState(jobID: jobID, workerName: name, scratchDirectory: scratchDirectory)
            removed.append(jobID)
        }
        if !removed.isEmpty {
            logger.info("removed the hidden states kept for ended job(s) \(removed.joined(separator: ", "))")
            metrics.keptHiddenStates(bytes: RangeCompute.keptBytes(workerName: name, scratchDirectory: scratchDirectory))
        }
        return removed
    }

    /// The data path to the coordinator, opened on first use and kept.
    private func coordinatorDataPath() async throws -> any ActivationTransport {
        if let coordinatorBulk {
            // A coordd that restarted left this connection closed; the new one is dialed below.
            guard let tcp = coordinatorBulk as? TCPActivationTransport, !tcp.connection.isOpen else { return coordinatorBulk }
            self.coordinatorBulk = nil
        }
        let transport = try await actorSystem.openBulkTransport(
            to: ClusterEndpoint(host: coordinatorAddress.host, port: coordinatorAddress.port, node: coordinatorName))
        coordinatorBulk = transport
        return transport
    }

    // MARK: Local API (workerd)

    /// In-process mode: talk to `coordinator` directly and send exported tensors over `dataPath`.
    public func useLocalCoordinator(_ coordinator: any CoordinatorEndpoint, dataPath: any ActivationTransport) {
        localCoordinator = coordinator
        coordinatorBulk = dataPath
    }

    /// The coordinator went away: its job state is stale. Stop computing; kept hidden states stay for a resume.
    public func coordinatorLost() async {
        if localCoordinator == nil { coordinatorBulk = nil }
        guard let job else { return }
        logger.warning("coordinator connection lost; stopping job work until it calls again",
                       metadata: ["job": "\(job.assignment.jobID)"])
        await drop(job)
    }

    /// SIGTERM: finish the chunk in progress, then stop.
    public func stopForShutdown() async {
        if let job { await drop(job) }
    }

    /// Tells the coordinator what the link to the next range runs on now, for `coordctl workers`; a failure is only
    /// logged. It reads the link's state when it runs, so a report that overtakes an older one still says the latest.
    func reportLinkTransport() async {
        guard let summary = successorChoice?.summary else { return }
        do {
            try await coordinator().reportLinkTransport(worker: name, linkTransport: summary)
        } catch {
            logger.warning("could not report the link transport to the coordinator: \(error)")
        }
    }

    /// The transport of the current job's link to the next range and why (it turns to TCP for good when an RDMA
    /// connection of it fails); nil when this range has no successor.
    public func successorLinkTransport() -> ActivationTransportDecision? { successorChoice?.current }

    private func drop(_ old: ActiveRangeJob) async {
        old.cancel()
        if job === old { job = nil }
        await old.successor?.close()
        // Release the layers after any compute already queued for them.
        _ = try? await compute.run { old.compute.close() }
    }

    /// The size of chunk `id`'s hidden states (tokens × hidden size × 4 bytes of f32) when `peer` is this range's
    /// predecessor and `id` a chunk of the loaded job; nil otherwise, so the data path refuses it before collecting.
    public func expectedHiddenStateBytes(from peer: String, id: UInt64) -> Int? {
        // The calibration token ids: from coordd only, to the range that embeds, once.
        if id == BulkTensorID.tokenIDs {
            guard let job, peer == coordinatorName, job.awaitsTokenIDs else { return nil }
            return job.assignment.plan.tokenCount * MemoryLayout<Int32>.size
        }
        guard let job, peer == job.assignment.predecessorName, !BulkTensorID.isExport(id),
              id < UInt64(job.assignment.chunks.count) else { return nil }
        return job.assignment.chunks[Int(id)].tokenCount * job.compute.config.hiddenSize * MemoryLayout<Float>.size
    }

    /// Hidden states from the predecessor. Called by workerd's data-path loop, one tensor at a time in arrival order.
    public func receiveHiddenStates(from peer: String, id: UInt64, bytes: Data) async {
        if id == BulkTensorID.tokenIDs, let job, peer == coordinatorName, job.awaitsTokenIDs {
            do {
                try await compute.run { try job.compute.supplyTokenIDs(bytes) }
                job.finishTokenIDs(nil)
                logger.info("took the calibration token ids (\(bytes.count / 4) tokens) from the data path",
                            metadata: ["job": "\(job.assignment.jobID)"])
            } catch {
                job.finishTokenIDs(error)
                await reportFailure(job: job, message: "\(error)")
            }
            return
        }
        guard let job else {
            logger.warning("hidden states for chunk \(id) from \(peer) arrived with no job loaded; dropped")
            return
        }
        guard peer == job.assignment.predecessorName else {
            let expected = job.assignment.predecessorName ?? "the coordinator's calls only"
            logger.warning("refused hidden states for chunk \(id) from \(peer): this range takes them from \(expected)",
                           metadata: ["job": "\(job.assignment.jobID)"])
            return
        }
        // Compared as UInt64: an id with bit 63 set must not reach Int(id), which traps.
        guard !BulkTensorID.isExport(id), id < UInt64(job.assignment.chunks.count) else {
            await reportFailure(job: job, message: "\(peer) sent tensor id \(id), which is no chunk of this job")
            return
        }
        // The predecessor sends a chunk again when its link broke after the bytes had arrived.
        guard job.received.insert(Int(id)).inserted else {
            logger.info("chunk \(id) from \(peer) arrived again after a broken link; the first copy is kept",
                        metadata: ["job": "\(job.assignment.jobID)"])
            return
        }
        metrics.linkReceived(bytes: bytes.count)
        do {
            try await process(job: job, chunk: Int(id), input: bytes)
        } catch {
            if !job.isCancelled { await reportFailure(job: job, message: "chunk \(id): \(error)") }
        }
    }

    /// The link to the successor stayed down past `--link-timeout`: the coordinator re-plans without the successor.
    private func reportLinkDown(jobID: String, attempt: Int, error: WorkerError) async {
        guard case .successorUnreachable(_, let successor, _, _) = error else { return }
        do {
            try await coordinator().reportLinkDown(jobID: jobID, attempt: attempt, worker: name, successor: successor,
                                                   message: "\(error)")
        } catch {
            logger.error("could not report the broken link to the coordinator: \(error)")
        }
    }

    /// Tells the coordinator that something failed outside a call it made.
    private func reportFailure(job: ActiveRangeJob, message: String) async {
        logger.error("\(message)", metadata: ["job": "\(job.assignment.jobID)"])
        do {
            try await coordinator().reportFailure(jobID: job.assignment.jobID, attempt: job.assignment.attempt, worker: name,
                                                  message: message)
        } catch {
            logger.error("could not report the failure to the coordinator: \(error)")
        }
    }

    // MARK: Steps

    private func activeJob(_ jobID: String) throws -> ActiveRangeJob {
        guard let job, job.assignment.jobID == jobID else {
            throw WorkerError.jobNotLoaded(worker: name, jobID: jobID)
        }
        return job
    }

    private func processStored(jobID: String, chunk: Int) async throws {
        let job = try activeJob(jobID)
        do {
            try await process(job: job, chunk: chunk, input: nil, fromStore: true)
        } catch {
            if !job.isCancelled { await reportFailure(job: job, message: "kept chunk \(chunk): \(error)") }
            throw error
        }
    }

    /// Runs one chunk through the range, reports its amax, and forwards the output to the successor. A streaming
    /// range only keeps the chunk, and starts its layer-at-a-time pass once every chunk is there.
    private func process(job: ActiveRangeJob, chunk: Int, input: Data?, fromStore: Bool = false) async throws {
        await DebugHang.hangIfRequested(chunksDone: job.chunksDone) { [logger] in logger.warning("\($0)") }
        if job.compute.streams {
            if let input {
                try await compute.run { try job.compute.keep(chunk: chunk, input: input) }
                metrics.keptHiddenStates(bytes: RangeCompute.keptBytes(workerName: name, scratchDirectory: scratchDirectory))
            }
            job.collected.insert(chunk)
            if job.collected.count == job.assignment.chunks.count && !job.streamingStarted {
                job.streamingStarted = true
                startLayerAtATimePass(job)
            }
            return
        }
        let start = ContinuousClock.now
        let result = try await compute.run { try job.compute.run(chunk: chunk, input: input, fromStore: fromStore) }
        metrics.chunkLatency(seconds: secondsSince(start))
        metrics.computed(tokens: job.assignment.chunks[chunk].tokenCount, layers: result.amax.count, wholeRange: true)
        metrics.gpuMemoryInUse(bytes: job.compute.deviceMemoryInUse())
        if !job.assignment.embeddings && input != nil {
            metrics.keptHiddenStates(bytes: RangeCompute.keptBytes(workerName: name, scratchDirectory: scratchDirectory))
        }
        if chunkDelay > .zero { try await Task.sleep(for: chunkDelay) }
        if job.isCancelled { return }
        let report = ChunkReport(jobID: job.assignment.jobID, attempt: job.assignment.attempt, worker: name, chunk: chunk,
                                 sampleCount: job.assignment.chunks[chunk].sampleRange.count,
                                 tokenCount: job.assignment.chunks[chunk].tokenCount,
                                 seconds: secondsSince(start), layers: result.amax)
        if let successor = job.successor {
            // See SuccessorLink for what happens when the link breaks.
            try await successor.send(id: BulkTensorID.hiddenStates(chunk: chunk), bytes: result.output)
        }
        try await coordinator().reportChunk(report)
        job.chunksDone += 1
    }
}

/// One job's state on a worker.
// @unchecked: `cancelled` and `background` are guarded by `lock`; the other vars are touched only by the Worker
// actor, and the compute objects only on its serial queues.
final class ActiveRangeJob: @unchecked Sendable {
    let assignment: WorkerAssignment
    let compute: RangeCompute
    let successor: SuccessorLink?
    var chunksDone = 0
    /// Chunks taken from the predecessor; a chunk it sends again after a broken link is dropped.
    var received: Set<Int> = []
    /// Streaming ranges: the chunks whose input is here, and whether the pass has started.
    var collected: Set<Int> = []
    var streamingStarted = false
    private let lock = NSLock()
    private var cancelled = false
    private var background: [Task<Void, Never>] = []

    init(assignment: WorkerAssignment, compute: RangeCompute, successor: SuccessorLink?, awaitsTokenIDs: Bool = false) {
        self.assignment = assignment
        self.compute = compute
        self.successor = successor
        self.tokenIDs = awaitsTokenIDs ? .pending([]) : .arrived
    }

    /// The calibration token ids, when they travel on the data path: pending (with whoever waits for them), arrived,
    /// or refused.
    private enum TokenIDs {
        case pending([CheckedContinuation<Void, any Error>])
        case arrived
        case failed(any Error)
    }
    private var tokenIDs: TokenIDs

    /// Whether the token ids are still due from coordd.
    var awaitsTokenIDs: Bool {
        lock.withLock { if case .pending = tokenIDs { true } else { false } }
    }

    /// Returns once the token ids are in (at once when they came with the plan); throws if they were refused or the
    /// job was cancelled meanwhile.
    func tokenIDsArrived() async throws {
        try await withCheckedThrowingContinuation { (waiter: CheckedContinuation<Void, any Error>) in
            let ready: Result<Void, any Error>? = lock.withLock {
                switch tokenIDs {
                case .pending(let waiters):
                    if cancelled { return .failure(CancellationError()) }
                    tokenIDs = .pending(waiters + [waiter])
                    return nil
                case .arrived: return .success(())
                case .failed(let error): return .failure(error)
                }
            }
            if let ready { waiter.resume(with: ready) }
        }
    }

    /// The token ids arrived (`error` nil) or were refused; wakes whoever waits.
    func finishTokenIDs(_ error: (any Error)?) {
        let waiters: [CheckedContinuation<Void, any Error>] = lock.withLock {
            guard case .pending(let waiters) = tokenIDs else { return [] }
            tokenIDs = error.map { .failed($0) } ?? .arrived
            return waiters
        }
        for waiter in waiters {
            if let error { waiter.resume(throwing: error) } else { waiter.resume() }
        }
    }

    var isCancelled: Bool { lock.withLock { cancelled } }

    func cancel() {
        let tasks = lock.withLock {
            cancelled = true
            return background
        }
        for task in tasks { task.cancel() }
        finishTokenIDs(CancellationError())
    }

    func enqueueBackground(_ work: @escaping @Sendable () async throws -> Void) {
        // Unstructured: the work outlives the distributed call that starts it (a layer-at-a-time pass reports as it
        // goes); `cancel()` cancels every such task when the job stops.
        let task = Task {
            do { try await work() } catch {}
        }
        lock.withLock { background.append(task) }
    }
}

/// Free bytes on the file system holding `url`, 0 when unknown.
public func freeDiskBytes(at url: URL) -> Int64 {
    let attributes = try? FileManager.default.attributesOfFileSystem(forPath: url.path)
    return (attributes?[.systemFreeSize] as? NSNumber)?.int64Value ?? 0
}
