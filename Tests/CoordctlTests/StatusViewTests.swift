import ClusterClient
import Foundation
import JobModel
import Testing

/// The progress view of `status --watch` and `quantize`: what it says, and how often it speaks without a terminal.
@Suite struct StatusViewTests {
    static func status(phase: JobState, calibrated: Int = 0, exported: Int = 0, rate: Double? = nil,
                       eta: Double? = nil, waiting: String? = nil) -> JobStatus {
        var status = JobStatus(jobID: "j1", phase: phase, model: "/m", output: "/o",
                               workers: [JobStatus.Worker(name: "node-a", range: "0-29", device: "NVIDIA H100 80GB HBM3",
                                                          health: .alive, embeddings: true, currentLayer: calibrated,
                                                          layerTokensPerSecond: rate, memoryBytes: 128_000_000_000)],
                               samplesThrough: [:], tokensPerSecond: nil, etaSeconds: eta, outputBytes: nil,
                               failureReason: nil, createdAt: Date(timeIntervalSince1970: 0), updatedAt: Date(timeIntervalSince1970: 60))
        status.progress = JobProgress(layersTotal: 30, layersCalibrated: calibrated, layersExported: exported,
                                      calibrationLayerTokensDone: calibrated * 1000, calibrationLayerTokensTotal: 30_000,
                                      calibrationLayerTokensPerSecond: rate, waiting: waiting)
        status.elapsedSeconds = 60
        return status
    }

    @Test func tableShowsBarsNamedRatesAndOneRowPerWorker() {
        let table = StatusView.table(Self.status(phase: .calibrating, calibrated: 15, exported: 12, rate: 312_400, eta: 104))
        #expect(table.contains("job j1  calibrating  elapsed 1m00s  ETA 1m44s"), "\(table)")
        #expect(table.contains("calibrated  [###############---------------]  15/30 layers, 50% of layer-tokens  312.4k layer-tokens/s"), "\(table)")
        #expect(table.contains("exported    [############------------------]  12/30 layers"), "\(table)")
        let row = table.split(separator: "\n").first { $0.contains("node-a*") }
        #expect(row.map { $0.contains("0-29") && $0.contains("NVIDIA H100 80GB HBM3") && $0.contains("312.4k")
                          && $0.contains("128.00 GB") && $0.contains("alive") } == true, "\(table)")
        #expect(!table.contains("tokens/s through"), "no whole-model rate while calibrating")
    }

    /// A GPU's full device name widens its column instead of pushing the rest of its row out of line.
    @Test func workerColumnsStayAlignedWithLongDeviceNames() throws {
        var status = Self.status(phase: .calibrating, calibrated: 3)
        status.workers.append(JobStatus.Worker(name: "b", range: "30-59", device: "cuda:0 (NVIDIA H100 80GB HBM3, sm_90) (bf16 activations)",
                                               health: .dead, embeddings: false))
        let lines = StatusView.table(status).split(separator: "\n").map(String.init)
        let header = try #require(lines.first { $0.contains("WORKER") })
        let rows = lines.filter { $0.contains("node-a*") || $0.hasPrefix("  b ") }
        #expect(rows.count == 2)
        let column = header.range(of: "HEALTH")!.lowerBound.utf16Offset(in: header)
        for row in rows {
            let health = row.range(of: "alive") ?? row.range(of: "dead")
            #expect(health.map { $0.lowerBound.utf16Offset(in: row) } == column, "\(lines.joined(separator: "\n"))")
        }
    }

    @Test func aWaitingJobSaysWhatItWaitsFor() {
        let waiting = Self.status(phase: .calibrating, calibrated: 3, waiting: "lost worker(s) node-b to come back (up to 300 s)")
        #expect(StatusView.table(waiting).contains("waiting for lost worker(s) node-b to come back"))
        #expect(StatusView.line(waiting).contains("waiting for lost worker(s) node-b"))
    }

    /// Without a terminal: a line when the phase or a layer count changes, never for a new rate or ETA alone.
    @Test func withoutATerminalOneLinePerChange() {
        var written: [String] = []
        var display = StatusDisplay(interactive: false) { written.append($0) }
        for second in 0..<30 {
            // The rate and ETA move every second; the layer counts every tenth second.
            display.show(Self.status(phase: .calibrating, calibrated: second / 10, rate: 1000 + Double(second), eta: 100 - Double(second)))
        }
        display.show(Self.status(phase: .succeeded, calibrated: 30, exported: 30))
        #expect(written.count == 4, "\(written)")
        #expect(written.allSatisfy { $0.hasSuffix("\n") && $0.dropLast().contains("\n") == false })
        #expect(written[1].hasPrefix("job j1 calibrating, calibrated 1/30 layers (3%, 1.0k layer-tokens/s), exported 0/30 layers, ETA 1m30s"),
                "\(written[1])")
        #expect(written.last?.contains("succeeded") == true && written.last?.contains("ETA") == false)
    }

    /// On a terminal the view is redrawn in place: the second drawing moves up over the first and clears below.
    @Test func onATerminalTheTableIsRedrawnInPlace() {
        var written: [String] = []
        var display = StatusDisplay(interactive: true) { written.append($0) }
        display.show(Self.status(phase: .calibrating, calibrated: 1))
        display.show(Self.status(phase: .calibrating, calibrated: 2))
        let firstLines = written[0].filter { $0 == "\n" }.count
        #expect(!written[0].contains("\u{1B}["))
        #expect(written[1].hasPrefix("\u{1B}[\(firstLines)A\r\u{1B}[J"), "\(written[1].debugDescription)")
    }

    /// A cancelled or finished job shows no ETA and no live rate.
    @Test func anEndedJobHasNoETA() {
        var cancelled = Self.status(phase: .cancelled, calibrated: 4)
        cancelled.etaSeconds = nil
        let table = StatusView.table(cancelled)
        #expect(!table.contains("ETA") && !table.contains("layer-tokens/s "), "\(table)")
    }
}
