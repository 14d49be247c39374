import ComputeBackend
import Foundation

/// Greedy, in order: a chunk takes samples while their tokens fit `chunkTokens`; a longer sample is a chunk of
/// its own and a sample is never split. Every calibration schedule (one process or a cluster) groups samples with
/// this one function, so chunk `i` holds the same samples everywhere.
/// - Returns: the sample index ranges of the chunks, in order, covering `0..<tokenCounts.count`.
public func calibrationChunkRanges(tokenCounts: [Int], chunkTokens: Int) throws -> [Range<Int>] {
    guard chunkTokens >= 1 else { throw CalibrationError.invalidSetup("chunkTokens must be at least 1, got \(chunkTokens)") }
    guard !tokenCounts.isEmpty else { return [] }
    var ranges: [Range<Int>] = []
    var start = 0
    var tokens = 0
    for (index, count) in tokenCounts.enumerated() {
        if index > start, tokens + count > chunkTokens {
            ranges.append(start..<index)
            start = index
            tokens = 0
        }
        tokens += count
    }
    ranges.append(start..<tokenCounts.count)
    return ranges
}

extension CalibrationChunk {
    /// The chunk's samples as one batch of causal sequences.
    public func batch() throws -> SequenceBatch { try SequenceBatch(tokenCounts: tokenCounts) }

    /// Throws ``CalibrationError/nonFiniteHiddenState(layer:sample:source:)`` naming the first sample whose rows
    /// hold a NaN or infinity; `layer` is the layer that produced `values` (nil: the embeddings).
    public func checkFinite(_ values: [Float], hiddenSize: Int, layer: Int?) throws {
        let allFinite = values.withUnsafeBufferPointer { buffer in
            // Summing `x * 0` is NaN exactly when some x is NaN or infinite, and vectorizes, unlike a branch.
            var probe: Float = 0
            for value in buffer { probe += value * 0 }
            return probe == 0
        }
        if allFinite { return }
        var offset = 0
        for (position, count) in tokenCounts.enumerated() {
            let rows = offset..<(offset + count)
            offset += count
            if values[(rows.lowerBound * hiddenSize)..<(rows.upperBound * hiddenSize)].contains(where: { !$0.isFinite }) {
                throw CalibrationError.nonFiniteHiddenState(layer: layer, sample: sampleRange.lowerBound + position,
                                                            source: sources[position])
            }
        }
    }

    /// The error for a non-finite output at `row` of the chunk's concatenated states, naming the row's sample.
    public func nonFiniteHiddenState(row: Int, layer: Int?) -> CalibrationError {
        var offset = 0
        for (position, count) in tokenCounts.enumerated() {
            if row < offset + count {
                return .nonFiniteHiddenState(layer: layer, sample: sampleRange.lowerBound + position, source: sources[position])
            }
            offset += count
        }
        return .nonFiniteHiddenState(layer: layer, sample: sampleRange.upperBound - 1, source: sources.last ?? "")
    }
}


extension CalibrationPlan {
    /// Groups `set`'s samples with ``calibrationChunkRanges(tokenCounts:chunkTokens:)``.
    public init(set: CalibrationSet, source: String, chunkTokens: Int) throws {
        guard !set.samples.isEmpty else { throw CalibrationError.invalidSetup("no calibration samples given") }
        guard chunkTokens >= 1 else { throw CalibrationError.invalidSetup("chunkTokens must be at least 1, got \(chunkTokens)") }
        for (index, sample) in set.samples.enumerated() where sample.tokens.isEmpty {
            throw CalibrationError.invalidSetup("sample \(index) (\(sample.source)) has no tokens")
        }
        let ranges = try calibrationChunkRanges(tokenCounts: set.samples.map(\.tokens.count), chunkTokens: chunkTokens)
        let chunks = ranges.enumerated().map { index, range in
            let samples = set.samples[range]
            return CalibrationChunk(index: index, sampleRange: range, tokenCounts: samples.map(\.tokens.count),
                                    tokenIDs: samples.flatMap(\.tokens), sources: samples.map(\.source))
        }
        self.init(chunkTokens: chunkTokens, chunks: chunks, source: source, sampleCount: set.samples.count,
                  tokenCount: set.tokenTotal, contentHash: set.contentHash)
    }
}


/// Raw bytes that do not form the hidden states they are said to be.
public struct HiddenStateBytesError: Error, CustomStringConvertible, Equatable, Sendable {
    public let message: String
    public var description: String { "hidden states: \(message)" }
}

extension HiddenStates {
    /// The values as raw little-endian f32, row-major `[tokens, hiddenSize]`: exact, so states that cross a
    /// process or disk boundary come back bit for bit.
    public func littleEndianBytes() -> Data { littleEndianFloatBytes(values) }

    /// Reads ``littleEndianBytes()``; throws unless `bytes` hold `expectedTokens` (when given) whole rows.
    public init(hiddenSize: Int, littleEndianBytes bytes: Data, expectedTokens: Int? = nil) throws {
        guard hiddenSize > 0 else { throw HiddenStateBytesError(message: "hidden size \(hiddenSize) is not positive") }
        let rowBytes = hiddenSize * MemoryLayout<Float>.size
        guard bytes.count % rowBytes == 0 else {
            throw HiddenStateBytesError(message: "\(bytes.count) bytes are not whole rows of \(hiddenSize) f32 values")
        }
        if let expectedTokens, bytes.count != expectedTokens * rowBytes {
            throw HiddenStateBytesError(message: "\(bytes.count) bytes hold \(bytes.count / rowBytes) rows, "
                                        + "expected \(expectedTokens) rows of \(hiddenSize) f32 values")
        }
        self.init(hiddenSize: hiddenSize, values: floatsFromLittleEndian(bytes))
    }
}

func littleEndianFloatBytes(_ values: [Float]) -> Data {
    #if _endian(little)
    return values.withUnsafeBytes { Data($0) }
    #else
    var data = Data(capacity: values.count * 4)
    for value in values { withUnsafeBytes(of: value.bitPattern.littleEndian) { data.append(contentsOf: $0) } }
    return data
    #endif
}

/// `bytes.count` must be a multiple of 4.
func floatsFromLittleEndian(_ data: Data) -> [Float] {
    let count = data.count / 4
    return data.withUnsafeBytes { bytes in
        [Float](unsafeUninitializedCapacity: count) { output, initialized in
            #if _endian(little)
            UnsafeMutableRawBufferPointer(output).copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[0..<(count * 4)]))
            #else
            for index in 0..<count {
                output[index] = Float(bitPattern: UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: 4 * index, as: UInt32.self)))
            }
            #endif
            initialized = count
        }
    }
}
