import ClusterMetrics
import CoreMetrics

/// A worker's series (label `worker`: its name), recorded through swift-metrics; see ``MetricName``.
struct WorkerMetrics: Sendable {
    let worker: String

    /// A chunk of `tokens` went through `layers` layers in `seconds`; `wholeRange` when those were the range's last.
    func computed(tokens: Int, layers: Int, wholeRange: Bool) {
        MetricName.workerLayerTokens.counter(worker).increment(by: tokens * layers)
        if wholeRange { MetricName.workerTokens.counter(worker).increment(by: tokens) }
    }

    func chunkLatency(seconds: Double) {
        MetricName.workerChunkSeconds.timer(worker).record(seconds: seconds)
    }

    /// Hidden states handed to the next worker's data path: `bytes`, after `seconds` of waiting (back-pressure).
    func linkSent(bytes: Int, seconds: Double) {
        MetricName.linkSentBytes.counter(worker).increment(by: bytes)
        MetricName.linkSendSeconds.timer(worker).record(seconds: seconds)
    }

    func linkReceived(bytes: Int) {
        MetricName.linkReceivedBytes.counter(worker).increment(by: bytes)
    }

    func exported(bytes: Int, seconds: Double) {
        MetricName.workerExportSentBytes.counter(worker).increment(by: bytes)
        MetricName.workerExportLayerSeconds.timer(worker).record(seconds: seconds)
    }

    /// The hidden states of a layer-at-a-time pass, by location (all 0 once it ends).
    func hiddenStates(gpu: Int, host: Int, spilled: Int) {
        MetricName.hiddenStateBytes.gauge(worker, "gpu").record(gpu)
        MetricName.hiddenStateBytes.gauge(worker, "host").record(host)
        MetricName.hiddenStateBytes.gauge(worker, "spilled").record(spilled)
    }

    func keptHiddenStates(bytes: Int) {
        MetricName.keptHiddenStateBytes.gauge(worker).record(bytes)
    }

    func gpuMemoryInUse(bytes: Int) {
        MetricName.gpuMemoryUsedBytes.gauge(worker).record(bytes)
    }
}
