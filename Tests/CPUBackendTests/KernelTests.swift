import Foundation
import Testing
import ComputeBackend
@testable import CPUBackend
import LlamaModel

@Suite struct KernelTests {
    /// hidden 32, 2 query heads, 1 KV head, head_dim 16, default RoPE with theta 10000.
    static func smallBackend() throws -> CPUBackend {
        let json = """
            {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2,
             "num_key_value_heads": 1, "num_hidden_layers": 1, "vocab_size": 8, "rms_norm_eps": 1e-5, "rope_theta": 10000}
            """
        return CPUBackend(config: try LlamaConfig(json: Data(json.utf8), source: "small.json"))
    }

    /// Deterministic pseudo-random values in [-1, 1).
    static func values(_ count: Int, seed: UInt64) -> [Float] {
        var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        return (0..<count).map { _ in
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            return Float(state >> 40) / Float(1 << 23) - 1
        }
    }

    @Test func rmsNormOfAHandExample() {
        // Row 1: mean(3², 4²) = 12.5, so y = (3, −4)/√12.5 = (0.848528, −1.131371), then times weight (1, 2).
        // Row 2: all zeros stay zero, eps keeps the scale finite.
        let output = rmsNorm([3, -4, 0, 0], weight: [1, 2], width: 2, epsilon: 0)
        #expect(abs(output[0] - 0.848528) < 1e-6)
        #expect(abs(output[1] - -2.262742) < 1e-6)
        let zeros = rmsNorm([0, 0], weight: [1, 2], width: 2, epsilon: 1e-5)
        #expect(zeros == [0, 0])
        // eps enters under the root: x = (1, 1), eps = 1 gives 1/√2.
        let withEpsilon = rmsNorm([1, 1], weight: [1, 1], width: 2, epsilon: 1)
        #expect(abs(withEpsilon[0] - 0.70710678) < 1e-6)
    }

    @Test func swiGLUOfAHandExample() {
        // Rows are [gate | up]: silu(0)·2 = 0, silu(1)·3 = 3/(1 + e^−1) = 2.1931758, silu(−2)·1 = −0.2384058.
        let output = swiGLU([0, 1, -2, 2, 3, 1], rows: 1, intermediate: 3)
        #expect(output[0] == 0)
        #expect(abs(output[1] - 2.1931758) < 1e-6)
        #expect(abs(output[2] - -0.2384058) < 1e-6)
    }

    @Test func maxAbsoluteAndMergingPropagateNaN() {
        #expect(maxAbsolute([1, -3, 2]) == 3)
        #expect(maxAbsolute([1, .nan, -3]).isNaN)
        let finite = ObservedAmax(qkv: 1, o: 5, gateUp: 2, down: 4)
        let other = ObservedAmax(qkv: 3, o: .nan, gateUp: 1, down: 4)
        let merged = finite.merging(other)
        #expect(merged.qkv == 3 && merged.gateUp == 2 && merged.down == 4 && merged.o.isNaN)
        #expect(ObservedAmax.zero.merging(finite) == finite)
        #expect(finite.amax(of: .v) == 1 && finite.amax(of: .up) == 2 && finite.amax(of: .o) == 5 && finite.amax(of: .down) == 4)
    }

    @Test func ropeRotatesQueriesAndKeysByTheirPositionWithinTheirSample() throws {
        let backend = try Self.smallBackend()
        let stride = 64  // q (2 heads) | k (1 head) | v (1 head), 16 each
        let original = Self.values(3 * stride, seed: 7)
        var rotated = original
        let batch = try SequenceBatch(tokenCounts: [2, 1])
        backend.applyRope(&rotated, batch: batch, rowStride: stride)
        let positions = [0, 1, 0]
        for row in 0..<3 {
            for head in 0..<3 {  // two query heads, then the key head
                for index in 0..<8 {
                    // Independent reference: inv_freq = 10000^(−2i/16), angle = p · inv_freq, rotate_half pairs.
                    let angle = Double(positions[row]) * pow(10000, -Double(2 * index) / 16)
                    let first = Double(original[row * stride + head * 16 + index])
                    let second = Double(original[row * stride + head * 16 + index + 8])
                    let expectedFirst = first * cos(angle) - second * sin(angle)
                    let expectedSecond = second * cos(angle) + first * sin(angle)
                    #expect(abs(Double(rotated[row * stride + head * 16 + index]) - expectedFirst) < 1e-6)
                    #expect(abs(Double(rotated[row * stride + head * 16 + index + 8]) - expectedSecond) < 1e-6)
                }
            }
            // Values are not rotated.
            #expect(Array(rotated[(row * stride + 48)..<(row * stride + 64)]) == Array(original[(row * stride + 48)..<(row * stride + 64)]))
        }
    }

    @Test func causalGroupedAttentionMatchesANaiveComputation() throws {
        let backend = try Self.smallBackend()
        let stride = 64
        let batch = try SequenceBatch(tokenCounts: [4, 3])
        let qkv = Self.values(batch.totalTokens * stride, seed: 11).map { $0 * 3 }
        let output = backend.causalAttention(qkv, batch: batch, rowStride: stride)
        for sample in 0..<2 {
            let rows = batch.rows(ofSample: sample)
            for query in rows {
                for head in 0..<2 {  // both query heads read the single KV head
                    var scores: [Double] = []
                    for key in rows.lowerBound...query {
                        var dot = 0.0
                        for index in 0..<16 { dot += Double(qkv[query * stride + head * 16 + index]) * Double(qkv[key * stride + 32 + index]) }
                        scores.append(dot / 4)
                    }
                    let largest = scores.max()!
                    let weights = scores.map { exp($0 - largest) }
                    let total = weights.reduce(0, +)
                    for index in 0..<16 {
                        var expected = 0.0
                        for (offset, key) in (rows.lowerBound...query).enumerated() {
                            expected += weights[offset] / total * Double(qkv[key * stride + 48 + index])
                        }
                        #expect(abs(Double(output[query * 32 + head * 16 + index]) - expected) < 1e-5,
                                "sample \(sample) row \(query) head \(head) dim \(index)")
                    }
                }
            }
            // The first token of each sample attends only to itself: its output is its value.
            let first = rows.lowerBound
            #expect(Array(output[(first * 32)..<(first * 32 + 16)]) == Array(qkv[(first * stride + 48)..<(first * stride + 64)]))
        }
    }
}
