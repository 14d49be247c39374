import LlamaModel
import NVFP4
import SafeTensors

/// The original model's tensors, except that every Linear's `.weight` is the checkpoint's dequantized NVFP4
/// weight (f32), computed when the backend reads it, or for a Linear the checkpoint keeps unquantized its stored
/// weight as it is. Nothing is cached, so beyond the backend's own copy of a
/// layer only the one Linear being read is held. Embeddings, norms and `lm_head` are the checkpoint's where it stores
/// them (what a server loads; an exporter may have changed them, as AWQ folds scales into norms), else `base`'s.
public struct DequantizedWeightSource<Base: WeightSource>: WeightSource {
    public let base: Base
    public let checkpoint: QuantizedCheckpoint
    private let linearsByWeightName: [String: LinearSpec]

    public init(base: Base, checkpoint: QuantizedCheckpoint) {
        self.base = base
        self.checkpoint = checkpoint
        linearsByWeightName = Dictionary(uniqueKeysWithValues: checkpoint.config.allLinears.map { ($0.weightName, $0) })
    }

    public func describeTensor(_ name: String) -> WeightTensorDescription? {
        if let linear = linearsByWeightName[name] {
            if let dtype = checkpoint.unquantizedWeightDType(linear) {
                return WeightTensorDescription(dtype: dtype.rawValue, shape: linear.shape)
            }
            return WeightTensorDescription(dtype: WeightElementType.f32.rawValue, shape: linear.shape)
        }
        return checkpoint.storedNonLinearTensor(name) ?? base.describeTensor(name)
    }

    public func withTensorBytes<R>(_ name: String, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        guard let linear = linearsByWeightName[name] else {
            if checkpoint.storedNonLinearTensor(name) != nil { return try checkpoint.withStoredNonLinearTensor(name, body) }
            return try base.withTensorBytes(name, body)
        }
        if checkpoint.isExcluded(linear) { return try checkpoint.withUnquantizedWeight(linear) { try body($1) } }
        let values = try checkpoint.dequantizedWeight(linear)
        return try values.withUnsafeBytes(body)
    }
}
