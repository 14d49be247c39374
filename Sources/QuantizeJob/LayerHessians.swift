import Calibration
import ComputeBackend
import Foundation
import GPTQ
import LlamaModel

/// GPTQ's Hessians of a worker's layers, one per shared input (q/k/v share one, gate/up share one), gathered during
/// the calibration forward that already runs and taken, once complete, by the export of their layer. They never
/// leave the worker that holds the layer.
///
/// A chunk is counted once per input even when a resumed job runs it again, and a layer's export refuses Hessians that
/// have not seen every chunk of the plan (``QuantizeJobError/incompleteHessian(layer:group:chunksSeen:chunks:)``).
/// Chunks fold in in the order they arrive; the schedules run them in plan order, so the sums, and the bytes written,
/// do not depend on how the layers are split over workers.
public final class LayerHessians: CalibrationInputObserver, @unchecked Sendable {
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
