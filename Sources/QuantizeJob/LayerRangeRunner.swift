import Calibration
import ComputeBackend
import Foundation
import LlamaModel
import Logging

/// What one chunk's pass through a range of layers produced.
public struct ChunkResult: Sendable, Equatable {
    public let chunk: Int
    public let sampleCount: Int
    /// The hidden states after the range's last layer: the next range's input.
    public var output: HiddenStates
    /// The amax of each layer of the range, in layer order.
    public let layerAmax: [(layer: Int, amax: ObservedAmax)]

    public init(chunk: Int, sampleCount: Int, output: HiddenStates, layerAmax: [(layer: Int, amax: ObservedAmax)]) {
        self.chunk = chunk
        self.sampleCount = sampleCount
        self.output = output
        self.layerAmax = layerAmax
    }

    public static func == (left: ChunkResult, right: ChunkResult) -> Bool {
        left.chunk == right.chunk && left.sampleCount == right.sampleCount && left.output == right.output
            && left.layerAmax.map(\.layer) == right.layerAmax.map(\.layer)
            && left.layerAmax.map(\.amax) == right.layerAmax.map(\.amax)
    }
}

/// Runs calibration chunks through a contiguous range of decoder layers: a cluster worker's share, or all layers
/// in `coordctl quantize`. Two schedules give bit-identical hidden states and amax (same forward, same batches):
/// - **pipelined** (``run(chunk:hidden:)``): every layer of the range stays loaded and one chunk at a time goes
///   through all of them, so chunks can stream from worker to worker;
/// - **layer-streaming** (``streamingPass(plan:input:retainsOutputs:progress:)``): one layer loaded at a time,
///   every chunk through it before the next ``LayerStreamingCalibrator``, hidden states spilled to the scratch
///   directory beyond the activation memory budget; for ranges whose weights do not fit in memory.
///
/// Layer indices are global. The first range (`embeds`) takes token ids; the others take the hidden states the
/// previous range produced, which must be passed on bit for bit (``HiddenStates/littleEndianBytes()``).
public final class LayerRangeRunner<Backend: ComputeBackend> {
    public let spec: JobSpec
    public let config: LlamaConfig
    public let backend: Backend
    public let range: Range<Int>
    public let embeds: Bool
    private let weights: any WeightSource
    private let logger: Logger
    private let releaseWeights: (([String]) -> Void)?
    private var loaded: [Backend.LoadedLayer] = []
    /// Sees every Linear input of both schedules (GPTQ's Hessians); the states then stay on the host.
    public var inputObserver: (any CalibrationInputObserver)?
    /// Runs each layer of the layer-streaming schedule again with other weights for its outputs (GPTQ's propagation).
    public var propagation: (any LayerPropagation)?
    /// Sees each layer's loaded weights during the layer-streaming schedule (``LayerStreamingCalibrator/loadedLayerObserver``).
    public var loadedLayerObserver: ((Int, Backend.LoadedLayer) throws -> Void)?

    /// - Parameters:
    ///   - range: global layer indices, non-empty, inside the model; it starts at 0 exactly when `embeds`.
    ///   - releaseWeights: called with tensor names the runner no longer needs from `weights` (mapped pages).
    public init(spec: JobSpec, config: LlamaConfig, weights: any WeightSource, backend: Backend, range: Range<Int>,
                embeds: Bool, logger: Logger, releaseWeights: (([String]) -> Void)? = nil) throws {
        guard !range.isEmpty, range.lowerBound >= 0, range.upperBound <= config.numHiddenLayers else {
            throw CalibrationError.invalidSetup("layers \(range.lowerBound)..<\(range.upperBound) are not a non-empty range "
                                                + "inside the model's 0..<\(config.numHiddenLayers)")
        }
        guard embeds == (range.lowerBound == 0) else {
            throw CalibrationError.invalidSetup("layers \(range.lowerBound)..<\(range.upperBound): only the range that "
                                                + "starts at layer 0 embeds token ids")
        }
        self.spec = spec
        self.config = config
        self.weights = weights
        self.backend = backend
        self.range = range
        self.embeds = embeds
        self.logger = logger
        self.releaseWeights = releaseWeights
    }

    /// Bytes of the range's Linear and norm weights as f32, what the pipelined schedule keeps loaded on the CPU.
    public static func residentWeightBytes(config: LlamaConfig, range: Range<Int>) -> Int {
        range.reduce(0) { total, layer in
            total + config.linears(layer: layer).reduce(0) { $0 + $1.outFeatures * $1.inFeatures * 4 }
                + config.layerNorms(layer: layer).reduce(0) { $0 + $1.shape.reduce(1, *) * 4 }
        }
    }

    // MARK: Pipelined

    /// Runs one chunk through every layer of the range. `hidden` is the previous range's output for this chunk,
    /// and must be nil exactly for the first range (which embeds `chunk.tokenIDs`).
    public func run(chunk: CalibrationChunk, hidden given: HiddenStates? = nil) throws -> ChunkResult {
        let batch = try chunk.batch()
        var hidden: HiddenStates
        switch (embeds, given) {
        case (true, nil):
            hidden = try embedChecked(backend: backend, weights: weights, chunk: chunk, batch: batch)
        case (false, let states?):
            try states.check(matches: batch, hiddenSize: config.hiddenSize)
            try chunk.checkFinite(states.values, hiddenSize: config.hiddenSize, layer: range.lowerBound - 1)
            hidden = states
        case (true, .some):
            throw CalibrationError.invalidSetup("layers \(range.lowerBound)..<\(range.upperBound) embed token ids; "
                                                + "chunk \(chunk.index) was given hidden states")
        case (false, nil):
            throw CalibrationError.invalidSetup("layers \(range.lowerBound)..<\(range.upperBound) need the hidden states "
                                                + "of layer \(range.lowerBound - 1) for chunk \(chunk.index)")
        }
        try loadLayers()
        var layerAmax: [(layer: Int, amax: ObservedAmax)] = []
        if inputObserver == nil, try backend.residentStateCapacity() >= backend.residentStateBytes(tokens: batch.totalTokens) {
            // The states cross to the backend once for the whole range, not once per layer.
            var states = try backend.makeResident(hidden, batch: batch)
            for (offset, layer) in range.enumerated() {
                let forward = try backend.enqueueForward(layer: loaded[offset], states: &states, batch: batch)
                layerAmax.append((layer, try checkedAmax(try backend.completeForward(forward), layer: layer, chunk: chunk)))
            }
            hidden = try backend.hostStates(states)
        } else {
            for (offset, layer) in range.enumerated() {
                let amax = try forwardChecked(backend: backend, layer: loaded[offset], index: layer, hidden: &hidden,
                                              batch: batch, chunk: chunk,
                                              inputTransform: inputObserver?.inputTransform(forChunk: chunk.index))
                layerAmax.append((layer, amax))
            }
        }
        return ChunkResult(chunk: chunk.index, sampleCount: chunk.sampleRange.count, output: hidden, layerAmax: layerAmax)
    }

    /// Loads every layer of the range (done by the first ``run(chunk:hidden:)``).
    public func loadLayers() throws {
        guard loaded.isEmpty else { return }
        let start = ContinuousClock.now
        loaded = try range.map { try backend.loadLayer($0, from: weights) }
        // The backend holds its own copy now; the source's mapped pages may go.
        releaseWeights?(range.flatMap { config.linears(layer: $0).map(\.weightName) + config.layerNorms(layer: $0).map(\.name) })
        logger.info("loaded layers \(range.lowerBound)..<\(range.upperBound) in \(ContinuousClock.now - start)")
    }

    /// Drops the loaded layers (after the last chunk).
    public func releaseLayers() { loaded = [] }

    // MARK: Layer-streaming

    /// A layer-at-a-time pass over every chunk of `plan`. `input` gives the hidden states entering the range for
    /// a chunk (nil for the first range, which embeds); it is asked once per chunk, before the first layer. Drive
    /// it with ``LayerStreamingCalibrator/calibrateNextLayer()`` (per-chunk amax) or as an `ActivationCalibrator`;
    /// with `retainsOutputs`, take each chunk's output with ``LayerStreamingCalibrator/takeOutput(chunk:)`` and
    /// call `finish()` afterwards.
    public func streamingPass(plan: CalibrationPlan, input: ((CalibrationChunk) throws -> HiddenStates)? = nil,
                              retainsOutputs: Bool = false,
                              progress: ((CalibrationProgress) -> Void)? = nil) throws -> LayerStreamingCalibrator<Backend> {
        let streamingInput: LayerStreamingCalibrator<Backend>.Input
        switch (embeds, input) {
        case (true, nil): streamingInput = .embed
        case (false, let provide?): streamingInput = .hiddenStates(provide)
        default:
            throw CalibrationError.invalidSetup("layers \(range.lowerBound)..<\(range.upperBound): "
                                                + (embeds ? "the first range embeds; give no input" : "input hidden states are needed"))
        }
        let pass = try LayerStreamingCalibrator(
            backend: backend, weights: weights, plan: plan, layers: range, input: streamingInput,
            retainsOutputs: retainsOutputs, activationMemoryBudget: spec.calibration.activationMemoryBudget,
            scratchDirectory: spec.scratchDirectory, logger: logger, releaseWeights: releaseWeights, progress: progress)
        pass.inputObserver = inputObserver
        pass.propagation = propagation
        pass.loadedLayerObserver = loadedLayerObserver
        return pass
    }

    /// The layer-streaming schedule over every chunk of `plan`, with results shaped like ``run(chunk:hidden:)``'s
    /// (all outputs end up in memory: for ranges whose weights, not activations, are what does not fit).
    public func runStreaming(plan: CalibrationPlan, input: ((CalibrationChunk) throws -> HiddenStates)? = nil)
        throws -> [ChunkResult]
    {
        let pass = try streamingPass(plan: plan, input: input, retainsOutputs: true)
        defer { pass.finish() }
        var perChunk = Array(repeating: [(layer: Int, amax: ObservedAmax)](), count: plan.chunks.count)
        for _ in range {
            let result = try pass.calibrateNextLayer()
            for (index, amax) in result.chunkAmax.enumerated() { perChunk[index].append((result.layer, amax)) }
        }
        return try plan.chunks.map { chunk in
            ChunkResult(chunk: chunk.index, sampleCount: chunk.sampleRange.count,
                        output: try pass.takeOutput(chunk: chunk.index), layerAmax: perChunk[chunk.index])
        }
    }
}
