import NVFP4
import Testing

/// The scale search against a brute force written here from the spec's grids: for each block, every FP8 code within
/// two of round-to-nearest's, rounded element by element with the E2M1 thresholds of spec §1 and scored in Double.
@Suite struct BlockScaleSearchTests {
    static let e2m1Magnitudes: [Float] = [0, 0.5, 1, 1.5, 2, 3, 4, 6]

    /// Spec §1's table: the magnitude a value rounds to (ties to the even code).
    static func roundE2M1(_ y: Float) -> Float {
        let a = abs(y)
        let magnitude: Float = a <= 0.25 ? 0 : a < 0.75 ? 0.5 : a <= 1.25 ? 1 : a < 1.75 ? 1.5 : a <= 2.5 ? 2
            : a < 3.5 ? 3 : a <= 5 ? 4 : 6
        return y < 0 ? -magnitude : magnitude
    }

    static func bruteForce(_ values: [Float], cols: Int, s2: Float, weights: [Double]?) -> [UInt8] {
        var codes: [UInt8] = []
        for start in stride(from: 0, to: values.count, by: 16) {
            let block = Array(values[start..<start + 16])
            let column = start % cols
            let nearest = Int(NVFP4Quantizer.blockScaleCode(blockAmax: block.map(abs).max()!, d: 6 * s2))
            var candidates = [nearest]
            for distance in 1...2 { candidates += [nearest - distance, nearest + distance] }
            var best = nearest, bestError = Double.infinity
            for code in candidates where code >= 1 && code <= 0x7E {
                let divisor = FP8E4M3.decode(UInt8(code)) * s2
                var error = 0.0
                for (k, value) in block.enumerated() {
                    let difference = Double(value) - Double(roundE2M1(value / divisor) * divisor)
                    error += (weights?[column + k] ?? 1) * difference * difference
                }
                if error < bestError { best = code; bestError = error }
            }
            codes.append(UInt8(best))
        }
        return codes
    }

    static func sample(rows: Int, cols: Int, seed: UInt64) -> [Float] {
        var state = seed
        return (0..<rows * cols).map { index in
            state = state &* 6364136223846793005 &+ 1442695040888963407
            let uniform = Float(state >> 40) / Float(1 << 24) * 2 - 1
            // A few outliers per row, as trained weights have.
            return index % 97 == 0 ? uniform * 8 : uniform
        }
    }

    @Test(arguments: [false, true])
    func matchesTheBruteForceAndNeverLosesToRoundToNearest(weighted: Bool) throws {
        let rows = 24, cols = 64
        let values = Self.sample(rows: rows, cols: cols, seed: weighted ? 7 : 3)
        let s2 = NVFP4Quantizer.weightScale2(amax: values.map(abs).max()!)
        let weights: [Double]? = weighted ? (0..<cols).map { 0.1 + Double(($0 * 37) % 11) } : nil
        let searched = try values.withUnsafeBufferPointer {
            try BlockScaleSearch.blockScales(f32: $0, rows: rows, cols: cols, weightScale2: s2, columnWeights: weights)
        }
        #expect(searched == Self.bruteForce(values, cols: cols, s2: s2, weights: weights))
        let nearest = try values.withUnsafeBufferPointer { try NVFP4Quantizer.quantize(f32: $0, rows: rows, cols: cols, weightScale2: s2) }
        let changed = zip(searched, nearest.blockScales).filter { $0 != $1 }.count
        #expect(changed > 0, "the search must move some scales")

        // Quantized under the searched scales, the (weighted) error is no larger than round-to-nearest's, block by block.
        let quantized = try values.withUnsafeBufferPointer {
            try NVFP4Quantizer.quantize(f32: $0, rows: rows, cols: cols, weightScale2: s2, blockScales: searched)
        }
        let a = NVFP4Quantizer.dequantize(quantized), b = NVFP4Quantizer.dequantize(nearest)
        for start in stride(from: 0, to: values.count, by: 16) {
            var searchedError = 0.0, nearestError = 0.0
            for index in start..<start + 16 {
                let weight = weights?[index % cols] ?? 1
                searchedError += weight * Double(values[index] - a[index]) * Double(values[index] - a[index])
                nearestError += weight * Double(values[index] - b[index]) * Double(values[index] - b[index])
            }
            #expect(searchedError <= nearestError * (1 + 1e-12), "block at \(start)")
        }
    }

    /// With round-to-nearest's own scales, the explicit-scale quantizer writes round-to-nearest's bytes.
    @Test func givenRoundToNearestScalesTheBytesAreRoundToNearests() throws {
        let values = Self.sample(rows: 8, cols: 32, seed: 11)
        let s2 = NVFP4Quantizer.weightScale2(amax: values.map(abs).max()!)
        let nearest = try values.withUnsafeBufferPointer { try NVFP4Quantizer.quantize(f32: $0, rows: 8, cols: 32, weightScale2: s2) }
        let again = try values.withUnsafeBufferPointer {
            try NVFP4Quantizer.quantize(f32: $0, rows: 8, cols: 32, weightScale2: s2, blockScales: nearest.blockScales)
        }
        #expect(again == nearest)
    }

    @Test func badShapesAreRefusedNamingTheTensor() {
        let values = [Float](repeating: 1, count: 8 * 24)
        #expect(throws: NVFP4Error.columnsNotMultipleOf16(tensor: "w", cols: 24)) {
            try values.withUnsafeBufferPointer { try BlockScaleSearch.blockScales(f32: $0, rows: 8, cols: 24, weightScale2: 1, tensor: "w") }
        }
        let square = [Float](repeating: 1, count: 16 * 16)
        #expect(throws: NVFP4Error.sizeMismatch(tensor: "w (column weights)", expected: 16, actual: 3)) {
            try square.withUnsafeBufferPointer {
                try BlockScaleSearch.blockScales(f32: $0, rows: 16, cols: 16, weightScale2: 1, columnWeights: [1, 2, 3], tensor: "w")
            }
        }
        #expect(throws: NVFP4Error.sizeMismatch(tensor: "w (block scales)", expected: 16, actual: 2)) {
            try square.withUnsafeBufferPointer {
                try NVFP4Quantizer.quantize(f32: $0, rows: 16, cols: 16, weightScale2: 1, blockScales: [1, 2], tensor: "w")
            }
        }
    }
}
