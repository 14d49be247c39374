/// Why the state store refused an operation. Each description names the path, job, worker, layer, chunk or module
/// at fault.
public enum ClusterStateError: Error, Equatable, Sendable, CustomStringConvertible {
    case stateDirectoryUnusable(path: String, reason: String)
    /// The state file exists but is not a readable SQLite database (corrupt, truncated, or some other file).
    case stateFileUnreadable(path: String, reason: String)
    /// The state file was migrated by a newer coordd that knows tables this one does not.
    case stateFileFromNewerVersion(path: String)
    case jobNotFound(String)
    case jobAlreadyExists(String)
    case optionsNotEncodable(reason: String)
    case invalidTransition(jobID: String, from: JobState, to: JobState)
    case missingFailureReason(jobID: String)
    case reasonNotAllowed(jobID: String, state: JobState)
    case jobIsTerminal(jobID: String, state: JobState)
    case workerNotFound(String)
    case workerIsDead(String)
    case invalidPlan(jobID: String, reason: String)
    case planLayerCountMismatch(jobID: String, planLayers: Int, jobLayers: Int)
    case layerOutOfRange(jobID: String, layer: Int, layerCount: Int?)
    case invalidChunk(jobID: String, layer: Int, chunk: Int)
    case invalidSampleCount(jobID: String, layer: Int, chunk: Int, sampleCount: Int)
    case emptyAmaxReport(jobID: String, layer: Int, chunk: Int)
    case invalidAmax(jobID: String, layer: Int, chunk: Int, input: String, value: Float)
    case chunkConflict(jobID: String, layer: Int, chunk: Int, reason: String)
    case layerAlreadyCompleted(jobID: String, layer: Int)
    case invalidExpectedChunkCount(jobID: String, layer: Int, count: Int)
    /// Chunks `missingChunks` (of `0 ..< expectedChunks`) have not been recorded for the layer yet.
    case layerIncomplete(jobID: String, layer: Int, expectedChunks: Int, missingChunks: [Int])
    case unexpectedChunks(jobID: String, layer: Int, expectedChunks: Int, chunks: [Int])
    case inputMissingChunks(jobID: String, layer: Int, input: String, missingChunks: [Int])
    /// Spec §4: a zero merged amax means the Linears reading that input were never exercised.
    case zeroActivationAmax(jobID: String, layer: Int, input: String)

    public var description: String {
        switch self {
        case .stateDirectoryUnusable(let path, let reason):
            return "state directory \(path) is unusable: \(reason)"
        case .stateFileUnreadable(let path, let reason):
            return "state file \(path) is not a readable coordd SQLite database (\(reason)); "
                + "move it aside to start with an empty state"
        case .stateFileFromNewerVersion(let path):
            return "state file \(path) was written by a newer coordd; upgrade coordd to read it"
        case .jobNotFound(let id):
            return "no job '\(id)'"
        case .jobAlreadyExists(let id):
            return "a job '\(id)' already exists"
        case .optionsNotEncodable(let reason):
            return "job options cannot be encoded as JSON: \(reason)"
        case .invalidTransition(let id, let from, let to):
            let allowed = from.allowedNextStates.map(\.rawValue).sorted().joined(separator: ", ")
            return "job '\(id)' cannot move from \(from.rawValue) to \(to.rawValue) (allowed: "
                + (allowed.isEmpty ? "none, \(from.rawValue) is terminal" : allowed) + ")"
        case .missingFailureReason(let id):
            return "job '\(id)' cannot fail without a reason"
        case .reasonNotAllowed(let id, let state):
            return "job '\(id)': a reason is only kept for failed or cancelled, not \(state.rawValue)"
        case .jobIsTerminal(let id, let state):
            return "job '\(id)' is \(state.rawValue) and takes no more updates"
        case .workerNotFound(let name):
            return "no registered worker '\(name)'"
        case .workerIsDead(let name):
            return "worker '\(name)' is marked dead; it must register again"
        case .invalidPlan(let id, let reason):
            return "plan for job '\(id)' is invalid: \(reason)"
        case .planLayerCountMismatch(let id, let planLayers, let jobLayers):
            return "plan for job '\(id)' covers \(planLayers) layers but the job has \(jobLayers)"
        case .layerOutOfRange(let id, let layer, let layerCount):
            return "job '\(id)': layer \(layer) is out of range"
                + (layerCount.map { " 0..<\($0)" } ?? " (must not be negative)")
        case .invalidChunk(let id, let layer, let chunk):
            return "job '\(id)' layer \(layer): chunk id \(chunk) must not be negative"
        case .invalidSampleCount(let id, let layer, let chunk, let count):
            return "job '\(id)' layer \(layer) chunk \(chunk): sample count \(count) must be at least 1"
        case .emptyAmaxReport(let id, let layer, let chunk):
            return "job '\(id)' layer \(layer) chunk \(chunk): the report has no activation amax values"
        case .invalidAmax(let id, let layer, let chunk, let input, let value):
            return "job '\(id)' layer \(layer) chunk \(chunk): amax of input '\(input)' is \(value); "
                + "it must be finite and not negative" + (input.isEmpty ? " (and the input name is empty)" : "")
        case .chunkConflict(let id, let layer, let chunk, let reason):
            return "job '\(id)' layer \(layer) chunk \(chunk) was already recorded differently: \(reason)"
        case .layerAlreadyCompleted(let id, let layer):
            return "job '\(id)' layer \(layer) is already completed; its statistics are final"
        case .invalidExpectedChunkCount(let id, let layer, let count):
            return "job '\(id)' layer \(layer): expected chunk count \(count) must be at least 1"
        case .layerIncomplete(let id, let layer, let expected, let missing):
            return "job '\(id)' layer \(layer) is not complete: \(missing.count) of \(expected) chunks missing "
                + "(\(Self.list(missing)))"
        case .unexpectedChunks(let id, let layer, let expected, let chunks):
            return "job '\(id)' layer \(layer) has chunks \(Self.list(chunks)) outside 0..<\(expected)"
        case .inputMissingChunks(let id, let layer, let input, let missing):
            return "job '\(id)' layer \(layer): input '\(input)' has no amax for chunks \(Self.list(missing))"
        case .zeroActivationAmax(let id, let layer, let input):
            return "job '\(id)' layer \(layer): input '\(input)' has amax 0 over every chunk; the Linears reading it were never exercised"
        }
    }

    private static func list(_ values: [Int]) -> String {
        let shown = values.prefix(10).map(String.init).joined(separator: ", ")
        return values.count > 10 ? shown + ", …" : shown
    }
}
