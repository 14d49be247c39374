import COpenBLAS
import OpenBLASThreads
import ComputeBackend
import Foundation
import JobModel
import LlamaModel
import NVFP4

/// Each Linear's output error on real inputs: riding on the original model's forward (as its input transform, which
/// leaves the values alone) over the job's leading calibration samples, or the evaluation samples, it takes the input X of every Linear group on the first batch of each layer and measures
/// ‖X·Wᵀ − X̃·Q(W)ᵀ‖ / ‖X·Wᵀ‖, where Q(W) is the checkpoint's dequantized weight and X̃ is X as the NVFP4 GEMM sees it
/// (fake-quantized under the stored input scale for W4A4, unchanged for weight-only). It takes the first
/// ``rowLimit`` tokens of the first batch of each layer, which bounds its cost (two GEMMs of that many rows per Linear)
/// whatever the size of the report.
public final class LinearOutputErrorProbe: LinearInputTransform, @unchecked Sendable {
    private let config: LlamaConfig
    private let original: any WeightSource
    private let checkpoint: QuantizedCheckpoint
    private let inputScales: NVFP4InputFakeQuantization?
    // Guarded by `lock`: the backend may call transforms from its worker threads.
    private let lock = NSLock()
    private var measured: Set<String> = []
    private var sums: [String: (error: Double, norm: Double)] = [:]
    private var failure: (any Error)?
    private var busy = Duration.zero

    /// Tokens measured per Linear.
    public static let rowLimit = LinearQuality.outputErrorTokenLimit

    public init(config: LlamaConfig, original: any WeightSource, checkpoint: QuantizedCheckpoint) throws {
        self.config = config
        self.original = original
        self.checkpoint = checkpoint
        self.inputScales = try NVFP4InputFakeQuantization(checkpoint: checkpoint)
    }

    /// Time spent measuring (for the log: the probe's cost beside the report's).
    public var secondsSpent: Double {
        lock.lock()
        defer { lock.unlock() }
        return Double(busy.components.seconds) + Double(busy.components.attoseconds) * 1e-18
    }

    /// Module name → relative output error, for every Linear measured; rethrows what went wrong while measuring.
    public func relativeErrors() throws -> [String: Double] {
        lock.lock()
        defer { lock.unlock() }
        if let failure { throw failure }
        return sums.mapValues { $0.norm > 0 ? ($0.error / $0.norm).squareRoot() : 0 }
    }

    public func transform(_ values: UnsafeMutableBufferPointer<Float>, rows: Int, columns: Int, layer: Int, group: FusedGroup) {
        let linears = config.linears(layer: layer).filter { $0.kind.group == group }
        lock.lock()
        let fresh = linears.filter { !measured.contains($0.name) }
        for linear in fresh { measured.insert(linear.name) }
        lock.unlock()
        guard !fresh.isEmpty, rows > 0 else { return }
        let started = ContinuousClock.now
        defer {
            lock.lock()
            busy += ContinuousClock.now - started
            lock.unlock()
        }
        let rows = min(rows, Self.rowLimit)
        let values = UnsafeBufferPointer(rebasing: values[0 ..< rows * columns])
        var quantizedInput = Array(values)
        quantizedInput.withUnsafeMutableBufferPointer {
            inputScales?.transform($0, rows: rows, columns: columns, layer: layer, group: group)
        }
        for linear in fresh {
            // A Linear kept unquantized (`--exclude`) computes exactly what the original does.
            if checkpoint.isExcluded(linear) {
                lock.lock()
                sums[linear.name] = (0, 0)
                lock.unlock()
                continue
            }
            do {
                let weight = try original.floats(linear.weightName, expectedShape: [linear.outFeatures, linear.inFeatures])
                let dequantized = try checkpoint.dequantizedWeight(linear)
                let exact = Self.multiply(values, weight, rows: rows, inner: columns, outputs: linear.outFeatures)
                let approximate = quantizedInput.withUnsafeBufferPointer {
                    Self.multiply($0, dequantized, rows: rows, inner: columns, outputs: linear.outFeatures)
                }
                var error = 0.0, norm = 0.0
                for index in exact.indices {
                    let difference = Double(exact[index]) - Double(approximate[index])
                    error += difference * difference
                    norm += Double(exact[index]) * Double(exact[index])
                }
                lock.lock()
                sums[linear.name] = (error, norm)
                lock.unlock()
            } catch {
                lock.lock()
                if failure == nil { failure = error }
                lock.unlock()
            }
        }
    }

    /// `[rows, inner] · [outputs, inner]ᵀ`.
    static func multiply(_ input: UnsafeBufferPointer<Float>, _ weight: [Float], rows: Int, inner: Int, outputs: Int) -> [Float] {
        var result = [Float](repeating: 0, count: rows * outputs)
        weight.withUnsafeBufferPointer { weight in
            result.withUnsafeMutableBufferPointer { result in
                OpenBLASThreads.withConfiguredThreads {
                    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(rows), Int32(outputs), Int32(inner), 1,
                                input.baseAddress, Int32(inner), weight.baseAddress, Int32(inner), 0, result.baseAddress,
                                Int32(outputs))
                }
            }
        }
        return result
    }
}
