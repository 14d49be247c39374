import JobModel
import Testing

/// The samples each Linear's output error is measured on: the plan's first samples in order, cut at the token limit.
@Suite struct CalibrationPlanLeadingSamplesTests {
    static let plan = CalibrationPlan(
        chunkTokens: 8,
        chunks: [
            CalibrationChunk(index: 0, sampleRange: 0..<2, tokenCounts: [3, 4], tokenIDs: [1, 2, 3, 10, 11, 12, 13],
                             sources: ["a:1", "a:2"]),
            CalibrationChunk(index: 1, sampleRange: 2..<3, tokenCounts: [5], tokenIDs: [20, 21, 22, 23, 24], sources: ["a:3"]),
        ],
        source: "a", sampleCount: 3, tokenCount: 12, contentHash: "h")

    @Test func takesWholeSamplesThenCutsTheLastAtTheLimit() {
        #expect(Self.plan.leadingSamples(tokenLimit: 100) == [[1, 2, 3], [10, 11, 12, 13], [20, 21, 22, 23, 24]])
        #expect(Self.plan.leadingSamples(tokenLimit: 7) == [[1, 2, 3], [10, 11, 12, 13]])
        #expect(Self.plan.leadingSamples(tokenLimit: 9) == [[1, 2, 3], [10, 11, 12, 13], [20, 21]])
        #expect(Self.plan.leadingSamples(tokenLimit: 2) == [[1, 2]])
        #expect(Self.plan.leadingSamples(tokenLimit: 0) == [])
    }

    /// A plan without token ids (as a range that does not embed receives it), or without samples, offers none.
    @Test func noIdsNoSamples() {
        var stripped = Self.plan
        for index in stripped.chunks.indices { stripped.chunks[index].tokenIDs = [] }
        #expect(stripped.leadingSamples(tokenLimit: 100) == [])
        #expect(CalibrationPlan.uncalibrated(chunkTokens: 8).leadingSamples(tokenLimit: 100) == [])
    }
}
