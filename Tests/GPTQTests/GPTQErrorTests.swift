import GPTQ
import NVFP4
import Testing

/// Every rejected input is a typed error whose message names the tensor.
@Suite struct GPTQErrorTests {
    static let tensor = "model.layers.3.mlp.down_proj.weight"

    static func quantize(weight: [Float], rows: Int, cols: Int, hessian: [Double], weightScale2: Float = 0.01,
                         parameters: GPTQParameters = GPTQParameters()) throws -> NVFP4Weight {
        try weight.withUnsafeBufferPointer { weight in
            try hessian.withUnsafeBufferPointer { hessian in
                try GPTQQuantizer.quantize(f32: weight, rows: rows, cols: cols, hessian: hessian, weightScale2: weightScale2,
                                           parameters: parameters, tensor: tensor)
            }
        }
    }

    static func identity(_ n: Int, scale: Double = 1) -> [Double] {
        (0..<(n * n)).map { $0 / n == $0 % n ? scale : 0 }
    }

    static func expectNamesTensor(_ error: any Error) {
        #expect(String(describing: error).contains(tensor), "\(error)")
    }

    @Test func columnsNotAMultipleOf16() {
        let error = #expect(throws: NVFP4Error.self) {
            try Self.quantize(weight: [Float](repeating: 0.1, count: 4 * 24), rows: 4, cols: 24, hessian: Self.identity(24))
        }
        #expect(error == .columnsNotMultipleOf16(tensor: Self.tensor, cols: 24))
        if let error { Self.expectNamesTensor(error) }
    }

    @Test func hessianShapeMismatch() {
        let error = #expect(throws: GPTQError.self) {
            try Self.quantize(weight: [Float](repeating: 0.1, count: 4 * 32), rows: 4, cols: 32, hessian: Self.identity(16))
        }
        #expect(error == .hessianShapeMismatch(tensor: Self.tensor, columns: 32, hessianElements: 256))
        if let error { Self.expectNamesTensor(error) }
    }

    @Test func nanInTheWeight() {
        var weight = [Float](repeating: 0.1, count: 4 * 32)
        weight[2 * 32 + 5] = .nan
        let error = #expect(throws: NVFP4Error.self) {
            try Self.quantize(weight: weight, rows: 4, cols: 32, hessian: Self.identity(32))
        }
        #expect(error == .nonFinite(tensor: Self.tensor, row: 2))
        if let error { Self.expectNamesTensor(error) }
    }

    @Test func infinityInTheHessian() {
        var hessian = Self.identity(32)
        hessian[7 * 32 + 9] = .infinity
        let error = #expect(throws: GPTQError.self) {
            try Self.quantize(weight: [Float](repeating: 0.1, count: 4 * 32), rows: 4, cols: 32, hessian: hessian)
        }
        #expect(error == .nonFiniteHessian(tensor: Self.tensor, row: 7))
        if let error { Self.expectNamesTensor(error) }
    }

    @Test func hessianThatNoDampeningMakesPositiveDefinite() {
        // −I: dampening scales with the (negative) mean diagonal, so every retry stays negative definite.
        let error = #expect(throws: GPTQError.self) {
            try Self.quantize(weight: [Float](repeating: 0.1, count: 4 * 32), rows: 4, cols: 32,
                              hessian: Self.identity(32, scale: -1), parameters: GPTQParameters(dampeningRetries: 2))
        }
        // Three attempts: 0.01, then 0.1, then 1.
        #expect(error == .hessianNotPositiveDefinite(tensor: Self.tensor, dampening: 0.01 * 10 * 10))
        if let error { Self.expectNamesTensor(error) }
    }

    @Test func invalidWeightScale2AndParameters() {
        let weight = [Float](repeating: 0.1, count: 4 * 32)
        #expect(throws: NVFP4Error.allZero(tensor: Self.tensor)) {
            try Self.quantize(weight: weight, rows: 4, cols: 32, hessian: Self.identity(32), weightScale2: 0)
        }
        #expect(throws: GPTQError.invalidWeightScale2(tensor: Self.tensor, value: -1)) {
            try Self.quantize(weight: weight, rows: 4, cols: 32, hessian: Self.identity(32), weightScale2: -1)
        }
        for parameters in [GPTQParameters(blockSize: 0), GPTQParameters(dampening: -0.1), GPTQParameters(dampeningRetries: -1)] {
            let error = #expect(throws: GPTQError.self) {
                try Self.quantize(weight: weight, rows: 4, cols: 32, hessian: Self.identity(32), parameters: parameters)
            }
            if let error { Self.expectNamesTensor(error) }
        }
    }
}
