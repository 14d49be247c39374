import Foundation

/// One job as `coordctl status --json` prints it. This is a **stable schema**; field names never change within a
/// `schema_version`, and new fields are only ever added.
///
/// Schema version 1 (every key is always present; absent values are `null`):
///
/// ```json
/// {
///   "schema_version": 1,
///   "state": "running",              // queued | running | succeeded | failed | cancelled
///   "job_id": "…",
///   "phase": "calibrating",          // queued | loading | calibrating | exporting | merging |
///                                    // succeeded | failed | cancelled
///   "model": "/models/llama",        // model path as submitted
///   "output": "/out/llama-nvfp4",    // output path as submitted
///   "workers": [                     // plan order; empty before a plan exists
///     {"name": "gpu-a", "range": "0-52", "device": "H200", "health": "alive", "embeddings": true}
///   ],
///   "samples_through": {"0-52": 512, "53-79": 480},
///   "tokens_per_second": 1834.5,     // number or null
///   "eta_seconds": 620,              // number or null
///   "output_bytes": 4021129216,      // integer or null
///   "failure_reason": null,          // string or null (set when failed, optionally when cancelled)
///   "created_at": "2026-11-29T06:00:00Z",
///   "updated_at": "2026-11-29T06:05:00Z"
/// }
/// ```
///
/// - `state` is the coarse, script-friendly field: every phase between queued and the terminal ones reads `running`.
/// - `phase` is the exact ``JobState``.
/// - A range is written `"first-last"` with both ends **inclusive** (`0..<53` prints as `"0-52"`), so it can key a
///   JSON object.
/// - `samples_through[range]` counts the samples whose chunks have passed the range's last layer.
/// - `health` is `alive` or `dead`.
public struct JobStatus: Codable, Sendable, Equatable {
    public static let currentSchemaVersion = 1

    /// Coarse job state for scripts.
    public enum State: String, Codable, Sendable {
        case queued, running, succeeded, failed, cancelled

        public init(_ phase: JobState) {
            switch phase {
            case .queued: self = .queued
            case .loading, .calibrating, .exporting, .merging: self = .running
            case .succeeded: self = .succeeded
            case .failed: self = .failed
            case .cancelled: self = .cancelled
            }
        }
    }

    public struct Worker: Codable, Sendable, Equatable {
        public var name: String
        public var range: String
        public var device: String
        public var health: WorkerHealth
        public var embeddings: Bool

        public init(name: String, range: String, device: String, health: WorkerHealth, embeddings: Bool) {
            self.name = name
            self.range = range
            self.device = device
            self.health = health
            self.embeddings = embeddings
        }
    }

    public var schemaVersion: Int
    public var state: State
    public var jobID: String
    public var phase: JobState
    public var model: String
    public var output: String
    public var workers: [Worker]
    public var samplesThrough: [String: Int]
    public var tokensPerSecond: Double?
    public var etaSeconds: Double?
    public var outputBytes: Int64?
    public var failureReason: String?
    /// ISO 8601, UTC, whole seconds.
    public var createdAt: String
    public var updatedAt: String

    public init(jobID: String, phase: JobState, model: String, output: String, workers: [Worker],
                samplesThrough: [String: Int], tokensPerSecond: Double?, etaSeconds: Double?, outputBytes: Int64?,
                failureReason: String?, createdAt: Date, updatedAt: Date) {
        self.schemaVersion = Self.currentSchemaVersion
        self.state = State(phase)
        self.jobID = jobID
        self.phase = phase
        self.model = model
        self.output = output
        self.workers = workers
        self.samplesThrough = samplesThrough
        self.tokensPerSecond = tokensPerSecond
        self.etaSeconds = etaSeconds
        self.outputBytes = outputBytes
        self.failureReason = failureReason
        self.createdAt = Self.timestamp(createdAt)
        self.updatedAt = Self.timestamp(updatedAt)
    }

    /// The range key used in `workers[].range` and `samples_through`: inclusive `"first-last"`.
    public static func rangeKey(_ range: Range<Int>) -> String {
        "\(range.lowerBound)-\(range.upperBound - 1)"
    }

    static func timestamp(_ date: Date) -> String {
        let formatter = ISO8601DateFormatter()
        formatter.timeZone = TimeZone(identifier: "UTC")
        return formatter.string(from: date)
    }

    enum CodingKeys: String, CodingKey {
        case schemaVersion = "schema_version"
        case state
        case jobID = "job_id"
        case phase, model, output, workers
        case samplesThrough = "samples_through"
        case tokensPerSecond = "tokens_per_second"
        case etaSeconds = "eta_seconds"
        case outputBytes = "output_bytes"
        case failureReason = "failure_reason"
        case createdAt = "created_at"
        case updatedAt = "updated_at"
    }

    // Written by hand so that absent values appear as `null` instead of disappearing: the schema keeps every key.
    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(schemaVersion, forKey: .schemaVersion)
        try container.encode(state, forKey: .state)
        try container.encode(jobID, forKey: .jobID)
        try container.encode(phase, forKey: .phase)
        try container.encode(model, forKey: .model)
        try container.encode(output, forKey: .output)
        try container.encode(workers, forKey: .workers)
        try container.encode(samplesThrough, forKey: .samplesThrough)
        try container.encode(tokensPerSecond, forKey: .tokensPerSecond)
        try container.encode(etaSeconds, forKey: .etaSeconds)
        try container.encode(outputBytes, forKey: .outputBytes)
        try container.encode(failureReason, forKey: .failureReason)
        try container.encode(createdAt, forKey: .createdAt)
        try container.encode(updatedAt, forKey: .updatedAt)
    }

    /// JSON as `coordctl status --json` prints it: sorted keys, so output is byte-stable.
    public func jsonData() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        return try encoder.encode(self)
    }
}
