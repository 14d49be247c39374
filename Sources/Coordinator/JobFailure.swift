import JobModel
import Foundation

/// Why an attempt of a job stopped. Its description becomes the job's failure reason in `coordctl status`, so each
/// case names the worker, tensor or setting, in words an operator can act on.
enum JobFailure: Error, CustomStringConvertible {
    case workerLost(worker: String, reason: String)
    /// The worker reported that its own work failed.
    case workerFailed(worker: String, message: String)
    /// Calibration and export run side by side; this one stopped because the other failed with `reason`.
    case stoppedBeside(reason: String)
    case connectionLost(worker: String, reason: String)
    case jobVanished(jobID: String)
    case notEnoughWorkers(needed: Int, registered: Int, graceSeconds: Int)
    case workerNotRegistered(worker: String)
    case noModelConfig(jobID: String)
    case qualityReportFailed(reason: String)
    /// No worker of the job reads the checkpoint coordd staged, so none can measure its quality.
    case noWorkerSeesCheckpoint(path: String, refusals: [String])
    case unknownTensorDType(worker: String, tensor: String, dtype: String)
    /// A worker in another process sent an exported tensor without its SHA-256 (only in-process workers may).
    case missingTensorDigest(worker: String, tensor: String)
    /// A worker's figures for a layer's Linears do not fit the layer (unknown name, a number that is not finite).
    case implausibleWeightQuality(worker: String, layer: Int, linear: String, reason: String)
    /// The quality report named a Linear the model lacks, or an output error that is not a finite, non-negative number.
    case implausibleOutputError(linear: String, value: Double)
    /// The inputs differ from the fingerprint recorded at submit (a resume after the model or calibration changed).
    case inputsChanged(jobID: String, changes: [String])
    /// A worker's scratch filesystem cannot hold the hidden states it must keep for the job.
    case scratchTooSmall(worker: String, needed: Int64, free: Int64)
    /// A worker made no progress within its deadline (hung or wedged), while doing `doing`.
    case workerHung(worker: String, doing: String, seconds: Int)

    var description: String {
        switch self {
        case .workerLost(let worker, let reason): "worker \(worker) lost: \(reason)"
        case .workerFailed(let worker, let message): "worker \(worker): \(message)"
        case .stoppedBeside(let reason): reason
        case .connectionLost(let worker, let reason): "connection to worker \(worker) lost: \(reason)"
        case .jobVanished(let jobID): "job \(jobID) vanished from coordd's state"
        case .notEnoughWorkers(let needed, let registered, let grace):
            "the job needs \(needed) live worker(s); \(registered) registered within \(grace) s"
        case .workerNotRegistered(let worker): "worker \(worker) of the plan is not registered"
        case .noModelConfig(let jobID): "job \(jobID) has no model config loaded to re-plan with"
        case .qualityReportFailed(let reason):
            "the quality report failed, so the checkpoint cannot be judged: \(reason) (--eval-samples 0 skips the "
                + "report and its gate)"
        case .noWorkerSeesCheckpoint(let path, let refusals):
            "no worker of the job can read the checkpoint at \(path) to measure its quality (\(refusals.joined(separator: "; "))); "
                + "run a workerd on coordd's machine or give the workers shared storage, or pass --eval-samples 0 to "
                + "skip the report and its gate"
        case .unknownTensorDType(let worker, let tensor, let dtype): "worker \(worker) sent tensor \(tensor) with dtype \(dtype)"
        case .missingTensorDigest(let worker, let tensor):
            "worker \(worker) sent tensor \(tensor) over the network without its SHA-256; only a worker in coordd's own process may"
        case .implausibleWeightQuality(let worker, let layer, let linear, let reason):
            "worker \(worker) sent figures for \(linear) with layer \(layer) that cannot be right: \(reason)"
        case .implausibleOutputError(let linear, let value):
            "the quality report gave \(linear) an output error of \(value), which cannot be right"
        case .scratchTooSmall(let worker, let needed, let free):
            "worker \(worker)'s --scratch needs \(formatBytes(Int(needed))) for the hidden states entering its range, "
                + "\(formatBytes(Int(free))) free; free space there, point --scratch elsewhere, or plan fewer tokens"
        case .workerHung(let worker, let doing, let seconds):
            "worker \(worker) made no progress for \(seconds) s while \(doing) (hung or wedged; see --progress-timeout)"
        case .inputsChanged(let jobID, let changes):
            "the inputs of job \(jobID) changed since it was submitted: \(changes.joined(separator: "; ")); its statistics "
                + "belong to the old inputs, so it cannot resume: submit it again as a new job"
        }
    }
}
