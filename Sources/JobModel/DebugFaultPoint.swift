import Foundation

/// Named points where a debug build can be told to stop and wait, so that process-level tests can kill a daemon at
/// a chosen moment of a job (during export, during merge, right after the output's rename). Set
/// `NVFP4CLUSTER_DEBUG_PAUSE_AT=<point>` in the daemon's environment to stop there for good, or `<point>:<seconds>`
/// to go on after that long (so that another daemon can be killed meanwhile); release builds ignore it.
public enum DebugFaultPoint: String, Sendable, CaseIterable {
    /// coordd, once the first layer of the checkpoint is written.
    case coordinatorExport = "coordd-export"
    /// coordd, before the checkpoint's index and JSON files are written and verified.
    case coordinatorMerge = "coordd-merge"
    /// coordd, after the output was renamed into place, before the job is recorded as succeeded.
    case coordinatorAfterRename = "coordd-after-rename"
    /// workerd, when asked to export a layer.
    case workerExport = "workerd-export"

    public static let environmentVariable = "NVFP4CLUSTER_DEBUG_PAUSE_AT"

    /// In a debug build whose environment names this point: calls `announce` once, then waits for the seconds given,
    /// or until the task is cancelled (the test kills the process meanwhile). Otherwise returns at once.
    public func pauseIfRequested(announce: @Sendable (String) -> Void) async {
        #if DEBUG
        guard let value = ProcessInfo.processInfo.environment[Self.environmentVariable] else { return }
        let parts = value.split(separator: ":", maxSplits: 1).map(String.init)
        guard parts.first == rawValue else { return }
        let seconds = parts.count == 2 ? Double(parts[1]) : nil
        announce("debug fault point \(rawValue) reached: pausing here" + (seconds.map { " for \($0) s" } ?? "")
                 + " (\(Self.environmentVariable))")
        if let seconds {
            try? await Task.sleep(for: .milliseconds(Int64(seconds * 1000)))
            return
        }
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(3600))
        }
        #endif
    }
}

/// A debug-only hang for the watchdog tests: with `NVFP4CLUSTER_DEBUG_HANG_AFTER_CHUNKS=N` in a debug build's
/// environment, a worker that has finished N chunks stops working (forever) while its heartbeats and the connection's
/// liveness go on, as a wedged compute would. Release builds ignore it.
public enum DebugHang {
    public static let environmentVariable = "NVFP4CLUSTER_DEBUG_HANG_AFTER_CHUNKS"

    /// With `NVFP4CLUSTER_DEBUG_NO_HEARTBEATS=1` in a debug build's environment, workerd registers but sends no
    /// heartbeat afterwards while its connection stays up (a wedged heartbeat task). Release builds ignore it.
    public static var heartbeatsStopped: Bool {
        #if DEBUG
        ProcessInfo.processInfo.environment["NVFP4CLUSTER_DEBUG_NO_HEARTBEATS"] == "1"
        #else
        false
        #endif
    }

    /// Waits forever (until cancelled) when `chunksDone` has reached the configured count; returns at once otherwise.
    public static func hangIfRequested(chunksDone: Int, announce: @Sendable (String) -> Void) async {
        #if DEBUG
        guard let value = ProcessInfo.processInfo.environment[environmentVariable], let limit = Int(value),
              chunksDone >= limit else { return }
        announce("debug hang after \(limit) chunk(s) (\(environmentVariable)): this worker stops working")
        while !Task.isCancelled {
            try? await Task.sleep(for: .seconds(3600))
        }
        #endif
    }
}
