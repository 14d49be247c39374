import Foundation

/// Raw CUDA driver handles. `CUdeviceptr` is a 64-bit address; the others are opaque pointers.
public typealias CUdeviceptr = UInt64

/// The driver API entry points the backend calls, resolved from `libcuda.so.1` with `dlsym`.
/// Every call goes through ``check(_:_:)`` so a failure becomes ``CUDAError/callFailed(call:code:message:)``.
// @unchecked: C function pointers resolved once in init (not Sendable as types); the driver API is thread-safe.
public final class CUDADriver: @unchecked Sendable {
    public let library: LoadedLibrary

    typealias Init = @convention(c) (UInt32) -> Int32
    typealias DriverGetVersion = @convention(c) (UnsafeMutablePointer<Int32>) -> Int32
    typealias DeviceGetCount = @convention(c) (UnsafeMutablePointer<Int32>) -> Int32
    typealias DeviceGet = @convention(c) (UnsafeMutablePointer<Int32>, Int32) -> Int32
    typealias DeviceGetAttribute = @convention(c) (UnsafeMutablePointer<Int32>, Int32, Int32) -> Int32
    typealias DeviceGetName = @convention(c) (UnsafeMutablePointer<CChar>, Int32, Int32) -> Int32
    typealias PrimaryCtxRetain = @convention(c) (UnsafeMutablePointer<OpaquePointer?>, Int32) -> Int32
    typealias PrimaryCtxRelease = @convention(c) (Int32) -> Int32
    typealias CtxSetCurrent = @convention(c) (OpaquePointer?) -> Int32
    typealias CtxSynchronize = @convention(c) () -> Int32
    typealias MemAlloc = @convention(c) (UnsafeMutablePointer<CUdeviceptr>, Int) -> Int32
    typealias MemFree = @convention(c) (CUdeviceptr) -> Int32
    typealias MemAllocHost = @convention(c) (UnsafeMutablePointer<UnsafeMutableRawPointer?>, Int) -> Int32
    typealias MemFreeHost = @convention(c) (UnsafeMutableRawPointer?) -> Int32
    typealias MemGetInfo = @convention(c) (UnsafeMutablePointer<Int>, UnsafeMutablePointer<Int>) -> Int32
    typealias MemcpyHtoDAsync = @convention(c) (CUdeviceptr, UnsafeRawPointer?, Int, OpaquePointer?) -> Int32
    typealias MemcpyDtoHAsync = @convention(c) (UnsafeMutableRawPointer?, CUdeviceptr, Int, OpaquePointer?) -> Int32
    typealias MemcpyDtoDAsync = @convention(c) (CUdeviceptr, CUdeviceptr, Int, OpaquePointer?) -> Int32
    typealias MemsetD8Async = @convention(c) (CUdeviceptr, UInt8, Int, OpaquePointer?) -> Int32
    typealias StreamCreate = @convention(c) (UnsafeMutablePointer<OpaquePointer?>, UInt32) -> Int32
    typealias StreamDestroy = @convention(c) (OpaquePointer?) -> Int32
    typealias StreamSynchronize = @convention(c) (OpaquePointer?) -> Int32
    typealias StreamWaitEvent = @convention(c) (OpaquePointer?, OpaquePointer?, UInt32) -> Int32
    typealias EventCreate = @convention(c) (UnsafeMutablePointer<OpaquePointer?>, UInt32) -> Int32
    typealias EventDestroy = @convention(c) (OpaquePointer?) -> Int32
    typealias EventRecord = @convention(c) (OpaquePointer?, OpaquePointer?) -> Int32
    typealias EventSynchronize = @convention(c) (OpaquePointer?) -> Int32
    typealias EventElapsedTime = @convention(c) (UnsafeMutablePointer<Float>, OpaquePointer?, OpaquePointer?) -> Int32
    typealias ModuleLoadData = @convention(c) (UnsafeMutablePointer<OpaquePointer?>, UnsafeRawPointer) -> Int32
    typealias ModuleUnload = @convention(c) (OpaquePointer?) -> Int32
    typealias ModuleGetFunction = @convention(c) (UnsafeMutablePointer<OpaquePointer?>, OpaquePointer?, UnsafePointer<CChar>) -> Int32
    typealias FuncSetAttribute = @convention(c) (OpaquePointer?, Int32, Int32) -> Int32
    typealias LaunchKernel = @convention(c) (OpaquePointer?, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32,
                                             OpaquePointer?, UnsafeMutablePointer<UnsafeMutableRawPointer?>?,
                                             UnsafeMutablePointer<UnsafeMutableRawPointer?>?) -> Int32
    typealias GetErrorString = @convention(c) (Int32, UnsafeMutablePointer<UnsafePointer<CChar>?>) -> Int32

    let cuInit: Init
    let cuDriverGetVersion: DriverGetVersion
    let cuDeviceGetCount: DeviceGetCount
    let cuDeviceGet: DeviceGet
    let cuDeviceGetAttribute: DeviceGetAttribute
    let cuDeviceGetName: DeviceGetName
    let cuDevicePrimaryCtxRetain: PrimaryCtxRetain
    let cuDevicePrimaryCtxRelease: PrimaryCtxRelease
    let cuCtxSetCurrent: CtxSetCurrent
    let cuCtxSynchronize: CtxSynchronize
    let cuMemAlloc: MemAlloc
    let cuMemFree: MemFree
    let cuMemAllocHost: MemAllocHost
    let cuMemFreeHost: MemFreeHost
    let cuMemGetInfo: MemGetInfo
    let cuMemcpyHtoDAsync: MemcpyHtoDAsync
    let cuMemcpyDtoHAsync: MemcpyDtoHAsync
    let cuMemcpyDtoDAsync: MemcpyDtoDAsync
    let cuMemsetD8Async: MemsetD8Async
    let cuStreamCreate: StreamCreate
    let cuStreamDestroy: StreamDestroy
    let cuStreamSynchronize: StreamSynchronize
    let cuStreamWaitEvent: StreamWaitEvent
    let cuEventCreate: EventCreate
    let cuEventDestroy: EventDestroy
    let cuEventRecord: EventRecord
    let cuEventSynchronize: EventSynchronize
    let cuEventElapsedTime: EventElapsedTime
    let cuModuleLoadData: ModuleLoadData
    let cuModuleUnload: ModuleUnload
    let cuModuleGetFunction: ModuleGetFunction
    let cuFuncSetAttribute: FuncSetAttribute
    let cuLaunchKernel: LaunchKernel
    let cuGetErrorString: GetErrorString

    /// Opens the driver library and resolves every entry point; throws naming the first missing symbol.
    public init(locator: CUDALibraryLocator = CUDALibraryLocator()) throws {
        let library = try locator.open(.driver)
        self.library = library
        func resolve<T>(_ name: String, as type: T.Type) throws -> T { unsafeBitCast(try library.symbol(name), to: type) }
        cuInit = try resolve("cuInit", as: Init.self)
        cuDriverGetVersion = try resolve("cuDriverGetVersion", as: DriverGetVersion.self)
        cuDeviceGetCount = try resolve("cuDeviceGetCount", as: DeviceGetCount.self)
        cuDeviceGet = try resolve("cuDeviceGet", as: DeviceGet.self)
        cuDeviceGetAttribute = try resolve("cuDeviceGetAttribute", as: DeviceGetAttribute.self)
        cuDeviceGetName = try resolve("cuDeviceGetName", as: DeviceGetName.self)
        cuDevicePrimaryCtxRetain = try resolve("cuDevicePrimaryCtxRetain", as: PrimaryCtxRetain.self)
        cuDevicePrimaryCtxRelease = try resolve("cuDevicePrimaryCtxRelease_v2", as: PrimaryCtxRelease.self)
        cuCtxSetCurrent = try resolve("cuCtxSetCurrent", as: CtxSetCurrent.self)
        cuCtxSynchronize = try resolve("cuCtxSynchronize", as: CtxSynchronize.self)
        cuMemAlloc = try resolve("cuMemAlloc_v2", as: MemAlloc.self)
        cuMemFree = try resolve("cuMemFree_v2", as: MemFree.self)
        cuMemAllocHost = try resolve("cuMemAllocHost_v2", as: MemAllocHost.self)
        cuMemFreeHost = try resolve("cuMemFreeHost", as: MemFreeHost.self)
        cuMemGetInfo = try resolve("cuMemGetInfo_v2", as: MemGetInfo.self)
        cuMemcpyHtoDAsync = try resolve("cuMemcpyHtoDAsync_v2", as: MemcpyHtoDAsync.self)
        cuMemcpyDtoHAsync = try resolve("cuMemcpyDtoHAsync_v2", as: MemcpyDtoHAsync.self)
        cuMemcpyDtoDAsync = try resolve("cuMemcpyDtoDAsync_v2", as: MemcpyDtoDAsync.self)
        cuMemsetD8Async = try resolve("cuMemsetD8Async", as: MemsetD8Async.self)
        cuStreamCreate = try resolve("cuStreamCreate", as: StreamCreate.self)
        cuStreamDestroy = try resolve("cuStreamDestroy_v2", as: StreamDestroy.self)
        cuStreamSynchronize = try resolve("cuStreamSynchronize", as: StreamSynchronize.self)
        cuStreamWaitEvent = try resolve("cuStreamWaitEvent", as: StreamWaitEvent.self)
        cuEventCreate = try resolve("cuEventCreate", as: EventCreate.self)
        cuEventDestroy = try resolve("cuEventDestroy_v2", as: EventDestroy.self)
        cuEventRecord = try resolve("cuEventRecord", as: EventRecord.self)
        cuEventSynchronize = try resolve("cuEventSynchronize", as: EventSynchronize.self)
        cuEventElapsedTime = try resolve("cuEventElapsedTime", as: EventElapsedTime.self)
        cuModuleLoadData = try resolve("cuModuleLoadData", as: ModuleLoadData.self)
        cuModuleUnload = try resolve("cuModuleUnload", as: ModuleUnload.self)
        cuModuleGetFunction = try resolve("cuModuleGetFunction", as: ModuleGetFunction.self)
        cuFuncSetAttribute = try resolve("cuFuncSetAttribute", as: FuncSetAttribute.self)
        cuLaunchKernel = try resolve("cuLaunchKernel", as: LaunchKernel.self)
        cuGetErrorString = try resolve("cuGetErrorString", as: GetErrorString.self)
        try check(cuInit(0), "cuInit")
    }

    /// Turns a driver return code into a typed error naming `call` and the driver's own message.
    public func check(_ code: Int32, _ call: @autoclosure () -> String) throws {
        guard code != 0 else { return }
        var message: UnsafePointer<CChar>?
        _ = cuGetErrorString(code, &message)
        throw CUDAError.callFailed(call: call(), code: code, message: message.map { String(cString: $0) })
    }

    public func driverVersion() throws -> Int {
        var version: Int32 = 0
        try check(cuDriverGetVersion(&version), "cuDriverGetVersion")
        return Int(version)
    }

    public func deviceCount() throws -> Int {
        var count: Int32 = 0
        try check(cuDeviceGetCount(&count), "cuDeviceGetCount")
        return Int(count)
    }
}

/// Device attributes read through `cuDeviceGetAttribute` (values from the driver API's enum).
public enum CUDADeviceAttribute: Int32, Sendable {
    case maxSharedMemoryPerBlockOptin = 97
    case multiprocessorCount = 16
    case computeCapabilityMajor = 75
    case computeCapabilityMinor = 76
}

/// Checks a device ordinal against the number of devices, naming both.
public func validateDeviceOrdinal(_ ordinal: Int, deviceCount: Int) throws {
    guard deviceCount > 0 else { throw CUDAError.noDevice }
    guard (0..<deviceCount).contains(ordinal) else { throw CUDAError.deviceOutOfRange(ordinal: ordinal, count: deviceCount) }
}
