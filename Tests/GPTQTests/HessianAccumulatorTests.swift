import GPTQ
import Testing

@Suite struct HessianAccumulatorTests {
    static let columns = 24
    static let count = 37

    static func inputRows() -> [Float] {
        var generator = SeededGenerator(seed: 14)
        var x = [Float]()
        for _ in 0..<count {
            // Correlated columns of different magnitudes: each row's columns share one random term.
            let shared = generator.normal()
            for column in 0..<columns { x.append((shared + generator.normal()) * Float(1 + column)) }
        }
        return x
    }

    /// `2/n Σ xᵀx` summed element by element in Double.
    static func direct(_ x: [Float], count: Int, columns: Int) -> [Double] {
        var h = [Double](repeating: 0, count: columns * columns)
        for i in 0..<columns {
            for j in 0..<columns {
                var sum = 0.0
                for r in 0..<count { sum += Double(x[r * columns + i]) * Double(x[r * columns + j]) }
                h[i * columns + j] = 2 * sum / Double(count)
            }
        }
        return h
    }

    static func accumulate(_ x: [Float], batches: [Int]) -> HessianAccumulator {
        var accumulator = HessianAccumulator(columns: columns)
        var start = 0
        x.withUnsafeBufferPointer { x in
            for batch in batches {
                accumulator.add(rows: UnsafeBufferPointer(rebasing: x[(start * columns)..<((start + batch) * columns)]),
                                count: batch)
                start += batch
            }
        }
        return accumulator
    }

    static func maxRelativeDifference(_ a: [Double], _ b: [Double]) -> Double {
        let scale = b.map(abs).max() ?? 0
        return zip(a, b).map { abs($0 - $1) }.max()! / scale
    }

    @Test func matchesTheDirectSum() {
        let x = Self.inputRows()
        let accumulator = Self.accumulate(x, batches: [Self.count])
        #expect(accumulator.rowsSeen == Self.count)
        let matrix = accumulator.matrix
        #expect(Self.maxRelativeDifference(matrix, Self.direct(x, count: Self.count, columns: Self.columns)) < 1e-13)
        for i in 0..<Self.columns {
            for j in 0..<i { #expect(matrix[i * Self.columns + j] == matrix[j * Self.columns + i]) }
        }
    }

    @Test(arguments: [[1, 36], [5, 1, 20, 11], [12, 12, 13], Array(repeating: 1, count: 37)])
    func batchSplitDoesNotChangeTheAverage(batches: [Int]) {
        let x = Self.inputRows()
        let whole = Self.accumulate(x, batches: [Self.count])
        let split = Self.accumulate(x, batches: batches)
        #expect(split.rowsSeen == Self.count)
        #expect(Self.maxRelativeDifference(split.matrix, whole.matrix) < 1e-13)
    }

    @Test func aBatchLargerThanOneChunkMatchesTheDirectSum() {
        // 600 rows span three of the accumulator's 256-row Double chunks.
        let columns = 16, count = 600
        var generator = SeededGenerator(seed: 15)
        let x = (0..<(count * columns)).map { _ in generator.normal() }
        var accumulator = HessianAccumulator(columns: columns)
        x.withUnsafeBufferPointer { accumulator.add(rows: $0, count: count) }
        #expect(Self.maxRelativeDifference(accumulator.matrix, Self.direct(x, count: count, columns: columns)) < 1e-13)
    }

    @Test func emptyBatchChangesNothing() {
        var accumulator = Self.accumulate(Self.inputRows(), batches: [Self.count])
        let before = accumulator.matrix
        [Float]().withUnsafeBufferPointer { accumulator.add(rows: $0, count: 0) }
        #expect(accumulator.rowsSeen == Self.count)
        #expect(accumulator.matrix == before)
    }
}
