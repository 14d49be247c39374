import SafeTensors
/// What the data loader needs from a tokenizer: text to token ids, with BOS already added the way the model's
/// post-processor adds it. The loader checks every id against the model's vocabulary size it is given;
/// `vocabSize` here is the tokenizer's own, for callers that want to compare the two.
public protocol CalibrationTokenizer: Sendable {
    func encode(_ text: String) -> [Int]
    var vocabSize: Int { get }
}

/// How records become samples; see `CalibrationData` for the exact rules.
public struct CalibrationOptions: Sendable, Equatable {
    /// Stop after this many records are used.
    public var samples: Int
    /// A record with fewer tokens is skipped.
    public var minTokens: Int
    /// A longer record is truncated to its first `maxTokens` tokens.
    public var maxTokens: Int
    /// When set, records are shuffled with `SplitMix64(seed:)` before selection; nil keeps file order.
    public var seed: UInt64?

    public init(samples: Int = 256, minTokens: Int = 150, maxTokens: Int = 1200, seed: UInt64? = nil) {
        self.samples = samples
        self.minTokens = minTokens
        self.maxTokens = maxTokens
        self.seed = seed
    }
}

/// One calibration sequence: run through the model on its own, positions 0..<tokens.count.
public struct CalibrationSample: Sendable, Equatable {
    /// Where the record came from: `path:line` (the JSONL line, or the first line of a paragraph).
    public var source: String
    public var tokens: [Int32]

    public init(source: String, tokens: [Int32]) {
        self.source = source
        self.tokens = tokens
    }
}

/// The selected samples and the bookkeeping that says how they were chosen.
public struct CalibrationSet: Sendable, Equatable {
    public var samples: [CalibrationSample]
    /// Records parsed from the input (every file, every record).
    public var recordsRead: Int
    /// Records looked at before `samples` was reached (all of them when it was not).
    public var recordsExamined: Int
    /// Examined records shorter than `minTokens`.
    public var recordsSkipped: Int
    /// Records that became samples (`samples.count`).
    public var recordsUsed: Int
    /// Used records cut to `maxTokens`.
    public var recordsTruncated: Int
    /// Tokens over all samples, after truncation.
    public var tokenTotal: Int
    /// SHA-256 (lower-case hex) of every sample's token ids, samples in order, each id as a little-endian Int32,
    /// with nothing between samples.
    public var contentHash: String

    /// A set built from samples directly (no file): every sample counts as read and used.
    public init(samples: [CalibrationSample]) {
        self.init(samples: samples, recordsRead: samples.count, recordsExamined: samples.count, recordsSkipped: 0,
                  recordsTruncated: 0)
    }

    init(samples: [CalibrationSample], recordsRead: Int, recordsExamined: Int, recordsSkipped: Int,
         recordsTruncated: Int) {
        self.samples = samples
        self.recordsRead = recordsRead
        self.recordsExamined = recordsExamined
        self.recordsSkipped = recordsSkipped
        self.recordsUsed = samples.count
        self.recordsTruncated = recordsTruncated
        self.tokenTotal = samples.reduce(0) { $0 + $1.tokens.count }
        self.contentHash = Self.hash(samples)
    }

    /// One line for logs: records read, examined, skipped, used, truncated, token total.
    public var summary: String {
        "calibration set: \(recordsRead) records read, \(recordsExamined) examined, \(recordsSkipped) skipped "
            + "(too short), \(recordsUsed) used (\(recordsTruncated) truncated), \(tokenTotal) tokens, "
            + "sha256 \(contentHash.prefix(16))"
    }

    static func hash(_ samples: [CalibrationSample]) -> String {
        var hasher = SHA256Hasher()
        var buffer: [UInt8] = []
        for sample in samples {
            buffer.removeAll(keepingCapacity: true)
            buffer.reserveCapacity(sample.tokens.count * 4)
            for token in sample.tokens {
                let bits = UInt32(bitPattern: token)
                buffer.append(UInt8(truncatingIfNeeded: bits))
                buffer.append(UInt8(truncatingIfNeeded: bits >> 8))
                buffer.append(UInt8(truncatingIfNeeded: bits >> 16))
                buffer.append(UInt8(truncatingIfNeeded: bits >> 24))
            }
            hasher.update(buffer)
        }
        return SHA256Hasher.hex(hasher.finalize())
    }
}
