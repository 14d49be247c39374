/// # ClusterMetrics
///
/// Every series coordd and workerd export, named in one place (``MetricName``), with its kind, its labels, its help
/// text and, for histograms, its buckets. Library modules record through the swift-metrics API only (`Counter`,
/// `Gauge`, `Timer` from CoreMetrics); which backend receives the values is the executable's choice
/// (`MetricsEndpoint` bootstraps Prometheus in coordd and workerd; without a bootstrap, as in `coordctl quantize`
/// and the in-process tests, every metric is a no-op).
///
/// Naming follows Prometheus: `nvfp4_` prefix, counters end in `_total`, durations are `_seconds` histograms, sizes
/// `_bytes` gauges or counters. A series always carries the same label names (the Prometheus client refuses a family
/// that mixes label sets), so the label values are passed positionally and checked against ``MetricName/labelNames``.
import CoreMetrics

public enum MetricName: String, CaseIterable, Sendable {
    // coordd
    case jobs = "nvfp4_jobs"
    case jobsSubmitted = "nvfp4_jobs_submitted_total"
    case layersCalibrated = "nvfp4_layers_calibrated_total"
    case layersExported = "nvfp4_layers_exported_total"
    case exportReceivedBytes = "nvfp4_export_received_bytes_total"
    case exportLayerSeconds = "nvfp4_export_layer_seconds"
    // workerd
    case workerTokens = "nvfp4_worker_tokens_total"
    case workerLayerTokens = "nvfp4_worker_layer_tokens_total"
    case workerChunkSeconds = "nvfp4_worker_chunk_seconds"
    case linkSentBytes = "nvfp4_link_sent_bytes_total"
    case linkSendSeconds = "nvfp4_link_send_seconds"
    case linkReceivedBytes = "nvfp4_link_received_bytes_total"
    case workerExportSentBytes = "nvfp4_worker_export_sent_bytes_total"
    case workerExportLayerSeconds = "nvfp4_worker_export_layer_seconds"
    case hiddenStateBytes = "nvfp4_hidden_state_bytes"
    case keptHiddenStateBytes = "nvfp4_kept_hidden_state_bytes"
    case gpuMemoryUsedBytes = "nvfp4_gpu_memory_used_bytes"
    // both daemons (Transport)
    case connectionFailures = "nvfp4_transport_connection_failures_total"
    case authenticationFailures = "nvfp4_transport_authentication_failures_total"

    public enum Kind: Sendable { case counter, gauge, histogram }

    public var kind: Kind {
        switch self {
        case .jobs, .hiddenStateBytes, .keptHiddenStateBytes, .gpuMemoryUsedBytes: .gauge
        case .exportLayerSeconds, .workerChunkSeconds, .linkSendSeconds, .workerExportLayerSeconds: .histogram
        default: .counter
        }
    }

    /// The label names every sample of this series carries, in order.
    public var labelNames: [String] {
        switch self {
        case .jobs: ["state"]
        case .jobsSubmitted, .layersCalibrated, .layersExported, .exportLayerSeconds: []
        case .exportReceivedBytes: ["worker"]
        case .workerTokens, .workerLayerTokens, .workerChunkSeconds, .linkSentBytes, .linkSendSeconds, .linkReceivedBytes,
             .workerExportSentBytes, .workerExportLayerSeconds, .keptHiddenStateBytes, .gpuMemoryUsedBytes: ["worker"]
        case .hiddenStateBytes: ["worker", "location"]
        case .connectionFailures, .authenticationFailures: ["reason"]
        }
    }

    /// The `# HELP` line.
    public var help: String {
        switch self {
        case .jobs: "Jobs in coordd's state store, by state (queued, loading, calibrating, exporting, merging, evaluating, succeeded, failed, cancelled)."
        case .jobsSubmitted: "Jobs accepted by submit since coordd started."
        case .layersCalibrated: "Decoder layers whose activation scales became final (every calibration chunk recorded) since coordd started."
        case .layersExported: "Decoder layers quantized by a worker, checked and written into a checkpoint by coordd since it started."
        case .exportReceivedBytes: "Bytes of quantized tensors coordd received from each worker on the export data path and wrote."
        case .exportLayerSeconds: "Seconds from asking the owning worker for a layer's export (once its scales are final) until all its tensors arrived at coordd."
        case .workerTokens: "Calibration tokens that passed through this worker's whole layer range."
        case .workerLayerTokens: "Calibration tokens times decoder layers computed by this worker (layer-tokens)."
        case .workerChunkSeconds: "Seconds to run one calibration chunk through this worker's layer range (a layer-at-a-time pass divides each layer's time among its chunks)."
        case .linkSentBytes: "Hidden-state bytes this worker handed to the next worker on the worker-to-worker data path."
        case .linkSendSeconds: "Seconds one hidden-state tensor waited to be handed to the worker-to-worker data path (back-pressure included)."
        case .linkReceivedBytes: "Hidden-state bytes this worker accepted from the previous worker on the worker-to-worker data path."
        case .workerExportSentBytes: "Bytes of quantized tensors this worker sent to coordd on the export data path."
        case .workerExportLayerSeconds: "Seconds this worker spent exporting one layer: weight amax, quantize, pack and hash, send."
        case .hiddenStateBytes: "Calibration hidden states this worker holds during a layer-at-a-time pass, by location: host memory, GPU memory, or spilled to scratch files."
        case .keptHiddenStateBytes: "Bytes of hidden states kept on this worker's scratch disk for resume (the states entering its range)."
        case .gpuMemoryUsedBytes: "GPU memory in use on this worker's device (total minus free, from cuMemGetInfo); 0 on the CPU."
        case .connectionFailures: "Transport connections that failed before they were authenticated, by reason."
        case .authenticationFailures: "Transport handshakes refused because the peer could not be authenticated, by reason."
        }
    }

    /// Histogram bucket bounds in seconds: 5 ms to 10 min (a chunk of a 70B layer range on a slow CPU takes minutes).
    public var buckets: [Double] {
        [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600]
    }

    private func dimensions(_ values: [String]) -> [(String, String)] {
        precondition(values.count == labelNames.count,
                     "\(rawValue) takes the labels \(labelNames), got \(values.count) value(s)")
        return Array(zip(labelNames, values))
    }

    /// The counter of this series for `labelValues` (in the order of ``labelNames``).
    public func counter(_ labelValues: String..., factory: any MetricsFactory = MetricsSystem.factory) -> Counter {
        precondition(kind == .counter, "\(rawValue) is not a counter")
        return Counter(label: rawValue, dimensions: dimensions(labelValues), factory: factory)
    }

    /// The gauge of this series for `labelValues`.
    public func gauge(_ labelValues: String..., factory: any MetricsFactory = MetricsSystem.factory) -> Gauge {
        precondition(kind == .gauge, "\(rawValue) is not a gauge")
        return Gauge(label: rawValue, dimensions: dimensions(labelValues), factory: factory)
    }

    /// The histogram (a swift-metrics `Timer`) of this series for `labelValues`.
    public func timer(_ labelValues: String..., factory: any MetricsFactory = MetricsSystem.factory) -> Timer {
        precondition(kind == .histogram, "\(rawValue) is not a histogram")
        return Timer(label: rawValue, dimensions: dimensions(labelValues), factory: factory)
    }
}

extension Timer {
    /// Records `seconds` (negative or non-finite values are recorded as 0).
    public func record(seconds: Double) {
        recordNanoseconds(seconds.isFinite && seconds > 0 ? Int64(seconds * 1e9) : 0)
    }
}

/// Why a transport connection failed before it was authenticated: the `reason` label of
/// `nvfp4_transport_connection_failures_total`.
public enum ConnectionFailureReason: String, CaseIterable, Sendable {
    /// The TCP connection could not be opened (refused, unreachable, timed out).
    case connectFailed = "connect_failed"
    /// A server refused a connection because `maxConnections` were open.
    case connectionLimit = "connection_limit"
    /// The handshake did not complete within the handshake timeout.
    case handshakeTimeout = "handshake_timeout"
    /// The peer broke the wire protocol during the handshake (bad magic, wrong version, unexpected frame).
    case protocolViolation = "protocol_violation"
    /// TLS refused a record as altered or injected.
    case tlsIntegrity = "tls_integrity"
    /// The peer closed the connection before the handshake finished.
    case closed = "closed_during_handshake"
}

/// Why a handshake was refused: the `reason` label of `nvfp4_transport_authentication_failures_total`.
public enum AuthenticationFailureReason: String, CaseIterable, Sendable {
    /// The peer's HMAC proof did not match this node's cluster token (wrong `--token-file`).
    case tokenMismatch = "token_mismatch"
    /// With TLS: the name the peer claimed is not the name in its certificate (or its certificate is unreadable).
    case certificateNameMismatch = "certificate_name_mismatch"
    /// The TLS handshake failed (certificate not signed by the cluster CA, expired, wrong key).
    case tlsHandshake = "tls_handshake"
    /// The dialed node answered with another name than the one expected.
    case unexpectedPeer = "unexpected_peer"
    /// The server refused this node's handshake (it holds another token, or refused the name).
    case refusedByPeer = "refused_by_peer"
}
