import Checkpoint
import Evaluation
import Testing

@Suite struct QualityReportTests {
    func report(original: Double, quantized: Double, scheme: QuantizationScheme = .nvfp4) -> QualityReport {
        QualityReport(samples: 16, tokens: 8123, predictedTokens: 8107, originalPerplexity: original,
                      quantizedPerplexity: quantized, scheme: scheme, layout: .compressedTensors)
    }

    @Test func verdictThresholds() {
        #expect(QualityVerdict(relativeIncrease: -0.02) == .fine)
        #expect(QualityVerdict(relativeIncrease: 0.0499) == .fine)
        #expect(QualityVerdict(relativeIncrease: 0.05) == .noticeable)
        #expect(QualityVerdict(relativeIncrease: 0.1499) == .noticeable)
        #expect(QualityVerdict(relativeIncrease: 0.15) == .degraded)
        #expect(QualityVerdict(relativeIncrease: 3) == .degraded)
        #expect(QualityVerdict(relativeIncrease: .nan) == .degraded)
        #expect(QualityVerdict(relativeIncrease: .infinity) == .degraded)
    }

    @Test func summaryStatesTheNumbers() {
        let fine = report(original: 12.31, quantized: 12.87)
        #expect(abs(fine.relativeIncrease - (12.87 / 12.31 - 1)) < 1e-15)
        #expect(fine.verdict == .fine)
        #expect(fine.summary.contains("perplexity 12.31 → 12.87 (+4.5%) on 16 samples, 8123 tokens"))
        #expect(fine.summary.hasPrefix("W4A4"))
        #expect(fine.verdictLine.hasPrefix("verdict: fine"))
        #expect(fine.verdictLine.contains("fine < +5%, noticeable < +15%"))
        let degraded = report(original: 10, quantized: 12, scheme: .nvfp4a16)
        #expect(degraded.verdict == .degraded)
        #expect(degraded.summary.contains("(+20.0%)"))
        #expect(degraded.summary.hasPrefix("weight-only"))
        #expect(report(original: 10, quantized: 10.6).verdict == .noticeable)
    }
}
