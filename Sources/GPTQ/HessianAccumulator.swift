import COpenBLAS
import OpenBLASThreads

/// `H = (2/n) Σ xᵀx` over every input row `x` of one Linear input seen so far (GPTQ's Hessian of the layer's squared
/// output error), kept in Double.
///
/// Batches are folded in with the running form `H ← n/(n+m)·H + 2/(n+m)·XᵀX` (one `dsyrk`), so `H` stays an average
/// and its magnitude does not grow with the number of calibration tokens. Double because the sum runs over millions
/// of rows and the Cholesky that follows amplifies its error; the price is `columns² × 8` bytes (512 MiB for 8192
/// inputs).
public struct HessianAccumulator: Sendable {
    public let columns: Int
    /// Rows added so far (`n`).
    public private(set) var rowsSeen: Int = 0
    /// The upper triangle of `H`, row-major `[columns, columns]`; the strict lower triangle is not maintained.
    private var upper: [Double]

    /// Rows widened to Double per `dsyrk` call, to bound the scratch memory of a large batch.
    private static let rowsPerChunk = 256

    public init(columns: Int) {
        precondition(columns > 0, "a Hessian needs at least one column")
        self.columns = columns
        self.upper = [Double](repeating: 0, count: columns * columns)
    }

    /// Folds in `count` rows, row-major `[count, columns]`.
    public mutating func add(rows: UnsafeBufferPointer<Float>, count: Int) {
        precondition(rows.count == count * columns, "\(rows.count) values are not \(count) rows of \(columns)")
        guard count > 0 else { return }
        let total = rowsSeen + count
        let columns = self.columns
        let chunkRows = min(count, Self.rowsPerChunk)
        let wide = UnsafeMutableBufferPointer<Double>.allocate(capacity: chunkRows * columns)
        defer { wide.deallocate() }
        upper.withUnsafeMutableBufferPointer { h in
            var start = 0
            while start < count {
                let chunk = min(chunkRows, count - start)
                for index in 0..<(chunk * columns) { wide[index] = Double(rows[start * columns + index]) }
                // The first chunk rescales the old average; later chunks of the same batch only add.
                let beta = start == 0 ? Double(rowsSeen) / Double(total) : 1
                OpenBLASThreads.withConfiguredThreads {
                    cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, Int32(columns), Int32(chunk), 2 / Double(total),
                                wide.baseAddress, Int32(columns), beta, h.baseAddress, Int32(columns))
                }
                start += chunk
            }
        }
        rowsSeen = total
    }

    /// `H`, row-major `[columns, columns]`, both triangles filled (exactly symmetric).
    public var matrix: [Double] {
        var full = upper
        for row in 0..<columns {
            for column in 0..<row { full[row * columns + column] = upper[column * columns + row] }
        }
        return full
    }
}
