/// A job's phase. Stored as its raw value, which is also what `coordctl status --json` prints as `phase`.
public enum JobState: String, Codable, Sendable, CaseIterable {
    case queued, loading, calibrating, exporting, merging, evaluating, succeeded, failed, cancelled

    /// Succeeded, failed and cancelled jobs never change again.
    public var isTerminal: Bool {
        switch self {
        case .succeeded, .failed, .cancelled: return true
        default: return false
        }
    }

    /// The phases a job may move to from this one.
    ///
    /// - `loading → exporting` skips calibration (weight-only schemes).
    /// - `calibrating`, `exporting`, `merging` or `evaluating` `→ loading` re-load weights after a worker loss or a
    ///   coordd restart (the statistics are kept; the checkpoint is written again).
    /// - `exporting → succeeded` when there is nothing to merge (one shard writer).
    /// - `merging → evaluating` when the written checkpoint's quality is measured before it is renamed into place.
    /// - Every non-terminal phase may fail or be cancelled. A phase never moves to itself.
    public var allowedNextStates: Set<JobState> {
        switch self {
        case .queued: return [.loading, .failed, .cancelled]
        case .loading: return [.calibrating, .exporting, .failed, .cancelled]
        case .calibrating: return [.exporting, .loading, .failed, .cancelled]
        case .exporting: return [.merging, .succeeded, .loading, .failed, .cancelled]
        case .merging: return [.evaluating, .succeeded, .loading, .failed, .cancelled]
        case .evaluating: return [.succeeded, .loading, .failed, .cancelled]
        case .succeeded, .failed, .cancelled: return []
        }
    }

    public func canMove(to next: JobState) -> Bool { allowedNextStates.contains(next) }
}

/// Whether coordd considers a worker usable.
public enum WorkerHealth: String, Codable, Sendable, CaseIterable {
    case alive, dead
}
