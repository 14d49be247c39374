import Foundation
@_exported import JobModel
import LlamaModel

/// # ComputeBackend
///
/// The seam between the calibration loop and the arithmetic. Calibration streams the model layer by layer:
/// it loads one decoder layer, pushes the hidden states of every calibration batch through it (collecting the
/// max |input| of each observed Linear input), then drops the layer and moves on. A backend only has to
/// provide the forward of one layer, the embedding lookup and, for perplexity, the final norm and LM head.
///
/// Design choices:
/// - **Hidden states live on the host** as f32 ``HiddenStates``. A layer-streaming loop holds the states of
///   every sample between layers (and hands them between workers), which does not fit on an accelerator for
///   large calibration sets anyway. A device backend uploads them per call and downloads the result; this
///   costs far less than the layer's GEMMs.
/// - **Weights come through ``WeightSource``** (LlamaModel), by their Hugging Face names. A backend converts
///   them into whatever it computes with (f32 on the CPU, BF16 on a GPU) inside ``ComputeBackend/loadLayer(_:from:)``.
///   The returned handle owns that memory: dropping it frees it (a device backend frees in `deinit`).
/// - **Batches** (``SequenceBatch``) concatenate several samples' tokens; each sample is its own causal
///   sequence with positions 0..T−1, no padding and no mask (spec §4). Linears see all tokens as one GEMM.
/// - **Observation** returns the four observed activations of spec §11 as ``ObservedAmax``, the max |x|
///   over the batch of each Linear input group (``FusedGroup``). Max is associative, so callers merge
///   batch results with ``ObservedAmax/merging(_:)`` in any order.
///
/// W4A4 emulation (later): two seams exist.
/// - *Quantized activations:* ``LinearInputTransform`` is applied to each observed Linear input after it is
///   observed and before its GEMM. A CPU backend calls it on host memory; a device backend would instead
///   recognise the transforms it has kernels for (e.g. NVFP4 fake quantization with given input scales).
/// - *Quantized weights:* pass an `OverlayWeightSource` whose overrides hold the dequantized Linear weights;
///   the backend cannot tell them from the originals.
public enum ComputeBackendOverview {}

/// An input rejected by a backend, naming what is wrong.
public enum ComputeBackendError: Error, CustomStringConvertible, Equatable, Sendable {
    case emptyBatch
    case nonPositiveTokenCount(sample: Int, count: Int)
    case hiddenStatesMismatch(expectedTokens: Int, expectedHiddenSize: Int, actualTokens: Int, actualHiddenSize: Int)
    case tokenIDOutOfRange(position: Int, tokenID: Int, vocabSize: Int)
    case tokenCountMismatch(expected: Int, actual: Int)
    case layerOutOfRange(layer: Int, layerCount: Int)

    public var description: String {
        switch self {
        case .emptyBatch:
            "a sequence batch needs at least one sample"
        case .nonPositiveTokenCount(let sample, let count):
            "sample \(sample) of the batch has \(count) tokens; each needs at least one"
        case .hiddenStatesMismatch(let expectedTokens, let expectedHiddenSize, let actualTokens, let actualHiddenSize):
            "hidden states are [\(actualTokens), \(actualHiddenSize)], expected [\(expectedTokens), \(expectedHiddenSize)]"
        case .tokenIDOutOfRange(let position, let tokenID, let vocabSize):
            "token id \(tokenID) at position \(position) is outside the vocabulary 0..<\(vocabSize)"
        case .tokenCountMismatch(let expected, let actual):
            "\(actual) token ids given for a batch of \(expected) tokens"
        case .layerOutOfRange(let layer, let layerCount):
            "layer \(layer) does not exist; the model has \(layerCount) layers"
        }
    }
}

/// Several samples' tokens concatenated; each sample is its own causal sequence (positions 0..T−1).
public struct SequenceBatch: Sendable, Equatable {
    /// Tokens of each sample, in order.
    public let tokenCounts: [Int]
    /// The first row of each sample in the concatenation.
    public let sampleOffsets: [Int]
    public let totalTokens: Int

    public init(tokenCounts: [Int]) throws {
        guard !tokenCounts.isEmpty else { throw ComputeBackendError.emptyBatch }
        if let bad = tokenCounts.firstIndex(where: { $0 <= 0 }) {
            throw ComputeBackendError.nonPositiveTokenCount(sample: bad, count: tokenCounts[bad])
        }
        self.tokenCounts = tokenCounts
        var offsets: [Int] = []
        var total = 0
        for count in tokenCounts {
            offsets.append(total)
            total += count
        }
        sampleOffsets = offsets
        totalTokens = total
    }

    public var sampleCount: Int { tokenCounts.count }

    /// The rows of sample `index` in the concatenation.
    public func rows(ofSample index: Int) -> Range<Int> {
        sampleOffsets[index]..<(sampleOffsets[index] + tokenCounts[index])
    }
}

/// Hidden states of a batch on the host: f32, row-major `[tokens, hiddenSize]`.
public struct HiddenStates: Sendable, Equatable {
    public let hiddenSize: Int
    public var values: [Float]

    public init(hiddenSize: Int, values: [Float]) {
        precondition(hiddenSize > 0 && values.count % hiddenSize == 0, "values must hold whole rows")
        self.hiddenSize = hiddenSize
        self.values = values
    }

    public var tokenCount: Int { values.count / hiddenSize }

    /// The rows `range` as a new value (e.g. one sample of a batch).
    public func rows(_ range: Range<Int>) -> HiddenStates {
        HiddenStates(hiddenSize: hiddenSize, values: Array(values[(range.lowerBound * hiddenSize)..<(range.upperBound * hiddenSize)]))
    }

    /// Rows of several values stacked in order, e.g. to batch samples that were embedded separately.
    public static func concatenating(_ parts: [HiddenStates]) -> HiddenStates {
        precondition(!parts.isEmpty && parts.allSatisfy { $0.hiddenSize == parts[0].hiddenSize }, "equal widths needed")
        return HiddenStates(hiddenSize: parts[0].hiddenSize, values: parts.flatMap(\.values))
    }

    /// Throws unless the states are `[batch.totalTokens, hiddenSize]`.
    public func check(matches batch: SequenceBatch, hiddenSize expectedHiddenSize: Int) throws {
        guard hiddenSize == expectedHiddenSize, tokenCount == batch.totalTokens else {
            throw ComputeBackendError.hiddenStatesMismatch(expectedTokens: batch.totalTokens, expectedHiddenSize: expectedHiddenSize,
                                                           actualTokens: tokenCount, actualHiddenSize: hiddenSize)
        }
    }
}

/// Max |x| of each observed Linear input of one layer: one value per ``FusedGroup``, since the members of a
/// group read the same tensor (spec §5). NaN propagates so that a broken forward is detected downstream.
public struct ObservedAmax: Sendable, Equatable {
    /// input_layernorm output, read by q/k/v.
    public var qkv: Float
    /// attention output, read by o_proj.
    public var o: Float
    /// post_attention_layernorm output, read by gate/up.
    public var gateUp: Float
    /// `silu(gate) ⊙ up`, read by down_proj.
    public var down: Float

    public init(qkv: Float, o: Float, gateUp: Float, down: Float) {
        self.qkv = qkv
        self.o = o
        self.gateUp = gateUp
        self.down = down
    }

    /// Nothing observed yet; the identity of ``merging(_:)``.
    public static let zero = ObservedAmax(qkv: 0, o: 0, gateUp: 0, down: 0)

    public subscript(group: FusedGroup) -> Float {
        get {
            switch group {
            case .qkv: qkv
            case .o: o
            case .gateUp: gateUp
            case .down: down
            }
        }
        set {
            switch group {
            case .qkv: qkv = newValue
            case .o: o = newValue
            case .gateUp: gateUp = newValue
            case .down: down = newValue
            }
        }
    }

    /// The amax of a Linear: its group's value.
    public func amax(of kind: LinearKind) -> Float { self[kind.group] }

    /// Element-wise running max, NaN-propagating.
    public func merging(_ other: ObservedAmax) -> ObservedAmax {
        var merged = self
        for group in FusedGroup.allCases { merged[group] = nanPropagatingMax(self[group], other[group]) }
        return merged
    }
}

/// `max(a, b)`, except that a NaN in either gives NaN (Swift's `max` may drop it).
@inlinable
public func nanPropagatingMax(_ a: Float, _ b: Float) -> Float {
    if a.isNaN || b.isNaN { return .nan }
    return Swift.max(a, b)
}

/// A transform applied to a Linear input after observation and before the GEMM (W4A4 emulation seam).
public protocol LinearInputTransform: Sendable {
    /// Transforms in place the `[rows, columns]` row-major input of the Linears of `group` in `layer`.
    func transform(_ values: UnsafeMutableBufferPointer<Float>, rows: Int, columns: Int, layer: Int, group: FusedGroup)
}

/// Sum of negative log-likelihoods and how many tokens were predicted; perplexity is `exp(sum / count)`.
public struct NegativeLogLikelihood: Sendable, Equatable {
    public var sum: Double
    public var count: Int

    public init(sum: Double = 0, count: Int = 0) {
        self.sum = sum
        self.count = count
    }

    public static func + (left: NegativeLogLikelihood, right: NegativeLogLikelihood) -> NegativeLogLikelihood {
        NegativeLogLikelihood(sum: left.sum + right.sum, count: left.count + right.count)
    }

    public var mean: Double { sum / Double(count) }
    /// `exp(sum / count)`.
    public var perplexity: Double { exp(mean) }
}
