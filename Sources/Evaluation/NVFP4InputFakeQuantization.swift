import ComputeBackend
import LlamaModel
import NVFP4

/// W4A4 emulation of Linear inputs: each observed input is rounded to NVFP4 with dynamic per-16 block scales
/// under its layer and group's calibrated `Sx` (`NVFP4ActivationEmulation.fakeQuantize`), which is what the
/// NVFP4 GEMM does to its activations at run time. Groups without a scale are left unchanged.
public struct NVFP4InputFakeQuantization: LinearInputTransform {
    /// `Sx` per layer and fused group.
    public let inputScales: [[FusedGroup: InputScale]]

    public init(inputScales: [[FusedGroup: InputScale]]) {
        self.inputScales = inputScales
    }

    /// The scales of every layer of `checkpoint`; nil for a weight-only checkpoint.
    public init?(checkpoint: QuantizedCheckpoint) throws {
        guard checkpoint.scheme.quantizesActivations else { return nil }
        inputScales = try (0..<checkpoint.config.numHiddenLayers).map { try checkpoint.inputScales(layer: $0) }
    }

    public func transform(_ values: UnsafeMutableBufferPointer<Float>, rows: Int, columns: Int, layer: Int,
                          group: FusedGroup) {
        guard inputScales.indices.contains(layer), let scale = inputScales[layer][group] else { return }
        NVFP4ActivationEmulation.fakeQuantize(values, cols: columns, inputScale: scale)
    }
}
