/// coordd's state and planning, with no networking and no Llama math.
///
/// - ``LayerPlanner`` splits decoder layers into contiguous per-worker ranges (by memory or `--split`) and re-plans
///   after a worker is lost.
/// - ``ClusterStateStore`` keeps jobs, workers, plans, per-layer progress and per-Linear activation statistics in
///   SQLite (GRDB) under `--state-dir`, so a restarted coordd shows every job and resumes running ones from their
///   last completed layer.
/// - ``JobStatus`` is the stable `coordctl status --json` schema.
///
/// Everything here is synchronous and thread-safe; the daemon calls it from its actors.
public enum ClusterState {}

// Its API speaks in the plain job types (JobState, JobStatus, WorkerRecord): whoever uses the store sees them.
@_exported import JobModel
