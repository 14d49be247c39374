/// One chunk of calibration samples: the unit that travels through the layers as one `SequenceBatch`.
public struct CalibrationChunk: Codable, Sendable, Equatable {
    /// Position of the chunk in its plan, 0-based.
    public var index: Int
    /// Indices of its samples in the calibration set.
    public var sampleRange: Range<Int>
    /// Tokens of each sample, in order.
    public var tokenCounts: [Int]
    /// Every sample's token ids, concatenated.
    public var tokenIDs: [Int32]
    /// Where each sample came from (`path:line`), for error messages.
    public var sources: [String]

    public init(index: Int, sampleRange: Range<Int>, tokenCounts: [Int], tokenIDs: [Int32], sources: [String]) {
        self.index = index
        self.sampleRange = sampleRange
        self.tokenCounts = tokenCounts
        self.tokenIDs = tokenIDs
        self.sources = sources
    }

    /// Tokens in the chunk, from the per-sample counts (the ids may be left out, see `withoutTokenIDs()`).
    public var tokenCount: Int { tokenCounts.reduce(0, +) }
}

/// The selected calibration samples grouped into chunks, plus what `calibration.json` records about them. Built
/// once (by the coordinator, or the one-machine job) and handed to every schedule, so all see the same chunks.
public struct CalibrationPlan: Codable, Sendable, Equatable {
    /// The most tokens batched into one forward.
    public var chunkTokens: Int
    public var chunks: [CalibrationChunk]
    /// Where the samples came from (a path or the built-in set's name).
    public var source: String
    public var sampleCount: Int
    public var tokenCount: Int
    /// ``CalibrationSet/contentHash`` of the selected samples.
    public var contentHash: String

    public init(chunkTokens: Int, chunks: [CalibrationChunk], source: String, sampleCount: Int, tokenCount: Int,
                contentHash: String) {
        self.chunkTokens = chunkTokens
        self.chunks = chunks
        self.source = source
        self.sampleCount = sampleCount
        self.tokenCount = tokenCount
        self.contentHash = contentHash
    }

    /// The plan of a job that calibrates nothing (weight-only): no samples, no chunks.
    public static func uncalibrated(chunkTokens: Int) -> CalibrationPlan {
        CalibrationPlan(chunkTokens: chunkTokens, chunks: [], source: "none (weight-only)", sampleCount: 0, tokenCount: 0,
                        contentHash: "")
    }
}

extension CalibrationPlan {
    /// The leading calibration samples, in plan order, cut at `tokenLimit` tokens in all (the last one shortened: a
    /// causal model's forward over a prefix computes what the whole sample's forward computes for those tokens).
    /// Empty when the plan has no samples, or carries no token ids (`withoutTokenIDs()`).
    public func leadingSamples(tokenLimit: Int) -> [[Int]] {
        var samples: [[Int]] = []
        var taken = 0
        for chunk in chunks {
            guard chunk.tokenIDs.count == chunk.tokenCount else { return [] }
            var offset = 0
            for count in chunk.tokenCounts {
                guard taken < tokenLimit else { return samples }
                let length = min(count, tokenLimit - taken)
                if length > 0 { samples.append(chunk.tokenIDs[offset ..< offset + length].map(Int.init)) }
                taken += length
                offset += count
            }
        }
        return samples
    }
}
