/// # ClusterProtocol
///
/// What coordd, workerd and coordctl say to each other, independent of how it travels.
///
/// - ``CoordinatorEndpoint`` and ``WorkerEndpoint`` are `@Resolvable` distributed-actor protocols: the `Coordinator`
///   module implements the first and calls the second, the `Worker` module the reverse, and neither depends on the
///   other. Every distributed function is monomorphic and takes and returns Codable values, which the
///   ``ClusterActorSystem`` encodes in its binary envelope.
/// - Bulk data (hidden states between workers, exported layer tensors to the coordinator) never travels through
///   these calls: it goes over an `ActivationTransport`, identified by a ``BulkTensorID``.
/// - Well-known actor names: ``WellKnownActor``.
import ActorSystem
import Distributed
import JobModel
import Foundation

/// Names under which the daemons register their actors, so that a peer knowing only host:port can resolve them.
public enum WellKnownActor {
    public static let coordinator = "coordinator"
    /// coordd's node name: its certificate's with TLS (the deployment guide issues it as `coordinator`), and this
    /// fixed name without TLS. Workers and coordctl expect it when they dial coordd.
    public static let coordinatorNode = "coordinator"
    public static let worker = "worker"
}

/// The coordinator's API: worker registration and reports, and the client commands of coordctl.
@Resolvable
public protocol CoordinatorEndpoint: DistributedActor where ActorSystem == ClusterActorSystem {
    /// A worker announces itself (again after a restart). Refused if the name is taken by another live endpoint.
    distributed func register(_ info: WorkerInfo) async throws -> RegistrationReply
    /// Liveness and free disk, every few seconds.
    distributed func heartbeat(worker: String, freeDiskBytes: Int64) async throws
    /// One chunk of samples has passed every layer of a worker's range.
    distributed func reportChunk(_ report: ChunkReport) async throws
    /// A worker failed in the background (while consuming hidden states from its predecessor).
    distributed func reportFailure(jobID: String, attempt: Int, worker: String, message: String) async throws
    /// A worker's data path to `successor` stayed down past the worker's `--link-timeout`: the job re-plans without
    /// the successor when the others can hold its layers, and fails naming the link otherwise.
    distributed func reportLinkDown(jobID: String, attempt: Int, worker: String, successor: String, message: String) async throws
    /// The worker measuring a job's quality report finished another layer of both models (for `status`).
    distributed func reportEvaluationProgress(jobID: String, worker: String, completedLayers: Int, totalLayers: Int) async throws

    /// What the worker's link to the next worker runs on now (`tcp`, `rdma`, `rdma→tcp: REASON`), for `coordctl workers`.
    distributed func reportLinkTransport(worker: String, linkTransport: String) async throws

    /// Starts a job; returns its id.
    distributed func submit(_ submission: JobSubmission) async throws -> String
    distributed func status(jobID: String) async throws -> JobStatus
    distributed func list() async throws -> [JobStatus]
    distributed func workers() async throws -> [WorkerRecord]
    distributed func cancel(jobID: String) async throws -> JobStatus
    /// Removes, on every live worker, hidden states kept for jobs that are not queued or running (`coordctl gc`).
    distributed func collectGarbage() async throws -> [GarbageReport]
}

/// A worker's API, called by the coordinator.
@Resolvable
public protocol WorkerEndpoint: DistributedActor where ActorSystem == ClusterActorSystem {
    /// Checks the model (config hash), loads the layers of the assigned range and connects the data path to the
    /// successor. Replaces whatever job state the worker held for this job before (a resume re-sends it).
    distributed func loadLayers(_ assignment: WorkerAssignment) async throws -> LoadReport
    /// First range only: embeds chunk `chunk` of the calibration plan, runs it through the range and forwards the
    /// hidden states to the successor. Returns once they are handed to the data path.
    distributed func calibrate(_ order: CalibrateOrder) async throws
    /// A single-range plan (every layer on one worker, e.g. `coordctl quantize`): starts a layer-at-a-time pass
    /// over every chunk in the background, so that only one layer's weights are resident, and reports each layer's
    /// chunks as the layer completes. Failures arrive through `reportFailure`.
    distributed func calibrateAll(jobID: String) async throws
    /// A later range after a restart: runs the chunks whose input hidden states it kept on disk, as if they had
    /// just arrived. Returns the chunks it had; the coordinator re-sends the rest from an earlier range.
    distributed func replayStoredChunks(jobID: String, chunks: [Int]) async throws -> [Int]
    /// Which chunks' input hidden states are kept on disk for the job.
    distributed func storedChunks(jobID: String) async throws -> [Int]
    /// Quantizes layer `layer` with the given activation amax and streams its tensors to the coordinator.
    distributed func exportLayer(_ request: ExportRequest) async throws -> ExportManifest
    /// Perplexity of the original model against the written checkpoint on held-out text. Throws
    /// ``WorkerError/checkpointNotVisible(worker:path:reason:)`` when this worker cannot read that checkpoint, so the
    /// coordinator asks another.
    distributed func evaluateQuality(_ request: QualityRequest) async throws -> QualityReport
    distributed func status() async throws -> WorkerStatusReport
    /// Stops the job's work; with `discardState` the kept hidden states go too (job finished or cancelled).
    distributed func cancel(jobID: String, discardState: Bool) async throws
    /// Removes the hidden states kept for every job not in `keep` (and not loaded now); returns the jobs removed.
    distributed func collectGarbage(keep: [String]) async throws -> [String]
}
