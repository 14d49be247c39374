import CPUBackend
import ComputeBackend
import Foundation
import LlamaModel
import SafeTensors
import Testing
@testable import Calibration

/// The tiny model, its 8 calibration samples and the f32 reference amax of tests/Fixtures.
enum TinyLlama {
    static var modelDirectory: String { fixturesDirectory.appendingPathComponent("tiny-llama").path }
    static var samplesPath: String { fixturesDirectory.appendingPathComponent("tiny-llama-calib.jsonl").path }

    static func config() throws -> LlamaConfig {
        try LlamaConfig.load(path: (modelDirectory as NSString).appendingPathComponent("config.json"))
    }

    static func model() throws -> SafeTensorsModel { try SafeTensorsModel(directory: modelDirectory) }

    static func backend() throws -> CPUBackend { CPUBackend(config: try config()) }

    /// The fixture's `input_ids`, loaded through the data loader.
    static func samples() throws -> [CalibrationSample] {
        try CalibrationData.load(path: samplesPath, tokenizer: nil, vocabSize: 512,
                                 options: CalibrationOptions(samples: 8, minTokens: 1)).samples
    }

    /// Linear module name → max |input| over the 8 samples (f32 transformers forward).
    static func referenceAmax() throws -> [String: Double] {
        let url = fixturesDirectory.appendingPathComponent("tiny-llama-amax-fp32.json")
        return try JSONDecoder().decode([String: Double].self, from: Data(contentsOf: url))
    }
}

/// Runs every layer in order; returns each layer's result.
func calibrateAllLayers<Backend>(_ calibrator: LayerStreamingCalibrator<Backend>) throws -> [[FusedGroup: Float]] {
    try (0..<calibrator.layerCount).map { try calibrator.activationAmax(layer: $0) }
}

/// The error `body` throws as a `CalibrationError`; records an issue when it throws none or another kind.
func calibrationError(_ body: () throws -> Void) -> CalibrationError? {
    do {
        try body()
        Issue.record("expected a CalibrationError, but nothing was thrown")
    } catch let error as CalibrationError {
        return error
    } catch {
        Issue.record("expected a CalibrationError, got \(error)")
    }
    return nil
}

/// An overlay of `model` where `name` is replaced by f32 `values` (same shape).
func overriding(_ model: SafeTensorsModel, _ name: String, with values: (inout [Float]) -> Void) throws
    -> OverlayWeightSource<SafeTensorsModel>
{
    let description = try #require(model.describeTensor(name))
    var floats = try model.floats(name, expectedShape: description.shape)
    values(&floats)
    var overrides = InMemoryWeightSource()
    overrides.set(name, shape: description.shape, floats: floats)
    return OverlayWeightSource(base: model, overrides: overrides)
}
