import Foundation
import GRDB
import NVFP4

extension JobState: DatabaseValueConvertible {}
extension WorkerHealth: DatabaseValueConvertible {}

/// Stored as a REAL (every Float is exact as a Double), so `MAX(amax)` compares numbers.
extension ActivationAmax: DatabaseValueConvertible {
    public var databaseValue: DatabaseValue { Double(value).databaseValue }

    public static func fromDatabaseValue(_ dbValue: DatabaseValue) -> ActivationAmax? {
        Double.fromDatabaseValue(dbValue).map { ActivationAmax(Float($0)) }
    }
}

/// coordd's durable state: jobs, workers, plans, per-layer progress and activation statistics, in SQLite
/// (`<state-dir>/coordd.sqlite`, WAL). Every method runs in one transaction, so a crash leaves either the whole
/// update or none of it, and a restarted coordd sees every job and resumes running ones from ``resumePoint(jobID:)``.
///
/// Statistics: workers report, per chunk of samples and per layer, the amax of each observed input (one per fused
/// group of Linears that read it, named by the caller, e.g. `qkv`). Rows are unique per (job, layer, chunk, input),
/// so a retried chunk never counts twice; the merge is `MAX` in SQL. Once every chunk has passed a layer,
/// ``completeLayer(jobID:layer:expectedChunkCount:)`` freezes the layer's amax. The store keeps amax only: scales
/// are derived where the checkpoint is written.
public final class ClusterStateStore: Sendable {
    /// Path of the SQLite file.
    public let path: String
    let pool: DatabasePool
    private let now: @Sendable () -> Date

    public static let fileName = "coordd.sqlite"

    /// Opens (creating if needed) the state in `stateDirectory` and brings its schema up to date.
    /// - Parameter now: The clock for timestamps; tests pass a fixed one.
    public init(stateDirectory: String, now: @escaping @Sendable () -> Date = { Date() }) throws {
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: stateDirectory, isDirectory: &isDirectory) {
            guard isDirectory.boolValue else {
                throw ClusterStateError.stateDirectoryUnusable(path: stateDirectory, reason: "it is not a directory")
            }
        } else {
            do {
                try FileManager.default.createDirectory(atPath: stateDirectory, withIntermediateDirectories: true)
            } catch {
                throw ClusterStateError.stateDirectoryUnusable(path: stateDirectory, reason: "\(error)")
            }
        }
        let path = (stateDirectory as NSString).appendingPathComponent(Self.fileName)
        self.path = path
        self.now = now

        var configuration = Configuration()
        configuration.foreignKeysEnabled = true
        configuration.label = "coordd-state"
        // A committed transaction survives a power loss (WAL's NORMAL may lose the last ones): job state decides
        // what a resumed job trusts.
        configuration.prepareDatabase { db in try db.execute(sql: "PRAGMA synchronous = FULL") }
        do {
            pool = try DatabasePool(path: path, configuration: configuration)
            // The pool sets NORMAL on its writer once the WAL is on; FULL goes on after that.
            try pool.barrierWriteWithoutTransaction { try $0.execute(sql: "PRAGMA synchronous = FULL") }
            let check = try pool.read { db in try String.fetchOne(db, sql: "PRAGMA quick_check") }
            guard check == "ok" else {
                throw ClusterStateError.stateFileUnreadable(path: path, reason: "integrity check: \(check ?? "no answer")")
            }
            let migrator = Self.migrator
            try migrator.migrate(pool)
            if try pool.read({ try migrator.hasBeenSuperseded($0) }) {
                throw ClusterStateError.stateFileFromNewerVersion(path: path)
            }
        } catch let error as ClusterStateError {
            throw error
        } catch let error as DatabaseError {
            throw ClusterStateError.stateFileUnreadable(path: path, reason: error.message ?? "\(error.resultCode)")
        } catch {
            throw ClusterStateError.stateFileUnreadable(path: path, reason: "\(error)")
        }
    }

    /// Closes the database. Later calls fail.
    public func close() throws { try pool.close() }

    // MARK: Schema

    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.create(table: "job") { t in
                t.primaryKey("id", .text)
                t.column("state", .text).notNull()
                t.column("modelPath", .text).notNull()
                t.column("outputPath", .text).notNull()
                t.column("optionsJSON", .text).notNull()
                t.column("configHash", .text).notNull()
                t.column("layerCount", .integer)
                t.column("failureReason", .text)
                t.column("createdAt", .datetime).notNull()
                t.column("updatedAt", .datetime).notNull()
            }
            try db.create(table: "worker") { t in
                t.primaryKey("name", .text)
                t.column("address", .text).notNull()
                t.column("device", .text).notNull()
                t.column("memoryBytes", .integer).notNull()
                t.column("freeDiskBytes", .integer).notNull()
                t.column("softwareVersion", .text).notNull()
                t.column("lastHeartbeat", .datetime).notNull()
                t.column("health", .text).notNull()
                t.column("deathReason", .text)
            }
            try db.create(table: "planEntry") { t in
                t.column("jobId", .text).notNull().references("job", onDelete: .cascade)
                t.column("position", .integer).notNull()
                t.column("workerName", .text).notNull().references("worker")
                t.column("firstLayer", .integer).notNull()
                t.column("endLayer", .integer).notNull()
                t.column("embeddings", .boolean).notNull()
                t.primaryKey(["jobId", "position"])
            }
            try db.create(table: "layerProgress") { t in
                t.column("jobId", .text).notNull().references("job", onDelete: .cascade)
                t.column("layer", .integer).notNull()
                t.column("samplesDone", .integer).notNull()
                t.column("completed", .boolean).notNull()
                t.column("completedAt", .datetime)
                t.primaryKey(["jobId", "layer"])
            }
            try db.create(table: "layerChunk") { t in
                t.column("jobId", .text).notNull().references("job", onDelete: .cascade)
                t.column("layer", .integer).notNull()
                t.column("chunk", .integer).notNull()
                t.column("sampleCount", .integer).notNull()
                t.column("recordedAt", .datetime).notNull()
                t.primaryKey(["jobId", "layer", "chunk"])
            }
            try db.create(table: "chunkAmax") { t in
                t.column("jobId", .text).notNull()
                t.column("layer", .integer).notNull()
                t.column("chunk", .integer).notNull()
                t.column("moduleName", .text).notNull()
                t.column("amax", .double).notNull()
                t.primaryKey(["jobId", "layer", "chunk", "moduleName"])
                t.foreignKey(["jobId", "layer", "chunk"], references: "layerChunk", onDelete: .cascade)
            }
            try db.create(table: "activationScale") { t in
                t.column("jobId", .text).notNull().references("job", onDelete: .cascade)
                t.column("layer", .integer).notNull()
                t.column("moduleName", .text).notNull()
                t.column("amax", .double).notNull()
                t.column("inputScale", .double).notNull()
                t.primaryKey(["jobId", "layer", "moduleName"])
            }
        }
        migrator.registerMigration("v2-amax-per-input") { db in
            // v1 kept one row per Linear plus a derived input_scale. Statistics now stay per observed input; those
            // of unfinished v1 jobs are dropped, so such a job calibrates again when it resumes.
            try db.drop(table: "activationScale")
            try db.drop(table: "chunkAmax")
            try db.execute(sql: "DELETE FROM layerChunk")
            try db.execute(sql: "UPDATE layerProgress SET samplesDone = 0, completed = 0, completedAt = NULL")
            try db.create(table: "chunkAmax") { t in
                t.column("jobId", .text).notNull()
                t.column("layer", .integer).notNull()
                t.column("chunk", .integer).notNull()
                t.column("input", .text).notNull()
                t.column("amax", .double).notNull()
                t.primaryKey(["jobId", "layer", "chunk", "input"])
                t.foreignKey(["jobId", "layer", "chunk"], references: "layerChunk", onDelete: .cascade)
            }
            try db.create(table: "layerAmax") { t in
                t.column("jobId", .text).notNull().references("job", onDelete: .cascade)
                t.column("layer", .integer).notNull()
                t.column("input", .text).notNull()
                t.column("amax", .double).notNull()
                t.primaryKey(["jobId", "layer", "input"])
            }
        }
        migrator.registerMigration("v3-job-quality") { db in
            try db.create(table: "jobQuality") { t in
                t.primaryKey("jobId", .text).references("job", onDelete: .cascade)
                // The JobQuality as JSON: perplexities may be Inf or NaN, which SQLite's REAL does not keep.
                t.column("json", .text).notNull()
            }
        }
        migrator.registerMigration("v4-worker-link-transport") { db in
            // Nullable: workers registered before it have no link to report yet.
            try db.alter(table: "worker") { t in t.add(column: "linkTransport", .text) }
        }
        return migrator
    }

    // MARK: Quality

    /// Stores the job's closing quality report and gate decision (replacing an earlier one).
    public func recordQuality(jobID: String, quality: JobQuality) throws {
        let json = String(decoding: try JSONEncoder().encode(quality), as: UTF8.self)
        try pool.write { db in
            _ = try Self.requireJob(db, jobID)
            try db.execute(sql: "INSERT OR REPLACE INTO jobQuality (jobId, json) VALUES (?, ?)", arguments: [jobID, json])
        }
    }

    private static func quality(_ db: Database, _ jobID: String) throws -> JobQuality? {
        guard let json = try String.fetchOne(db, sql: "SELECT json FROM jobQuality WHERE jobId = ?", arguments: [jobID]) else {
            return nil
        }
        return try JSONDecoder().decode(JobQuality.self, from: Data(json.utf8))
    }

    // MARK: Jobs

    /// Creates a queued job. `options` is stored as JSON with sorted keys.
    /// - Parameter id: The job id; a fresh UUID when nil.
    @discardableResult
    public func createJob<Options: Encodable>(modelPath: String, outputPath: String, options: Options,
                                              configHash: String, id: String? = nil) throws -> JobRecord {
        let optionsJSON: String
        do {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.sortedKeys]
            optionsJSON = String(decoding: try encoder.encode(options), as: UTF8.self)
        } catch {
            throw ClusterStateError.optionsNotEncodable(reason: "\(error)")
        }
        let timestamp = now()
        let job = JobRecord(id: id ?? UUID().uuidString.lowercased(), state: .queued, modelPath: modelPath,
                            outputPath: outputPath, optionsJSON: optionsJSON, configHash: configHash, layerCount: nil,
                            failureReason: nil, createdAt: timestamp, updatedAt: timestamp)
        return try pool.write { db in
            if try JobRecord.exists(db, key: job.id) { throw ClusterStateError.jobAlreadyExists(job.id) }
            try job.insert(db)
            return job
        }
    }

    /// Moves a job to `state`, allowed only along ``JobState/allowedNextStates``.
    /// - Parameter reason: Required (non-empty) for `.failed`, optional for `.cancelled`, refused otherwise.
    @discardableResult
    public func updateJobState(jobID: String, to state: JobState, reason: String? = nil) throws -> JobRecord {
        try pool.write { db in
            var job = try Self.requireJob(db, jobID)
            guard job.state.canMove(to: state) else {
                throw ClusterStateError.invalidTransition(jobID: jobID, from: job.state, to: state)
            }
            switch state {
            case .failed:
                guard let reason, !reason.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty else {
                    throw ClusterStateError.missingFailureReason(jobID: jobID)
                }
            case .cancelled:
                break
            default:
                guard reason == nil else { throw ClusterStateError.reasonNotAllowed(jobID: jobID, state: state) }
            }
            job.state = state
            if state.isTerminal { job.failureReason = reason }
            job.updatedAt = now()
            try job.update(db)
            return job
        }
    }

    public func job(id: String) throws -> JobRecord? {
        try pool.read { db in try JobRecord.fetchOne(db, key: id) }
    }

    /// Every job, oldest first.
    public func listJobs() throws -> [JobRecord] {
        try pool.read { db in try JobRecord.order(Column("createdAt"), Column("id")).fetchAll(db) }
    }

    /// Jobs that are neither queued nor terminal: what a restarted coordd must resume.
    public func runningJobs() throws -> [JobRecord] {
        try listJobs().filter { !$0.state.isTerminal && $0.state != .queued }
    }

    // MARK: Workers

    /// Registers a worker, or refreshes it (alive again, new heartbeat) when it registers after a restart.
    @discardableResult
    public func registerWorker(name: String, address: String, device: String, memoryBytes: Int64, freeDiskBytes: Int64,
                               softwareVersion: String) throws -> WorkerRecord {
        let worker = WorkerRecord(name: name, address: address, device: device, memoryBytes: memoryBytes,
                                  freeDiskBytes: freeDiskBytes, softwareVersion: softwareVersion, lastHeartbeat: now(),
                                  health: .alive, deathReason: nil)
        return try pool.write { db in
            try worker.upsert(db)
            return worker
        }
    }

    /// Records a heartbeat from a live worker; a dead worker must register again.
    public func recordHeartbeat(workerName: String, freeDiskBytes: Int64? = nil) throws {
        try pool.write { db in
            guard var worker = try WorkerRecord.fetchOne(db, key: workerName) else {
                throw ClusterStateError.workerNotFound(workerName)
            }
            guard worker.health == .alive else { throw ClusterStateError.workerIsDead(workerName) }
            worker.lastHeartbeat = now()
            if let freeDiskBytes { worker.freeDiskBytes = freeDiskBytes }
            try worker.update(db)
        }
    }

    /// Records what the worker's link to the next worker runs on (``WorkerRecord/linkTransport``).
    public func recordLinkTransport(workerName: String, linkTransport: String) throws {
        try pool.write { db in
            guard var worker = try WorkerRecord.fetchOne(db, key: workerName) else {
                throw ClusterStateError.workerNotFound(workerName)
            }
            worker.linkTransport = linkTransport
            try worker.update(db)
        }
    }

    /// Marks a worker dead and returns the ids of unfinished jobs whose plan uses it (they need a re-plan or must fail).
    @discardableResult
    public func markWorkerDead(workerName: String, reason: String) throws -> [String] {
        try pool.write { db in
            guard var worker = try WorkerRecord.fetchOne(db, key: workerName) else {
                throw ClusterStateError.workerNotFound(workerName)
            }
            worker.health = .dead
            worker.deathReason = reason
            try worker.update(db)
            let jobIDs = try String.fetchAll(db, sql: """
                SELECT DISTINCT job.id FROM job JOIN planEntry ON planEntry.jobId = job.id
                WHERE planEntry.workerName = ? AND job.state NOT IN ('succeeded', 'failed', 'cancelled')
                ORDER BY job.createdAt, job.id
                """, arguments: [workerName])
            return jobIDs
        }
    }

    public func worker(name: String) throws -> WorkerRecord? {
        try pool.read { db in try WorkerRecord.fetchOne(db, key: name) }
    }

    /// Every worker, by name.
    public func listWorkers() throws -> [WorkerRecord] {
        try pool.read { db in try WorkerRecord.order(Column("name")).fetchAll(db) }
    }

    /// Live workers whose last heartbeat is older than `date`: candidates for ``markWorkerDead(workerName:reason:)``.
    public func workersSilent(since date: Date) throws -> [WorkerRecord] {
        try listWorkers().filter { $0.health == .alive && $0.lastHeartbeat < date }
    }

    // MARK: Plans

    /// Replaces the job's plan. The plan must be valid (``LayerPlanner/validate(plan:)``), name registered live
    /// workers, and cover the same layer count as any earlier plan of the job.
    public func savePlan(jobID: String, plan: [LayerAssignment]) throws {
        do {
            try LayerPlanner.validate(plan: plan)
        } catch let error as PlanningError {
            throw ClusterStateError.invalidPlan(jobID: jobID, reason: error.description)
        }
        let layerCount = plan.last!.range.upperBound
        try pool.write { db in
            var job = try Self.requireJob(db, jobID)
            guard !job.state.isTerminal else { throw ClusterStateError.jobIsTerminal(jobID: jobID, state: job.state) }
            if let existing = job.layerCount, existing != layerCount {
                throw ClusterStateError.planLayerCountMismatch(jobID: jobID, planLayers: layerCount, jobLayers: existing)
            }
            for entry in plan {
                guard let worker = try WorkerRecord.fetchOne(db, key: entry.worker) else {
                    throw ClusterStateError.workerNotFound(entry.worker)
                }
                guard worker.health == .alive else { throw ClusterStateError.workerIsDead(entry.worker) }
            }
            try PlanEntryRecord.filter(Column("jobId") == jobID).deleteAll(db)
            for (position, entry) in plan.enumerated() {
                try PlanEntryRecord(jobId: jobID, position: position, workerName: entry.worker,
                                    firstLayer: entry.range.lowerBound, endLayer: entry.range.upperBound,
                                    embeddings: entry.embeddings).insert(db)
            }
            job.layerCount = layerCount
            job.updatedAt = now()
            try job.update(db)
        }
    }

    /// The job's current plan, in order; empty before one is saved.
    public func plan(jobID: String) throws -> [LayerAssignment] {
        try pool.read { db in
            _ = try Self.requireJob(db, jobID)
            return try Self.planEntries(db, jobID).map(\.assignment)
        }
    }

    // MARK: Progress and statistics

    /// Records one chunk's amax of each observed input of one layer, and the chunk's sample count.
    ///
    /// Idempotent: a retried chunk whose values are already stored changes nothing and returns `.alreadyRecorded`,
    /// even after the layer completed. Otherwise the values merge by max. New values for a completed layer are refused.
    /// - Parameter amax: Input name (the fused group reading it, e.g. `qkv`) → amax over the chunk.
    @discardableResult
    public func recordChunkAmax(jobID: String, layer: Int, chunk: Int, sampleCount: Int,
                                amax: [String: ActivationAmax]) throws -> ChunkRecordOutcome {
        try pool.write { db in
            let job = try Self.requireJob(db, jobID)
            guard !job.state.isTerminal else { throw ClusterStateError.jobIsTerminal(jobID: jobID, state: job.state) }
            try Self.checkLayer(job, layer)
            guard chunk >= 0 else { throw ClusterStateError.invalidChunk(jobID: jobID, layer: layer, chunk: chunk) }
            guard sampleCount >= 1 else {
                throw ClusterStateError.invalidSampleCount(jobID: jobID, layer: layer, chunk: chunk,
                                                           sampleCount: sampleCount)
            }
            guard !amax.isEmpty else { throw ClusterStateError.emptyAmaxReport(jobID: jobID, layer: layer, chunk: chunk) }
            for (input, amax) in amax.sorted(by: { $0.key < $1.key })
            where input.isEmpty || !amax.value.isFinite || amax.value < 0 {
                throw ClusterStateError.invalidAmax(jobID: jobID, layer: layer, chunk: chunk, input: input, value: amax.value)
            }

            let chunkKey: [String: (any DatabaseValueConvertible)?] = ["jobId": jobID, "layer": layer, "chunk": chunk]
            let existingChunk = try LayerChunkRecord.fetchOne(db, key: chunkKey)
            if let existingChunk, existingChunk.sampleCount != sampleCount {
                throw ClusterStateError.chunkConflict(jobID: jobID, layer: layer, chunk: chunk, reason:
                    "sample count was \(existingChunk.sampleCount), now \(sampleCount)")
            }
            var stored: [String: ActivationAmax] = [:]
            for row in try ChunkAmaxRecord.filter(Column("jobId") == jobID && Column("layer") == layer
                                                  && Column("chunk") == chunk).fetchAll(db) {
                stored[row.input] = row.amax
            }
            if existingChunk != nil, amax.allSatisfy({ stored[$0.key] == $0.value }) {
                return .alreadyRecorded
            }
            if try Self.progress(db, jobID, layer)?.completed == true {
                throw ClusterStateError.layerAlreadyCompleted(jobID: jobID, layer: layer)
            }
            if existingChunk == nil {
                try LayerChunkRecord(jobId: jobID, layer: layer, chunk: chunk, sampleCount: sampleCount,
                                     recordedAt: now()).insert(db)
            }
            for (input, value) in amax {
                try db.execute(sql: """
                    INSERT INTO chunkAmax (jobId, layer, chunk, input, amax) VALUES (?, ?, ?, ?, ?)
                    ON CONFLICT (jobId, layer, chunk, input) DO UPDATE SET amax = MAX(amax, excluded.amax)
                    """, arguments: [jobID, layer, chunk, input, value])
            }
            try db.execute(sql: """
                INSERT INTO layerProgress (jobId, layer, samplesDone, completed)
                VALUES (?1, ?2, (SELECT SUM(sampleCount) FROM layerChunk WHERE jobId = ?1 AND layer = ?2), 0)
                ON CONFLICT (jobId, layer) DO UPDATE SET samplesDone = excluded.samplesDone
                """, arguments: [jobID, layer])
            return .recorded
        }
    }

    /// Freezes a layer's statistics once chunks `0 ..< expectedChunkCount` have all been recorded, for every observed
    /// input of the layer, and returns input name → merged amax. Calling it again for a completed layer returns the
    /// stored values.
    @discardableResult
    public func completeLayer(jobID: String, layer: Int, expectedChunkCount: Int) throws -> [String: ActivationAmax] {
        try pool.write { db in
            let job = try Self.requireJob(db, jobID)
            try Self.checkLayer(job, layer)
            if try Self.progress(db, jobID, layer)?.completed == true {
                return try Self.amaxByInput(db, LayerAmaxRecord.filter(Column("jobId") == jobID && Column("layer") == layer))
            }
            guard !job.state.isTerminal else { throw ClusterStateError.jobIsTerminal(jobID: jobID, state: job.state) }
            guard expectedChunkCount >= 1 else {
                throw ClusterStateError.invalidExpectedChunkCount(jobID: jobID, layer: layer, count: expectedChunkCount)
            }
            let expected = Set(0 ..< expectedChunkCount)
            let chunks = try Int.fetchAll(db, sql: "SELECT chunk FROM layerChunk WHERE jobId = ? AND layer = ? ORDER BY chunk",
                                          arguments: [jobID, layer])
            let outside = chunks.filter { !expected.contains($0) }
            guard outside.isEmpty else {
                throw ClusterStateError.unexpectedChunks(jobID: jobID, layer: layer, expectedChunks: expectedChunkCount,
                                                         chunks: outside)
            }
            let missing = expected.subtracting(chunks).sorted()
            guard missing.isEmpty else {
                throw ClusterStateError.layerIncomplete(jobID: jobID, layer: layer, expectedChunks: expectedChunkCount,
                                                        missingChunks: missing)
            }
            var chunksByInput: [String: Set<Int>] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT input, chunk FROM chunkAmax WHERE jobId = ? AND layer = ?",
                                        arguments: [jobID, layer]) {
                chunksByInput[row["input"], default: []].insert(row["chunk"])
            }
            for input in chunksByInput.keys.sorted() {
                let inputMissing = expected.subtracting(chunksByInput[input]!).sorted()
                guard inputMissing.isEmpty else {
                    throw ClusterStateError.inputMissingChunks(jobID: jobID, layer: layer, input: input,
                                                               missingChunks: inputMissing)
                }
            }
            var result: [String: ActivationAmax] = [:]
            for row in try Row.fetchAll(db, sql: """
                SELECT input, MAX(amax) AS amax FROM chunkAmax WHERE jobId = ? AND layer = ?
                GROUP BY input ORDER BY input
                """, arguments: [jobID, layer]) {
                let input: String = row["input"]
                let amax: ActivationAmax = row["amax"]
                guard amax.value > 0 else { throw ClusterStateError.zeroActivationAmax(jobID: jobID, layer: layer, input: input) }
                try LayerAmaxRecord(jobId: jobID, layer: layer, input: input, amax: amax).insert(db)
                result[input] = amax
            }
            try db.execute(sql: "UPDATE layerProgress SET completed = 1, completedAt = ? WHERE jobId = ? AND layer = ?",
                           arguments: [now(), jobID, layer])
            return result
        }
    }

    /// The highest layer `L` such that layers `0...L` are all completed; nil when layer 0 is not.
    public func lastCompletedLayer(jobID: String) throws -> Int? {
        try pool.read { db in
            _ = try Self.requireJob(db, jobID)
            let next = try Self.firstIncompleteLayer(db, jobID)
            return next == 0 ? nil : next - 1
        }
    }

    /// Where an unfinished job resumes: the first layer not yet completed, with the plan and its dead workers.
    /// Nil for a terminal job (nothing to resume).
    public func resumePoint(jobID: String) throws -> ResumePoint? {
        try pool.read { db in
            let job = try Self.requireJob(db, jobID)
            guard !job.state.isTerminal else { return nil }
            let plan = try Self.planEntries(db, jobID).map(\.assignment)
            var dead: [String] = []
            for entry in plan where try WorkerRecord.fetchOne(db, key: entry.worker)?.health != .alive {
                dead.append(entry.worker)
            }
            return ResumePoint(jobID: jobID, state: job.state, nextLayer: try Self.firstIncompleteLayer(db, jobID),
                               layerCount: job.layerCount, plan: plan, deadWorkers: dead)
        }
    }

    /// Progress rows of the job, by layer (layers no chunk has reached yet have none).
    public func layerProgress(jobID: String) throws -> [LayerProgressRecord] {
        try pool.read { db in
            _ = try Self.requireJob(db, jobID)
            return try LayerProgressRecord.filter(Column("jobId") == jobID).order(Column("layer")).fetchAll(db)
        }
    }

    /// Layer → the chunks recorded for it so far, so a resumed job re-runs only what is missing.
    public func recordedChunks(jobID: String) throws -> [Int: Set<Int>] {
        try pool.read { db in
            _ = try Self.requireJob(db, jobID)
            var result: [Int: Set<Int>] = [:]
            for row in try Row.fetchAll(db, sql: "SELECT layer, chunk FROM layerChunk WHERE jobId = ?", arguments: [jobID]) {
                result[row["layer"] as Int, default: []].insert(row["chunk"] as Int)
            }
            return result
        }
    }

    /// Layer → input name → max amax over every chunk recorded so far (completed layers or not).
    public func activationAmax(jobID: String) throws -> [Int: [String: ActivationAmax]] {
        try pool.read { db in
            _ = try Self.requireJob(db, jobID)
            var result: [Int: [String: ActivationAmax]] = [:]
            for row in try Row.fetchAll(db, sql: """
                SELECT layer, input, MAX(amax) AS amax FROM chunkAmax WHERE jobId = ? GROUP BY layer, input
                """, arguments: [jobID]) {
                result[row["layer"] as Int, default: [:]][row["input"] as String] = row["amax"] as ActivationAmax
            }
            return result
        }
    }

    /// The final amax rows of every completed layer, by layer and input name.
    public func layerAmaxRecords(jobID: String) throws -> [LayerAmaxRecord] {
        try pool.read { db in
            _ = try Self.requireJob(db, jobID)
            return try LayerAmaxRecord.filter(Column("jobId") == jobID).order(Column("layer"), Column("input")).fetchAll(db)
        }
    }

    // MARK: Status

    /// The job in the stable `coordctl status --json` schema. Throughput, ETA and output size are live figures coordd
    /// measures; it passes them in.
    public func status(jobID: String, tokensPerSecond: Double? = nil, etaSeconds: Double? = nil,
                       outputBytes: Int64? = nil) throws -> JobStatus {
        try pool.read { db in
            let job = try Self.requireJob(db, jobID)
            var workers: [JobStatus.Worker] = []
            var samplesThrough: [String: Int] = [:]
            for entry in try Self.planEntries(db, jobID) {
                let worker = try WorkerRecord.fetchOne(db, key: entry.workerName)
                let key = JobStatus.rangeKey(entry.firstLayer ..< entry.endLayer)
                workers.append(JobStatus.Worker(name: entry.workerName, range: key, device: worker?.device ?? "",
                                                health: worker?.health ?? .dead, embeddings: entry.embeddings,
                                                memoryBytes: worker?.memoryBytes))
                samplesThrough[key] = try Self.progress(db, jobID, entry.endLayer - 1)?.samplesDone ?? 0
            }
            return JobStatus(jobID: job.id, phase: job.state, model: job.modelPath, output: job.outputPath,
                             workers: workers, samplesThrough: samplesThrough, tokensPerSecond: tokensPerSecond,
                             etaSeconds: etaSeconds, outputBytes: outputBytes, failureReason: job.failureReason,
                             quality: try Self.quality(db, jobID),
                             createdAt: job.createdAt, updatedAt: job.updatedAt)
        }
    }

    /// ``status(jobID:tokensPerSecond:etaSeconds:outputBytes:)`` of every job, oldest first, without live figures.
    public func statuses() throws -> [JobStatus] {
        try listJobs().map { try status(jobID: $0.id) }
    }

    // MARK: Helpers (inside a transaction)

    private static func requireJob(_ db: Database, _ id: String) throws -> JobRecord {
        guard let job = try JobRecord.fetchOne(db, key: id) else { throw ClusterStateError.jobNotFound(id) }
        return job
    }

    private static func checkLayer(_ job: JobRecord, _ layer: Int) throws {
        guard layer >= 0, job.layerCount.map({ layer < $0 }) ?? true else {
            throw ClusterStateError.layerOutOfRange(jobID: job.id, layer: layer, layerCount: job.layerCount)
        }
    }

    private static func planEntries(_ db: Database, _ jobID: String) throws -> [PlanEntryRecord] {
        try PlanEntryRecord.filter(Column("jobId") == jobID).order(Column("position")).fetchAll(db)
    }

    private static func progress(_ db: Database, _ jobID: String, _ layer: Int) throws -> LayerProgressRecord? {
        try LayerProgressRecord.fetchOne(db, key: ["jobId": jobID, "layer": layer])
    }

    private static func firstIncompleteLayer(_ db: Database, _ jobID: String) throws -> Int {
        let completed = try Int.fetchAll(db, sql: """
            SELECT layer FROM layerProgress WHERE jobId = ? AND completed = 1 ORDER BY layer
            """, arguments: [jobID])
        var next = 0
        for layer in completed where layer == next { next += 1 }
        return next
    }

    private static func amaxByInput(_ db: Database, _ request: QueryInterfaceRequest<LayerAmaxRecord>) throws
        -> [String: ActivationAmax] {
        var result: [String: ActivationAmax] = [:]
        for record in try request.fetchAll(db) { result[record.input] = record.amax }
        return result
    }
}
