import Foundation
import Testing
import ComputeBackend
import CPUBackend
import LlamaModel
import SafeTensors

/// Records every call and the max |x| it was handed.
final class RecordingTransform: LinearInputTransform, @unchecked Sendable {
    struct Call: Equatable {
        let layer: Int
        let group: FusedGroup
        let rows: Int
        let columns: Int
        let amax: Float
    }

    private let lock = NSLock()
    private var recorded: [Call] = []

    var calls: [Call] { lock.withLock { recorded } }

    func transform(_ values: UnsafeMutableBufferPointer<Float>, rows: Int, columns: Int, layer: Int, group: FusedGroup) {
        let amax = values.reduce(Float(0)) { max($0, $1.magnitude) }
        lock.withLock { recorded.append(Call(layer: layer, group: group, rows: rows, columns: columns, amax: amax)) }
    }
}

/// Zeroes the inputs of the given groups: with o and down zeroed, a layer adds nothing to its residual stream.
struct ZeroingTransform: LinearInputTransform {
    let groups: Set<FusedGroup>

    func transform(_ values: UnsafeMutableBufferPointer<Float>, rows: Int, columns: Int, layer: Int, group: FusedGroup) {
        if groups.contains(group) { values.update(repeating: 0) }
    }
}

@Suite struct BackendSeamTests {
    let config: LlamaConfig
    let model: SafeTensorsModel
    let backend: CPUBackend
    let ids: [Int]
    let batch: SequenceBatch

    init() throws {
        config = try Fixtures.tinyConfig()
        model = try Fixtures.tinyModel()
        backend = CPUBackend(config: config)
        let samples = try Fixtures.calibrationInputIDs()
        ids = samples[0] + samples[2]
        batch = try SequenceBatch(tokenCounts: [samples[0].count, samples[2].count])
    }

    @Test func inputTransformSeesEachObservedInputAfterObservation() throws {
        let layer = try backend.loadLayer(1, from: model)
        let recorder = RecordingTransform()
        var withHook = try backend.embed(ids, from: model)
        var plain = withHook
        let observed = try backend.forward(layer: layer, hidden: &withHook, batch: batch, inputTransform: recorder)
        let reference = try backend.forward(layer: layer, hidden: &plain, batch: batch)
        let calls = recorder.calls
        #expect(calls.map(\.group) == [.qkv, .o, .gateUp, .down])
        #expect(calls.map(\.columns) == [128, 128, 128, 352])
        #expect(calls.allSatisfy { $0.rows == batch.totalTokens && $0.layer == 1 })
        for call in calls { #expect(call.amax == observed[call.group]) }
        // A transform that changes nothing leaves the forward bit-identical.
        #expect(observed == reference)
        #expect(withHook == plain)
    }

    @Test func zeroedAttentionAndMLPInputsLeaveTheResidualStreamUnchanged() throws {
        let layer = try backend.loadLayer(0, from: model)
        let input = try backend.embed(ids, from: model)
        var hidden = input
        let observed = try backend.forward(layer: layer, hidden: &hidden, batch: batch,
                                           inputTransform: ZeroingTransform(groups: [.o, .down]))
        #expect(hidden == input)
        #expect(observed.o > 0 && observed.down > 0)  // observed before the transform
    }

    @Test func substitutedWeightsAreUsedInsteadOfTheCheckpointOnes() throws {
        // The W4A4-emulation seam for weights: an overlay source. Zero o_proj and down_proj, and the
        // layer becomes the identity on the residual stream.
        var overrides = InMemoryWeightSource()
        for kind in [LinearKind.o, .down] {
            let shape = config.expectedShape(of: kind)
            overrides.set("model.layers.0.\(kind.rawValue).weight", shape: shape, floats: [Float](repeating: 0, count: shape[0] * shape[1]))
        }
        let overlaid = try backend.loadLayer(0, from: OverlayWeightSource(base: model, overrides: overrides))
        let original = try backend.loadLayer(0, from: model)
        let input = try backend.embed(ids, from: model)
        var hidden = input
        let observed = try backend.forward(layer: overlaid, hidden: &hidden, batch: batch)
        #expect(hidden == input)
        var reference = input
        let referenceObserved = try backend.forward(layer: original, hidden: &reference, batch: batch)
        #expect(observed.qkv == referenceObserved.qkv)
        #expect(hidden != reference)
    }
}

@Suite struct OutputHeadTests {
    let config: LlamaConfig
    let model: SafeTensorsModel
    let samples: [[Int]]

    init() throws {
        config = try Fixtures.tinyConfig()
        model = try Fixtures.tinyModel()
        samples = try Fixtures.calibrationInputIDs()
    }

    /// Hidden states after every layer.
    func finalHidden(_ backend: CPUBackend, ids: [Int], batch: SequenceBatch) throws -> HiddenStates {
        var hidden = try backend.embed(ids, from: model)
        for index in 0..<config.numHiddenLayers {
            _ = try backend.forward(layer: try backend.loadLayer(index, from: model), hidden: &hidden, batch: batch)
        }
        return hidden
    }

    @Test func negativeLogLikelihoodIsTheLogSoftmaxOfTheNextTokens() throws {
        let backend = CPUBackend(config: config)
        let ids = samples[0] + samples[1]
        let batch = try SequenceBatch(tokenCounts: [samples[0].count, samples[1].count])
        let hidden = try finalHidden(backend, ids: ids, batch: batch)
        let head = try backend.loadOutputHead(from: model)
        let logits = try backend.logits(hidden, head: head)
        #expect(logits.count == batch.totalTokens * 512)

        var expected = 0.0
        for sample in 0..<2 {
            for row in batch.rows(ofSample: sample).dropLast() {
                let rowLogits = logits[(row * 512)..<((row + 1) * 512)].map(Double.init)
                let largest = rowLogits.max()!
                let logSumExp = largest + log(rowLogits.reduce(0) { $0 + exp($1 - largest) })
                expected += logSumExp - rowLogits[ids[row + 1]]
            }
        }
        let nll = try backend.negativeLogLikelihood(hidden, batch: batch, tokenIDs: ids, head: head)
        #expect(nll.count == ids.count - 2)
        #expect(abs(nll.sum - expected) <= 1e-5 * expected)
        // Chunked logits give the same sum.
        let chunked = try CPUBackend(config: config, logitsChunkElements: 3 * 512)
            .negativeLogLikelihood(hidden, batch: batch, tokenIDs: ids, head: head)
        #expect(chunked.count == nll.count)
        #expect(abs(chunked.sum - nll.sum) <= 1e-9 * nll.sum)
    }

    @Test func aZeroLmHeadGivesAPerplexityOfTheVocabularySize() throws {
        let backend = CPUBackend(config: config)
        var overrides = InMemoryWeightSource()
        overrides.set("lm_head.weight", shape: [512, 128], floats: [Float](repeating: 0, count: 512 * 128))
        let head = try backend.loadOutputHead(from: OverlayWeightSource(base: model, overrides: overrides))
        let batch = try SequenceBatch(tokenCounts: [samples[3].count])
        let hidden = try finalHidden(backend, ids: samples[3], batch: batch)
        let nll = try backend.negativeLogLikelihood(hidden, batch: batch, tokenIDs: samples[3], head: head)
        #expect(nll.count == samples[3].count - 1)
        #expect(abs(nll.perplexity - 512) < 1e-3)
    }

    @Test func tiedEmbeddingsServeAsTheLmHead() throws {
        let text = try String(contentsOfFile: Fixtures.path("tiny-llama/config.json"), encoding: .utf8)
        let tiedConfig = try LlamaConfig(json: Data(text.replacingOccurrences(of: "\"tie_word_embeddings\": false",
                                                                                with: "\"tie_word_embeddings\": true").utf8),
                                         source: "tied.json")
        #expect(tiedConfig.tieWordEmbeddings)
        let tied = CPUBackend(config: tiedConfig)
        let untied = CPUBackend(config: config)
        var overrides = InMemoryWeightSource()
        overrides.set("lm_head.weight", shape: [512, 128], floats: try model.floats("model.embed_tokens.weight"))
        let batch = try SequenceBatch(tokenCounts: [samples[0].count])
        let hidden = try finalHidden(untied, ids: samples[0], batch: batch)
        let tiedLogits = try tied.logits(hidden, head: try tied.loadOutputHead(from: model))
        let substituted = try untied.logits(hidden, head: try untied.loadOutputHead(from: OverlayWeightSource(base: model, overrides: overrides)))
        let original = try untied.logits(hidden, head: try untied.loadOutputHead(from: model))
        #expect(tiedLogits == substituted)
        #expect(tiedLogits != original)
    }
}

@Suite struct BackendErrorTests {
    @Test func batchesNeedSamplesWithTokens() {
        #expect(throws: ComputeBackendError.emptyBatch) { try SequenceBatch(tokenCounts: []) }
        #expect(throws: ComputeBackendError.nonPositiveTokenCount(sample: 1, count: 0)) { try SequenceBatch(tokenCounts: [3, 0]) }
    }

    @Test func sequenceBatchLaysSamplesOutInOrder() throws {
        let batch = try SequenceBatch(tokenCounts: [3, 1, 2])
        #expect(batch.totalTokens == 6)
        #expect(batch.sampleOffsets == [0, 3, 4])
        #expect(batch.rows(ofSample: 2) == 4..<6)
    }

    @Test func rejectsHiddenStatesThatDoNotMatchTheBatch() throws {
        let config = try Fixtures.tinyConfig()
        let model = try Fixtures.tinyModel()
        let backend = CPUBackend(config: config)
        let layer = try backend.loadLayer(0, from: model)
        var hidden = HiddenStates(hiddenSize: 128, values: [Float](repeating: 0.1, count: 5 * 128))
        let error = try #require(throws: ComputeBackendError.self) {
            try backend.forward(layer: layer, hidden: &hidden, batch: try SequenceBatch(tokenCounts: [4]))
        }
        #expect(error == .hiddenStatesMismatch(expectedTokens: 4, expectedHiddenSize: 128, actualTokens: 5, actualHiddenSize: 128))
        let head = try backend.loadOutputHead(from: model)
        #expect(throws: ComputeBackendError.tokenCountMismatch(expected: 5, actual: 4)) {
            try backend.negativeLogLikelihood(hidden, batch: try SequenceBatch(tokenCounts: [5]), tokenIDs: [1, 2, 3, 4], head: head)
        }
    }

    @Test func rejectsTokenIDsOutsideTheVocabulary() throws {
        let backend = CPUBackend(config: try Fixtures.tinyConfig())
        #expect(throws: ComputeBackendError.tokenIDOutOfRange(position: 2, tokenID: 512, vocabSize: 512)) {
            try backend.embed([510, 3, 512], from: try Fixtures.tinyModel())
        }
    }

    @Test func loadingNamesTheMissingOrMisshapenTensor() throws {
        let config = try Fixtures.tinyConfig()
        let backend = CPUBackend(config: config)
        let model = try Fixtures.tinyModel()
        #expect(throws: ComputeBackendError.layerOutOfRange(layer: 2, layerCount: 2)) { try backend.loadLayer(2, from: model) }
        var empty = InMemoryWeightSource()
        #expect(throws: LlamaWeightError.missingTensor(name: "model.layers.0.self_attn.q_proj.weight")) {
            try backend.loadLayer(0, from: empty)
        }
        empty.set("model.norm.weight", shape: [64], floats: [Float](repeating: 1, count: 64))
        #expect(throws: LlamaWeightError.shapeMismatch(name: "model.norm.weight", expected: [128], actual: [64])) {
            try backend.loadOutputHead(from: empty)
        }
    }
}
