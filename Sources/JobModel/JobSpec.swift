import Foundation

/// Everything a worker and the coordinator need to run one job, as it travels between them. Paths are the same on
/// every machine (the model directory is shared or copied to the same place); ``ModelCheck`` proves it is the same
/// model before a worker starts. Plain data: the engine, the coordinator and the client extend it with what they
/// do with a job.
public struct JobSpec: Codable, Sendable, Equatable {
    /// How calibration samples are chosen and run (W4A4).
    public struct Calibration: Codable, Sendable, Equatable {
        /// A .jsonl, .txt/.md file or directory; nil for the bundled default set.
        public var dataPath: String?
        public var samples: Int
        public var seed: UInt64?
        public var minTokens: Int
        public var maxTokens: Int
        public var chunkTokens: Int
        public var activationPrecision: ActivationPrecision
        /// Bytes of f32 hidden states kept in memory before spilling to `scratchDirectory`.
        public var activationMemoryBudget: Int
        public var scratchDirectory: String?
        /// `cpu`, `auto`, `cuda` or `cuda:N`.
        public var device: String

        public init(dataPath: String?, samples: Int, seed: UInt64?, minTokens: Int, maxTokens: Int, chunkTokens: Int,
                    activationPrecision: ActivationPrecision, activationMemoryBudget: Int, scratchDirectory: String?,
                    device: String) {
            self.dataPath = dataPath
            self.samples = samples
            self.seed = seed
            self.minTokens = minTokens
            self.maxTokens = maxTokens
            self.chunkTokens = chunkTokens
            self.activationPrecision = activationPrecision
            self.activationMemoryBudget = activationMemoryBudget
            self.scratchDirectory = scratchDirectory
            self.device = device
        }
    }

    /// Names the `OUTPUT.partial-<id>` directory and the workers' scratch directories.
    public var jobID: String
    public var modelPath: String
    public var outputPath: String
    public var scheme: QuantizationScheme
    public var layout: CheckpointLayout
    public var maxShardSize: Int
    public var omitScaleDTypeKeys: Bool
    public var force: Bool
    public var calibration: Calibration
    public var evaluationSamples: Int
    public var evaluationMaxTokens: Int
    /// The job fails when the quantized perplexity exceeds this multiple of the original's (or is not finite);
    /// nil turns the gate off. No gate without evaluation samples.
    public var maxPerplexityRatio: Double?
    /// SHA-256 (lower-case hex) of `<modelPath>/config.json` when the job was made.
    public var configSHA256: String
    /// `--exclude` patterns as given, nil when there are none: optional so that a job without them encodes (and
    /// fingerprints) exactly as before the option existed, and older records decode as having none.
    private var exclude: [String]?

    /// fnmatch-style patterns on Linear module names (`--exclude`, repeatable): the Linears they match stay in their
    /// source dtype, unquantized, and are listed in the checkpoint's ignore / exclude_modules. Empty for none.
    public var excludePatterns: [String] {
        get { exclude ?? [] }
        set { exclude = newValue.isEmpty ? nil : newValue }
    }

    /// GPTQ's parameters when the job rounds with GPTQ; nil for round-to-nearest, so that an RTN job encodes (and
    /// fingerprints) exactly as before the option existed.
    public var gptq: GPTQSettings?

    /// `--scale-search mse`; nil for round-to-nearest's block scales (so such a job encodes as before the option).
    private var scaleSearchMode: ScaleSearch?

    /// How the job chooses its block scales.
    public var scaleSearch: ScaleSearch {
        get { scaleSearchMode ?? .off }
        set { scaleSearchMode = newValue == .off ? nil : newValue }
    }

    /// How the job rounds its weights.
    public var algorithm: QuantizationAlgorithm { gptq == nil ? .rtn : .gptq }

    /// Most tokens of one held-out sample in the quality report.
    public static let defaultEvaluationMaxTokens = 1200

    public init(jobID: String, modelPath: String, outputPath: String, scheme: QuantizationScheme, layout: CheckpointLayout,
                maxShardSize: Int, omitScaleDTypeKeys: Bool, force: Bool, calibration: Calibration,
                evaluationSamples: Int, evaluationMaxTokens: Int, maxPerplexityRatio: Double?, configSHA256: String,
                excludePatterns: [String] = [], gptq: GPTQSettings? = nil, scaleSearch: ScaleSearch = .off) {
        self.jobID = jobID
        self.modelPath = modelPath
        self.outputPath = outputPath
        self.scheme = scheme
        self.layout = layout
        self.maxShardSize = maxShardSize
        self.omitScaleDTypeKeys = omitScaleDTypeKeys
        self.force = force
        self.calibration = calibration
        self.evaluationSamples = evaluationSamples
        self.evaluationMaxTokens = evaluationMaxTokens
        self.maxPerplexityRatio = maxPerplexityRatio
        self.configSHA256 = configSHA256
        self.excludePatterns = excludePatterns
        self.gptq = gptq
        self.scaleSearch = scaleSearch
    }

    enum CodingKeys: String, CodingKey {
        case jobID, modelPath, outputPath, scheme, layout, maxShardSize, omitScaleDTypeKeys, force, calibration
        case evaluationSamples, evaluationMaxTokens, maxPerplexityRatio, configSHA256, exclude, gptq
        case scaleSearchMode = "scaleSearch"
    }

    public var modelDirectory: URL { URL(fileURLWithPath: modelPath) }
    public var outputDirectory: URL { URL(fileURLWithPath: outputPath) }
    /// Where workers keep spilled and boundary hidden states.
    public var scratchDirectory: URL {
        calibration.scratchDirectory.map { URL(fileURLWithPath: $0) } ?? FileManager.default.temporaryDirectory
    }
}
