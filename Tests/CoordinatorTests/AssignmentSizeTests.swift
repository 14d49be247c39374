import ActorSystem
import ClusterProtocol
import Foundation
import JobModel
import Testing

/// `loadLayers` stays small however large the calibration set: a remote assignment carries the plan's shape, and the
/// token ids travel on the data path (4 bytes a token).
@Suite struct AssignmentSizeTests {
    /// 512 samples of 4,096 tokens, one chunk per sample.
    static func largePlan() -> CalibrationPlan {
        let tokens = 4096
        let chunks = (0..<512).map { index in
            CalibrationChunk(index: index, sampleRange: index..<(index + 1), tokenCounts: [tokens],
                             tokenIDs: (0..<tokens).map { Int32(($0 * 7 + index) % 128_000) }, sources: ["calib.jsonl:\(index + 1)"])
        }
        return CalibrationPlan(chunkTokens: tokens, chunks: chunks, source: "calib.jsonl", sampleCount: 512,
                               tokenCount: 512 * tokens, contentHash: String(repeating: "0", count: 64))
    }

    @Test func aRemoteAssignmentOfA2MTokenPlanFitsOneControlFrameAndItsIDsTravelWhole() throws {
        let plan = Self.largePlan()
        let limit = 16 << 20  // FrameLimits' default control payload
        let shape = try BinaryEncoder().encode(plan.withoutTokenIDs())
        #expect(shape.count < 256 << 10, "the plan's shape is \(shape.count) bytes")
        // With its ids it would not fit: 2,097,152 tokens at no less than 4 bytes each is 8 MiB of ids alone, and the
        // envelope spends more (issue 13 measured about 9 bytes a token).
        #expect(shape.count < limit)
        #expect(plan.withoutTokenIDs().chunks.map(\.tokenCount) == plan.chunks.map(\.tokenCount))
        // The data path's form: every chunk's ids in order, little-endian Int32.
        let bytes = plan.tokenIDBytes()
        #expect(bytes.count == plan.tokenCount * 4)
        func id(at position: Int) -> Int32 {
            bytes.withUnsafeBytes { Int32(littleEndian: $0.loadUnaligned(fromByteOffset: position * 4, as: Int32.self)) }
        }
        for (chunk, position) in [(0, 0), (0, 4095), (1, 0), (511, 4095)] {
            #expect(id(at: chunk * 4096 + position) == plan.chunks[chunk].tokenIDs[position])
        }
    }
}
