import Foundation
import Testing
import LlamaModel

@Suite struct RopeTests {
    /// spec §11, evaluated independently in double precision.
    static func referenceInverseFrequencies(theta: Double, headDim: Int, factor: Double, low: Double, high: Double,
                                            originalContext: Double) -> [Double] {
        (0..<(headDim / 2)).map { index in
            let frequency = 1 / pow(theta, Double(2 * index) / Double(headDim))
            let wavelength = 2 * Double.pi / frequency
            if wavelength < originalContext / high { return frequency }
            if wavelength > originalContext / low { return frequency / factor }
            let smooth = (originalContext / wavelength - low) / (high - low)
            return (1 - smooth) * frequency / factor + smooth * frequency
        }
    }

    @Test func defaultInverseFrequencies() {
        let rope = RopeParameters(theta: 10000, kind: .default)
        let computed = rope.inverseFrequencies(headDim: 8)
        let expected: [Double] = [1, 0.1, 0.01, 0.001]
        #expect(computed.count == 4)
        for (value, reference) in zip(computed, expected) {
            #expect(abs(Double(value) - reference) <= 1e-6 * reference)
        }
    }

    @Test(arguments: [
        (500000.0, 32, 8.0, 1.0, 4.0, 1024),   // the tiny-llama fixture: all three branches occur
        (500000.0, 128, 8.0, 1.0, 4.0, 8192),  // Llama-3.1
        (500000.0, 64, 32.0, 1.0, 4.0, 8192),  // Llama-3.2 1B
    ])
    func llama3InverseFrequencies(theta: Double, headDim: Int, factor: Double, low: Double, high: Double,
                                  originalContext: Int) {
        let rope = RopeParameters(theta: theta, kind: .llama3(Llama3RopeScaling(
            factor: factor, lowFreqFactor: low, highFreqFactor: high, originalMaxPositionEmbeddings: originalContext)))
        let computed = rope.inverseFrequencies(headDim: headDim)
        let expected = Self.referenceInverseFrequencies(theta: theta, headDim: headDim, factor: factor, low: low,
                                                        high: high, originalContext: Double(originalContext))
        #expect(computed.count == expected.count)
        for (index, (value, reference)) in zip(computed, expected).enumerated() {
            #expect(abs(Double(value) - reference) <= 2e-6 * reference, "inv_freq[\(index)]")
        }
    }

    @Test func llama3KeepsHighScalesLowAndBlendsMediumFrequencies() {
        let scaling = Llama3RopeScaling(factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 1024)
        let plain = RopeParameters(theta: 500000, kind: .default).inverseFrequencies(headDim: 32)
        let scaled = RopeParameters(theta: 500000, kind: .llama3(scaling)).inverseFrequencies(headDim: 32)
        // wavelength 2π·500000^(i/16): below 256 for i ≤ 4, 256…1024 for i = 5, 6, above 1024 from i = 7.
        for index in 0...4 { #expect(scaled[index] == plain[index]) }
        for index in 5...6 { #expect(scaled[index] < plain[index] && scaled[index] > plain[index] / 8) }
        for index in 7..<16 { #expect(scaled[index] == plain[index] / 8) }
    }
}
