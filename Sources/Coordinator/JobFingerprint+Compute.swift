import ClusterProtocol
import Foundation
import JobModel
import SafeTensors

extension JobFingerprint {
    /// The fingerprint of `spec` as its inputs are now. The calibration part comes from `plan` (nil for a job that
    /// calibrates nothing). Reads each weight file's header, not its tensors.
    static func compute(spec: JobSpec, plan: CalibrationPlan?) throws -> JobFingerprint {
        let directory = spec.modelDirectory
        let model = try SafeTensorsModel(directory: spec.modelPath)
        var weightFiles: [WeightFile] = []
        for file in model.files {
            let url = URL(fileURLWithPath: file.path)
            let attributes = try FileManager.default.attributesOfItem(atPath: file.path)
            let size = (attributes[.size] as? NSNumber)?.int64Value ?? Int64(file.fileSize)
            let modified = (attributes[.modificationDate] as? Date)?.timeIntervalSince1970 ?? 0
            weightFiles.append(WeightFile(name: url.lastPathComponent, size: size, modified: modified,
                                          headerSHA256: try headerSHA256(of: url, headerLength: file.headerLength)))
        }
        var modelFiles: [String: String] = [:]
        for name in ["config.json", "tokenizer.json", "tokenizer_config.json", SafeTensorsModel.indexFileName] {
            let url = directory.appendingPathComponent(name)
            guard FileManager.default.fileExists(atPath: url.path) else { continue }
            modelFiles[name] = SHA256Hasher.hexDigest(of: try Data(contentsOf: url))
        }
        let calibration = plan.flatMap { plan -> Calibration? in
            guard !plan.chunks.isEmpty else { return nil }
            var chunking = SHA256Hasher()
            for chunk in plan.chunks {
                chunking.update(Array("\(chunk.index):\(chunk.tokenCounts.map(String.init).joined(separator: ","));".utf8))
            }
            return Calibration(samples: plan.sampleCount, tokens: plan.tokenCount, chunkTokens: plan.chunkTokens,
                               chunks: plan.chunks.count, seed: spec.calibration.seed, tokenIDsSHA256: plan.contentHash,
                               chunkingSHA256: SHA256Hasher.hex(chunking.finalize()))
        }
        var options = spec
        // Not options: where the output goes and whether it may replace one do not change the result.
        options.outputPath = ""
        options.force = false
        let optionsSHA256 = SHA256Hasher.hexDigest(of: try sortedJSON(options))
        var fingerprint = JobFingerprint(weightFiles: weightFiles, modelFiles: modelFiles, calibration: calibration,
                                         optionsSHA256: optionsSHA256, toolVersion: NVFP4ClusterVersion.current, digest: "")
        fingerprint.digest = SHA256Hasher.hexDigest(of: try sortedJSON(fingerprint))
        return fingerprint
    }

    private static func headerSHA256(of url: URL, headerLength: Int) throws -> String {
        let handle = try FileHandle(forReadingFrom: url)
        defer { try? handle.close() }
        let header = try handle.read(upToCount: 8 + headerLength) ?? Data()
        return SHA256Hasher.hexDigest(of: header)
    }

    private static func sortedJSON(_ value: some Encodable) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return try encoder.encode(value)
    }
}
