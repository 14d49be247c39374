import CUDABackend
import Calibration
import ComputeBackend
import Foundation
import LlamaModel
import NVFP4

/// GPTQ's Hessians of a worker's layers on the GPU (``LayerHessians``' counterpart for the CUDA backend): the
/// calibration forward adds each Linear input to its layer's ``LayerDeviceHessians`` where the input already is, and the
/// layer is quantized there by ``CUDAGPTQ`` once every chunk has passed. Nothing crosses to the host but the results.
///
/// As on the host, a chunk is counted once per layer even when it runs again, and a layer whose Hessians have not seen
/// every chunk of the plan is refused. A layer's sums are allocated when its first chunk arrives and freed when it is
/// quantized, so a layer-at-a-time schedule holds one layer's (`4 × in_features² × 4` bytes at most).
public final class DeviceHessianStore: GPTQHessianStore, @unchecked Sendable {
    public let layers: Range<Int>
    public let chunkCount: Int
    public let gptq: CUDAGPTQ
    private let config: LlamaConfig
    // Guarded by `lock`: calibration adds, exports (on another queue) take.
    private let lock = NSLock()
    private var sums: [Int: LayerDeviceHessians] = [:]
    private var chunksSeen: [Int: Set<Int>] = [:]

    /// Opens cuSOLVER on `device` (a ``CUDAError/libraryNotFound(library:tried:)`` naming it when it is missing).
    /// The column loop's products run on TF32 tensor cores: on an H200 that brings a 70B layer's Hessians + GPTQ from
    /// 2.8× to 2.0× its calibration forward, for 0.02–0.13% of codes that differ from the CPU's instead of ≤ 0.003%,
    /// at the same output error (Docs/validation.md).
    public init(layers: Range<Int>, chunkCount: Int, device: CUDADevice, config: LlamaConfig) throws {
        self.layers = layers
        self.chunkCount = chunkCount
        self.gptq = try CUDAGPTQ(device: device, tf32Products: true)
        self.config = config
    }

    /// Device bytes one layer's Hessians take (FP32 sums of its four inputs).
    public static func bytes(config: LlamaConfig) -> Int {
        let widths = [config.hiddenSize, config.numAttentionHeads * config.headDim, config.hiddenSize, config.intermediateSize]
        return widths.reduce(0) { $0 + $1 * $1 * 4 }
    }

    public func inputTransform(forChunk chunk: Int) -> any LinearInputTransform {
        ChunkDeviceHessians(store: self, chunk: chunk)
    }

    /// The sums `chunk` adds `layer`'s inputs to, or nil when the chunk was counted for the layer before.
    fileprivate func hessians(layer: Int, chunk: Int) throws -> LayerDeviceHessians? {
        guard layers.contains(layer) else { return nil }
        lock.lock()
        defer { lock.unlock() }
        guard chunksSeen[layer, default: []].insert(chunk).inserted else { return nil }
        if let existing = sums[layer] { return existing }
        let created = try LayerDeviceHessians(device: gptq.device, hiddenSize: config.hiddenSize,
                                              attentionWidth: config.numAttentionHeads * config.headDim,
                                              intermediateSize: config.intermediateSize)
        sums[layer] = created
        return created
    }

    /// The complete Hessians of `layer`, removed from the store.
    public func take(layer: Int) throws -> LayerDeviceHessians {
        lock.lock()
        defer { lock.unlock() }
        let seen = chunksSeen[layer]?.count ?? 0
        guard seen == chunkCount, let layerSums = sums[layer] else {
            throw QuantizeJobError.incompleteHessian(layer: layer, group: FusedGroup.qkv.rawValue, chunksSeen: seen, chunks: chunkCount)
        }
        sums[layer] = nil
        chunksSeen[layer] = nil
        return layerSums
    }

    public func quantizeLayer(_ layer: Int, exporter: LayerExporter) throws -> [String: NVFP4Weight] {
        try exporter.gptqWeights(layer: layer, deviceHessians: try take(layer: layer), gptq: gptq)
    }

    public func removeAll() {
        lock.lock()
        sums = [:]
        chunksSeen = [:]
        lock.unlock()
    }
}

/// One chunk's view of ``DeviceHessianStore``. The CUDA backend asks it for the sums; a host backend would call
/// `transform` instead, which adds nothing, so the layer's Hessians stay incomplete and its quantization refuses them.
private struct ChunkDeviceHessians: DeviceHessianObserver {
    let store: DeviceHessianStore
    let chunk: Int

    func deviceHessians(layer: Int) throws -> LayerDeviceHessians? {
        try store.hessians(layer: layer, chunk: chunk)
    }

    func transform(_ values: UnsafeMutableBufferPointer<Float>, rows: Int, columns: Int, layer: Int, group: FusedGroup) {}
}
