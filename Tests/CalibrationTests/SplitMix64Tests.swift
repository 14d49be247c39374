import Testing
@testable import Calibration

@Suite struct SplitMix64Tests {
    /// Seed 0 is the reference output of Vigna's splitmix64.c.
    @Test func referenceOutputs() {
        var zero = SplitMix64(seed: 0)
        #expect([zero.next(), zero.next(), zero.next()] == [0xE220_A839_7B1D_CDAF, 0x6E78_9E6A_A1B9_65F4, 0x06C4_5D18_8009_454F])
        var other = SplitMix64(seed: 1_234_567)
        #expect([other.next(), other.next(), other.next()] == [0x599E_D017_FB08_FC85, 0x2C73_F084_5854_0FA5, 0x883E_BCE5_A3F2_7C77])
    }

    /// Expected permutations come from an independent Python implementation of the documented algorithm.
    @Test(arguments: [
        (UInt64(42), 10, [0, 9, 5, 8, 6, 4, 7, 2, 1, 3]),
        (UInt64(7), 10, [8, 1, 5, 9, 0, 4, 3, 2, 6, 7]),
        (UInt64.max, 6, [3, 5, 0, 1, 4, 2]),
    ])
    func fixedPermutations(seed: UInt64, count: Int, expected: [Int]) {
        var elements = Array(0..<count)
        var generator = SplitMix64(seed: seed)
        generator.shuffle(&elements)
        #expect(elements == expected)
    }

    @Test func shortArraysAreUntouched() {
        var generator = SplitMix64(seed: 3)
        var empty: [Int] = []
        var one = [9]
        generator.shuffle(&empty)
        generator.shuffle(&one)
        #expect(empty.isEmpty && one == [9])
        #expect(generator.state == 3)  // no draws were made
    }
}
