import Checkpoint
import Foundation
import LlamaModel
import SafeTensors
import Testing
import W4A4Probes

/// `coordctl quantize` as a user runs it. The binary must already be built: `swift build` (or
/// `swift build --build-tests`, which builds every product) puts it at `.build/debug/coordctl`.
enum Coordctl {
    /// The built binary: in `$NVFP4_TEST_BIN_DIR` when set (to run these tests against other binaries, e.g. an
    /// older commit's), else next to the test bundle (same configuration), else `.build/debug` of this checkout.
    static func executable() throws -> URL {
        if let directory = ProcessInfo.processInfo.environment["NVFP4_TEST_BIN_DIR"] {
            return URL(fileURLWithPath: directory).appendingPathComponent("coordctl")
        }
        var candidates = [Bundle.main.bundleURL.appendingPathComponent("coordctl")]
        if let executable = Bundle.main.executableURL {
            candidates.append(executable.deletingLastPathComponent().appendingPathComponent("coordctl"))
        }
        let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        candidates.append(packageRoot.appendingPathComponent(".build/debug/coordctl"))
        return try #require(candidates.first { FileManager.default.isExecutableFile(atPath: $0.path) },
                            "coordctl is not built; run `swift build --product coordctl` (looked in \(candidates.map(\.path)))")
    }

    struct Result {
        let status: Int32
        let stdout: String
        let stderr: String
    }

    /// Runs `coordctl` with `arguments`; stdout and stderr go to files so neither pipe can fill and block.
    static func run(_ arguments: [String], in scratch: URL, environment: [String: String] = [:]) throws -> Result {
        let process = Process()
        process.executableURL = try executable()
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        // The closing quality report is exercised by the tests that ask for it with --eval-samples.
        let skipReport = arguments.first == "quantize" && !arguments.contains("--eval-samples")
        process.arguments = arguments + (skipReport ? ["--eval-samples", "0"] : [])
        let stdoutURL = scratch.appendingPathComponent("stdout-\(UUID().uuidString)")
        let stderrURL = scratch.appendingPathComponent("stderr-\(UUID().uuidString)")
        _ = FileManager.default.createFile(atPath: stdoutURL.path, contents: nil)
        _ = FileManager.default.createFile(atPath: stderrURL.path, contents: nil)
        let stdout = try FileHandle(forWritingTo: stdoutURL)
        let stderr = try FileHandle(forWritingTo: stderrURL)
        process.standardOutput = stdout
        process.standardError = stderr
        process.standardInput = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        try stdout.close()
        try stderr.close()
        defer {
            try? FileManager.default.removeItem(at: stdoutURL)
            try? FileManager.default.removeItem(at: stderrURL)
        }
        return Result(status: process.terminationStatus,
                      stdout: try String(contentsOf: stdoutURL, encoding: .utf8),
                      stderr: try String(contentsOf: stderrURL, encoding: .utf8))
    }
}

@Suite struct CoordctlBinaryTests {
    @Test func quantizeTinyLlamaWeightOnly() throws {
        try withTemporaryDirectory("coordctl-bin") { parent throws in
            let output = parent.appendingPathComponent("OUT")
            let result = try Coordctl.run(["quantize", "--model", Fixtures.tinyLlama.path, "--output", output.path,
                                           "--scheme", "nvfp4a16"], in: parent)
            #expect(result.status == 0, "stderr: \(result.stderr)")
            #expect(result.stdout.contains("2 layers"), "stdout: \(result.stdout)")
            #expect(result.stdout.contains("14 Linears"))
            #expect(result.stdout.contains(output.path))
            #expect(try entries(of: parent, prefix: "OUT") == ["OUT"])

            let config = try Fixtures.tinyConfig()
            let verifier = CheckpointVerifier(config: config, layout: LinearTensorLayout(layout: .compressedTensors, scheme: .nvfp4a16),
                                              source: try SafeTensorsModel(directory: Fixtures.tinyLlama.path))
            let report = try verifier.verify(directory: output)
            #expect(report.quantizedLinears == 14)
        }
    }

    @Test func shardedOutputThroughTheBinary() throws {
        try withTemporaryDirectory("coordctl-bin") { parent throws in
            let output = parent.appendingPathComponent("OUT")
            let result = try Coordctl.run(["quantize", "--model", Fixtures.tinyLlama.path, "--output", output.path,
                                           "--scheme", "nvfp4a16", "--max-shard-size", "100KB"], in: parent)
            #expect(result.status == 0, "stderr: \(result.stderr)")
            let shards = try entries(of: output, prefix: "model-")
            #expect(shards.count > 2)
            #expect(FileManager.default.fileExists(atPath: output.appendingPathComponent(SafeTensorsModel.indexFileName).path))
            _ = try SafeTensorsModel(directory: output.path)
        }
    }

    /// Runs a failing command and checks the exit status, the stderr text and that no output appeared.
    func expectRefusal(_ arguments: [String], mentions fragments: [String], in parent: URL,
                       sourceLocation: SourceLocation = #_sourceLocation) throws {
        let result = try Coordctl.run(arguments, in: parent)
        #expect(result.status != 0, "exit status", sourceLocation: sourceLocation)
        for fragment in fragments {
            #expect(result.stderr.contains(fragment), "stderr lacks '\(fragment)': \(result.stderr)",
                    sourceLocation: sourceLocation)
        }
        #expect(try entries(of: parent, prefix: "OUT.partial") == [], sourceLocation: sourceLocation)
    }

    @Test func badMaxShardSize() throws {
        try withTemporaryDirectory("coordctl-bin") { parent throws in
            try expectRefusal(["quantize", "--model", Fixtures.tinyLlama.path, "--output", parent.appendingPathComponent("OUT").path,
                               "--scheme", "nvfp4a16", "--max-shard-size", "abc"],
                              mentions: ["--max-shard-size", "'abc'"], in: parent)
            #expect(try entries(of: parent, prefix: "OUT") == [])
        }
    }

    @Test
    func hugeMaxShardSizeIsAnErrorNotACrash() throws {
        try withTemporaryDirectory("coordctl-bin") { parent throws in
            try expectRefusal(["quantize", "--model", Fixtures.tinyLlama.path, "--output", parent.appendingPathComponent("OUT").path,
                               "--scheme", "nvfp4a16", "--max-shard-size", "1e12GB"],
                              mentions: ["--max-shard-size", "'1e12GB'"], in: parent)
            let result = try Coordctl.run(["quantize", "--model", Fixtures.tinyLlama.path, "--output",
                                           parent.appendingPathComponent("OUT").path, "--scheme", "nvfp4a16",
                                           "--max-shard-size", "1e12GB"], in: parent)
            #expect(result.status == 64, "a usage error, not a signal")
            #expect(!result.stderr.contains("Fatal error"))
        }
    }

    /// Every bad flag value is a usage error (exit 64) whose message names the flag and the value, negative numbers
    /// included (they must not read as a missing value).
    @Test(arguments: [["--samples", "-1"], ["--max-shard-size", "lots"], ["--activation-memory", "lots"],
                      ["--chunk-tokens", "-5"], ["--eval-samples", "-2"]])
    func badValuesAreUsageErrors(_ flag: [String]) throws {
        try withTemporaryDirectory("coordctl-bin") { parent throws in
            let result = try Coordctl.run(["quantize", "--model", Fixtures.tinyLlama.path, "--output",
                                           parent.appendingPathComponent("OUT").path] + flag, in: parent)
            #expect(result.status == 64, "stderr: \(result.stderr)")
            #expect(result.stderr.contains(flag[0]) && result.stderr.contains(flag[1]), "stderr: \(result.stderr)")
            #expect(!result.stderr.contains("Missing value"))
            #expect(try entries(of: parent, prefix: "OUT") == [])
        }
    }

    /// Without a terminal, quantize's progress is one line per change of phase or layer count (not one per second or
    /// per rate), and the last one says how the job ended.
    @Test func progressWithoutATerminalIsOneLinePerChange() throws {
        try withTemporaryDirectory("coordctl-bin") { parent throws in
            let result = try Coordctl.run(["quantize", "--model", Fixtures.tinyLlama.path, "--output",
                                           parent.appendingPathComponent("OUT").path,
                                           "--calib", Fixtures.directory.appendingPathComponent("tiny-llama-calib.jsonl").path,
                                           "--min-tokens", "1", "--eval-samples", "2"], in: parent)
            #expect(result.status == 0, "stderr: \(result.stderr)")
            let lines = result.stderr.split(separator: "\n").filter { $0.hasPrefix("job ") }
            // loading, calibrating, exporting/merging/evaluating with their layer counts, succeeded: a handful.
            #expect((2...12).contains(lines.count), "\(lines)")
            #expect(Set(lines).count == lines.count, "no line repeats: \(lines)")
            let last = try #require(lines.last)
            #expect(last.contains("succeeded, calibrated 2/2 layers (100%), exported 2/2 layers, quality report 2/2 layers"), "\(last)")
            #expect(last.contains("gate passed") && !last.contains("ETA"), "\(last)")
        }
    }

    @Test func versionIsPrinted() throws {
        try withTemporaryDirectory("coordctl-bin") { parent throws in
            let result = try Coordctl.run(["--version"], in: parent)
            #expect(result.status == 0)
            #expect(result.stdout.trimmingCharacters(in: .whitespacesAndNewlines).hasPrefix("NVFP4Cluster "), "\(result.stdout)")
        }
    }

    /// The fixture file holds 8 records: asking for 100 proceeds with 8, and says so.
    @Test func moreSamplesThanTheDataHoldsWarns() throws {
        try withTemporaryDirectory("coordctl-bin") { parent throws in
            let result = try Coordctl.run(["quantize", "--model", Fixtures.tinyLlama.path, "--output",
                                           parent.appendingPathComponent("OUT").path,
                                           "--calib", Fixtures.directory.appendingPathComponent("tiny-llama-calib.jsonl").path,
                                           "--min-tokens", "1", "--samples", "100"], in: parent)
            #expect(result.status == 0, "stderr: \(result.stderr)")
            #expect(result.stderr.contains("--samples 100 asked for more samples than"), "stderr: \(result.stderr)")
            #expect(result.stderr.contains("calibrating on 8"))
        }
    }

    /// Ctrl-C cancels the job: the command says so, exits 130, and leaves neither OUT nor OUT.partial-<id>. The job is
    /// held at the coordinator's export (a debug fault point) so that the signal lands mid-job.
    @Test func ctrlCCancelsAndRemovesThePartialOutput() throws {
        try withTemporaryDirectory("coordctl-bin") { parent throws in
            let process = Process()
            process.executableURL = try Coordctl.executable()
            process.arguments = ["quantize", "--model", Fixtures.tinyLlama.path, "--output", parent.appendingPathComponent("OUT").path,
                                 "--calib", Fixtures.directory.appendingPathComponent("tiny-llama-calib.jsonl").path,
                                 "--min-tokens", "1", "--eval-samples", "0"]
            process.environment = ProcessInfo.processInfo.environment.merging(["NVFP4CLUSTER_DEBUG_PAUSE_AT": "coordd-export:5"]) { $1 }
            let stderrURL = parent.appendingPathComponent("stderr")
            _ = FileManager.default.createFile(atPath: stderrURL.path, contents: nil)
            let stderr = try FileHandle(forWritingTo: stderrURL)
            process.standardError = stderr
            process.standardOutput = FileHandle.nullDevice
            process.standardInput = FileHandle.nullDevice
            try process.run()
            let deadline = Date().addingTimeInterval(60)
            while Date() < deadline, !((try? String(contentsOf: stderrURL, encoding: .utf8)) ?? "").contains("debug fault point") {
                Thread.sleep(forTimeInterval: 0.1)
            }
            #expect(try entries(of: parent, prefix: "OUT.partial").count == 1, "the job is mid-way")
            kill(process.processIdentifier, SIGINT)
            process.waitUntilExit()
            try stderr.close()
            let text = try String(contentsOf: stderrURL, encoding: .utf8)
            #expect(process.terminationReason == .exit && process.terminationStatus == 130, "stderr: \(text)")
            #expect(text.contains("interrupted: job") && text.contains("partial output was removed"), "stderr: \(text)")
            #expect(try entries(of: parent, prefix: "OUT") == [])
        }
    }

    @Test func weightOnlyModeloptIsRefused() throws {
        try withTemporaryDirectory("coordctl-bin") { parent throws in
            try expectRefusal(["quantize", "--model", Fixtures.tinyLlama.path, "--output", parent.appendingPathComponent("OUT").path,
                               "--scheme", "nvfp4a16", "--format", "modelopt"],
                              mentions: ["--format modelopt", "nvfp4a16"], in: parent)
            #expect(try entries(of: parent, prefix: "OUT") == [])
        }
    }

    @Test func w4a4CalibratesByDefault() throws {
        try withTemporaryDirectory("coordctl-bin") { parent throws in
            // nvfp4 is the default scheme: calibration runs on the given samples and calibration.json is written.
            let output = parent.appendingPathComponent("OUT")
            let result = try Coordctl.run(["quantize", "--model", Fixtures.tinyLlama.path, "--output", output.path,
                                           "--calib", Fixtures.directory.appendingPathComponent("tiny-llama-calib.jsonl").path,
                                           "--min-tokens", "1", "--device", "cpu", "--eval-samples", "4"], in: parent)
            #expect(result.status == 0, "stderr: \(result.stderr)")
            // The closing quality report: perplexity of the original against the W4A4-emulated checkpoint.
            #expect(result.stdout.contains("perplexity"), "stdout: \(result.stdout)")
            #expect(result.stdout.contains("held-out"), "stdout: \(result.stdout)")
            #expect(result.stdout.contains("quality gate: passed (limit 2× the original perplexity)"), "stdout: \(result.stdout)")
            let record = try JSONSerialization.jsonObject(with: Data(contentsOf: output.appendingPathComponent("calibration.json"))) as? [String: Any]
            #expect(record?["samples"] as? Int == 8)
            #expect((record?["activation_amax"] as? [String: Any])?.count == 14)
        }
    }

    /// W4A4 through the binary in both layouts: every stored activation scale is exactly f32(amax / 2688) of the amax
    /// calibration.json records (its reciprocal in compressed-tensors), and within BF16 noise of modelopt's.
    @Test(arguments: ["compressed-tensors", "modelopt"])
    func w4a4StoresTheScalesOfItsCalibration(format: String) throws {
        try withTemporaryDirectory("coordctl-bin") { parent throws in
            let output = parent.appendingPathComponent("OUT")
            let result = try Coordctl.run(["quantize", "--model", Fixtures.tinyLlama.path, "--output", output.path,
                                           "--calib", Fixtures.directory.appendingPathComponent("tiny-llama-calib.jsonl").path,
                                           "--min-tokens", "1", "--device", "cpu", "--format", format], in: parent)
            try #require(result.status == 0, "stderr: \(result.stderr)")
            let scales = try StoredActivationScales(directory: output)
            #expect(scales.layout == format)
            #expect(scales.stored.count == 14)
            #expect(scales.mismatchesWithRecordedAmax() == [])
            let agreement = ScaleAgreement(scales.inputScale, reference: try modeloptInputScales(Fixtures.modelopt))
            #expect(agreement.count == 14 && agreement.withinBF16Noise, "\(agreement)")
        }
    }

    @Test func qualityGateCanBeTurnedOffAndSkipped() throws {
        try withTemporaryDirectory("coordctl-bin") { parent throws in
            let calib = ["--calib", Fixtures.directory.appendingPathComponent("tiny-llama-calib.jsonl").path, "--min-tokens", "1",
                         "--device", "cpu"]
            let off = try Coordctl.run(["quantize", "--model", Fixtures.tinyLlama.path, "--output",
                                        parent.appendingPathComponent("OFF").path, "--eval-samples", "2", "--no-quality-gate"]
                                       + calib, in: parent)
            #expect(off.status == 0, "stderr: \(off.stderr)")
            #expect(off.stdout.contains("perplexity") && off.stdout.contains("quality gate: off"), "stdout: \(off.stdout)")
            let skipped = try Coordctl.run(["quantize", "--model", Fixtures.tinyLlama.path, "--output",
                                            parent.appendingPathComponent("SKIP").path, "--eval-samples", "0"] + calib, in: parent)
            #expect(skipped.status == 0, "stderr: \(skipped.stderr)")
            #expect(skipped.stdout.contains("quality report: skipped (--eval-samples 0), so no quality gate was applied"),
                    "stdout: \(skipped.stdout)")
        }
    }

    @Test(arguments: ["0.5", "nan", "abc"])
    func badMaxPerplexityRatioIsAUsageError(value: String) throws {
        try withTemporaryDirectory("coordctl-bin") { parent throws in
            try expectRefusal(["quantize", "--model", Fixtures.tinyLlama.path, "--output", parent.appendingPathComponent("OUT").path,
                               "--max-perplexity-ratio", value],
                              mentions: ["--max-perplexity-ratio"], in: parent)
            #expect(try entries(of: parent, prefix: "OUT") == [])
        }
    }

    @Test func explicitCudaWithoutAGPUFailsAtOnce() throws {
        try withTemporaryDirectory("coordctl-bin") { parent throws in
            try expectRefusal(["quantize", "--model", Fixtures.tinyLlama.path, "--output", parent.appendingPathComponent("OUT").path,
                               "--device", "cuda"],
                              mentions: ["--device cuda"], in: parent)
            #expect(try entries(of: parent, prefix: "OUT") == [])
        }
    }

    @Test func nonLlamaModel() throws {
        try withTemporaryDirectory("coordctl-bin") { parent throws in
            let model = try TinyModelBuilder().write(to: parent.appendingPathComponent("gpt2"),
                                                     editConfig: { $0["model_type"] = "gpt2" })
            try expectRefusal(["quantize", "--model", model.path, "--output", parent.appendingPathComponent("OUT").path,
                               "--scheme", "nvfp4a16"],
                              mentions: ["model_type", "gpt2", "config.json"], in: parent)
        }
    }

    @Test func weightWithNaN() throws {
        try withTemporaryDirectory("coordctl-bin") { parent throws in
            let name = "model.layers.0.mlp.down_proj.weight"
            let model = try TinyModelBuilder().write(to: parent.appendingPathComponent("nan"), editTensors: { tensors in
                tensors[named: name].bytes.replaceSubrange(0..<2, with: [0xC0, 0x7F])
            })
            try expectRefusal(["quantize", "--model", model.path, "--output", parent.appendingPathComponent("OUT").path,
                               "--scheme", "nvfp4a16"],
                              mentions: [name, "NaN"], in: parent)
            #expect(try entries(of: parent, prefix: "OUT") == [])
        }
    }

    @Test func missingConfig() throws {
        try withTemporaryDirectory("coordctl-bin") { parent throws in
            let empty = parent.appendingPathComponent("empty")
            try FileManager.default.createDirectory(at: empty, withIntermediateDirectories: false)
            try expectRefusal(["quantize", "--model", empty.path, "--output", parent.appendingPathComponent("OUT").path,
                               "--scheme", "nvfp4a16"],
                              mentions: ["empty/config.json", "not found"], in: parent)
        }
    }

    @Test func existingOutputWithoutForce() throws {
        try withTemporaryDirectory("coordctl-bin") { parent throws in
            let output = parent.appendingPathComponent("OUT")
            try FileManager.default.createDirectory(at: output, withIntermediateDirectories: false)
            try Data("keep".utf8).write(to: output.appendingPathComponent("keep.txt"))
            try expectRefusal(["quantize", "--model", Fixtures.tinyLlama.path, "--output", output.path, "--scheme", "nvfp4a16"],
                              mentions: [output.path, "--force"], in: parent)
            #expect(try entries(of: output, prefix: "") == ["keep.txt"])

            // --force replaces checkpoints only: a directory that is none stays as it is.
            try expectRefusal(["quantize", "--model", Fixtures.tinyLlama.path, "--output", output.path, "--scheme", "nvfp4a16",
                               "--force"],
                              mentions: [output.path, "does not look like a checkpoint"], in: parent)
            #expect(try entries(of: output, prefix: "") == ["keep.txt"])
            // An old checkpoint (config.json beside safetensors) is replaced.
            try Data("{}".utf8).write(to: output.appendingPathComponent("config.json"))
            try Data("old".utf8).write(to: output.appendingPathComponent("model.safetensors"))
            let forced = try Coordctl.run(["quantize", "--model", Fixtures.tinyLlama.path, "--output", output.path,
                                           "--scheme", "nvfp4a16", "--force"], in: parent)
            #expect(forced.status == 0, "stderr: \(forced.stderr)")
            #expect(!FileManager.default.fileExists(atPath: output.appendingPathComponent("keep.txt").path))
        }
    }

    @Test func unknownSchemeIsAUsageError() throws {
        try withTemporaryDirectory("coordctl-bin") { parent throws in
            try expectRefusal(["quantize", "--model", Fixtures.tinyLlama.path, "--output", parent.appendingPathComponent("OUT").path,
                               "--scheme", "int4"],
                              mentions: ["--scheme", "int4"], in: parent)
        }
    }
}
