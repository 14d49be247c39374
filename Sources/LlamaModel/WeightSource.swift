import Foundation

/// Floating-point element types accepted for source weights.
public enum WeightElementType: String, CaseIterable, Sendable {
    case bf16 = "BF16"
    case f16 = "F16"
    case f32 = "F32"

    public var byteWidth: Int { self == .f32 ? 4 : 2 }
}

/// Dtype (safetensors spelling, e.g. "BF16") and shape of a stored tensor.
public struct WeightTensorDescription: Sendable, Equatable {
    public var dtype: String
    public var shape: [Int]

    public init(dtype: String, shape: [Int]) {
        self.dtype = dtype
        self.shape = shape
    }

    public var elementCount: Int { shape.reduce(1, *) }
}

/// An error in the weights of a model, naming the tensor at fault.
public enum LlamaWeightError: Error, CustomStringConvertible, Equatable, Sendable {
    case missingTensor(name: String)
    case shapeMismatch(name: String, expected: [Int], actual: [Int])
    case unsupportedDType(name: String, dtype: String)
    /// NVFP4 blocks are 16 input features wide (spec §10 rule 9).
    case inFeaturesNotMultipleOf16(name: String, inFeatures: Int)
    case byteCountMismatch(name: String, expected: Int, actual: Int)

    public var description: String {
        switch self {
        case .missingTensor(let name):
            "tensor '\(name)' is missing from the model"
        case .shapeMismatch(let name, let expected, let actual):
            "tensor '\(name)' has shape \(actual), but the config implies \(expected)"
        case .unsupportedDType(let name, let dtype):
            "tensor '\(name)' has dtype \(dtype); only BF16, F16 and F32 weights are supported"
        case .inFeaturesNotMultipleOf16(let name, let inFeatures):
            "tensor '\(name)' has \(inFeatures) input features, not a multiple of the NVFP4 block size 16"
        case .byteCountMismatch(let name, let expected, let actual):
            "tensor '\(name)' holds \(actual) bytes, expected \(expected)"
        }
    }
}

/// Read access to a model's tensors by name. Backends load weights through it, so that a caller can hand them
/// the checkpoint itself, or an overlay that substitutes some tensors (e.g. dequantized NVFP4 weights, for
/// W4A4 emulation), without the backend knowing the difference.
public protocol WeightSource {
    /// Dtype and shape of the named tensor, or nil when there is none.
    func describeTensor(_ name: String) -> WeightTensorDescription?
    /// Calls `body` with the raw little-endian bytes of the named tensor.
    func withTensorBytes<R>(_ name: String, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R
}

extension WeightSource {
    /// The named tensor widened to f32, after checking that it exists, has `expectedShape`, a float dtype,
    /// and the right byte count.
    public func floats(_ name: String, expectedShape: [Int]) throws -> [Float] {
        guard let description = describeTensor(name) else { throw LlamaWeightError.missingTensor(name: name) }
        guard description.shape == expectedShape else {
            throw LlamaWeightError.shapeMismatch(name: name, expected: expectedShape, actual: description.shape)
        }
        guard let type = WeightElementType(rawValue: description.dtype) else {
            throw LlamaWeightError.unsupportedDType(name: name, dtype: description.dtype)
        }
        let count = description.elementCount
        return try withTensorBytes(name) { bytes in
            guard bytes.count == count * type.byteWidth else {
                throw LlamaWeightError.byteCountMismatch(name: name, expected: count * type.byteWidth, actual: bytes.count)
            }
            return widenToFloat(bytes, type: type, count: count)
        }
    }
}

/// Widens little-endian BF16/F16/F32 elements to f32. BF16 is the upper half of an f32, so it widens exactly.
public func widenToFloat(_ bytes: UnsafeRawBufferPointer, type: WeightElementType, count: Int) -> [Float] {
    precondition(bytes.count >= count * type.byteWidth, "buffer too small")
    return [Float](unsafeUninitializedCapacity: count) { output, initialized in
        switch type {
        case .f32:
            UnsafeMutableRawBufferPointer(output).copyMemory(from: UnsafeRawBufferPointer(rebasing: bytes[0..<(count * 4)]))
        case .bf16:
            for index in 0..<count {
                let bits = UInt32(UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: 2 * index, as: UInt16.self)))
                output[index] = Float(bitPattern: bits << 16)
            }
        case .f16:
            for index in 0..<count {
                let bits = UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: 2 * index, as: UInt16.self))
                output[index] = Float(Float16(bitPattern: bits))
            }
        }
        initialized = count
    }
}

/// Tensors held in memory. Used for tests and as the override layer of `OverlayWeightSource`.
public struct InMemoryWeightSource: WeightSource, Sendable {
    private var tensors: [String: (description: WeightTensorDescription, bytes: Data)] = [:]

    public init() {}

    public var names: [String] { tensors.keys.sorted() }

    /// Stores raw bytes under any dtype label (validation tests use this to store wrong dtypes).
    public mutating func set(_ name: String, dtype: String, shape: [Int], bytes: Data) {
        tensors[name] = (WeightTensorDescription(dtype: dtype, shape: shape), bytes)
    }

    /// Stores f32 values.
    public mutating func set(_ name: String, shape: [Int], floats: [Float]) {
        precondition(floats.count == shape.reduce(1, *), "value count does not match the shape")
        let bytes = floats.withUnsafeBytes { Data($0) }
        set(name, dtype: WeightElementType.f32.rawValue, shape: shape, bytes: bytes)
    }

    public func describeTensor(_ name: String) -> WeightTensorDescription? { tensors[name]?.description }

    public func withTensorBytes<R>(_ name: String, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        guard let tensor = tensors[name] else { throw LlamaWeightError.missingTensor(name: name) }
        return try tensor.bytes.withUnsafeBytes(body)
    }
}

/// A source whose tensors come from `overrides` when it has them and from `base` otherwise; for instance the
/// checkpoint with its Linear weights replaced by their NVFP4 dequantization.
public struct OverlayWeightSource<Base: WeightSource>: WeightSource {
    public let base: Base
    public let overrides: InMemoryWeightSource

    public init(base: Base, overrides: InMemoryWeightSource) {
        self.base = base
        self.overrides = overrides
    }

    public func describeTensor(_ name: String) -> WeightTensorDescription? {
        overrides.describeTensor(name) ?? base.describeTensor(name)
    }

    public func withTensorBytes<R>(_ name: String, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        if overrides.describeTensor(name) != nil { return try overrides.withTensorBytes(name, body) }
        return try base.withTensorBytes(name, body)
    }
}

/// Checks, before any work, that the model holds every tensor the config requires (spec §10 rule 9, §8):
/// each of the seven Linears of every layer, the layer norms, the embeddings, the final norm, and `lm_head`
/// unless embeddings are tied. Fails at the first problem, naming the tensor: a missing tensor, a shape
/// that differs from the config, a dtype other than BF16/F16/F32, or a Linear whose in_features is not a
/// multiple of 16. (Values are not scanned; the quantizer rejects NaN/Inf.)
public func validateWeights(config: LlamaConfig, describe: (String) -> WeightTensorDescription?) throws {
    for layer in 0..<config.numHiddenLayers {
        for linear in config.linears(layer: layer) where linear.inFeatures % 16 != 0 {
            throw LlamaWeightError.inFeaturesNotMultipleOf16(name: linear.weightName, inFeatures: linear.inFeatures)
        }
    }
    var required = config.allLinears.map { TensorSpec(name: $0.weightName, shape: $0.shape) }
    required += config.nonQuantizedTensors
    for tensor in required {
        guard let description = describe(tensor.name) else { throw LlamaWeightError.missingTensor(name: tensor.name) }
        guard description.shape == tensor.shape else {
            throw LlamaWeightError.shapeMismatch(name: tensor.name, expected: tensor.shape, actual: description.shape)
        }
        guard WeightElementType(rawValue: description.dtype) != nil else {
            throw LlamaWeightError.unsupportedDType(name: tensor.name, dtype: description.dtype)
        }
    }
}

/// `validateWeights(config:describe:)` over a `WeightSource`.
public func validateWeights(config: LlamaConfig, source: some WeightSource) throws {
    try validateWeights(config: config, describe: source.describeTensor)
}
