import Checkpoint
import Foundation
import LlamaModel
import SafeTensors
import Testing

/// `coordctl quantize --exclude` end to end on the tiny fixture, through the binary: the excluded Linears are the
/// source's BF16 bytes with no scale tensors, the loaders' lists name them, the verifier passes, the quality report
/// counts them; a pattern that splits a fused group or matches nothing is refused before any work.
@Suite struct ExcludeTests {
    static let calib = ["--calib", Fixtures.directory.appendingPathComponent("tiny-llama-calib.jsonl").path,
                        "--min-tokens", "1", "--device", "cpu"]
    static let patterns = ["--exclude", "model.layers.0.*", "--exclude", "*.down_proj"]
    /// Layer 0 whole and layer 1's down_proj, in model order.
    static let excludedNames = LinearKind.allCases.map { "model.layers.0.\($0.rawValue)" } + ["model.layers.1.mlp.down_proj"]

    @Test(arguments: ["compressed-tensors", "modelopt"])
    func excludedLinearsStayBF16(format: String) throws {
        try withTemporaryDirectory("coordctl-exclude") { parent throws in
            let output = parent.appendingPathComponent("OUT")
            let result = try Coordctl.run(["quantize", "--model", Fixtures.tinyLlama.path, "--output", output.path,
                                           "--format", format, "--eval-samples", "2", "--no-quality-gate"]
                                          + Self.calib + Self.patterns, in: parent)
            try #require(result.status == 0, "stderr: \(result.stderr)")
            #expect(result.stdout.contains("(6 Linears)"), "stdout: \(result.stdout)")
            #expect(result.stdout.contains("8 Linears kept unquantized (--exclude)"), "stdout: \(result.stdout)")

            let config = try Fixtures.tinyConfig()
            let source = try SafeTensorsModel(directory: Fixtures.tinyLlama.path)
            let written = try SafeTensorsModel(directory: output.path)
            let layout = CheckpointLayout(rawValue: format)!
            let quantizedLayout = LinearTensorLayout(layout: layout, scheme: .nvfp4)
            for linear in config.allLinears {
                let excluded = Self.excludedNames.contains(linear.name)
                for role in LinearTensorLayout.Role.allCases {
                    let name = quantizedLayout.tensorName(role, of: linear)
                    // modelopt's packed weight is `<module>.weight`, the name an excluded BF16 weight has too.
                    if excluded && name == linear.weightName { continue }
                    #expect(written.contains(name) == !excluded, "\(name)")
                }
                guard excluded else { continue }
                let info = try written.info(linear.weightName)
                #expect(info.dtype == .bf16 && info.shape == linear.shape, "\(linear.weightName): \(info)")
                #expect(try written.data(linear.weightName) == source.data(linear.weightName), "\(linear.weightName)")
            }

            let root = try jsonObject(output.appendingPathComponent("config.json"))
            let quantization = try #require(root["quantization_config"] as? [String: Any])
            let fixed = layout == .modelopt ? ["lm_head", "model.embed_tokens"] : ["lm_head"]
            #expect(quantization["ignore"] as? [String] == fixed + Self.excludedNames)
            if layout == .modelopt {
                let hf = try jsonObject(output.appendingPathComponent("hf_quant_config.json"))
                #expect((hf["quantization"] as? [String: Any])?["exclude_modules"] as? [String] == fixed + Self.excludedNames)
            }
            let record = try jsonObject(output.appendingPathComponent("calibration.json"))
            #expect((record["activation_amax"] as? [String: Any])?.count == 14)
            let inputScales = try #require(record["input_scale"] as? [String: Any])
            #expect(Set(inputScales.keys) == Set(config.allLinears.map(\.name)).subtracting(Self.excludedNames))

            var excluded: [String: SafeTensorsDType] = [:]
            for name in Self.excludedNames { excluded[name] = .bf16 }
            let report = try CheckpointVerifier(config: config, layout: LinearTensorLayout(layout: layout, scheme: .nvfp4,
                                                                                           excluded: excluded),
                                                source: source).verify(directory: output)
            #expect(report.excludedLinears == 8 && report.quantizedLinears == 6)
        }
    }

    /// Without --exclude the config keeps its fixed list: nothing of the option leaks into a plain checkpoint.
    @Test func noExcludeWritesTheFixedLists() throws {
        try withTemporaryDirectory("coordctl-exclude") { parent throws in
            let output = parent.appendingPathComponent("OUT")
            let result = try Coordctl.run(["quantize", "--model", Fixtures.tinyLlama.path, "--output", output.path,
                                           "--scheme", "nvfp4a16"], in: parent)
            try #require(result.status == 0, "stderr: \(result.stderr)")
            let root = try jsonObject(output.appendingPathComponent("config.json"))
            #expect((root["quantization_config"] as? [String: Any])?["ignore"] as? [String] == ["lm_head"])
            #expect(!result.stdout.contains("--exclude"))
        }
    }

    func expectUsageError(_ arguments: [String], mentions fragments: [String], in parent: URL,
                          sourceLocation: SourceLocation = #_sourceLocation) throws {
        let result = try Coordctl.run(arguments, in: parent)
        #expect(result.status == 64, "exit status \(result.status); stderr: \(result.stderr)", sourceLocation: sourceLocation)
        for fragment in fragments {
            #expect(result.stderr.contains(fragment), "stderr lacks '\(fragment)': \(result.stderr)",
                    sourceLocation: sourceLocation)
        }
        #expect(try entries(of: parent, prefix: "OUT") == [], sourceLocation: sourceLocation)
    }

    @Test(arguments: ["quantize", "submit"])
    func partOfAFusedGroupIsRefused(command: String) throws {
        try withTemporaryDirectory("coordctl-exclude") { parent throws in
            let connection = command == "submit" ? ["--coordinator", "127.0.0.1:9"] : []
            try expectUsageError([command] + connection + ["--model", Fixtures.tinyLlama.path, "--output",
                                  parent.appendingPathComponent("OUT").path, "--exclude", "*.q_proj"],
                                 mentions: ["--exclude", "'*.q_proj'", "model.layers.0.self_attn.k_proj",
                                            "model.layers.0.self_attn.v_proj", "qkv_proj"], in: parent)
        }
    }

    @Test(arguments: ["quantize", "submit"])
    func aPatternMatchingNothingIsRefused(command: String) throws {
        try withTemporaryDirectory("coordctl-exclude") { parent throws in
            let connection = command == "submit" ? ["--coordinator", "127.0.0.1:9"] : []
            try expectUsageError([command] + connection + ["--model", Fixtures.tinyLlama.path, "--output",
                                  parent.appendingPathComponent("OUT").path, "--exclude", "*.down_proj",
                                  "--exclude", "model.layers.5.*"],
                                 mentions: ["'model.layers.5.*' matches no Linear"], in: parent)
        }
    }

    @Test func helpExplainsTheOption() throws {
        try withTemporaryDirectory("coordctl-exclude") { parent throws in
            let result = try Coordctl.run(["quantize", "--help"], in: parent)
            #expect(result.status == 0)
            for fragment in ["--exclude <PATTERN>", "model.layers.0.*", "*.down_proj", "exclude_modules", "gate/up"] {
                #expect(result.stdout.contains(fragment), "help lacks '\(fragment)': \(result.stdout)")
            }
        }
    }
}
