import Foundation

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
