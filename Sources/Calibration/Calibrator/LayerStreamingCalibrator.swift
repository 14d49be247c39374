import ComputeBackend
import Foundation
import LlamaModel
import Logging

/// Calibrates activation amax one decoder layer at a time (spec §4, §11), so that only one layer's weights are
/// ever loaded:
/// - The first call embeds every sample. Each `activationAmax(layer: L)` loads layer L, pushes every sample's
///   hidden states through it chunk by chunk, keeps the running max of each observed input, replaces the hidden
///   states with the layer's outputs, and drops the layer again.
/// - Samples are grouped once, in order, into chunks of at most `chunkTokens` tokens (a longer sample is a chunk
///   of its own; a sample is never split). Each chunk is one `SequenceBatch`. Max is associative, so the chunking
///   changes nothing but speed.
/// - Hidden states stay in the backend's own memory while they fit its ``ComputeBackend/residentStateCapacity()``
///   (a GPU's memory; none on the CPU): each such chunk crosses the bus once on entering the range and once on
///   leaving it, and while the device runs every chunk through layer L the next layer is loaded. The other chunks
///   stay in host memory as f32 while they fit `activationMemoryBudget` bytes; the rest are kept in a scratch
///   directory (raw little-endian f32, exact), removed by ``finish()``, after the last layer, or when the
///   calibrator goes away. Where each chunk lives is decided once, so results do not depend on it.
/// - A zero or non-finite amax, or a non-finite hidden state, stops the calibration with a ``CalibrationError``
///   naming the layer (and sample when known): a zero amax means a Linear was never exercised.
/// - It may cover a contiguous range of layers only (a cluster worker's share): the range's input is then given
///   hidden states instead of token ids, and with `retainsOutputs` the states after the range's last layer stay
///   available through ``takeOutput(chunk:)``. Samples are grouped by ``calibrationChunkRanges(tokenCounts:chunkTokens:)``.
public final class LayerStreamingCalibrator<Backend: ComputeBackend>: ActivationCalibrator {
    /// What enters the first layer of the range.
    public enum Input {
        /// Embed each chunk's token ids (the range starts at layer 0).
        case embed
        /// The hidden states after the previous layer, asked for once per chunk before the first layer runs.
        case hiddenStates((CalibrationChunk) throws -> HiddenStates)
    }

    /// One layer's calibration: the amax of each chunk (in chunk order) and their merge.
    public struct LayerResult: Sendable {
        public let layer: Int
        public let chunkAmax: [ObservedAmax]
        /// The merge over all chunks; every value finite and > 0.
        public let amax: [FusedGroup: Float]
    }

    public let backend: Backend
    /// Module name (e.g. `model.layers.3.self_attn.q_proj`) → amax, filled in as layers complete.
    public private(set) var perLinearAmax: [String: Float] = [:]
    /// Tokens over all samples.
    public let tokenTotal: Int
    public let sampleCount: Int
    public let chunkTokens: Int
    public let activationMemoryBudget: Int
    /// The layers this calibrator runs, in order.
    public let layers: Range<Int>
    /// The directory spilled chunks are written to (created only when a chunk spills).
    public var scratchDirectory: URL { spill.directory }
    /// Sees every Linear input (GPTQ's Hessians). Set before the first layer; chunks then stay in host memory, since
    /// the observer reads inputs on the host.
    public var inputObserver: (any CalibrationInputObserver)?
    /// Runs each layer a second time with other weights for its outputs (GPTQ with `--propagate quantized`).
    public var propagation: (any LayerPropagation)?
    /// Called on the calibration thread with each layer's weights as the backend holds them, once its forwards are
    /// enqueued and before they are waited for: a GPU job quantizes the weights there, without uploading them again.
    public var loadedLayerObserver: ((Int, Backend.LoadedLayer) throws -> Void)?
    /// How many chunks live in scratch files rather than memory (known after the first call).
    public private(set) var spilledChunkCount = 0
    /// How many chunks live in the backend's own memory (known after the first call).
    public private(set) var residentChunkCount = 0
    /// Bytes of hidden states held in the backend's own memory (GPU), in host memory, and in spill files (known after
    /// the first call; 0 again after ``finish()``).
    public private(set) var residentStateBytes = 0
    public private(set) var hostStateBytes = 0
    public private(set) var spilledStateBytes = 0
    /// How many chunks the samples were grouped into.
    public var chunkCount: Int { chunks.count }
    /// Layers of the range completed so far; the next call must ask for `layers.lowerBound + completedLayers`.
    public private(set) var completedLayers = 0

    private let weights: any WeightSource
    private let input: Input
    private let retainsOutputs: Bool
    private let logger: Logger?
    private let releaseWeights: (([String]) -> Void)?
    private let progress: ((CalibrationProgress) -> Void)?
    private var chunks: [Chunk]
    private let spill: HiddenStateSpill
    private var loadedInputs = false
    private var finished = false
    private var failedLayer: Int?
    /// Seconds spent inside calibration calls and tokens pushed through layers, for the ETA.
    private var busySeconds = 0.0
    private var layerTokensDone = 0
    /// The next layer, loaded while the backend still ran the previous one.
    private var prefetched: (layer: Int, loaded: Backend.LoadedLayer)?

    private enum Storage {
        case none
        case memory([Float])
        case spilled
        case resident(Backend.ResidentStates)
    }

    private struct Chunk {
        let plan: CalibrationChunk
        let batch: SequenceBatch
        var storage: Storage = .none
        var spills = false
        var resident = false
        var sampleRange: Range<Int> { plan.sampleRange }
    }

    /// - Parameters:
    ///   - backend: does the arithmetic; its `config` gives the layer count.
    ///   - weights: the model's tensors, read layer by layer through the backend.
    ///   - plan: the samples, grouped into chunks; each sample runs as its own causal sequence.
    ///   - layers: the layers to calibrate (all of them when nil).
    ///   - input: ``Input/embed`` (layers must start at 0) or the hidden states entering `layers.lowerBound`.
    ///   - retainsOutputs: keep the states after the last layer for ``takeOutput(chunk:)`` until ``finish()``.
    ///   - activationMemoryBudget: bytes of f32 hidden states kept in memory; further chunks spill to files.
    ///   - scratchDirectory: where spill files go, in a fresh subdirectory; the system temporary directory if nil.
    ///   - logger: receives one info line per layer.
    ///   - releaseWeights: called with the tensor names of a layer once it is done (and with the embedding
    ///     table's name after embedding), so the caller can drop mapped pages (`SafeTensorsModel.releasePages`).
    ///   - progress: called after each chunk.
    public init(backend: Backend, weights: any WeightSource, plan: CalibrationPlan, layers: Range<Int>? = nil,
                input: Input = .embed, retainsOutputs: Bool = false, activationMemoryBudget: Int = 8 << 30,
                scratchDirectory: URL? = nil, logger: Logger? = nil, releaseWeights: (([String]) -> Void)? = nil,
                progress: ((CalibrationProgress) -> Void)? = nil) throws {
        guard !plan.chunks.isEmpty else { throw CalibrationError.invalidSetup("no calibration samples given") }
        guard activationMemoryBudget >= 0 else {
            throw CalibrationError.invalidSetup("the activation memory budget must not be negative, got \(activationMemoryBudget)")
        }
        let layerCount = backend.config.numHiddenLayers
        let layers = layers ?? 0..<layerCount
        guard !layers.isEmpty, layers.lowerBound >= 0, layers.upperBound <= layerCount else {
            throw CalibrationError.invalidSetup("layers \(layers.lowerBound)..<\(layers.upperBound) are not a non-empty "
                                                + "range inside the model's 0..<\(layerCount)")
        }
        if case .embed = input, layers.lowerBound != 0 {
            throw CalibrationError.invalidSetup("layers \(layers.lowerBound)..<\(layers.upperBound) do not start at 0, "
                                                + "so they need hidden states, not token ids")
        }
        let vocabSize = backend.config.vocabSize
        // Only the range that embeds reads token ids; the others get a plan without them (`withoutTokenIDs()`).
        let embeds = if case .embed = input { true } else { false }
        for chunk in plan.chunks where embeds {
            guard chunk.tokenIDs.count == chunk.tokenCount else {
                throw CalibrationError.invalidSetup("chunk \(chunk.index) has \(chunk.tokenIDs.count) token ids for "
                                                    + "\(chunk.tokenCount) tokens")
            }
            var offset = 0
            for (position, count) in chunk.tokenCounts.enumerated() {
                let tokens = chunk.tokenIDs[offset..<(offset + count)]
                offset += count
                if let bad = tokens.firstIndex(where: { $0 < 0 || Int($0) >= vocabSize }) {
                    throw CalibrationError.invalidSetup(
                        "sample \(chunk.sampleRange.lowerBound + position) (\(chunk.sources[position])) has token id "
                            + "\(chunk.tokenIDs[bad]) at position \(bad - tokens.startIndex), outside the vocabulary 0..<\(vocabSize)")
                }
            }
        }
        self.backend = backend
        self.weights = weights
        self.layers = layers
        self.input = input
        self.retainsOutputs = retainsOutputs
        self.chunkTokens = plan.chunkTokens
        self.activationMemoryBudget = activationMemoryBudget
        self.logger = logger
        self.releaseWeights = releaseWeights
        self.progress = progress
        self.spill = HiddenStateSpill(parent: scratchDirectory ?? FileManager.default.temporaryDirectory)
        tokenTotal = plan.tokenCount
        sampleCount = plan.sampleCount
        chunks = try plan.chunks.map { Chunk(plan: $0, batch: try $0.batch()) }
    }

    /// A calibrator over all layers for `samples`, grouped into chunks of at most `chunkTokens` tokens.
    public convenience init(backend: Backend, weights: any WeightSource, samples: [CalibrationSample], chunkTokens: Int = 4096,
                            activationMemoryBudget: Int = 8 << 30, scratchDirectory: URL? = nil, logger: Logger? = nil,
                            releaseWeights: (([String]) -> Void)? = nil,
                            progress: ((CalibrationProgress) -> Void)? = nil) throws {
        try self.init(backend: backend, weights: weights, calibrationSet: CalibrationSet(samples: samples),
                      chunkTokens: chunkTokens, activationMemoryBudget: activationMemoryBudget,
                      scratchDirectory: scratchDirectory, logger: logger, releaseWeights: releaseWeights, progress: progress)
    }

    /// A calibrator over all layers for a loaded calibration set.
    public convenience init(backend: Backend, weights: any WeightSource, calibrationSet: CalibrationSet,
                            chunkTokens: Int = 4096, activationMemoryBudget: Int = 8 << 30,
                            scratchDirectory: URL? = nil, logger: Logger? = nil,
                            releaseWeights: (([String]) -> Void)? = nil,
                            progress: ((CalibrationProgress) -> Void)? = nil) throws {
        guard activationMemoryBudget >= 0 else {
            throw CalibrationError.invalidSetup("the activation memory budget must not be negative, got \(activationMemoryBudget)")
        }
        let plan = try CalibrationPlan(set: calibrationSet, source: "", chunkTokens: chunkTokens)
        try self.init(backend: backend, weights: weights, plan: plan, activationMemoryBudget: activationMemoryBudget,
                      scratchDirectory: scratchDirectory, logger: logger, releaseWeights: releaseWeights, progress: progress)
    }

    deinit { spill.removeAll() }

    public var layerCount: Int { backend.config.numHiddenLayers }

    /// The amax of each observed input of `layer`, which must be the next layer of the range.
    public func activationAmax(layer: Int) throws -> [FusedGroup: Float] {
        if let failedLayer { throw CalibrationError.failedEarlier(layer: failedLayer) }
        if finished { throw CalibrationError.finished }
        guard (0..<layerCount).contains(layer) else {
            throw CalibrationError.layerOutOfRange(layer: layer, layerCount: layerCount)
        }
        let expected = layers.lowerBound + completedLayers
        guard layer == expected else {
            throw CalibrationError.layerOutOfOrder(requested: layer, expected: expected)
        }
        return try calibrateNextLayer().amax
    }

    /// Calibrates the next layer of the range and returns each chunk's amax with their merge.
    public func calibrateNextLayer() throws -> LayerResult {
        if let failedLayer { throw CalibrationError.failedEarlier(layer: failedLayer) }
        if finished || completedLayers == layers.count { throw CalibrationError.finished }
        let layer = layers.lowerBound + completedLayers
        do {
            let result = try calibrate(layer: layer)
            completedLayers += 1
            if completedLayers == layers.count && !retainsOutputs { finish() }
            return result
        } catch {
            failedLayer = layer
            finish()
            throw error
        }
    }

    /// The hidden states of `chunk` after the range's last layer (once, then released). Needs `retainsOutputs`
    /// and every layer of the range done.
    public func takeOutput(chunk: Int) throws -> HiddenStates {
        if let failedLayer { throw CalibrationError.failedEarlier(layer: failedLayer) }
        guard retainsOutputs, completedLayers == layers.count, !finished else { throw CalibrationError.finished }
        guard chunks.indices.contains(chunk) else {
            throw CalibrationError.invalidSetup("chunk \(chunk) does not exist; the plan has \(chunks.count) chunks")
        }
        if case .none = chunks[chunk].storage {
            throw CalibrationError.invalidSetup("the output of chunk \(chunk) was already taken")
        }
        let values = try takeStates(of: chunk)
        chunks[chunk].storage = .none
        return HiddenStates(hiddenSize: config.hiddenSize, values: values)
    }

    /// Releases the hidden states and deletes the scratch files; later calls throw ``CalibrationError/finished``.
    public func finish() {
        finished = true
        prefetched = nil
        for index in chunks.indices { chunks[index].storage = .none }
        spill.removeAll()
        (residentStateBytes, hostStateBytes, spilledStateBytes) = (0, 0, 0)
    }

    // MARK: - Steps

    private func calibrate(layer: Int) throws -> LayerResult {
        if !loadedInputs { try loadInputs() }
        let start = ContinuousClock.now
        let (chunkAmax, tokensDone) = try runAllChunks(layer: layer, start: start, keepsInputs: propagation != nil)
        if let propagation {
            // The observing pass left every chunk's input in place: run the layer again with the propagated weights.
            let weights = try propagation.propagatedWeights(layer: layer)
            _ = try runAllChunks(layer: layer, start: start, propagatingWith: weights)
        }
        let layerSeconds = secondsSince(start)
        busySeconds += layerSeconds
        // The backend's copy of the weights went away with runAllChunks; now the source's pages may go too.
        releaseWeights?(config.linears(layer: layer).map(\.weightName) + config.layerNorms(layer: layer).map(\.name))

        let observed = chunkAmax.reduce(ObservedAmax.zero) { $0.merging($1) }
        var result: [FusedGroup: Float] = [:]
        for group in FusedGroup.allCases {
            let amax = observed[group]
            guard amax.isFinite, amax > 0 else {
                throw CalibrationError.invalidAmax(layer: layer, group: group, amax: amax, samples: nil)
            }
            result[group] = amax
        }
        for linear in config.linears(layer: layer) { perLinearAmax[linear.name] = result[linear.kind.group] }
        let summary = "calibrated layer \(layer + 1)/\(layerCount): \(sampleCount) samples, \(tokensDone) tokens in "
            + "\(format(layerSeconds)) s (\(format(Double(tokensDone) / max(layerSeconds, 1e-9))) tokens/s); amax "
            + "qkv \(observed.qkv), o \(observed.o), gate_up \(observed.gateUp), down \(observed.down)"
        logger?.info("\(summary)")
        return LayerResult(layer: layer, chunkAmax: chunkAmax, amax: result)
    }

    /// Loads `layer`, runs every chunk through it and drops it again; returns each chunk's amax and the tokens run.
    /// Resident chunks are enqueued first; the next layer loads while the backend works through them.
    /// - `keepsInputs`: an observing pass (``propagation``'s first): each chunk runs on a copy, its states stay.
    /// - `propagatingWith`: the second pass of ``propagation``, with these weights and no observer; it does not count
    ///   towards progress.
    private func runAllChunks(layer: Int, start: ContinuousClock.Instant, keepsInputs: Bool = false,
                              propagatingWith propagated: (any WeightSource)? = nil) throws -> ([ObservedAmax], Int) {
        let loaded: Backend.LoadedLayer
        if let propagated {
            loaded = try backend.loadLayer(layer, from: propagated)
        } else if let prefetched, prefetched.layer == layer {
            loaded = prefetched.loaded
        } else {
            loaded = try backend.loadLayer(layer, from: weights)
        }
        prefetched = nil
        var chunkAmax = [ObservedAmax](repeating: .zero, count: chunks.count)
        var pending: [(chunk: Int, forward: Backend.PendingForward)] = []
        var samplesDone = 0
        var tokensDone = 0
        for index in chunks.indices {
            if chunks[index].resident {
                guard case .resident(var states) = chunks[index].storage else {
                    preconditionFailure("chunk \(index) has no resident hidden states")
                }
                chunks[index].storage = .none  // keeps `states` uniquely referenced
                let forward = try backend.enqueueForward(layer: loaded, states: &states, batch: chunks[index].batch)
                chunks[index].storage = .resident(states)
                pending.append((index, forward))
            } else {
                let input = try takeStates(of: index)
                var hidden = HiddenStates(hiddenSize: backend.config.hiddenSize, values: input)
                let observer = propagated == nil ? inputObserver?.inputTransform(forChunk: chunks[index].plan.index) : nil
                chunkAmax[index] = try forwardChecked(backend: backend, layer: loaded, index: layer, hidden: &hidden,
                                                      batch: chunks[index].batch, chunk: chunks[index].plan,
                                                      inputTransform: observer)
                try store(keepsInputs ? input : hidden.values, chunk: index)
            }
            guard propagated == nil else { continue }
            samplesDone += chunks[index].sampleRange.count
            tokensDone += chunks[index].batch.totalTokens
            layerTokensDone += chunks[index].batch.totalTokens
            reportProgress(layer: layer, samplesDone: samplesDone, tokensDone: tokensDone,
                           seconds: secondsSince(start))
        }
        if !pending.isEmpty && layer + 1 < layers.upperBound && propagation == nil {
            prefetched = (layer + 1, try backend.loadLayer(layer + 1, from: weights))
        }
        if propagated == nil { try loadedLayerObserver?(layer, loaded) }
        for (index, forward) in pending {
            chunkAmax[index] = try checkedAmax(try backend.completeForward(forward), layer: layer, chunk: chunks[index].plan)
        }
        return (chunkAmax, tokensDone)
    }

    private var config: LlamaConfig { backend.config }

    /// Embeds every chunk (or takes the given states) and decides, once, which chunks spill.
    private func loadInputs() throws {
        let start = ContinuousClock.now
        var hostBytes = 0
        let backendCapacity = inputObserver == nil && propagation == nil ? try backend.residentStateCapacity() : 0
        var backendBytes = 0
        // A GPU gathers the resident chunks' rows itself from a table uploaded once (host-kept chunks still gather here).
        var embedder: ResidentEmbedder<Backend.ResidentStates>?
        if case .embed = input, backendCapacity > 0 { embedder = try backend.residentEmbedder(from: weights) }
        var deviceEmbeddedChunks = 0
        for index in chunks.indices {
            let chunk = chunks[index].plan
            let deviceBytes = backend.residentStateBytes(tokens: chunks[index].batch.totalTokens)
            if let embedder, backendBytes + deviceBytes <= backendCapacity {
                let (states, nonFiniteRow) = try embedder.embed(chunk.tokenIDs.map(Int.init), chunks[index].batch)
                if let row = nonFiniteRow { throw chunk.nonFiniteHiddenState(row: row, layer: nil) }
                if deviceEmbeddedChunks == 0 {
                    // Once per job, the backend's gather against the host's, bit for bit (it must be the same values).
                    let expected = try embedChecked(backend: backend, weights: weights, chunk: chunk, batch: chunks[index].batch)
                    let gathered = try backend.hostStates(states)
                    let differing = zip(expected.values, gathered.values).filter { $0.bitPattern != $1.bitPattern }.count
                    guard differing == 0, expected.values.count == gathered.values.count else {
                        throw CalibrationError.residentEmbeddingMismatch(sample: chunk.sampleRange.lowerBound, differing: differing)
                    }
                }
                backendBytes += deviceBytes
                chunks[index].resident = true
                residentChunkCount += 1
                deviceEmbeddedChunks += 1
                chunks[index].storage = .resident(states)
                continue
            }
            let hidden: HiddenStates
            switch input {
            case .embed:
                hidden = try embedChecked(backend: backend, weights: weights, chunk: chunk, batch: chunks[index].batch)
            case .hiddenStates(let provide):
                hidden = try provide(chunk)
                try hidden.check(matches: chunks[index].batch, hiddenSize: config.hiddenSize)
                try chunk.checkFinite(hidden.values, hiddenSize: config.hiddenSize, layer: layers.lowerBound - 1)
            }
            let bytes = hidden.values.count * MemoryLayout<Float>.size
            if backendBytes + deviceBytes <= backendCapacity {
                backendBytes += deviceBytes
                chunks[index].resident = true
                residentChunkCount += 1
                chunks[index].storage = .resident(try backend.makeResident(hidden, batch: chunks[index].batch))
                continue
            } else if hostBytes + bytes <= activationMemoryBudget {
                hostBytes += bytes
            } else {
                chunks[index].spills = true
                spilledChunkCount += 1
                spilledStateBytes += bytes
            }
            try store(hidden.values, chunk: index)
        }
        embedder = nil
        loadedInputs = true
        residentStateBytes = backendBytes
        hostStateBytes = hostBytes
        if case .embed = input { releaseWeights?([LlamaConfig.embedTokensName]) }
        busySeconds += secondsSince(start)
        let what = if case .embed = input {
            deviceEmbeddedChunks > 0 ? "embedded (\(deviceEmbeddedChunks) chunks gathered in the backend's memory)" : "embedded"
        } else { "received the hidden states of" }
        let summary = "calibration: \(what) \(sampleCount) samples (\(tokenTotal) tokens) in \(chunks.count) chunks of up to "
            + "\(chunkTokens) tokens; \(residentChunkCount) chunks (\(formatMiB(backendBytes)) MiB) kept in the backend's memory, "
            + "\(formatMiB(hostBytes)) MiB of hidden states in host memory, "
            + "\(spilledChunkCount) chunks spilled to \(spill.directory.path)"
        logger?.info("\(summary)")
    }

    private func takeStates(of chunk: Int) throws -> [Float] {
        switch chunks[chunk].storage {
        case .memory(let values):
            chunks[chunk].storage = .none
            return values
        case .spilled:
            return try spill.read(chunk: chunk, count: chunks[chunk].batch.totalTokens * config.hiddenSize)
        case .resident(let states):
            chunks[chunk].storage = .none
            return try backend.hostStates(states).values
        case .none:
            preconditionFailure("chunk \(chunk) has no hidden states")
        }
    }

    private func store(_ values: [Float], chunk: Int) throws {
        if chunks[chunk].spills {
            try spill.write(values, chunk: chunk)
            chunks[chunk].storage = .spilled
        } else {
            chunks[chunk].storage = .memory(values)
        }
    }

    private func reportProgress(layer: Int, samplesDone: Int, tokensDone: Int, seconds: Double) {
        guard let progress else { return }
        let rate = seconds > 0 ? Double(tokensDone) / seconds : 0
        let overallSeconds = busySeconds + seconds
        let overallRate = overallSeconds > 0 ? Double(layerTokensDone) / overallSeconds : 0
        let remainingTokens = tokenTotal * layers.count - layerTokensDone
        let eta: Double? = overallRate > 0 ? Double(remainingTokens) / overallRate : nil
        progress(CalibrationProgress(layer: layer, layerCount: layerCount, samplesDone: samplesDone,
                                     sampleCount: sampleCount, tokensPerSecond: rate, estimatedSecondsRemaining: eta))
    }


    private func format(_ value: Double) -> String { String(format: "%.1f", value) }
    private func formatMiB(_ bytes: Int) -> String { String(format: "%.1f", Double(bytes) / 1_048_576) }
}

/// The embeddings of `chunk`'s token ids, checked for shape and finiteness. Every host-side embedding goes through this
/// (resident chunks may be gathered by the backend instead, see ``ComputeBackend/residentEmbedder(from:)``).
public func embedChecked<Backend: ComputeBackend>(backend: Backend, weights: any WeightSource, chunk: CalibrationChunk,
                                                  batch: SequenceBatch) throws -> HiddenStates {
    let hidden = try backend.embed(chunk.tokenIDs.map(Int.init), from: weights)
    try hidden.check(matches: batch, hiddenSize: backend.config.hiddenSize)
    try chunk.checkFinite(hidden.values, hiddenSize: backend.config.hiddenSize, layer: nil)
    return hidden
}

/// Runs one layer over one chunk in place, rejecting a non-finite amax (naming the chunk's samples) or a
/// non-finite output (naming the sample). Every schedule runs layers through this, so all report alike.
/// `inputTransform` sees every Linear input (an observer: it must leave them unchanged).
public func forwardChecked<Backend: ComputeBackend>(backend: Backend, layer loaded: Backend.LoadedLayer, index layer: Int,
                                                    hidden: inout HiddenStates, batch: SequenceBatch,
                                                    chunk: CalibrationChunk,
                                                    inputTransform: (any LinearInputTransform)? = nil) throws -> ObservedAmax {
    let amax = try backend.forward(layer: loaded, hidden: &hidden, batch: batch, inputTransform: inputTransform)
    try checkAmax(amax, layer: layer, chunk: chunk)
    try chunk.checkFinite(hidden.values, hiddenSize: backend.config.hiddenSize, layer: layer)
    return amax
}

/// The amax of a completed resident forward (``ComputeBackend/completeForward(_:)``), rejecting a non-finite amax or
/// output as ``forwardChecked(backend:layer:index:hidden:batch:chunk:)`` does.
public func checkedAmax(_ result: ResidentForwardResult, layer: Int, chunk: CalibrationChunk) throws -> ObservedAmax {
    try checkAmax(result.amax, layer: layer, chunk: chunk)
    if let row = result.firstNonFiniteRow { throw chunk.nonFiniteHiddenState(row: row, layer: layer) }
    return result.amax
}

/// Rejects a non-finite amax of `chunk` at `layer`, naming the chunk's samples.
func checkAmax(_ amax: ObservedAmax, layer: Int, chunk: CalibrationChunk) throws {
    let range = chunk.sampleRange
    for group in FusedGroup.allCases where !amax[group].isFinite {
        throw CalibrationError.invalidAmax(layer: layer, group: group, amax: amax[group],
                                           samples: range.lowerBound...(range.upperBound - 1))
    }
}
