import Foundation
import NVFP4

/// SplitMix64: deterministic inputs without Foundation's unseeded generators.
struct SeededGenerator: RandomNumberGenerator {
    var state: UInt64

    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Roughly normal (sum of four uniforms, centred and scaled to unit variance).
    mutating func normal() -> Float {
        var sum: Float = 0
        for _ in 0..<4 { sum += Float.random(in: -1...1, using: &self) }
        return sum * (3 as Float).squareRoot() / 2
    }
}

/// The E2M1 code of element `index` of a packed `[rows, cols/2]` weight.
func code(_ packed: [UInt8], _ index: Int) -> UInt8 {
    index % 2 == 0 ? packed[index / 2] & 0xF : packed[index / 2] >> 4
}

/// `tr((W − Q) H (W − Q)ᵀ)`: twice the mean squared output error of the quantized Linear on the rows `H` came from.
func outputError(original: [Float], quantized: NVFP4Weight, hessian: [Double]) -> Double {
    let rows = quantized.rows, cols = quantized.cols
    let dequantized = NVFP4Quantizer.dequantize(quantized)
    var total = 0.0
    var delta = [Double](repeating: 0, count: cols)
    for row in 0..<rows {
        for c in 0..<cols { delta[c] = Double(original[row * cols + c]) - Double(dequantized[row * cols + c]) }
        for i in 0..<cols where delta[i] != 0 {
            var dot = 0.0
            for j in 0..<cols { dot += hessian[i * cols + j] * delta[j] }
            total += delta[i] * dot
        }
    }
    return total
}

enum Fixtures {
    static let gptqReference = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures/gptq-nvfp4-reference.safetensors").path
}
