import Foundation

/// What a job's result depends on, recorded when it is submitted: the weight files, the model's JSON files, the
/// calibration token ids and their chunking, the options and the tool's version. coordd checks it again at every
/// resume, and workers check its digest before they reuse kept hidden states, so a job never mixes statistics of
/// old inputs with new ones.
public struct JobFingerprint: Codable, Sendable, Equatable {
    public struct WeightFile: Codable, Sendable, Equatable {
        /// File name inside the model directory.
        public var name: String
        public var size: Int64
        /// Modification time, seconds since 1970.
        public var modified: Double
        /// SHA-256 of the 8-byte length and the JSON header: names, dtypes, shapes and offsets of every tensor.
        public var headerSHA256: String

        public init(name: String, size: Int64, modified: Double, headerSHA256: String) {
            self.name = name
            self.size = size
            self.modified = modified
            self.headerSHA256 = headerSHA256
        }
    }

    public struct Calibration: Codable, Sendable, Equatable {
        public var samples: Int
        public var tokens: Int
        public var chunkTokens: Int
        public var chunks: Int
        public var seed: UInt64?
        /// SHA-256 of every selected sample's token ids, in order.
        public var tokenIDsSHA256: String
        /// SHA-256 of the chunking: each chunk's per-sample token counts.
        public var chunkingSHA256: String

        public init(samples: Int, tokens: Int, chunkTokens: Int, chunks: Int, seed: UInt64?, tokenIDsSHA256: String,
                    chunkingSHA256: String) {
            self.samples = samples
            self.tokens = tokens
            self.chunkTokens = chunkTokens
            self.chunks = chunks
            self.seed = seed
            self.tokenIDsSHA256 = tokenIDsSHA256
            self.chunkingSHA256 = chunkingSHA256
        }
    }

    public var weightFiles: [WeightFile]
    /// SHA-256 of each JSON file the job reads from the model directory (config.json, tokenizer.json,
    /// tokenizer_config.json, the safetensors index), by name; a file that is absent is absent here.
    public var modelFiles: [String: String]
    public var calibration: Calibration?
    /// SHA-256 of the job's options (scheme, layout, calibration and evaluation settings) as JSON with sorted keys.
    public var optionsSHA256: String
    public var toolVersion: String
    /// SHA-256 of all of the above (JSON with sorted keys): what `coordctl status` shows and workers compare.
    public var digest: String

    public init(weightFiles: [WeightFile], modelFiles: [String: String], calibration: Calibration?, optionsSHA256: String,
                toolVersion: String, digest: String) {
        self.digest = digest
        self.weightFiles = weightFiles
        self.modelFiles = modelFiles
        self.calibration = calibration
        self.optionsSHA256 = optionsSHA256
        self.toolVersion = toolVersion
    }

    /// What differs from `recorded`, one phrase each, naming the file or field; empty when nothing does.
    public func changes(since recorded: JobFingerprint) -> [String] {
        var changes: [String] = []
        let before = Dictionary(recorded.weightFiles.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        let after = Dictionary(weightFiles.map { ($0.name, $0) }, uniquingKeysWith: { first, _ in first })
        for name in Set(before.keys).union(after.keys).sorted() {
            switch (before[name], after[name]) {
            case (nil, _?): changes.append("weight file \(name) appeared")
            case (_?, nil): changes.append("weight file \(name) is gone")
            case (let old?, let new?):
                if old.size != new.size { changes.append("weight file \(name) changed size (\(old.size) → \(new.size) bytes)") }
                else if old.headerSHA256 != new.headerSHA256 { changes.append("weight file \(name) has another tensor header") }
                else if old.modified != new.modified { changes.append("weight file \(name) was modified") }
            default: break
            }
        }
        for name in Set(recorded.modelFiles.keys).union(modelFiles.keys).sorted()
        where recorded.modelFiles[name] != modelFiles[name] {
            changes.append(modelFiles[name] == nil ? "\(name) is gone"
                : recorded.modelFiles[name] == nil ? "\(name) appeared" : "\(name) changed")
        }
        switch (recorded.calibration, calibration) {
        case (let old?, let new?):
            if old.tokenIDsSHA256 != new.tokenIDsSHA256 || old.samples != new.samples || old.tokens != new.tokens {
                changes.append("the calibration samples changed (\(old.samples) samples, \(old.tokens) tokens, sha256 "
                               + "\(old.tokenIDsSHA256.prefix(12)) → \(new.samples) samples, \(new.tokens) tokens, sha256 \(new.tokenIDsSHA256.prefix(12)))")
            } else if old.chunkingSHA256 != new.chunkingSHA256 || old.chunkTokens != new.chunkTokens {
                changes.append("the calibration chunking changed (\(old.chunks) → \(new.chunks) chunks)")
            }
        case (nil, nil): break
        default: changes.append("the calibration set changed")
        }
        if optionsSHA256 != recorded.optionsSHA256 { changes.append("the job's options changed") }
        if toolVersion != recorded.toolVersion {
            changes.append("the tool's version changed (\(recorded.toolVersion) → \(toolVersion))")
        }
        return changes
    }
}
