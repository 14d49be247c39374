/// # CUDARuntime
///
/// The CUDA libraries the GPU backend needs — the driver API (`libcuda.so.1`), NVRTC and cuBLASLt — are opened at
/// run time with `dlopen`, so the package builds and runs on machines without CUDA. The C entry points are declared
/// here as `@convention(c)` function types and resolved with `dlsym`; every return code becomes a ``CUDAError`` that
/// names the call.
///
/// - Discovery: ``CUDALibrary``, ``CUDALibraryLocator`` (CUDA 13 then 12 names, `LD_LIBRARY_PATH`, env overrides).
/// - Driver: ``CUDADriver``, ``CUDAContext`` (primary context), ``DeviceBuffer`` (`cuMemAlloc`, never managed memory),
///   ``PinnedHostBuffer``, ``CUDAStream``, ``CUDAEvent``, ``CUDAModule``/``CUDAFunction`` (cubin load, launch).
/// - ``NVRTC`` compiles kernel sources for the device's own architecture; ``KernelCache`` keeps the cubins on disk
///   under ``KernelCacheKey`` (source SHA-256, architecture, NVRTC version).
/// - ``CuBLASLt``: row-major BF16 GEMMs with FP32 accumulation, one cached plan per ``GEMMShape``; general
///   column-major products (``MatrixProduct``) for GPTQ's Hessians and updates.
/// - ``CuSOLVERDense``: Cholesky factorization and triangular inverse in FP64, for GPTQ.
/// - Pure argument checks that run anywhere: ``validateLaunch(kernel:grid:block:)``, ``GEMMShape/validate()``,
///   ``validateDeviceOrdinal(_:deviceCount:)``.
import Crypto
import Foundation

#if canImport(Glibc)
import Glibc
#endif

/// A library the GPU backend opens at run time.
public enum CUDALibrary: String, CaseIterable, Sendable {
    case driver = "CUDA driver"
    case nvrtc = "NVRTC"
    case cublasLt = "cuBLASLt"
    /// Only GPTQ needs it (Cholesky factorization and triangular inverse), so it is opened on first use.
    case cusolver = "cuSOLVER"

    /// The environment variable that names an exact file to use instead of searching.
    public var overrideVariable: String {
        switch self {
        case .driver: return "NVFP4_LIBCUDA"
        case .nvrtc: return "NVFP4_LIBNVRTC"
        case .cublasLt: return "NVFP4_LIBCUBLASLT"
        case .cusolver: return "NVFP4_LIBCUSOLVER"
        }
    }

    /// File names tried in order; `dlopen` resolves bare names through `LD_LIBRARY_PATH` and the linker cache.
    /// CUDA 13 first, then 12, then the unversioned development symlink.
    public var candidateNames: [String] {
        switch self {
        case .driver: return ["libcuda.so.1", "libcuda.so"]
        case .nvrtc: return ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"]
        case .cublasLt: return ["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"]
        // cuSOLVER's soname is one major version behind the toolkit's (12 in CUDA 13, 11 in CUDA 12).
        case .cusolver: return ["libcusolver.so.12", "libcusolver.so.11", "libcusolver.so"]
        }
    }
}

public enum CUDAError: Error, CustomStringConvertible, Equatable, Sendable {
    /// None of the candidates could be opened; `tried` lists each with `dlerror`'s reason.
    case libraryNotFound(library: String, tried: [String])
    /// A required symbol is missing from an opened library.
    case symbolNotFound(library: String, symbol: String)
    /// A CUDA, NVRTC or cuBLASLt call returned an error code.
    case callFailed(call: String, code: Int32, message: String?)
    /// The driver loaded but reports no CUDA device.
    case noDevice
    /// `cuda:N` named a device that does not exist.
    case deviceOutOfRange(ordinal: Int, count: Int)
    /// NVRTC rejected a kernel source; `log` is the compiler's output.
    case compilationFailed(source: String, architecture: String, log: String)
    /// An argument that the call would reject or misuse, named with the reason.
    case invalidArgument(call: String, reason: String)
    /// An allocation would take this process past its GPU memory limit (`--gpu-memory`).
    case memoryLimitExceeded(requested: Int, held: Int, limit: Int)

    public var description: String {
        switch self {
        case let .libraryNotFound(library, tried):
            return "the \(library) library could not be loaded; tried: " + tried.joined(separator: "; ")
        case let .symbolNotFound(library, symbol):
            return "the \(library) library has no symbol \(symbol); is it too old?"
        case let .callFailed(call, code, message):
            return "\(call) failed with code \(code)" + (message.map { ": \($0)" } ?? "")
        case .noDevice:
            return "the CUDA driver loaded but reports no device"
        case let .deviceOutOfRange(ordinal, count):
            return "CUDA device \(ordinal) does not exist; this machine has \(count) (0..<\(count))"
        case let .compilationFailed(source, architecture, log):
            return "NVRTC could not compile \(source) for \(architecture):\n\(log)"
        case let .invalidArgument(call, reason):
            return "\(call): \(reason)"
        case let .memoryLimitExceeded(requested, held, limit):
            return "allocating \(requested >> 20) MiB of GPU memory would exceed the limit of \(limit >> 20) MiB (--gpu-memory); \(held >> 20) MiB are held"
        }
    }
}

/// An opened library. Closed when the last reference goes away.
// @unchecked: holds a dlopen handle (a raw pointer, not Sendable), immutable until deinit; dlsym is thread-safe.
public final class LoadedLibrary: @unchecked Sendable {
    public let library: CUDALibrary
    /// The name or path that `dlopen` accepted.
    public let path: String
    let handle: UnsafeMutableRawPointer

    init(library: CUDALibrary, path: String, handle: UnsafeMutableRawPointer) {
        self.library = library
        self.path = path
        self.handle = handle
    }

    deinit { dlclose(handle) }

    /// The address of `name`, or a typed error naming the library and the symbol.
    public func symbol(_ name: String) throws -> UnsafeMutableRawPointer {
        guard let pointer = dlsym(handle, name) else {
            throw CUDAError.symbolNotFound(library: library.rawValue, symbol: name)
        }
        return pointer
    }
}

/// Finds and opens the CUDA libraries. The environment is injectable for tests.
public struct CUDALibraryLocator: Sendable {
    public var environment: [String: String]

    public init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        self.environment = environment
    }

    /// What will be tried for `library`: the override alone when it is set, otherwise the candidate names.
    public func candidates(for library: CUDALibrary) -> [String] {
        if let override = environment[library.overrideVariable], !override.isEmpty { return [override] }
        return library.candidateNames
    }

    public func open(_ library: CUDALibrary) throws -> LoadedLibrary {
        var tried: [String] = []
        for candidate in candidates(for: library) {
            if let handle = dlopen(candidate, RTLD_NOW | RTLD_LOCAL) {
                return LoadedLibrary(library: library, path: candidate, handle: handle)
            }
            let reason = dlerror().map { String(cString: $0) } ?? "unknown dlopen error"
            tried.append("\(candidate) (\(reason))")
        }
        if environment[library.overrideVariable] == nil {
            tried.append("set \(library.overrideVariable) to the library's path, or add its folder to LD_LIBRARY_PATH")
        }
        throw CUDAError.libraryNotFound(library: library.rawValue, tried: tried)
    }
}

/// Where a compiled kernel is cached: keyed by the SHA-256 of its CUDA source, the target architecture
/// (`sm_90`, `sm_121`, …) and the NVRTC version, so an edited kernel or another GPU never reuses a stale binary.
public struct KernelCacheKey: Hashable, Sendable, CustomStringConvertible {
    public let sourceHash: String
    public let architecture: String
    public let compilerVersion: String

    public init(source: String, architecture: String, compilerVersion: String) {
        sourceHash = SHA256.hash(data: Data(source.utf8)).map { String(format: "%02x", $0) }.joined()
        self.architecture = architecture
        self.compilerVersion = compilerVersion
    }

    /// `sm_<major><minor>` for a device's compute capability.
    public static func architecture(major: Int, minor: Int) -> String { "sm_\(major)\(minor)" }

    /// The cache file name, e.g. `nvfp4-<hash prefix>-sm_90-nvrtc13.0.cubin`.
    public var fileName: String { "nvfp4-\(sourceHash.prefix(24))-\(architecture)-nvrtc\(compilerVersion).cubin" }

    public var description: String { fileName }

    public func url(in directory: URL) -> URL { directory.appendingPathComponent(fileName) }
}
