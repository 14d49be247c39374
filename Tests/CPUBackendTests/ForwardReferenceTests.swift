import Foundation
import Testing
import ComputeBackend
import CPUBackend
import LlamaModel
import SafeTensors

/// The CPU forward against transformers' f32 forward of the tiny Llama (tiny-llama-forward.safetensors).
@Suite struct ForwardReferenceTests {
    let config: LlamaConfig
    let model: SafeTensorsModel
    let reference: SafeTensorsFile
    let backend: CPUBackend

    init() throws {
        config = try Fixtures.tinyConfig()
        model = try Fixtures.tinyModel()
        reference = try Fixtures.forwardReference()
        backend = CPUBackend(config: config)
    }

    func inputIDs(_ sample: Int) throws -> [Int] {
        try reference.int64s("sample\(sample).input_ids").map { Int($0) }
    }

    @Test(arguments: [0, 1])
    func embeddingsEqualTheReferenceExactly(_ sample: Int) throws {
        let embedded = try backend.embed(try inputIDs(sample), from: model)
        #expect(embedded.values == (try reference.floats("sample\(sample).layer_input.0")))
        #expect(embedded.tokenCount == (try inputIDs(sample)).count)
    }

    @Test(arguments: [0, 1])
    func eachLayerOutputOfOneSampleMatches(_ sample: Int) throws {
        let ids = try inputIDs(sample)
        let batch = try SequenceBatch(tokenCounts: [ids.count])
        var hidden = try backend.embed(ids, from: model)
        for layerIndex in 0..<config.numHiddenLayers {
            let layer = try backend.loadLayer(layerIndex, from: model)
            _ = try backend.forward(layer: layer, hidden: &hidden, batch: batch)
            let expected = try reference.floats("sample\(sample).layer_output.\(layerIndex)")
            let error = relativeError(hidden.values, expected)
            #expect(error < 1e-4, "sample \(sample) layer \(layerIndex): relative error \(error)")
        }
    }

    @Test func bothSamplesBatchedInOneCallMatchEachLayerOutput() throws {
        let ids = [try inputIDs(0), try inputIDs(1)]
        let batch = try SequenceBatch(tokenCounts: ids.map(\.count))
        var hidden = try backend.embed(ids[0] + ids[1], from: model)
        for layerIndex in 0..<config.numHiddenLayers {
            let layer = try backend.loadLayer(layerIndex, from: model)
            _ = try backend.forward(layer: layer, hidden: &hidden, batch: batch)
            for sample in 0..<2 {
                let output = hidden.rows(batch.rows(ofSample: sample)).values
                let expected = try reference.floats("sample\(sample).layer_output.\(layerIndex)")
                let error = relativeError(output, expected)
                #expect(error < 1e-4, "batched sample \(sample) layer \(layerIndex): relative error \(error)")
            }
        }
    }

    @Test func batchingDoesNotChangeAnySampleBeyondRounding() throws {
        let ids = [try inputIDs(1), try inputIDs(0)]
        let layer = try backend.loadLayer(0, from: model)
        var alone = try backend.embed(ids[0], from: model)
        _ = try backend.forward(layer: layer, hidden: &alone, batch: try SequenceBatch(tokenCounts: [ids[0].count]))
        let batch = try SequenceBatch(tokenCounts: ids.map(\.count))
        var together = try backend.embed(ids[0] + ids[1], from: model)
        _ = try backend.forward(layer: layer, hidden: &together, batch: batch)
        #expect(relativeError(together.rows(batch.rows(ofSample: 0)).values, alone.values) < 1e-6)
    }
}

/// Observed amax over the 8 calibration samples against tiny-llama-amax-fp32.json.
@Suite struct AmaxReferenceTests {
    /// Runs the samples through every layer, `samplesPerBatch` at a time, merging the observations.
    static func observe(samplesPerBatch: Int) throws -> [ObservedAmax] {
        let config = try Fixtures.tinyConfig()
        let model = try Fixtures.tinyModel()
        let backend = CPUBackend(config: config)
        let samples = try Fixtures.calibrationInputIDs()
        let groups = stride(from: 0, to: samples.count, by: samplesPerBatch).map {
            Array(samples[$0..<min($0 + samplesPerBatch, samples.count)])
        }
        var states = try groups.map { try backend.embed($0.flatMap { $0 }, from: model) }
        let batches = try groups.map { try SequenceBatch(tokenCounts: $0.map(\.count)) }
        var observed: [ObservedAmax] = []
        for layerIndex in 0..<config.numHiddenLayers {
            let layer = try backend.loadLayer(layerIndex, from: model)
            var amax = ObservedAmax.zero
            for index in states.indices {
                amax = amax.merging(try backend.forward(layer: layer, hidden: &states[index], batch: batches[index]))
            }
            observed.append(amax)
        }
        return observed
    }

    @Test(arguments: [1, 3, 8])
    func everyLinearAmaxMatchesTheF32Reference(samplesPerBatch: Int) throws {
        let config = try Fixtures.tinyConfig()
        let reference = try Fixtures.referenceAmax()
        let observed = try Self.observe(samplesPerBatch: samplesPerBatch)
        #expect(reference.count == config.allLinears.count)
        for linear in config.allLinears {
            let expected = try #require(reference[linear.name])
            let value = Double(observed[linear.layer].amax(of: linear.kind))
            let error = abs(value - expected) / expected
            #expect(error < 1e-4, "\(linear.name): \(value) vs \(expected), relative error \(error)")
        }
    }
}
