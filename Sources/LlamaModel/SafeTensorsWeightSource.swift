import SafeTensors

/// A checkpoint directory (single file or sharded with an index) read through its memory map.
extension SafeTensorsModel: WeightSource {
    public func describeTensor(_ name: String) -> WeightTensorDescription? {
        guard contains(name), let info = try? info(name) else { return nil }
        return WeightTensorDescription(dtype: info.dtype.rawValue, shape: info.shape)
    }

    public func withTensorBytes<R>(_ name: String, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        try withBytes(name, body)
    }
}

/// A single safetensors file read through its memory map.
extension SafeTensorsFile: WeightSource {
    public func describeTensor(_ name: String) -> WeightTensorDescription? {
        guard contains(name), let info = try? info(name) else { return nil }
        return WeightTensorDescription(dtype: info.dtype.rawValue, shape: info.shape)
    }

    public func withTensorBytes<R>(_ name: String, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        try withBytes(name, body)
    }
}

/// ``validateWeights(config:describe:)`` over a checkpoint directory.
public func validateWeights(config: LlamaConfig, model: SafeTensorsModel) throws {
    try validateWeights(config: config, source: model)
}
