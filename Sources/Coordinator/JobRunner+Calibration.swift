import ActorSystem
import ClusterMetrics
import ClusterProtocol
import ClusterState
import Calibration
import Distributed
import Foundation
import LlamaModel
import Logging
import NVFP4
import SafeTensors

/// Chunk routing: sending calibration chunks through the ranges and recording what the workers report.
extension JobRunner {
    // MARK: Chunk reports

    func record(_ report: ChunkReport) throws {
        // Work of an earlier attempt (before a resume) may still arrive; its results are redone by this one.
        guard report.attempt == attemptNumber, acceptingReports, let config, let calibrationPlan else {
            logger.debug("ignoring a report of attempt \(report.attempt) from \(report.worker) (now \(attemptNumber))")
            return
        }
        guard calibrationPlan.chunks.indices.contains(report.chunk) else {
            throw CoordinatorError.chunkNotInJob(jobID: jobID, chunk: report.chunk)
        }
        // Every number a peer sends is checked against the plan before it is used (or multiplied).
        let chunk = calibrationPlan.chunks[report.chunk]
        for (field, reported, planned) in [("tokenCount", report.tokenCount, chunk.tokenCount),
                                           ("sampleCount", report.sampleCount, chunk.sampleRange.count)]
        where reported != planned {
            throw CoordinatorError.reportDoesNotMatchPlan(jobID: jobID, worker: report.worker, chunk: report.chunk,
                                                          field: field, reported: reported, planned: planned)
        }
        let range = plan.first { $0.worker == report.worker }?.range ?? 0..<config.numHiddenLayers
        for layerAmax in report.layers {
            guard (0..<config.numHiddenLayers).contains(layerAmax.layer) else {
                throw CoordinatorError.layerNotInModel(jobID: jobID, worker: report.worker, layer: layerAmax.layer)
            }
            guard range.contains(layerAmax.layer) else {
                throw CoordinatorError.reportDoesNotMatchPlan(jobID: jobID, worker: report.worker, chunk: report.chunk,
                                                              field: "layer", reported: layerAmax.layer,
                                                              planned: range.lowerBound)
            }
            // One value per observed input (fused group), as the worker measured it.
            let amax = Dictionary(uniqueKeysWithValues: FusedGroup.allCases.map { ($0.rawValue, layerAmax[$0]) })
            try store.recordChunkAmax(jobID: jobID, layer: layerAmax.layer, chunk: report.chunk,
                                      sampleCount: report.sampleCount, amax: amax)
            // The chunk that completes a layer makes its scales final (a chunk reported again counts once).
            if recorded[layerAmax.layer, default: []].insert(report.chunk).inserted,
               recorded[layerAmax.layer]?.count == calibrationPlan.chunks.count {
                MetricName.layersCalibrated.counter().increment()
            }
        }
        let layerTokens = chunk.tokenCount * report.layers.count
        layerTokensThisRun += layerTokens
        calibrationWindow.add(Double(layerTokens))
        workerWindows[report.worker, default: RateWindow()].add(Double(layerTokens))
        lastActivity = Date()
        lastProgress[report.worker] = .now
        signal(.chunkRecorded(chunk: report.chunk, worker: report.worker))
    }

    // MARK: Calibration

    func calibrate(workers: [PlannedWorker], calibrationPlan: CalibrationPlan, config: LlamaConfig) async throws {
        let chunkCount = calibrationPlan.chunks.count
        let layerCount = config.numHiddenLayers
        // GPTQ's Hessians live only in the workers' memory, one per layer over every chunk: a new attempt runs every
        // chunk through every range again (the amax values recorded before come out the same, and count once).
        recorded = submission.spec.gptq == nil ? try store.recordedChunks(jobID: jobID) : [:]
        acceptingReports = true
        calibrationStart = .now
        calibrationEnd = nil
        layerTokensThisRun = 0
        calibrationWindow.start()
        workerWindows = Dictionary(uniqueKeysWithValues: workers.map { ($0.info.name, RateWindow()) })
        for window in workerWindows.keys { workerWindows[window]!.start() }

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
        let watchdog = Task { await self.watchCalibration(workers: workers, calibrationPlan: calibrationPlan, config: config) }
        defer { watchdog.cancel() }
        if workers.count == 1 && pending > 0 {
            // One range holds every layer: a layer-at-a-time pass keeps a single layer resident.
            try await untilInterrupted { try await first.calibrateAll(jobID: self.jobID) }
            startRange = [:]
        }
        for chunk in startRange.filter({ $0.value == 0 }).map(\.key).sorted() {
            try checkInterrupted()
            let order = CalibrateOrder(jobID: jobID, chunk: chunk)
            try await untilInterrupted { try await ClusterActorSystem.withCallTimeout(timeout) { try await first.calibrate(order) } }
        }
        // Wait for the last range to report every chunk.
        try await wait {
            try checkInterrupted()
            return (0..<layerCount).allSatisfy { (recorded[$0]?.count ?? 0) == chunkCount }
        }
        for layer in 0..<layerCount {
            try store.completeLayer(jobID: jobID, layer: layer, expectedChunkCount: chunkCount)
        }
        calibrationEnd = .now
        logger.info("calibration complete: activation scales of \(layerCount) layers are final")
        try move(to: .exporting)
        calibrationDone = true
        signal(.calibrationFinished)
    }

    // MARK: Watchdog

    /// The longest a worker may go without progress while it owes some: `--progress-timeout`, plus the work between
    /// two of its reports at a slow 50 GFLOP/s (a chunk through its whole range when it pipelines, every token through
    /// one layer when it calibrates layer by layer; whichever is more).
    func progressDeadline(range: Range<Int>, calibrationPlan: CalibrationPlan, config: LlamaConfig) -> Duration {
        let parametersPerLayer = Double(Self.residentBytesPerLayer(config)) / 4
        let tokensBetweenReports = max(Double(range.count * calibrationPlan.chunkTokens), Double(calibrationPlan.tokenCount))
        let work = 2 * parametersPerLayer * tokensBetweenReports / 5e10
        return .milliseconds(Int64((settings.progressTimeoutSeconds + work) * 1000))
    }

    /// Watches the chunk reports while calibration runs. A worker owes progress while chunks wait for it (the first
    /// range always; a later one once its predecessor is ahead of it); its silence counts from its own last report
    /// or its predecessor's, whichever is later, so a worker starved by a slow predecessor is not blamed.
    func watchCalibration(workers: [PlannedWorker], calibrationPlan: CalibrationPlan, config: LlamaConfig) async {
        let chunkCount = calibrationPlan.chunks.count
        let start = ContinuousClock.now
        let attempt = attemptNumber
        for worker in workers { lastProgress[worker.info.name] = start }
        let deadlines = workers.map { progressDeadline(range: $0.assignment.range, calibrationPlan: calibrationPlan, config: config) }
        while !Task.isCancelled, attempt == attemptNumber, acceptingReports {
            try? await Task.sleep(for: .milliseconds(250))
            for (index, worker) in workers.enumerated() {
                let done = recorded[worker.assignment.range.upperBound - 1]?.count ?? 0
                guard done < chunkCount else { continue }
                let name = worker.info.name
                var since = lastProgress[name] ?? start
                if index > 0 {
                    let predecessor = workers[index - 1]
                    let ahead = recorded[predecessor.assignment.range.upperBound - 1]?.count ?? 0
                    if ahead <= done { lastProgress[name] = .now; continue }  // nothing waits for it
                    since = max(since, lastProgress[predecessor.info.name] ?? start)
                }
                let silent = ContinuousClock.now - since
                if silent > deadlines[index] {
                    let range = worker.assignment.range
                    workerHung(name, endpoint: worker.endpoint,
                               doing: "calibrating layers \(range.lowerBound)..<\(range.upperBound) (\(done) of \(chunkCount) chunks reported)",
                               seconds: Int(silent.components.seconds))
                    return
                }
            }
        }
    }

    /// A worker made no progress within its deadline: the attempt stops, and the job re-plans without it (or fails
    /// naming it and what it was doing). The worker is told to stop, in case it is only slow.
    func workerHung(_ name: String, endpoint: any WorkerEndpoint, doing: String, seconds: Int) {
        guard acceptingReports, excluded[name] == nil else { return }
        let failure = JobFailure.workerHung(worker: name, doing: doing, seconds: seconds)
        logger.error("\(failure)")
        excluded[name] = "made no progress for \(seconds) s while \(doing)"
        workerFailure = (name, failure.description)
        signal(.workerFailed(name))
        let jobID = self.jobID
        Task {
            try? await ClusterActorSystem.withCallTimeout(.seconds(5)) { try await endpoint.cancel(jobID: jobID, discardState: false) }
        }
    }

    /// Returns never: throws what interrupts the attempt, once something does.
    func waitUntilInterrupted() async throws {
        try await wait {
            try checkInterrupted()
            return false
        }
    }

    /// Runs `operation` (a call to a worker), but gives up as soon as the attempt is interrupted (a worker lost, hung
    /// or failed; cancel; shutdown), throwing why, instead of waiting for an answer that may never come.
    func untilInterrupted<T: Sendable>(_ operation: @escaping @Sendable () async throws -> T) async throws -> T {
        try await withThrowingTaskGroup(of: T?.self) { group in
            group.addTask { try await operation() }
            group.addTask {
                try await self.waitUntilInterrupted()
                return nil
            }
            defer { group.cancelAll() }
            while let result = try await group.next() {
                if let value = result { return value }
            }
            throw CancellationError()
        }
    }
}
