import Calibration
import Foundation
import Logging

/// Progress of a slow job: a redrawn line on a terminal, plain log lines otherwise.
public final class ProgressReporter: @unchecked Sendable {
    let logger: Logger
    let interactive: Bool
    private var totalLayers = 0
    private var totalBytes = 0
    private var started = Date()
    private let lock = NSLock()

    /// `interactive` defaults to whether standard error is a terminal.
    public init(logger: Logger, interactive: Bool? = nil) {
        self.logger = logger
        self.interactive = interactive ?? (isatty(STDERR_FILENO) != 0)
    }

    public func start(totalLayers: Int, totalBytes: Int) {
        lock.withLock {
            self.totalLayers = totalLayers
            self.totalBytes = totalBytes
            started = Date()
        }
    }

    /// Call after each decoder layer; `bytesDone` counts source weight bytes quantized so far.
    public func layerDone(layer: Int, bytesDone: Int) {
        let line: String = lock.withLock {
            let elapsed = max(Date().timeIntervalSince(started), 1e-6)
            let rate = Double(bytesDone) / elapsed
            let remaining = rate > 0 ? Double(totalBytes - bytesDone) / rate : 0
            return String(format: "exported layer %d/%d  %.1f MB/s of weights  ETA %@", layer + 1, totalLayers,
                          rate / 1e6, Self.duration(remaining))
        }
        if interactive {
            FileHandle.standardError.write(Data(("\r\u{1B}[K" + line).utf8))
        } else {
            logger.info("\(line)")
        }
    }

    /// Calibration progress: layer, samples through it, tokens/s and ETA.
    public func calibration(_ update: CalibrationProgress) {
        let eta = update.estimatedSecondsRemaining.map { Self.duration($0) } ?? "?"
        let line = String(format: "calibrating layer %d/%d  samples %d/%d  %.0f tokens/s  ETA %@", update.layer + 1,
                          update.layerCount, update.samplesDone, update.sampleCount, update.tokensPerSecond, eta)
        if interactive {
            FileHandle.standardError.write(Data(("\r\u{1B}[K" + line).utf8))
        } else if update.samplesDone == update.sampleCount {
            logger.info("\(line)")
        }
    }

    public func finish() {
        if interactive { FileHandle.standardError.write(Data("\n".utf8)) }
    }

    /// `4m05s`, `1h02m`: durations in progress and status lines.
    public static func duration(_ seconds: Double) -> String {
        let s = Int(seconds.rounded())
        return s >= 3600 ? String(format: "%dh%02dm", s / 3600, s / 60 % 60) : String(format: "%dm%02ds", s / 60, s % 60)
    }
}
