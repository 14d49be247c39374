import COpenBLAS
import ComputeBackend
import CPUKernels
import Dispatch
import Foundation
import Glibc
import LlamaModel
import OpenBLASThreads
import Testing
@testable import CPUBackend

/// The vector passes of the BF16 forward against the scalar Swift loops they replaced (kept below as references),
/// bit for bit: activation scales and checkpoint bytes must not move.
@Suite struct VectorKernelTests {
    /// Edge cases for BF16 rounding: zeros, ties to even both ways, just above/below ties, subnormals, the largest
    /// finite values (which round to infinity), infinities, quiet and signalling NaNs with payloads.
    static let edgeBits: [UInt32] = [
        0x0000_0000, 0x8000_0000, 0x3F80_0000, 0x3F80_8000, 0x3F81_8000, 0x3F80_7FFF, 0x3F80_8001, 0xBF80_8000,
        0xBF81_8000, 0x0000_0001, 0x0000_7FFF, 0x0000_8000, 0x0001_8000, 0x007F_FFFF, 0x807F_FFFF, 0x0080_0000,
        0x7F7F_FFFF, 0xFF7F_FFFF, 0x7F7F_7FFF, 0x7F7F_8000, 0x7F7E_8000, 0x7F80_0000, 0xFF80_0000, 0x7FC0_0000,
        0xFFC0_0000, 0x7FC0_0001, 0x7F80_0001, 0xFF80_0001, 0x7FFF_FFFF, 0xFFFF_FFFF, 0x7FBF_FFFF, 0x4B7F_FFFF,
    ]

    /// The edge cases, then `count` pseudo-random bit patterns (every exponent, NaNs included).
    static func edgeAndRandomFloats(_ count: Int, seed: UInt64) -> [Float] {
        var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        return edgeBits.map(Float.init(bitPattern:)) + (0..<count).map { _ in
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            return Float(bitPattern: UInt32(truncatingIfNeeded: state >> 16))
        }
    }

    static func bitsEqual(_ a: [Float], _ b: [Float]) -> Bool { differences(a, b).isEmpty }

    /// The first few positions where `a` and `b` differ in bits, as "index: a vs b".
    static func differences(_ a: [Float], _ b: [Float], inputs: [Float]? = nil) -> [String] {
        if a.count != b.count { return ["counts \(a.count) and \(b.count)"] }
        return a.indices.lazy.filter { a[$0].bitPattern != b[$0].bitPattern }.prefix(5).map { index in
            let input = inputs.map { " (input \(String($0[index].bitPattern, radix: 16)))" } ?? ""
            return "\(index): \(String(a[index].bitPattern, radix: 16)) vs \(String(b[index].bitPattern, radix: 16))\(input)"
        }
    }

    /// Values as the forward sees them: mostly modest, some large, some tiny, with exact zeros and BF16 ties.
    static func activations(_ count: Int, seed: UInt64, scale: Float = 4) -> [Float] {
        KernelTests.values(count, seed: seed).enumerated().map { index, value in
            switch index % 97 {
            case 0: return 0
            case 1: return value * 3000
            case 2: return value * 1e-30
            case 3: return Float(bitPattern: bf16(value).bitPattern | 0x8000)  // exactly halfway between two BF16s
            default: return value * scale
            }
        }
    }

    @Test func bf16RoundingMatchesTheScalarDefinitionBitForBit() {
        let input = Self.edgeAndRandomFloats(1 << 20, seed: 1)
        var vector = input
        roundToBFloat16(&vector)
        #expect(Self.differences(vector, input.map(bf16)) == [])
        // An odd length leaves a tail after the per-core blocks.
        var odd = Array(input.prefix(3001))
        roundToBFloat16(&odd)
        #expect(Self.bitsEqual(odd, input.prefix(3001).map(bf16)))
        // Ties go to even, the largest finite value rounds to infinity, NaN keeps its payload.
        #expect(bf16(Float(bitPattern: 0x3F80_8000)).bitPattern == 0x3F80_0000)
        #expect(bf16(Float(bitPattern: 0x3F81_8000)).bitPattern == 0x3F82_0000)
        #expect(bf16(Float(bitPattern: 0x7F7F_FFFF)).bitPattern == 0x7F80_0000)
        #expect(bf16(Float(bitPattern: 0x7FC0_0001)).bitPattern == 0x7FC0_0001)
    }

    @Test func residualAddMatchesTheScalarLoopBitForBit() {
        let a = Self.edgeAndRandomFloats(100_003, seed: 2), b = Self.edgeAndRandomFloats(100_003, seed: 3)
        var vector = a
        addRoundedToBFloat16(&vector, b)
        let expected = zip(a, b).map { bf16($0 + bf16($1)) }
        // With two NaN operands IEEE leaves open whose payload survives, and compilers commute the addition either
        // way (the scalar loop gave no guarantee either); the forward stops on a NaN state in any case.
        let bothNaN = a.indices.filter { a[$0].isNaN && b[$0].isNaN }
        #expect(bothNaN.count > 10 && bothNaN.allSatisfy { vector[$0].isNaN })
        for index in bothNaN { vector[index] = expected[index] }
        #expect(Self.differences(vector, expected, inputs: a) == [])
    }

    @Test func maxAbsoluteMatchesTheScalarLoop() {
        let values = Self.activations(300_001, seed: 4).map { $0 == 0 ? -0.0 : $0 }
        #expect(maxAbsolute(values).bitPattern == ScalarReference.maxAbsolute(values).bitPattern)
        for special: Float in [.infinity, -.infinity, .nan, -.nan, Float(bitPattern: 0x7F80_0001)] {
            var withSpecial = values
            withSpecial[123_457] = special
            #expect(maxAbsolute(withSpecial).bitPattern == ScalarReference.maxAbsolute(withSpecial).bitPattern
                    || (maxAbsolute(withSpecial).isNaN && ScalarReference.maxAbsolute(withSpecial).isNaN))
        }
        #expect(maxAbsolute([]) == 0 && maxAbsolute([-0.0]).bitPattern == 0)
    }

    /// The vector exp against the C library's expf on every float it does not hand back to expf (|x| < 88), where
    /// the self-check turned it on.
    @Test func vectorExpReproducesExpfOnEveryFloat() {
        if cpuk_vector_exp_enabled() != 0 {
            let parts = 256
            let ranges: [(UInt32, UInt32)] = [(0, 0x42AF_FFFF), (0x8000_0000, 0xC2AF_FFFF)]
            var mismatches = [UInt64](repeating: 0, count: parts * ranges.count)
            mismatches.withUnsafeMutableBufferPointer { buffer in
                let out = SendableCounts(value: buffer.baseAddress!)
                DispatchQueue.concurrentPerform(iterations: parts * ranges.count) { job in
                    let (first, last) = ranges[job / parts]
                    let span = UInt64(last - first) + 1
                    let lower = UInt64(first) + span * UInt64(job % parts) / UInt64(parts)
                    let upper = UInt64(first) + span * UInt64(job % parts + 1) / UInt64(parts) - 1
                    out.value[job] = cpuk_vector_exp_mismatches(UInt32(lower), UInt32(upper), 1)
                }
            }
            #expect(mismatches.reduce(0, +) == 0)
        }
        // Through the public entry, special inputs included.
        let inputs = Self.edgeAndRandomFloats(100_000, seed: 5).map { $0.isFinite ? $0.truncatingRemainder(dividingBy: 120) : $0 }
            + [88, -88, 88.72283, 88.72284, -103.27892, -103.5, -103.97207, -104, 1e-45, -1e-45]
        var ours = [Float](repeating: 0, count: inputs.count)
        cpuk_exp(inputs, &ours, inputs.count)
        let expected = inputs.map { Glibc.expf($0) }
        #expect(zip(ours, expected).allSatisfy { $0.bitPattern == $1.bitPattern || ($0.isNaN && $1.isNaN) })
    }

    @Test func rmsNormSwiGLUAndRopeMatchTheScalarLoopsBitForBit() throws {
        let width = 96, rows = 75  // not a multiple of the four-row groups
        let values = Self.activations(rows * width, seed: 6).map(bf16)
        let weight = Self.activations(width, seed: 7, scale: 1).map(bf16)
        #expect(Self.bitsEqual(rmsNormBFloat16(values, weight: weight, width: width, epsilon: 1e-5),
                               ScalarReference.rmsNormBFloat16(values, weight: weight, width: width, epsilon: 1e-5)))

        let intermediate = 300  // not a multiple of the 256-value exp blocks
        var gateUp = Self.activations(rows * 2 * intermediate, seed: 8, scale: 12).map(bf16)
        gateUp[5] = 95; gateUp[6] = -95; gateUp[7] = -88; gateUp[8] = 1e30  // exp(-g) overflowing or not
        #expect(Self.bitsEqual(swiGLUBFloat16(gateUp, rows: rows, intermediate: intermediate),
                               ScalarReference.swiGLUBFloat16(gateUp, rows: rows, intermediate: intermediate)))

        let backend = try KernelTests.smallBackend()
        let config = backend.config
        let rowStride = (config.numAttentionHeads + 2 * config.numKeyValueHeads) * config.headDim
        let batch = try SequenceBatch(tokenCounts: [5, 40, 1, 19])
        let qkv = Self.activations(batch.totalTokens * rowStride, seed: 9).map(bf16)
        var vector = qkv
        backend.applyRope(&vector, batch: batch, rowStride: rowStride, roundingToBFloat16: true)
        let reference = ScalarReference.ropeBFloat16(qkv, backend: backend, batch: batch, rowStride: rowStride)
        #expect(Self.bitsEqual(vector, reference))
    }

    @Test func blockedSoftmaxMatchesTheScalarLoopBitForBit() {
        for (index, count) in [1, 2, 7, 255, 511, 512, 513, 1024, 1100, 1537, 2100].enumerated() {
            for scale: Float in [1, 30] {
                // Later blocks get larger scores, so the running max grows and earlier blocks are rescaled.
                let row = Self.activations(count, seed: UInt64(10 + index)).enumerated().map { key, value in
                    value * scale + Float(key / 512) * scale
                }
                var vector = row, scalar = row
                vector.withUnsafeMutableBufferPointer { CPUBackend.blockedBFloat16Softmax($0.baseAddress!, count: count) }
                scalar.withUnsafeMutableBufferPointer { ScalarReference.blockedBFloat16Softmax($0.baseAddress!, count: count) }
                #expect(Self.bitsEqual(vector, scalar), "count \(count), scale \(scale)")
            }
        }
    }

    /// Tiles only where this machine's OpenBLAS keeps a score's bits in a tile's GEMM (its SkylakeX/Cooperlake
    /// kernels do, its Haswell/Zen kernels do not); the whole square otherwise.
    @Test func scoreTilesFollowTheProbe() {
        let (keepsBits, tiles) = OpenBLASThreads.withOneThread {
            (CPUBackend.scoreTilingKeepsBits, CPUBackend.scoreTiles(length: 300))
        }
        #expect(tiles == (keepsBits ? [0..<128, 128..<256, 256..<300] : [0..<300]))
        #expect(OpenBLASThreads.withOneThread { CPUBackend.scoreTiles(length: 143) } == [0..<143], "a last tile of 15 joins")
        print("OpenBLAS keeps score bits in tiles: \(keepsBits)")
    }

    /// The tiled causal attention against the full-square attention it replaced, on SmolLM2's head layout (9 query
    /// heads over 3 KV heads of 64), with samples around OpenBLAS's small-matrix limit (34² ≤ 1200 < 35²), shorter
    /// than a tile, at tile edges (a last tile of 15 rows joins the one before, one of 16 does not), and longer than
    /// the softmax's 512-key blocks.
    @Test(arguments: [true, false])
    func tiledAttentionMatchesTheFullSquareAttentionBitForBit(roundProbabilities: Bool) throws {
        let json = """
            {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
             "num_key_value_heads": 3, "num_hidden_layers": 1, "vocab_size": 8, "rms_norm_eps": 1e-5, "rope_theta": 10000}
            """
        let backend = CPUBackend(config: try LlamaConfig(json: Data(json.utf8), source: "smollm2-shaped.json"),
                                 activationPrecision: .bfloat16)
        let rowStride = (9 + 2 * 3) * 64
        let batch = try SequenceBatch(tokenCounts: [1, 34, 35, 128, 129, 143, 144, 300, 640, 1300])
        let qkv = Self.activations(batch.totalTokens * rowStride, seed: 20, scale: 3).map(bf16)
        let tiled = backend.causalAttention(qkv, batch: batch, rowStride: rowStride, roundProbabilities: roundProbabilities)
        let fullSquare = ScalarReference.causalAttention(qkv, config: backend.config, batch: batch, rowStride: rowStride,
                                                         roundProbabilities: roundProbabilities)
        var mismatches: [String] = []
        for sample in 0..<batch.sampleCount {
            let rows = batch.rows(ofSample: sample)
            let range = rows.lowerBound * 576..<rows.upperBound * 576
            let count = range.filter { tiled[$0].bitPattern != fullSquare[$0].bitPattern }.count
            if count > 0 {
                let maxDiff = range.map { abs(tiled[$0] - fullSquare[$0]) }.max()!
                mismatches.append("length \(batch.tokenCounts[sample]): \(count) of \(range.count) differ, max \(maxDiff)")
            }
        }
        #expect(mismatches == [])
    }
}

private struct SendableCounts: @unchecked Sendable { let value: UnsafeMutablePointer<UInt64> }

/// The scalar loops of the BF16 forward before they were vectorized (CPUBackend at abe78b1), verbatim but for names.
enum ScalarReference {
    static func maxAbsolute(_ values: [Float]) -> Float {
        var largest: Float = 0
        var sawNaN = false
        for value in values {
            let magnitude = value.magnitude
            if magnitude > largest { largest = magnitude } else if magnitude.isNaN { sawNaN = true }
        }
        return sawNaN ? .nan : largest
    }

    static func rmsNormBFloat16(_ values: [Float], weight: [Float], width: Int, epsilon: Float) -> [Float] {
        var output = [Float](repeating: 0, count: values.count)
        for row in 0..<(values.count / width) {
            let base = row * width
            var sumOfSquares: Float = 0
            for index in base..<(base + width) { sumOfSquares += values[index] * values[index] }
            let inverseRMS = 1 / (sumOfSquares / Float(width) + epsilon).squareRoot()
            for index in 0..<width { output[base + index] = bf16(bf16(values[base + index] * inverseRMS) * weight[index]) }
        }
        return output
    }

    static func swiGLUBFloat16(_ gateUp: [Float], rows: Int, intermediate: Int) -> [Float] {
        var output = [Float](repeating: 0, count: rows * intermediate)
        for row in 0..<rows {
            let source = row * 2 * intermediate
            for index in 0..<intermediate {
                let gate = gateUp[source + index]
                output[row * intermediate + index] = bf16(bf16(gate / (1 + exp(-gate))) * gateUp[source + intermediate + index])
            }
        }
        return output
    }

    static func ropeBFloat16(_ input: [Float], backend: CPUBackend, batch: SequenceBatch, rowStride: Int) -> [Float] {
        let headDim = backend.config.headDim, half = headDim / 2
        let rotatedHeads = backend.config.numAttentionHeads + backend.config.numKeyValueHeads
        var table = backend.ropeTable(positions: batch.tokenCounts.max()!)
        table.cosines = table.cosines.map(bf16)
        table.sines = table.sines.map(bf16)
        var values = input
        for sample in 0..<batch.sampleCount {
            for (position, row) in batch.rows(ofSample: sample).enumerated() {
                let cosines = position * half
                for head in 0..<rotatedHeads {
                    let base = row * rowStride + head * headDim
                    for index in 0..<half {
                        let first = values[base + index], second = values[base + index + half]
                        let cosine = table.cosines[cosines + index], sine = table.sines[cosines + index]
                        values[base + index] = bf16(bf16(first * cosine) + bf16(-second * sine))
                        values[base + index + half] = bf16(bf16(second * cosine) + bf16(first * sine))
                    }
                }
            }
        }
        return values
    }

    static func blockedBFloat16Softmax(_ row: UnsafeMutablePointer<Float>, count: Int) {
        var runningMax = -Float.infinity
        var sum: Float = 0
        var blockMaxima: [Float] = []
        var start = 0
        while start < count {
            let end = min(count, start + 512)
            var blockMax = -Float.infinity
            for key in start..<end { blockMax = max(blockMax, row[key]) }
            let newMax = max(runningMax, blockMax)
            var blockSum: Float = 0
            for key in start..<end {
                let weight = exp(row[key] - newMax)
                blockSum += weight
                row[key] = bf16(weight)
            }
            sum = (runningMax == -Float.infinity ? 0 : sum * exp(runningMax - newMax)) + blockSum
            runningMax = newMax
            blockMaxima.append(newMax)
            start = end
        }
        let inverse = 1 / sum
        for (block, blockMax) in blockMaxima.enumerated() {
            let factor = exp(blockMax - runningMax) * inverse
            for key in (block * 512)..<min(count, (block + 1) * 512) { row[key] *= factor }
        }
    }

    /// One full `length × length` score GEMM and one full weighted-sum GEMM per (sample, head), single-threaded BLAS.
    static func causalAttention(_ qkv: [Float], config: LlamaConfig, batch: SequenceBatch, rowStride: Int,
                                roundProbabilities: Bool) -> [Float] {
        let headDim = config.headDim, heads = config.numAttentionHeads
        let queriesPerKeyValue = heads / config.numKeyValueHeads
        let queryWidth = heads * headDim
        let valueOffset = queryWidth + config.numKeyValueHeads * headDim
        let scale = Float(1 / Double(headDim).squareRoot())
        var output = [Float](repeating: 0, count: batch.totalTokens * queryWidth)
        // One thread, like the tiled attention, and no other test's BLAS call meanwhile: the count is process-wide.
        OpenBLASThreads.withOneThread {
            qkv.withUnsafeBufferPointer { qkvValues in
                output.withUnsafeMutableBufferPointer { outputValues in
                    let input = qkvValues.baseAddress!, result = outputValues.baseAddress!
                    for job in 0..<(batch.sampleCount * heads) {
                        let sample = job / heads, head = job % heads
                        let keyValueHead = head / queriesPerKeyValue
                        let firstRow = batch.sampleOffsets[sample], length = batch.tokenCounts[sample]
                        let queries = input + firstRow * rowStride + head * headDim
                        let keys = input + firstRow * rowStride + queryWidth + keyValueHead * headDim
                        let values = input + firstRow * rowStride + valueOffset + keyValueHead * headDim
                        let scores = UnsafeMutablePointer<Float>.allocate(capacity: length * length)
                        defer { scores.deallocate() }
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(length), Int32(length), Int32(headDim),
                                    scale, queries, Int32(rowStride), keys, Int32(rowStride), 0, scores, Int32(length))
                        for query in 0..<length {
                            let row = scores + query * length
                            if roundProbabilities {
                                blockedBFloat16Softmax(row, count: query + 1)
                            } else {
                                var largest = -Float.infinity
                                for key in 0...query { largest = max(largest, row[key]) }
                                var sum: Float = 0
                                for key in 0...query {
                                    let weight = exp(row[key] - largest)
                                    row[key] = weight
                                    sum += weight
                                }
                                let inverse = 1 / sum
                                for key in 0...query { row[key] *= inverse }
                            }
                            for key in (query + 1)..<length { row[key] = 0 }
                        }
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(length), Int32(headDim), Int32(length),
                                    1, scores, Int32(length), values, Int32(rowStride),
                                    0, result + firstRow * queryWidth + head * headDim, Int32(queryWidth))
                    }
                }
            }
        }
        return output
    }
}
