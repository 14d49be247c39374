/// # JobModel
///
/// Plain data that every role shares, with no I/O and no dependency beyond Foundation, so that the wire contract
/// (ClusterProtocol), the coordinator's store and the command-line client can carry a job without linking the engine
/// or a compute backend:
/// - ``JobSpec``: a job as submitted and sent to every worker, with ``QuantizationScheme``, ``CheckpointLayout``,
///   ``ActivationPrecision`` and ``DeviceChoice``;
/// - ``CalibrationPlan``: the calibration samples in chunks, built once by the coordinator;
/// - ``JobState``, ``JobStatus`` (the stable `status --json` schema), ``WorkerRecord``;
/// - ``QualityReport`` and ``QualityGate``: the perplexity a worker measures and what decides success.
import Foundation

/// The tool's version, recorded in `calibration.json`, printed by `--version` and sent when a worker registers.
public enum NVFP4ClusterVersion {
    public static let current = "0.1.0"
    /// `NVFP4Cluster 0.1.0`.
    public static let full = "NVFP4Cluster \(current)"
}

/// `478 kB`, `12.3 MB`, `4.02 GB`: sizes in summaries and status lines.
public func formatBytes(_ bytes: Int) -> String {
    let value = Double(bytes)
    if value >= 1e9 { return String(format: "%.2f GB", value / 1e9) }
    if value >= 1e6 { return String(format: "%.1f MB", value / 1e6) }
    return String(format: "%.0f kB", value / 1e3)
}

/// `4m05s`, `1h02m`: durations in progress and status lines.
public func formatDuration(_ seconds: Double) -> String {
    let s = Int(seconds.rounded())
    return s >= 3600 ? String(format: "%dh%02dm", s / 3600, s / 60 % 60) : String(format: "%dm%02ds", s / 60, s % 60)
}

/// Seconds since `start`, for rates, durations and logs.
public func secondsSince(_ start: ContinuousClock.Instant) -> Double {
    let elapsed = ContinuousClock.now - start
    return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
}

/// `text` left-aligned in a column of `width` characters (one space after it when it is wider), for plain tables.
public func padded(_ text: String, _ width: Int) -> String {
    text.count >= width ? text + " " : text + String(repeating: " ", count: width - text.count)
}
