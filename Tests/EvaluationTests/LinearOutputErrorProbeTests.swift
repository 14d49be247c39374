import ComputeBackend
import Evaluation
import Foundation
import LlamaModel
import NVFP4
import SafeTensors
import Testing

/// The output-error probe on modelopt's own checkpoint of the tiny model: for a given input it must report
/// ‖X·Wᵀ − X̃·Q(W)ᵀ‖/‖X·Wᵀ‖ as computed here in plain double loops (Q(W) from modelopt's bytes, X̃ = X fake-quantized
/// under modelopt's input scale), leave the input untouched, and measure each Linear once.
@Suite struct LinearOutputErrorProbeTests {
    @Test func reportsTheOutputErrorOfEveryLinearOfTheGroupOnItsFirstInput() throws {
        let config = try Fixtures.tinyConfig()
        let original = try Fixtures.tinyModel()
        let checkpoint = try QuantizedCheckpoint(directory: Fixtures.directory.appendingPathComponent("tiny-llama-nvfp4-modelopt"),
                                                 originalConfig: config)
        let probe = try LinearOutputErrorProbe(config: config, original: original, checkpoint: checkpoint)
        let rows = 5, columns = config.hiddenSize
        var generator = SystemRandomNumberGenerator()
        var input = (0..<rows * columns).map { _ in Float.random(in: -3...3, using: &generator) }
        let untouched = input
        input.withUnsafeMutableBufferPointer { probe.transform($0, rows: rows, columns: columns, layer: 1, group: .qkv) }
        #expect(input == untouched, "the original model's input is left alone")
        // A second batch does not count: each Linear is measured once.
        var other = input.map { $0 * 10 }
        other.withUnsafeMutableBufferPointer { probe.transform($0, rows: rows, columns: columns, layer: 1, group: .qkv) }

        let errors = try probe.relativeErrors()
        let qkv = config.linears(layer: 1).filter { $0.kind.group == .qkv }
        #expect(Set(errors.keys) == Set(qkv.map(\.name)))
        var quantizedInput = input
        let scale = try #require(try checkpoint.inputScale(qkv[0]))
        quantizedInput.withUnsafeMutableBufferPointer { NVFP4ActivationEmulation.fakeQuantize($0, cols: columns, inputScale: scale) }
        for linear in qkv {
            let weight = try original.floats(linear.weightName, expectedShape: [linear.outFeatures, linear.inFeatures])
            let dequantized = NVFP4Quantizer.dequantize(try checkpoint.nvfp4Weight(linear))
            var error = 0.0, norm = 0.0
            for row in 0..<rows {
                for output in 0..<linear.outFeatures {
                    var exact = 0.0, approximate = 0.0
                    for k in 0..<columns {
                        exact += Double(input[row * columns + k]) * Double(weight[output * columns + k])
                        approximate += Double(quantizedInput[row * columns + k]) * Double(dequantized[output * columns + k])
                    }
                    error += (exact - approximate) * (exact - approximate)
                    norm += exact * exact
                }
            }
            let expected = (error / norm).squareRoot()
            let measured = try #require(errors[linear.name])
            #expect(abs(measured - expected) <= 1e-4 * expected, "\(linear.name): \(measured) vs \(expected)")
            #expect(expected > 0.01 && expected < 0.5, "an NVFP4 W4A4 error, not 0 and not garbage: \(expected)")
        }
    }

    /// Only the first `rowLimit` tokens count: rows beyond them change nothing.
    @Test func measuresAtMostTheRowLimit() throws {
        let config = try Fixtures.tinyConfig()
        let original = try Fixtures.tinyModel()
        let checkpoint = try QuantizedCheckpoint(directory: Fixtures.directory.appendingPathComponent("tiny-llama-nvfp4-modelopt"),
                                                 originalConfig: config)
        let columns = config.hiddenSize, limit = LinearOutputErrorProbe.rowLimit
        var generator = SystemRandomNumberGenerator()
        let first = (0..<limit * columns).map { _ in Float.random(in: -3...3, using: &generator) }
        var exactly = first
        var more = first + (0..<3 * columns).map { _ in Float.random(in: -300...300, using: &generator) }
        let a = try LinearOutputErrorProbe(config: config, original: original, checkpoint: checkpoint)
        let b = try LinearOutputErrorProbe(config: config, original: original, checkpoint: checkpoint)
        exactly.withUnsafeMutableBufferPointer { a.transform($0, rows: limit, columns: columns, layer: 0, group: .qkv) }
        more.withUnsafeMutableBufferPointer { b.transform($0, rows: limit + 3, columns: columns, layer: 0, group: .qkv) }
        #expect(try a.relativeErrors() == b.relativeErrors())
        #expect(try a.relativeErrors().count == 3)
    }
}
