import ActorSystem
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
            recorded[layerAmax.layer, default: []].insert(report.chunk)
        }
        layerTokensThisRun += chunk.tokenCount * report.layers.count
        signal(.chunkRecorded(chunk: report.chunk, worker: report.worker))
    }

    // MARK: Calibration

    func calibrate(workers: [PlannedWorker], calibrationPlan: CalibrationPlan, config: LlamaConfig) async throws {
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
        try await wait {
            try checkInterrupted()
            return (0..<layerCount).allSatisfy { (recorded[$0]?.count ?? 0) == chunkCount }
        }
        for layer in 0..<layerCount {
            try store.completeLayer(jobID: jobID, layer: layer, expectedChunkCount: chunkCount)
        }
        logger.info("calibration complete: activation scales of \(layerCount) layers are final")
        try move(to: .exporting)
        calibrationDone = true
        signal(.calibrationFinished)
    }
}
