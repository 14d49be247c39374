import CUDABackend
import Foundation
import JobModel
import LlamaModel
import Logging
import NVFP4

/// The layers a GPU job quantized while calibration had their weights on the device, held until each layer's export
/// takes them (``LayerExporter`` then neither reads the weights for their amax nor uploads them again).
/// Bounded: while the export is `capacity` layers behind, further layers are left to the export's own path (read
/// from the source and quantized there, the same bytes), so host memory holds at most `capacity` layers' codes.
// @unchecked: `held` and `skipped` are guarded by `lock`; the calibration thread adds, the export thread takes.
public final class LoadedWeightQuantizations: @unchecked Sendable {
    public let capacity: Int
    private let lock = NSLock()
    private var held: [Int: LoadedLayerQuantization] = [:]
    private var skipped = 0
    private let logger: Logger

    public init(capacity: Int = 4, logger: Logger) {
        self.capacity = capacity
        self.logger = logger
    }

    /// The calibrator's observer: quantizes each loaded layer with `quantizer` unless `capacity` layers wait already.
    public func observer(config: LlamaConfig, quantizer: CUDANVFP4Quantizer) -> (Int, CUDABackend.LoadedLayer) throws -> Void {
        { [self] layer, loaded in
            let full = lock.withLock { held.count >= capacity }
            guard !full else {
                let first = lock.withLock { skipped += 1; return skipped == 1 }
                if first {
                    logger.info("the export is \(capacity) layers behind calibration: layer \(layer) and others like it will be quantized by the export from the model's files")
                }
                return
            }
            let started = ContinuousClock.now
            guard let quantized = try quantizer.quantize(loaded: loaded, linears: config.linears(layer: layer)) else { return }
            lock.withLock { held[layer] = quantized }
            logger.debug("quantized layer \(layer)'s weights on the GPU in \(ContinuousClock.now - started)")
        }
    }

    /// Layer `layer`'s quantization, removed from the store; nil when it was left to the export.
    public func take(layer: Int) -> LoadedLayerQuantization? {
        lock.withLock { held.removeValue(forKey: layer) }
    }

    public func removeAll() {
        lock.withLock { held = [:] }
    }
}

extension LoadedWeightQuantizations {
    /// A store fed by `runner`'s calibration when the job is W4A4 with round to nearest on a GPU (the case where the
    /// export's quantization is exactly the GPU quantizer over the weights the forward loaded); nil otherwise.
    public static func attach(to runner: Any, spec: JobSpec, config: LlamaConfig, device: ComputeDevice,
                              logger: Logger) -> LoadedWeightQuantizations? {
        guard case .cuda(let cudaDevice) = device, spec.scheme.quantizesActivations, spec.gptq == nil, spec.scaleSearch != .mse,
              let cudaRunner = runner as? LayerRangeRunner<CUDABackend> else { return nil }
        let store = LoadedWeightQuantizations(logger: logger)
        cudaRunner.loadedLayerObserver = store.observer(config: config, quantizer: CUDANVFP4Quantizer(device: cudaDevice))
        return store
    }
}
