import CPUBackend
import ComputeBackend
import Foundation
import LlamaModel
import SafeTensors
import Testing

/// The BF16-rounding forward against modelopt's export of the fixture model, whose input scales came from
/// transformers' BF16 forward: `input_scale = f32(amax/2688)`.
@Suite struct BFloat16ForwardTests {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")

    @Test func activationScalesTrackModeloptsBFloat16Calibration() throws {
        let modelDirectory = Self.fixtures.appendingPathComponent("tiny-llama").path
        let config = try LlamaConfig.load(path: modelDirectory + "/config.json")
        let model = try SafeTensorsModel(directory: modelDirectory)
        let reference = try SafeTensorsModel(directory: Self.fixtures.appendingPathComponent("tiny-llama-nvfp4-modelopt").path)
        let backend = CPUBackend(config: config, activationPrecision: .bfloat16)

        // The eight calibration samples, one sequence each, as modelopt ran them.
        let lines = try String(contentsOf: Self.fixtures.appendingPathComponent("tiny-llama-calib.jsonl"), encoding: .utf8)
            .split(separator: "\n")
        let samples: [[Int]] = try lines.map { line in
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as! [String: Any]
            return (object["input_ids"] as! [NSNumber]).map(\.intValue)
        }
        var hidden = try samples.map { try backend.embed($0, from: model) }
        var relativeDifferences: [Double] = []
        for layerIndex in 0..<config.numHiddenLayers {
            let layer = try backend.loadLayer(layerIndex, from: model)
            var amax = ObservedAmax.zero
            for index in hidden.indices {
                let batch = try SequenceBatch(tokenCounts: [samples[index].count])
                amax = amax.merging(try backend.forward(layer: layer, hidden: &hidden[index], batch: batch))
            }
            for linear in config.linears(layer: layerIndex) {
                let expected = try reference.withBytes(linear.name + ".input_scale") { Float(bitPattern: $0.loadUnaligned(as: UInt32.self)) }
                let ours = amax.amax(of: linear.kind) / 2688
                relativeDifferences.append(Double(abs(ours - expected) / expected))
            }
        }
        // Same rounding points as the reference: most scales are bitwise equal, and none is more than 1% off
        // (the f32 forward is about 1% off on this model, spec §12).
        #expect(relativeDifferences.count == 14)
        #expect(relativeDifferences.filter { $0 == 0 }.count >= 10, "\(relativeDifferences)")
        #expect(relativeDifferences.max()! < 0.01, "\(relativeDifferences)")
    }
}
