import Foundation
import Testing

/// Per-Linear quality figures as `coordctl quantize` writes them into calibration.json, against numpy's figures for
/// modelopt's own checkpoint of the same model (Scripts/reference/weight-quantization-error.py): since the packed
/// weights and scales are modelopt's bytes, ‖W − Q(W)‖/‖W‖ must agree to rounding, and max |W| exactly.
@Suite struct LinearQualityTests {
    static func reference() throws -> [String: [String: Double]] {
        try JSONDecoder().decode([String: [String: Double]].self,
                                 from: Data(contentsOf: Fixtures.directory.appendingPathComponent("tiny-llama-weight-error-modelopt.json")))
    }

    @Test(arguments: ["compressed-tensors", "modelopt"])
    func calibrationJSONHoldsWeightAmaxAndErrorOfEveryLinear(format: String) throws {
        try withTemporaryDirectory("linear-quality") { parent throws in
            let output = parent.appendingPathComponent("OUT")
            let result = try Coordctl.run(["quantize", "--model", Fixtures.tinyLlama.path, "--output", output.path,
                                           "--calib", Fixtures.directory.appendingPathComponent("tiny-llama-calib.jsonl").path,
                                           "--min-tokens", "1", "--format", format], in: parent)
            try #require(result.status == 0, "stderr: \(result.stderr)")
            let calibration = try jsonObject(output.appendingPathComponent("calibration.json"))
            let errors = try #require(calibration["weight_relative_error"] as? [String: Double])
            let amax = try #require(calibration["weight_amax"] as? [String: Double])
            let activation = try #require(calibration["activation_amax"] as? [String: Double])
            let reference = try Self.reference()
            #expect(Set(errors.keys) == Set(reference.keys) && reference.count == 14)
            for (name, expected) in reference {
                let error = try #require(errors[name], "\(name)")
                #expect(abs(error - expected["weight_relative_error"]!) <= 1e-6 * expected["weight_relative_error"]!,
                        "\(name): \(error) vs numpy's \(expected["weight_relative_error"]!)")
                #expect(amax[name].map(Float.init) == Float(expected["weight_amax"]!), "\(name): written in shortest Float digits")
                #expect(activation[name] != nil)
            }
        }
    }
}
