import Foundation
import JobModel

/// The human views of a job, shared by `coordctl status` and the embedded `coordctl quantize`:
///
/// - ``table(_:width:)``: the screen that `--watch` redraws on a terminal: a job block (phase, a progress bar each for
///   layers calibrated, layers exported and the quality report, rates over the last minute, ETA, what it waits for)
///   and one row per worker (range, device, current layer, layer-tokens/s, memory, health);
/// - ``line(_:)``: the same facts on one line, printed once per change when the output is not a terminal.
///
/// Every rate is named for what it counts: layer-tokens/s (one token through one decoder layer) while calibrating,
/// MB/s of checkpoint written while exporting.
public enum StatusView {
    /// The job block and the worker table.
    public static func table(_ status: JobStatus, width: Int = 100) -> String {
        var lines: [String] = []
        var header = "job \(status.jobID)  \(status.phase.rawValue)"
        if let elapsed = status.elapsedSeconds { header += "  elapsed \(formatDuration(elapsed))" }
        if let eta = status.etaSeconds { header += "  ETA \(formatDuration(eta))" }
        lines.append(header)
        lines.append("  \(status.model) → \(status.output)")
        let barWidth = max(10, min(30, width - 60))
        if let progress = status.progress {
            if progress.calibrationLayerTokensTotal > 0 {
                // The bar fills with the work done (layer-tokens): a pipelined range completes its layers together.
                var row = "  calibrated  " + bar(progress.calibrationLayerTokensDone, of: progress.calibrationLayerTokensTotal, width: barWidth)
                    + "  \(progress.layersCalibrated)/\(progress.layersTotal) layers, \(calibrationPercent(progress))% of layer-tokens"
                if let rate = progress.calibrationLayerTokensPerSecond { row += "  \(formatRate(rate)) layer-tokens/s" }
                lines.append(row)
            }
            var exported = "  exported    " + bar(progress.layersExported, of: progress.layersTotal, width: barWidth)
                + "  \(progress.layersExported)/\(progress.layersTotal) layers"
            if progress.exportedBytes > 0 { exported += "  \(formatBytes(Int(progress.exportedBytes)))" }
            if let rate = progress.exportBytesPerSecond { exported += String(format: "  %.1f MB/s", rate / 1e6) }
            lines.append(exported)
            if let done = progress.evaluationLayersDone, let total = progress.evaluationLayersTotal {
                lines.append("  quality     " + bar(done, of: total, width: barWidth) + "  \(done)/\(total) layers of both models")
            }
            if let waiting = progress.waiting { lines.append("  waiting for \(waiting)") }
        }
        if let rate = status.tokensPerSecond, status.phase != .calibrating {
            lines.append(String(format: "  calibration ran at %.0f tokens/s through the whole model", rate))
        }
        if let position = status.queuePosition {
            lines.append("  queued: position \(position) in the queue" + (status.waitingFor.map { " (job \($0) is running)" } ?? ""))
        }
        for warning in status.warnings { lines.append("  warning: \(warning)") }
        if let quality = status.quality { lines.append("  quality: \(quality.sentence())") }
        if let bytes = status.outputBytes, status.phase.isTerminal { lines.append("  output size: \(formatBytes(Int(bytes)))") }
        if let reason = status.failureReason { lines.append("  reason: \(reason)") }
        if !status.workers.isEmpty {
            lines.append("")
            let headers = ["WORKER", "LAYERS", "DEVICE", "LAYER", "LAYER-TOKENS/S", "MEMORY", "HEALTH"]
            let rows = status.workers.map { worker in
                [worker.name + (worker.embeddings ? "*" : ""), worker.range, worker.device,
                 worker.currentLayer.map(String.init) ?? "-", worker.layerTokensPerSecond.map(formatRate) ?? "-",
                 worker.memoryBytes.map { formatBytes(Int($0)) } ?? "-", worker.health.rawValue]
            }
            // Each column as wide as its widest cell: device names run from `cpu` to a GPU's full name.
            let widths = headers.indices.map { column in ([headers] + rows).map { $0[column].count }.max()! + 2 }
            for row in [headers] + rows {
                lines.append("  " + zip(row, widths).map { padded($0, $1) }.joined())
            }
            lines.append("  (* embeds the tokens; LAYER is the first of its layers still calibrating)")
        }
        if let fingerprint = status.fingerprint { lines.append("  inputs: sha256 \(fingerprint) (fingerprint at submit)") }
        lines.append("  updated \(status.updatedAt)")
        return lines.joined(separator: "\n")
    }

    /// One line with what changed: phase, layers calibrated and exported, quality-report layers, waits and failures;
    /// rates and ETA ride along but never make a line of their own.
    public static func line(_ status: JobStatus) -> String {
        var parts = ["job \(status.jobID) \(status.phase.rawValue)"]
        if let progress = status.progress {
            if progress.calibrationLayerTokensTotal > 0 {
                var part = "calibrated \(progress.layersCalibrated)/\(progress.layersTotal) layers (\(calibrationPercent(progress))%"
                if let rate = progress.calibrationLayerTokensPerSecond { part += ", \(formatRate(rate)) layer-tokens/s" }
                parts.append(part + ")")
            }
            var exported = "exported \(progress.layersExported)/\(progress.layersTotal) layers"
            if let rate = progress.exportBytesPerSecond { exported += String(format: " (%.1f MB/s)", rate / 1e6) }
            parts.append(exported)
            if let done = progress.evaluationLayersDone, let total = progress.evaluationLayersTotal {
                parts.append("quality report \(done)/\(total) layers")
            }
            if let waiting = progress.waiting { parts.append("waiting for \(waiting)") }
        }
        if let eta = status.etaSeconds { parts.append("ETA \(formatDuration(eta))") }
        if status.phase.isTerminal, let elapsed = status.elapsedSeconds { parts.append("after \(formatDuration(elapsed))") }
        if let quality = status.quality, status.phase.isTerminal { parts.append("quality: \(quality.sentence())") }
        if let reason = status.failureReason { parts.append("reason: \(reason)") }
        return parts.joined(separator: ", ")
    }

    /// What makes a new line in ``line(_:)``: everything but the rates, the ETA and the clock.
    public static func changeKey(_ status: JobStatus) -> String {
        var key = "\(status.phase.rawValue)|\(status.queuePosition ?? -1)|\(status.failureReason ?? "")"
        if let progress = status.progress {
            // Calibration also speaks every tenth of its work, so that a long pipelined range is not silent.
            key += "|\(progress.layersCalibrated)|\(calibrationPercent(progress) / 10)|\(progress.layersExported)|\(progress.evaluationLayersDone ?? -1)"
                + "|\(progress.waiting ?? "")"
        }
        key += "|" + status.workers.map { "\($0.name)=\($0.health.rawValue)" }.joined(separator: ",")
        return key
    }

    /// Calibration work done, in whole percent of the job's layer-tokens.
    static func calibrationPercent(_ progress: JobProgress) -> Int {
        progress.calibrationLayerTokensTotal > 0 ? progress.calibrationLayerTokensDone * 100 / progress.calibrationLayerTokensTotal : 0
    }

    /// `[########------------]`.
    static func bar(_ done: Int, of total: Int, width: Int) -> String {
        let filled = total > 0 ? min(width, max(0, done * width / total)) : 0
        return "[" + String(repeating: "#", count: filled) + String(repeating: "-", count: width - filled) + "]"
    }

    /// `312.4k`, `1.25M`.
    static func formatRate(_ perSecond: Double) -> String {
        switch perSecond {
        case 1e9...: String(format: "%.2fG", perSecond / 1e9)
        case 1e6...: String(format: "%.2fM", perSecond / 1e6)
        case 1e3...: String(format: "%.1fk", perSecond / 1e3)
        default: String(format: "%.0f", perSecond)
        }
    }
}

/// Shows a job as it moves: on a terminal it redraws ``StatusView/table(_:width:)`` in place; otherwise it writes
/// ``StatusView/line(_:)`` once per change, so a log or a CI transcript gets a handful of lines, not one per second.
public struct StatusDisplay {
    public let interactive: Bool
    private let write: (String) -> Void
    private var lastKey: String?
    private var drawnLines = 0

    /// `interactive` defaults to whether standard output is a terminal.
    public init(interactive: Bool = isatty(STDOUT_FILENO) == 1, write: @escaping (String) -> Void = { FileHandle.standardOutput.write(Data($0.utf8)) }) {
        self.interactive = interactive
        self.write = write
    }

    public mutating func show(_ status: JobStatus) {
        if interactive {
            let width = Self.terminalWidth()
            // Lines cut to the terminal's width: a wrapped line would throw off the count of lines to redraw.
            let text = StatusView.table(status, width: width).split(separator: "\n", omittingEmptySubsequences: false)
                .map { $0.count < width ? String($0) : String($0.prefix(width - 1)) }.joined(separator: "\n") + "\n"
            // Up to the top of the previous drawing, then clear everything below it.
            let up = drawnLines > 0 ? "\u{1B}[\(drawnLines)A\r\u{1B}[J" : ""
            write(up + text)
            drawnLines = text.reduce(0) { $1 == "\n" ? $0 + 1 : $0 }
            return
        }
        let key = StatusView.changeKey(status)
        guard key != lastKey else { return }
        lastKey = key
        write(StatusView.line(status) + "\n")
    }

    static func terminalWidth() -> Int {
        var size = winsize()
        guard ioctl(STDOUT_FILENO, UInt(TIOCGWINSZ), &size) == 0 || ioctl(STDERR_FILENO, UInt(TIOCGWINSZ), &size) == 0,
              size.ws_col > 0 else { return 100 }
        return Int(size.ws_col)
    }
}
