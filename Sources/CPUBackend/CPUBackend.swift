import COpenBLAS
import OpenBLASThreads
import ComputeBackend
import CPUKernels
import Dispatch
import Foundation
import LlamaModel
import NVFP4

/// # CPUBackend
///
/// An f32 ``ComputeBackend`` on the CPU: weights (BF16/F16/F32) are widened to f32 when a layer is loaded,
/// all arithmetic is f32, and every GEMM goes through OpenBLAS `cblas_sgemm`.
///
/// - The Linears of a batch run as one GEMM over all its tokens; q/k/v and gate/up are fused into one GEMM
///   each, since they read the same input.
/// - Attention runs per (sample, query head) in parallel with `concurrentPerform`, its scores in tiles of 128
///   queries that multiply only the keys their causal mask lets through; the big GEMMs use OpenBLAS's own threads (see
///   ``CPUBackend/setBLASThreadCount(_:)``).
/// - The BF16 element-wise passes run in CPUKernels (vector code with the scalar loops' exact results), split over
///   the cores by rows, on intermediate arrays reused between calls (``ScratchBuffers``).
/// - Residual adds are folded into the o_proj and down_proj GEMMs (`beta = 1`).
///
/// With ``ActivationPrecision/float32`` it follows spec §11 with f32 in place of BF16 activations, which shifts
/// amax slightly from a BF16 forward (about 1% on the test model, spec §12). With
/// ``ActivationPrecision/bfloat16`` the arithmetic is still f32, but values are rounded to BF16 at the points where
/// transformers' BF16 forward rounds them (every Linear output, RMSNorm output and weight product, RoPE products and
/// sums, the attention output, SiLU and its product, residual adds), which is what modelopt calibrates with.
public struct CPUBackend: ComputeBackend {
    public let config: LlamaConfig
    public let activationPrecision: ActivationPrecision
    /// RoPE `inv_freq`, shared with every other backend through LlamaModel.
    public let inverseFrequencies: [Float]

    /// Upper bound on the logits held at once by ``negativeLogLikelihood(_:batch:tokenIDs:head:)``, in elements.
    public let logitsChunkElements: Int

    /// Reused intermediate arrays of the BF16 forward (shared by copies of the backend; `blasLock` serializes forwards).
    let scratch = ScratchBuffers()

    public init(config: LlamaConfig, logitsChunkElements: Int = 1 << 22, activationPrecision: ActivationPrecision = .float32) {
        self.config = config
        self.activationPrecision = activationPrecision
        self.logitsChunkElements = logitsChunkElements
        inverseFrequencies = config.rope.inverseFrequencies(headDim: config.headDim)
    }

    /// Sets how many threads OpenBLAS uses for one GEMM (process-wide).
    public static func setBLASThreadCount(_ count: Int) {
        OpenBLASThreads.setThreadCount(count)
    }

    /// A decoder layer's weights in f32, row-major `[out, in]`, with q/k/v and gate/up stacked by rows.
    public struct LoadedLayer: Sendable {
        public let index: Int
        let qkvWeight: [Float]
        let oWeight: [Float]
        let gateUpWeight: [Float]
        let downWeight: [Float]
        let inputNorm: [Float]
        let postAttentionNorm: [Float]
    }

    /// The final norm and the LM head matrix `[vocab, hidden]` in f32.
    public struct LoadedOutputHead: Sendable {
        let finalNorm: [Float]
        let weight: [Float]
    }

    public func loadLayer(_ index: Int, from source: some WeightSource) throws -> LoadedLayer {
        guard (0..<config.numHiddenLayers).contains(index) else {
            throw ComputeBackendError.layerOutOfRange(layer: index, layerCount: config.numHiddenLayers)
        }
        var weights: [LinearKind: [Float]] = [:]
        for linear in config.linears(layer: index) {
            weights[linear.kind] = try source.floats(linear.weightName, expectedShape: linear.shape)
        }
        let norms = config.layerNorms(layer: index)
        return LoadedLayer(
            index: index,
            qkvWeight: weights[.q]! + weights[.k]! + weights[.v]!,
            oWeight: weights[.o]!,
            gateUpWeight: weights[.gate]! + weights[.up]!,
            downWeight: weights[.down]!,
            inputNorm: try source.floats(norms[0].name, expectedShape: norms[0].shape),
            postAttentionNorm: try source.floats(norms[1].name, expectedShape: norms[1].shape))
    }

    public func loadOutputHead(from source: some WeightSource) throws -> LoadedOutputHead {
        LoadedOutputHead(
            finalNorm: try source.floats(LlamaConfig.finalNormName, expectedShape: [config.hiddenSize]),
            weight: try source.floats(config.outputEmbeddingName, expectedShape: [config.vocabSize, config.hiddenSize]))
    }

    /// Serializes the CPU forwards and logits of the process: each already fills the cores. (OpenBLAS's thread count,
    /// which the attention lowers, is guarded for every BLAS caller by ``OpenBLASThreads``.)
    static let blasLock = NSLock()

    public func forward(layer: LoadedLayer, hidden: inout HiddenStates, batch: SequenceBatch,
                        inputTransform: (any LinearInputTransform)?) throws -> ObservedAmax {
        Self.blasLock.lock()
        defer { Self.blasLock.unlock() }
        let width = config.hiddenSize
        try hidden.check(matches: batch, hiddenSize: width)
        let tokens = batch.totalTokens
        let queryWidth = config.numAttentionHeads * config.headDim
        let keyValueWidth = config.numKeyValueHeads * config.headDim
        let qkvWidth = queryWidth + 2 * keyValueWidth
        let intermediate = config.intermediateSize
        let epsilon = Float(config.rmsNormEps)
        var observed = ObservedAmax.zero

        func observeAndTransform(_ values: inout [Float], columns: Int, group: FusedGroup) {
            observed[group] = observeLinearInput(&values, rows: tokens, columns: columns, layer: layer.index, group: group,
                                                 transform: inputTransform)
        }

        if activationPrecision == .bfloat16 {
            return forwardBFloat16(layer: layer, hidden: &hidden, batch: batch, inputTransform: inputTransform)
        }

        // Attention block.
        var normed = rmsNorm(hidden.values, weight: layer.inputNorm, width: width, epsilon: epsilon)
        observeAndTransform(&normed, columns: width, group: .qkv)
        var qkv = matmulTransposed(normed, rows: tokens, inner: width, weight: layer.qkvWeight, outputs: qkvWidth)
        applyRope(&qkv, batch: batch, rowStride: qkvWidth)
        var attention = attentionHoldingBLASLock(qkv, batch: batch, rowStride: qkvWidth)
        observeAndTransform(&attention, columns: queryWidth, group: .o)
        accumulateMatmulTransposed(attention, rows: tokens, inner: queryWidth, weight: layer.oWeight, outputs: width,
                                   into: &hidden.values)

        // MLP block.
        normed = rmsNorm(hidden.values, weight: layer.postAttentionNorm, width: width, epsilon: epsilon)
        observeAndTransform(&normed, columns: width, group: .gateUp)
        let gateUp = matmulTransposed(normed, rows: tokens, inner: width, weight: layer.gateUpWeight, outputs: 2 * intermediate)
        var activated = swiGLU(gateUp, rows: tokens, intermediate: intermediate)
        observeAndTransform(&activated, columns: intermediate, group: .down)
        accumulateMatmulTransposed(activated, rows: tokens, inner: intermediate, weight: layer.downWeight, outputs: width,
                                   into: &hidden.values)
        return observed
    }

    public func logits(_ hidden: HiddenStates, head: LoadedOutputHead) throws -> [Float] {
        Self.blasLock.lock()
        defer { Self.blasLock.unlock() }
        guard hidden.hiddenSize == config.hiddenSize else {
            throw ComputeBackendError.hiddenStatesMismatch(expectedTokens: hidden.tokenCount, expectedHiddenSize: config.hiddenSize,
                                                           actualTokens: hidden.tokenCount, actualHiddenSize: hidden.hiddenSize)
        }
        let normed = rmsNorm(hidden.values, weight: head.finalNorm, width: config.hiddenSize, epsilon: Float(config.rmsNormEps))
        return matmulTransposed(normed, rows: hidden.tokenCount, inner: config.hiddenSize, weight: head.weight,
                                outputs: config.vocabSize)
    }

    public func negativeLogLikelihood(_ hidden: HiddenStates, batch: SequenceBatch, tokenIDs: [Int],
                                      head: LoadedOutputHead) throws -> NegativeLogLikelihood {
        try nextTokenNegativeLogLikelihood(hidden, batch: batch, tokenIDs: tokenIDs, head: head, chunkElements: logitsChunkElements)
    }

    /// The layer with BF16 rounding points (see the type's overview). Amax is observed on the rounded inputs.
    func forwardBFloat16(layer: LoadedLayer, hidden: inout HiddenStates, batch: SequenceBatch,
                         inputTransform: (any LinearInputTransform)?) -> ObservedAmax {
        let width = config.hiddenSize
        let tokens = batch.totalTokens
        let queryWidth = config.numAttentionHeads * config.headDim
        let qkvWidth = queryWidth + 2 * config.numKeyValueHeads * config.headDim
        let intermediate = config.intermediateSize
        let epsilon = Float(config.rmsNormEps)
        var observed = ObservedAmax.zero

        func observeAndTransform(_ values: inout [Float], columns: Int, group: FusedGroup) {
            observed[group] = observeLinearInput(&values, rows: tokens, columns: columns, layer: layer.index, group: group,
                                                 transform: inputTransform)
        }

        roundToBFloat16(&hidden.values)
        var normed = scratch.zeros(tokens * width)
        rmsNormBFloat16(hidden.values, weight: layer.inputNorm, width: width, epsilon: epsilon, into: &normed)
        observeAndTransform(&normed, columns: width, group: .qkv)
        var qkv = scratch.zeros(tokens * qkvWidth)
        accumulateMatmulTransposed(normed, rows: tokens, inner: width, weight: layer.qkvWeight, outputs: qkvWidth, into: &qkv)
        roundToBFloat16(&qkv)
        applyRope(&qkv, batch: batch, rowStride: qkvWidth, roundingToBFloat16: true)
        var attention = scratch.zeros(tokens * queryWidth)
        attentionHoldingBLASLock(qkv, batch: batch, rowStride: qkvWidth, roundProbabilities: true, into: &attention)
        scratch.recycle(&qkv)
        roundToBFloat16(&attention)
        observeAndTransform(&attention, columns: queryWidth, group: .o)
        var projected = scratch.zeros(tokens * width)
        accumulateMatmulTransposed(attention, rows: tokens, inner: queryWidth, weight: layer.oWeight, outputs: width,
                                   into: &projected)
        scratch.recycle(&attention)
        addRoundedToBFloat16(&hidden.values, projected)

        rmsNormBFloat16(hidden.values, weight: layer.postAttentionNorm, width: width, epsilon: epsilon, into: &normed)
        observeAndTransform(&normed, columns: width, group: .gateUp)
        var gateUp = scratch.zeros(tokens * 2 * intermediate)
        accumulateMatmulTransposed(normed, rows: tokens, inner: width, weight: layer.gateUpWeight, outputs: 2 * intermediate,
                                   into: &gateUp)
        scratch.recycle(&normed)
        var activated = scratch.zeros(tokens * intermediate)
        swiGLUBFloat16(gateUp, rows: tokens, intermediate: intermediate, into: &activated)
        scratch.recycle(&gateUp)
        observeAndTransform(&activated, columns: intermediate, group: .down)
        for index in projected.indices { projected[index] = 0 }
        accumulateMatmulTransposed(activated, rows: tokens, inner: intermediate, weight: layer.downWeight, outputs: width,
                                   into: &projected)
        scratch.recycle(&activated)
        addRoundedToBFloat16(&hidden.values, projected)
        scratch.recycle(&projected)
        return observed
    }

    /// Query rows per attention tile, where tiles keep every score's bits (``scoreTilingKeepsBits``).
    static let attentionQueryTile = 128

    /// The query ranges whose scores attention computes in one GEMM each (keys `0..<range.upperBound`): tiles of
    /// ``attentionQueryTile`` where ``scoreTilingKeepsBits``, a last tile of fewer than 16 rows joined to the one
    /// before (a GEMM of at most 1200 results takes OpenBLAS's small-matrix kernel, which sums in another order);
    /// otherwise the whole square at once. Call inside `OpenBLASThreads.withOneThread`, as attention does.
    static func scoreTiles(length: Int) -> [Range<Int>] {
        guard scoreTilingKeepsBits else { return length > 0 ? [0..<length] : [] }
        return queryTiles(length: length)
    }

    private static func queryTiles(length: Int) -> [Range<Int>] {
        var tiles: [Range<Int>] = []
        var first = 0
        while first < length {
            var end = min(length, first + attentionQueryTile)
            if length - end < 16 { end = length }
            tiles.append(first..<end)
            first = end
        }
        return tiles
    }

    /// Whether this process's OpenBLAS gives a score the same bits in a tile's GEMM as in the full `length × length`
    /// GEMM, so that tiling changes no activation. True of its SkylakeX/Cooperlake kernels, where each score is the
    /// same 64-term dot product whatever the GEMM's shape; false of its Haswell/Zen kernels, whose sums depend on
    /// where a row and a column fall in the GEMM (measured: OpenBLAS 0.3.21 on an AMD EPYC, core "Zen"). Probed once,
    /// on lengths across tile edges, the first time attention runs (OpenBLAS on one thread, as there).
    static let scoreTilingKeepsBits: Bool = probeScoreTiling()

    private static func probeScoreTiling() -> Bool {
        let headDim = 64, rowStride = 3 * headDim
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15
        for length in [144, 300, 640, 1300] {
            let input = (0..<(length * rowStride)).map { _ in
                state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
                return Float(Int64(state >> 40) - (1 << 23)) / Float(1 << 22)  // in [-2, 2)
            }
            var full = [Float](repeating: 0, count: length * length)
            var tiled = [Float](repeating: 0, count: length * length)
            input.withUnsafeBufferPointer { input in
                let queries = input.baseAddress!, keys = input.baseAddress! + headDim
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(length), Int32(length), Int32(headDim),
                            0.125, queries, Int32(rowStride), keys, Int32(rowStride), 0, &full, Int32(length))
                tiled.withUnsafeMutableBufferPointer { tiled in
                    for tile in queryTiles(length: length) {
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(tile.count), Int32(tile.upperBound),
                                    Int32(headDim), 0.125, queries + tile.lowerBound * rowStride, Int32(rowStride), keys,
                                    Int32(rowStride), 0, tiled.baseAddress! + tile.lowerBound * length, Int32(length))
                    }
                }
            }
            for query in 0..<length {
                for key in 0...query where full[query * length + key].bitPattern != tiled[query * length + key].bitPattern {
                    return false
                }
            }
        }
        return true
    }

    /// Keys per block of PyTorch's CPU flash-attention kernel.
    static let flashKeyBlock = 512

    /// Softmax weights of one query row as PyTorch's CPU flash attention forms them for BF16: keys go in blocks of
    /// 512 with a running max; each block's exponentials (relative to the running max at that block) are rounded to
    /// BF16, earlier blocks are rescaled in f32 when the max grows, and the f32 sum divides at the end. On return
    /// `row[0..<count]` holds the effective weight of each key.
    static func blockedBFloat16Softmax(_ row: UnsafeMutablePointer<Float>, count: Int) {
        cpuk_blocked_softmax_bf16(row, count, flashKeyBlock)
    }

    // MARK: - Pieces of the layer

    /// Rotates the q and k heads of every token in place, at its position within its own sample. With
    /// `roundingToBFloat16` it computes as transformers does in BF16: cos/sin rounded to BF16, each product rounded,
    /// then the sum.
    func applyRope(_ qkv: inout [Float], batch: SequenceBatch, rowStride: Int, roundingToBFloat16: Bool = false) {
        let headDim = config.headDim
        let half = headDim / 2
        let rotatedHeads = config.numAttentionHeads + config.numKeyValueHeads  // q heads then k heads, adjacent
        var table = ropeTable(positions: batch.tokenCounts.max()!)
        if roundingToBFloat16 {
            roundToBFloat16(&table.cosines)
            roundToBFloat16(&table.sines)
        }
        if roundingToBFloat16 {
            // Rows are independent: split them over the cores.
            let rows = batch.sampleCount == 0 ? [] : (0..<batch.sampleCount).flatMap { sample in
                batch.rows(ofSample: sample).enumerated().map { (row: $0.element, position: $0.offset) }
            }
            qkv.withUnsafeMutableBufferPointer { values in
                table.cosines.withUnsafeBufferPointer { cosines in
                    table.sines.withUnsafeBufferPointer { sines in
                        let shared = UncheckedSendable((values.baseAddress!, cosines.baseAddress!, sines.baseAddress!))
                        forEachRowRange(rows.count) { range in
                            let (values, cosines, sines) = shared.value
                            for (row, position) in rows[range] {
                                cpuk_rope_bf16(values + row * rowStride, rotatedHeads, headDim, cosines + position * half,
                                               sines + position * half)
                            }
                        }
                    }
                }
            }
            return
        }
        qkv.withUnsafeMutableBufferPointer { values in
            for sample in 0..<batch.sampleCount {
                for (position, row) in batch.rows(ofSample: sample).enumerated() {
                    let cosines = position * half
                    for head in 0..<rotatedHeads {
                        let base = row * rowStride + head * headDim
                        for index in 0..<half {
                            let first = values[base + index]
                            let second = values[base + index + half]
                            let cosine = table.cosines[cosines + index]
                            let sine = table.sines[cosines + index]
                            values[base + index] = first * cosine + -second * sine
                            values[base + index + half] = second * cosine + first * sine
                        }
                    }
                }
            }
        }
    }

    /// cos and sin of `f32(p) · inv_freq[i]`, row-major `[positions, headDim/2]`.
    func ropeTable(positions: Int) -> (cosines: [Float], sines: [Float]) {
        let table = RopeTable(inverseFrequencies: inverseFrequencies, positions: positions)
        return (table.cosines, table.sines)
    }

    /// Causal GQA attention of each sample; returns the heads concatenated, `[tokens, heads·headDim]`.
    /// With `roundProbabilities`, the unnormalized softmax weights are rounded to BF16 before they weight the values,
    /// as PyTorch's CPU flash-attention kernel does for BF16 inputs (the sum stays f32).
    func causalAttention(_ qkv: [Float], batch: SequenceBatch, rowStride: Int, roundProbabilities: Bool = false) -> [Float] {
        Self.blasLock.lock()
        defer { Self.blasLock.unlock() }
        return attentionHoldingBLASLock(qkv, batch: batch, rowStride: rowStride, roundProbabilities: roundProbabilities)
    }

    func attentionHoldingBLASLock(_ qkv: [Float], batch: SequenceBatch, rowStride: Int,
                                  roundProbabilities: Bool = false) -> [Float] {
        var output = [Float](repeating: 0, count: batch.totalTokens * config.numAttentionHeads * config.headDim)
        attentionHoldingBLASLock(qkv, batch: batch, rowStride: rowStride, roundProbabilities: roundProbabilities, into: &output)
        return output
    }

    /// Attention into `output` (`[tokens, heads·headDim]`, every element written).
    func attentionHoldingBLASLock(_ qkv: [Float], batch: SequenceBatch, rowStride: Int, roundProbabilities: Bool,
                                  into output: inout [Float]) {
        let headDim = config.headDim
        let heads = config.numAttentionHeads
        let queriesPerKeyValue = heads / config.numKeyValueHeads
        let queryWidth = heads * headDim
        let keyOffset = queryWidth
        let valueOffset = queryWidth + config.numKeyValueHeads * headDim
        let scale = Float(1 / Double(headDim).squareRoot())
        precondition(output.count == batch.totalTokens * queryWidth, "attention output shape does not match")
        // The (sample, head) jobs already fill the cores; OpenBLAS threads inside each small GEMM would only
        // oversubscribe them. No other BLAS call in the process runs while the count is lowered (OpenBLASThreads).
        OpenBLASThreads.withOneThread {
            qkv.withUnsafeBufferPointer { qkvValues in
                output.withUnsafeMutableBufferPointer { outputValues in
                    let shared = (input: UncheckedSendable(qkvValues.baseAddress!), result: UncheckedSendable(outputValues.baseAddress!))
                    // Each (sample, head) pair writes its own columns of its own rows.
                    DispatchQueue.concurrentPerform(iterations: batch.sampleCount * heads) { job in
                        let input = shared.input.value
                        let result = shared.result.value
                        let sample = job / heads
                        let head = job % heads
                        let keyValueHead = head / queriesPerKeyValue
                        let firstRow = batch.sampleOffsets[sample]
                        let length = batch.tokenCounts[sample]
                        let queries = input + firstRow * rowStride + head * headDim
                        let keys = input + firstRow * rowStride + keyOffset + keyValueHead * headDim
                        let values = input + firstRow * rowStride + valueOffset + keyValueHead * headDim
                        // The scores go in tiles of queries (``scoreTiles(length:)``); a tile's last query sees keys
                        // 0..<end, so its GEMM skips the keys above that, which causal masking zeroes anyway.
                        // The weighted sum stays one GEMM over all `length` keys (zero weights above each query):
                        // OpenBLAS splits a GEMM's inner dimension into blocks by its length, so a shorter sum would add
                        // the same terms in other groups and change the last bits.
                        let scores = UnsafeMutablePointer<Float>.allocate(capacity: length * length)
                        defer { scores.deallocate() }
                        for tile in Self.scoreTiles(length: length) {
                            let firstQuery = tile.lowerBound, end = tile.upperBound
                            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(end - firstQuery), Int32(end), Int32(headDim),
                                        scale, queries + firstQuery * rowStride, Int32(rowStride), keys, Int32(rowStride),
                                        0, scores + firstQuery * length, Int32(length))
                            if roundProbabilities {
                                cpuk_causal_softmax_bf16(scores + firstQuery * length, length, firstQuery, end - firstQuery,
                                                         Self.flashKeyBlock)
                            }
                            for query in firstQuery..<end {
                                let row = scores + query * length
                                if !roundProbabilities {
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
                                (row + query + 1).update(repeating: 0, count: length - query - 1)
                            }
                        }
                        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, Int32(length), Int32(headDim), Int32(length),
                                    1, scores, Int32(length), values, Int32(rowStride),
                                    0, result + firstRow * queryWidth + head * headDim, Int32(queryWidth))
                    }
                }
            }
        }
    }
}

// MARK: - Kernels

/// The amax of one Linear input, then the optional transform of it (the W4A4 emulation of the quality report), as both
/// forwards observe their four inputs.
@inline(__always)
func observeLinearInput(_ values: inout [Float], rows: Int, columns: Int, layer: Int, group: FusedGroup,
                        transform: (any LinearInputTransform)?) -> Float {
    let amax = maxAbsolute(values)
    if let transform {
        values.withUnsafeMutableBufferPointer { transform.transform($0, rows: rows, columns: columns, layer: layer, group: group) }
    }
    return amax
}

/// `y = x · rsqrt(mean(x²) + eps) · weight` for each row of width `width` (mean accumulated in f64).
public func rmsNorm(_ values: [Float], weight: [Float], width: Int, epsilon: Float) -> [Float] {
    precondition(weight.count == width && values.count % width == 0, "RMSNorm shapes do not match")
    var output = [Float](repeating: 0, count: values.count)
    for row in 0..<(values.count / width) {
        let base = row * width
        var sumOfSquares: Double = 0
        for index in base..<(base + width) { sumOfSquares += Double(values[index]) * Double(values[index]) }
        let meanSquare = Float(sumOfSquares / Double(width))
        let inverseRMS = 1 / (meanSquare + epsilon).squareRoot()
        for index in 0..<width { output[base + index] = values[base + index] * inverseRMS * weight[index] }
    }
    return output
}

/// `silu(g) ⊙ u` for rows laid out as `[gate (intermediate) | up (intermediate)]`.
public func swiGLU(_ gateUp: [Float], rows: Int, intermediate: Int) -> [Float] {
    swiGLU(gateUp, rows: rows, intermediate: intermediate, rounding: { $0 })
}

/// `round(round(silu(g)) · u)`: one loop for the f32 forward (no rounding) and the BF16 one.
@inline(__always)
func swiGLU(_ gateUp: [Float], rows: Int, intermediate: Int, rounding round: (Float) -> Float) -> [Float] {
    var output = [Float](repeating: 0, count: rows * intermediate)
    for row in 0..<rows {
        let source = row * 2 * intermediate
        for index in 0..<intermediate {
            let gate = gateUp[source + index]
            output[row * intermediate + index] = round(round(gate / (1 + exp(-gate))) * gateUp[source + intermediate + index])
        }
    }
    return output
}

/// Max |x| over all values; NaN if any value is NaN.
public func maxAbsolute(_ values: [Float]) -> Float {
    values.withUnsafeBufferPointer { buffer in
        guard let origin = buffer.baseAddress else { return 0 }
        // Each job's max, then the max of those: max is exact and order-free, and a NaN anywhere stays a NaN.
        let jobs = max(1, min(ProcessInfo.processInfo.activeProcessorCount, buffer.count >> 16))
        var maxima = [Float](repeating: 0, count: jobs)
        maxima.withUnsafeMutableBufferPointer { maxima in
            let shared = UncheckedSendable((origin, maxima.baseAddress!))
            let count = buffer.count
            DispatchQueue.concurrentPerform(iterations: jobs) { job in
                let lower = count * job / jobs, upper = count * (job + 1) / jobs
                shared.value.1[job] = cpuk_max_abs(shared.value.0 + lower, upper - lower)
            }
        }
        return maxima.withUnsafeBufferPointer { cpuk_max_abs($0.baseAddress, jobs) }
    }
}

/// `x · Wᵀ`: x is `[rows, inner]`, W is `[outputs, inner]`; the result is `[rows, outputs]`.
func matmulTransposed(_ input: [Float], rows: Int, inner: Int, weight: [Float], outputs: Int) -> [Float] {
    var output = [Float](repeating: 0, count: rows * outputs)
    accumulateMatmulTransposed(input, rows: rows, inner: inner, weight: weight, outputs: outputs, into: &output)
    return output
}

/// `output += x · Wᵀ`, the residual add folded into the GEMM.
func accumulateMatmulTransposed(_ input: [Float], rows: Int, inner: Int, weight: [Float], outputs: Int,
                                into output: inout [Float]) {
    precondition(input.count == rows * inner && weight.count == outputs * inner && output.count == rows * outputs,
                 "GEMM shapes do not match")
    OpenBLASThreads.withConfiguredThreads {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(rows), Int32(outputs), Int32(inner),
                    1, input, Int32(inner), weight, Int32(inner), 1, &output, Int32(outputs))
    }
}

// MARK: - BF16 rounding points

/// Rounds to the nearest BF16 value (ties to even), kept in an f32. NaN stays NaN. The scalar definition that the
/// vector passes (CPUKernels) reproduce.
@inline(__always)
func bf16(_ value: Float) -> Float {
    let u = value.bitPattern
    if value.isNaN { return value }
    return Float(bitPattern: (u &+ 0x7FFF &+ ((u >> 16) & 1)) & 0xFFFF_0000)
}

/// Rows per job below which splitting an element-wise pass over threads costs more than it saves.
let minimumRowsPerJob = 16

/// Calls `body` on contiguous ranges covering `0..<rows`, one per core, in parallel. The element-wise passes are
/// independent per row, so the split changes no result.
func forEachRowRange(_ rows: Int, _ body: (Range<Int>) -> Void) {
    let jobs = max(1, min(ProcessInfo.processInfo.activeProcessorCount, rows / minimumRowsPerJob))
    if jobs == 1 {
        body(0..<rows)
        return
    }
    withoutActuallyEscaping(body) { body in
        let shared = UncheckedSendable(body)
        DispatchQueue.concurrentPerform(iterations: jobs) { job in
            shared.value(rows * job / jobs..<rows * (job + 1) / jobs)
        }
    }
}

/// `forEachRowRange` over a flat buffer of `values.count / width` rows, giving each job its base address and rows.
func forEachRowRange(_ values: UnsafeMutableBufferPointer<Float>, width: Int,
                     _ body: (UnsafeMutablePointer<Float>, Int) -> Void) {
    let base = UncheckedSendable(values.baseAddress)
    forEachRowRange(values.count / max(width, 1)) { range in
        if let start = base.value { body(start + range.lowerBound * width, range.count) }
    }
}

func roundToBFloat16(_ values: inout [Float]) {
    values.withUnsafeMutableBufferPointer { buffer in
        forEachRowRange(buffer, width: 1024) { start, rows in cpuk_round_bf16(start, rows * 1024) }
        let tail = buffer.count % 1024
        if tail > 0 { cpuk_round_bf16(buffer.baseAddress! + buffer.count - tail, tail) }
    }
}

/// `a = bf16(a + bf16(b))`: a Linear output rounded to BF16, then the residual add in BF16.
func addRoundedToBFloat16(_ a: inout [Float], _ b: [Float]) {
    precondition(a.count == b.count, "residual shapes do not match")
    b.withUnsafeBufferPointer { addend in
        let addend = UncheckedSendable(addend.baseAddress)
        a.withUnsafeMutableBufferPointer { buffer in
            guard let origin = buffer.baseAddress, let addendOrigin = addend.value else { return }
            forEachRowRange(buffer, width: 1024) { start, rows in
                cpuk_add_rounded_bf16(start, addendOrigin + (start - origin), rows * 1024)
            }
            let tail = buffer.count % 1024
            if tail > 0 { cpuk_add_rounded_bf16(origin + buffer.count - tail, addendOrigin + buffer.count - tail, tail) }
        }
    }
}

/// transformers' LlamaRMSNorm on BF16 input: normalize in f32, round to BF16, multiply by the weight, round again.
public func rmsNormBFloat16(_ values: [Float], weight: [Float], width: Int, epsilon: Float) -> [Float] {
    var output = [Float](repeating: 0, count: values.count)
    rmsNormBFloat16(values, weight: weight, width: width, epsilon: epsilon, into: &output)
    return output
}

/// ``rmsNormBFloat16(_:weight:width:epsilon:)`` into `output` (same count as `values`).
func rmsNormBFloat16(_ values: [Float], weight: [Float], width: Int, epsilon: Float, into output: inout [Float]) {
    precondition(weight.count == width && values.count % width == 0 && output.count == values.count,
                 "RMSNorm shapes do not match")
    values.withUnsafeBufferPointer { input in
        weight.withUnsafeBufferPointer { weight in
            output.withUnsafeMutableBufferPointer { output in
                let shared = UncheckedSendable((input.baseAddress, weight.baseAddress))
                forEachRowRange(output, width: width) { start, rows in
                    guard let input = shared.value.0, let weight = shared.value.1 else { return }
                    let offset = start - output.baseAddress!
                    cpuk_rms_norm_bf16(input + offset, weight, start, rows, width, epsilon)
                }
            }
        }
    }
}

/// `bf16(bf16(silu(g)) · u)`: SiLU of a BF16 tensor is computed in f32 and rounded, then the product is rounded.
/// g and u are rounded to BF16 on the way in, so the forward passes the gate/up GEMM's raw output.
public func swiGLUBFloat16(_ gateUp: [Float], rows: Int, intermediate: Int) -> [Float] {
    var output = [Float](repeating: 0, count: rows * intermediate)
    swiGLUBFloat16(gateUp, rows: rows, intermediate: intermediate, into: &output)
    return output
}

/// ``swiGLUBFloat16(_:rows:intermediate:)`` into `output` (`rows · intermediate` values).
func swiGLUBFloat16(_ gateUp: [Float], rows: Int, intermediate: Int, into output: inout [Float]) {
    precondition(gateUp.count == rows * 2 * intermediate && output.count == rows * intermediate, "SwiGLU shapes do not match")
    gateUp.withUnsafeBufferPointer { input in
        output.withUnsafeMutableBufferPointer { output in
            let input = UncheckedSendable(input.baseAddress)
            forEachRowRange(output, width: intermediate) { start, count in
                guard let input = input.value else { return }
                let row = (start - output.baseAddress!) / intermediate
                cpuk_swiglu_bf16(input + row * 2 * intermediate, start, count, intermediate)
            }
        }
    }
}
