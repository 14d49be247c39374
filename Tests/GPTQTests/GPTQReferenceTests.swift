import GPTQ
import NVFP4
import SafeTensors
import Testing

/// GPTQ against the independent numpy implementation (Scripts/reference/gptq_nvfp4_reference.py) on its fixture:
/// a [64, 256] weight, 448 correlated input rows with one dead input, both column orders.
@Suite struct GPTQReferenceTests {
    struct Case {
        let weight: [Float]
        let rows: Int
        let cols: Int
        let hessian: [Double]
        let weightScale2: Float
        let file: SafeTensorsFile
    }

    static func loadCase() throws -> Case {
        let file = try SafeTensorsFile(path: Fixtures.gptqReference)
        let shape = try file.info("weight").shape
        let inputs = try file.floats("inputs")
        let cols = shape[1]
        // Two uneven batches, as calibration would deliver them.
        var accumulator = HessianAccumulator(columns: cols)
        inputs.withUnsafeBufferPointer { inputs in
            let split = 200 * cols
            accumulator.add(rows: UnsafeBufferPointer(rebasing: inputs[..<split]), count: 200)
            accumulator.add(rows: UnsafeBufferPointer(rebasing: inputs[split...]), count: inputs.count / cols - 200)
        }
        let s2: Float = try file.withBytes("weight_scale_2") { $0.loadUnaligned(as: Float.self) }
        return Case(weight: try file.floats("weight"), rows: shape[0], cols: cols, hessian: accumulator.matrix,
                    weightScale2: s2, file: file)
    }

    static func gptq(_ fixture: Case, activationOrder: Bool) throws -> NVFP4Weight {
        try fixture.weight.withUnsafeBufferPointer { weight in
            try fixture.hessian.withUnsafeBufferPointer { hessian in
                try GPTQQuantizer.quantize(f32: weight, rows: fixture.rows, cols: fixture.cols, hessian: hessian,
                                           weightScale2: fixture.weightScale2,
                                           parameters: GPTQParameters(activationOrder: activationOrder),
                                           tensor: "fixture.weight")
            }
        }
    }

    static func rtn(_ fixture: Case) throws -> NVFP4Weight {
        try fixture.weight.withUnsafeBufferPointer {
            try NVFP4Quantizer.quantize(f32: $0, rows: fixture.rows, cols: fixture.cols, weightScale2: fixture.weightScale2)
        }
    }

    @Test func weightScale2IsTheRoundToNearestOne() throws {
        let fixture = try Self.loadCase()
        let amax = try fixture.weight.withUnsafeBufferPointer {
            try NVFP4Quantizer.amax(f32: $0, cols: fixture.cols, tensor: "fixture.weight")
        }
        #expect(NVFP4Quantizer.weightScale2(amax: amax).bitPattern == fixture.weightScale2.bitPattern)
    }

    @Test(arguments: [("natural_order", false), ("activation_order", true)])
    func matchesTheNumpyReference(order: String, activationOrder: Bool) throws {
        let fixture = try Self.loadCase()
        let result = try Self.gptq(fixture, activationOrder: activationOrder)
        #expect(result.weightScale2.bitPattern == fixture.weightScale2.bitPattern)
        #expect(result.blockScales == [UInt8](try fixture.file.data("\(order).weight_scale")))
        // The reference propagates errors in float64, this implementation in Float with another summation order: a
        // value that lands within rounding noise of an E2M1 threshold may round the other way (and shift later columns).
        let expected = [UInt8](try fixture.file.data("\(order).weight_packed"))
        let elements = fixture.rows * fixture.cols
        let differing = (0..<elements).filter { code(result.packed, $0) != code(expected, $0) }.count
        #expect(Double(differing) / Double(elements) <= 0.01, "\(differing) of \(elements) codes differ from the reference")
    }

    @Test(arguments: [false, true])
    func lowersTheOutputErrorOfRoundToNearest(activationOrder: Bool) throws {
        let fixture = try Self.loadCase()
        let gptq = try Self.gptq(fixture, activationOrder: activationOrder)
        let rtn = try Self.rtn(fixture)
        // GPTQ keeps round-to-nearest's block scales and changes only codes.
        #expect(gptq.blockScales == rtn.blockScales)
        #expect(gptq.packed != rtn.packed)
        let gptqError = outputError(original: fixture.weight, quantized: gptq, hessian: fixture.hessian)
        let rtnError = outputError(original: fixture.weight, quantized: rtn, hessian: fixture.hessian)
        #expect(gptqError < rtnError, "GPTQ \(gptqError) vs RTN \(rtnError)")
    }

    @Test func deadInputColumnIsQuantizedToZero() throws {
        let fixture = try Self.loadCase()
        let deadColumnText = try #require(fixture.file.metadata["dead_input_column"])
        let deadColumn = try #require(Int(deadColumnText))
        #expect(fixture.hessian[deadColumn * fixture.cols + deadColumn] == 0)
        for activationOrder in [false, true] {
            let result = try Self.gptq(fixture, activationOrder: activationOrder)
            let codes = (0..<fixture.rows).map { code(result.packed, $0 * fixture.cols + deadColumn) }
            #expect(codes.allSatisfy { $0 == 0 })
            // The weight itself was not zero there, so this is GPTQ's doing.
            #expect((0..<fixture.rows).contains { fixture.weight[$0 * fixture.cols + deadColumn] != 0 })
        }
    }
}
