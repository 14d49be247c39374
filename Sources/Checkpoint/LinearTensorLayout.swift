import Foundation
import LlamaModel
import NVFP4
import SafeTensors

/// One quantized Linear, ready to be written: its NVFP4 weight and, for W4A4, its activation scale.
public struct QuantizedLinear: Sendable {
    public let spec: LinearSpec
    public let weight: NVFP4Weight
    /// From the calibrated activation amax of the Linear's fused group; nil for weight-only checkpoints.
    public let inputScale: InputScale?

    public init(spec: LinearSpec, weight: NVFP4Weight, inputScale: InputScale?) {
        self.spec = spec
        self.weight = weight
        self.inputScale = inputScale
    }
}

/// Names, dtypes, shapes and bytes of the tensors that represent one Linear in a layout (spec §6, §7). A Linear
/// excluded from quantization (`--exclude`) is one tensor, `<module>.weight`, copied from the source in its dtype.
public struct LinearTensorLayout: Sendable {
    public let layout: CheckpointLayout
    public let scheme: QuantizationScheme
    /// Module name → dtype of its source weight, for each Linear kept unquantized.
    public let excluded: [String: SafeTensorsDType]

    public init(layout: CheckpointLayout, scheme: QuantizationScheme, excluded: [String: SafeTensorsDType] = [:]) {
        self.layout = layout
        self.scheme = scheme
        self.excluded = excluded
    }

    public func isExcluded(_ spec: LinearSpec) -> Bool { excluded[spec.name] != nil }

    /// Module names of the excluded Linears of `config`, in model order (as the config's ignore lists name them).
    public func excludedModuleNames(config: LlamaConfig) -> [String] {
        excluded.isEmpty ? [] : config.allLinears.filter(isExcluded).map(\.name)
    }

    public enum Role: CaseIterable, Sendable {
        case packedWeight, blockScales, weightGlobalScale, inputScale
    }

    /// Tensor-name suffix of each role (after `<module>.`).
    public func suffix(_ role: Role) -> String {
        switch (layout, role) {
        case (.compressedTensors, .packedWeight): return "weight_packed"
        case (.compressedTensors, .blockScales): return "weight_scale"
        case (.compressedTensors, .weightGlobalScale): return "weight_global_scale"
        case (.compressedTensors, .inputScale): return "input_global_scale"
        case (.modelopt, .packedWeight): return "weight"
        case (.modelopt, .blockScales): return "weight_scale"
        case (.modelopt, .weightGlobalScale): return "weight_scale_2"
        case (.modelopt, .inputScale): return "input_scale"
        }
    }

    public var roles: [Role] {
        scheme.quantizesActivations ? Role.allCases : [.packedWeight, .blockScales, .weightGlobalScale]
    }

    /// Scalars are `[1]` in compressed-tensors and 0-d in modelopt; never `[1, 1]`.
    public var scalarShape: [Int] { layout == .compressedTensors ? [1] : [] }

    public func dtype(_ role: Role) -> SafeTensorsDType {
        switch role {
        case .packedWeight: return .u8
        case .blockScales: return .f8e4m3
        case .weightGlobalScale, .inputScale: return .f32
        }
    }

    public func shape(_ role: Role, of spec: LinearSpec) -> [Int] {
        switch role {
        case .packedWeight: return [spec.outFeatures, spec.inFeatures / 2]
        case .blockScales: return [spec.outFeatures, spec.inFeatures / 16]
        case .weightGlobalScale, .inputScale: return scalarShape
        }
    }

    public func tensorName(_ role: Role, of spec: LinearSpec) -> String { "\(spec.name).\(suffix(role))" }

    /// The planned tensors of one Linear, in the order they are written.
    public func plannedTensors(for spec: LinearSpec) -> [PlannedTensor] {
        if let dtype = excluded[spec.name] { return [PlannedTensor(name: spec.weightName, dtype: dtype, shape: spec.shape)] }
        return roles.map { PlannedTensor(name: tensorName($0, of: spec), dtype: dtype($0), shape: shape($0, of: spec)) }
    }

    /// Global scales as stored: compressed-tensors stores reciprocals, `f32(1/S)`.
    public func storedScale(_ scale: Float) -> Float {
        layout == .compressedTensors ? 1 / scale : scale
    }

    /// The activation scale as this layout stores it: `input_global_scale = f32(1/Sx)` or `input_scale = Sx`.
    public func storedValue(_ scale: InputScale) -> Float {
        layout == .compressedTensors ? scale.globalScale : scale.value
    }

    /// A stored activation scale read back in `input_scale` terms.
    public func inputScale(stored value: Float) -> InputScale {
        InputScale(stored: layout == .compressedTensors ? 1 / value : value)
    }

    /// Bytes of each planned tensor of `linear`, in `plannedTensors` order.
    public func tensorBytes(_ linear: QuantizedLinear) throws -> [(name: String, bytes: Data)] {
        try roles.map { role in
            let name = tensorName(role, of: linear.spec)
            switch role {
            case .packedWeight:
                return (name, Data(linear.weight.packed))
            case .blockScales:
                return (name, Data(linear.weight.blockScales))
            case .weightGlobalScale:
                return (name, float32Bytes(storedScale(linear.weight.weightScale2)))
            case .inputScale:
                guard let scale = linear.inputScale else {
                    throw CheckpointError(linear.spec.name, "W4A4 checkpoint needs an input scale, but none was calibrated")
                }
                return (name, float32Bytes(storedValue(scale)))
            }
        }
    }
}

func float32Bytes(_ value: Float) -> Data {
    withUnsafeBytes(of: value.bitPattern.littleEndian) { Data($0) }
}
