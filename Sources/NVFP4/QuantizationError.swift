import Dispatch

/// How far a quantized weight lies from the weight it came from, in the Frobenius norm: ‖W − Q(W)‖ and ‖W‖, each
/// summed in Double over every element, in a fixed order (so that every run and every device reports the same digits).
public struct WeightQuantizationError: Sendable, Equatable {
    public var squaredError: Double
    public var squaredNorm: Double

    public init(squaredError: Double, squaredNorm: Double) {
        self.squaredError = squaredError
        self.squaredNorm = squaredNorm
    }

    /// ‖W − Q(W)‖ / ‖W‖; 0 for an all-zero weight.
    public var relative: Double { squaredNorm > 0 ? (squaredError / squaredNorm).squareRoot() : 0 }
}

extension NVFP4Quantizer {
    /// The error of `weight` against the BF16 values it was quantized from (`[rows, cols]`, row-major).
    public static func quantizationError(of weight: NVFP4Weight, bf16 original: UnsafeBufferPointer<UInt16>) -> WeightQuantizationError {
        precondition(original.count == weight.rows * weight.cols, "the original has \(original.count) values, not \(weight.rows)×\(weight.cols)")
        return quantizationError(of: weight) { original[$0] }
    }

    /// The error of `weight` against the F32 values it was quantized from (`[rows, cols]`, row-major).
    public static func quantizationError(of weight: NVFP4Weight, f32 original: UnsafeBufferPointer<Float>) -> WeightQuantizationError {
        precondition(original.count == weight.rows * weight.cols, "the original has \(original.count) values, not \(weight.rows)×\(weight.cols)")
        return quantizationError(of: weight) { original[$0] }
    }

    @inline(__always)
    private static func quantizationError(of weight: NVFP4Weight, original: (Int) -> UInt16) -> WeightQuantizationError {
        quantizationError(of: weight) { BFloat16.toFloat(original($0)) }
    }

    @inline(__always)
    private static func quantizationError(of weight: NVFP4Weight, original: (Int) -> Float) -> WeightQuantizationError {
        let rows = weight.rows, cols = weight.cols
        let blocksPerRow = cols / 16
        // Fixed slices of rows, summed in slice order: the result does not depend on the thread count.
        let rowsPerSlice = 64
        let slices = (rows + rowsPerSlice - 1) / rowsPerSlice
        var partial = [(Double, Double)](repeating: (0, 0), count: slices)
        weight.packed.withUnsafeBufferPointer { packed in
            weight.blockScales.withUnsafeBufferPointer { scales in
                partial.withUnsafeMutableBufferPointer { partial in
                    let out = UncheckedSendable(partial)
                    let packed = UncheckedSendable(packed), scales = UncheckedSendable(scales)
                    withoutActuallyEscaping(original) { original in
                        let read = UncheckedSendable(original)
                        DispatchQueue.concurrentPerform(iterations: slices) { slice in
                            var error = 0.0, norm = 0.0
                            for row in slice * rowsPerSlice ..< min(rows, (slice + 1) * rowsPerSlice) {
                                for block in 0..<blocksPerRow {
                                    let scale = FP8E4M3.decode(scales.value[row * blocksPerRow + block]) * weight.weightScale2
                                    for k in 0..<16 {
                                        let c = row * cols + block * 16 + k
                                        let byte = packed.value[c / 2]
                                        let q = E2M1.value(c % 2 == 0 ? byte & 0xF : byte >> 4) * scale
                                        let w = read.value(c)
                                        let d = Double(w) - Double(q)
                                        error += d * d
                                        norm += Double(w) * Double(w)
                                    }
                                }
                            }
                            out.value[slice] = (error, norm)
                        }
                    }
                }
            }
        }
        let total = partial.reduce((0.0, 0.0)) { ($0.0 + $1.0, $0.1 + $1.1) }
        return WeightQuantizationError(squaredError: total.0, squaredNorm: total.1)
    }
}
