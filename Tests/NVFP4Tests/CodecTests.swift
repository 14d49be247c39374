import Foundation
import NVFP4
import Testing

@Suite struct CodecTests {
    @Test func bfloat16RoundsToNearestEven() {
        // 1 + 2^-8 is exactly halfway between BF16 1.0 and 1 + 2^-7: ties go to the even mantissa (1.0).
        #expect(BFloat16.fromFloat(1 + 0x1p-8) == 0x3F80)
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 (odd) and 1 + 2^-6 (even): rounds up.
        #expect(BFloat16.fromFloat(1 + 3 * 0x1p-8) == 0x3F82)
        #expect(BFloat16.fromFloat(1 + 0x1p-8 + 0x1p-20) == 0x3F81)
        #expect(BFloat16.fromFloat(.infinity) == 0x7F80)
        #expect(BFloat16.fromFloat(Float.greatestFiniteMagnitude) == 0x7F80, "finite overflow becomes infinity")
        #expect(BFloat16.fromFloat(.nan) == 0x7FC0)
        #expect(BFloat16.fromFloat(-2.5) == 0xC020)
        for bits: UInt16 in [0x0000, 0x8000, 0x3F80, 0x0001, 0x7F7F, 0xC2F7] {
            #expect(BFloat16.fromFloat(BFloat16.toFloat(bits)) == bits)
        }
    }

    @Test func e4m3DecodesTheFormat() {
        #expect(FP8E4M3.decode(0x01) == 0x1p-9)
        #expect(FP8E4M3.decode(0x08) == 0x1p-6)
        #expect(FP8E4M3.decode(0x7E) == 448)
        #expect(FP8E4M3.decode(0x38) == 1)
        #expect(FP8E4M3.decode(0x7F).isNaN)
        #expect(FP8E4M3.decode(0xFF).isNaN)
        #expect(FP8E4M3.decode(0xB8) == -1)
    }

    @Test func e4m3EncodeRoundTripsEveryCode() {
        for code in 0...0x7E {
            #expect(FP8E4M3.encode(FP8E4M3.decode(UInt8(code))) == UInt8(code))
            #expect(FP8E4M3.encode(-FP8E4M3.decode(UInt8(code))) == UInt8(code) | 0x80)
        }
    }

    @Test func e4m3MidpointsGoToTheEvenCode() {
        // Every midpoint between consecutive codes must round to the code with an even mantissa.
        for code in 0..<0x7E {
            let lo = FP8E4M3.decode(UInt8(code)), hi = FP8E4M3.decode(UInt8(code + 1))
            let mid = (lo + hi) / 2  // exact: both are in a narrow binade
            let expected = code % 2 == 0 ? UInt8(code) : UInt8(code + 1)
            #expect(FP8E4M3.encode(mid) == expected, "midpoint between 0x\(String(code, radix: 16)) and next")
            #expect(FP8E4M3.encode(mid.nextUp) == UInt8(code + 1))
            #expect(FP8E4M3.encode(mid.nextDown) == UInt8(code))
        }
    }

    @Test func e4m3SaturatesAndHandlesNaN() {
        #expect(FP8E4M3.encode(1000) == 0x7E)
        #expect(FP8E4M3.encode(-1000) == 0xFE)
        #expect(FP8E4M3.encode(.nan) == 0x7F)
        #expect(FP8E4M3.encode(0x1p-11) == 0, "below half the smallest subnormal rounds to zero")
    }

    @Test func e2m1TiesAndThresholds() {
        let cases: [(Float, UInt8)] = [
            (0, 0), (0.25, 0), (0.2500001, 1), (0.5, 1), (0.75, 2), (1.0, 2), (1.25, 2), (1.2500001, 3),
            (1.5, 3), (1.75, 4), (2.0, 4), (2.5, 4), (2.5000002, 5), (3.0, 5), (3.5, 6), (4.0, 6), (5.0, 6),
            (5.0000005, 7), (6, 7), (100, 7),
        ]
        for (value, code) in cases {
            #expect(E2M1.encode(value) == code, "e2m1(\(value))")
            if value > 0.25 { #expect(E2M1.encode(-value) == code | 8, "e2m1(-\(value))") }
        }
        #expect(E2M1.encode(-0.0) == 0, "-0 keeps sign bit 0 (modelopt)")
        #expect(E2M1.encode(-0.2) == 0x8, "a small negative keeps its sign bit")
        #expect(E2M1.value(0x8) == 0)
        #expect(E2M1.value(0xF) == -6)
    }

    @Test func vectorE2M1MatchesScalar() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            var y = SIMD16<Float>()
            for lane in 0..<16 { y[lane] = Float.random(in: -7...7, using: &generator) }
            y[0] = -0.0
            y[1] = 0.75
            y[2] = -2.5
            let vector = NVFP4Quantizer.e2m1Codes(y)
            for lane in 0..<16 { #expect(vector[lane] == E2M1.encode(y[lane])) }
        }
    }
}

@Suite struct QuantizerTests {
    func bf16(_ values: [Float]) -> [UInt16] { values.map(BFloat16.fromFloat) }

    @Test func rejectsColumnsNotMultipleOf16() throws {
        let data = bf16([Float](repeating: 1, count: 2 * 24))
        #expect(throws: NVFP4Error.columnsNotMultipleOf16(tensor: "w", cols: 24)) {
            try data.withUnsafeBufferPointer {
                try NVFP4Quantizer.quantize(bf16: $0, rows: 2, cols: 24, weightScale2: 1, tensor: "w")
            }
        }
    }

    @Test func rejectsNonFiniteWeightsNamingTheRow() throws {
        var values = [Float](repeating: 0.5, count: 4 * 16)
        values[2 * 16 + 3] = .nan
        let data = bf16(values)
        #expect(throws: NVFP4Error.nonFinite(tensor: "w", row: 2)) {
            try data.withUnsafeBufferPointer { try NVFP4Quantizer.amax(bf16: $0, cols: 16, tensor: "w") }
        }
        values[2 * 16 + 3] = -.infinity
        #expect(throws: NVFP4Error.nonFinite(tensor: "w", row: 2)) {
            try bf16(values).withUnsafeBufferPointer { try NVFP4Quantizer.amax(bf16: $0, cols: 16, tensor: "w") }
        }
    }

    @Test func rejectsAllZeroTensor() async throws {
        let data = bf16([Float](repeating: 0, count: 32))
        let amax = try data.withUnsafeBufferPointer { try NVFP4Quantizer.amax(bf16: $0, cols: 16, tensor: "w") }
        #expect(amax == 0)
        #expect(throws: NVFP4Error.allZero(tensor: "w")) {
            try data.withUnsafeBufferPointer {
                try NVFP4Quantizer.quantizeSync(bf16: $0, rows: 2, cols: 16, weightScale2: 0, tensor: "w")
            }
        }
    }

    @Test func fusedGroupUsesTheLargestAmax() {
        let s2 = FusedScales.sharedWeightScale2(memberAmax: [1.5, 4.0, 2.0])
        #expect(s2.bitPattern == (Float(4.0) / 2688).bitPattern)
    }

    @Test func quantizedBytesDoNotDependOnParallelism() async throws {
        var generator = SystemRandomNumberGenerator()
        let rows = 37, cols = 64
        let data = bf16((0..<(rows * cols)).map { _ in Float.random(in: -3...3, using: &generator) })
        let s2 = try data.withUnsafeBufferPointer {
            NVFP4Quantizer.weightScale2(amax: try NVFP4Quantizer.amax(bf16: $0, cols: cols, tensor: "w"))
        }
        var results: [NVFP4Weight] = []
        for parallelism in [1, 2, 5, 64] {
            results.append(try data.withUnsafeBufferPointer {
                try NVFP4Quantizer.quantize(bf16: $0, rows: rows, cols: cols, weightScale2: s2,
                                                  parallelism: parallelism)
            })
        }
        #expect(Set(results.map(\.packed)).count == 1)
        #expect(Set(results.map(\.blockScales)).count == 1)
        #expect(results[0].blockScales.allSatisfy { (0x01...0x7E).contains($0) })
    }

    @Test func activationEmulationKeepsRepresentableValues() {
        // With sx = 1 and a block max of 6 the block scale is exactly 1, so values on the E2M1 grid survive.
        var values: [Float] = [6, -4, 3, 2, 1.5, 1, 0.5, 0, -6, 4, -3, -2, -1.5, -1, -0.5, 0]
        let sx = InputScale(stored: 1)
        let original = values
        values.withUnsafeMutableBufferPointer { NVFP4ActivationEmulation.fakeQuantize($0, cols: 16, inputScale: sx) }
        #expect(values == original)
        var noisy: [Float] = (0..<16).map { Float($0) * 0.37 - 2.9 }
        let before = noisy
        noisy.withUnsafeMutableBufferPointer { NVFP4ActivationEmulation.fakeQuantize($0, cols: 16, inputScale: InputScale(stored: 0.01)) }
        #expect(noisy != before)
        for (a, b) in zip(noisy, before) { #expect(abs(a - b) <= abs(b) * 0.35 + 0.2) }
    }
}
