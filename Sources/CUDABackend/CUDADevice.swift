import CUDARuntime
import Foundation
import Logging

/// # CUDABackend
///
/// Calibration and NVFP4 weight quantization on an NVIDIA GPU, with every CUDA library opened at run time
/// (``CUDARuntime``), so the package builds and tests on machines with no CUDA at all.
///
/// - ``CUDADevice``: one GPU's context, streams, cuBLASLt and the kernels of `Resources/nvfp4_kernels.cu`, which
///   NVRTC compiles for the GPU's own architecture at start (cached on disk by source hash, architecture and NVRTC
///   version, see ``KernelCache``).
/// - ``CUDABackend``: the ``ComputeBackend`` calibration drives. BF16 weights and activations, FP32 accumulation,
///   GEMMs through cuBLASLt, own kernels for RMSNorm (+amax), RoPE, causal GQA attention (flash style on tensor
///   cores), SwiGLU (+amax) and the residual adds. It rounds where transformers' BF16 forward rounds, like
///   `CPUBackend` with `.bfloat16` activations, so the two agree to BF16 arithmetic differences.
/// - ``CUDAGPTQ``: GPTQ on the GPU (Hessian sums ``DeviceHessian`` filled during the forward, cuSOLVER's FP64
///   Cholesky, the column loop as kernels and FP32 GEMMs), the CPU's `GPTQQuantizer` up to floating-point noise.
/// - ``CUDANVFP4Quantizer``: the NVFP4 weight quantizer, bit-identical to `NVFP4Quantizer` (same operations, IEEE
///   rounding, no fused multiply-adds).
// @unchecked: libraries and streams are fixed at init; the staging and cache fields are guarded by `lock`.
public final class CUDADevice: @unchecked Sendable {
    public let context: CUDAContext
    public let blas: CuBLASLt
    public let kernels: CUDAKernels
    /// Kernels and GEMMs run here.
    public let computeStream: CUDAStream
    /// Weight uploads run here, overlapping the compute of the previous layer.
    public let copyStream: CUDAStream
    /// The NVFP4 export of finished layers runs here, beside calibration.
    public let exportStream: CUDAStream
    /// Serializes use of the streams and the shared workspace.
    let lock = NSLock()
    let workspace: Workspace
    /// Staging buffers' last copies (see ``upload(_:to:atByteOffset:stream:)``).
    /// Two staging buffers per stream (compute, copy, export), so that an upload on one never waits for another's work.
    var stagingEvents: [CUDAEvent?] = Array(repeating: nil, count: 6)
    var pendingStaging: [CUDAEvent?] = Array(repeating: nil, count: 6)
    /// The BF16 RoPE cos/sin table on the device (see `CUDABackend.ropeTable(positions:)`), rebuilt when a longer
    /// sample or another model needs it.
    var ropeTable: (frequencies: [Float], positions: Int, buffer: DeviceBuffer)?
    var downloadEvents: [CUDAEvent?] = [nil, nil]

    /// Opens GPU `ordinal`: loads the driver, NVRTC and cuBLASLt, and compiles (or loads from cache) the kernels.
    /// `memoryLimit`: most bytes of GPU memory this process may allocate (``CUDAContext/memoryLimit``).
    public init(ordinal: Int = 0, locator: CUDALibraryLocator = CUDALibraryLocator(), cache: KernelCache = KernelCache(),
                memoryLimit: Int? = nil, logger: Logger? = nil) throws {
        let driver = try CUDADriver(locator: locator)
        context = try CUDAContext(driver: driver, ordinal: ordinal, memoryLimit: memoryLimit)
        let nvrtc = try NVRTC(locator: locator)
        kernels = try CUDAKernels(context: context, nvrtc: nvrtc, cache: cache, logger: logger)
        blas = try CuBLASLt(context: context, locator: locator)
        computeStream = try CUDAStream(context: context)
        copyStream = try CUDAStream(context: context)
        exportStream = try CUDAStream(context: context)
        workspace = Workspace(context: context)
        let memory = try context.memoryInfo()
        let driverVersion = try driver.driverVersion()
        let nvrtcVersion = try nvrtc.version()
        logger?.info("CUDA device \(ordinal): \(context.name), \(context.architecture), \(context.multiprocessorCount) SMs, \(memory.free >> 20) MiB free of \(memory.total >> 20) MiB\(memoryLimit.map { ", this process limited to \($0 >> 20) MiB" } ?? ""); driver \(driverVersion), NVRTC \(nvrtcVersion), \(blas.library.path)")
    }

    /// Bytes of device memory in use on this GPU (total minus free, from cuMemGetInfo), for the workers' gauge.
    public func memoryInUse() throws -> Int {
        try exclusive {
            let memory = try context.memoryInfo()
            return memory.total - memory.free
        }
    }

    /// Runs `body` with the context current on this thread and the device to itself.
    func exclusive<R>(_ body: () throws -> R) throws -> R {
        lock.lock()
        defer { lock.unlock() }
        try context.makeCurrent()
        return try body()
    }
}

/// The compiled kernels, looked up by name once.
public struct CUDAKernels: Sendable {
    public let module: CUDAModule
    public let nvfp4Quantize: CUDAFunction
    public let bf16Amax: CUDAFunction
    public let bf16FirstNonFiniteRow: CUDAFunction
    public let embedGather: CUDAFunction
    public let f32ToBF16: CUDAFunction
    public let bf16ToF32: CUDAFunction
    public let rmsNorm: CUDAFunction
    public let rope: CUDAFunction
    public let swiGLU: CUDAFunction
    public let residualAdd: CUDAFunction
    public let attention32: CUDAFunction
    public let attention64: CUDAFunction
    public let attention128: CUDAFunction
    public let gptqDiagonal: CUDAFunction
    public let gptqPrepare: CUDAFunction
    public let gptqExtractUpper: CUDAFunction
    public let gptqGatherBF16: CUDAFunction
    public let gptqGatherF32: CUDAFunction
    public let gptqBlock: CUDAFunction
    public let gptqPack: CUDAFunction
    public let cacheKey: KernelCacheKey

    /// The CUDA C++ source, a resource of this module.
    public static func source() throws -> String {
        guard let url = Bundle.module.url(forResource: "nvfp4_kernels", withExtension: "cu", subdirectory: "Resources") else {
            throw CUDAError.invalidArgument(call: "CUDAKernels.source", reason: "resource nvfp4_kernels.cu is missing from the bundle")
        }
        return try String(contentsOf: url, encoding: .utf8)
    }

    public static let sourceName = "nvfp4_kernels.cu"

    init(context: CUDAContext, nvrtc: NVRTC, cache: KernelCache, logger: Logger?) throws {
        let source = try Self.source()
        let key = KernelCacheKey(source: source, architecture: context.architecture, compilerVersion: try nvrtc.version())
        cacheKey = key
        let started = Date()
        let (image, fromCache) = try cache.cubin(for: key) {
            try nvrtc.compileCubin(source: source, name: Self.sourceName, architecture: key.architecture)
        }
        logger?.info("kernels \(key.fileName): \(fromCache ? "loaded from" : "compiled into") \(cache.directory.path) in \(String(format: "%.2f", Date().timeIntervalSince(started))) s")
        module = try CUDAModule(context: context, image: image)
        nvfp4Quantize = try module.function("nvfp4_quantize")
        bf16Amax = try module.function("bf16_amax")
        bf16FirstNonFiniteRow = try module.function("bf16_first_nonfinite_row")
        embedGather = try module.function("embed_gather_bf16")
        f32ToBF16 = try module.function("f32_to_bf16")
        bf16ToF32 = try module.function("bf16_to_f32")
        rmsNorm = try module.function("rmsnorm_bf16")
        rope = try module.function("rope_bf16")
        swiGLU = try module.function("swiglu_bf16")
        residualAdd = try module.function("residual_add_bf16")
        attention32 = try module.function("attention_d32")
        attention64 = try module.function("attention_d64")
        attention128 = try module.function("attention_d128")
        gptqDiagonal = try module.function("gptq_diagonal")
        gptqPrepare = try module.function("gptq_prepare_f64")
        gptqExtractUpper = try module.function("gptq_extract_upper")
        gptqGatherBF16 = try module.function("gptq_gather_bf16")
        gptqGatherF32 = try module.function("gptq_gather_f32")
        gptqBlock = try module.function("gptq_block")
        gptqPack = try module.function("gptq_pack")
    }
}

/// Grow-only scratch buffers, reused across calls so the hot path never allocates.
// @unchecked: used only inside `CUDADevice.exclusive(_:)`, which holds the device's lock.
final class Workspace: @unchecked Sendable {
    let context: CUDAContext
    var buffers: [String: DeviceBuffer] = [:]
    var pinned: [String: PinnedHostBuffer] = [:]

    init(context: CUDAContext) { self.context = context }

    /// A device buffer named `name` of at least `bytes` (contents undefined).
    func device(_ name: String, bytes: Int) throws -> DeviceBuffer {
        if let buffer = buffers[name], buffer.byteCount >= bytes { return buffer }
        if buffers[name] != nil {
            try context.synchronize()  // queued work may still use the smaller buffer
            buffers[name] = nil
        }
        let buffer = try DeviceBuffer(context: context, byteCount: max(bytes, 256))
        buffers[name] = buffer
        return buffer
    }

    func host(_ name: String, bytes: Int) throws -> PinnedHostBuffer {
        if let buffer = pinned[name], buffer.byteCount >= bytes { return buffer }
        if pinned[name] != nil {
            try context.synchronize()
            pinned[name] = nil
        }
        let buffer = try PinnedHostBuffer(context: context, byteCount: max(bytes, 256))
        pinned[name] = buffer
        return buffer
    }

    func release() {
        buffers = [:]
        pinned = [:]
    }
}

/// A grid that covers `count` items with `threads` per block, capped for grid-stride loops.
func gridStride(_ count: Int, threads: Int = 256, maxBlocks: Int = 132 * 16) -> (Int, Int, Int) {
    (max(1, min(maxBlocks, (count + threads - 1) / threads)), 1, 1)
}
