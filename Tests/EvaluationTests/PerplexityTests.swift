import Checkpoint
import ComputeBackend
import CPUBackend
import Evaluation
import Foundation
import LlamaModel
import NVFP4
import SafeTensors
import Testing

/// Summed NLL of `samples` as one batch, straight through the backend: embed, every layer, LM head.
func directNLL(backend: CPUBackend, source: some WeightSource, samples: [[Int]],
               transform: (any LinearInputTransform)? = nil) throws -> NegativeLogLikelihood {
    let batch = try SequenceBatch(tokenCounts: samples.map(\.count))
    let tokens = samples.flatMap { $0 }
    var hidden = try backend.embed(tokens, from: source)
    for layer in 0..<backend.config.numHiddenLayers {
        _ = try backend.forward(layer: try backend.loadLayer(layer, from: source), hidden: &hidden, batch: batch,
                                inputTransform: transform)
    }
    return try backend.negativeLogLikelihood(hidden, batch: batch, tokenIDs: tokens,
                                             head: try backend.loadOutputHead(from: source))
}

func relativeDifference(_ a: Double, _ b: Double) -> Double { abs(a - b) / abs(b) }

@Suite struct PerplexityTests {
    let config: LlamaConfig
    let model: SafeTensorsModel
    let backend: CPUBackend
    let samples: [[Int]]

    init() throws {
        config = try Fixtures.tinyConfig()
        model = try Fixtures.tinyModel()
        backend = CPUBackend(config: config)
        samples = try Fixtures.samples()
    }

    @Test func originalPerplexityEqualsDirectNLL() throws {
        let evaluator = PerplexityEvaluator(backend: backend, logger: quietLogger())
        let streamed = try evaluator.negativeLogLikelihoods(samples: samples,
                                                            variants: [EvaluationVariant(name: "original", weights: model)])
        let direct = try directNLL(backend: backend, source: model, samples: samples)
        #expect(streamed == [direct])
        #expect(direct.count == samples.reduce(0) { $0 + $1.count - 1 })
        // Split into one batch per sample, the sum only moves by rounding.
        let perSample = try PerplexityEvaluator(backend: backend, logger: quietLogger(), maxTokensPerBatch: 1)
            .negativeLogLikelihoods(samples: samples, variants: [EvaluationVariant(name: "original", weights: model)])
        #expect(perSample[0].count == direct.count)
        #expect(relativeDifference(perSample[0].sum, direct.sum) < 1e-5)
    }

    /// The report's quantized perplexity is the direct NLL of dequantized weights with fake-quantized inputs.
    @Test func quantizedPerplexityEqualsDirectEmulation() throws {
        let checkpoint = try QuantizedCheckpoint(directory: Fixtures.w4a4Checkpoint, originalConfig: config)
        let transform = try #require(try NVFP4InputFakeQuantization(checkpoint: checkpoint))
        let direct = try directNLL(backend: backend, source: DequantizedWeightSource(base: model, checkpoint: checkpoint),
                                   samples: samples, transform: transform)
        let originalDirect = try directNLL(backend: backend, source: model, samples: samples)
        var layersSeen: [Int] = []
        let report = try PerplexityEvaluator(backend: backend, logger: quietLogger())
            .evaluate(original: model, checkpoint: checkpoint, samples: samples) { layersSeen.append($0.completedLayers) }
        #expect(report.quantizedPerplexity == direct.perplexity)
        #expect(report.originalPerplexity == originalDirect.perplexity)
        #expect(report.quantizedPerplexity != report.originalPerplexity)
        #expect(report.samples == 8 && report.tokens == 490 && report.predictedTokens == 482)
        #expect(report.scheme == .nvfp4 && report.layout == .compressedTensors)
        #expect(layersSeen == [1, 2])
    }

    /// Output errors on given (calibration) samples ride on the original model's layers beside the scored samples: the
    /// perplexities do not move, and each Linear's figure is PyTorch's for modelopt's checkpoint on the same 490 tokens
    /// (Scripts/reference/linear-output-error.py), where the scored samples alone give other figures.
    @Test func outputErrorsOnCalibrationSamplesMatchPyTorchAndLeaveThePerplexitiesAlone() throws {
        let checkpoint = try QuantizedCheckpoint(directory: Fixtures.directory.appendingPathComponent("tiny-llama-nvfp4-modelopt"),
                                                 originalConfig: config)
        let evaluator = PerplexityEvaluator(backend: backend, logger: quietLogger())
        let scored = Array(samples.prefix(3))
        let plain = try evaluator.evaluate(original: model, checkpoint: checkpoint, samples: scored)
        let onCalibration = try evaluator.evaluate(original: model, checkpoint: checkpoint, samples: scored,
                                                   outputErrorSamples: samples)
        #expect(onCalibration.originalPerplexity == plain.originalPerplexity)
        #expect(onCalibration.quantizedPerplexity == plain.quantizedPerplexity)
        #expect(plain.linearOutputErrorInputs == .heldOut && onCalibration.linearOutputErrorInputs == .calibration)

        let url = Fixtures.directory.appendingPathComponent("tiny-llama-output-error-modelopt.json")
        let object = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
        let reference = try #require(object["linear_output_relative_error"] as? [String: Double])
        #expect(Set(onCalibration.linearOutputRelativeError.keys) == Set(reference.keys) && reference.count == 14)
        var worst = 0.0, worstOnScored = 0.0
        for (name, expected) in reference {
            worst = max(worst, relativeDifference(onCalibration.linearOutputRelativeError[name] ?? 0, expected))
            worstOnScored = max(worstOnScored, relativeDifference(plain.linearOutputRelativeError[name] ?? 0, expected))
        }
        // The same checkpoint and input scales: only the two forwards' rounding separates the figures.
        #expect(worst < 1e-4, "largest relative difference from PyTorch: \(worst)")
        #expect(worstOnScored > 1e-3, "the scored samples' figures must differ, or this test cannot tell: \(worstOnScored)")
    }

    /// Scripts/reference/torch_w4a4_eval.py on the same checkpoint and samples (transformers f32 forward,
    /// independent dequantization and fake quantization).
    @Test func matchesPyTorchReference() throws {
        let reference = try #require(
            try JSONSerialization.jsonObject(with: Data(contentsOf: Fixtures.referencePerplexity)) as? [String: Any])
        let originalReference = try #require(reference["original_perplexity"] as? Double)
        let quantizedReference = try #require(reference["quantized_perplexity"] as? Double)
        let checkpoint = try QuantizedCheckpoint(directory: Fixtures.w4a4Checkpoint, originalConfig: config)
        let report = try PerplexityEvaluator(backend: backend, logger: quietLogger())
            .evaluate(original: model, checkpoint: checkpoint, samples: samples)
        #expect(relativeDifference(report.originalPerplexity, originalReference) < 1e-3,
                "original \(report.originalPerplexity) vs PyTorch \(originalReference)")
        #expect(relativeDifference(report.quantizedPerplexity, quantizedReference) < 1e-3,
                "quantized \(report.quantizedPerplexity) vs PyTorch \(quantizedReference)")
        #expect(report.predictedTokens == reference["predicted_tokens"] as? Int)
    }

    /// The committed checkpoint is what QuantizeJob writes today from the fixture amax values.
    @Test func fixtureCheckpointIsCurrent() throws {
        try withTemporaryDirectory { directory in
            let output = directory.appendingPathComponent("out")
            try writeTinyCheckpoint(to: output, layout: .compressedTensors)
            for file in ["model.safetensors", "config.json"] {
                #expect(try Data(contentsOf: output.appendingPathComponent(file))
                            == Data(contentsOf: Fixtures.w4a4Checkpoint.appendingPathComponent(file)), "\(file)")
            }
        }
    }

    @Test(arguments: [QuantizationScheme.nvfp4, .nvfp4a16])
    func bothLayoutsGiveTheSamePerplexity(scheme: QuantizationScheme) throws {
        try withTemporaryDirectory { directory in
            let compressed = directory.appendingPathComponent("ct")
            try writeTinyCheckpoint(to: compressed, layout: .compressedTensors, scheme: scheme)
            let evaluator = PerplexityEvaluator(backend: backend, logger: quietLogger())
            let fromCompressed = try evaluator.evaluate(
                original: model, checkpoint: try QuantizedCheckpoint(directory: compressed, originalConfig: config),
                samples: samples)
            #expect(fromCompressed.scheme == scheme)
            guard scheme == .nvfp4 else {
                // Weight-only: dequantized weights alone, no input transform.
                let direct = try directNLL(backend: backend, source: DequantizedWeightSource(
                    base: model, checkpoint: try QuantizedCheckpoint(directory: compressed, originalConfig: config)),
                                           samples: samples)
                #expect(fromCompressed.quantizedPerplexity == direct.perplexity)
                return
            }
            let modelopt = directory.appendingPathComponent("mo")
            try writeTinyCheckpoint(to: modelopt, layout: .modelopt, scheme: scheme)
            let fromModelopt = try evaluator.evaluate(
                original: model, checkpoint: try QuantizedCheckpoint(directory: modelopt, originalConfig: config),
                samples: samples)
            #expect(fromCompressed.originalPerplexity == fromModelopt.originalPerplexity)
            // compressed-tensors stores 1/Sx, and several Sx of the tiny model come back one ulp off, which moves
            // the perplexity by about 1e-8 relative.
            #expect(relativeDifference(fromCompressed.quantizedPerplexity, fromModelopt.quantizedPerplexity) < 1e-6)
            // With the modelopt scales passed through the same reciprocal, the two are identical: the weights
            // and the emulation agree bit for bit, only the stored form of Sx differs.
            let modeloptCheckpoint = try QuantizedCheckpoint(directory: modelopt, originalConfig: config)
            let roundTripped = try (0..<config.numHiddenLayers).map { layer in
                try modeloptCheckpoint.inputScales(layer: layer).mapValues { InputScale(stored: 1 / $0.globalScale) }
            }
            let modeloptAsStoredByCompressed = try evaluator.negativeLogLikelihoods(samples: samples, variants: [
                EvaluationVariant(name: "modelopt", weights: DequantizedWeightSource(base: model, checkpoint: modeloptCheckpoint),
                                  inputTransform: NVFP4InputFakeQuantization(inputScales: roundTripped)),
            ])
            #expect(modeloptAsStoredByCompressed[0].perplexity == fromCompressed.quantizedPerplexity)
        }
    }

    @Test func fakeQuantizationUsesTheLayerAndGroupScale() throws {
        let scales: [[FusedGroup: InputScale]] = [[.qkv: InputScale(stored: 0.001), .o: InputScale(stored: 0.0005)],
                                                  [.down: InputScale(stored: 0.002)]]
        let transform = NVFP4InputFakeQuantization(inputScales: scales)
        let input: [Float] = (0..<64).map { Float(sin(Double($0) * 0.7)) * 1.3 }
        for (layer, group, scale) in [(0, FusedGroup.qkv, Float(0.001)), (0, .o, 0.0005), (1, .down, 0.002)] {
            var expected = input
            expected.withUnsafeMutableBufferPointer {
                NVFP4ActivationEmulation.fakeQuantize($0, cols: 32, inputScale: InputScale(stored: scale))
            }
            var actual = input
            actual.withUnsafeMutableBufferPointer { transform.transform($0, rows: 2, columns: 32, layer: layer, group: group) }
            #expect(bits(actual) == bits(expected))
            #expect(actual != input)
        }
        // No scale for the group or the layer: left alone.
        for (layer, group) in [(0, FusedGroup.down), (1, .qkv), (5, .qkv)] {
            var untouched = input
            untouched.withUnsafeMutableBufferPointer { transform.transform($0, rows: 2, columns: 32, layer: layer, group: group) }
            #expect(untouched == input)
        }
    }
}
