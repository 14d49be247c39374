import ComputeBackend
import LlamaModel

/// Supplies each layer's activation amax values for W4A4: max |x| of every observed Linear input over all
/// calibration samples. Layers are asked for in order, 0 first.
public protocol ActivationCalibrator: AnyObject {
    func activationAmax(layer: Int) throws -> [FusedGroup: Float]
}

/// Where a layer-streaming calibration stands, reported after each chunk of samples.
public struct CalibrationProgress: Sendable, Equatable {
    /// The layer being calibrated, 0-based.
    public var layer: Int
    public var layerCount: Int
    /// Samples of this layer already run through it (cumulative, reaches `sampleCount` at the layer's end).
    public var samplesDone: Int
    public var sampleCount: Int
    /// Tokens per second over this layer so far, loading its weights included.
    public var tokensPerSecond: Double
    /// Seconds left for the whole calibration (all layers) at the rate seen so far; nil before any rate is known.
    public var estimatedSecondsRemaining: Double?

    public init(layer: Int, layerCount: Int, samplesDone: Int, sampleCount: Int, tokensPerSecond: Double,
                estimatedSecondsRemaining: Double?) {
        self.layer = layer
        self.layerCount = layerCount
        self.samplesDone = samplesDone
        self.sampleCount = sampleCount
        self.tokensPerSecond = tokensPerSecond
        self.estimatedSecondsRemaining = estimatedSecondsRemaining
    }
}

/// A calibration that cannot go on, naming the layer (and sample, where known) at fault.
public enum CalibrationError: Error, CustomStringConvertible, Equatable, Sendable {
    /// Options or samples that cannot be calibrated with.
    case invalidSetup(String)
    /// Layers must be asked for in order 0, 1, 2, …
    case layerOutOfOrder(requested: Int, expected: Int)
    case layerOutOfRange(layer: Int, layerCount: Int)
    /// A Linear input whose max |x| is zero (never exercised) or not finite. `samples` is the chunk of samples
    /// where a non-finite value appeared (indices into the calibration set), nil for a zero over all samples.
    case invalidAmax(layer: Int, group: FusedGroup, amax: Float, samples: ClosedRange<Int>?)
    /// A NaN or infinity in the hidden states after `layer` (nil: in the embeddings) for sample `sample`.
    case nonFiniteHiddenState(layer: Int?, sample: Int, source: String)
    /// Spilled hidden states could not be written or read back.
    case scratchFile(path: String, message: String)
    /// An earlier call failed part-way through a layer, so the hidden states are no longer consistent.
    case failedEarlier(layer: Int)
    /// `finish()` was called, or every layer is done.
    case finished
    /// The built-in calibration set is text; a model without a usable tokenizer needs token-id calibration data.
    case tokenizerRequired(model: String)
    /// The backend's own embedding gather gave other values than the host's for the first chunk (checked once).
    case residentEmbeddingMismatch(sample: Int, differing: Int)

    public var description: String {
        switch self {
        case .invalidSetup(let message):
            return "calibration: \(message)"
        case .layerOutOfOrder(let requested, let expected):
            return "calibration: layer \(requested) was requested, but layers are calibrated in order and the next one is \(expected)"
        case .layerOutOfRange(let layer, let layerCount):
            return "calibration: layer \(layer) does not exist; the model has \(layerCount) layers"
        case .invalidAmax(let layer, let group, let amax, let samples):
            let names = group.members.map { "model.layers.\(layer).\($0.rawValue)" }.joined(separator: ", ")
            if let samples {
                return "calibration: layer \(layer): input of \(names) has amax \(amax) over samples "
                    + "\(samples.lowerBound)...\(samples.upperBound); the forward produced a non-finite value"
            }
            return "calibration: layer \(layer): input of \(names) has amax \(amax) over all samples; "
                + "a zero amax means the Linear was never exercised (spec §4)"
        case .nonFiniteHiddenState(let layer, let sample, let source):
            let place = layer.map { "the output of layer \($0)" } ?? "the embeddings"
            return "calibration: \(place) for sample \(sample) (\(source)) contains NaN or infinity"
        case .residentEmbeddingMismatch(let sample, let differing):
            return "calibration: the backend's embedding gather differs from the host's in \(differing) values of the first chunk "
                + "(from sample \(sample)); stopping rather than calibrate on them"
        case .scratchFile(let path, let message):
            return "calibration scratch file \(path): \(message)"
        case .failedEarlier(let layer):
            return "calibration: layer \(layer) failed earlier, so the hidden states are incomplete; start a new calibration"
        case .finished:
            return "calibration: already finished; its hidden states were released"
        case .tokenizerRequired(let model):
            return "the built-in calibration set is text and needs the model's tokenizer.json (none usable in \(model)); "
                + "pass --calib with input_ids records instead"
        }
    }
}

/// Sees every Linear input of the calibration forward, chunk by chunk: what GPTQ's Hessians are made from.
public protocol CalibrationInputObserver: AnyObject, Sendable {
    /// The transform the forward of `chunk` runs its Linear inputs through (it must leave them unchanged).
    func inputTransform(forChunk chunk: Int) -> any LinearInputTransform
}

/// Replaces a layer's weights once every chunk has passed it (GPTQ's propagation of quantized outputs): the layer then
/// runs over every chunk again with the weights returned, and those outputs, not the first pass's, feed the next layer.
/// The first pass only observes (amax, the ``CalibrationInputObserver``) and leaves the chunks' states as they were.
public protocol LayerPropagation: AnyObject {
    /// The weights to run `layer` with for its outputs, asked once its observing pass is done.
    func propagatedWeights(layer: Int) throws -> any WeightSource
}
