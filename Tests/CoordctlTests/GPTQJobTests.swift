import Foundation
import SafeTensors
import Testing

/// `coordctl quantize --algorithm gptq` judged on the bytes it writes, against an independent reference:
/// Scripts/reference/gptq-tiny-llama.py (Hessians from a transformers forward over the same calibration samples, GPTQ in
/// numpy, written from the algorithm). Round-to-nearest's codes differ from the reference's in about 27% of the weights,
/// so the bounds below tell GPTQ from RTN (or from GPTQ on other Hessians) by a wide margin.
@Suite(.serialized) struct GPTQJobTests {
    static let calibration = Fixtures.directory.appendingPathComponent("tiny-llama-calib.jsonl")

    func quantize(_ extra: [String], evalSamples: Int = 0, in parent: URL, name: String) throws -> URL {
        let output = parent.appendingPathComponent(name)
        let result = try Coordctl.run(["quantize", "--model", Fixtures.tinyLlama.path, "--output", output.path,
                                       "--calib", Self.calibration.path, "--min-tokens", "1",
                                       "--eval-samples", "\(evalSamples)"] + extra, in: parent)
        try #require(result.status == 0, "stderr: \(result.stderr)")
        return output
    }

    /// Each Linear's E2M1 codes (one per weight) and block-scale bytes, from a written checkpoint or the reference.
    static func codes(_ model: (String) throws -> Data, linear: String) throws -> (codes: [UInt8], scales: Data) {
        let packed = try model(linear + ".weight_packed")
        return (packed.flatMap { [$0 & 0x0F, $0 >> 4] }, try model(linear + ".weight_scale"))
    }

    static let linears = (0..<2).flatMap { layer in
        ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
         "mlp.down_proj"].map { "model.layers.\(layer).\($0)" }
    }

    /// The share of codes that differ from the reference's, over all Linears and for the worst one; block scales must be
    /// identical (GPTQ keeps round-to-nearest's).
    func mismatch(_ output: URL, reference: String) throws -> (all: Double, worst: Double) {
        let written = try SafeTensorsModel(directory: output.path)
        let expected = try SafeTensorsFile(path: Fixtures.directory.appendingPathComponent(reference).path)
        var differing = 0, total = 0, worst = 0.0
        for linear in Self.linears {
            let ours = try Self.codes(written.data, linear: linear)
            let theirs = try Self.codes(expected.data, linear: linear)
            #expect(ours.scales == theirs.scales, "\(linear): block scales")
            try #require(ours.codes.count == theirs.codes.count)
            let count = zip(ours.codes, theirs.codes).filter { $0 != $1 }.count
            differing += count
            total += ours.codes.count
            worst = max(worst, Double(count) / Double(ours.codes.count))
        }
        return (Double(differing) / Double(total), worst)
    }

    /// With f32 activations both forwards round alike, so the Hessians agree to summation order and every code is the
    /// reference's, with the default propagation of quantized outputs (layer 1 calibrates on layer 0's dequantized GPTQ
    /// weights) and with `--propagate original` (measured: 0 of 368,640 codes differ in either). With the default BF16
    /// rounding our forward and transformers' round in different places, and GPTQ's error propagation, compounded by
    /// the propagation between layers, turns those differences into other codes here and there (measured 9.2%, worst
    /// Linear 25%), still far from round-to-nearest's 27%.
    @Test func codesAreThoseOfThePyTorchAndNumpyReference() throws {
        try withTemporaryDirectory("gptq-reference") { parent throws in
            let f32 = try quantize(["--algorithm", "gptq", "--activation-precision", "f32"], in: parent, name: "f32")
            let exact = try mismatch(f32, reference: "gptq-tiny-llama-f32-reference.safetensors")
            #expect(exact.all <= 0.001 && exact.worst <= 0.01, "\(exact)")
            let calibration = try jsonObject(f32.appendingPathComponent("calibration.json"))
            #expect((calibration["algorithm"] as? [String: Any])?["propagation"] as? String == "quantized")

            let original = try quantize(["--algorithm", "gptq", "--activation-precision", "f32", "--propagate", "original"],
                                        in: parent, name: "original")
            let exactOriginal = try mismatch(original, reference: "gptq-tiny-llama-f32-original-reference.safetensors")
            #expect(exactOriginal.all <= 0.001 && exactOriginal.worst <= 0.01, "\(exactOriginal)")
            let crossed = try mismatch(original, reference: "gptq-tiny-llama-f32-reference.safetensors")
            #expect(crossed.all >= 0.01, "the two propagations must give other codes: \(crossed)")

            let bf16 = try quantize(["--algorithm", "gptq"], in: parent, name: "bf16")
            let noisy = try mismatch(bf16, reference: "gptq-tiny-llama-bf16-reference.safetensors")
            let rtn = try quantize([], in: parent, name: "rtn")
            let roundToNearest = try mismatch(rtn, reference: "gptq-tiny-llama-bf16-reference.safetensors")
            #expect(noisy.all <= 0.15 && noisy.all < 0.5 * roundToNearest.all, "\(noisy) vs RTN \(roundToNearest)")
            #expect(roundToNearest.all >= 0.2, "the reference must tell GPTQ from RTN: \(roundToNearest)")
        }
    }

    /// What GPTQ is for: each Linear's output error on the calibration inputs (the quality report's figure, measured on
    /// the written bytes) is lower than round-to-nearest's, while the weights themselves move further from the source.
    /// calibration.json records the algorithm and its parameters.
    @Test func lowersTheOutputErrorOnTheCalibrationInputs() throws {
        try withTemporaryDirectory("gptq-output-error") { parent throws in
            let rtn = try quantize([], evalSamples: 2, in: parent, name: "rtn")
            let gptq = try quantize(["--algorithm", "gptq", "--gptq-act-order"], evalSamples: 2, in: parent, name: "gptq")
            func figures(_ output: URL) throws -> (output: [String: Double], weight: [String: Double], calibration: [String: Any]) {
                let quality = try jsonObject(output.appendingPathComponent("quality.json"))
                let calibration = try jsonObject(output.appendingPathComponent("calibration.json"))
                return (try #require(quality["linear_output_relative_error"] as? [String: Double]),
                        try #require(calibration["weight_relative_error"] as? [String: Double]), calibration)
            }
            let before = try figures(rtn), after = try figures(gptq)
            let mean = { (values: [String: Double]) in values.values.reduce(0, +) / Double(values.count) }
            #expect(mean(after.output) < 0.9 * mean(before.output), "\(mean(after.output)) vs RTN \(mean(before.output))")
            #expect(Self.linears.allSatisfy { after.output[$0]! < before.output[$0]! }, "\(after.output) vs \(before.output)")
            #expect(mean(after.weight) > mean(before.weight))

            let algorithm = try #require(after.calibration["algorithm"] as? [String: Any])
            #expect(algorithm["name"] as? String == "gptq" && algorithm["block_size"] as? Int == 128
                    && algorithm["dampening"] as? Double == 0.01 && algorithm["activation_order"] as? Bool == true, "\(algorithm)")
            #expect((before.calibration["algorithm"] as? [String: Any])?["name"] as? String == "rtn")
        }
    }

    /// `--scale-search mse` on the bytes written: the same global scales, other block scales here and there, and a
    /// weight error (‖W − Q(W)‖/‖W‖ of the written weights, in calibration.json) below round-to-nearest's for every
    /// Linear; with GPTQ, the output error on the calibration inputs lower still than GPTQ's alone on average.
    @Test func scaleSearchLowersTheErrorsOfBothAlgorithms() throws {
        try withTemporaryDirectory("scale-search") { parent throws in
            let rtn = try quantize([], evalSamples: 2, in: parent, name: "rtn")
            let searched = try quantize(["--scale-search", "mse"], evalSamples: 2, in: parent, name: "searched")
            let gptq = try quantize(["--algorithm", "gptq"], evalSamples: 2, in: parent, name: "gptq")
            let both = try quantize(["--algorithm", "gptq", "--scale-search", "mse"], evalSamples: 2, in: parent, name: "both")
            func figure(_ output: URL, _ file: String, _ key: String) throws -> [String: Double] {
                try #require(try jsonObject(output.appendingPathComponent(file))[key] as? [String: Double])
            }
            let before = try figure(rtn, "calibration.json", "weight_relative_error")
            let after = try figure(searched, "calibration.json", "weight_relative_error")
            #expect(Self.linears.allSatisfy { after[$0]! < before[$0]! }, "\(after) vs \(before)")
            #expect(try jsonObject(searched.appendingPathComponent("calibration.json"))["scale_search"] as? String == "mse")

            let written = try SafeTensorsModel(directory: searched.path), nearest = try SafeTensorsModel(directory: rtn.path)
            var moved = 0
            for linear in Self.linears {
                #expect(try written.data(linear + ".weight_global_scale") == nearest.data(linear + ".weight_global_scale"))
                moved += zip(try written.data(linear + ".weight_scale"), try nearest.data(linear + ".weight_scale")).filter { $0 != $1 }.count
            }
            #expect(moved > 0)

            let mean = { (values: [String: Double]) in values.values.reduce(0, +) / Double(values.count) }
            let gptqOutput = try figure(gptq, "quality.json", "linear_output_relative_error")
            let bothOutput = try figure(both, "quality.json", "linear_output_relative_error")
            #expect(mean(bothOutput) < mean(gptqOutput), "\(mean(bothOutput)) vs GPTQ alone \(mean(gptqOutput))")
        }
    }

    /// Usage errors exit 64 and say what is wrong.
    @Test(arguments: [
        (["--algorithm", "gptq", "--scheme", "nvfp4a16"], "--algorithm gptq needs the Hessians of a calibration forward"),
        (["--algorithm", "gptq", "--gptq-dampening", "0"], "--gptq-dampening must be a number above 0 (got 0.0)"),
        (["--algorithm", "gptq", "--gptq-block-size", "0"], "--gptq-block-size must be at least 1 (got 0)"),
        (["--gptq-act-order"], "--gptq-block-size, --gptq-dampening, --gptq-act-order and --propagate apply to --algorithm gptq"),
        (["--algorithm", "optimal"], "--algorithm"),
    ])
    func badOptionsAreUsageErrors(arguments: [String], message: String) throws {
        try withTemporaryDirectory("gptq-usage") { parent throws in
            let result = try Coordctl.run(["quantize", "--model", Fixtures.tinyLlama.path, "--output",
                                           parent.appendingPathComponent("OUT").path] + arguments, in: parent)
            #expect(result.status == 64, "\(result.stderr)")
            #expect(result.stderr.contains(message), "\(result.stderr)")
        }
    }
}
