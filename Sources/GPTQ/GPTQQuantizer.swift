import COpenBLAS
import OpenBLASThreads
import NVFP4

/// GPTQ for NVFP4 weights: the block scales and `S2` of round-to-nearest, and E2M1 codes chosen column by column so
/// that each column's rounding error is compensated by the columns quantized after it.
public enum GPTQQuantizer {
    /// Quantizes `weight` (row-major `[rows, cols]` = `[out, in]`) under the Hessian of its input (row-major
    /// `[cols, cols]`, from ``HessianAccumulator``) and a given `weightScale2` (a fused group's shared `S2`).
    ///
    /// The result has the layout, block scales and `S2` that `NVFP4Quantizer.quantize(f32:...)` gives for the same
    /// weight; only the E2M1 codes differ.
    public static func quantize(
        f32 weight: UnsafeBufferPointer<Float>, rows: Int, cols: Int, hessian: UnsafeBufferPointer<Double>,
        weightScale2 s2: Float, parameters: GPTQParameters = GPTQParameters(), blockScales given: [UInt8]? = nil,
        tensor: String = "tensor"
    ) throws -> NVFP4Weight {
        try validate(weight: weight, rows: rows, cols: cols, hessian: hessian, weightScale2: s2,
                     parameters: parameters, tensor: tensor)
        let factorization = try factorizeValidated(hessian, cols: cols, parameters: parameters, tensor: tensor)
        return try quantizeValidated(weight, rows: rows, cols: cols, factorization: factorization, weightScale2: s2,
                                     blockScales: given, tensor: tensor)
    }

    /// What GPTQ derives from a Hessian alone (dead inputs, column order, the factor of the damped inverse): computed
    /// once per shared input and used for every Linear that reads it (q/k/v, gate/up), so the O(n³) factorization
    /// is not repeated per Linear.
    public static func factorize(hessian: UnsafeBufferPointer<Double>, cols: Int, parameters: GPTQParameters = GPTQParameters(),
                                 tensor: String = "tensor") throws -> GPTQFactorization {
        if cols % NVFP4Quantizer.blockSize != 0 { throw NVFP4Error.columnsNotMultipleOf16(tensor: tensor, cols: cols) }
        if hessian.count != cols * cols {
            throw GPTQError.hessianShapeMismatch(tensor: tensor, columns: cols, hessianElements: hessian.count)
        }
        try validate(parameters, tensor: tensor)
        if let index = hessian.firstIndex(where: { !$0.isFinite }) {
            throw GPTQError.nonFiniteHessian(tensor: tensor, row: index / cols)
        }
        return try factorizeValidated(hessian, cols: cols, parameters: parameters, tensor: tensor)
    }

    static func factorizeValidated(_ hessian: UnsafeBufferPointer<Double>, cols: Int, parameters: GPTQParameters,
                                   tensor: String) throws -> GPTQFactorization {
        // Inputs that were always zero carry no information: their columns are quantized to 0, and their diagonal
        // becomes 1 so the Hessian stays invertible.
        var diagonal = (0..<cols).map { hessian[$0 * cols + $0] }
        let dead = diagonal.map { $0 == 0 }
        for i in 0..<cols where dead[i] { diagonal[i] = 1 }

        // Column order: the loudest inputs first under activation order. A stable sort, so equal diagonals keep
        // their index order.
        let order: [Int] = parameters.activationOrder
            ? (0..<cols).sorted { diagonal[$0] > diagonal[$1] || (diagonal[$0] == diagonal[$1] && $0 < $1) }
            : Array(0..<cols)

        // U, upper triangular with H_damped⁻¹ = UᵀU (H in quantization order): row j of U holds how column j's
        // error propagates.
        let inverseFactor = try upperCholeskyOfInverse(hessian, diagonal: diagonal, order: order,
                                                       parameters: parameters, tensor: tensor)
        return GPTQFactorization(columns: cols, dead: dead, order: order, inverseFactor: inverseFactor,
                                 blockSize: parameters.blockSize)
    }

    /// Quantizes `weight` (`[rows, cols]`) with a ``factorize(hessian:cols:parameters:tensor:)`` result of its input's
    /// Hessian, under round-to-nearest's block scales or the `blockScales` given.
    public static func quantize(
        f32 weight: UnsafeBufferPointer<Float>, rows: Int, cols: Int, factorization: GPTQFactorization,
        weightScale2 s2: Float, blockScales given: [UInt8]? = nil, tensor: String = "tensor"
    ) throws -> NVFP4Weight {
        if cols % NVFP4Quantizer.blockSize != 0 { throw NVFP4Error.columnsNotMultipleOf16(tensor: tensor, cols: cols) }
        if rows * cols != weight.count {
            throw NVFP4Error.sizeMismatch(tensor: tensor, expected: rows * cols, actual: weight.count)
        }
        if factorization.columns != cols {
            throw GPTQError.hessianShapeMismatch(tensor: tensor, columns: cols,
                                                 hessianElements: factorization.columns * factorization.columns)
        }
        if s2 == 0 { throw NVFP4Error.allZero(tensor: tensor) }
        if !(s2 > 0) || !s2.isFinite { throw GPTQError.invalidWeightScale2(tensor: tensor, value: s2) }
        if let index = weight.firstIndex(where: { !$0.isFinite }) {
            throw NVFP4Error.nonFinite(tensor: tensor, row: index / cols)
        }
        return try quantizeValidated(weight, rows: rows, cols: cols, factorization: factorization, weightScale2: s2,
                                     blockScales: given, tensor: tensor)
    }

    /// The column loop once the weight, `S2` and the factorization have been checked.
    static func quantizeValidated(
        _ weight: UnsafeBufferPointer<Float>, rows: Int, cols: Int, factorization: GPTQFactorization,
        weightScale2 s2: Float, blockScales given: [UInt8]?, tensor: String
    ) throws -> NVFP4Weight {
        let blocksPerRow = cols / 16
        if let given, given.count != rows * blocksPerRow {
            throw NVFP4Error.sizeMismatch(tensor: tensor + " (block scales)", expected: rows * blocksPerRow, actual: given.count)
        }

        // 1. Block scales from the original weights, exactly as round-to-nearest computes them (or as given, e.g. by
        // `BlockScaleSearch`); fixed from here on.
        let d = 6 * s2
        var blockScales = given ?? [UInt8](repeating: 0, count: rows * blocksPerRow)
        for block in 0..<(rows * blocksPerRow) where given == nil {
            var blockAmax: Float = 0
            for k in 0..<16 { blockAmax = max(blockAmax, abs(weight[block * 16 + k])) }
            blockScales[block] = NVFP4Quantizer.blockScaleCode(blockAmax: blockAmax, d: d)
        }
        let order = factorization.order, dead = factorization.dead

        // 2. The working weights transposed, in quantization order: each column contiguous, so its update is one axpy.
        // The divisor sf·S2 of each element travels with its column (it belongs to the column's original block).
        var working = [Float](repeating: 0, count: rows * cols)
        var divisors = [Float](repeating: 0, count: rows * cols)
        for (position, column) in order.enumerated() {
            for row in 0..<rows {
                working[position * rows + row] = dead[column] ? 0 : weight[row * cols + column]
                divisors[position * rows + row] =
                    FP8E4M3.decode(blockScales[row * blocksPerRow + column / 16]) * s2
            }
        }

        // 3. The column loop, codes written in quantization order.
        var codes = [UInt8](repeating: 0, count: rows * cols)
        quantizeColumns(working: &working, divisors: divisors, codes: &codes, inverseFactor: factorization.inverseFactor,
                        rows: rows, cols: cols, blockSize: factorization.blockSize)

        // 4. Back to the original column order, packed two codes per byte, element 2k in the low nibble.
        var packed = [UInt8](repeating: 0, count: rows * cols / 2)
        for (position, column) in order.enumerated() {
            for row in 0..<rows {
                let code = codes[position * rows + row]
                let byte = (row * cols + column) / 2
                packed[byte] |= column % 2 == 0 ? code : code << 4
            }
        }
        return NVFP4Weight(rows: rows, cols: cols, packed: packed, blockScales: blockScales, weightScale2: s2)
    }

    static func validate(
        weight: UnsafeBufferPointer<Float>, rows: Int, cols: Int, hessian: UnsafeBufferPointer<Double>,
        weightScale2 s2: Float, parameters: GPTQParameters, tensor: String
    ) throws {
        if cols % NVFP4Quantizer.blockSize != 0 { throw NVFP4Error.columnsNotMultipleOf16(tensor: tensor, cols: cols) }
        if rows * cols != weight.count {
            throw NVFP4Error.sizeMismatch(tensor: tensor, expected: rows * cols, actual: weight.count)
        }
        if hessian.count != cols * cols {
            throw GPTQError.hessianShapeMismatch(tensor: tensor, columns: cols, hessianElements: hessian.count)
        }
        if s2 == 0 { throw NVFP4Error.allZero(tensor: tensor) }
        if !(s2 > 0) || !s2.isFinite { throw GPTQError.invalidWeightScale2(tensor: tensor, value: s2) }
        try validate(parameters, tensor: tensor)
        if let index = weight.firstIndex(where: { !$0.isFinite }) {
            throw NVFP4Error.nonFinite(tensor: tensor, row: index / cols)
        }
        if let index = hessian.firstIndex(where: { !$0.isFinite }) {
            throw GPTQError.nonFiniteHessian(tensor: tensor, row: index / cols)
        }
    }

    static func validate(_ parameters: GPTQParameters, tensor: String) throws {
        if parameters.blockSize < 1 {
            throw GPTQError.invalidParameters(tensor: tensor, reason: "block size \(parameters.blockSize) is below 1")
        }
        if !(parameters.dampening >= 0) || !parameters.dampening.isFinite {
            throw GPTQError.invalidParameters(tensor: tensor, reason: "dampening \(parameters.dampening) is not a finite number ≥ 0")
        }
        if parameters.dampeningRetries < 0 {
            throw GPTQError.invalidParameters(tensor: tensor, reason: "dampening retries \(parameters.dampeningRetries) is below 0")
        }
    }

    /// The upper Cholesky factor `U` of `(P(H) + λI)⁻¹`, as Float, row-major with zeros below the diagonal, where
    /// `P(H)[i][j] = H[order[i]][order[j]]` with the diagonal replaced by `diagonal` (in original column order).
    /// `λ` is `dampening × mean(diagonal)`, multiplied by 10 after each failed factorization.
    ///
    /// No inverse is formed. With `J` the order reversal, let `JAJ = LLᵀ` (LAPACK's lower Cholesky factor). Then
    /// `A = (JLJ)(JLJ)ᵀ` with `JLJ` upper triangular, so `A⁻¹ = UᵀU` for `U = (JLJ)⁻¹ = J L⁻¹ J`, upper triangular
    /// with a positive diagonal: the unique upper Cholesky factor of `A⁻¹`. One factorization and one triangular
    /// inverse (`2n³/3` flops) instead of factor, invert and factor again (`4n³/3`).
    static func upperCholeskyOfInverse(
        _ hessian: UnsafeBufferPointer<Double>, diagonal: [Double], order: [Int], parameters: GPTQParameters,
        tensor: String
    ) throws -> [Float] {
        let n = diagonal.count
        let meanDiagonal = diagonal.reduce(0, +) / Double(n)
        // The reversed, permuted Hessian, read by LAPACK as column-major (it is symmetric, so the order agrees).
        var reversed = [Double](repeating: 0, count: n * n)
        var dampening = parameters.dampening
        for attempt in 0...parameters.dampeningRetries {
            if attempt > 0 { dampening *= 10 }
            for i in 0..<n {
                let source = order[n - 1 - i]
                for j in 0..<n { reversed[i * n + j] = hessian[source * n + order[n - 1 - j]] }
                reversed[i * n + i] = diagonal[source] + dampening * meanDiagonal
            }
            guard factorLower(&reversed, n), invertLowerTriangle(&reversed, n) else { continue }
            // L⁻¹[i][j] (i ≥ j) sits at column-major index i + j·n; U[r][c] = L⁻¹[n−1−r][n−1−c]. A transpose, so
            // copied in tiles: row by row, the reads would stride by n.
            var u = [Float](repeating: 0, count: n * n)
            let tile = 64
            for rowTile in stride(from: 0, to: n, by: tile) {
                for columnTile in stride(from: rowTile, to: n, by: tile) {
                    for r in rowTile..<min(rowTile + tile, n) {
                        for c in max(r, columnTile)..<min(columnTile + tile, n) {
                            u[r * n + c] = Float(reversed[(n - 1 - r) + (n - 1 - c) * n])
                        }
                    }
                }
            }
            return u
        }
        throw GPTQError.hessianNotPositiveDefinite(tensor: tensor, dampening: dampening)
    }

    /// `dpotrf_('L')` in place: the lower Cholesky factor; false when the matrix is not positive definite.
    private static func factorLower(_ a: inout [Double], _ n: Int) -> Bool {
        var uplo = CChar(UInt8(ascii: "L")), order = Int32(n), leading = Int32(n), info: Int32 = 0
        a.withUnsafeMutableBufferPointer { a in
            OpenBLASThreads.withConfiguredThreads { dpotrf_(&uplo, &order, a.baseAddress, &leading, &info, 1) }
        }
        return info == 0
    }

    /// `dtrtri_('L', 'N')` in place: the inverse of the lower triangular factor; false when it is singular.
    private static func invertLowerTriangle(_ a: inout [Double], _ n: Int) -> Bool {
        var uplo = CChar(UInt8(ascii: "L")), unit = CChar(UInt8(ascii: "N")), order = Int32(n), leading = Int32(n)
        var info: Int32 = 0
        a.withUnsafeMutableBufferPointer { a in
            OpenBLASThreads.withConfiguredThreads { dtrtri_(&uplo, &unit, &order, a.baseAddress, &leading, &info, 1, 1) }
        }
        return info == 0
    }

    /// GPTQ's column loop over the transposed weights `working` (`[cols, rows]`, quantization order).
    ///
    /// Column `j` is rounded under its fixed divisor, and its error `(w − q)/U[j,j]` is subtracted, scaled by row `j`
    /// of `U`, from every later column: at once within the current block of `blockSize` columns, and for the columns
    /// after the block in one GEMM once the block is done.
    static func quantizeColumns(
        working: inout [Float], divisors: [Float], codes: inout [UInt8], inverseFactor u: [Float],
        rows: Int, cols: Int, blockSize: Int
    ) {
        var errors = [Float](repeating: 0, count: min(blockSize, cols) * rows)
        working.withUnsafeMutableBufferPointer { w in
            divisors.withUnsafeBufferPointer { divisors in
                codes.withUnsafeMutableBufferPointer { codes in
                    u.withUnsafeBufferPointer { u in
                        errors.withUnsafeMutableBufferPointer { errors in
                            for blockStart in stride(from: 0, to: cols, by: blockSize) {
                                let blockEnd = min(blockStart + blockSize, cols)
                                for j in blockStart..<blockEnd {
                                    let column = w.baseAddress! + j * rows
                                    let divisor = divisors.baseAddress! + j * rows
                                    let error = errors.baseAddress! + (j - blockStart) * rows
                                    let pivot = u[j * cols + j]
                                    for row in 0..<rows {
                                        let value = column[row]
                                        let code = E2M1.encode(value / divisor[row])
                                        codes[j * rows + row] = code
                                        error[row] = (value - E2M1.value(code) * divisor[row]) / pivot
                                    }
                                    for k in (j + 1)..<blockEnd {
                                        cblas_saxpy(Int32(rows), -u[j * cols + k], error, 1, w.baseAddress! + k * rows, 1)
                                    }
                                }
                                guard blockEnd < cols else { continue }
                                // working[blockEnd..., :] -= U[blockStart..<blockEnd, blockEnd...]ᵀ · errors
                                OpenBLASThreads.withConfiguredThreads {
                                    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Int32(cols - blockEnd), Int32(rows),
                                                Int32(blockEnd - blockStart), -1, u.baseAddress! + blockStart * cols + blockEnd,
                                                Int32(cols), errors.baseAddress, Int32(rows), 1,
                                                w.baseAddress! + blockEnd * rows, Int32(rows))
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A Hessian's share of GPTQ, from ``GPTQQuantizer/factorize(hessian:cols:parameters:tensor:)``.
public struct GPTQFactorization: Sendable {
    public let columns: Int
    /// Inputs that were always zero (their weights are quantized to 0).
    let dead: [Bool]
    /// Quantization order of the columns (original indices).
    let order: [Int]
    /// Upper Cholesky factor of the damped inverse Hessian, in quantization order, row-major Float.
    let inverseFactor: [Float]
    let blockSize: Int
}
