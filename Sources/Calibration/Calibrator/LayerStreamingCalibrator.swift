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
/// - Hidden states stay in memory as f32 while they fit `activationMemoryBudget` bytes; the chunks that do not
///   are kept in a scratch directory (raw little-endian f32, exact), removed by ``finish()``, after the last
///   layer, or when the calibrator goes away. Which chunks spill is decided once, so results do not depend on it.
/// - A zero or non-finite amax, or a non-finite hidden state, stops the calibration with a ``CalibrationError``
///   naming the layer (and sample when known): a zero amax means a Linear was never exercised.
public final class LayerStreamingCalibrator<Backend: ComputeBackend>: ActivationCalibrator {
    public let backend: Backend
    /// Module name (e.g. `model.layers.3.self_attn.q_proj`) → amax, filled in as layers complete.
    public private(set) var perLinearAmax: [String: Float] = [:]
    /// Tokens over all samples.
    public let tokenTotal: Int
    public let sampleCount: Int
    public let chunkTokens: Int
    public let activationMemoryBudget: Int
    /// The directory spilled chunks are written to (created only when a chunk spills).
    public var scratchDirectory: URL { spill.directory }
    /// How many chunks live in scratch files rather than memory (known after the first call).
    public private(set) var spilledChunkCount = 0
    /// How many chunks the samples were grouped into.
    public var chunkCount: Int { chunks.count }
    /// Layers completed so far; the next call must ask for this one.
    public private(set) var completedLayers = 0

    private let weights: any WeightSource
    private let samples: [CalibrationSample]
    private let logger: Logger?
    private let releaseWeights: (([String]) -> Void)?
    private let progress: ((CalibrationProgress) -> Void)?
    private var chunks: [Chunk]
    private let spill: HiddenStateSpill
    private var embedded = false
    private var finished = false
    private var failedLayer: Int?
    /// Seconds spent inside calibration calls and tokens pushed through layers, for the ETA.
    private var busySeconds = 0.0
    private var layerTokensDone = 0

    private enum Storage {
        case none
        case memory([Float])
        case spilled
    }

    private struct Chunk {
        /// Indices into `samples`.
        let sampleRange: Range<Int>
        let batch: SequenceBatch
        var storage: Storage = .none
        var spills = false
    }

    /// - Parameters:
    ///   - backend: does the arithmetic; its `config` gives the layer count.
    ///   - weights: the model's tensors, read layer by layer through the backend.
    ///   - samples: the calibration samples, each run as its own causal sequence.
    ///   - chunkTokens: the most tokens batched into one forward (a longer sample is still one chunk).
    ///   - activationMemoryBudget: bytes of f32 hidden states kept in memory; further chunks spill to files.
    ///   - scratchDirectory: where spill files go, in a fresh subdirectory; the system temporary directory if nil.
    ///   - logger: receives one info line per layer.
    ///   - releaseWeights: called with the tensor names of a layer once it is done (and with the embedding
    ///     table's name after embedding), so the caller can drop mapped pages (`SafeTensorsModel.releasePages`).
    ///   - progress: called after each chunk.
    public init(backend: Backend, weights: any WeightSource, samples: [CalibrationSample], chunkTokens: Int = 4096,
                activationMemoryBudget: Int = 8 << 30, scratchDirectory: URL? = nil, logger: Logger? = nil,
                releaseWeights: (([String]) -> Void)? = nil,
                progress: ((CalibrationProgress) -> Void)? = nil) throws {
        guard !samples.isEmpty else { throw CalibrationError.invalidSetup("no calibration samples given") }
        guard chunkTokens >= 1 else { throw CalibrationError.invalidSetup("chunkTokens must be at least 1, got \(chunkTokens)") }
        guard activationMemoryBudget >= 0 else {
            throw CalibrationError.invalidSetup("the activation memory budget must not be negative, got \(activationMemoryBudget)")
        }
        let vocabSize = backend.config.vocabSize
        for (index, sample) in samples.enumerated() {
            guard !sample.tokens.isEmpty else {
                throw CalibrationError.invalidSetup("sample \(index) (\(sample.source)) has no tokens")
            }
            if let bad = sample.tokens.firstIndex(where: { $0 < 0 || Int($0) >= vocabSize }) {
                throw CalibrationError.invalidSetup("sample \(index) (\(sample.source)) has token id \(sample.tokens[bad]) at "
                                                    + "position \(bad), outside the vocabulary 0..<\(vocabSize)")
            }
        }
        self.backend = backend
        self.weights = weights
        self.samples = samples
        self.chunkTokens = chunkTokens
        self.activationMemoryBudget = activationMemoryBudget
        self.logger = logger
        self.releaseWeights = releaseWeights
        self.progress = progress
        self.spill = HiddenStateSpill(parent: scratchDirectory ?? FileManager.default.temporaryDirectory)
        tokenTotal = samples.reduce(0) { $0 + $1.tokens.count }
        sampleCount = samples.count
        chunks = try Self.groupIntoChunks(samples.map(\.tokens.count), chunkTokens: chunkTokens)
    }

    /// A calibrator over a loaded calibration set.
    public convenience init(backend: Backend, weights: any WeightSource, calibrationSet: CalibrationSet,
                            chunkTokens: Int = 4096, activationMemoryBudget: Int = 8 << 30,
                            scratchDirectory: URL? = nil, logger: Logger? = nil,
                            releaseWeights: (([String]) -> Void)? = nil,
                            progress: ((CalibrationProgress) -> Void)? = nil) throws {
        try self.init(backend: backend, weights: weights, samples: calibrationSet.samples, chunkTokens: chunkTokens,
                      activationMemoryBudget: activationMemoryBudget, scratchDirectory: scratchDirectory, logger: logger,
                      releaseWeights: releaseWeights, progress: progress)
    }

    deinit { spill.removeAll() }

    /// Greedy, in order: a chunk takes samples while their tokens fit `chunkTokens`.
    private static func groupIntoChunks(_ counts: [Int], chunkTokens: Int) throws -> [Chunk] {
        var chunks: [Chunk] = []
        var start = 0
        var tokens = 0
        for (index, count) in counts.enumerated() {
            if index > start, tokens + count > chunkTokens {
                chunks.append(Chunk(sampleRange: start..<index, batch: try SequenceBatch(tokenCounts: Array(counts[start..<index]))))
                start = index
                tokens = 0
            }
            tokens += count
        }
        chunks.append(Chunk(sampleRange: start..<counts.count, batch: try SequenceBatch(tokenCounts: Array(counts[start...]))))
        return chunks
    }

    public var layerCount: Int { backend.config.numHiddenLayers }

    /// The amax of each observed input of `layer`, which must be the next layer (0 first).
    public func activationAmax(layer: Int) throws -> [FusedGroup: Float] {
        if let failedLayer { throw CalibrationError.failedEarlier(layer: failedLayer) }
        if finished { throw CalibrationError.finished }
        guard (0..<layerCount).contains(layer) else {
            throw CalibrationError.layerOutOfRange(layer: layer, layerCount: layerCount)
        }
        guard layer == completedLayers else {
            throw CalibrationError.layerOutOfOrder(requested: layer, expected: completedLayers)
        }
        do {
            let amax = try calibrate(layer: layer)
            completedLayers += 1
            if completedLayers == layerCount { finish() }
            return amax
        } catch {
            failedLayer = layer
            finish()
            throw error
        }
    }

    /// Releases the hidden states and deletes the scratch files; later calls throw ``CalibrationError/finished``.
    public func finish() {
        finished = true
        for index in chunks.indices { chunks[index].storage = .none }
        spill.removeAll()
    }

    // MARK: - Steps

    private func calibrate(layer: Int) throws -> [FusedGroup: Float] {
        if !embedded { try embedAll() }
        let start = ContinuousClock.now
        let (observed, tokensDone) = try runAllChunks(layer: layer, start: start)
        let layerSeconds = seconds(since: start)
        busySeconds += layerSeconds
        // The backend's copy of the weights went away with runAllChunks; now the source's pages may go too.
        releaseWeights?(config.linears(layer: layer).map(\.weightName) + config.layerNorms(layer: layer).map(\.name))

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
        return result
    }

    /// Loads `layer`, runs every chunk through it and drops it again; returns the merged amax and the tokens run.
    private func runAllChunks(layer: Int, start: ContinuousClock.Instant) throws -> (ObservedAmax, Int) {
        let loaded = try backend.loadLayer(layer, from: weights)
        var observed = ObservedAmax.zero
        var samplesDone = 0
        var tokensDone = 0
        for index in chunks.indices {
            var hidden = HiddenStates(hiddenSize: backend.config.hiddenSize, values: try takeStates(of: index))
            let batch = chunks[index].batch
            let chunkAmax = try backend.forward(layer: loaded, hidden: &hidden, batch: batch)
            let range = chunks[index].sampleRange
            for group in FusedGroup.allCases where !chunkAmax[group].isFinite {
                throw CalibrationError.invalidAmax(layer: layer, group: group, amax: chunkAmax[group],
                                                   samples: range.lowerBound...(range.upperBound - 1))
            }
            try checkFinite(hidden.values, chunk: index, layer: layer)
            observed = observed.merging(chunkAmax)
            try store(hidden.values, chunk: index)

            samplesDone += range.count
            tokensDone += batch.totalTokens
            layerTokensDone += batch.totalTokens
            reportProgress(layer: layer, samplesDone: samplesDone, tokensDone: tokensDone,
                           seconds: seconds(since: start))
        }
        return (observed, tokensDone)
    }

    private var config: LlamaConfig { backend.config }

    private func embedAll() throws {
        let start = ContinuousClock.now
        var residentBytes = 0
        for index in chunks.indices {
            let range = chunks[index].sampleRange
            let tokenIDs = samples[range].flatMap { $0.tokens.map(Int.init) }
            let hidden = try backend.embed(tokenIDs, from: weights)
            try hidden.check(matches: chunks[index].batch, hiddenSize: config.hiddenSize)
            try checkFinite(hidden.values, chunk: index, layer: nil)
            let bytes = hidden.values.count * MemoryLayout<Float>.size
            if residentBytes + bytes <= activationMemoryBudget {
                residentBytes += bytes
            } else {
                chunks[index].spills = true
                spilledChunkCount += 1
            }
            try store(hidden.values, chunk: index)
        }
        embedded = true
        releaseWeights?([LlamaConfig.embedTokensName])
        busySeconds += seconds(since: start)
        let summary = "calibration: embedded \(sampleCount) samples (\(tokenTotal) tokens) in \(chunks.count) chunks of up to "
            + "\(chunkTokens) tokens; \(formatMiB(residentBytes)) MiB of hidden states in memory, "
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

    /// Throws naming the first sample of the chunk whose rows hold a NaN or infinity.
    private func checkFinite(_ values: [Float], chunk: Int, layer: Int?) throws {
        let allFinite = values.withUnsafeBufferPointer { buffer in
            // Summing `x * 0` is NaN exactly when some x is NaN or infinite, and vectorizes, unlike a branch.
            var probe: Float = 0
            for value in buffer { probe += value * 0 }
            return probe == 0
        }
        if allFinite { return }
        let batch = chunks[chunk].batch
        let width = config.hiddenSize
        for position in 0..<batch.sampleCount {
            let rows = batch.rows(ofSample: position)
            if values[(rows.lowerBound * width)..<(rows.upperBound * width)].contains(where: { !$0.isFinite }) {
                let sample = chunks[chunk].sampleRange.lowerBound + position
                throw CalibrationError.nonFiniteHiddenState(layer: layer, sample: sample, source: samples[sample].source)
            }
        }
    }

    private func reportProgress(layer: Int, samplesDone: Int, tokensDone: Int, seconds: Double) {
        guard let progress else { return }
        let rate = seconds > 0 ? Double(tokensDone) / seconds : 0
        let overallSeconds = busySeconds + seconds
        let overallRate = overallSeconds > 0 ? Double(layerTokensDone) / overallSeconds : 0
        let remainingTokens = tokenTotal * layerCount - layerTokensDone
        let eta: Double? = overallRate > 0 ? Double(remainingTokens) / overallRate : nil
        progress(CalibrationProgress(layer: layer, layerCount: layerCount, samplesDone: samplesDone,
                                     sampleCount: sampleCount, tokensPerSecond: rate, estimatedSecondsRemaining: eta))
    }

    private func seconds(since start: ContinuousClock.Instant) -> Double {
        let elapsed = ContinuousClock.now - start
        return Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18
    }

    private func format(_ value: Double) -> String { String(format: "%.1f", value) }
    private func formatMiB(_ bytes: Int) -> String { String(format: "%.1f", Double(bytes) / 1_048_576) }
}
