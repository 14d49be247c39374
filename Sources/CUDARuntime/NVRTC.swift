import Foundation

/// NVRTC, the run-time CUDA C++ compiler, resolved with `dlsym`.
// @unchecked: C function pointers resolved once in init; NVRTC programs are created per call, never shared.
public final class NVRTC: @unchecked Sendable {
    public let library: LoadedLibrary

    typealias Version = @convention(c) (UnsafeMutablePointer<Int32>, UnsafeMutablePointer<Int32>) -> Int32
    typealias CreateProgram = @convention(c) (UnsafeMutablePointer<OpaquePointer?>, UnsafePointer<CChar>, UnsafePointer<CChar>?, Int32,
                                              UnsafePointer<UnsafePointer<CChar>?>?, UnsafePointer<UnsafePointer<CChar>?>?) -> Int32
    typealias CompileProgram = @convention(c) (OpaquePointer?, Int32, UnsafePointer<UnsafePointer<CChar>?>?) -> Int32
    typealias GetSize = @convention(c) (OpaquePointer?, UnsafeMutablePointer<Int>) -> Int32
    typealias GetBytes = @convention(c) (OpaquePointer?, UnsafeMutablePointer<CChar>) -> Int32
    typealias DestroyProgram = @convention(c) (UnsafeMutablePointer<OpaquePointer?>) -> Int32
    typealias GetErrorString = @convention(c) (Int32) -> UnsafePointer<CChar>?

    let nvrtcVersion: Version
    let nvrtcCreateProgram: CreateProgram
    let nvrtcCompileProgram: CompileProgram
    let nvrtcGetCUBINSize: GetSize
    let nvrtcGetCUBIN: GetBytes
    let nvrtcGetProgramLogSize: GetSize
    let nvrtcGetProgramLog: GetBytes
    let nvrtcDestroyProgram: DestroyProgram
    let nvrtcGetErrorString: GetErrorString

    public init(locator: CUDALibraryLocator = CUDALibraryLocator()) throws {
        let library = try locator.open(.nvrtc)
        self.library = library
        func resolve<T>(_ name: String, as type: T.Type) throws -> T { unsafeBitCast(try library.symbol(name), to: type) }
        nvrtcVersion = try resolve("nvrtcVersion", as: Version.self)
        nvrtcCreateProgram = try resolve("nvrtcCreateProgram", as: CreateProgram.self)
        nvrtcCompileProgram = try resolve("nvrtcCompileProgram", as: CompileProgram.self)
        nvrtcGetCUBINSize = try resolve("nvrtcGetCUBINSize", as: GetSize.self)
        nvrtcGetCUBIN = try resolve("nvrtcGetCUBIN", as: GetBytes.self)
        nvrtcGetProgramLogSize = try resolve("nvrtcGetProgramLogSize", as: GetSize.self)
        nvrtcGetProgramLog = try resolve("nvrtcGetProgramLog", as: GetBytes.self)
        nvrtcDestroyProgram = try resolve("nvrtcDestroyProgram", as: DestroyProgram.self)
        nvrtcGetErrorString = try resolve("nvrtcGetErrorString", as: GetErrorString.self)
    }

    func check(_ code: Int32, _ call: @autoclosure () -> String) throws {
        guard code != 0 else { return }
        throw CUDAError.callFailed(call: call(), code: code, message: nvrtcGetErrorString(code).map { String(cString: $0) })
    }

    /// `major.minor`, e.g. `13.0`; part of every kernel cache key.
    public func version() throws -> String {
        var major: Int32 = 0
        var minor: Int32 = 0
        try check(nvrtcVersion(&major, &minor), "nvrtcVersion")
        return "\(major).\(minor)"
    }

    /// Compiles `source` to a cubin for `architecture` (`sm_90`, …). A compile error carries NVRTC's log.
    public func compileCubin(source: String, name: String, architecture: String, extraOptions: [String] = []) throws -> [UInt8] {
        var program: OpaquePointer?
        try check(nvrtcCreateProgram(&program, source, name, 0, nil, nil), "nvrtcCreateProgram(\(name))")
        defer { _ = nvrtcDestroyProgram(&program) }
        let options = NVRTC.options(architecture: architecture) + extraOptions
        let cOptions = options.map { strdup($0) }
        defer { cOptions.forEach { free($0) } }
        let code = cOptions.map { UnsafePointer($0) }.withUnsafeBufferPointer { buffer in
            nvrtcCompileProgram(program, Int32(buffer.count), buffer.baseAddress)
        }
        if code != 0 {
            throw CUDAError.compilationFailed(source: name, architecture: architecture, log: log(of: program))
        }
        var size = 0
        try check(nvrtcGetCUBINSize(program, &size), "nvrtcGetCUBINSize(\(name))")
        var cubin = [CChar](repeating: 0, count: size)
        try check(nvrtcGetCUBIN(program, &cubin), "nvrtcGetCUBIN(\(name))")
        return cubin.map { UInt8(bitPattern: $0) }
    }

    func log(of program: OpaquePointer?) -> String {
        var size = 0
        guard nvrtcGetProgramLogSize(program, &size) == 0, size > 1 else { return "(no log)" }
        var log = [CChar](repeating: 0, count: size)
        guard nvrtcGetProgramLog(program, &log) == 0 else { return "(log unreadable)" }
        return log.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }

    /// The compiler options: a real architecture (so the result is a cubin for this GPU), C++17, and IEEE division
    /// and square root (the quantizer's bit-exactness depends on them).
    public static func options(architecture: String) -> [String] {
        ["--gpu-architecture=\(architecture)", "--std=c++17", "--prec-div=true", "--prec-sqrt=true", "--ftz=false",
         "-default-device"]
    }
}

/// Compiles kernel sources once per (source, architecture, NVRTC version) and keeps the cubins on disk.
public struct KernelCache: Sendable {
    public let directory: URL

    /// `NVFP4_KERNEL_CACHE` if set, else `~/.cache/nvfp4cluster/kernels`.
    public static func defaultDirectory(environment: [String: String] = ProcessInfo.processInfo.environment) -> URL {
        if let path = environment["NVFP4_KERNEL_CACHE"], !path.isEmpty { return URL(fileURLWithPath: path) }
        let home = environment["HOME"].map { URL(fileURLWithPath: $0) } ?? URL(fileURLWithPath: NSTemporaryDirectory())
        return home.appendingPathComponent(".cache/nvfp4cluster/kernels")
    }

    public init(directory: URL = KernelCache.defaultDirectory()) {
        self.directory = directory
    }

    /// The cached cubin for `key`, or `compile()`'s result, written to the cache (atomically) for next time.
    /// A cache that cannot be written only costs a recompilation next time.
    public func cubin(for key: KernelCacheKey, compile: () throws -> [UInt8]) throws -> (image: [UInt8], fromCache: Bool) {
        let url = key.url(in: directory)
        if let data = try? Data(contentsOf: url), !data.isEmpty { return ([UInt8](data), true) }
        let image = try compile()
        try? FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        try? Data(image).write(to: url, options: .atomic)
        return (image, false)
    }
}
