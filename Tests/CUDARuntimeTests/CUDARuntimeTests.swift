import CUDARuntime
import Foundation
import Testing

@Suite struct CUDALibraryLocatorTests {
    @Test func candidatesPreferCUDA13ThenCUDA12() {
        let locator = CUDALibraryLocator(environment: [:])
        #expect(locator.candidates(for: .driver) == ["libcuda.so.1", "libcuda.so"])
        #expect(locator.candidates(for: .nvrtc) == ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"])
        #expect(locator.candidates(for: .cublasLt) == ["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"])
        // cuSOLVER's soname trails the toolkit by one major version.
        #expect(locator.candidates(for: .cusolver) == ["libcusolver.so.12", "libcusolver.so.11", "libcusolver.so"])
        #expect(CUDALibrary.cusolver.overrideVariable == "NVFP4_LIBCUSOLVER")
    }

    @Test func aMissingCuSOLVERIsNamedWithItsOverride() {
        let locator = CUDALibraryLocator(environment: ["NVFP4_LIBCUSOLVER": "/nonexistent/libcusolver.so.12"])
        do {
            _ = try locator.open(.cusolver)
            Issue.record("opening a missing cuSOLVER should fail")
        } catch {
            #expect("\(error)".contains("cuSOLVER") && "\(error)".contains("/nonexistent/libcusolver.so.12"))
        }
    }

    @Test func anOverrideReplacesTheSearch() {
        let locator = CUDALibraryLocator(environment: ["NVFP4_LIBNVRTC": "/opt/cuda/lib64/libnvrtc.so.13.0"])
        #expect(locator.candidates(for: .nvrtc) == ["/opt/cuda/lib64/libnvrtc.so.13.0"])
        #expect(locator.candidates(for: .driver) == ["libcuda.so.1", "libcuda.so"])
    }

    @Test func aMissingOverrideFileIsNamedInTheError() throws {
        let path = "/nonexistent/\(UUID().uuidString)/libcuda.so.1"
        let locator = CUDALibraryLocator(environment: ["NVFP4_LIBCUDA": path])
        do {
            _ = try locator.open(.driver)
            Issue.record("opening \(path) should fail")
        } catch let error as CUDAError {
            guard case let .libraryNotFound(library, tried) = error else { Issue.record("\(error)"); return }
            #expect(library == "CUDA driver")
            #expect(tried.count == 1 && tried[0].hasPrefix(path))
            #expect(error.description.contains(path))
        }
    }

    /// This machine (and CI) has no GPU driver: the search must fail with every candidate and a hint, not crash.
    @Test(.enabled(if: CUDALibraryLocatorTests.noDriverHere, "a CUDA driver is installed here"))
    func discoveryFailureListsEveryCandidateAndTheOverride() throws {
        let locator = CUDALibraryLocator(environment: [:])
        #expect(throws: CUDAError.self) { _ = try locator.open(.driver) }
        do {
            _ = try locator.open(.driver)
        } catch let error as CUDAError {
            #expect(error.description.contains("libcuda.so.1"))
            #expect(error.description.contains("libcuda.so ("))
            #expect(error.description.contains("NVFP4_LIBCUDA"))
        }
    }

    static var noDriverHere: Bool { dlopen("libcuda.so.1", RTLD_NOW) == nil }

    @Test func anOpenedLibraryReportsMissingSymbolsByName() throws {
        // libc is always present; it has no CUDA symbols.
        let locator = CUDALibraryLocator(environment: ["NVFP4_LIBCUDA": "libc.so.6"])
        let library = try locator.open(.driver)
        #expect(throws: CUDAError.symbolNotFound(library: "CUDA driver", symbol: "cuInit")) {
            _ = try library.symbol("cuInit")
        }
        _ = try library.symbol("malloc")
    }
}

@Suite struct KernelCacheKeyTests {
    let source = "extern \"C\" __global__ void amax(const float* x, float* out) {}"

    @Test func keyDependsOnSourceArchitectureAndCompiler() {
        let key = KernelCacheKey(source: source, architecture: "sm_90", compilerVersion: "13.0")
        #expect(key == KernelCacheKey(source: source, architecture: "sm_90", compilerVersion: "13.0"))
        #expect(key != KernelCacheKey(source: source + " ", architecture: "sm_90", compilerVersion: "13.0"))
        #expect(key != KernelCacheKey(source: source, architecture: "sm_121", compilerVersion: "13.0"))
        #expect(key != KernelCacheKey(source: source, architecture: "sm_90", compilerVersion: "12.8"))
    }

    @Test func sourceHashIsTheSHA256OfTheSource() {
        // SHA-256 of "abc", a published test vector.
        #expect(KernelCacheKey(source: "abc", architecture: "sm_90", compilerVersion: "13.0").sourceHash
                == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
    }

    @Test func architectureAndFileName() {
        #expect(KernelCacheKey.architecture(major: 9, minor: 0) == "sm_90")
        #expect(KernelCacheKey.architecture(major: 12, minor: 1) == "sm_121")
        let key = KernelCacheKey(source: "abc", architecture: "sm_90", compilerVersion: "13.0")
        #expect(key.fileName == "nvfp4-ba7816bf8f01cfea414140de-sm_90-nvrtc13.0.cubin")
        #expect(key.url(in: URL(fileURLWithPath: "/cache")).path == "/cache/" + key.fileName)
    }
}

@Suite struct CUDAArgumentCheckTests {
    @Test func deviceOrdinalsAreCheckedAgainstTheDeviceCount() {
        #expect(throws: CUDAError.noDevice) { try validateDeviceOrdinal(0, deviceCount: 0) }
        #expect(throws: CUDAError.deviceOutOfRange(ordinal: 2, count: 2)) { try validateDeviceOrdinal(2, deviceCount: 2) }
        #expect(throws: Never.self) { try validateDeviceOrdinal(1, deviceCount: 2) }
        #expect(CUDAError.deviceOutOfRange(ordinal: 2, count: 2).description.contains("device 2 does not exist"))
    }

    @Test func launchShapesAreCheckedBeforeTheDriverSeesThem() {
        #expect(throws: CUDAError.self) { try validateLaunch(kernel: "k", grid: (0, 1, 1), block: (256, 1, 1)) }
        #expect(throws: CUDAError.self) { try validateLaunch(kernel: "k", grid: (1, 70000, 1), block: (256, 1, 1)) }
        #expect(throws: CUDAError.self) { try validateLaunch(kernel: "k", grid: (1, 1, 1), block: (1024, 2, 1)) }
        #expect(throws: Never.self) { try validateLaunch(kernel: "k", grid: (1 << 20, 65535, 1), block: (1024, 1, 1)) }
        do {
            try validateLaunch(kernel: "rmsnorm_bf16", grid: (1, 1, 1), block: (0, 1, 1))
        } catch {
            #expect("\(error)".contains("cuLaunchKernel(rmsnorm_bf16)") && "\(error)".contains("block.x is 0"))
        }
    }

    @Test func gemmShapesNeedPositiveSixteenByteRows() {
        #expect(throws: Never.self) { try GEMMShape(rows: 150, inner: 8192, outputs: 10240).validate() }
        #expect(throws: CUDAError.self) { try GEMMShape(rows: 0, inner: 8192, outputs: 10240).validate() }
        #expect(throws: CUDAError.self) { try GEMMShape(rows: 4, inner: 8190, outputs: 10240).validate() }
        #expect(GEMMShape(rows: 2, inner: 3, outputs: 4).flops == 48)
    }

    @Test func matrixProductsCheckTheirDimensionsAndLeadingDimensions() {
        // GPTQ's trailing update: W'[rows, n-end] -= E[rows, w] · U[w, n-end], U a sub-matrix of an n × n matrix.
        let update = MatrixProduct(m: 8192, n: 28672 - 128, k: 128, lda: 8192, ldb: 28672, ldc: 8192, inputs: .float32)
        #expect(throws: Never.self) { try update.validate() }
        #expect(update.flops == 2 * 8192 * Double(28672 - 128) * 128)
        // A Hessian tile: Xc[i] · Xc[j]ᵀ with Xc = Xᵀ (n × tokens).
        #expect(throws: Never.self) {
            try MatrixProduct(m: 2048, n: 2048, k: 4096, transposeB: true, lda: 8192, ldb: 8192, ldc: 8192, inputs: .bfloat16).validate()
        }
        #expect(throws: CUDAError.self) { try MatrixProduct(m: 0, n: 4, k: 4, lda: 4, ldb: 4, ldc: 4, inputs: .float32).validate() }
        // lda below op(A)'s stored rows, ldb below B's, ldc below m.
        #expect(throws: CUDAError.self) { try MatrixProduct(m: 64, n: 4, k: 4, lda: 32, ldb: 4, ldc: 64, inputs: .float32).validate() }
        #expect(throws: CUDAError.self) {
            try MatrixProduct(m: 4, n: 64, k: 4, transposeB: true, lda: 4, ldb: 32, ldc: 4, inputs: .float32).validate()
        }
        #expect(throws: CUDAError.self) { try MatrixProduct(m: 64, n: 4, k: 4, lda: 64, ldb: 4, ldc: 16, inputs: .float32).validate() }
        do {
            try MatrixProduct(m: 64, n: 4, k: 4, lda: 64, ldb: 4, ldc: 16, inputs: .float32).validate()
        } catch {
            #expect("\(error)".contains("64x4x4") && "\(error)".contains("leading dimension"))
        }
    }

    @Test func nvrtcOptionsNameTheArchitectureAndIEEEMath() {
        let options = NVRTC.options(architecture: "sm_90")
        #expect(options.contains("--gpu-architecture=sm_90"))
        #expect(options.contains("--prec-div=true") && options.contains("--prec-sqrt=true") && options.contains("--ftz=false"))
    }
}

@Suite struct KernelCacheTests {
    @Test func aCompiledKernelIsReusedFromDiskAndRecompiledForAnotherKey() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("kernel-cache-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: directory) }
        let cache = KernelCache(directory: directory)
        let key = KernelCacheKey(source: "a", architecture: "sm_90", compilerVersion: "13.0")
        var compilations = 0
        let first = try cache.cubin(for: key) { compilations += 1; return [1, 2, 3] }
        let second = try cache.cubin(for: key) { compilations += 1; return [9] }
        #expect(first.image == [1, 2, 3] && !first.fromCache)
        #expect(second.image == [1, 2, 3] && second.fromCache)
        let other = try cache.cubin(for: KernelCacheKey(source: "a", architecture: "sm_121", compilerVersion: "13.0")) {
            compilations += 1
            return [4]
        }
        #expect(other.image == [4] && compilations == 2)
        #expect(FileManager.default.fileExists(atPath: key.url(in: directory).path))
    }

    @Test func theCacheDirectoryHonoursItsOverride() {
        #expect(KernelCache.defaultDirectory(environment: ["NVFP4_KERNEL_CACHE": "/tmp/k"]).path == "/tmp/k")
        #expect(KernelCache.defaultDirectory(environment: ["HOME": "/home/u"]).path == "/home/u/.cache/nvfp4cluster/kernels")
    }
}
