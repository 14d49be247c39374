import Calibration
import ComputeBackend
import JobModel
import LlamaModel
import Testing

/// A range that starts after layer 0 (a cluster worker's share) runs from given hidden states with a plan that carries
/// no token ids, as workers receive it; and the observing and propagating passes of GPTQ leave the results alone when
/// the propagated weights are the original ones.
@Suite struct CalibratorLaterRangeTests {
    func plan() throws -> CalibrationPlan {
        try CalibrationPlan(set: CalibrationSet(samples: try TinyLlama.samples()), source: "", chunkTokens: 200)
    }

    func wholeModel(observer: (any CalibrationInputObserver)? = nil, propagation: (any LayerPropagation)? = nil) throws
        -> (amax: [String: Float], outputs: [HiddenStates]) {
        let calibrator = try LayerStreamingCalibrator(backend: try TinyLlama.backend(), weights: try TinyLlama.model(),
                                                      plan: try plan(), retainsOutputs: true)
        calibrator.inputObserver = observer
        calibrator.propagation = propagation
        for _ in 0..<calibrator.layerCount { _ = try calibrator.calibrateNextLayer() }
        let outputs = try (0..<calibrator.chunkCount).map { try calibrator.takeOutput(chunk: $0) }
        calibrator.finish()
        return (calibrator.perLinearAmax, outputs)
    }

    @Test func theSecondRangeRunsWithoutTokenIDsAndAgreesWithTheWholeModel() throws {
        let whole = try wholeModel()
        let first = try LayerStreamingCalibrator(backend: try TinyLlama.backend(), weights: try TinyLlama.model(),
                                                 plan: try plan(), layers: 0..<1, retainsOutputs: true)
        _ = try first.calibrateNextLayer()
        let handOver = try (0..<first.chunkCount).map { try first.takeOutput(chunk: $0) }
        first.finish()
        var stripped = try plan()
        for index in stripped.chunks.indices { stripped.chunks[index].tokenIDs = [] }
        let second = try LayerStreamingCalibrator(backend: try TinyLlama.backend(), weights: try TinyLlama.model(),
                                                  plan: stripped, layers: 1..<2,
                                                  input: .hiddenStates { handOver[$0.index] }, retainsOutputs: true)
        _ = try second.calibrateNextLayer()
        let outputs = try (0..<second.chunkCount).map { try second.takeOutput(chunk: $0) }
        #expect(outputs == whole.outputs)
        for (name, amax) in second.perLinearAmax { #expect(whole.amax[name] == amax, "\(name)") }
        #expect(second.perLinearAmax.count == 7)
    }

    final class CountingObserver: CalibrationInputObserver, LinearInputTransform, @unchecked Sendable {
        var calls = 0
        func inputTransform(forChunk chunk: Int) -> any LinearInputTransform { self }
        func transform(_ values: UnsafeMutableBufferPointer<Float>, rows: Int, columns: Int, layer: Int, group: FusedGroup) {
            calls += 1
        }
    }

    final class SameWeights: LayerPropagation {
        var layers: [Int] = []
        func propagatedWeights(layer: Int) throws -> any WeightSource {
            layers.append(layer)
            return try TinyLlama.model()
        }
    }

    /// The first pass only observes (every group of every chunk once per layer), the second runs the layer again for
    /// the outputs: with the original weights, the amax and outputs are those of the plain schedule, bit for bit.
    @Test func observingAndPropagatingWithTheSameWeightsChangesNothing() throws {
        let plain = try wholeModel()
        let observer = CountingObserver()
        let propagation = SameWeights()
        let propagated = try wholeModel(observer: observer, propagation: propagation)
        #expect(propagated.amax == plain.amax)
        #expect(propagated.outputs == plain.outputs)
        #expect(propagation.layers == [0, 1])
        let chunks = try plan().chunks.count
        #expect(observer.calls == 2 * 4 * chunks, "\(observer.calls)")
    }
}
