import Foundation
import ActorSystem

/// What coordd refuses, as a typed value that crosses the wire (Codable) and is decoded on the caller's side, so
/// coordctl and workerd can say what happened in their own words, naming the job, worker or field.
public enum CoordinatorError: Error, Codable, Sendable, Equatable, CustomStringConvertible {
    case jobNotFound(jobID: String)
    case jobAlreadyExists(jobID: String)
    case jobAlreadyEnded(jobID: String, state: String)
    /// A worker reported for a job coordd is not running (finished, cancelled, or from before a restart).
    case jobNotRunning(jobID: String)
    case workerNotRegistered(worker: String)
    case workerMarkedDead(worker: String)
    /// A submission that cannot run: the option or file at fault, and why.
    case invalidSubmission(field: String, reason: String)
    /// A worker reported a chunk the job's calibration plan does not have.
    case chunkNotInJob(jobID: String, chunk: Int)
    /// A worker reported a layer the job's model does not have.
    case layerNotInModel(jobID: String, worker: String, layer: Int)
    /// A coordd setting that cannot work, naming the option.
    case badSetting(option: String, reason: String)
    /// A call that names a worker other than the one the caller proved to be (handshake, certificate).
    case identityMismatch(claimed: String, proven: String)
    /// A worker of that name is registered on another live connection.
    case workerNameTaken(worker: String)
    /// A chunk report whose numbers are not the plan's (a worker of another version, or a peer that lies).
    case reportDoesNotMatchPlan(jobID: String, worker: String, chunk: Int, field: String, reported: Int, planned: Int)

    public var description: String {
        switch self {
        case .jobNotFound(let id): "no job \(id)"
        case .jobAlreadyExists(let id): "a job \(id) already exists"
        case .jobAlreadyEnded(let id, let state): "job \(id) already \(state)"
        case .jobNotRunning(let id): "job \(id) is not running"
        case .workerNotRegistered(let worker): "worker \(worker) is not registered; it must register again"
        case .workerMarkedDead(let worker): "worker \(worker) was marked dead; it must register again"
        case .invalidSubmission(let field, let reason): "\(field): \(reason)"
        case .badSetting(let option, let reason): "coordd: \(option) \(reason)"
        case .chunkNotInJob(let id, let chunk): "chunk \(chunk) is not part of job \(id)"
        case .identityMismatch(let claimed, let proven):
            "the call names worker \(claimed), but the caller is \(proven); a node speaks only for itself"
        case .workerNameTaken(let worker):
            "a worker named \(worker) is already registered and alive; names are unique in the cluster"
        case .reportDoesNotMatchPlan(let id, let worker, let chunk, let field, let reported, let planned):
            "\(worker) reported \(field) \(reported) for chunk \(chunk) of job \(id); the plan has \(planned)"
        case .layerNotInModel(let id, let worker, let layer):
            "\(worker) reported layer \(layer), which job \(id)'s model does not have"
        }
    }
}

/// An error as an operator reads it in a job's failure reason or a log line: a remote error is its own message (which
/// names its node), not the call's envelope with Swift type names.
public func operatorDescription(of error: any Error) -> String {
    if let remote = error as? RemoteCallError { return remote.message }
    return "\(error)"
}
