import GPTQ
import NVFP4
import Testing

@Suite struct GPTQPropertyTests {
    static func randomWeight(rows: Int, cols: Int, seed: UInt64) -> [Float] {
        var generator = SeededGenerator(seed: seed)
        return (0..<(rows * cols)).map { _ in 0.02 * generator.normal() }
    }

    /// With a diagonal Hessian (uncorrelated inputs), U = (H + λI)^(-1/2) is diagonal too: no error reaches another
    /// column (the updates subtract exact zeros), every column is rounded as it is, and GPTQ's codes are
    /// round-to-nearest's. This holds with dampening and in any column order.
    @Test(arguments: [false, true])
    func diagonalHessianGivesRoundToNearestCodes(activationOrder: Bool) throws {
        let rows = 24, cols = 160
        let weight = Self.randomWeight(rows: rows, cols: cols, seed: 21)
        var hessian = [Double](repeating: 0, count: cols * cols)
        // Unequal entries, so activation order really permutes; ones alone would be the identity case.
        for i in 0..<cols { hessian[i * cols + i] = i % 3 == 0 ? 1 : 0.25 + Double(i % 7) }
        let s2 = NVFP4Quantizer.weightScale2(amax: weight.map(abs).max()!)
        let gptq = try weight.withUnsafeBufferPointer { weight in
            try hessian.withUnsafeBufferPointer { hessian in
                try GPTQQuantizer.quantize(f32: weight, rows: rows, cols: cols, hessian: hessian, weightScale2: s2,
                                           parameters: GPTQParameters(blockSize: 64, activationOrder: activationOrder))
            }
        }
        let rtn = try weight.withUnsafeBufferPointer {
            try NVFP4Quantizer.quantize(f32: $0, rows: rows, cols: cols, weightScale2: s2)
        }
        #expect(gptq == rtn)
    }

    /// The block size only decides when the later columns receive the errors (in the block or in the GEMM after it),
    /// so it moves float rounding, not the result.
    @Test func blockSizeChangesRoundingOnly() throws {
        let fixture = try GPTQReferenceTests.loadCase()
        var results: [NVFP4Weight] = []
        for blockSize in [128, 16, 7, 256] {
            results.append(try fixture.weight.withUnsafeBufferPointer { weight in
                try fixture.hessian.withUnsafeBufferPointer { hessian in
                    try GPTQQuantizer.quantize(f32: weight, rows: fixture.rows, cols: fixture.cols, hessian: hessian,
                                               weightScale2: fixture.weightScale2,
                                               parameters: GPTQParameters(blockSize: blockSize, activationOrder: true))
                }
            })
        }
        let elements = fixture.rows * fixture.cols
        for other in results.dropFirst() {
            #expect(other.blockScales == results[0].blockScales)
            let differing = (0..<elements).filter { code(other.packed, $0) != code(results[0].packed, $0) }.count
            #expect(Double(differing) / Double(elements) <= 0.01)
        }
    }

    @Test func singularHessianIsInvertedThanksToDampening() throws {
        // Rank 1: every input row is a multiple of one vector. Without dampening H is singular.
        let rows = 8, cols = 32
        let weight = Self.randomWeight(rows: rows, cols: cols, seed: 22)
        var accumulator = HessianAccumulator(columns: cols)
        let direction = (0..<cols).map { Float($0 % 5) - 2 }
        for scale: Float in [1, -2, 0.5] {
            direction.map { $0 * scale }.withUnsafeBufferPointer { accumulator.add(rows: $0, count: 1) }
        }
        let hessian = accumulator.matrix
        let s2 = NVFP4Quantizer.weightScale2(amax: weight.map(abs).max()!)
        let result = try weight.withUnsafeBufferPointer { weight in
            try hessian.withUnsafeBufferPointer { hessian in
                try GPTQQuantizer.quantize(f32: weight, rows: rows, cols: cols, hessian: hessian, weightScale2: s2)
            }
        }
        let rtn = try weight.withUnsafeBufferPointer {
            try NVFP4Quantizer.quantize(f32: $0, rows: rows, cols: cols, weightScale2: s2)
        }
        #expect(outputError(original: weight, quantized: result, hessian: hessian)
                < outputError(original: weight, quantized: rtn, hessian: hessian))
    }

    /// An indefinite Hessian (a 2×2 block with eigenvalues 2.05 and −0.05) fails with dampening 0.01 of the mean
    /// diagonal and factors with 0.1: the retry rescues it, and with no retries allowed it is an error.
    @Test func largerDampeningRescuesAnIndefiniteHessian() throws {
        let rows = 4, cols = 32
        let weight = Self.randomWeight(rows: rows, cols: cols, seed: 23)
        var hessian = [Double](repeating: 0, count: cols * cols)
        for i in 0..<cols { hessian[i * cols + i] = 1 }
        hessian[0 * cols + 1] = 1.05
        hessian[1 * cols + 0] = 1.05
        let s2 = NVFP4Quantizer.weightScale2(amax: weight.map(abs).max()!)
        func quantize(retries: Int) throws -> NVFP4Weight {
            try weight.withUnsafeBufferPointer { weight in
                try hessian.withUnsafeBufferPointer { hessian in
                    try GPTQQuantizer.quantize(f32: weight, rows: rows, cols: cols, hessian: hessian, weightScale2: s2,
                                               parameters: GPTQParameters(dampeningRetries: retries), tensor: "indefinite")
                }
            }
        }
        #expect(throws: GPTQError.hessianNotPositiveDefinite(tensor: "indefinite", dampening: 0.01)) {
            try quantize(retries: 0)
        }
        let rescued = try quantize(retries: 1)
        #expect(rescued.rows == rows && rescued.cols == cols)
    }
}
