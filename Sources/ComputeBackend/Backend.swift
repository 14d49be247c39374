import Foundation
import LlamaModel

/// The operations calibration and evaluation need from a compute backend. See ``ComputeBackendOverview``.
public protocol ComputeBackend: Sendable {
    /// One decoder layer's weights in the backend's memory. Dropping the last reference frees them.
    associatedtype LoadedLayer: Sendable
    /// The final norm and the LM head (the embedding table when tied), for logits and perplexity.
    associatedtype LoadedOutputHead: Sendable

    var config: LlamaConfig { get }

    /// Hidden states held in the backend's own memory between layers (see ``ResidentForwardResult``); the host
    /// ``HiddenStates`` for a backend without memory of its own.
    associatedtype ResidentStates = HiddenStates
    /// A forward that was enqueued and not yet waited for.
    associatedtype PendingForward = ResidentForwardResult

    /// Bytes of resident states the backend can hold now; 0 keeps states on the host.
    func residentStateCapacity() throws -> Int
    /// Bytes one chunk of `tokens` tokens takes as resident states.
    func residentStateBytes(tokens: Int) -> Int
    /// Copies host states of `batch` into the backend's memory.
    func makeResident(_ hidden: HiddenStates, batch: SequenceBatch) throws -> ResidentStates
    /// Copies resident states back to the host.
    func hostStates(_ states: ResidentStates) throws -> HiddenStates
    /// Embeds straight into resident states, from an embedding table it keeps in its own memory until the returned
    /// embedder is dropped; nil where the backend has no such path (callers then gather on the host with
    /// ``embed(_:from:)`` and call ``makeResident(_:batch:)``). The states must equal that path's, bit for bit.
    func residentEmbedder(from source: some WeightSource) throws -> ResidentEmbedder<ResidentStates>?
    /// Starts one decoder layer over resident states, in place; it may return before the work is done.
    func enqueueForward(layer: LoadedLayer, states: inout ResidentStates, batch: SequenceBatch) throws -> PendingForward
    /// Waits for an enqueued forward and returns what it observed.
    func completeForward(_ pending: PendingForward) throws -> ResidentForwardResult

    /// Loads decoder layer `index` (7 Linears, 2 norms) from `source`, checking names and shapes against
    /// ``config``.
    func loadLayer(_ index: Int, from source: some WeightSource) throws -> LoadedLayer

    /// Runs one decoder layer over `hidden` in place and returns the max |x| of its observed Linear inputs
    /// over every token of the batch. `inputTransform`, when given, is applied to each observed input after
    /// observation and before its GEMM.
    func forward(layer: LoadedLayer, hidden: inout HiddenStates, batch: SequenceBatch,
                 inputTransform: (any LinearInputTransform)?) throws -> ObservedAmax

    /// `embed_tokens` rows for `tokenIDs` (no scaling), as `[tokenIDs.count, hiddenSize]`.
    /// A default host-side gather is provided.
    func embed(_ tokenIDs: [Int], from source: some WeightSource) throws -> HiddenStates

    /// Loads `model.norm.weight` and `lm_head.weight` (or `model.embed_tokens.weight` when tied).
    func loadOutputHead(from source: some WeightSource) throws -> LoadedOutputHead

    /// `lm_head(norm(hidden))`, row-major `[tokens, vocabSize]`.
    func logits(_ hidden: HiddenStates, head: LoadedOutputHead) throws -> [Float]

    /// The summed negative log-likelihood of each sample's next tokens: row t of a sample predicts its token
    /// t+1 (so a sample of T tokens contributes T−1 predictions). `tokenIDs` are the batch's tokens,
    /// concatenated like the rows of `hidden`.
    func negativeLogLikelihood(_ hidden: HiddenStates, batch: SequenceBatch, tokenIDs: [Int],
                               head: LoadedOutputHead) throws -> NegativeLogLikelihood
}

/// Gathers token embeddings into a backend's resident states (see ``ComputeBackend/residentEmbedder(from:)``).
public struct ResidentEmbedder<States> {
    /// The states of `tokenIDs` (checked against the vocabulary) for `batch`, and the first row that is not finite
    /// (nil when all are).
    public let embed: (_ tokenIDs: [Int], _ batch: SequenceBatch) throws -> (states: States, firstNonFiniteRow: Int?)

    public init(embed: @escaping (_ tokenIDs: [Int], _ batch: SequenceBatch) throws -> (states: States, firstNonFiniteRow: Int?)) {
        self.embed = embed
    }
}

extension ComputeBackend {
    /// No resident embedding: callers gather on the host.
    public func residentEmbedder(from source: some WeightSource) throws -> ResidentEmbedder<ResidentStates>? { nil }

    /// ``forward(layer:hidden:batch:inputTransform:)`` without a transform: the calibration forward.
    public func forward(layer: LoadedLayer, hidden: inout HiddenStates, batch: SequenceBatch) throws -> ObservedAmax {
        try forward(layer: layer, hidden: &hidden, batch: batch, inputTransform: nil)
    }

    public func embed(_ tokenIDs: [Int], from source: some WeightSource) throws -> HiddenStates {
        try gatherEmbeddings(tokenIDs, config: config, source: source)
    }
}

/// Rows of `model.embed_tokens.weight` for `tokenIDs`, widened to f32, reading only the rows needed.
public func gatherEmbeddings(_ tokenIDs: [Int], config: LlamaConfig, source: some WeightSource) throws -> HiddenStates {
    let name = LlamaConfig.embedTokensName
    let shape = [config.vocabSize, config.hiddenSize]
    guard let description = source.describeTensor(name) else { throw LlamaWeightError.missingTensor(name: name) }
    guard description.shape == shape else {
        throw LlamaWeightError.shapeMismatch(name: name, expected: shape, actual: description.shape)
    }
    guard let type = WeightElementType(rawValue: description.dtype) else {
        throw LlamaWeightError.unsupportedDType(name: name, dtype: description.dtype)
    }
    for (position, tokenID) in tokenIDs.enumerated() where !(0..<config.vocabSize).contains(tokenID) {
        throw ComputeBackendError.tokenIDOutOfRange(position: position, tokenID: tokenID, vocabSize: config.vocabSize)
    }
    let width = config.hiddenSize
    let rowBytes = width * type.byteWidth
    let values = try source.withTensorBytes(name) { bytes -> [Float] in
        guard bytes.count == rowBytes * config.vocabSize else {
            throw LlamaWeightError.byteCountMismatch(name: name, expected: rowBytes * config.vocabSize, actual: bytes.count)
        }
        var values: [Float] = []
        values.reserveCapacity(tokenIDs.count * width)
        for tokenID in tokenIDs {
            let row = UnsafeRawBufferPointer(rebasing: bytes[(tokenID * rowBytes)..<((tokenID + 1) * rowBytes)])
            values += widenToFloat(row, type: type, count: width)
        }
        return values
    }
    return HiddenStates(hiddenSize: width, values: values)
}

extension ComputeBackend {
    /// ``negativeLogLikelihood(_:batch:tokenIDs:head:)`` from ``logits(_:head:)``: checks the token ids, then takes the
    /// logits of the rows that predict a next token `chunkElements / vocabSize` rows at a time (bounding memory for
    /// large vocabularies) and sums `-log softmax` of each target.
    public func nextTokenNegativeLogLikelihood(_ hidden: HiddenStates, batch: SequenceBatch, tokenIDs: [Int],
                                               head: LoadedOutputHead, chunkElements: Int) throws -> NegativeLogLikelihood {
        let width = config.hiddenSize
        let vocabSize = config.vocabSize
        try hidden.check(matches: batch, hiddenSize: width)
        guard tokenIDs.count == batch.totalTokens else {
            throw ComputeBackendError.tokenCountMismatch(expected: batch.totalTokens, actual: tokenIDs.count)
        }
        for (position, tokenID) in tokenIDs.enumerated() where !(0..<vocabSize).contains(tokenID) {
            throw ComputeBackendError.tokenIDOutOfRange(position: position, tokenID: tokenID, vocabSize: vocabSize)
        }
        var predictions: [(row: Int, target: Int)] = []
        for sample in 0..<batch.sampleCount {
            for row in batch.rows(ofSample: sample).dropLast() { predictions.append((row, tokenIDs[row + 1])) }
        }
        let chunkRows = max(1, chunkElements / vocabSize)
        var total = NegativeLogLikelihood()
        var start = 0
        while start < predictions.count {
            let chunk = predictions[start..<min(start + chunkRows, predictions.count)]
            var selected: [Float] = []
            selected.reserveCapacity(chunk.count * width)
            for prediction in chunk { selected += hidden.values[(prediction.row * width)..<((prediction.row + 1) * width)] }
            let chunkLogits = try logits(HiddenStates(hiddenSize: width, values: selected), head: head)
            for (offset, prediction) in chunk.enumerated() {
                let row = chunkLogits[(offset * vocabSize)..<((offset + 1) * vocabSize)]
                total.sum -= Double(logSoftmax(row, at: prediction.target))
                total.count += 1
            }
            start += chunk.count
        }
        return total
    }
}

/// `log softmax(logits)[index]`, with the log-sum-exp accumulated in f64.
public func logSoftmax(_ logits: ArraySlice<Float>, at index: Int) -> Float {
    let largest = logits.max() ?? 0
    var sum: Double = 0
    for value in logits { sum += Foundation.exp(Double(value - largest)) }
    return Float(Double(logits[logits.startIndex + index] - largest) - Foundation.log(sum))
}
