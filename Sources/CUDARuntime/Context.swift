import Foundation

/// One GPU's primary context, made current on whichever thread calls into it.
// @unchecked: wraps C handles (raw pointers, which are not Sendable) that never change after init; the CUDA
// driver and libraries are thread-safe for these calls.
public final class CUDAContext: @unchecked Sendable {
    public let driver: CUDADriver
    public let ordinal: Int
    public let name: String
    public let computeCapability: (major: Int, minor: Int)
    public let multiprocessorCount: Int
    /// Most bytes of device memory this process may hold through ``DeviceBuffer``s (`--gpu-memory`); nil: what the
    /// driver reports free. On a GB10 the GPU's memory is the host's, so "free" is not ours to fill.
    public let memoryLimit: Int?
    let device: Int32
    let context: OpaquePointer?
    private let allocation = NSLock()
    private var allocated = 0

    /// Retains the primary context of device `ordinal`.
    public init(driver: CUDADriver, ordinal: Int, memoryLimit: Int? = nil) throws {
        self.driver = driver
        self.ordinal = ordinal
        if let memoryLimit, memoryLimit <= 0 {
            throw CUDAError.invalidArgument(call: "CUDAContext", reason: "a GPU memory limit of \(memoryLimit) bytes is not positive")
        }
        self.memoryLimit = memoryLimit
        try validateDeviceOrdinal(ordinal, deviceCount: try driver.deviceCount())
        var device: Int32 = 0
        try driver.check(driver.cuDeviceGet(&device, Int32(ordinal)), "cuDeviceGet(\(ordinal))")
        self.device = device
        var nameBytes = [CChar](repeating: 0, count: 256)
        try driver.check(driver.cuDeviceGetName(&nameBytes, 255, device), "cuDeviceGetName")
        name = nameBytes.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        func attribute(_ attribute: CUDADeviceAttribute) throws -> Int {
            var value: Int32 = 0
            try driver.check(driver.cuDeviceGetAttribute(&value, attribute.rawValue, device), "cuDeviceGetAttribute(\(attribute))")
            return Int(value)
        }
        computeCapability = (try attribute(.computeCapabilityMajor), try attribute(.computeCapabilityMinor))
        multiprocessorCount = try attribute(.multiprocessorCount)
        var context: OpaquePointer?
        try driver.check(driver.cuDevicePrimaryCtxRetain(&context, device), "cuDevicePrimaryCtxRetain(\(ordinal))")
        self.context = context
        try makeCurrent()
    }

    deinit { _ = driver.cuDevicePrimaryCtxRelease(device) }

    /// `sm_90` on an H200, `sm_121` on a GB10.
    public var architecture: String {
        KernelCacheKey.architecture(major: computeCapability.major, minor: computeCapability.minor)
    }

    public func makeCurrent() throws {
        try driver.check(driver.cuCtxSetCurrent(context), "cuCtxSetCurrent")
    }

    public func synchronize() throws {
        try driver.check(driver.cuCtxSynchronize(), "cuCtxSynchronize")
    }

    /// Free and total device memory in bytes.
    public func memoryInfo() throws -> (free: Int, total: Int) {
        var free = 0
        var total = 0
        try driver.check(driver.cuMemGetInfo(&free, &total), "cuMemGetInfo")
        return (free, total)
    }

    /// Bytes this process holds in ``DeviceBuffer``s now.
    public var allocatedBytes: Int { allocation.withLock { allocated } }

    /// What this process may still allocate: the driver's free memory, and with a ``memoryLimit`` no more than the
    /// limit less what it holds. Sizing decisions (resident states, token passes) use this, never `free` alone.
    public func usableMemory() throws -> Int {
        let free = try memoryInfo().free
        guard let memoryLimit else { return free }
        return max(0, min(free, memoryLimit - allocatedBytes))
    }

    /// Counts `bytes` against the limit before `cuMemAlloc`, or throws naming the request, the holding and the limit.
    func reserve(_ bytes: Int) throws {
        try allocation.withLock {
            if let memoryLimit, allocated + bytes > memoryLimit {
                throw CUDAError.memoryLimitExceeded(requested: bytes, held: allocated, limit: memoryLimit)
            }
            allocated += bytes
        }
    }

    func release(_ bytes: Int) { allocation.withLock { allocated -= bytes } }
}

/// Device memory from `cuMemAlloc` (never managed memory), freed when the last reference goes.
// @unchecked: a device address and size, immutable until deinit frees them; ordering of uses is the streams' job.
public final class DeviceBuffer: @unchecked Sendable {
    public let context: CUDAContext
    public let address: CUdeviceptr
    public let byteCount: Int

    public init(context: CUDAContext, byteCount: Int) throws {
        guard byteCount > 0 else { throw CUDAError.invalidArgument(call: "cuMemAlloc", reason: "size \(byteCount) is not positive") }
        self.context = context
        self.byteCount = byteCount
        try context.reserve(byteCount)
        var address: CUdeviceptr = 0
        do {
            try context.driver.check(context.driver.cuMemAlloc(&address, byteCount), "cuMemAlloc(\(byteCount) bytes)")
        } catch {
            context.release(byteCount)
            throw error
        }
        self.address = address
    }

    deinit {
        _ = context.driver.cuMemFree(address)
        context.release(byteCount)
    }

    /// The address `offset` bytes in, checked against the size.
    public func address(atByteOffset offset: Int) -> CUdeviceptr {
        precondition(offset >= 0 && offset <= byteCount, "offset \(offset) outside a buffer of \(byteCount) bytes")
        return address + CUdeviceptr(offset)
    }

    public func copy(from host: UnsafeRawBufferPointer, toByteOffset offset: Int = 0, stream: CUDAStream) throws {
        try checkRange(offset: offset, count: host.count, call: "cuMemcpyHtoDAsync")
        try context.driver.check(context.driver.cuMemcpyHtoDAsync(address + CUdeviceptr(offset), host.baseAddress, host.count, stream.handle),
                                 "cuMemcpyHtoDAsync(\(host.count) bytes)")
    }

    public func copy(to host: UnsafeMutableRawBufferPointer, fromByteOffset offset: Int = 0, stream: CUDAStream) throws {
        try checkRange(offset: offset, count: host.count, call: "cuMemcpyDtoHAsync")
        try context.driver.check(context.driver.cuMemcpyDtoHAsync(host.baseAddress, address + CUdeviceptr(offset), host.count, stream.handle),
                                 "cuMemcpyDtoHAsync(\(host.count) bytes)")
    }

    /// Device-to-device copy of `count` bytes from `source` (both from offset 0).
    public func copy(from source: DeviceBuffer, byteCount count: Int, stream: CUDAStream) throws {
        try checkRange(offset: 0, count: count, call: "cuMemcpyDtoDAsync")
        try source.checkRange(offset: 0, count: count, call: "cuMemcpyDtoDAsync")
        try context.driver.check(context.driver.cuMemcpyDtoDAsync(address, source.address, count, stream.handle),
                                 "cuMemcpyDtoDAsync(\(count) bytes)")
    }

    public func fill(byte: UInt8, byteCount count: Int? = nil, stream: CUDAStream) throws {
        let count = count ?? byteCount
        try checkRange(offset: 0, count: count, call: "cuMemsetD8Async")
        try context.driver.check(context.driver.cuMemsetD8Async(address, byte, count, stream.handle), "cuMemsetD8Async(\(count) bytes)")
    }

    func checkRange(offset: Int, count: Int, call: String) throws {
        guard offset >= 0, count >= 0, offset + count <= byteCount else {
            throw CUDAError.invalidArgument(call: call, reason: "bytes \(offset)..<\(offset + count) outside a buffer of \(byteCount)")
        }
    }
}

/// Page-locked host memory (`cuMemAllocHost`) for asynchronous copies.
// @unchecked: a host pointer and size, immutable until deinit; callers order reads and writes with CUDA events.
public final class PinnedHostBuffer: @unchecked Sendable {
    public let context: CUDAContext
    public let pointer: UnsafeMutableRawPointer
    public let byteCount: Int

    public init(context: CUDAContext, byteCount: Int) throws {
        guard byteCount > 0 else { throw CUDAError.invalidArgument(call: "cuMemAllocHost", reason: "size \(byteCount) is not positive") }
        self.context = context
        self.byteCount = byteCount
        var pointer: UnsafeMutableRawPointer?
        try context.driver.check(context.driver.cuMemAllocHost(&pointer, byteCount), "cuMemAllocHost(\(byteCount) bytes)")
        self.pointer = pointer!
    }

    deinit { _ = context.driver.cuMemFreeHost(pointer) }

    public var bytes: UnsafeMutableRawBufferPointer { UnsafeMutableRawBufferPointer(start: pointer, count: byteCount) }
}

// @unchecked: wraps C handles (raw pointers, which are not Sendable) that never change after init; the CUDA
// driver and libraries are thread-safe for these calls.
public final class CUDAStream: @unchecked Sendable {
    public let context: CUDAContext
    public let handle: OpaquePointer?

    /// A non-blocking stream (does not synchronize with the legacy default stream).
    public init(context: CUDAContext) throws {
        self.context = context
        var handle: OpaquePointer?
        try context.driver.check(context.driver.cuStreamCreate(&handle, 1), "cuStreamCreate")
        self.handle = handle
    }

    deinit { _ = context.driver.cuStreamDestroy(handle) }

    public func synchronize() throws {
        try context.driver.check(context.driver.cuStreamSynchronize(handle), "cuStreamSynchronize")
    }

    public func wait(for event: CUDAEvent) throws {
        try context.driver.check(context.driver.cuStreamWaitEvent(handle, event.handle, 0), "cuStreamWaitEvent")
    }
}

// @unchecked: wraps C handles (raw pointers, which are not Sendable) that never change after init; the CUDA
// driver and libraries are thread-safe for these calls.
public final class CUDAEvent: @unchecked Sendable {
    public let context: CUDAContext
    public let handle: OpaquePointer?

    public init(context: CUDAContext, timing: Bool = true) throws {
        self.context = context
        var handle: OpaquePointer?
        try context.driver.check(context.driver.cuEventCreate(&handle, timing ? 0 : 2), "cuEventCreate")
        self.handle = handle
    }

    deinit { _ = context.driver.cuEventDestroy(handle) }

    public func record(on stream: CUDAStream) throws {
        try context.driver.check(context.driver.cuEventRecord(handle, stream.handle), "cuEventRecord")
    }

    public func synchronize() throws {
        try context.driver.check(context.driver.cuEventSynchronize(handle), "cuEventSynchronize")
    }

    /// Milliseconds from `start` to this event (both recorded and complete).
    public func milliseconds(since start: CUDAEvent) throws -> Float {
        var value: Float = 0
        try context.driver.check(context.driver.cuEventElapsedTime(&value, start.handle, handle), "cuEventElapsedTime")
        return value
    }
}

/// A loaded module (cubin or PTX) and the kernels looked up in it.
// @unchecked: wraps C handles (raw pointers, which are not Sendable) that never change after init; the CUDA
// driver and libraries are thread-safe for these calls.
public final class CUDAModule: @unchecked Sendable {
    public let context: CUDAContext
    let handle: OpaquePointer?

    public init(context: CUDAContext, image: [UInt8]) throws {
        self.context = context
        var handle: OpaquePointer?
        var nulTerminated = image
        nulTerminated.append(0)  // PTX images are read as C strings
        try nulTerminated.withUnsafeBytes { bytes in
            try context.driver.check(context.driver.cuModuleLoadData(&handle, bytes.baseAddress!), "cuModuleLoadData")
        }
        self.handle = handle
    }

    deinit { _ = context.driver.cuModuleUnload(handle) }

    public func function(_ name: String) throws -> CUDAFunction {
        var function: OpaquePointer?
        try context.driver.check(context.driver.cuModuleGetFunction(&function, handle, name), "cuModuleGetFunction(\(name))")
        return CUDAFunction(module: self, name: name, handle: function)
    }
}

/// One argument of a kernel launch, passed by value.
public enum KernelArgument: Sendable {
    case pointer(CUdeviceptr)
    case int32(Int32)
    case int64(Int64)
    case float(Float)
    case double(Double)
}

/// A kernel and its launch.
// @unchecked: wraps C handles (raw pointers, which are not Sendable) that never change after init; the CUDA
// driver and libraries are thread-safe for these calls.
public final class CUDAFunction: @unchecked Sendable {
    public let module: CUDAModule
    public let name: String
    let handle: OpaquePointer?

    init(module: CUDAModule, name: String, handle: OpaquePointer?) {
        self.module = module
        self.name = name
        self.handle = handle
    }

    /// Allows up to `bytes` of dynamic shared memory (above the default 48 KiB).
    public func setMaxDynamicSharedMemory(_ bytes: Int) throws {
        let driver = module.context.driver
        try driver.check(driver.cuFuncSetAttribute(handle, 8, Int32(bytes)), "cuFuncSetAttribute(\(name), max dynamic shared memory)")
    }

    public func launch(grid: (Int, Int, Int), block: (Int, Int, Int), sharedMemoryBytes: Int = 0, stream: CUDAStream,
                       arguments: [KernelArgument]) throws {
        try validateLaunch(kernel: name, grid: grid, block: block)
        // Each argument lives in its own 8-byte slot; the driver reads the size its kernel declares.
        let slots = UnsafeMutablePointer<UInt64>.allocate(capacity: max(1, arguments.count))
        defer { slots.deallocate() }
        for (index, argument) in arguments.enumerated() {
            let slot = UnsafeMutableRawPointer(slots + index)
            slot.storeBytes(of: 0, as: UInt64.self)
            switch argument {
            case .pointer(let value): slot.storeBytes(of: value, as: UInt64.self)
            case .int32(let value): slot.storeBytes(of: value, as: Int32.self)
            case .int64(let value): slot.storeBytes(of: value, as: Int64.self)
            case .float(let value): slot.storeBytes(of: value, as: Float.self)
            case .double(let value): slot.storeBytes(of: value, as: Double.self)
            }
        }
        var pointers = (0..<arguments.count).map { Optional(UnsafeMutableRawPointer(slots + $0)) }
        let driver = module.context.driver
        try pointers.withUnsafeMutableBufferPointer { buffer in
            try driver.check(driver.cuLaunchKernel(handle, UInt32(grid.0), UInt32(grid.1), UInt32(grid.2),
                                                   UInt32(block.0), UInt32(block.1), UInt32(block.2), UInt32(sharedMemoryBytes),
                                                   stream.handle, buffer.baseAddress, nil),
                             "cuLaunchKernel(\(name))")
        }
    }
}

/// Rejects launch shapes the driver would refuse, naming the kernel: empty or oversized grids and blocks.
public func validateLaunch(kernel: String, grid: (Int, Int, Int), block: (Int, Int, Int)) throws {
    let call = "cuLaunchKernel(\(kernel))"
    for (axis, size) in [("grid.x", grid.0), ("grid.y", grid.1), ("grid.z", grid.2), ("block.x", block.0), ("block.y", block.1),
                         ("block.z", block.2)] where size <= 0 {
        throw CUDAError.invalidArgument(call: call, reason: "\(axis) is \(size); every dimension must be at least 1")
    }
    if grid.0 > Int(Int32.max) || grid.1 > 65535 || grid.2 > 65535 {
        throw CUDAError.invalidArgument(call: call, reason: "grid \(grid) exceeds (2^31-1, 65535, 65535)")
    }
    if block.0 * block.1 * block.2 > 1024 {
        throw CUDAError.invalidArgument(call: call, reason: "block \(block) has more than 1024 threads")
    }
}

