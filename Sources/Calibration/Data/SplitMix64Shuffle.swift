/// The seeded shuffle of calibration records, written out so its output never depends on the Swift standard
/// library's (unspecified, changeable) `shuffle`/`SystemRandomNumberGenerator`.
///
/// Algorithm, exactly:
/// - SplitMix64 (Steele, Lea & Flood 2014; Vigna's reference `splitmix64.c`): the state starts at `seed`; each
///   `next()` does `state &+= 0x9E3779B97F4A7C15; z = state; z = (z ^ (z >> 30)) &* 0xBF58476D1CE4E5B9;
///   z = (z ^ (z >> 27)) &* 0x94D049BB133111EB; return z ^ (z >> 31)` in UInt64 wrapping arithmetic.
/// - Fisher–Yates, from the back: for `i` from `n − 1` down to `1`: `j = Int(next() % UInt64(i + 1))`, swap
///   elements `i` and `j`. (The modulo bias is below 2⁻³² for any realistic record count; it is part of the
///   definition, so it stays.)
public struct SplitMix64: Sendable {
    public private(set) var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// Shuffles `elements` in place with the Fisher–Yates order described above.
    public mutating func shuffle<T>(_ elements: inout [T]) {
        guard elements.count > 1 else { return }
        for i in stride(from: elements.count - 1, through: 1, by: -1) {
            let j = Int(next() % UInt64(i + 1))
            elements.swapAt(i, j)
        }
    }
}
