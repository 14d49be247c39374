import Foundation

/// What a worker refuses, typed and Codable so the coordinator decodes it; every case names the worker.
public enum WorkerError: Error, Codable, Sendable, Equatable, CustomStringConvertible {
    /// A call for a job this worker has not loaded (it restarted, or the job was never planned onto it).
    case jobNotLoaded(worker: String, jobID: String)
    /// A layer outside the worker's range.
    case layerNotInRange(worker: String, layer: Int, range: Range<Int>)
    /// A call only the range that embeds (or holds every layer) takes.
    case wrongRange(worker: String, call: String, range: Range<Int>)
    /// A chunk that should have come with the predecessor's hidden states came without them.
    case missingHiddenStates(worker: String, chunk: Int)
    /// A daemon setting that cannot work, naming the option.
    case badSetting(worker: String, option: String, reason: String)
    /// The checkpoint to evaluate is not readable here, or is not the one the coordinator wrote (no shared storage).
    case checkpointNotVisible(worker: String, path: String, reason: String)
    /// The calibration token ids sent on the data path are not the plan's (wrong size or SHA-256).
    case tokenIDsDoNotMatchPlan(worker: String, reason: String)
    /// The data path to the next range stayed down longer than the worker's `--link-timeout`.
    case successorUnreachable(worker: String, successor: String, seconds: Int, reason: String)
    /// `--transport rdma`, and the link to `peer` cannot run over RDMA: the peer refused (its reason), or the
    /// exchange failed.
    case rdmaLinkRefused(worker: String, peer: String, reason: String)

    public var description: String {
        switch self {
        case .jobNotLoaded(let worker, let jobID):
            "worker \(worker) has not loaded job \(jobID) (it may have restarted; the coordinator loads it again)"
        case .layerNotInRange(let worker, let layer, let range):
            "worker \(worker) holds layers \(range.lowerBound)..<\(range.upperBound), not layer \(layer)"
        case .wrongRange(let worker, let call, let range):
            "worker \(worker) holds layers \(range.lowerBound)..<\(range.upperBound); \(call)"
        case .missingHiddenStates(let worker, let chunk):
            "worker \(worker): chunk \(chunk) arrived without the previous range's hidden states"
        case .badSetting(let worker, let option, let reason):
            "workerd \(worker): \(option) \(reason)"
        case .checkpointNotVisible(let worker, let path, let reason):
            "worker \(worker) cannot read the checkpoint at \(path): \(reason)"
        case .tokenIDsDoNotMatchPlan(let worker, let reason):
            "worker \(worker) received calibration token ids that are not the plan's: \(reason)"
        case .successorUnreachable(let worker, let successor, let seconds, let reason):
            "worker \(worker) could not send hidden states to \(successor) for \(seconds) s (--link-timeout): \(reason)"
        case .rdmaLinkRefused(let worker, let peer, let reason):
            "worker \(worker) runs with --transport rdma, but the link to \(peer) cannot use RDMA: \(reason)"
        }
    }
}
