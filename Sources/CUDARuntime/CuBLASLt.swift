import Foundation

/// cuBLASLt, resolved with `dlsym`: row-major BF16 GEMMs `Y = X · Wᵀ` with FP32 accumulation.
// @unchecked: C function pointers and handle fixed at init; the plan cache is guarded by `lock`.
public final class CuBLASLt: @unchecked Sendable {
    public let library: LoadedLibrary
    public let context: CUDAContext

    typealias Create = @convention(c) (UnsafeMutablePointer<OpaquePointer?>) -> Int32
    typealias Destroy = @convention(c) (OpaquePointer?) -> Int32
    typealias DescCreate = @convention(c) (UnsafeMutablePointer<OpaquePointer?>, Int32, Int32) -> Int32
    typealias SetAttribute = @convention(c) (OpaquePointer?, Int32, UnsafeRawPointer, Int) -> Int32
    typealias LayoutCreate = @convention(c) (UnsafeMutablePointer<OpaquePointer?>, Int32, UInt64, UInt64, Int64) -> Int32
    typealias PreferenceCreate = @convention(c) (UnsafeMutablePointer<OpaquePointer?>) -> Int32
    typealias Heuristic = @convention(c) (OpaquePointer?, OpaquePointer?, OpaquePointer?, OpaquePointer?, OpaquePointer?, OpaquePointer?,
                                          OpaquePointer?, Int32, UnsafeMutableRawPointer, UnsafeMutablePointer<Int32>) -> Int32
    typealias Matmul = @convention(c) (OpaquePointer?, OpaquePointer?, UnsafeRawPointer, UnsafeRawPointer?, OpaquePointer?,
                                       UnsafeRawPointer?, OpaquePointer?, UnsafeRawPointer, UnsafeRawPointer?, OpaquePointer?,
                                       UnsafeMutableRawPointer?, OpaquePointer?, UnsafeRawPointer?, UnsafeMutableRawPointer?, Int,
                                       OpaquePointer?) -> Int32

    let cublasLtCreate: Create
    let cublasLtDestroy: Destroy
    let cublasLtMatmulDescCreate: DescCreate
    let cublasLtMatmulDescSetAttribute: SetAttribute
    let cublasLtMatmulDescDestroy: Destroy
    let cublasLtMatrixLayoutCreate: LayoutCreate
    let cublasLtMatrixLayoutDestroy: Destroy
    let cublasLtMatmulPreferenceCreate: PreferenceCreate
    let cublasLtMatmulPreferenceSetAttribute: SetAttribute
    let cublasLtMatmulPreferenceDestroy: Destroy
    let cublasLtMatmulAlgoGetHeuristic: Heuristic
    let cublasLtMatmul: Matmul

    let handle: OpaquePointer?
    /// Scratch space cuBLASLt may use; 32 MiB is what its Hopper kernels ask for at most.
    public let workspace: DeviceBuffer
    let lock = NSLock()
    var plans: [GEMMShape: Plan] = [:]
    var productPlans: [MatrixProduct.Key: Plan] = [:]

    /// Data types (cudaDataType) and compute type (cublasComputeType_t) values.
    static let bfloat16: Int32 = 14
    static let float32: Int32 = 0
    static let computeFloat32: Int32 = 68
    /// CUBLAS_COMPUTE_32F_FAST_TF32: FP32 operands rounded to TF32 on the tensor cores.
    static let computeFastTF32: Int32 = 77

    public init(context: CUDAContext, locator: CUDALibraryLocator = CUDALibraryLocator(), workspaceBytes: Int = 32 << 20) throws {
        let library = try locator.open(.cublasLt)
        self.library = library
        self.context = context
        func resolve<T>(_ name: String, as type: T.Type) throws -> T { unsafeBitCast(try library.symbol(name), to: type) }
        cublasLtCreate = try resolve("cublasLtCreate", as: Create.self)
        cublasLtDestroy = try resolve("cublasLtDestroy", as: Destroy.self)
        cublasLtMatmulDescCreate = try resolve("cublasLtMatmulDescCreate", as: DescCreate.self)
        cublasLtMatmulDescSetAttribute = try resolve("cublasLtMatmulDescSetAttribute", as: SetAttribute.self)
        cublasLtMatmulDescDestroy = try resolve("cublasLtMatmulDescDestroy", as: Destroy.self)
        cublasLtMatrixLayoutCreate = try resolve("cublasLtMatrixLayoutCreate", as: LayoutCreate.self)
        cublasLtMatrixLayoutDestroy = try resolve("cublasLtMatrixLayoutDestroy", as: Destroy.self)
        cublasLtMatmulPreferenceCreate = try resolve("cublasLtMatmulPreferenceCreate", as: PreferenceCreate.self)
        cublasLtMatmulPreferenceSetAttribute = try resolve("cublasLtMatmulPreferenceSetAttribute", as: SetAttribute.self)
        cublasLtMatmulPreferenceDestroy = try resolve("cublasLtMatmulPreferenceDestroy", as: Destroy.self)
        cublasLtMatmulAlgoGetHeuristic = try resolve("cublasLtMatmulAlgoGetHeuristic", as: Heuristic.self)
        cublasLtMatmul = try resolve("cublasLtMatmul", as: Matmul.self)
        var handle: OpaquePointer?
        try Self.check(cublasLtCreate(&handle), "cublasLtCreate")
        self.handle = handle
        workspace = try DeviceBuffer(context: context, byteCount: workspaceBytes)
    }

    deinit {
        for plan in plans.values { plan.destroy(self) }
        for plan in productPlans.values { plan.destroy(self) }
        _ = cublasLtDestroy(handle)
    }

    static func check(_ code: Int32, _ call: @autoclosure () -> String) throws {
        guard code != 0 else { return }
        throw CUDAError.callFailed(call: call(), code: code, message: statusName(code))
    }

    static func statusName(_ code: Int32) -> String? {
        [1: "CUBLAS_STATUS_NOT_INITIALIZED", 3: "CUBLAS_STATUS_ALLOC_FAILED", 7: "CUBLAS_STATUS_INVALID_VALUE",
         8: "CUBLAS_STATUS_ARCH_MISMATCH", 11: "CUBLAS_STATUS_MAPPING_ERROR", 13: "CUBLAS_STATUS_EXECUTION_FAILED",
         14: "CUBLAS_STATUS_INTERNAL_ERROR", 15: "CUBLAS_STATUS_NOT_SUPPORTED"][code]
    }

    /// The descriptors and chosen algorithm of one GEMM shape, built once.
    final class Plan {
        var operation: OpaquePointer?
        var weightLayout: OpaquePointer?
        var inputLayout: OpaquePointer?
        var outputLayout: OpaquePointer?
        var algorithm = [UInt8](repeating: 0, count: 1024)

        func destroy(_ lt: CuBLASLt) {
            _ = lt.cublasLtMatmulDescDestroy(operation)
            _ = lt.cublasLtMatrixLayoutDestroy(weightLayout)
            _ = lt.cublasLtMatrixLayoutDestroy(inputLayout)
            _ = lt.cublasLtMatrixLayoutDestroy(outputLayout)
        }
    }

    func plan(for shape: GEMMShape) throws -> Plan {
        lock.lock()
        defer { lock.unlock() }
        if let plan = plans[shape] { return plan }
        let plan = Plan()
        // Row-major Y[M,N] = X[M,K]·W[N,K]ᵀ is column-major Yᵀ[N,M] = (W as K×N)ᵀ · (X as K×M).
        try Self.check(cublasLtMatmulDescCreate(&plan.operation, Self.computeFloat32, Self.float32), "cublasLtMatmulDescCreate")
        var transposed: Int32 = 1
        var plain: Int32 = 0
        try Self.check(cublasLtMatmulDescSetAttribute(plan.operation, 3, &transposed, 4), "cublasLtMatmulDescSetAttribute(TRANSA)")
        try Self.check(cublasLtMatmulDescSetAttribute(plan.operation, 4, &plain, 4), "cublasLtMatmulDescSetAttribute(TRANSB)")
        let (m, n, k) = (UInt64(shape.rows), UInt64(shape.outputs), UInt64(shape.inner))
        try Self.check(cublasLtMatrixLayoutCreate(&plan.weightLayout, Self.bfloat16, k, n, Int64(k)), "cublasLtMatrixLayoutCreate(W)")
        try Self.check(cublasLtMatrixLayoutCreate(&plan.inputLayout, Self.bfloat16, k, m, Int64(k)), "cublasLtMatrixLayoutCreate(X)")
        try Self.check(cublasLtMatrixLayoutCreate(&plan.outputLayout, shape.floatOutput ? Self.float32 : Self.bfloat16, n, m, Int64(n)),
                       "cublasLtMatrixLayoutCreate(Y)")
        try chooseAlgorithm(for: plan, alignments: nil, description: "\(shape)")
        plans[shape] = plan
        return plan
    }

    /// `Y[rows, outputs] = X[rows, inner] · W[outputs, inner]ᵀ (+ Y when accumulate)`, BF16 inputs, FP32 accumulation,
    /// BF16 output (or F32 when the shape says so). All row-major and dense.
    public func matmul(_ shape: GEMMShape, input: CUdeviceptr, weight: CUdeviceptr, output: CUdeviceptr, accumulate: Bool = false,
                       stream: CUDAStream) throws {
        try shape.validate()
        let plan = try plan(for: shape)
        try Self.check(launch(plan, a: weight, b: input, c: output, alpha: 1, beta: accumulate ? 1 : 0, stream: stream),
                       "cublasLtMatmul(\(shape))")
    }

    /// One `cublasLtMatmul` of `plan`: `C = alpha·op(A)·op(B) + beta·C` in place, with A in the plan's weight layout
    /// and B in its input layout. Returns the status.
    func launch(_ plan: Plan, a: CUdeviceptr, b: CUdeviceptr, c: CUdeviceptr, alpha: Float, beta: Float,
                stream: CUDAStream) -> Int32 {
        var alpha = alpha, beta = beta
        return plan.algorithm.withUnsafeBytes { algorithm in
            cublasLtMatmul(handle, plan.operation, &alpha, UnsafeRawPointer(bitPattern: UInt(a)), plan.weightLayout,
                           UnsafeRawPointer(bitPattern: UInt(b)), plan.inputLayout, &beta,
                           UnsafeRawPointer(bitPattern: UInt(c)), plan.outputLayout,
                           UnsafeMutableRawPointer(bitPattern: UInt(c)), plan.outputLayout, algorithm.baseAddress,
                           UnsafeMutableRawPointer(bitPattern: UInt(workspace.address)), workspace.byteCount, stream.handle)
        }
    }
}

extension CuBLASLt {
    /// `C = alpha·op(A)·op(B) + beta·C` for the column-major ``MatrixProduct`` `product`, FP32 accumulation and output.
    public func multiply(_ product: MatrixProduct, a: CUdeviceptr, b: CUdeviceptr, c: CUdeviceptr, alpha: Float, beta: Float,
                         stream: CUDAStream) throws {
        try product.validate()
        let key = MatrixProduct.Key(product: product, alignments: [a, b, c].map(MatrixProduct.alignment(of:)))
        let plan = try plan(for: key)
        try Self.check(launch(plan, a: a, b: b, c: c, alpha: alpha, beta: beta, stream: stream), "cublasLtMatmul(\(product))")
    }

    func plan(for key: MatrixProduct.Key) throws -> Plan {
        lock.lock()
        defer { lock.unlock() }
        if let plan = productPlans[key] { return plan }
        let product = key.product
        let plan = Plan()
        try Self.check(cublasLtMatmulDescCreate(&plan.operation, product.tf32 ? Self.computeFastTF32 : Self.computeFloat32, Self.float32),
                       "cublasLtMatmulDescCreate")
        var transposeA: Int32 = product.transposeA ? 1 : 0
        var transposeB: Int32 = product.transposeB ? 1 : 0
        try Self.check(cublasLtMatmulDescSetAttribute(plan.operation, 3, &transposeA, 4), "cublasLtMatmulDescSetAttribute(TRANSA)")
        try Self.check(cublasLtMatmulDescSetAttribute(plan.operation, 4, &transposeB, 4), "cublasLtMatmulDescSetAttribute(TRANSB)")
        let input = product.inputs == .bfloat16 ? Self.bfloat16 : Self.float32
        let (m, n, k) = (UInt64(product.m), UInt64(product.n), UInt64(product.k))
        // Layouts describe the stored matrices, before op(): A is m×k (k×m transposed), B is k×n (n×k transposed).
        try Self.check(cublasLtMatrixLayoutCreate(&plan.weightLayout, input, product.transposeA ? k : m, product.transposeA ? m : k,
                                                  Int64(product.lda)), "cublasLtMatrixLayoutCreate(A)")
        try Self.check(cublasLtMatrixLayoutCreate(&plan.inputLayout, input, product.transposeB ? n : k, product.transposeB ? k : n,
                                                  Int64(product.ldb)), "cublasLtMatrixLayoutCreate(B)")
        try Self.check(cublasLtMatrixLayoutCreate(&plan.outputLayout, Self.float32, m, n, Int64(product.ldc)), "cublasLtMatrixLayoutCreate(C)")
        // C is also D, so D's alignment is C's.
        try chooseAlgorithm(for: plan, alignments: key.alignments + [key.alignments[2]], description: "\(product)")
        productPlans[key] = plan
        return plan
    }

    /// Asks cuBLASLt's heuristic for the plan's algorithm within the workspace, and, when `alignments` (bytes of A, B, C,
    /// D) are given, for addresses only that aligned (sub-matrices start at offsets the default 256 bytes does not promise).
    func chooseAlgorithm(for plan: Plan, alignments: [Int]?, description: String) throws {
        var preference: OpaquePointer?
        try Self.check(cublasLtMatmulPreferenceCreate(&preference), "cublasLtMatmulPreferenceCreate")
        defer { _ = cublasLtMatmulPreferenceDestroy(preference) }
        var workspaceBytes = UInt64(workspace.byteCount)
        try Self.check(cublasLtMatmulPreferenceSetAttribute(preference, 1, &workspaceBytes, 8),
                       "cublasLtMatmulPreferenceSetAttribute(MAX_WORKSPACE_BYTES)")
        for (index, alignment) in (alignments ?? []).enumerated() {  // MIN_ALIGNMENT_{A,B,C,D}_BYTES are 5...8
            var bytes = UInt32(alignment)
            try Self.check(cublasLtMatmulPreferenceSetAttribute(preference, Int32(5 + index), &bytes, 4),
                           "cublasLtMatmulPreferenceSetAttribute(MIN_ALIGNMENT \(index))")
        }
        var found: Int32 = 0
        try plan.algorithm.withUnsafeMutableBytes { result in
            try Self.check(cublasLtMatmulAlgoGetHeuristic(handle, plan.operation, plan.weightLayout, plan.inputLayout, plan.outputLayout,
                                                          plan.outputLayout, preference, 1, result.baseAddress!, &found),
                           "cublasLtMatmulAlgoGetHeuristic(\(description))")
        }
        guard found > 0 else {
            throw CUDAError.callFailed(call: "cublasLtMatmulAlgoGetHeuristic(\(description))", code: 15, message: "no algorithm found")
        }
    }
}

/// A column-major product `C[m, n] = α·op(A)·op(B) + β·C` in cuBLAS's conventions (`op(A)` is `m × k`, `op(B)` is
/// `k × n`, leading dimensions in elements), with BF16 or FP32 inputs and an FP32 `C`: GPTQ's Hessian sums `XᵀX`
/// and its error updates, where operands are sub-matrices of larger ones.
public struct MatrixProduct: Hashable, Sendable, CustomStringConvertible {
    public enum Inputs: String, Hashable, Sendable {
        case bfloat16, float32

        var byteWidth: Int { self == .bfloat16 ? 2 : 4 }
    }

    public let m: Int
    public let n: Int
    public let k: Int
    public let transposeA: Bool
    public let transposeB: Bool
    public let lda: Int
    public let ldb: Int
    public let ldc: Int
    public let inputs: Inputs
    /// FP32 inputs multiplied as TF32 on the tensor cores (CUBLAS_COMPUTE_32F_FAST_TF32).
    public let tf32: Bool

    public init(m: Int, n: Int, k: Int, transposeA: Bool = false, transposeB: Bool = false, lda: Int, ldb: Int, ldc: Int,
                inputs: Inputs, tf32: Bool = false) {
        self.m = m
        self.n = n
        self.k = k
        self.transposeA = transposeA
        self.transposeB = transposeB
        self.lda = lda
        self.ldb = ldb
        self.ldc = ldc
        self.inputs = inputs
        self.tf32 = tf32
    }

    public var description: String {
        "\(m)x\(n)x\(k) \(inputs.rawValue)\(tf32 ? " as tf32" : "") A\(transposeA ? "ᵀ" : "") lda \(lda), B\(transposeB ? "ᵀ" : "") ldb \(ldb), ldc \(ldc)"
    }

    /// 2·m·n·k.
    public var flops: Double { 2 * Double(m) * Double(n) * Double(k) }

    /// The plan cache key: the product and the alignment of its three addresses.
    struct Key: Hashable {
        let product: MatrixProduct
        let alignments: [Int]
    }

    /// The largest power of two up to 256 that divides `address`.
    static func alignment(of address: CUdeviceptr) -> Int {
        address == 0 ? 256 : min(256, 1 << address.trailingZeroBitCount)
    }

    public func validate() throws {
        let call = "cublasLtMatmul(\(self))"
        guard m > 0, n > 0, k > 0 else { throw CUDAError.invalidArgument(call: call, reason: "every dimension must be positive") }
        guard [m, n, k, lda, ldb, ldc].allSatisfy({ $0 <= Int(Int32.max) }) else {
            throw CUDAError.invalidArgument(call: call, reason: "a dimension exceeds 2^31-1")
        }
        guard lda >= (transposeA ? k : m), ldb >= (transposeB ? n : k), ldc >= m else {
            throw CUDAError.invalidArgument(call: call, reason: "a leading dimension is smaller than its matrix's rows")
        }
    }
}

/// The shape of a row-major GEMM `Y[rows, outputs] = X[rows, inner] · W[outputs, inner]ᵀ`.
public struct GEMMShape: Hashable, Sendable, CustomStringConvertible {
    public let rows: Int
    public let inner: Int
    public let outputs: Int
    /// F32 output instead of BF16 (logits).
    public let floatOutput: Bool

    public init(rows: Int, inner: Int, outputs: Int, floatOutput: Bool = false) {
        self.rows = rows
        self.inner = inner
        self.outputs = outputs
        self.floatOutput = floatOutput
    }

    public var description: String { "[\(rows)x\(inner)]·[\(outputs)x\(inner)]ᵀ" }

    /// 2·M·N·K.
    public var flops: Double { 2 * Double(rows) * Double(inner) * Double(outputs) }

    /// cuBLASLt takes 32-bit sizes and needs 16-byte aligned BF16 rows for its tensor-core kernels.
    public func validate() throws {
        let call = "cublasLtMatmul(\(self))"
        guard rows > 0, inner > 0, outputs > 0 else {
            throw CUDAError.invalidArgument(call: call, reason: "every dimension must be positive")
        }
        guard rows <= Int(Int32.max), inner <= Int(Int32.max), outputs <= Int(Int32.max) else {
            throw CUDAError.invalidArgument(call: call, reason: "a dimension exceeds 2^31-1")
        }
        guard inner % 8 == 0, outputs % 8 == 0 else {
            throw CUDAError.invalidArgument(call: call, reason: "inner and outputs must be multiples of 8 (16-byte BF16 rows)")
        }
    }
}
