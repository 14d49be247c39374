import CUDARuntime
import Foundation
import Testing

@Suite struct CUDALibraryLocatorTests {
    @Test func candidatesPreferCUDA13ThenCUDA12() {
        let locator = CUDALibraryLocator(environment: [:])
        #expect(locator.candidates(for: .driver) == ["libcuda.so.1", "libcuda.so"])
        #expect(locator.candidates(for: .nvrtc) == ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"])
        #expect(locator.candidates(for: .cublasLt) == ["libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"])
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
