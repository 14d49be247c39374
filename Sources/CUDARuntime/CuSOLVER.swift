import Foundation

/// cuSOLVER's dense Cholesky factorization in FP64 (`cusolverDnXpotrf`), resolved with `dlsym`: what GPTQ needs, in place
/// on a column-major device matrix, on a given stream.
// @unchecked: C function pointers and handles fixed at init; the scratch buffers are guarded by `lock`.
public final class CuSOLVERDense: @unchecked Sendable {
    public let library: LoadedLibrary
    public let context: CUDAContext

    typealias Create = @convention(c) (UnsafeMutablePointer<OpaquePointer?>) -> Int32
    typealias Destroy = @convention(c) (OpaquePointer?) -> Int32
    typealias SetStream = @convention(c) (OpaquePointer?, OpaquePointer?) -> Int32
    typealias PotrfBufferSize = @convention(c) (OpaquePointer?, OpaquePointer?, Int32, Int64, Int32, UnsafeRawPointer?, Int64, Int32,
                                                UnsafeMutablePointer<Int>, UnsafeMutablePointer<Int>) -> Int32
    typealias Potrf = @convention(c) (OpaquePointer?, OpaquePointer?, Int32, Int64, Int32, UnsafeMutableRawPointer?, Int64, Int32,
                                      UnsafeMutableRawPointer?, Int, UnsafeMutableRawPointer?, Int, UnsafeMutableRawPointer?) -> Int32

    let cusolverDnCreate: Create
    let cusolverDnDestroy: Destroy
    let cusolverDnSetStream: SetStream
    let cusolverDnCreateParams: Create
    let cusolverDnDestroyParams: Destroy
    let cusolverDnXpotrfBufferSize: PotrfBufferSize
    let cusolverDnXpotrf: Potrf

    let handle: OpaquePointer?
    let params: OpaquePointer?
    let lock = NSLock()
    var deviceScratch: DeviceBuffer?
    var hostScratch: UnsafeMutableRawBufferPointer?
    /// `info` of the last call, on the device (one Int32).
    let info: DeviceBuffer

    /// cublasFillMode_t and cudaDataType values.
    static let fillLower: Int32 = 0
    static let float64: Int32 = 1

    public init(context: CUDAContext, locator: CUDALibraryLocator = CUDALibraryLocator()) throws {
        let library = try locator.open(.cusolver)
        self.library = library
        self.context = context
        func resolve<T>(_ name: String, as type: T.Type) throws -> T { unsafeBitCast(try library.symbol(name), to: type) }
        cusolverDnCreate = try resolve("cusolverDnCreate", as: Create.self)
        cusolverDnDestroy = try resolve("cusolverDnDestroy", as: Destroy.self)
        cusolverDnSetStream = try resolve("cusolverDnSetStream", as: SetStream.self)
        cusolverDnCreateParams = try resolve("cusolverDnCreateParams", as: Create.self)
        cusolverDnDestroyParams = try resolve("cusolverDnDestroyParams", as: Destroy.self)
        cusolverDnXpotrfBufferSize = try resolve("cusolverDnXpotrf_bufferSize", as: PotrfBufferSize.self)
        cusolverDnXpotrf = try resolve("cusolverDnXpotrf", as: Potrf.self)
        var handle: OpaquePointer?
        try Self.check(cusolverDnCreate(&handle), "cusolverDnCreate")
        self.handle = handle
        var params: OpaquePointer?
        try Self.check(cusolverDnCreateParams(&params), "cusolverDnCreateParams")
        self.params = params
        info = try DeviceBuffer(context: context, byteCount: 4)
    }

    deinit {
        hostScratch?.deallocate()
        _ = cusolverDnDestroyParams(params)
        _ = cusolverDnDestroy(handle)
    }

    static func check(_ code: Int32, _ call: @autoclosure () -> String) throws {
        guard code != 0 else { return }
        throw CUDAError.callFailed(call: call(), code: code, message: statusName(code))
    }

    static func statusName(_ code: Int32) -> String? {
        [1: "CUSOLVER_STATUS_NOT_INITIALIZED", 2: "CUSOLVER_STATUS_ALLOC_FAILED", 3: "CUSOLVER_STATUS_INVALID_VALUE",
         4: "CUSOLVER_STATUS_ARCH_MISMATCH", 6: "CUSOLVER_STATUS_EXECUTION_FAILED", 7: "CUSOLVER_STATUS_INTERNAL_ERROR",
         15: "CUSOLVER_STATUS_NOT_SUPPORTED"][code]
    }

    /// Scratch of at least the sizes asked, grown and kept across calls.
    private func scratch(deviceBytes: Int, hostBytes: Int) throws -> (device: CUdeviceptr, host: UnsafeMutableRawPointer?) {
        if (deviceScratch?.byteCount ?? 0) < deviceBytes {
            try context.synchronize()  // queued work may still use the smaller buffer
            deviceScratch = try DeviceBuffer(context: context, byteCount: max(deviceBytes, 256))
        }
        if (hostScratch?.count ?? 0) < hostBytes {
            hostScratch?.deallocate()
            hostScratch = .allocate(byteCount: hostBytes, alignment: 64)
        }
        return (deviceScratch!.address, hostScratch?.baseAddress)
    }

    /// Replaces the lower triangle of the symmetric FP64 matrix at `matrix` (column-major `n × n`) by its Cholesky
    /// factor `L` (`A = LLᵀ`). Waits for the stream and returns false when the matrix is not positive definite.
    public func factorLower(f64 matrix: CUdeviceptr, order n: Int, stream: CUDAStream) throws -> Bool {
        lock.lock()
        defer { lock.unlock() }
        try Self.check(cusolverDnSetStream(handle, stream.handle), "cusolverDnSetStream")
        let a = UnsafeMutableRawPointer(bitPattern: UInt(matrix))
        var deviceBytes = 0, hostBytes = 0
        try Self.check(cusolverDnXpotrfBufferSize(handle, params, Self.fillLower, Int64(n), Self.float64, a, Int64(n), Self.float64,
                                                  &deviceBytes, &hostBytes), "cusolverDnXpotrf_bufferSize(n: \(n))")
        let buffers = try scratch(deviceBytes: deviceBytes, hostBytes: hostBytes)
        try Self.check(cusolverDnXpotrf(handle, params, Self.fillLower, Int64(n), Self.float64, a, Int64(n), Self.float64,
                                        UnsafeMutableRawPointer(bitPattern: UInt(buffers.device)), deviceBytes, buffers.host, hostBytes,
                                        UnsafeMutableRawPointer(bitPattern: UInt(info.address))), "cusolverDnXpotrf(n: \(n))")
        return try readInfo(stream: stream, call: "cusolverDnXpotrf(n: \(n))") == 0
    }

    /// `info` after the stream's work: 0 on success, > 0 for a numerical failure; < 0 (a bad argument) throws.
    private func readInfo(stream: CUDAStream, call: String) throws -> Int32 {
        var value: Int32 = 0
        try withUnsafeMutableBytes(of: &value) {
            try info.copy(to: $0, stream: stream)
            try stream.synchronize()
        }
        if value < 0 {
            throw CUDAError.callFailed(call: call, code: value, message: "argument \(-value) is invalid")
        }
        return value
    }
}
