import COpenBLAS
import ComputeBackend
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
/// - Attention runs per (sample, query head) in parallel with `concurrentPerform`; the big GEMMs use
///   OpenBLAS's own threads (see ``CPUBackend/setBLASThreadCount(_:)``).
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

    public init(config: LlamaConfig, logitsChunkElements: Int = 1 << 22, activationPrecision: ActivationPrecision = .float32) {
        self.config = config
        self.activationPrecision = activationPrecision
        self.logitsChunkElements = logitsChunkElements
        inverseFrequencies = config.rope.inverseFrequencies(headDim: config.headDim)
    }

    /// Sets how many threads OpenBLAS uses for one GEMM (process-wide).
    public static func setBLASThreadCount(_ count: Int) {
        openblas_set_num_threads(Int32(max(1, count)))
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

    /// Serializes BLAS work in the process: attention switches OpenBLAS to one thread while its own parallel jobs
    /// run, and a concurrent forward must not see that setting (its GEMMs would be blocked differently).
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
        var normed = rmsNormBFloat16(hidden.values, weight: layer.inputNorm, width: width, epsilon: epsilon)
        observeAndTransform(&normed, columns: width, group: .qkv)
        var qkv = matmulTransposed(normed, rows: tokens, inner: width, weight: layer.qkvWeight, outputs: qkvWidth)
        roundToBFloat16(&qkv)
        applyRope(&qkv, batch: batch, rowStride: qkvWidth, roundingToBFloat16: true)
        var attention = attentionHoldingBLASLock(qkv, batch: batch, rowStride: qkvWidth, roundProbabilities: true)
        roundToBFloat16(&attention)
        observeAndTransform(&attention, columns: queryWidth, group: .o)
        var projected = matmulTransposed(attention, rows: tokens, inner: queryWidth, weight: layer.oWeight, outputs: width)
        roundToBFloat16(&projected)
        addRoundingToBFloat16(&hidden.values, projected)

        normed = rmsNormBFloat16(hidden.values, weight: layer.postAttentionNorm, width: width, epsilon: epsilon)
        observeAndTransform(&normed, columns: width, group: .gateUp)
        var gateUp = matmulTransposed(normed, rows: tokens, inner: width, weight: layer.gateUpWeight, outputs: 2 * intermediate)
        roundToBFloat16(&gateUp)
        var activated = swiGLUBFloat16(gateUp, rows: tokens, intermediate: intermediate)
        observeAndTransform(&activated, columns: intermediate, group: .down)
        projected = matmulTransposed(activated, rows: tokens, inner: intermediate, weight: layer.downWeight, outputs: width)
        roundToBFloat16(&projected)
        addRoundingToBFloat16(&hidden.values, projected)
        return observed
    }

    /// Keys per block of PyTorch's CPU flash-attention kernel.
    static let flashKeyBlock = 512

    /// Softmax weights of one query row as PyTorch's CPU flash attention forms them for BF16: keys go in blocks of
    /// 512 with a running max; each block's exponentials (relative to the running max at that block) are rounded to
    /// BF16, earlier blocks are rescaled in f32 when the max grows, and the f32 sum divides at the end. On return
    /// `row[0..<count]` holds the effective weight of each key.
    static func blockedBFloat16Softmax(_ row: UnsafeMutablePointer<Float>, count: Int) {
        var runningMax = -Float.infinity
        var sum: Float = 0
        var blockMaxima: [Float] = []
        var start = 0
        while start < count {
            let end = min(count, start + flashKeyBlock)
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
            for key in (block * flashKeyBlock)..<min(count, (block + 1) * flashKeyBlock) { row[key] *= factor }
        }
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
        let round: (Float) -> Float = roundingToBFloat16 ? { bf16($0) } : { $0 }
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
                            values[base + index] = round(round(first * cosine) + round(-second * sine))
                            values[base + index + half] = round(round(second * cosine) + round(first * sine))
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
        let headDim = config.headDim
        let heads = config.numAttentionHeads
        let queriesPerKeyValue = heads / config.numKeyValueHeads
        let queryWidth = heads * headDim
        let keyOffset = queryWidth
        let valueOffset = queryWidth + config.numKeyValueHeads * headDim
        let scale = Float(1 / Double(headDim).squareRoot())
        var output = [Float](repeating: 0, count: batch.totalTokens * queryWidth)
        // The (sample, head) jobs already fill the cores; OpenBLAS threads inside each small GEMM would only
        // oversubscribe them. Callers hold `blasLock`, so no other GEMM sees the setting.
        let blasThreads = openblas_get_num_threads()
        openblas_set_num_threads(1)
        defer { openblas_set_num_threads(blasThreads) }
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
                    let scores = UnsafeMutablePointer<Float>.allocate(capacity: length * length)
                    defer { scores.deallocate() }
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(length), Int32(length), Int32(headDim),
                                scale, queries, Int32(rowStride), keys, Int32(rowStride), 0, scores, Int32(length))
                    for query in 0..<length {
                        let row = scores + query * length
                        if roundProbabilities {
                            Self.blockedBFloat16Softmax(row, count: query + 1)
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
        return output
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
    var largest: Float = 0
    var sawNaN = false
    for value in values {
        let magnitude = value.magnitude
        if magnitude > largest { largest = magnitude } else if magnitude.isNaN { sawNaN = true }
    }
    return sawNaN ? .nan : largest
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
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(rows), Int32(outputs), Int32(inner),
                1, input, Int32(inner), weight, Int32(inner), 1, &output, Int32(outputs))
}

// MARK: - BF16 rounding points

/// Rounds to the nearest BF16 value (ties to even), kept in an f32. NaN stays NaN.
@inline(__always)
func bf16(_ value: Float) -> Float {
    let u = value.bitPattern
    if value.isNaN { return value }
    return Float(bitPattern: (u &+ 0x7FFF &+ ((u >> 16) & 1)) & 0xFFFF_0000)
}

func roundToBFloat16(_ values: inout [Float]) {
    values.withUnsafeMutableBufferPointer { buffer in
        for index in buffer.indices { buffer[index] = bf16(buffer[index]) }
    }
}

/// `a = bf16(a + b)`: a residual add in BF16.
func addRoundingToBFloat16(_ a: inout [Float], _ b: [Float]) {
    precondition(a.count == b.count, "residual shapes do not match")
    for index in a.indices { a[index] = bf16(a[index] + b[index]) }
}

/// transformers' LlamaRMSNorm on BF16 input: normalize in f32, round to BF16, multiply by the weight, round again.
public func rmsNormBFloat16(_ values: [Float], weight: [Float], width: Int, epsilon: Float) -> [Float] {
    precondition(weight.count == width && values.count % width == 0, "RMSNorm shapes do not match")
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

/// `bf16(bf16(silu(g)) · u)`: SiLU of a BF16 tensor is computed in f32 and rounded, then the product is rounded.
public func swiGLUBFloat16(_ gateUp: [Float], rows: Int, intermediate: Int) -> [Float] {
    swiGLU(gateUp, rows: rows, intermediate: intermediate, rounding: bf16)
}
