import CPUBackend
import ComputeBackend
import Foundation
import LlamaModel
import SafeTensors
import Testing
@testable import Calibration

/// The CPU backend behind the resident-state contract a GPU backend implements: states live in boxes the backend
/// owns, and an enqueued forward runs only when it is completed. It logs what the calibrator asked for, in order.
struct DeferredResidentBackend: ComputeBackend {
    final class Log: @unchecked Sendable {
        private let lock = NSLock()
        private var storage: [String] = []
        func add(_ event: String) { lock.withLock { storage.append(event) } }
        var events: [String] { lock.withLock { storage } }
    }

    final class Box: @unchecked Sendable {
        var hidden: HiddenStates
        init(_ hidden: HiddenStates) { self.hidden = hidden }
    }

    struct Layer: Sendable {
        let index: Int
        let base: CPUBackend.LoadedLayer
    }

    struct Pending {
        let box: Box
        let layer: Layer
        let batch: SequenceBatch
    }

    let base: CPUBackend
    let capacity: Int
    /// Offers a ``ResidentEmbedder`` (as the GPU does) that gathers on the host and logs "gather".
    var gathersEmbeddings = false
    /// The offered gather returns each chunk's first row from the wrong token (a broken kernel).
    var gathersWrongRows = false
    let log = Log()
    var config: LlamaConfig { base.config }

    func residentEmbedder(from source: some WeightSource) throws -> ResidentEmbedder<Box>? {
        guard gathersEmbeddings else { return nil }
        log.add("embedder")
        let table = try base.embed(Array(0..<config.vocabSize), from: source)
        let width = config.hiddenSize
        return ResidentEmbedder { [log] tokenIDs, batch in
            log.add("gather")
            var values: [Float] = []
            for id in tokenIDs { values += table.values[(id * width)..<((id + 1) * width)] }
            if gathersWrongRows {
                let other = (tokenIDs[0] + 1) % table.tokenCount
                values.replaceSubrange(0..<width, with: table.values[(other * width)..<((other + 1) * width)])
            }
            let row = values.firstIndex { !$0.isFinite }.map { $0 / width }
            return (Box(HiddenStates(hiddenSize: width, values: values)), row)
        }
    }

    func loadLayer(_ index: Int, from source: some WeightSource) throws -> Layer {
        log.add("load \(index)")
        return Layer(index: index, base: try base.loadLayer(index, from: source))
    }

    func forward(layer: Layer, hidden: inout HiddenStates, batch: SequenceBatch,
                 inputTransform: (any LinearInputTransform)?) throws -> ObservedAmax {
        log.add("host forward \(layer.index)")
        return try base.forward(layer: layer.base, hidden: &hidden, batch: batch, inputTransform: inputTransform)
    }

    func loadOutputHead(from source: some WeightSource) throws -> CPUBackend.LoadedOutputHead { try base.loadOutputHead(from: source) }

    func logits(_ hidden: HiddenStates, head: CPUBackend.LoadedOutputHead) throws -> [Float] { try base.logits(hidden, head: head) }

    func negativeLogLikelihood(_ hidden: HiddenStates, batch: SequenceBatch, tokenIDs: [Int],
                               head: CPUBackend.LoadedOutputHead) throws -> NegativeLogLikelihood {
        try base.negativeLogLikelihood(hidden, batch: batch, tokenIDs: tokenIDs, head: head)
    }

    func residentStateCapacity() throws -> Int { capacity }

    func residentStateBytes(tokens: Int) -> Int { tokens * config.hiddenSize * 2 }

    func makeResident(_ hidden: HiddenStates, batch: SequenceBatch) throws -> Box {
        log.add("upload")
        return Box(hidden)
    }

    func hostStates(_ states: Box) throws -> HiddenStates {
        log.add("download")
        return states.hidden
    }

    func enqueueForward(layer: Layer, states: inout Box, batch: SequenceBatch) throws -> Pending {
        log.add("enqueue \(layer.index)")
        return Pending(box: states, layer: layer, batch: batch)
    }

    func completeForward(_ pending: Pending) throws -> ResidentForwardResult {
        log.add("complete \(pending.layer.index)")
        let amax = try base.forward(layer: pending.layer.base, hidden: &pending.box.hidden, batch: pending.batch, inputTransform: nil)
        let width = config.hiddenSize
        let row = pending.box.hidden.values.firstIndex { !$0.isFinite }.map { $0 / width }
        return ResidentForwardResult(amax: amax, firstNonFiniteRow: row)
    }
}

@Suite struct CalibratorResidentStateTests {
    /// Every layer over every chunk, with the outputs kept; returns the per-Linear amax and each chunk's output.
    private func run<Backend: ComputeBackend>(_ backend: Backend, weights: any WeightSource = try! TinyLlama.model(),
                                              chunkTokens: Int) throws -> (amax: [String: Float], outputs: [HiddenStates],
                                                                           calibrator: LayerStreamingCalibrator<Backend>) {
        let plan = try CalibrationPlan(set: CalibrationSet(samples: try TinyLlama.samples()), source: "", chunkTokens: chunkTokens)
        let calibrator = try LayerStreamingCalibrator(backend: backend, weights: weights, plan: plan, retainsOutputs: true)
        for _ in 0..<calibrator.layerCount { _ = try calibrator.calibrateNextLayer() }
        let outputs = try (0..<calibrator.chunkCount).map { try calibrator.takeOutput(chunk: $0) }
        calibrator.finish()
        return (calibrator.perLinearAmax, outputs, calibrator)
    }

    @Test func residentStatesGiveTheHostPathsResultsBitForBit() throws {
        let host = try run(try TinyLlama.backend(), chunkTokens: 1)
        let backend = DeferredResidentBackend(base: try TinyLlama.backend(), capacity: 1 << 30)
        let resident = try run(backend, chunkTokens: 1)
        #expect(resident.calibrator.chunkCount > 2)
        #expect(resident.calibrator.residentChunkCount == resident.calibrator.chunkCount)
        #expect(resident.amax == host.amax)
        #expect(resident.outputs == host.outputs)

        // Each chunk crosses once in and once out, and no layer ran on host states.
        let events = backend.log.events
        let chunks = resident.calibrator.chunkCount
        #expect(events.filter { $0 == "upload" }.count == chunks)
        #expect(events.filter { $0 == "download" }.count == chunks)
        #expect(!events.contains { $0.hasPrefix("host forward") })
        // Layer 1 loads after layer 0's chunks were enqueued and before any of them is waited for.
        let lastEnqueue0 = try #require(events.lastIndex(of: "enqueue 0"))
        let load1 = try #require(events.firstIndex(of: "load 1"))
        let firstComplete0 = try #require(events.firstIndex(of: "complete 0"))
        #expect(lastEnqueue0 < load1 && load1 < firstComplete0)
        #expect(events.filter { $0 == "load 1" }.count == 1)
    }

    @Test func chunksBeyondTheResidentCapacityStayOnTheHost() throws {
        let host = try run(try TinyLlama.backend(), chunkTokens: 1)
        let config = try TinyLlama.config()
        // Room for the first three chunks (one sample each).
        let counts = try TinyLlama.samples().map(\.tokens.count)
        let backend = DeferredResidentBackend(base: try TinyLlama.backend(), capacity: counts[0..<3].reduce(0, +) * config.hiddenSize * 2)
        let mixed = try run(backend, chunkTokens: 1)
        #expect(mixed.calibrator.residentChunkCount >= 3)
        #expect(mixed.calibrator.residentChunkCount < mixed.calibrator.chunkCount)
        #expect(mixed.amax == host.amax)
        #expect(mixed.outputs == host.outputs)
        #expect(backend.log.events.contains { $0.hasPrefix("host forward") })
    }

    @Test func aBackendThatEmbedsGathersEveryResidentChunkAndTheRestOnTheHost() throws {
        let host = try run(try TinyLlama.backend(), chunkTokens: 1)
        var backend = DeferredResidentBackend(base: try TinyLlama.backend(), capacity: 1 << 30)
        backend.gathersEmbeddings = true
        let gathered = try run(backend, chunkTokens: 1)
        #expect(gathered.amax == host.amax)
        #expect(gathered.outputs == host.outputs)
        let events = backend.log.events
        #expect(events.filter { $0 == "embedder" }.count == 1)
        #expect(events.filter { $0 == "gather" }.count == gathered.calibrator.chunkCount)
        #expect(!events.contains("upload"))

        // Room for three chunks: those are gathered, the others embedded on the host and kept there.
        let counts = try TinyLlama.samples().map(\.tokens.count)
        var small = DeferredResidentBackend(base: try TinyLlama.backend(),
                                            capacity: counts[0..<3].reduce(0, +) * (try TinyLlama.config()).hiddenSize * 2)
        small.gathersEmbeddings = true
        let mixed = try run(small, chunkTokens: 1)
        #expect(mixed.amax == host.amax)
        #expect(mixed.outputs == host.outputs)
        #expect(small.log.events.filter { $0 == "gather" }.count == mixed.calibrator.residentChunkCount)
        #expect(mixed.calibrator.residentChunkCount < mixed.calibrator.chunkCount)
        #expect(!small.log.events.contains("upload"))
    }

    /// The first chunk's gather is checked against the host's once: a broken gather stops the job before any layer.
    @Test func aBackendGatherThatDiffersFromTheHostsStopsCalibration() throws {
        var backend = DeferredResidentBackend(base: try TinyLlama.backend(), capacity: 1 << 30)
        backend.gathersEmbeddings = true
        backend.gathersWrongRows = true
        let samples = try TinyLlama.samples()
        let calibrator = try LayerStreamingCalibrator(backend: backend, weights: try TinyLlama.model(), samples: samples,
                                                      chunkTokens: 1_000_000)
        let error = calibrationError { _ = try calibrator.activationAmax(layer: 0) }
        guard case .residentEmbeddingMismatch(let sample, let differing) = error else {
            Issue.record("expected residentEmbeddingMismatch, got \(String(describing: error))")
            return
        }
        #expect(sample == 0 && differing > 0)
        #expect(!backend.log.events.contains { $0.hasPrefix("enqueue") })
    }

    /// A non-finite embedding row found by the backend's gather names the sample that uses it, before any layer.
    @Test func aNonFiniteGatheredEmbeddingNamesItsSample() throws {
        let samples = try TinyLlama.samples()
        let config = try TinyLlama.config()
        let token = Int(samples[2].tokens[0])
        let weights = try overriding(try TinyLlama.model(), LlamaConfig.embedTokensName) { $0[token * config.hiddenSize] = .nan }
        var backend = DeferredResidentBackend(base: try TinyLlama.backend(), capacity: 1 << 30)
        backend.gathersEmbeddings = true
        let calibrator = try LayerStreamingCalibrator(backend: backend, weights: weights, samples: samples, chunkTokens: 1_000_000)
        let error = calibrationError { _ = try calibrator.activationAmax(layer: 0) }
        let first = try #require(samples.firstIndex { $0.tokens.contains(Int32(token)) })
        #expect(error == .nonFiniteHiddenState(layer: nil, sample: first, source: samples[first].source))
        #expect(backend.log.events.contains("gather"))
    }

    /// An infinite down_proj weight poisons layer 1's output; the backend's non-finite row names the sample.
    @Test func nonFiniteResidentOutputNamesLayerAndSample() throws {
        let weights = try overriding(try TinyLlama.model(), "model.layers.1.mlp.down_proj.weight") { $0[0] = .infinity }
        let backend = DeferredResidentBackend(base: try TinyLlama.backend(), capacity: 1 << 30)
        let samples = try TinyLlama.samples()
        let calibrator = try LayerStreamingCalibrator(backend: backend, weights: weights, samples: samples, chunkTokens: 1_000_000)
        _ = try calibrator.activationAmax(layer: 0)
        let error = calibrationError { _ = try calibrator.activationAmax(layer: 1) }
        #expect(error == .nonFiniteHiddenState(layer: 1, sample: 0, source: samples[0].source))
    }

    @Test func aNonFiniteRowIsPinnedOnItsSample() throws {
        let plan = try CalibrationPlan(set: CalibrationSet(samples: try TinyLlama.samples()), source: "", chunkTokens: 1_000_000)
        let chunk = try #require(plan.chunks.first)
        #expect(chunk.tokenCounts.count == 8)
        let firstRowOfSample3 = chunk.tokenCounts[0..<3].reduce(0, +)
        #expect(chunk.nonFiniteHiddenState(row: firstRowOfSample3, layer: 4)
                    == .nonFiniteHiddenState(layer: 4, sample: 3, source: chunk.sources[3]))
        #expect(chunk.nonFiniteHiddenState(row: firstRowOfSample3 - 1, layer: nil)
                    == .nonFiniteHiddenState(layer: nil, sample: 2, source: chunk.sources[2]))
    }
}
