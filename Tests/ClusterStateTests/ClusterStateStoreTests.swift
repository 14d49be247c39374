import Foundation
import GRDB
import NVFP4
import Testing
@testable import ClusterState

/// A clock tests can move. (NSLock rather than Mutex: the package still targets macOS 14.)
final class TestClock: @unchecked Sendable {
    private let lock = NSLock()
    private var current = Date(timeIntervalSince1970: 1_800_000_000)
    func now() -> Date { lock.withLock { current } }
    func advance(seconds: TimeInterval) { lock.withLock { current += seconds } }
}

/// A fresh state directory, removed when the test ends.
final class TemporaryStateDirectory {
    let path: String
    init() throws {
        path = FileManager.default.temporaryDirectory
            .appendingPathComponent("coordinator-tests-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
}

struct TestOptions: Codable, Equatable {
    var scheme: String
    var samples: Int
}

private func open(_ directory: TemporaryStateDirectory, clock: TestClock = TestClock()) throws -> ClusterStateStore {
    try ClusterStateStore(stateDirectory: directory.path, now: { clock.now() })
}

/// Registers worker `name` with test values.
@discardableResult
private func register(_ name: String, memory: Int64 = 1 << 30, in store: ClusterStateStore) throws -> WorkerRecord {
    try store.registerWorker(name: name, address: "10.0.0.\(name.count):7000", device: "H200", memoryBytes: memory,
                             freeDiskBytes: 1 << 40, softwareVersion: "0.3.0")
}

/// A job in `calibrating` with workers a (layers 0..<2, embeddings) and b (2..<4).
private func calibratingJob(_ store: ClusterStateStore, id: String = "job-1") throws -> String {
    try store.createJob(modelPath: "/models/llama", outputPath: "/out/llama-nvfp4",
                        options: TestOptions(scheme: "w4a4", samples: 8), configHash: "cafe", id: id)
    try register("a", in: store)
    try register("b", in: store)
    try store.savePlan(jobID: id, plan: [LayerAssignment(worker: "a", range: 0 ..< 2, embeddings: true),
                                         LayerAssignment(worker: "b", range: 2 ..< 4, embeddings: false)])
    try store.updateJobState(jobID: id, to: .loading)
    try store.updateJobState(jobID: id, to: .calibrating)
    return id
}

private func layerModules(_ layer: Int) -> [String] {
    ["model.layers.\(layer).self_attn.q_proj", "model.layers.\(layer).self_attn.o_proj"]
}

@Suite("ClusterStateStore")
struct ClusterStateStoreTests {
    @Test func stateIsWrittenWithSynchronousFull() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("state-sync-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: directory) }
        let store = try ClusterStateStore(stateDirectory: directory.path)
        // 2 is FULL, on the writer and on readers alike.
        #expect(try store.pool.write { try Int.fetchOne($0, sql: "PRAGMA synchronous") } == 2)
        #expect(try store.pool.read { try Int.fetchOne($0, sql: "PRAGMA synchronous") } == 2)
        try store.close()
    }

    @Test func createsListsAndMovesJobsThroughTheirPhases() throws {
        let directory = try TemporaryStateDirectory()
        let clock = TestClock()
        let store = try open(directory, clock: clock)
        let first = try store.createJob(modelPath: "/m/a", outputPath: "/o/a",
                                        options: TestOptions(scheme: "w4a4", samples: 512), configHash: "h1")
        #expect(first.state == .queued)
        #expect(first.optionsJSON == #"{"samples":512,"scheme":"w4a4"}"#)
        #expect(try first.decodeOptions(as: TestOptions.self) == TestOptions(scheme: "w4a4", samples: 512))
        clock.advance(seconds: 1)
        let second = try store.createJob(modelPath: "/m/b", outputPath: "/o/b",
                                         options: TestOptions(scheme: "w4a16", samples: 0), configHash: "h2", id: "two")
        #expect(try store.listJobs().map(\.id) == [first.id, "two"])

        clock.advance(seconds: 5)
        for phase in [JobState.loading, .calibrating, .exporting, .merging, .succeeded] {
            #expect(try store.updateJobState(jobID: first.id, to: phase).state == phase)
        }
        let done = try #require(try store.job(id: first.id))
        #expect(done.state == .succeeded && done.failureReason == nil)
        #expect(done.updatedAt == clock.now() && done.createdAt < done.updatedAt)
        try store.updateJobState(jobID: second.id, to: .failed, reason: "model config has no num_hidden_layers")
        #expect(try store.job(id: "two")?.failureReason == "model config has no num_hidden_layers")
        #expect(try store.job(id: "missing") == nil)
        #expect(throws: ClusterStateError.jobAlreadyExists("two")) {
            try store.createJob(modelPath: "/m", outputPath: "/o", options: TestOptions(scheme: "", samples: 0),
                                configHash: "", id: "two")
        }
    }

    @Test func invalidTransitionsThrowAndTerminalStatesAreFinal() throws {
        let directory = try TemporaryStateDirectory()
        let store = try open(directory)
        let job = try store.createJob(modelPath: "/m", outputPath: "/o", options: [String: String](), configHash: "h")
        let error = #expect(throws: ClusterStateError.invalidTransition(jobID: job.id, from: .queued, to: .succeeded)) {
            try store.updateJobState(jobID: job.id, to: .succeeded)
        }
        #expect(error?.description.contains("cannot move from queued to succeeded") == true)
        #expect(throws: ClusterStateError.invalidTransition(jobID: job.id, from: .queued, to: .queued)) {
            try store.updateJobState(jobID: job.id, to: .queued)
        }
        #expect(throws: ClusterStateError.missingFailureReason(jobID: job.id)) {
            try store.updateJobState(jobID: job.id, to: .failed)
        }
        #expect(throws: ClusterStateError.missingFailureReason(jobID: job.id)) {
            try store.updateJobState(jobID: job.id, to: .failed, reason: "  ")
        }
        #expect(throws: ClusterStateError.reasonNotAllowed(jobID: job.id, state: .loading)) {
            try store.updateJobState(jobID: job.id, to: .loading, reason: "why")
        }
        #expect(try store.job(id: job.id)?.state == .queued)
        try store.updateJobState(jobID: job.id, to: .cancelled, reason: "user asked")
        for next in JobState.allCases {
            #expect(throws: ClusterStateError.invalidTransition(jobID: job.id, from: .cancelled, to: next)) {
                try store.updateJobState(jobID: job.id, to: next, reason: next == .failed ? "x" : nil)
            }
        }
        #expect(try store.job(id: job.id)?.failureReason == "user asked")
        #expect(throws: ClusterStateError.jobNotFound("nope")) { try store.updateJobState(jobID: "nope", to: .loading) }
    }

    @Test func everythingSurvivesClosingAndReopening() throws {
        let directory = try TemporaryStateDirectory()
        let clock = TestClock()
        let store = try open(directory, clock: clock)
        let id = try calibratingJob(store)
        let queued = try store.createJob(modelPath: "/m2", outputPath: "/o2", options: ["k": "v"], configHash: "h2")
        try store.recordChunkAmax(jobID: id, layer: 0, chunk: 0, sampleCount: 4,
                                  amax: ["model.layers.0.self_attn.q_proj": 3.25])
        let jobsBefore = try store.listJobs()
        let statusBefore = try store.status(jobID: id)
        try store.close()

        let reopened = try open(directory, clock: clock)
        #expect(try reopened.listJobs() == jobsBefore)
        #expect(try reopened.job(id: queued.id)?.state == .queued)
        #expect(try reopened.plan(jobID: id).map(\.range) == [0 ..< 2, 2 ..< 4])
        #expect(try reopened.status(jobID: id) == statusBefore)
        #expect(try reopened.activationAmax(jobID: id) == [0: ["model.layers.0.self_attn.q_proj": 3.25]])
        #expect(try reopened.listWorkers().map(\.name) == ["a", "b"])
        #expect(try reopened.runningJobs().map(\.id) == [id])
    }

    @Test func chunkAmaxMergesByMaxAndRetriesDoNotDoubleCount() throws {
        let directory = try TemporaryStateDirectory()
        let store = try open(directory)
        let id = try calibratingJob(store)
        let (q, o) = (layerModules(0)[0], layerModules(0)[1])
        #expect(try store.recordChunkAmax(jobID: id, layer: 0, chunk: 0, sampleCount: 4, amax: [q: 1.5, o: 0.5])
                == .recorded)
        #expect(try store.recordChunkAmax(jobID: id, layer: 0, chunk: 1, sampleCount: 3, amax: [q: 2.5, o: 0.25])
                == .recorded)
        // The retry of chunk 1 (whole or in part) changes nothing.
        #expect(try store.recordChunkAmax(jobID: id, layer: 0, chunk: 1, sampleCount: 3, amax: [q: 2.5, o: 0.25])
                == .alreadyRecorded)
        #expect(try store.recordChunkAmax(jobID: id, layer: 0, chunk: 1, sampleCount: 3, amax: [o: 0.25])
                == .alreadyRecorded)
        #expect(try store.activationAmax(jobID: id) == [0: [q: 2.5, o: 0.5]])
        #expect(try store.layerProgress(jobID: id).map(\.samplesDone) == [7])

        // A retry that reports different values merges by max (q's lower 2.0 does not replace 2.5); it still
        // counts the chunk's samples once.
        #expect(try store.recordChunkAmax(jobID: id, layer: 0, chunk: 1, sampleCount: 3, amax: [q: 2.0, o: 0.75])
                == .recorded)
        #expect(try store.activationAmax(jobID: id) == [0: [q: 2.5, o: 0.75]])
        #expect(try store.layerProgress(jobID: id).map(\.samplesDone) == [7])

        let conflict = #expect(throws: ClusterStateError.chunkConflict(jobID: id, layer: 0, chunk: 1,
                                                                     reason: "sample count was 3, now 5")) {
            try store.recordChunkAmax(jobID: id, layer: 0, chunk: 1, sampleCount: 5, amax: [q: 2.5])
        }
        #expect(conflict?.description.contains("layer 0 chunk 1") == true)
    }

    @Test func recordedChunksListWhatAResumeMaySkip() throws {
        let directory = try TemporaryStateDirectory()
        let id: String
        do {
            let store = try open(directory)
            id = try calibratingJob(store)
            #expect(try store.recordedChunks(jobID: id).isEmpty)
            try store.recordChunkAmax(jobID: id, layer: 0, chunk: 0, sampleCount: 2, amax: [layerModules(0)[0]: 1])
            try store.recordChunkAmax(jobID: id, layer: 0, chunk: 2, sampleCount: 2, amax: [layerModules(0)[0]: 1])
            try store.recordChunkAmax(jobID: id, layer: 2, chunk: 0, sampleCount: 2, amax: [layerModules(2)[0]: 1])
            try store.close()
        }
        // After a restart (a fresh store on the same directory) the same chunks are known.
        let reopened = try open(directory)
        #expect(try reopened.recordedChunks(jobID: id) == [0: [0, 2], 2: [0]])
        #expect(throws: ClusterStateError.jobNotFound("nope")) { try reopened.recordedChunks(jobID: "nope") }
    }

    @Test func badChunkReportsAreRefusedNamingTheField() throws {
        let directory = try TemporaryStateDirectory()
        let store = try open(directory)
        let id = try calibratingJob(store)
        let q = layerModules(0)[0]
        let nan = #expect(throws: ClusterStateError.self) {
            try store.recordChunkAmax(jobID: id, layer: 0, chunk: 0, sampleCount: 1, amax: [q: ActivationAmax(.nan)])
        }
        #expect(nan?.description.contains(q) == true)
        #expect(throws: ClusterStateError.invalidAmax(jobID: id, layer: 0, chunk: 0, input: q, value: -1)) {
            try store.recordChunkAmax(jobID: id, layer: 0, chunk: 0, sampleCount: 1, amax: [q: -1])
        }
        #expect(throws: ClusterStateError.invalidAmax(jobID: id, layer: 0, chunk: 0, input: q, value: .infinity)) {
            try store.recordChunkAmax(jobID: id, layer: 0, chunk: 0, sampleCount: 1, amax: [q: ActivationAmax(.infinity)])
        }
        #expect(throws: ClusterStateError.layerOutOfRange(jobID: id, layer: 4, layerCount: 4)) {
            try store.recordChunkAmax(jobID: id, layer: 4, chunk: 0, sampleCount: 1, amax: [q: 1])
        }
        #expect(throws: ClusterStateError.invalidChunk(jobID: id, layer: 0, chunk: -1)) {
            try store.recordChunkAmax(jobID: id, layer: 0, chunk: -1, sampleCount: 1, amax: [q: 1])
        }
        #expect(throws: ClusterStateError.invalidSampleCount(jobID: id, layer: 0, chunk: 0, sampleCount: 0)) {
            try store.recordChunkAmax(jobID: id, layer: 0, chunk: 0, sampleCount: 0, amax: [q: 1])
        }
        #expect(throws: ClusterStateError.emptyAmaxReport(jobID: id, layer: 0, chunk: 0)) {
            try store.recordChunkAmax(jobID: id, layer: 0, chunk: 0, sampleCount: 1, amax: [:])
        }
        #expect(throws: ClusterStateError.jobNotFound("ghost")) {
            try store.recordChunkAmax(jobID: "ghost", layer: 0, chunk: 0, sampleCount: 1, amax: [q: 1])
        }
        // Nothing of the refused reports was kept.
        #expect(try store.activationAmax(jobID: id).isEmpty)
        #expect(try store.layerProgress(jobID: id).isEmpty)
    }

    @Test func completeLayerWaitsForEveryChunkThenFreezesTheMaxAmaxExactly() throws {
        let directory = try TemporaryStateDirectory()
        let store = try open(directory)
        let id = try calibratingJob(store)
        let (q, o) = (layerModules(1)[0], layerModules(1)[1])
        // amax bit patterns and f32(amax / 2688) bit patterns, computed independently with numpy float32. The store
        // keeps amax only; the scale is derived where the checkpoint is written (InputScale), checked here end to end.
        let qChunks: [UInt32] = [0x3FA9_34EC, 0x409C_2BC7, 0x403C_46E5]   // 1.3219275, 4.880344, 2.941827
        let expectedQScale: UInt32 = 0x3AED_F991                        // f32(4.880344 / 2688)
        let oChunks: [UInt32] = [0x3DCC_CCCD, 0x3DCC_CCCD, 0x3DCC_CCCD]   // 0.1
        let expectedOScale: UInt32 = 0x381C_09C1                        // f32(0.1 / 2688)

        #expect(throws: ClusterStateError.layerIncomplete(jobID: id, layer: 1, expectedChunks: 3, missingChunks: [0, 1, 2])) {
            try store.completeLayer(jobID: id, layer: 1, expectedChunkCount: 3)
        }
        for chunk in 0 ..< 2 {
            try store.recordChunkAmax(jobID: id, layer: 1, chunk: chunk, sampleCount: 2,
                                      amax: [q: ActivationAmax(Float(bitPattern: qChunks[chunk])),
                                             o: ActivationAmax(Float(bitPattern: oChunks[chunk]))])
        }
        let incomplete = #expect(throws: ClusterStateError.layerIncomplete(jobID: id, layer: 1, expectedChunks: 3,
                                                                         missingChunks: [2])) {
            try store.completeLayer(jobID: id, layer: 1, expectedChunkCount: 3)
        }
        #expect(incomplete?.description.contains("1 of 3 chunks missing (2)") == true)
        // Chunk 2 reports q only: o is still missing a chunk.
        try store.recordChunkAmax(jobID: id, layer: 1, chunk: 2, sampleCount: 2, amax: [q: ActivationAmax(Float(bitPattern: qChunks[2]))])
        #expect(throws: ClusterStateError.inputMissingChunks(jobID: id, layer: 1, input: o, missingChunks: [2])) {
            try store.completeLayer(jobID: id, layer: 1, expectedChunkCount: 3)
        }
        try store.recordChunkAmax(jobID: id, layer: 1, chunk: 2, sampleCount: 2, amax: [o: ActivationAmax(Float(bitPattern: oChunks[2]))])
        #expect(throws: ClusterStateError.unexpectedChunks(jobID: id, layer: 1, expectedChunks: 2, chunks: [2])) {
            try store.completeLayer(jobID: id, layer: 1, expectedChunkCount: 2)
        }
        #expect(try store.layerAmaxRecords(jobID: id).isEmpty)

        let amax = try store.completeLayer(jobID: id, layer: 1, expectedChunkCount: 3)
        #expect(amax[q]?.value.bitPattern == qChunks[1])
        #expect(amax[o]?.value.bitPattern == oChunks[0])
        #expect(amax[q].map { InputScale($0).value.bitPattern } == expectedQScale)
        #expect(amax[o].map { InputScale($0).value.bitPattern } == expectedOScale)
        #expect(try store.completeLayer(jobID: id, layer: 1, expectedChunkCount: 3) == amax)
        #expect(try store.layerProgress(jobID: id).first { $0.layer == 1 }?.completed == true)

        // Statistics of a completed layer are final; an identical retry is still fine.
        #expect(throws: ClusterStateError.layerAlreadyCompleted(jobID: id, layer: 1)) {
            try store.recordChunkAmax(jobID: id, layer: 1, chunk: 0, sampleCount: 2, amax: [q: 100])
        }
        #expect(try store.recordChunkAmax(jobID: id, layer: 1, chunk: 2, sampleCount: 2,
                                          amax: [o: ActivationAmax(Float(bitPattern: oChunks[2]))]) == .alreadyRecorded)

        try store.close()
        let reopened = try open(directory)
        let persisted = try reopened.layerAmaxRecords(jobID: id)
        #expect(persisted.map(\.input) == [o, q])
        #expect(persisted.map(\.amax.value.bitPattern) == [oChunks[0], qChunks[1]])
    }

    @Test func aLinearThatNeverSawInputIsAnError() throws {
        let directory = try TemporaryStateDirectory()
        let store = try open(directory)
        let id = try calibratingJob(store)
        let o = layerModules(0)[1]
        try store.recordChunkAmax(jobID: id, layer: 0, chunk: 0, sampleCount: 1, amax: [o: 0])
        let error = #expect(throws: ClusterStateError.zeroActivationAmax(jobID: id, layer: 0, input: o)) {
            try store.completeLayer(jobID: id, layer: 0, expectedChunkCount: 1)
        }
        #expect(error?.description.contains(o) == true)
        #expect(try store.layerAmaxRecords(jobID: id).isEmpty)
        #expect(try store.lastCompletedLayer(jobID: id) == nil)
    }

    @Test func resumePointAfterRestartIsTheFirstIncompleteLayer() throws {
        let directory = try TemporaryStateDirectory()
        let store = try open(directory)
        let id = try calibratingJob(store)
        for layer in [0, 1, 3] {
            for chunk in 0 ..< 2 {
                try store.recordChunkAmax(jobID: id, layer: layer, chunk: chunk, sampleCount: 4,
                                          amax: Dictionary(uniqueKeysWithValues: layerModules(layer).map { ($0, ActivationAmax(1)) }))
            }
            try store.completeLayer(jobID: id, layer: layer, expectedChunkCount: 2)
        }
        try store.recordChunkAmax(jobID: id, layer: 2, chunk: 0, sampleCount: 4, amax: [layerModules(2)[0]: 1])
        try store.close()

        let reopened = try open(directory)
        #expect(try reopened.lastCompletedLayer(jobID: id) == 1)
        let resume = try #require(try reopened.resumePoint(jobID: id))
        #expect(resume.state == .calibrating)
        #expect(resume.nextLayer == 2)
        #expect(resume.layerCount == 4)
        #expect(!resume.calibrationComplete)
        #expect(resume.plan.map(\.worker) == ["a", "b"])
        #expect(resume.deadWorkers.isEmpty)
        #expect(try reopened.layerProgress(jobID: id).map(\.samplesDone) == [8, 8, 4, 8])

        try reopened.updateJobState(jobID: id, to: .failed, reason: "disk full on b")
        #expect(try reopened.resumePoint(jobID: id) == nil)
        #expect(throws: ClusterStateError.jobIsTerminal(jobID: id, state: .failed)) {
            try reopened.recordChunkAmax(jobID: id, layer: 2, chunk: 1, sampleCount: 4, amax: [layerModules(2)[0]: 1])
        }
    }

    @Test func deadWorkersAreMarkedAndAJobCanBeReplannedAroundThem() throws {
        let directory = try TemporaryStateDirectory()
        let clock = TestClock()
        let store = try open(directory, clock: clock)
        let id = try calibratingJob(store)
        let finished = try store.createJob(modelPath: "/m", outputPath: "/o", options: [String: Int](),
                                           configHash: "h", id: "finished")
        try store.savePlan(jobID: finished.id, plan: [LayerAssignment(worker: "b", range: 0 ..< 4, embeddings: true)])
        try store.updateJobState(jobID: finished.id, to: .cancelled)

        clock.advance(seconds: 30)
        try store.recordHeartbeat(workerName: "a", freeDiskBytes: 123)
        #expect(try store.worker(name: "a")?.lastHeartbeat == clock.now())
        #expect(try store.worker(name: "a")?.freeDiskBytes == 123)
        #expect(try store.workersSilent(since: clock.now().addingTimeInterval(-10)).map(\.name) == ["b"])

        #expect(try store.markWorkerDead(workerName: "b", reason: "no heartbeat for 30 s") == [id])
        let dead = try #require(try store.worker(name: "b"))
        #expect(dead.health == .dead && dead.deathReason == "no heartbeat for 30 s")
        #expect(throws: ClusterStateError.workerIsDead("b")) { try store.recordHeartbeat(workerName: "b") }
        #expect(throws: ClusterStateError.workerNotFound("zed")) { try store.markWorkerDead(workerName: "zed", reason: "") }
        #expect(try store.resumePoint(jobID: id)?.deadWorkers == ["b"])
        #expect(try store.status(jobID: id).workers.map(\.health) == [.alive, .dead])
        #expect(throws: ClusterStateError.workerIsDead("b")) {
            try store.savePlan(jobID: id, plan: [LayerAssignment(worker: "b", range: 0 ..< 4, embeddings: true)])
        }

        let survivors = try store.listWorkers().filter { $0.health == .alive }.map(\.capacity)
        let newPlan = try LayerPlanner.replan(plan: try store.plan(jobID: id), deadWorker: "b", completedLayers: 0,
                                              survivors: survivors, bytesPerLayer: 1 << 20)
        try store.savePlan(jobID: id, plan: newPlan)
        #expect(try store.plan(jobID: id) == [LayerAssignment(worker: "a", range: 0 ..< 4, embeddings: true)])
        #expect(try store.resumePoint(jobID: id)?.deadWorkers == [])

        // A worker that comes back registers again and is alive.
        try register("b", in: store)
        #expect(try store.worker(name: "b")?.health == .alive)
        #expect(try store.worker(name: "b")?.deathReason == nil)
    }

    @Test func plansMustBeValidAndKeepTheLayerCount() throws {
        let directory = try TemporaryStateDirectory()
        let store = try open(directory)
        let id = try calibratingJob(store)
        #expect(throws: ClusterStateError.planLayerCountMismatch(jobID: id, planLayers: 5, jobLayers: 4)) {
            try store.savePlan(jobID: id, plan: [LayerAssignment(worker: "a", range: 0 ..< 5, embeddings: true)])
        }
        #expect(throws: ClusterStateError.workerNotFound("nobody")) {
            try store.savePlan(jobID: id, plan: [LayerAssignment(worker: "nobody", range: 0 ..< 4, embeddings: true)])
        }
        let gap = #expect(throws: ClusterStateError.self) {
            try store.savePlan(jobID: id, plan: [LayerAssignment(worker: "a", range: 0 ..< 2, embeddings: true),
                                                 LayerAssignment(worker: "b", range: 3 ..< 4, embeddings: false)])
        }
        #expect(gap?.description.contains("starts at layer 3, expected 2") == true)
        #expect(try store.plan(jobID: id).map(\.range) == [0 ..< 2, 2 ..< 4])
    }

    @Test func aStateFileThatIsNotSQLiteIsNamedInTheError() throws {
        let directory = try TemporaryStateDirectory()
        let path = directory.path + "/coordd.sqlite"
        try Data(String(repeating: "this is not a database\n", count: 200).utf8).write(to: URL(fileURLWithPath: path))
        let error = #expect(throws: ClusterStateError.self) { try ClusterStateStore(stateDirectory: directory.path) }
        guard case .stateFileUnreadable(let reportedPath, _)? = error else {
            Issue.record("expected stateFileUnreadable, got \(String(describing: error))")
            return
        }
        #expect(reportedPath == path)
        #expect(error!.description.contains(path))
        #expect(error!.description.contains("file is not a database"))
    }

    @Test func theStateFileIsAWALSQLiteDatabaseWithTheSchema() throws {
        let directory = try TemporaryStateDirectory()
        let store = try open(directory)
        _ = try calibratingJob(store)
        let reader = try DatabaseQueue(path: store.path)
        let (mode, tables) = try reader.read { db in
            (try String.fetchOne(db, sql: "PRAGMA journal_mode"),
             try String.fetchAll(db, sql: "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name"))
        }
        #expect(mode == "wal")
        #expect(Set(tables).isSuperset(of: ["job", "worker", "planEntry", "layerProgress", "layerChunk", "chunkAmax",
                                            "layerAmax", "jobQuality"]))
        #expect(!tables.contains("activationScale"), "scales are derived where they are written, never stored")
    }

    @Test func aStateDirectoryThatIsAFileIsRefused() throws {
        let directory = try TemporaryStateDirectory()
        let file = directory.path + "/not-a-directory"
        try Data("x".utf8).write(to: URL(fileURLWithPath: file))
        #expect(throws: ClusterStateError.stateDirectoryUnusable(path: file, reason: "it is not a directory")) {
            try ClusterStateStore(stateDirectory: file)
        }
        // A missing directory is created.
        let store = try ClusterStateStore(stateDirectory: directory.path + "/nested/state")
        #expect(store.path == directory.path + "/nested/state/coordd.sqlite")
        #expect(FileManager.default.fileExists(atPath: store.path))
    }
}
