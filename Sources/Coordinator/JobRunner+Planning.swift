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
import Transport

/// Planning and recovery: which worker holds which layers, waiting for lost workers and re-planning around them,
/// and loading the plan onto the workers.
extension JobRunner {
    // MARK: Planning

    func deadPlannedWorkers() async -> [String] {
        var dead: [String] = []
        for entry in plan {
            let registered = await registry.info(entry.worker) != nil
            if !registered || excluded[entry.worker] != nil { dead.append(entry.worker) }
        }
        return dead
    }

    /// The stored plan when all its workers are live; otherwise waits for enough workers and plans anew.
    func ensurePlan(layerCount: Int) async throws -> [LayerAssignment] {
        let stored = try store.plan(jobID: jobID)
        let deadline = ContinuousClock.now + .seconds(settings.workerGraceSeconds)
        defer { waitingFor = nil }
        while true {
            try checkInterrupted()
            let generation = await registry.generation
            let live = await registry.liveWorkers().filter { excluded[$0.name] == nil }
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
            let left = Int((deadline - ContinuousClock.now).components.seconds)
            if stored.isEmpty {
                waitingFor = "\(wanted) worker(s) to register (\(live.count) live; up to \(left) s more)"
            } else {
                let missing = stored.map(\.worker).filter { !liveNames.contains($0) }
                waitingFor = "planned worker(s) \(missing.joined(separator: ", ")) to come back (up to \(left) s more)"
            }
            await registry.waitForChange(after: generation, timeout: deadline - ContinuousClock.now)
        }
    }

    /// Waits for lost workers to come back; after the grace period hands their ranges to neighbours.
    func recoverPlan(dead: [String]) async throws {
        // A worker its predecessor cannot reach is alive: waiting for it to come back is pointless.
        let deadline = Set(dead).isSubset(of: excluded.keys)
            ? ContinuousClock.now : ContinuousClock.now + .seconds(settings.workerGraceSeconds)
        if ContinuousClock.now < deadline {
            waitingFor = "lost worker(s) \(dead.joined(separator: ", ")) to come back (up to \(Int(settings.workerGraceSeconds)) s, then re-planning)"
        }
        defer { waitingFor = nil }
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
        let live = await registry.liveWorkers().filter { excluded[$0.name] == nil }
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

    struct PlannedWorker {
        let assignment: LayerAssignment
        let info: WorkerInfo
        let endpoint: any WorkerEndpoint
    }

    func resolveWorkers() async throws -> [PlannedWorker] {
        var result: [PlannedWorker] = []
        for entry in plan {
            guard let info = await registry.info(entry.worker) else {
                throw JobFailure.workerNotRegistered(worker: entry.worker)
            }
            result.append(PlannedWorker(assignment: entry, info: info, endpoint: try endpoint(of: info)))
        }
        return result
    }

    func endpoint(of info: WorkerInfo) throws -> any WorkerEndpoint {
        if let local = localWorkers[info.name] { return local }
        return try $WorkerEndpoint.resolve(id: system.wellKnownID(WellKnownActor.worker, at: info.address, node: info.name),
                                           using: system)
    }

    /// Sends the calibration token ids to the worker that embeds, on a data-path connection of their own, and waits
    /// until it acknowledges them whole.
    static func sendTokenIDs(_ bytes: Data, to worker: WorkerInfo, system: ClusterActorSystem) async throws {
        let transport = try await system.openBulkTransport(
            to: ClusterEndpoint(host: worker.address.host, port: worker.address.port, node: worker.name))
        defer { Task { await transport.connection.close() } }
        let acknowledgements = transport.acknowledgements()
        try await transport.sendTensor(id: BulkTensorID.tokenIDs, data: bytes)
        for try await acknowledgement in acknowledgements where acknowledgement.id == BulkTensorID.tokenIDs {
            guard acknowledgement.byteCount == bytes.count else {
                throw TransportError.bulkTransferFailed(
                    tensorID: BulkTensorID.tokenIDs,
                    reason: "\(worker.name) took \(acknowledgement.byteCount) bytes of token ids, not \(bytes.count)")
            }
            return
        }
        throw TransportError.connectionClosed(peer: worker.name)
    }

    func load(workers: [PlannedWorker], calibrationPlan: CalibrationPlan) async throws {
        let spec = submission.spec
        let timeout = Duration.seconds(settings.computeCallTimeoutSeconds)
        try await withThrowingTaskGroup(of: LoadReport.self) { group in
            for (index, worker) in workers.enumerated() {
                let next = index + 1 < workers.count ? workers[index + 1] : nil
                let previous = index > 0 ? workers[index - 1] : nil
                // A remote worker gets the plan without token ids; the one that embeds gets them on the data path.
                let remote = localWorkers[worker.info.name] == nil
                var assignment = WorkerAssignment(
                    jobID: jobID, attempt: attemptNumber, spec: spec, firstLayer: worker.assignment.range.lowerBound,
                    endLayer: worker.assignment.range.upperBound, embeddings: worker.assignment.embeddings,
                    successor: next?.info.address, successorName: next?.info.name,
                    predecessorName: previous?.info.name, plan: remote ? calibrationPlan.withoutTokenIDs() : calibrationPlan,
                    fingerprint: submission.fingerprint?.digest)
                let sendsTokens = remote && assignment.embeddings && !calibrationPlan.chunks.isEmpty
                assignment.tokenIDsOnDataPath = sendsTokens
                let endpoint = worker.endpoint
                let info = worker.info
                let system = self.system
                group.addTask {
                    let report = try await ClusterActorSystem.withCallTimeout(timeout) { try await endpoint.loadLayers(assignment) }
                    if sendsTokens {
                        try await Self.sendTokenIDs(calibrationPlan.tokenIDBytes(), to: info, system: system)
                    }
                    return report
                }
            }
            var devices: [String] = []
            for try await report in group {
                if !devices.contains(report.device) { devices.append(report.device) }
                loadedDevices[report.worker] = report.device
                logger.info("worker loaded its range", metadata: ["worker": "\(report.worker)", "layers": "\(report.layers)",
                                                                  "seconds": "\(String(format: "%.1f", report.seconds))"])
            }
            deviceLabel = devices.sorted().joined(separator: ", ")
            lastActivity = Date()
        }
    }
}
