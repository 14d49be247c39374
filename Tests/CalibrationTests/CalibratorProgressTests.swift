import CPUBackend
import Foundation
import Testing
@testable import Calibration

/// The progress callback reports each chunk, with samples growing to the total in every layer.
@Suite struct CalibratorProgressTests {
    @Test(arguments: [1, 100, 1_000_000])
    func progressGrowsToTheTotalEachLayer(chunkTokens: Int) throws {
        var reports: [CalibrationProgress] = []
        let calibrator = try LayerStreamingCalibrator(backend: try TinyLlama.backend(), weights: try TinyLlama.model(),
                                                      samples: try TinyLlama.samples(), chunkTokens: chunkTokens,
                                                      progress: { reports.append($0) })
        for layer in 0..<2 {
            let before = reports.count
            _ = try calibrator.activationAmax(layer: layer)
            let layerReports = Array(reports[before...])
            #expect(layerReports.count == calibrator.chunkCount)
            #expect(layerReports.allSatisfy { $0.layer == layer && $0.layerCount == 2 && $0.sampleCount == 8 })
            let done = layerReports.map(\.samplesDone)
            #expect(zip(done, done.dropFirst()).allSatisfy { $0 < $1 }, "\(done)")
            #expect(done.first ?? 0 > 0)
            #expect(done.last == 8)
            #expect(layerReports.allSatisfy { $0.tokensPerSecond > 0 && $0.tokensPerSecond.isFinite })
            #expect(layerReports.allSatisfy { ($0.estimatedSecondsRemaining ?? -1) >= 0 })
        }
        // The last report of the calibration has nothing left to do.
        #expect(reports.last?.estimatedSecondsRemaining == 0)
    }
}
