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
        let source = UncheckedSendable(original)
        return quantizationError(of: weight) { row, into in
            let start = row * weight.cols
            for index in 0..<weight.cols { into[index] = BFloat16.toFloat(source.value[start + index]) }
        }
    }

    /// The error of `weight` against the F32 values it was quantized from (`[rows, cols]`, row-major).
    public static func quantizationError(of weight: NVFP4Weight, f32 original: UnsafeBufferPointer<Float>) -> WeightQuantizationError {
        precondition(original.count == weight.rows * weight.cols, "the original has \(original.count) values, not \(weight.rows)×\(weight.cols)")
        let source = UncheckedSendable(original)
        return quantizationError(of: weight) { row, into in
            _ = UnsafeMutableBufferPointer(rebasing: into[0..<weight.cols])
                .initialize(from: UnsafeBufferPointer(rebasing: source.value[row * weight.cols ..< (row + 1) * weight.cols]))
        }
    }

    /// E2M1 code → value, for the dequantization in the loop below.
    private static let e2m1Values: [Float] = (0..<16).map { E2M1.value(UInt8($0)) }

    /// `readRow(row, buffer)` widens one source row into `buffer`; the rows are compared with their dequantized NVFP4
    /// values block by block (16 products summed in Float, blocks in Double).
    private static func quantizationError(of weight: NVFP4Weight,
                                          readRow: @Sendable (Int, UnsafeMutableBufferPointer<Float>) -> Void) -> WeightQuantizationError {
        let rows = weight.rows, cols = weight.cols
        let blocksPerRow = cols / 16
        // Fixed slices of rows, summed in slice order: the result does not depend on the thread count.
        let rowsPerSlice = 64
        let slices = (rows + rowsPerSlice - 1) / rowsPerSlice
        var partial = [(Double, Double)](repeating: (0, 0), count: slices)
        weight.packed.withUnsafeBufferPointer { packed in
            weight.blockScales.withUnsafeBufferPointer { scales in
                e2m1Values.withUnsafeBufferPointer { table in
                    partial.withUnsafeMutableBufferPointer { partial in
                        let out = UncheckedSendable(partial)
                        let packed = UncheckedSendable(packed), scales = UncheckedSendable(scales), table = UncheckedSendable(table)
                        DispatchQueue.concurrentPerform(iterations: slices) { slice in
                            let row = UnsafeMutableBufferPointer<Float>.allocate(capacity: cols)
                            defer { row.deallocate() }
                            var error = 0.0, norm = 0.0
                            for r in slice * rowsPerSlice ..< min(rows, (slice + 1) * rowsPerSlice) {
                                readRow(r, row)
                                for block in 0..<blocksPerRow {
                                    let scale = FP8E4M3.decode(scales.value[r * blocksPerRow + block]) * weight.weightScale2
                                    let bytes = (r * cols + block * 16) / 2
                                    var blockError: Float = 0, blockNorm: Float = 0
                                    for pair in 0..<8 {
                                        let byte = packed.value[bytes + pair]
                                        let w0 = row[block * 16 + 2 * pair], w1 = row[block * 16 + 2 * pair + 1]
                                        let d0 = w0 - table.value[Int(byte & 0xF)] * scale
                                        let d1 = w1 - table.value[Int(byte >> 4)] * scale
                                        blockError += d0 * d0 + d1 * d1
                                        blockNorm += w0 * w0 + w1 * w1
                                    }
                                    error += Double(blockError)
                                    norm += Double(blockNorm)
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
