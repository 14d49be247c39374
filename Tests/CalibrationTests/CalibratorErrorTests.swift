import CPUBackend
import ComputeBackend
import Foundation
import LlamaModel
import SafeTensors
import Testing
@testable import Calibration

/// Out-of-order calls, bad weights and bad setups stop the calibration with an error naming the culprit.
@Suite struct CalibratorErrorTests {
    private func calibrator(weights: any WeightSource, chunkTokens: Int = 4096) throws -> LayerStreamingCalibrator<CPUBackend> {
        try LayerStreamingCalibrator(backend: try TinyLlama.backend(), weights: weights, samples: try TinyLlama.samples(),
                                     chunkTokens: chunkTokens)
    }

    @Test func layersMustComeInOrder() throws {
        let calibrator = try calibrator(weights: try TinyLlama.model())
        #expect(throws: CalibrationError.layerOutOfOrder(requested: 1, expected: 0)) { try calibrator.activationAmax(layer: 1) }
        // A refused call changes nothing: layer 0 still works.
        _ = try calibrator.activationAmax(layer: 0)
        #expect(throws: CalibrationError.layerOutOfOrder(requested: 0, expected: 1)) { try calibrator.activationAmax(layer: 0) }
        #expect(throws: CalibrationError.layerOutOfRange(layer: 2, layerCount: 2)) { try calibrator.activationAmax(layer: 2) }
        #expect(throws: CalibrationError.layerOutOfRange(layer: -1, layerCount: 2)) { try calibrator.activationAmax(layer: -1) }
        _ = try calibrator.activationAmax(layer: 1)
        #expect(calibrator.completedLayers == 2)
        let description = CalibrationError.layerOutOfOrder(requested: 3, expected: 1).description
        #expect(description.contains("layer 3") && description.contains("next one is 1"))
    }

    /// A NaN norm weight in layer 1 makes its q/k/v input NaN: the error names layer 1 and the sample.
    @Test func nanNormNamesTheLayer() throws {
        let model = try TinyLlama.model()
        let weights = try overriding(model, LlamaConfig.inputLayerNormName(layer: 1)) { $0[5] = .nan }
        let calibrator = try calibrator(weights: weights, chunkTokens: 1)
        _ = try calibrator.activationAmax(layer: 0)
        let error = calibrationError { _ = try calibrator.activationAmax(layer: 1) }
        guard case .invalidAmax(let layer, let group, let amax, let samples)? = error else {
            Issue.record("expected invalidAmax, got \(String(describing: error))")
            return
        }
        #expect(layer == 1 && group == .qkv && amax.isNaN && samples == 0...0)
        let description = error!.description
        #expect(description.contains("layer 1") && description.contains("model.layers.1.self_attn.q_proj"))
        #expect(description.contains("samples 0...0"))
        // The hidden states are now inconsistent, so nothing more is calibrated.
        #expect(throws: CalibrationError.failedEarlier(layer: 1)) { try calibrator.activationAmax(layer: 1) }
    }

    /// A zeroed post-attention norm makes gate/up (and so down) never exercised: a zero amax is an error.
    @Test func zeroAmaxNamesTheLayer() throws {
        let model = try TinyLlama.model()
        let weights = try overriding(model, LlamaConfig.postAttentionLayerNormName(layer: 0)) { values in
            for index in values.indices { values[index] = 0 }
        }
        let calibrator = try calibrator(weights: weights)
        let error = calibrationError { _ = try calibrator.activationAmax(layer: 0) }
        #expect(error == .invalidAmax(layer: 0, group: .gateUp, amax: 0, samples: nil))
        let description = error?.description ?? ""
        #expect(description.contains("layer 0") && description.contains("model.layers.0.mlp.gate_proj")
                    && description.contains("never exercised"))
        #expect(calibrator.perLinearAmax.isEmpty)
    }

    /// NaN weights in down_proj leave every observed input finite but poison the layer's output.
    @Test func nonFiniteOutputNamesLayerAndSample() throws {
        let model = try TinyLlama.model()
        let weights = try overriding(model, "model.layers.1.mlp.down_proj.weight") { $0[0] = .infinity }
        let calibrator = try calibrator(weights: weights, chunkTokens: 1)
        _ = try calibrator.activationAmax(layer: 0)
        let error = calibrationError { _ = try calibrator.activationAmax(layer: 1) }
        let samples = try TinyLlama.samples()
        #expect(error == .nonFiniteHiddenState(layer: 1, sample: 0, source: samples[0].source))
        #expect(error?.description.contains("output of layer 1 for sample 0") == true)
    }

    /// An embedding row of NaN for a token only sample 3 uses is pinned on sample 3, even in one batched chunk.
    @Test func nonFiniteEmbeddingNamesTheSample() throws {
        let model = try TinyLlama.model()
        let weights = try overriding(model, LlamaConfig.embedTokensName) { values in
            for column in 0..<128 { values[307 * 128 + column] = .nan }
        }
        let calibrator = try calibrator(weights: weights, chunkTokens: 1_000_000)
        #expect(calibrator.chunkCount == 1)
        let error = calibrationError { _ = try calibrator.activationAmax(layer: 0) }
        let samples = try TinyLlama.samples()
        #expect(error == .nonFiniteHiddenState(layer: nil, sample: 3, source: samples[3].source))
        #expect(error?.description.contains("embeddings for sample 3") == true)
    }

    @Test func badSetupsAreRefused() throws {
        let backend = try TinyLlama.backend()
        let model = try TinyLlama.model()
        let samples = try TinyLlama.samples()
        func setupError(_ build: () throws -> Void) -> String? {
            guard case .invalidSetup(let message)? = calibrationError(build) else { return nil }
            return message
        }
        #expect(setupError { _ = try LayerStreamingCalibrator(backend: backend, weights: model, samples: []) }?
            .contains("no calibration samples") == true)
        #expect(setupError { _ = try LayerStreamingCalibrator(backend: backend, weights: model, samples: samples, chunkTokens: 0) }?
            .contains("chunkTokens") == true)
        #expect(setupError {
            _ = try LayerStreamingCalibrator(backend: backend, weights: model, samples: samples, activationMemoryBudget: -1)
        }?.contains("memory budget") == true)
        let outOfRange = [CalibrationSample(source: "x.jsonl:4", tokens: [1, 512])]
        #expect(setupError { _ = try LayerStreamingCalibrator(backend: backend, weights: model, samples: outOfRange) }?
            .contains("x.jsonl:4") == true)
        let empty = [CalibrationSample(source: "y.jsonl:2", tokens: [])]
        #expect(setupError { _ = try LayerStreamingCalibrator(backend: backend, weights: model, samples: empty) }?
            .contains("y.jsonl:2") == true)
    }

    /// A spill file damaged between layers is reported with its path.
    @Test func truncatedSpillFileIsReported() throws {
        let scratch = try TemporaryDirectory()
        let calibrator = try LayerStreamingCalibrator(
            backend: try TinyLlama.backend(), weights: try TinyLlama.model(), samples: try TinyLlama.samples(),
            chunkTokens: 1, activationMemoryBudget: 0, scratchDirectory: URL(fileURLWithPath: scratch.path))
        _ = try calibrator.activationAmax(layer: 0)
        let file = calibrator.scratchDirectory.appendingPathComponent("chunk-000002.f32").path
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: file))
        let error = calibrationError { _ = try calibrator.activationAmax(layer: 1) }
        guard case .scratchFile(let path, let message)? = error else {
            Issue.record("expected scratchFile, got \(String(describing: error))")
            return
        }
        #expect(path == file && message.contains("3 bytes"))
        #expect(!FileManager.default.fileExists(atPath: calibrator.scratchDirectory.path))
    }
}
