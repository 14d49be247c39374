import ActorSystem
import Checkpoint
import ClusterProtocol
import ClusterState
import Coordinator
import Distributed
import Foundation
import LlamaModel
import Logging
import NVFP4
import QuantizeJob
import SafeTensors
import Testing
import Transport

/// The coordinator's job runner in process, against a fake worker endpoint that misbehaves on purpose: what it does
/// with a duplicated chunk report, a damaged export, a cancel mid-calibration and a worker lost mid-export.
@Suite(.serialized) struct JobRunnerTests {
    enum Behaviour: Sendable {
        case normal
        /// Every chunk report arrives twice.
        case reportsTwice
        /// Layer `layer`'s first tensor is announced with a SHA-256 its bytes do not have.
        case damagesExport(layer: Int)
        /// Sends layer L's tensors without their SHA-256, as only an in-process worker may.
        case omitsDigests(layer: Int)
        /// Calibration reports layer 0 and then waits until the job is cancelled.
        case stallsAfterLayer0
        /// The connection drops while layer `layer` is being exported.
        case lostDuringExport(layer: Int)
        /// Reports a token count near Int.max for every chunk (a lying or broken peer).
        case misreportsTokenCount
        /// The connection drops after the first chunk's report of layer 0.
        case lostDuringCalibration
        /// Layer `layer`'s manifest leaves out the layer's last tensor.
        case omitsTensor(layer: Int)
        /// The call of that phase (loadLayers, exportLayer or evaluateQuality) waits until the job is cancelled.
        case stallsWhile(JobState)
        /// Asked for the quality report, it cannot read the staged checkpoint (no shared storage with coordd).
        case cannotSeeCheckpoint
        /// Asked for the quality report of the checkpoint coordd staged, it reports these perplexities.
        case reportsQuality(original: Double, quantized: Double)
    }

    /// A worker that holds every layer: it reports made-up activation amax (1.5 for every input) and exports with the
    /// real exporter, delivering the tensors straight to the coordinator as the data path would.
    distributed actor FakeWorker: WorkerEndpoint {
        typealias ActorSystem = ClusterActorSystem

        let name: String
        let behaviour: Behaviour
        let coordinator: Coordinator
        private var assignment: WorkerAssignment?
        private var cancelled = false

        init(actorSystem: ClusterActorSystem, name: String, behaviour: Behaviour, coordinator: Coordinator) {
            self.actorSystem = actorSystem
            self.name = name
            self.behaviour = behaviour
            self.coordinator = coordinator
        }

        distributed func loadLayers(_ assignment: WorkerAssignment) async throws -> LoadReport {
            self.assignment = assignment
            try await stallIf(.loading)
            return LoadReport(worker: name, layers: assignment.range.count, seconds: 0, device: "fake")
        }

        distributed func calibrate(_ order: CalibrateOrder) async throws {
            try await report(chunk: order.chunk, layers: Array(try loaded().range))
        }

        distributed func calibrateAll(jobID: String) async throws {
            let assignment = try loaded()
            if case .stallsAfterLayer0 = behaviour {
                for chunk in assignment.chunks.indices { try await report(chunk: chunk, layers: [0]) }
                while !cancelled { try await Task.sleep(for: .milliseconds(20)) }
                return
            }
            if case .lostDuringCalibration = behaviour {
                try await report(chunk: 0, layers: [0])
                await coordinator.whenLocal { await $0.peerDisconnected(name: "fake", reason: "connection reset by the test") }
                throw ClusterActorSystemError.peerDisconnected(peer: name, endpoint: "fake", reason: "connection reset")
            }
            for chunk in assignment.chunks.indices { try await report(chunk: chunk, layers: Array(assignment.range)) }
        }

        /// Waits for the job's cancel when the behaviour stalls in `phase`, then fails the call as a stopped worker would.
        private func stallIf(_ phase: JobState) async throws {
            guard case .stallsWhile(let stalling) = behaviour, stalling == phase else { return }
            while !cancelled { try await Task.sleep(for: .milliseconds(20)) }
            throw WorkerError.jobNotLoaded(worker: name, jobID: assignment?.jobID ?? "?")
        }

        distributed func replayStoredChunks(jobID: String, chunks: [Int]) async throws -> [Int] { [] }

        distributed func storedChunks(jobID: String) async throws -> [Int] { [] }

        distributed func exportLayer(_ request: ExportRequest) async throws -> ExportManifest {
            let assignment = try loaded()
            if case .lostDuringExport(let layer) = behaviour, layer == request.layer {
                await coordinator.whenLocal { await $0.peerDisconnected(name: "fake", reason: "connection reset by the test") }
                throw ClusterActorSystemError.peerDisconnected(peer: name, endpoint: "fake", reason: "connection reset")
            }
            try await stallIf(.exporting)
            let spec = assignment.spec
            let config = try ModelDirectory(spec.modelDirectory).loadConfig()
            let exporter = try LayerExporter(spec: spec, config: config, source: try SafeTensorsModel(directory: spec.modelPath))
            let tensors = try exporter.export(layer: request.layer, activationAmax: request.activationAmax)
            var entries: [ExportManifest.Entry] = []
            for (index, tensor) in tensors.enumerated() {
                let id = BulkTensorID.exportedTensor(layer: request.layer, index: index)
                var sha256 = tensor.sha256
                if case .damagesExport(let layer) = behaviour, layer == request.layer, index == 0 {
                    sha256 = String(repeating: "0", count: 64)
                }
                if case .omitsDigests(let layer) = behaviour, layer == request.layer { sha256 = nil }
                entries.append(ExportManifest.Entry(name: tensor.name, dtype: tensor.dtype.rawValue, shape: tensor.shape,
                                                    byteCount: tensor.data.count, sha256: sha256, bulkID: id))
                let bytes = tensor.data
                await coordinator.whenLocal { await $0.receiveExportedTensor(from: "fake", id: id, bytes: bytes) }
            }
            if case .omitsTensor(let layer) = behaviour, layer == request.layer { entries.removeLast() }
            return ExportManifest(layer: request.layer, entries: entries)
        }

        distributed func evaluateQuality(_ request: QualityRequest) async throws -> QualityReport {
            try await stallIf(.evaluating)
            switch behaviour {
            case .cannotSeeCheckpoint:
                throw WorkerError.checkpointNotVisible(worker: name, path: request.checkpointPath, reason: "no such directory")
            case .reportsQuality(let original, let quantized):
                // The request must name the verified checkpoint as staged, fingerprint included.
                let found = try CheckpointFingerprint.of(directory: URL(fileURLWithPath: request.checkpointPath))
                guard found == request.fingerprint, request.checkpointPath.contains(".partial-") else {
                    throw WorkerError.checkpointNotVisible(worker: name, path: request.checkpointPath, reason: "fingerprint differs")
                }
                return QualityReport(samples: 4, tokens: 100, predictedTokens: 96, originalPerplexity: original,
                                     quantizedPerplexity: quantized, scheme: request.spec.scheme, layout: request.spec.layout)
            default:
                throw WorkerError.badSetting(worker: name, option: "evaluateQuality", reason: "is not expected in this test")
            }
        }

        distributed func status() async throws -> WorkerStatusReport {
            WorkerStatusReport(name: name, device: "fake", jobID: assignment?.jobID, range: nil, chunksDone: 0, freeDiskBytes: 0)
        }

        distributed func cancel(jobID: String, discardState: Bool) async throws { cancelled = true }
        /// Keeps no hidden states on disk, so there is never anything to collect.
        distributed func collectGarbage(keep: [String]) async throws -> [String] { [] }

        private func loaded() throws -> WorkerAssignment {
            guard let assignment else { throw WorkerError.jobNotLoaded(worker: name, jobID: "?") }
            return assignment
        }

        private func behaviourTokenCount(_ planned: Int) -> Int {
            if case .misreportsTokenCount = behaviour { return Int.max / 2 }
            return planned
        }

        private func report(chunk: Int, layers: [Int]) async throws {
            let assignment = try loaded()
            let one = ActivationAmax(1.5)
            let report = ChunkReport(jobID: assignment.jobID, attempt: assignment.attempt, worker: name, chunk: chunk,
                                     sampleCount: assignment.chunks[chunk].sampleRange.count,
                                     tokenCount: behaviourTokenCount(assignment.chunks[chunk].tokenCount), seconds: 0,
                                     layers: layers.map { LayerAmax(layer: $0, qkv: one, o: one, gateUp: one, down: one) })
            try await coordinator.reportChunk(report)
            if case .reportsTwice = behaviour { try await coordinator.reportChunk(report) }
        }
    }

    struct Run {
        let status: JobStatus
        let store: ClusterStateStore
        let parent: URL
        let output: URL
    }

    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")

    /// Runs a W4A4 job on the tiny fixture with a `FakeWorker` of `behaviour`; `whileRunning` may act on the job.
    func run(_ behaviour: Behaviour, in parent: URL, evaluationSamples: Int = 0,
             whileRunning: @Sendable (Coordinator, String) async throws -> Void = { _, _ in }) async throws -> Run {
        let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
        let store = try ClusterStateStore(stateDirectory: parent.appendingPathComponent("state").path)
        let system = try await ClusterActorSystem.start(identity: NodeIdentity(name: "coordd-test", role: .coordinator),
                                                        listen: nil as NodeAddress?, token: nil,
                                                        configuration: TransportConfiguration(), logger: logger)
        var settings = CoordinatorSettings()
        settings.workerGraceSeconds = 0.3
        let coordinator = Coordinator(actorSystem: system, store: store, settings: settings, logger: logger)
        let worker = FakeWorker(actorSystem: system, name: "fake", behaviour: behaviour, coordinator: coordinator)
        try await coordinator.whenLocal {
            try await $0.addLocalWorker(worker, info: WorkerInfo(name: "fake", address: NodeAddress(host: "127.0.0.1", port: 0),
                                                                 device: "fake", memoryBytes: 1 << 30, freeDiskBytes: 1 << 30,
                                                                 softwareVersion: "test"))
        }
        let output = parent.appendingPathComponent("OUT")
        var options = QuantizeOptions(modelDirectory: Self.fixtures.appendingPathComponent("tiny-llama"), outputDirectory: output)
        options.scheme = .nvfp4
        options.evaluationSamples = evaluationSamples
        options.calibration.dataPath = Self.fixtures.appendingPathComponent("tiny-llama-calib.jsonl").path
        options.calibration.selection.minTokens = 1
        options.calibration.chunkTokens = 64
        let jobID = try await coordinator.submit(JobSubmission(spec: try JobSpec(options: options), workerCount: 1))
        try await whileRunning(coordinator, jobID)
        var status = try await coordinator.status(jobID: jobID)
        let deadline = ContinuousClock.now + .seconds(60)
        while !status.phase.isTerminal, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
            status = try await coordinator.status(jobID: jobID)
        }
        await system.shutdown()
        return Run(status: status, store: store, parent: parent, output: output)
    }

    func withDirectory<R>(_ body: (URL) async throws -> R) async throws -> R {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("jobrunner-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: url) }
        return try await body(url)
    }

    func entries(_ parent: URL) throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: parent.path).filter { $0.hasPrefix("OUT") }.sorted()
    }

    @Test func aWellBehavedWorkerGivesAVerifiedCheckpoint() async throws {
        try await withDirectory { parent in
            let run = try await run(.normal, in: parent)
            #expect(run.status.state == .succeeded, "\(run.status.failureReason ?? "")")
            #expect(try entries(parent) == ["OUT"])
            // Every stored scale is the one amax 1.5 gives: f32(1 / f32(1.5 / 2688)).
            let written = try SafeTensorsModel(directory: run.output.path)
            let expected = InputScale(ActivationAmax(1.5)).globalScale
            let name = "model.layers.1.mlp.down_proj.input_global_scale"
            let stored = try written.withBytes(name) { Float(bitPattern: UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self))) }
            #expect(stored.bitPattern == expected.bitPattern)
        }
    }

    @Test func aChunkReportedTwiceCountsOnce() async throws {
        try await withDirectory { parent in
            let run = try await run(.reportsTwice, in: parent)
            #expect(run.status.state == .succeeded, "\(run.status.failureReason ?? "")")
            #expect(run.status.samplesThrough.values.first == 8, "each of the 8 samples counted once")
            #expect(try run.store.layerAmaxRecords(jobID: run.status.jobID).count == 8)
        }
    }

    @Test func aDamagedExportFailsTheJobNamingLayerAndTensorAndLeavesNothing() async throws {
        try await withDirectory { parent in
            let run = try await run(.damagesExport(layer: 1), in: parent)
            #expect(run.status.state == .failed)
            let reason = run.status.failureReason ?? ""
            #expect(reason.contains("layer 1") && reason.contains("SHA-256"), "\(reason)")
            #expect(try entries(parent) == [], "neither OUT nor OUT.partial-* may remain")
        }
    }

    /// A worker in coordd's process (this fake is one) hands over tensors without their SHA-256; the checkpoint is
    /// still checked and written whole. (From another process that fails the job: ExportDigestTests.)
    @Test func anInProcessWorkersTensorsNeedNoDigest() async throws {
        try await withDirectory { parent in
            let run = try await run(.omitsDigests(layer: 1), in: parent)
            #expect(run.status.state == .succeeded, "\(run.status.failureReason ?? "")")
            let written = try SafeTensorsModel(directory: run.output.path)
            #expect(written.tensorNames.contains { $0.hasPrefix("model.layers.1.") })
        }
    }

    @Test func cancelDuringCalibrationEndsTheJobWithoutOutput() async throws {
        try await withDirectory { parent in
            let run = try await run(.stallsAfterLayer0, in: parent) { coordinator, jobID in
                // Cancel once calibration is under way (the fake has reported layer 0 and waits).
                while try await coordinator.status(jobID: jobID).phase != .calibrating {
                    try await Task.sleep(for: .milliseconds(20))
                }
                try await Task.sleep(for: .milliseconds(200))
                _ = try await coordinator.cancel(jobID: jobID)
            }
            #expect(run.status.state == .cancelled)
            #expect(try entries(parent) == [])
        }
    }

    @Test func aWorkerLostDuringExportFailsTheJobNamingIt() async throws {
        try await withDirectory { parent in
            let run = try await run(.lostDuringExport(layer: 1), in: parent)
            #expect(run.status.state == .failed)
            #expect((run.status.failureReason ?? "").contains("fake"), "\(run.status.failureReason ?? "")")
            #expect(try entries(parent) == [])
        }
    }

    @Test func aCheckpointNoWorkerCanReadFailsTheJobSayingWhatToDo() async throws {
        try await withDirectory { parent in
            let run = try await run(.cannotSeeCheckpoint, in: parent, evaluationSamples: 4)
            #expect(run.status.state == .failed)
            let reason = run.status.failureReason ?? ""
            #expect(reason.contains("no worker of the job can read the checkpoint") && reason.contains("fake")
                    && reason.contains("--eval-samples 0"), "\(reason)")
            #expect(try entries(parent) == [])
        }
    }

    @Test func theGateJudgesTheReportAWorkerMeasured() async throws {
        try await withDirectory { parent in
            let run = try await run(.reportsQuality(original: 10, quantized: 11), in: parent, evaluationSamples: 4)
            #expect(run.status.state == .succeeded, "\(run.status.failureReason ?? "")")
            #expect(run.status.quality?.gate == .passed)
            #expect(run.status.quality?.quantizedPerplexity == 11)
            #expect(try entries(parent) == ["OUT"])
        }
        try await withDirectory { parent in
            let run = try await run(.reportsQuality(original: 10, quantized: 1e37), in: parent, evaluationSamples: 4)
            #expect(run.status.state == .failed)
            #expect((run.status.failureReason ?? "").contains("quality gate failed"), "\(run.status.failureReason ?? "")")
            #expect(run.status.quality?.gate == .failed)
            // The rejected checkpoint stays for inspection, never at the output path.
            #expect(try entries(parent).count == 1 && entries(parent)[0].hasPrefix("OUT.partial-"))
        }
    }

    @Test func aWorkerLostDuringCalibrationFailsTheJobNamingIt() async throws {
        try await withDirectory { parent in
            let run = try await run(.lostDuringCalibration, in: parent)
            #expect(run.status.state == .failed)
            #expect((run.status.failureReason ?? "").contains("fake"), "\(run.status.failureReason ?? "")")
            #expect(try entries(parent) == [])
        }
    }

    @Test func aManifestWithoutAPlannedTensorFailsTheJobNamingIt() async throws {
        try await withDirectory { parent in
            let run = try await run(.omitsTensor(layer: 0), in: parent)
            #expect(run.status.state == .failed)
            let reason = run.status.failureReason ?? ""
            #expect(reason.contains("layer 0 lacks") && reason.contains("model.layers.0.mlp."), "\(reason)")
            #expect(try entries(parent) == [])
        }
    }

    @Test(arguments: [JobState.loading, .exporting, .evaluating])
    func cancelWhileAWorkerComputesEndsTheJobWithoutOutput(phase: JobState) async throws {
        try await withDirectory { parent in
            let run = try await run(.stallsWhile(phase), in: parent, evaluationSamples: 4) { coordinator, jobID in
                while try await coordinator.status(jobID: jobID).phase != phase {
                    try await Task.sleep(for: .milliseconds(20))
                }
                try await Task.sleep(for: .milliseconds(100))
                _ = try await coordinator.cancel(jobID: jobID)
            }
            #expect(run.status.state == .cancelled, "\(run.status.failureReason ?? "")")
            #expect(try entries(parent) == [])
        }
    }

    @Test func aReportWhoseNumbersAreNotThePlansFailsTheJobInsteadOfTrapping() async throws {
        try await withDirectory { parent in
            let run = try await run(.misreportsTokenCount, in: parent)
            #expect(run.status.state == .failed)
            let reason = run.status.failureReason ?? ""
            #expect(reason.contains("tokenCount") && reason.contains("the plan has"), "\(reason)")
            #expect(try entries(parent) == [])
        }
    }
}
