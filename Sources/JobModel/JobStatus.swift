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
///   "elapsed_seconds": 312,          // since submit; frozen once the job ended
///   "progress": {…},                 // JobProgress (below) or null before the job runs
///   "warnings": [],                  // strings: what the job went on despite (fewer samples than asked, …)
///   "linears": [                     // per exported Linear, in layer order (LinearQuality)
///     {"name": "model.layers.0.mlp.down_proj", "layer": 0, "weight_amax": 0.31, "weight_relative_error": 0.094,
///      "activation_amax": 12.5}
///   ],
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
/// - `workers[]` also carries `current_layer` (the first of its layers still calibrating, or null), `layer_tokens_per_second`
///   (tokens through one of its layers per second, over the last minute; null when idle) and `memory_bytes` (the
///   memory the worker registered with). `device` is what the worker computes on once it loaded the job (`cpu`,
///   `NVIDIA H100 80GB HBM3`, …), and its `--device` choice before that.
/// - `tokens_per_second` counts calibration tokens through the whole model per second (layer-tokens/s over the
///   layer count); it freezes when calibration ends. `eta_seconds` is null once the job ended.
public struct JobStatus: Codable, Sendable, Equatable {
    public static let currentSchemaVersion = 1

    /// Coarse job state for scripts.
    public enum State: String, Codable, Sendable {
        case queued, running, succeeded, failed, cancelled

        public init(_ phase: JobState) {
            switch phase {
            case .queued: self = .queued
            case .loading, .calibrating, .exporting, .merging, .evaluating: self = .running
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
        /// The first layer of its range that is still calibrating; nil when its range is done or before it starts.
        public var currentLayer: Int?
        /// Tokens through one of its layers per second, over the last minute.
        public var layerTokensPerSecond: Double?
        /// The memory the worker registered with.
        public var memoryBytes: Int64?

        public init(name: String, range: String, device: String, health: WorkerHealth, embeddings: Bool,
                    currentLayer: Int? = nil, layerTokensPerSecond: Double? = nil, memoryBytes: Int64? = nil) {
            self.name = name
            self.range = range
            self.device = device
            self.health = health
            self.embeddings = embeddings
            self.currentLayer = currentLayer
            self.layerTokensPerSecond = layerTokensPerSecond
            self.memoryBytes = memoryBytes
        }

        enum CodingKeys: String, CodingKey {
            case name, range, device, health, embeddings
            case currentLayer = "current_layer"
            case layerTokensPerSecond = "layer_tokens_per_second"
            case memoryBytes = "memory_bytes"
        }

        // Absent values appear as `null`: the schema keeps every key.
        public func encode(to encoder: Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(name, forKey: .name)
            try container.encode(range, forKey: .range)
            try container.encode(device, forKey: .device)
            try container.encode(health, forKey: .health)
            try container.encode(embeddings, forKey: .embeddings)
            try container.encode(currentLayer, forKey: .currentLayer)
            try container.encode(layerTokensPerSecond, forKey: .layerTokensPerSecond)
            try container.encode(memoryBytes, forKey: .memoryBytes)
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
    /// The closing quality report and gate of a job that measured it; nil before that, or without evaluation.
    public var quality: JobQuality?
    /// ISO 8601, UTC, whole seconds.
    public var createdAt: String
    public var updatedAt: String
    /// A queued job's place in coordd's queue, 1 = next to start; nil once it runs or ended.
    public var queuePosition: Int?
    /// The job a queued job waits for, when one runs.
    public var waitingFor: String?
    /// ``JobFingerprint/digest`` of the inputs recorded at submit.
    public var fingerprint: String?
    /// Seconds since submit, until the job ended.
    public var elapsedSeconds: Double?
    /// Layers calibrated and exported, rates over the last minute, what the job waits for; nil before it ran.
    public var progress: JobProgress?
    /// What the job went on despite, in words (e.g. fewer calibration samples than `--samples` asked for).
    public var warnings: [String] = []
    /// Each exported Linear's figures (``LinearQuality``), in layer order; empty until the export reaches them.
    public var linears: [LinearQuality] = []

    public init(jobID: String, phase: JobState, model: String, output: String, workers: [Worker],
                samplesThrough: [String: Int], tokensPerSecond: Double?, etaSeconds: Double?, outputBytes: Int64?,
                failureReason: String?, quality: JobQuality? = nil, createdAt: Date, updatedAt: Date) {
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
        self.quality = quality
        self.createdAt = Self.timestamp(createdAt)
        self.updatedAt = Self.timestamp(updatedAt)
    }

    /// The range key used in `workers[].range` and `samples_through`: inclusive `"first-last"`.
    public static func rangeKey(_ range: Range<Int>) -> String {
        "\(range.lowerBound)-\(range.upperBound - 1)"
    }

    /// `date` as `created_at` and `updated_at` write it: ISO 8601, UTC, whole seconds.
    public static func timestamp(_ date: Date) -> String {
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
        case quality
        case createdAt = "created_at"
        case updatedAt = "updated_at"
        case queuePosition = "queue_position"
        case waitingFor = "waiting_for"
        case fingerprint, progress, warnings, linears
        case elapsedSeconds = "elapsed_seconds"
    }

    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        schemaVersion = try container.decode(Int.self, forKey: .schemaVersion)
        state = try container.decode(State.self, forKey: .state)
        jobID = try container.decode(String.self, forKey: .jobID)
        phase = try container.decode(JobState.self, forKey: .phase)
        model = try container.decode(String.self, forKey: .model)
        output = try container.decode(String.self, forKey: .output)
        workers = try container.decode([Worker].self, forKey: .workers)
        samplesThrough = try container.decode([String: Int].self, forKey: .samplesThrough)
        tokensPerSecond = try container.decodeIfPresent(Double.self, forKey: .tokensPerSecond)
        etaSeconds = try container.decodeIfPresent(Double.self, forKey: .etaSeconds)
        outputBytes = try container.decodeIfPresent(Int64.self, forKey: .outputBytes)
        failureReason = try container.decodeIfPresent(String.self, forKey: .failureReason)
        quality = try container.decodeIfPresent(JobQuality.self, forKey: .quality)
        createdAt = try container.decode(String.self, forKey: .createdAt)
        updatedAt = try container.decode(String.self, forKey: .updatedAt)
        queuePosition = try container.decodeIfPresent(Int.self, forKey: .queuePosition)
        waitingFor = try container.decodeIfPresent(String.self, forKey: .waitingFor)
        fingerprint = try container.decodeIfPresent(String.self, forKey: .fingerprint)
        // Added within schema version 1: older documents lack them.
        progress = try container.decodeIfPresent(JobProgress.self, forKey: .progress)
        elapsedSeconds = try container.decodeIfPresent(Double.self, forKey: .elapsedSeconds)
        warnings = try container.decodeIfPresent([String].self, forKey: .warnings) ?? []
        linears = try container.decodeIfPresent([LinearQuality].self, forKey: .linears) ?? []
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
        try container.encode(quality, forKey: .quality)
        try container.encode(createdAt, forKey: .createdAt)
        try container.encode(updatedAt, forKey: .updatedAt)
        try container.encode(queuePosition, forKey: .queuePosition)
        try container.encode(waitingFor, forKey: .waitingFor)
        try container.encode(fingerprint, forKey: .fingerprint)
        try container.encode(progress, forKey: .progress)
        try container.encode(elapsedSeconds, forKey: .elapsedSeconds)
        try container.encode(warnings, forKey: .warnings)
        try container.encode(linears, forKey: .linears)
    }


    /// JSON as `coordctl status --json` prints it: sorted keys, so output is byte-stable.
    public func jsonData() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .prettyPrinted, .withoutEscapingSlashes]
        return try encoder.encode(self)
    }
}

/// Where a running (or ended) job stands, as `status --json`'s `progress` object. Every rate is named for what it
/// counts: a *layer-token* is one token through one decoder layer (calibration runs each token through every layer,
/// so a job has `tokens × layers` of them); export is measured in checkpoint bytes written.
///
/// ```json
/// {"layers_total": 80, "layers_calibrated": 41, "layers_exported": 39,
///  "calibration_layer_tokens_done": 12595200, "calibration_layer_tokens_total": 24576000,
///  "calibration_layer_tokens_per_second": 310000.5,   // last minute; null when none or once calibration ended
///  "exported_bytes": 19000000000, "export_bytes_per_second": 410000000.0,   // last minute, or null
///  "evaluation_layers_done": null, "evaluation_layers_total": null,          // the quality report, both models
///  "waiting": null}                                   // e.g. "for lost worker(s) node-b to come back (up to 300 s)"
/// ```
public struct JobProgress: Codable, Sendable, Equatable {
    public var layersTotal: Int
    public var layersCalibrated: Int
    public var layersExported: Int
    public var calibrationLayerTokensDone: Int
    public var calibrationLayerTokensTotal: Int
    public var calibrationLayerTokensPerSecond: Double?
    public var exportedBytes: Int64
    public var exportBytesPerSecond: Double?
    public var evaluationLayersDone: Int?
    public var evaluationLayersTotal: Int?
    public var waiting: String?

    public init(layersTotal: Int, layersCalibrated: Int = 0, layersExported: Int = 0, calibrationLayerTokensDone: Int = 0,
                calibrationLayerTokensTotal: Int = 0, calibrationLayerTokensPerSecond: Double? = nil,
                exportedBytes: Int64 = 0, exportBytesPerSecond: Double? = nil, evaluationLayersDone: Int? = nil,
                evaluationLayersTotal: Int? = nil, waiting: String? = nil) {
        self.layersTotal = layersTotal
        self.layersCalibrated = layersCalibrated
        self.layersExported = layersExported
        self.calibrationLayerTokensDone = calibrationLayerTokensDone
        self.calibrationLayerTokensTotal = calibrationLayerTokensTotal
        self.calibrationLayerTokensPerSecond = calibrationLayerTokensPerSecond
        self.exportedBytes = exportedBytes
        self.exportBytesPerSecond = exportBytesPerSecond
        self.evaluationLayersDone = evaluationLayersDone
        self.evaluationLayersTotal = evaluationLayersTotal
        self.waiting = waiting
    }

    enum CodingKeys: String, CodingKey {
        case layersTotal = "layers_total"
        case layersCalibrated = "layers_calibrated"
        case layersExported = "layers_exported"
        case calibrationLayerTokensDone = "calibration_layer_tokens_done"
        case calibrationLayerTokensTotal = "calibration_layer_tokens_total"
        case calibrationLayerTokensPerSecond = "calibration_layer_tokens_per_second"
        case exportedBytes = "exported_bytes"
        case exportBytesPerSecond = "export_bytes_per_second"
        case evaluationLayersDone = "evaluation_layers_done"
        case evaluationLayersTotal = "evaluation_layers_total"
        case waiting
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(layersTotal, forKey: .layersTotal)
        try container.encode(layersCalibrated, forKey: .layersCalibrated)
        try container.encode(layersExported, forKey: .layersExported)
        try container.encode(calibrationLayerTokensDone, forKey: .calibrationLayerTokensDone)
        try container.encode(calibrationLayerTokensTotal, forKey: .calibrationLayerTokensTotal)
        try container.encode(calibrationLayerTokensPerSecond, forKey: .calibrationLayerTokensPerSecond)
        try container.encode(exportedBytes, forKey: .exportedBytes)
        try container.encode(exportBytesPerSecond, forKey: .exportBytesPerSecond)
        try container.encode(evaluationLayersDone, forKey: .evaluationLayersDone)
        try container.encode(evaluationLayersTotal, forKey: .evaluationLayersTotal)
        try container.encode(waiting, forKey: .waiting)
    }
}

/// Perplexity of the original model against the written checkpoint on held-out text, and what the quality gate made
/// of it (`status --json`'s `quality`). Perplexities that are not finite appear as the strings `inf` or `nan`.
public struct JobQuality: Codable, Sendable, Equatable {
    public enum Gate: String, Codable, Sendable {
        case passed, failed
        /// `--no-quality-gate`.
        case off
    }

    public var samples: Int
    public var tokens: Int
    public var originalPerplexity: Double
    public var quantizedPerplexity: Double
    /// The gate's limit on quantized / original perplexity; nil when it was off.
    public var maxPerplexityRatio: Double?
    public var gate: Gate
    /// Linears kept unquantized (`--exclude`); nil when there are none.
    public var excludedLinears: Int?
    /// What the per-Linear output errors (`linears[].output_relative_error`) were measured on; nil when they were not.
    public var outputErrorInputs: LinearOutputErrorInputs?

    public init(samples: Int, tokens: Int, originalPerplexity: Double, quantizedPerplexity: Double,
                maxPerplexityRatio: Double?, gate: Gate, excludedLinears: Int? = nil,
                outputErrorInputs: LinearOutputErrorInputs? = nil) {
        self.samples = samples
        self.tokens = tokens
        self.originalPerplexity = originalPerplexity
        self.quantizedPerplexity = quantizedPerplexity
        self.maxPerplexityRatio = maxPerplexityRatio
        self.gate = gate
        self.excludedLinears = excludedLinears
        self.outputErrorInputs = outputErrorInputs
    }

    /// quantized / original.
    public var perplexityRatio: Double { quantizedPerplexity / originalPerplexity }

    enum CodingKeys: String, CodingKey {
        case samples, tokens, gate
        case originalPerplexity = "original_perplexity"
        case quantizedPerplexity = "quantized_perplexity"
        case perplexityRatio = "perplexity_ratio"
        case maxPerplexityRatio = "max_perplexity_ratio"
        case excludedLinears = "excluded_linears"
        case outputErrorInputs = "output_error_inputs"
    }

    public func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(samples, forKey: .samples)
        try container.encode(tokens, forKey: .tokens)
        try container.encode(gate, forKey: .gate)
        try Self.encode(originalPerplexity, forKey: .originalPerplexity, in: &container)
        try Self.encode(quantizedPerplexity, forKey: .quantizedPerplexity, in: &container)
        try Self.encode(perplexityRatio, forKey: .perplexityRatio, in: &container)
        try container.encode(maxPerplexityRatio, forKey: .maxPerplexityRatio)
        try container.encodeIfPresent(excludedLinears, forKey: .excludedLinears)
        try container.encodeIfPresent(outputErrorInputs, forKey: .outputErrorInputs)
    }

    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        samples = try container.decode(Int.self, forKey: .samples)
        tokens = try container.decode(Int.self, forKey: .tokens)
        gate = try container.decode(Gate.self, forKey: .gate)
        originalPerplexity = try Self.decode(.originalPerplexity, in: container)
        quantizedPerplexity = try Self.decode(.quantizedPerplexity, in: container)
        maxPerplexityRatio = try container.decodeIfPresent(Double.self, forKey: .maxPerplexityRatio)
        excludedLinears = try container.decodeIfPresent(Int.self, forKey: .excludedLinears)
        outputErrorInputs = try container.decodeIfPresent(LinearOutputErrorInputs.self, forKey: .outputErrorInputs)
    }

    // JSON has no Inf or NaN: such values travel as their Swift spelling.
    private static func encode(_ value: Double, forKey key: CodingKeys,
                               in container: inout KeyedEncodingContainer<CodingKeys>) throws {
        if value.isFinite { try container.encode(value, forKey: key) } else { try container.encode("\(value)", forKey: key) }
    }

    private static func decode(_ key: CodingKeys, in container: KeyedDecodingContainer<CodingKeys>) throws -> Double {
        if let value = try? container.decode(Double.self, forKey: key) { return value }
        let text = try container.decode(String.self, forKey: key)
        guard let value = Double(text) else {
            throw DecodingError.dataCorruptedError(forKey: key, in: container, debugDescription: "not a number: \(text)")
        }
        return value
    }
}

extension JobQuality {
    /// `perplexity 48.04 → 67.68 (1.41×) on 16 held-out samples, 6017 tokens; gate passed (limit 2×)`, with the
    /// Linears kept unquantized when there were any and, when asked, the verdict before the gate.
    public func sentence(withVerdict: Bool = false) -> String {
        let gateText = switch gate {
        case .passed: String(format: "gate passed (limit %.3g×)", maxPerplexityRatio ?? 0)
        case .failed: String(format: "gate FAILED (limit %.3g×)", maxPerplexityRatio ?? 0)
        case .off: "gate off"
        }
        let ratio = perplexityRatio.isFinite ? String(format: "%.3g×", perplexityRatio) : "not finite"
        return "perplexity \(formatPerplexity(originalPerplexity)) → \(formatPerplexity(quantizedPerplexity)) (\(ratio)) "
            + "on \(samples) held-out samples, \(tokens) tokens"
            + (excludedLinears.map { ", with \($0) Linears kept unquantized (--exclude)" } ?? "")
            + (withVerdict ? "; verdict \(QualityVerdict(relativeIncrease: perplexityRatio - 1).rawValue)" : "") + "; \(gateText)"
    }
}
