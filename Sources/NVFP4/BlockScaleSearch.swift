/// Error-minimising block scales (`--scale-search mse`): for each block of 16, the FP8-E4M3 scale among the codes near
/// round-to-nearest's whose NVFP4 rounding leaves the smallest (optionally weighted) squared error. The global scale
/// `S2` and the layout stay as they are, so the result loads like any NVFP4 weight.
///
/// Round-to-nearest scales the block maximum onto 6, the largest E2M1 value; a slightly smaller scale often rounds the
/// other 15 elements better at the price of clipping the maximum, and a larger one the reverse. Candidates are the
/// round-to-nearest code and ``radius`` codes either side (each code is one FP8 step, 6–12% apart), within 0x01…0x7E.
/// Ties keep the code nearest round-to-nearest's, the smaller first.
public enum BlockScaleSearch {
    /// FP8 codes tried either side of round-to-nearest's.
    public static let radius = 2

    /// Block scale codes `[rows, cols/16]` for `values` (row-major `[rows, cols]`, `cols` a multiple of 16) under `S2`.
    /// `columnWeights` (length `cols`, e.g. the diagonal of the input's Hessian) weights each element's squared error
    /// by its column; nil weighs all alike.
    public static func blockScales(f32 values: UnsafeBufferPointer<Float>, rows: Int, cols: Int, weightScale2 s2: Float,
                                   columnWeights: [Double]? = nil, tensor: String = "tensor") throws -> [UInt8] {
        try NVFP4Quantizer.check(rows: rows, cols: cols, count: values.count, tensor: tensor)
        if s2 == 0 { throw NVFP4Error.allZero(tensor: tensor) }
        if let columnWeights, columnWeights.count != cols {
            throw NVFP4Error.sizeMismatch(tensor: tensor + " (column weights)", expected: cols, actual: columnWeights.count)
        }
        let d = 6 * s2
        let blocksPerRow = cols / 16
        var codes = [UInt8](repeating: 0, count: rows * blocksPerRow)
        for row in 0..<rows {
            for block in 0..<blocksPerRow {
                let start = row * cols + block * 16
                var blockAmax: Float = 0
                for k in 0..<16 { blockAmax = max(blockAmax, abs(values[start + k])) }
                let nearest = NVFP4Quantizer.blockScaleCode(blockAmax: blockAmax, d: d)
                var best = nearest
                var bestError = error(values, start: start, code: nearest, s2: s2, weights: columnWeights, column: block * 16)
                // Nearest candidates first, the smaller before the larger: a tie keeps the earlier one.
                for distance in 1...radius {
                    for code in [Int(nearest) - distance, Int(nearest) + distance] where (1...0x7E).contains(code) {
                        let candidate = error(values, start: start, code: UInt8(code), s2: s2, weights: columnWeights,
                                              column: block * 16)
                        if candidate < bestError {
                            best = UInt8(code)
                            bestError = candidate
                        }
                    }
                }
                codes[row * blocksPerRow + block] = best
            }
        }
        return codes
    }

    /// Σ weight · (x − dequantized x)² of one block under `code`, with the quantizer's own division and rounding.
    static func error(_ values: UnsafeBufferPointer<Float>, start: Int, code: UInt8, s2: Float, weights: [Double]?,
                      column: Int) -> Double {
        let divisor = FP8E4M3.decode(code) * s2
        var total = 0.0
        for k in 0..<16 {
            let value = values[start + k]
            let difference = Double(value) - Double(E2M1.value(E2M1.encode(value / divisor)) * divisor)
            total += (weights?[column + k] ?? 1) * difference * difference
        }
        return total
    }
}

extension NVFP4Quantizer {
    /// Quantizes F32 `values` under given block scale codes (``BlockScaleSearch``'s) instead of round-to-nearest's.
    public static func quantize(f32 values: UnsafeBufferPointer<Float>, rows: Int, cols: Int, weightScale2 s2: Float,
                                blockScales: [UInt8], tensor: String = "tensor") throws -> NVFP4Weight {
        try check(rows: rows, cols: cols, count: values.count, tensor: tensor)
        if s2 == 0 { throw NVFP4Error.allZero(tensor: tensor) }
        guard blockScales.count == rows * cols / 16 else {
            throw NVFP4Error.sizeMismatch(tensor: tensor + " (block scales)", expected: rows * cols / 16, actual: blockScales.count)
        }
        var packed = [UInt8](repeating: 0, count: rows * cols / 2)
        for block in 0..<(rows * cols / 16) {
            let base = block * 16
            let denominator = FP8E4M3.decode(blockScales[block]) * s2
            for k in stride(from: 0, to: 16, by: 2) {
                let low = E2M1.encode(values[base + k] / denominator)
                let high = E2M1.encode(values[base + k + 1] / denominator)
                packed[(base + k) / 2] = low | (high << 4)
            }
        }
        return NVFP4Weight(rows: rows, cols: cols, packed: packed, blockScales: blockScales, weightScale2: s2)
    }
}
