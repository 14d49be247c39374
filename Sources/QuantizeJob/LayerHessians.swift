import Calibration
import ComputeBackend
import Foundation
import GPTQ
import LlamaModel
import NVFP4

/// Where a range's GPTQ Hessians gather during calibration, and how a layer is quantized with them once complete:
/// ``LayerHessians`` on the host (the CPU backend), ``DeviceHessianStore`` on the GPU.
public protocol GPTQHessianStore: CalibrationInputObserver {
    /// The GPTQ weights of `layer`'s quantized Linears (module name → weight) from its complete Hessians, which are
    /// dropped; throws ``QuantizeJobError/incompleteHessian(layer:group:chunksSeen:chunks:)`` when a chunk is missing.
    func quantizeLayer(_ layer: Int, exporter: LayerExporter) throws -> [String: NVFP4Weight]
    /// Drops everything (the job ended or the range was re-planned).
    func removeAll()
}

/// GPTQ's Hessians of a worker's layers, one per shared input (q/k/v share one, gate/up share one), gathered during
/// the calibration forward that already runs and taken, once complete, by the export of their layer. They never
/// leave the worker that holds the layer.
///
/// A chunk is counted once per input even when a resumed job runs it again, and a layer's export refuses Hessians that
/// have not seen every chunk of the plan (``QuantizeJobError/incompleteHessian(layer:group:chunksSeen:chunks:)``).
/// Chunks fold in in the order they arrive; the schedules run them in plan order, so the sums, and the bytes written,
/// do not depend on how the layers are split over workers.
public final class LayerHessians: GPTQHessianStore, @unchecked Sendable {
    private struct Key: Hashable {
        let layer: Int
        let group: FusedGroup
    }

    public let layers: Range<Int>
    public let chunkCount: Int
    // Guarded by `lock`: the backend may call transforms from its worker threads, and exports run beside calibration.
    private let lock = NSLock()
    private var accumulators: [Key: HessianAccumulator] = [:]
    private var chunksSeen: [Key: Set<Int>] = [:]

    public init(layers: Range<Int>, chunkCount: Int) {
        self.layers = layers
        self.chunkCount = chunkCount
    }

    /// Bytes the Hessians of `layers` take at most (each `in_features² × 8`): the memory GPTQ adds to a range.
    public static func bytes(config: LlamaConfig, layers: Range<Int>) -> Int {
        layers.reduce(0) { total, layer in
            total + FusedGroup.allCases.reduce(0) { sum, group in
                let width = config.linears(layer: layer).first { $0.kind.group == group }?.inFeatures ?? 0
                return sum + width * width * MemoryLayout<Double>.size
            }
        }
    }

    public func inputTransform(forChunk chunk: Int) -> any LinearInputTransform {
        ChunkInputs(hessians: self, chunk: chunk)
    }

    /// The complete Hessians of `layer`, removed from the store (an export takes them once).
    public func take(layer: Int) throws -> [FusedGroup: HessianAccumulator] {
        lock.lock()
        defer { lock.unlock() }
        var result: [FusedGroup: HessianAccumulator] = [:]
        for group in FusedGroup.allCases {
            let key = Key(layer: layer, group: group)
            let seen = chunksSeen[key]?.count ?? 0
            guard seen == chunkCount, let accumulator = accumulators[key] else {
                throw QuantizeJobError.incompleteHessian(layer: layer, group: group.rawValue, chunksSeen: seen, chunks: chunkCount)
            }
            result[group] = accumulator
        }
        for group in FusedGroup.allCases {
            accumulators[Key(layer: layer, group: group)] = nil
            chunksSeen[Key(layer: layer, group: group)] = nil
        }
        return result
    }

    public func quantizeLayer(_ layer: Int, exporter: LayerExporter) throws -> [String: NVFP4Weight] {
        try exporter.gptqWeights(layer: layer, hessians: try take(layer: layer))
    }

    /// Drops everything (the job ended or the range was re-planned).
    public func removeAll() {
        lock.lock()
        accumulators = [:]
        chunksSeen = [:]
        lock.unlock()
    }

    fileprivate func add(_ values: UnsafeMutableBufferPointer<Float>, rows: Int, columns: Int, layer: Int,
                         group: FusedGroup, chunk: Int) {
        guard layers.contains(layer), rows > 0 else { return }
        let key = Key(layer: layer, group: group)
        lock.lock()
        defer { lock.unlock() }
        guard chunksSeen[key, default: []].insert(chunk).inserted else { return }
        var accumulator = accumulators.removeValue(forKey: key) ?? HessianAccumulator(columns: columns)
        accumulator.add(rows: UnsafeBufferPointer(rebasing: values[0 ..< rows * columns]), count: rows)
        accumulators[key] = accumulator
    }
}

/// One chunk's view of ``LayerHessians``: adds each Linear input to its Hessian and leaves it unchanged.
private struct ChunkInputs: LinearInputTransform {
    let hessians: LayerHessians
    let chunk: Int

    func transform(_ values: UnsafeMutableBufferPointer<Float>, rows: Int, columns: Int, layer: Int, group: FusedGroup) {
        hessians.add(values, rows: rows, columns: columns, layer: layer, group: group, chunk: chunk)
    }
}

/// GPTQ with `--propagate quantized`: once every chunk has passed a layer, its Hessians are complete, so the layer is
/// quantized there and then, and the next layer calibrates on the outputs of the dequantized weights (as llm-compressor's
/// sequential pipeline does). The weights are kept for the layer's export, which writes them as they are.
public final class GPTQPropagation: LayerPropagation, @unchecked Sendable {
    private let hessians: any GPTQHessianStore
    private let exporter: LayerExporter
    private let source: any WeightSource
    private let config: LlamaConfig
    // Guarded by `lock`: calibration fills it, exports (on another queue) take from it.
    private let lock = NSLock()
    private var weights: [Int: [String: NVFP4Weight]] = [:]

    public init(hessians: any GPTQHessianStore, exporter: LayerExporter, source: any WeightSource, config: LlamaConfig) {
        self.hessians = hessians
        self.exporter = exporter
        self.source = source
        self.config = config
    }

    public func propagatedWeights(layer: Int) throws -> any WeightSource {
        let quantized = try hessians.quantizeLayer(layer, exporter: exporter)
        lock.lock()
        weights[layer] = quantized
        lock.unlock()
        var replaced: [String: [Float]] = [:]
        for linear in config.linears(layer: layer) {
            if let weight = quantized[linear.name] { replaced[linear.weightName] = NVFP4Quantizer.dequantize(weight) }
        }
        return ReplacedWeights(base: source, replaced: replaced)
    }

    /// The GPTQ weights computed for `layer` during calibration, once (nil when they were not, or were taken).
    public func takeWeights(layer: Int) -> [String: NVFP4Weight]? {
        lock.lock()
        defer { lock.unlock() }
        return weights.removeValue(forKey: layer)
    }

    public func removeAll() {
        lock.lock()
        weights = [:]
        lock.unlock()
    }
}

/// `base`'s tensors, except the named ones, given as f32.
struct ReplacedWeights: WeightSource {
    let base: any WeightSource
    let replaced: [String: [Float]]

    func describeTensor(_ name: String) -> WeightTensorDescription? {
        guard replaced[name] != nil, let description = base.describeTensor(name) else { return base.describeTensor(name) }
        return WeightTensorDescription(dtype: WeightElementType.f32.rawValue, shape: description.shape)
    }

    func withTensorBytes<R>(_ name: String, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        guard let values = replaced[name] else { return try base.withTensorBytes(name, body) }
        return try values.withUnsafeBytes(body)
    }
}
