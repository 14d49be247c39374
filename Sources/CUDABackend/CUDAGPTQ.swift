import CUDARuntime
import ComputeBackend
import Foundation
import GPTQ
import LlamaModel
import NVFP4

/// GPTQ's Hessian of one Linear input on the GPU: `Σ xᵀx` over the rows added so far, an FP32 column-major sum of which
/// only the tiles on and above the diagonal are computed (it is symmetric), so a sum costs about half a full GEMM.
/// The scale `2/n` is applied when it is factorized.
// @unchecked: a device buffer and a row count, used inside `CUDADevice.exclusive(_:)` in stream order.
public final class DeviceHessian: @unchecked Sendable {
    public let columns: Int
    public private(set) var rowsSeen = 0
    /// Edge of the tiles the sum is computed in (a multiple of 128, so every tile starts 256-byte aligned).
    public static let tile = 2048
    let sum: DeviceBuffer

    /// A zero sum for `columns` inputs (`columns² × 4` bytes of device memory).
    public init(device: CUDADevice, columns: Int) throws {
        precondition(columns > 0, "a Hessian needs at least one column")
        self.columns = columns
        sum = try DeviceBuffer(context: device.context, byteCount: columns * columns * 4)
        try device.exclusive { try sum.fill(byte: 0, stream: device.computeStream) }
    }

    /// Enqueues `sum += XᵀX` for the BF16 rows `X` (row-major `[count, columns]`) at `rows`. Callers hold the device.
    func add(bf16 rows: CUdeviceptr, count: Int, blas: CuBLASLt, stream: CUDAStream) throws {
        guard count > 0 else { return }
        let n = columns
        // Row-major X is column-major Xc = Xᵀ (n × count, leading dimension n): the tile (i, j) is Xc[i] · Xc[j]ᵀ.
        for i in stride(from: 0, to: n, by: Self.tile) {
            let height = min(Self.tile, n - i)
            for j in stride(from: i, to: n, by: Self.tile) {
                let width = min(Self.tile, n - j)
                let product = MatrixProduct(m: height, n: width, k: count, transposeA: false, transposeB: true,
                                            lda: n, ldb: n, ldc: n, inputs: .bfloat16)
                try blas.multiply(product, a: rows + CUdeviceptr(i * 2), b: rows + CUdeviceptr(j * 2),
                                  c: sum.address + CUdeviceptr((i + j * n) * 4), alpha: 1, beta: 1, stream: stream)
            }
        }
        rowsSeen += count
    }

    /// The FLOPs one row adds (the computed tiles only).
    public var flopsPerRow: Double {
        let tiles = (columns + Self.tile - 1) / Self.tile
        var flops = 0.0
        for i in 0..<tiles {
            for j in i..<tiles {
                flops += 2 * Double(min(Self.tile, columns - i * Self.tile)) * Double(min(Self.tile, columns - j * Self.tile))
            }
        }
        return flops
    }
}

/// The Hessians of one decoder layer's four inputs, filled by ``CUDABackend/enqueueForward(layer:states:batch:hessians:)``.
public final class LayerDeviceHessians: @unchecked Sendable {
    public let qkv: DeviceHessian
    public let o: DeviceHessian
    public let gateUp: DeviceHessian
    public let down: DeviceHessian

    public init(device: CUDADevice, hiddenSize: Int, attentionWidth: Int, intermediateSize: Int) throws {
        qkv = try DeviceHessian(device: device, columns: hiddenSize)
        o = try DeviceHessian(device: device, columns: attentionWidth)
        gateUp = try DeviceHessian(device: device, columns: hiddenSize)
        down = try DeviceHessian(device: device, columns: intermediateSize)
    }
}

extension LayerDeviceHessians {
    /// The Hessian of `group`'s input.
    public subscript(group: FusedGroup) -> DeviceHessian {
        switch group {
        case .qkv: qkv
        case .o: o
        case .gateUp: gateUp
        case .down: down
        }
    }
}

/// A ``CUDABackend/forward(layer:hidden:batch:inputTransform:)`` transform that asks for the Hessians each Linear
/// input of a layer is added to on the GPU (GPTQ), instead of being handed the inputs on the host.
public protocol DeviceHessianObserver: LinearInputTransform {
    /// The sums to add `layer`'s inputs to, or nil when this forward must not add them (a chunk counted before).
    func deviceHessians(layer: Int) throws -> LayerDeviceHessians?
}

/// What GPTQ derives from one Hessian on the GPU: dead inputs and column order (also on the host), and the upper
/// triangular `V` with `P(H) + λI = V·Vᵀ` in quantization order (FP32, column-major, on the device). `V⁻¹` is the `U` of
/// the CPU's `GPTQQuantizer` (the upper Cholesky factor of the damped inverse), which the GPU never forms.
// @unchecked: device buffers, immutable once made.
public final class DeviceGPTQFactorization: @unchecked Sendable {
    public let columns: Int
    public let dead: [Bool]
    public let order: [Int]
    /// The Hessian's diagonal `2/n Σ x²` per input (0 for dead ones): the column weights of a Hessian-weighted scale search.
    public let diagonal: [Double]
    /// The dampening (fraction of the mean diagonal) the factorization succeeded with.
    public let dampening: Double
    let factor: DeviceBuffer
    let orderBuffer: DeviceBuffer
    let positionBuffer: DeviceBuffer
    let deadBuffer: DeviceBuffer
    let blockSize: Int

    init(columns: Int, dead: [Bool], order: [Int], diagonal: [Double], dampening: Double, factor: DeviceBuffer, orderBuffer: DeviceBuffer,
         positionBuffer: DeviceBuffer, deadBuffer: DeviceBuffer, blockSize: Int) {
        self.columns = columns
        self.dead = dead
        self.order = order
        self.diagonal = diagonal
        self.dampening = dampening
        self.factor = factor
        self.orderBuffer = orderBuffer
        self.positionBuffer = positionBuffer
        self.deadBuffer = deadBuffer
        self.blockSize = blockSize
    }
}

/// GPTQ for NVFP4 weights on the GPU: the algorithm of `GPTQQuantizer` (same block scales and `S2`, same rounding of
/// each value) with the Hessian sums on tensor cores, one FP64 Cholesky factorization through cuSOLVER (opened on first
/// use) and the column loop in its left-looking form. GPTQ's update `W − Q = E·U` (`E` the scaled errors, `U` the upper
/// Cholesky factor of `H⁻¹`) gives `E = (W − Q)·V` with `V = U⁻¹`, the reversed Cholesky factor of `H` itself, so
/// column `p` is rounded from `W_p + Σ_{i<p} (W − Q)_i·V[i,p] / V[p,p]`: no triangular inverse, and the columns before
/// a block enter through one FP32 GEMM with a long inner dimension (`(W − Q)[:, ..<start] · V[..<start, block]`),
/// the block's own through a kernel. The sums are the CPU's up to their order, so the codes agree with it except where
/// floating-point noise moves a value across a rounding boundary.
public final class CUDAGPTQ: @unchecked Sendable {
    public let device: CUDADevice
    let solver: CuSOLVERDense
    /// Rows per thread block of the column loop (its shared memory holds `blockSize × rowsPerBlock` floats).
    static let rowsPerBlock = 64
    /// Largest GPTQ block the kernel takes (48 KiB of shared memory at 96 rows, 32 KiB at 64).
    public static let maxBlockSize = 128

    /// TF32 tensor cores for the GEMMs of the column loop instead of FP32 (faster, 10-bit products: more codes move).
    public let tf32Products: Bool

    public init(device: CUDADevice, locator: CUDALibraryLocator = CUDALibraryLocator(), tf32Products: Bool = false) throws {
        self.device = device
        self.tf32Products = tf32Products
        solver = try CuSOLVERDense(context: device.context, locator: locator)
    }

    /// Adds `count` BF16 rows (row-major `[count, columns]`, on the device) to `hessian`, on the compute stream.
    public func accumulate(_ hessian: DeviceHessian, bf16Rows rows: CUdeviceptr, count: Int) throws {
        try device.exclusive { try hessian.add(bf16: rows, count: count, blas: device.blas, stream: device.computeStream) }
    }

    /// The factorization of `hessian` under `parameters` (``GPTQParameters``; the dampening is retried ×10 as on the CPU).
    public func factorize(_ hessian: DeviceHessian, parameters: GPTQParameters = GPTQParameters(),
                          tensor: String = "tensor") throws -> DeviceGPTQFactorization {
        let n = hessian.columns
        if n % NVFP4Quantizer.blockSize != 0 { throw NVFP4Error.columnsNotMultipleOf16(tensor: tensor, cols: n) }
        guard parameters.blockSize >= 1, parameters.blockSize <= Self.maxBlockSize else {
            throw GPTQError.invalidParameters(tensor: tensor, reason: "block size \(parameters.blockSize) is outside 1...\(Self.maxBlockSize) on CUDA")
        }
        guard parameters.dampening >= 0, parameters.dampening.isFinite, parameters.dampeningRetries >= 0 else {
            throw GPTQError.invalidParameters(tensor: tensor, reason: "dampening \(parameters.dampening) or retries \(parameters.dampeningRetries) out of range")
        }
        return try device.exclusive {
            let stream = device.computeStream
            let scale = hessian.rowsSeen > 0 ? 2 / Double(hessian.rowsSeen) : 0
            // The diagonal on the host: dead inputs, the order and the dampening come from it.
            let diagonalBuffer = try device.workspace.device("gptq.diagonal", bytes: n * 4)
            try device.kernels.gptqDiagonal.launch(grid: gridStride(n), block: (256, 1, 1), stream: stream,
                                                   arguments: [.pointer(hessian.sum.address), .int64(Int64(n)), .pointer(diagonalBuffer.address)])
            var raw = [Float](repeating: 0, count: n)
            try raw.withUnsafeMutableBytes { try device.download(diagonalBuffer, byteCount: n * 4, into: $0, stream: stream) }
            if let index = raw.firstIndex(where: { !$0.isFinite }) { throw GPTQError.nonFiniteHessian(tensor: tensor, row: index) }
            let measured = raw.map { Double($0) * scale }
            var diagonal = measured
            let dead = diagonal.map { $0 == 0 }
            for i in 0..<n where dead[i] { diagonal[i] = 1 }
            let order: [Int] = parameters.activationOrder
                ? (0..<n).sorted { diagonal[$0] > diagonal[$1] || (diagonal[$0] == diagonal[$1] && $0 < $1) }
                : Array(0..<n)
            var position = [Int32](repeating: 0, count: n)
            for (index, column) in order.enumerated() { position[column] = Int32(index) }
            let meanDiagonal = diagonal.reduce(0, +) / Double(n)

            let orderBuffer = try DeviceBuffer(context: device.context, byteCount: n * 4)
            let positionBuffer = try DeviceBuffer(context: device.context, byteCount: n * 4)
            let deadBuffer = try DeviceBuffer(context: device.context, byteCount: n)
            let diagonalF64 = try device.workspace.device("gptq.diagonal.f64", bytes: n * 8)
            try order.map { Int32($0) }.withUnsafeBytes { try device.upload($0, to: orderBuffer, stream: stream) }
            try position.withUnsafeBytes { try device.upload($0, to: positionBuffer, stream: stream) }
            try dead.map { UInt8($0 ? 1 : 0) }.withUnsafeBytes { try device.upload($0, to: deadBuffer, stream: stream) }
            try diagonal.withUnsafeBytes { try device.upload($0, to: diagonalF64, stream: stream) }

            let matrix = try device.workspace.device("gptq.matrix", bytes: n * n * 8)
            var dampening = parameters.dampening
            for attempt in 0...parameters.dampeningRetries {
                if attempt > 0 { dampening *= 10 }
                try device.kernels.gptqPrepare.launch(
                    grid: gridStride(n * n), block: (256, 1, 1), stream: stream,
                    arguments: [.pointer(hessian.sum.address), .int64(Int64(n)), .int32(Int32(DeviceHessian.tile)),
                                .pointer(orderBuffer.address), .pointer(diagonalF64.address), .double(scale),
                                .double(dampening * meanDiagonal), .pointer(matrix.address)])
                guard try solver.factorLower(f64: matrix.address, order: n, stream: stream) else { continue }
                let factor = try DeviceBuffer(context: device.context, byteCount: n * n * 4)
                try device.kernels.gptqExtractUpper.launch(grid: gridStride(n * n), block: (256, 1, 1), stream: stream,
                                                           arguments: [.pointer(matrix.address), .int64(Int64(n)), .pointer(factor.address)])
                return DeviceGPTQFactorization(columns: n, dead: dead, order: order, diagonal: measured, dampening: dampening, factor: factor,
                                               orderBuffer: orderBuffer, positionBuffer: positionBuffer, deadBuffer: deadBuffer,
                                               blockSize: parameters.blockSize)
            }
            throw GPTQError.hessianNotPositiveDefinite(tensor: tensor, dampening: dampening)
        }
    }

    /// Where the weight to quantize is: BF16 already on the device (a layer's loaded weights), or F32 on the host.
    public enum WeightInput {
        case deviceBF16(CUdeviceptr)
        case hostF32(UnsafeBufferPointer<Float>)
    }

    /// Quantizes one weight `[rows, cols]` with the factorization of its input's Hessian, under round-to-nearest's
    /// block scales or the `blockScales` given, against `weightScale2` (its fused group's `S2`).
    public func quantize(_ weight: WeightInput, rows: Int, cols: Int, factorization: DeviceGPTQFactorization,
                         weightScale2 s2: Float, blockScales given: [UInt8]? = nil, tensor: String = "tensor") throws -> NVFP4Weight {
        if cols % NVFP4Quantizer.blockSize != 0 { throw NVFP4Error.columnsNotMultipleOf16(tensor: tensor, cols: cols) }
        if factorization.columns != cols {
            throw GPTQError.hessianShapeMismatch(tensor: tensor, columns: cols, hessianElements: factorization.columns * factorization.columns)
        }
        if s2 == 0 { throw NVFP4Error.allZero(tensor: tensor) }
        if !(s2 > 0) || !s2.isFinite { throw GPTQError.invalidWeightScale2(tensor: tensor, value: s2) }
        let blocksPerRow = cols / 16
        if let given, given.count != rows * blocksPerRow {
            throw NVFP4Error.sizeMismatch(tensor: tensor + " (block scales)", expected: rows * blocksPerRow, actual: given.count)
        }
        var hostScales = given
        if case .hostF32(let values) = weight {
            if values.count != rows * cols { throw NVFP4Error.sizeMismatch(tensor: tensor, expected: rows * cols, actual: values.count) }
            if let index = values.firstIndex(where: { !$0.isFinite }) { throw NVFP4Error.nonFinite(tensor: tensor, row: index / cols) }
            if hostScales == nil {
                // Round-to-nearest's block scales, as GPTQQuantizer computes them.
                let d = 6 * s2
                hostScales = (0..<(rows * blocksPerRow)).map { block in
                    var blockAmax: Float = 0
                    for k in 0..<16 { blockAmax = max(blockAmax, abs(values[block * 16 + k])) }
                    return NVFP4Quantizer.blockScaleCode(blockAmax: blockAmax, d: d)
                }
            }
        }
        var packed = [UInt8](repeating: 0, count: rows * cols / 2)
        var scales = [UInt8](repeating: 0, count: rows * blocksPerRow)
        try device.exclusive {
            let stream = device.computeStream
            let n = cols
            let scaleBuffer = try device.workspace.device("gptq.scales", bytes: rows * blocksPerRow)
            let packedBuffer = try device.workspace.device("gptq.packed", bytes: rows * cols / 2)
            let working = try device.workspace.device("gptq.working", bytes: rows * cols * 4)
            let codes = try device.workspace.device("gptq.codes", bytes: rows * cols)
            let before = try device.workspace.device("gptq.before", bytes: factorization.blockSize * rows * 4)
            let gatherGrid = ((cols + 31) / 32, (rows + 31) / 32, 1)
            switch weight {
            case .deviceBF16(let address):
                if let hostScales {
                    try hostScales.withUnsafeBytes { try device.upload($0, to: scaleBuffer, stream: stream) }
                } else {
                    // Round-to-nearest's kernel gives the block scales; its codes (in packedBuffer) are overwritten below.
                    try device.kernels.nvfp4Quantize.launch(grid: ((rows * blocksPerRow + 255) / 256, 1, 1), block: (256, 1, 1), stream: stream,
                                                            arguments: [.pointer(address), .pointer(packedBuffer.address), .pointer(scaleBuffer.address),
                                                                        .float(s2), .int64(Int64(rows * blocksPerRow))])
                }
                try device.kernels.gptqGatherBF16.launch(grid: gatherGrid, block: (32, 8, 1), stream: stream,
                                                         arguments: [.pointer(address), .int32(Int32(rows)), .int32(Int32(cols)),
                                                                     .pointer(factorization.orderBuffer.address),
                                                                     .pointer(factorization.deadBuffer.address), .pointer(working.address)])
            case .hostF32(let values):
                try hostScales!.withUnsafeBytes { try device.upload($0, to: scaleBuffer, stream: stream) }
                let staged = try device.workspace.device("gptq.weight.f32", bytes: rows * cols * 4)
                try device.upload(UnsafeRawBufferPointer(values), to: staged, stream: stream)
                try device.kernels.gptqGatherF32.launch(grid: gatherGrid, block: (32, 8, 1), stream: stream,
                                                        arguments: [.pointer(staged.address), .int32(Int32(rows)), .int32(Int32(cols)),
                                                                    .pointer(factorization.orderBuffer.address),
                                                                    .pointer(factorization.deadBuffer.address), .pointer(working.address)])
            }
            let v = factorization.factor.address
            let differences = try device.workspace.device("gptq.differences", bytes: rows * cols * 4)
            let threads = Self.rowsPerBlock
            for start in stride(from: 0, to: n, by: factorization.blockSize) {
                let end = min(start + factorization.blockSize, n)
                if start > 0 {
                    // before[rows, width] = (W − Q)[:, ..<start] · V[..<start, start..<end], column-major.
                    let product = MatrixProduct(m: rows, n: end - start, k: start, lda: rows, ldb: n, ldc: rows, inputs: .float32,
                                                tf32: tf32Products)
                    try device.blas.multiply(product, a: differences.address, b: v + CUdeviceptr(start * n * 4), c: before.address,
                                             alpha: 1, beta: 0, stream: stream)
                }
                try device.kernels.gptqBlock.launch(
                    grid: ((rows + threads - 1) / threads, 1, 1), block: (threads, 1, 1), sharedMemoryBytes: (end - start) * threads * 4,
                    stream: stream,
                    arguments: [.pointer(working.address), .pointer(differences.address), .pointer(start > 0 ? before.address : 0),
                                .int32(Int32(rows)), .int64(Int64(n)), .int32(Int32(start)), .int32(Int32(end)), .pointer(v),
                                .pointer(scaleBuffer.address), .int32(Int32(blocksPerRow)), .pointer(factorization.orderBuffer.address),
                                .float(s2), .pointer(codes.address)])
            }
            try device.kernels.gptqPack.launch(grid: gridStride(rows * cols / 2), block: (256, 1, 1), stream: stream,
                                               arguments: [.pointer(codes.address), .pointer(factorization.positionBuffer.address),
                                                           .int32(Int32(rows)), .int32(Int32(cols)), .pointer(packedBuffer.address)])
            try packed.withUnsafeMutableBytes { try device.download(packedBuffer, byteCount: $0.count, into: $0, stream: stream) }
            try scales.withUnsafeMutableBytes { try device.download(scaleBuffer, byteCount: $0.count, into: $0, stream: stream) }
        }
        return NVFP4Weight(rows: rows, cols: cols, packed: packed, blockScales: scales, weightScale2: s2)
    }
}
