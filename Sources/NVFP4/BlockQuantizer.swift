import Dispatch
import Foundation

/// The result of quantizing one weight matrix `[rows, cols]` to NVFP4.
public struct NVFP4Weight: Sendable, Equatable {
    public let rows: Int
    public let cols: Int
    /// `[rows, cols/2]`, element 2k in the low nibble.
    public var packed: [UInt8]
    /// `[rows, cols/16]` FP8-E4M3 codes, each in 0x01...0x7E.
    public var blockScales: [UInt8]
    /// `weight_scale_2` (S2): the per-tensor scale, `amax / 2688`.
    public var weightScale2: Float

    public init(rows: Int, cols: Int, packed: [UInt8], blockScales: [UInt8], weightScale2: Float) {
        self.rows = rows
        self.cols = cols
        self.packed = packed
        self.blockScales = blockScales
        self.weightScale2 = weightScale2
    }
}

public enum NVFP4Error: Error, CustomStringConvertible, Equatable {
    case columnsNotMultipleOf16(tensor: String, cols: Int)
    case nonFinite(tensor: String, row: Int)
    case allZero(tensor: String)
    case sizeMismatch(tensor: String, expected: Int, actual: Int)

    public var description: String {
        switch self {
        case let .columnsNotMultipleOf16(tensor, cols):
            return "\(tensor): in_features \(cols) is not a multiple of 16, so it cannot be split into NVFP4 blocks"
        case let .nonFinite(tensor, row):
            return "\(tensor): contains NaN or Inf (first at row \(row))"
        case let .allZero(tensor):
            return "\(tensor): every element is zero, so its NVFP4 global scale would be 0"
        case let .sizeMismatch(tensor, expected, actual):
            return "\(tensor): expected \(expected) elements, got \(actual)"
        }
    }
}

/// modelopt's NVFP4 weight math (spec §3), bit for bit, over BF16 input.
///
/// The hot loop works on one 16-element block at a time in SIMD registers. Block maxima come from integer
/// comparisons of the BF16 magnitude bits, which order exactly like the values they encode.
public enum NVFP4Quantizer {
    public static let blockSize = 16
    /// 6 (largest E2M1) × 448 (largest E4M3).
    public static let scaleDenominator: Float = 2688

    /// `max |W|` of a BF16 tensor, or an error naming the tensor if any element is NaN or Inf.
    public static func amax(bf16 values: UnsafeBufferPointer<UInt16>, cols: Int, tensor: String) throws -> Float {
        var maxBits: UInt16 = 0
        var index = 0
        let count = values.count
        // Eight lanes at a time; the scalar tail handles what is left.
        if count >= 8 {
            var acc = SIMD8<UInt16>(repeating: 0)
            let mask = SIMD8<UInt16>(repeating: 0x7FFF)
            let raw = UnsafeRawPointer(values.baseAddress!)
            while index + 8 <= count {
                let v = raw.loadUnaligned(fromByteOffset: index * 2, as: SIMD8<UInt16>.self) & mask
                acc = pointwiseMax(acc, v)
                index += 8
            }
            maxBits = acc.max()
        }
        while index < count {
            maxBits = max(maxBits, values[index] & 0x7FFF)
            index += 1
        }
        if maxBits >= 0x7F80 {
            let row = values.firstIndex { $0 & 0x7F80 == 0x7F80 }.map { $0 / max(cols, 1) } ?? 0
            throw NVFP4Error.nonFinite(tensor: tensor, row: row)
        }
        return BFloat16.toFloat(maxBits)
    }

    /// `S2 = f32(amax / 2688)`. For a fused group pass the max of the members' amax values.
    @inlinable
    public static func weightScale2(amax: Float) -> Float {
        amax / scaleDenominator
    }

    /// Quantizes a BF16 `[rows, cols]` matrix against a given `S2` (shared by a fused group, or its own).
    /// Row ranges run in parallel as a fork-join (every worker finishes before this returns, so the input
    /// buffer may be a borrowed mmap region); the bytes do not depend on the split.
    public static func quantize(
        bf16 values: UnsafeBufferPointer<UInt16>, rows: Int, cols: Int, weightScale2 s2: Float,
        tensor: String = "tensor", parallelism: Int = defaultParallelism
    ) throws -> NVFP4Weight {
        try check(rows: rows, cols: cols, count: values.count, tensor: tensor)
        if s2 == 0 { throw NVFP4Error.allZero(tensor: tensor) }
        var packed = [UInt8](repeating: 0, count: rows * cols / 2)
        var scales = [UInt8](repeating: 0, count: rows * cols / 16)
        let tasks = max(1, min(parallelism, rows))
        let rowsPerTask = (rows + tasks - 1) / tasks
        packed.withUnsafeMutableBufferPointer { packedBuffer in
            scales.withUnsafeMutableBufferPointer { scaleBuffer in
                // Each worker writes a disjoint row range of the two outputs.
                let outputs = UncheckedSendable((packedBuffer, scaleBuffer))
                let input = UncheckedSendable(values)
                DispatchQueue.concurrentPerform(iterations: tasks) { task in
                    let start = task * rowsPerTask
                    let end = min(rows, start + rowsPerTask)
                    guard start < end else { return }
                    quantizeRows(start..<end, cols: cols, input: input.value, weightScale2: s2,
                                 packed: outputs.value.0, scales: outputs.value.1)
                }
            }
        }
        return NVFP4Weight(rows: rows, cols: cols, packed: packed, blockScales: scales, weightScale2: s2)
    }

    /// Single-threaded variant, for callers that already run many matrices in parallel.
    public static func quantizeSync(
        bf16 values: UnsafeBufferPointer<UInt16>, rows: Int, cols: Int, weightScale2 s2: Float,
        tensor: String = "tensor"
    ) throws -> NVFP4Weight {
        try quantize(bf16: values, rows: rows, cols: cols, weightScale2: s2, tensor: tensor, parallelism: 1)
    }

    public static var defaultParallelism: Int {
        max(1, ProcessInfo.processInfo.activeProcessorCount)
    }

    static func check(rows: Int, cols: Int, count: Int, tensor: String) throws {
        if cols % blockSize != 0 { throw NVFP4Error.columnsNotMultipleOf16(tensor: tensor, cols: cols) }
        if rows * cols != count { throw NVFP4Error.sizeMismatch(tensor: tensor, expected: rows * cols, actual: count) }
    }

    /// The block scale of one block, from its max magnitude (spec §3 step 4).
    @inlinable
    public static func blockScaleCode(blockAmax: Float, d: Float) -> UInt8 {
        var s = blockAmax / d
        if s == 0 { s = 1 }
        s = min(max(s, FP8E4M3.minPositive), FP8E4M3.maxFinite)
        return FP8E4M3.encodeMagnitude(s)
    }

    @usableFromInline
    static func quantizeRows(
        _ rowRange: Range<Int>, cols: Int, input: UnsafeBufferPointer<UInt16>, weightScale2 s2: Float,
        packed: UnsafeMutableBufferPointer<UInt8>, scales: UnsafeMutableBufferPointer<UInt8>
    ) {
        let d = 6 * s2
        let blocksPerRow = cols / 16
        let source = UnsafeRawPointer(input.baseAddress!)
        let packedBase = UnsafeMutableRawPointer(packed.baseAddress!)
        FP8E4M3.decodeTable.withUnsafeBufferPointer { decodeTable in
            for row in rowRange {
                for block in 0..<blocksPerRow {
                    let element = row * cols + block * 16
                    let low = source.loadUnaligned(fromByteOffset: element * 2, as: SIMD8<UInt16>.self)
                    let high = source.loadUnaligned(fromByteOffset: element * 2 + 16, as: SIMD8<UInt16>.self)
                    // Magnitude bits order like the magnitudes, so the block max is an integer max.
                    let magnitudes = pointwiseMax(low & 0x7FFF, high & 0x7FFF)
                    var maxBits = magnitudes[0]
                    for lane in 1..<8 { maxBits = Swift.max(maxBits, magnitudes[lane]) }
                    let code = blockScaleCode(blockAmax: BFloat16.toFloat(maxBits), d: d)
                    scales[row * blocksPerRow + block] = code
                    let denominator = SIMD8<Float>(repeating: decodeTable[Int(code)] * s2)
                    let packedLow = packE2M1(widen(low) / denominator)
                    let packedHigh = packE2M1(widen(high) / denominator)
                    packedBase.storeBytes(of: packedLow | (packedHigh << 32), toByteOffset: element / 2, as: UInt64.self)
                }
            }
        }
    }

    @inline(__always)
    static func widen(_ bits: SIMD8<UInt16>) -> SIMD8<Float> {
        let wide = SIMD8<UInt32>(UInt32(bits[0]), UInt32(bits[1]), UInt32(bits[2]), UInt32(bits[3]),
                                 UInt32(bits[4]), UInt32(bits[5]), UInt32(bits[6]), UInt32(bits[7]))
        return unsafeBitCast(wide &<< 16, to: SIMD8<Float>.self)
    }

    /// E2M1 codes of eight values, packed two per byte into the low 32 bits (element 2k in the low nibble).
    /// Comparison masks are -1/0 per lane, so subtracting them counts the thresholds passed.
    @inline(__always)
    static func packE2M1(_ y: SIMD8<Float>) -> UInt64 {
        let a = unsafeBitCast(unsafeBitCast(y, to: SIMD8<UInt32>.self) & 0x7FFF_FFFF, to: SIMD8<Float>.self)
        var m = SIMD8<Int32>(repeating: 0)
        m &-= unsafeBitCast(a .> 0.25, to: SIMD8<Int32>.self)
        m &-= unsafeBitCast(a .>= 0.75, to: SIMD8<Int32>.self)
        m &-= unsafeBitCast(a .> 1.25, to: SIMD8<Int32>.self)
        m &-= unsafeBitCast(a .>= 1.75, to: SIMD8<Int32>.self)
        m &-= unsafeBitCast(a .> 2.5, to: SIMD8<Int32>.self)
        m &-= unsafeBitCast(a .>= 3.5, to: SIMD8<Int32>.self)
        m &-= unsafeBitCast(a .> 5, to: SIMD8<Int32>.self)
        m |= unsafeBitCast(y .< 0, to: SIMD8<Int32>.self) & 8
        // Lane pairs (2k, 2k+1) as one u64: low code in bits 0–3, high code in bits 32–35.
        let pairs = unsafeBitCast(m, to: SIMD4<UInt64>.self)
        let bytes = (pairs & 0xF) | ((pairs &>> 28) & 0xF0)
        return bytes[0] | (bytes[1] << 8) | (bytes[2] << 16) | (bytes[3] << 24)
    }

    /// Vectorized E2M1 rounding with the same thresholds and sign rule as `E2M1.encode`.
    @inlinable
    public static func e2m1Codes(_ y: SIMD16<Float>) -> SIMD16<UInt8> {
        let a = unsafeBitCast(unsafeBitCast(y, to: SIMD16<UInt32>.self) & 0x7FFF_FFFF, to: SIMD16<Float>.self)
        let one = SIMD16<Int32>(repeating: 1)
        let zero = SIMD16<Int32>(repeating: 0)
        var m = zero
        m &+= zero.replacing(with: one, where: a .> 0.25)
        m &+= zero.replacing(with: one, where: a .>= 0.75)
        m &+= zero.replacing(with: one, where: a .> 1.25)
        m &+= zero.replacing(with: one, where: a .>= 1.75)
        m &+= zero.replacing(with: one, where: a .> 2.5)
        m &+= zero.replacing(with: one, where: a .>= 3.5)
        m &+= zero.replacing(with: one, where: a .> 5)
        m.replace(with: m | 8, where: y .< 0)
        return SIMD16<UInt8>(truncatingIfNeeded: m)
    }

    /// Dequantizes to Float: `value(q) · sf · S2` (modelopt's `NVFP4QTensor.dequantize`).
    public static func dequantize(_ weight: NVFP4Weight) -> [Float] {
        var out = [Float](repeating: 0, count: weight.rows * weight.cols)
        let blocksPerRow = weight.cols / 16
        for row in 0..<weight.rows {
            for block in 0..<blocksPerRow {
                let scale = FP8E4M3.decode(weight.blockScales[row * blocksPerRow + block]) * weight.weightScale2
                for k in 0..<16 {
                    let c = row * weight.cols + block * 16 + k
                    let byte = weight.packed[c / 2]
                    let nibble = c % 2 == 0 ? byte & 0xF : byte >> 4
                    out[c] = E2M1.value(nibble) * scale
                }
            }
        }
        return out
    }
}

extension SIMD16<Float> {
    @inlinable
    init(bitPattern bits: SIMD16<UInt32>) {
        self = unsafeBitCast(bits, to: SIMD16<Float>.self)
    }
}

/// Carries pointers or buffers into concurrent jobs (child tasks, `concurrentPerform`) that touch disjoint parts of
/// the memory or only read it: the compiler cannot see that disjointness, so the one unchecked wrapper of the package
/// says it here.
@usableFromInline
package struct UncheckedSendable<Value>: @unchecked Sendable {
    @usableFromInline package let value: Value
    @usableFromInline package init(_ value: Value) { self.value = value }
}


extension NVFP4Quantizer {
    /// `max |W|` of an F32 tensor (F16 sources are widened to F32 first), rejecting NaN and Inf.
    public static func amax(f32 values: UnsafeBufferPointer<Float>, cols: Int, tensor: String) throws -> Float {
        var result: Float = 0
        for (index, value) in values.enumerated() {
            if !value.isFinite { throw NVFP4Error.nonFinite(tensor: tensor, row: index / max(cols, 1)) }
            result = max(result, abs(value))
        }
        return result
    }

    /// The same math over F32 input. Bit-exactness with modelopt is established for BF16 sources; for F32 the
    /// operations and their order are identical.
    public static func quantize(
        f32 values: UnsafeBufferPointer<Float>, rows: Int, cols: Int, weightScale2 s2: Float, tensor: String = "tensor"
    ) throws -> NVFP4Weight {
        try check(rows: rows, cols: cols, count: values.count, tensor: tensor)
        if s2 == 0 { throw NVFP4Error.allZero(tensor: tensor) }
        let d = 6 * s2
        var packed = [UInt8](repeating: 0, count: rows * cols / 2)
        var scales = [UInt8](repeating: 0, count: rows * cols / 16)
        for block in 0..<(rows * cols / 16) {
            let base = block * 16
            var blockAmax: Float = 0
            for k in 0..<16 { blockAmax = max(blockAmax, abs(values[base + k])) }
            let code = blockScaleCode(blockAmax: blockAmax, d: d)
            scales[block] = code
            let denominator = FP8E4M3.decode(code) * s2
            for k in stride(from: 0, to: 16, by: 2) {
                let low = E2M1.encode(values[base + k] / denominator)
                let high = E2M1.encode(values[base + k + 1] / denominator)
                packed[(base + k) / 2] = low | (high << 4)
            }
        }
        return NVFP4Weight(rows: rows, cols: cols, packed: packed, blockScales: scales, weightScale2: s2)
    }
}
