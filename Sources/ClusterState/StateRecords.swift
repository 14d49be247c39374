import Foundation
import GRDB
import JobModel
import NVFP4

/// A row of `job`.
public struct JobRecord: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "job"

    public var id: String
    public var state: JobState
    public var modelPath: String
    public var outputPath: String
    /// The job's options as submitted, JSON with sorted keys. Decode with ``decodeOptions(as:)``.
    public var optionsJSON: String
    /// Hash of the model config, to refuse resuming against a changed model.
    public var configHash: String
    /// Decoder layer count; set by the first saved plan.
    public var layerCount: Int?
    public var failureReason: String?
    public var createdAt: Date
    public var updatedAt: Date

    public func decodeOptions<Options: Decodable>(as type: Options.Type) throws -> Options {
        try JSONDecoder().decode(Options.self, from: Data(optionsJSON.utf8))
    }
}

extension WorkerRecord: FetchableRecord, PersistableRecord {
    public static let databaseTableName = "worker"

    public var capacity: WorkerCapacity { WorkerCapacity(name: name, memoryBytes: memoryBytes) }
}

/// A row of `planEntry`: one worker's layer range within a job's plan.
struct PlanEntryRecord: Codable, Sendable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "planEntry"

    var jobId: String
    var position: Int
    var workerName: String
    var firstLayer: Int
    var endLayer: Int
    var embeddings: Bool

    var assignment: LayerAssignment {
        LayerAssignment(worker: workerName, range: firstLayer ..< endLayer, embeddings: embeddings)
    }
}

/// A row of `layerProgress`: how many samples have passed a layer, and whether its statistics are final.
public struct LayerProgressRecord: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "layerProgress"

    public var jobId: String
    public var layer: Int
    /// Sum of the sample counts of the distinct chunks recorded for this layer.
    public var samplesDone: Int
    public var completed: Bool
    public var completedAt: Date?
}

/// A row of `layerChunk`: one chunk of samples that has passed a layer. Unique per (job, layer, chunk).
struct LayerChunkRecord: Codable, Sendable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "layerChunk"

    var jobId: String
    var layer: Int
    var chunk: Int
    var sampleCount: Int
    var recordedAt: Date
}

/// A row of `chunkAmax`: the amax of one observed input (a fused group's, e.g. `qkv`) over one chunk.
/// Unique per (job, layer, chunk, input).
struct ChunkAmaxRecord: Codable, Sendable, FetchableRecord, PersistableRecord {
    static let databaseTableName = "chunkAmax"

    var jobId: String
    var layer: Int
    var chunk: Int
    var input: String
    var amax: ActivationAmax
}

/// A row of `layerAmax`: the final merged amax of one observed input of a completed layer. Scales are derived
/// from it where the checkpoint is written, never stored beside it.
public struct LayerAmaxRecord: Codable, Sendable, Equatable, FetchableRecord, PersistableRecord {
    public static let databaseTableName = "layerAmax"

    public var jobId: String
    public var layer: Int
    public var input: String
    public var amax: ActivationAmax
}

/// Where a running job picks up after a restart or a re-plan.
public struct ResumePoint: Sendable, Equatable {
    public var jobID: String
    public var state: JobState
    /// First layer whose statistics are not final: layers `0 ..< nextLayer` are all completed.
    public var nextLayer: Int
    public var layerCount: Int?
    public var plan: [LayerAssignment]
    /// Workers of the plan that are marked dead (the job needs a re-plan before it can go on).
    public var deadWorkers: [String]

    /// True once every layer's statistics are final.
    public var calibrationComplete: Bool { layerCount.map { nextLayer >= $0 } ?? false }
}

/// Whether `recordChunkAmax` stored something new or saw a retry of a chunk it already had.
public enum ChunkRecordOutcome: Sendable, Equatable {
    case recorded
    case alreadyRecorded
}
