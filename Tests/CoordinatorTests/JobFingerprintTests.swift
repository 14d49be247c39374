import Foundation
import Testing
@testable import Coordinator
import ClusterProtocol
import JobModel

/// The fingerprint recorded at submit and compared at resume: each kind of change is named.
@Suite struct JobFingerprintTests {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")

    func withModelCopy(_ body: (URL, JobSpec) throws -> Void) throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("fingerprint-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: directory) }
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let model = directory.appendingPathComponent("model")
        try FileManager.default.copyItem(at: Self.fixtures.appendingPathComponent("tiny-llama"), to: model)
        let spec = JobSpec(jobID: "fp", modelPath: model.path, outputPath: directory.appendingPathComponent("out").path,
                           scheme: .nvfp4, layout: .compressedTensors, maxShardSize: 1 << 30, omitScaleDTypeKeys: false,
                           force: false,
                           calibration: .init(dataPath: nil, samples: 8, seed: nil, minTokens: 1, maxTokens: 64,
                                              chunkTokens: 64, activationPrecision: .bfloat16, activationMemoryBudget: 1 << 30,
                                              scratchDirectory: nil, device: "cpu"),
                           evaluationSamples: 0, evaluationMaxTokens: 64, maxPerplexityRatio: nil, configSHA256: "")
        try body(model, spec)
    }

    @Test func unchangedInputsGiveTheSameDigestAndNoChanges() throws {
        try withModelCopy { _, spec in
            let first = try JobFingerprint.compute(spec: spec, plan: nil)
            let again = try JobFingerprint.compute(spec: spec, plan: nil)
            #expect(first.digest.count == 64 && first.digest == again.digest)
            #expect(again.changes(since: first).isEmpty)
            #expect(first.weightFiles.map(\.name) == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"])
            #expect(Set(first.modelFiles.keys) == ["config.json", "tokenizer.json", "tokenizer_config.json",
                                                   "model.safetensors.index.json"])
        }
    }

    @Test func eachChangeIsNamed() throws {
        try withModelCopy { model, spec in
            let recorded = try JobFingerprint.compute(spec: spec, plan: nil)
            let shard = model.appendingPathComponent("model-00001-of-00002.safetensors")
            try FileManager.default.setAttributes([.modificationDate: Date(timeIntervalSince1970: 1_000_000)],
                                                  ofItemAtPath: shard.path)
            var config = try String(contentsOf: model.appendingPathComponent("config.json"), encoding: .utf8)
            config = config.replacingOccurrences(of: "\"rms_norm_eps\": 1e-05", with: "\"rms_norm_eps\": 1e-06")
            try config.write(to: model.appendingPathComponent("config.json"), atomically: true, encoding: .utf8)
            try FileManager.default.removeItem(at: model.appendingPathComponent("tokenizer_config.json"))
            var options = spec
            options.calibration.samples = 4
            let now = try JobFingerprint.compute(spec: options, plan: nil)
            #expect(now.digest != recorded.digest)
            #expect(now.changes(since: recorded) == [
                "weight file model-00001-of-00002.safetensors was modified",
                "config.json changed",
                "tokenizer_config.json is gone",
                "the job's options changed",
            ])
            // Where the output goes is not an input.
            var moved = spec
            moved.outputPath += "-elsewhere"
            moved.force = true
            #expect(try JobFingerprint.compute(spec: moved, plan: nil).optionsSHA256 == recorded.optionsSHA256)
        }
    }

    /// `--exclude` changes the checkpoint, so it is part of the options; a job without it fingerprints as before the
    /// option existed, and an older record without the key decodes as having no patterns.
    @Test func excludePatternsArePartOfTheOptions() throws {
        try withModelCopy { _, spec in
            let plain = try JobFingerprint.compute(spec: spec, plan: nil)
            var excluding = spec
            excluding.excludePatterns = ["*.down_proj"]
            let excluded = try JobFingerprint.compute(spec: excluding, plan: nil)
            #expect(excluded.optionsSHA256 != plain.optionsSHA256)
            #expect(excluded.changes(since: plain) == ["the job's options changed"])
            var other = spec
            other.excludePatterns = ["model.layers.0.*"]
            #expect(try JobFingerprint.compute(spec: other, plan: nil).optionsSHA256 != excluded.optionsSHA256)

            let encoded = String(decoding: try JSONEncoder().encode(spec), as: UTF8.self)
            #expect(!encoded.contains("exclude"), "\(encoded)")
            let decoded = try JSONDecoder().decode(JobSpec.self, from: Data(encoded.utf8))
            #expect(decoded.excludePatterns == [] && decoded == spec)
            let roundTrip = try JSONDecoder().decode(JobSpec.self, from: try JSONEncoder().encode(excluding))
            #expect(roundTrip.excludePatterns == ["*.down_proj"])
        }
    }
}
