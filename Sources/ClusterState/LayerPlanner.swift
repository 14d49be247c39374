/// What the planner needs to know about one worker.
public struct WorkerCapacity: Sendable, Hashable, Codable {
    /// Unique worker name (the name it registered with).
    public var name: String
    /// Accelerator (or host) memory the worker offers for decoder layers, in bytes.
    public var memoryBytes: Int64

    public init(name: String, memoryBytes: Int64) {
        self.name = name
        self.memoryBytes = memoryBytes
    }
}

/// One worker's share of a plan: the contiguous, half-open range of decoder layers it holds.
public struct LayerAssignment: Sendable, Hashable, Codable {
    public var worker: String
    /// Decoder layers `range.lowerBound ..< range.upperBound`.
    public var range: Range<Int>
    /// True for the first worker only: it also runs the token embeddings. The LM head is not needed for calibration.
    public var embeddings: Bool

    public init(worker: String, range: Range<Int>, embeddings: Bool) {
        self.worker = worker
        self.range = range
        self.embeddings = embeddings
    }
}

/// Why a plan could not be made. Each description names the worker, entry or count at fault.
public enum PlanningError: Error, Equatable, Sendable, CustomStringConvertible {
    case noWorkers
    case invalidLayerCount(Int)
    case duplicateWorkerName(String)
    case nonPositiveMemory(worker: String, memoryBytes: Int64)
    /// The planner does not leave workers idle: an idle worker would still sit in the pipeline. Drop some workers.
    case moreWorkersThanLayers(workers: Int, layers: Int)
    case splitCountMismatch(entries: Int, workers: Int)
    case splitEntryNotPositive(index: Int, worker: String, value: Int)
    case splitSumMismatch(sum: Int, layerCount: Int)
    case invalidPlan(String)
    case workerNotInPlan(String)
    case missingCapacity(worker: String)
    case invalidCompletedLayers(completed: Int, layerCount: Int)
    case invalidBytesPerLayer(Int64)
    /// The workers' memory sizes add up to more than 2^64 bytes.
    case memoryTotalTooLarge
    /// No surviving worker can take over a dead worker's layers; `reason` says why.
    case noWorkerCanTakeRange(deadWorker: String, range: Range<Int>, reason: String)

    public var description: String {
        switch self {
        case .noWorkers:
            return "cannot plan: no workers"
        case .invalidLayerCount(let count):
            return "cannot plan: layer count \(count) must be at least 1"
        case .duplicateWorkerName(let name):
            return "cannot plan: worker name '\(name)' appears more than once"
        case .nonPositiveMemory(let worker, let bytes):
            return "cannot plan: worker '\(worker)' reports \(bytes) bytes of memory; it must be positive"
        case .moreWorkersThanLayers(let workers, let layers):
            return "cannot plan: \(workers) workers for \(layers) layers; every worker needs at least one layer"
        case .splitCountMismatch(let entries, let workers):
            return "--split has \(entries) entries but there are \(workers) workers; give one entry per worker"
        case .splitEntryNotPositive(let index, let worker, let value):
            return "--split entry \(index + 1) (worker '\(worker)') is \(value); every entry must be at least 1"
        case .splitSumMismatch(let sum, let layerCount):
            return "--split sums to \(sum) but the model has \(layerCount) layers"
        case .invalidPlan(let why):
            return "invalid plan: \(why)"
        case .workerNotInPlan(let name):
            return "worker '\(name)' holds no range in this plan"
        case .missingCapacity(let worker):
            return "no capacity given for surviving worker '\(worker)'"
        case .invalidCompletedLayers(let completed, let layerCount):
            return "completed layer count \(completed) is outside 0...\(layerCount)"
        case .memoryTotalTooLarge:
            return "cannot plan: the workers' memory sizes add up to more than 2^64 bytes"
        case .invalidBytesPerLayer(let bytes):
            return "bytes per layer \(bytes) must not be negative"
        case .noWorkerCanTakeRange(let dead, let range, let reason):
            return "no worker can take layers \(range.lowerBound)..<\(range.upperBound) of dead worker '\(dead)': \(reason)"
        }
    }
}

/// Splits decoder layers into contiguous ranges, one per worker, in worker order.
///
/// Proportional rule (documented, deterministic): every worker first gets one layer; the remaining
/// `layerCount - workers` layers are shared in proportion to `memoryBytes` by largest remainder, ties going to the
/// earlier worker. For 80 layers over 128 GB + 64 GB this gives 53 / 27. The quotas use integer arithmetic, so no
/// floating-point rounding can make two runs or two platforms disagree.
public enum LayerPlanner {
    /// Plans `layerCount` layers over `workers` (in this order), or as `split` says when it is given.
    public static func plan(layerCount: Int, workers: [WorkerCapacity], split: [Int]? = nil) throws -> [LayerAssignment] {
        guard !workers.isEmpty else { throw PlanningError.noWorkers }
        guard layerCount >= 1 else { throw PlanningError.invalidLayerCount(layerCount) }
        var seen = Set<String>()
        for worker in workers where !seen.insert(worker.name).inserted {
            throw PlanningError.duplicateWorkerName(worker.name)
        }
        let counts: [Int]
        if let split {
            guard split.count == workers.count else {
                throw PlanningError.splitCountMismatch(entries: split.count, workers: workers.count)
            }
            for (index, value) in split.enumerated() where value < 1 {
                throw PlanningError.splitEntryNotPositive(index: index, worker: workers[index].name, value: value)
            }
            // Absurd entries report a mismatch (sum clamped to Int.max) rather than trap on overflow.
            var sum = 0
            for value in split {
                let (next, overflow) = sum.addingReportingOverflow(value)
                sum = overflow ? Int.max : next
                if overflow { break }
            }
            guard sum == layerCount else {
                throw PlanningError.splitSumMismatch(sum: sum, layerCount: layerCount)
            }
            counts = split
        } else {
            for worker in workers where worker.memoryBytes <= 0 {
                throw PlanningError.nonPositiveMemory(worker: worker.name, memoryBytes: worker.memoryBytes)
            }
            guard layerCount >= workers.count else {
                throw PlanningError.moreWorkersThanLayers(workers: workers.count, layers: layerCount)
            }
            guard let proportional = proportionalCounts(total: layerCount, weights: workers.map(\.memoryBytes)) else {
                throw PlanningError.memoryTotalTooLarge
            }
            counts = proportional
        }
        return assignments(names: workers.map(\.name), counts: counts)
    }

    /// Reassigns a dead worker's layers after it is lost.
    ///
    /// Choice: the dead worker's **whole range goes to one neighbour**, which extends its own range, so the plan stays
    /// contiguous and every other worker keeps the layers it has already loaded. The neighbour only has to load the
    /// part of that range that is not yet completed (`layer >= completedLayers`); completed layers are assigned to it
    /// for contiguity but need no weights. A neighbour can take the range when
    /// `(own layers + dead range's uncompleted layers) × bytesPerLayer (+ embeddingBytes if it becomes first)`
    /// fits its `memoryBytes`. If both neighbours fit, the one with more memory to spare afterwards wins; a tie goes to
    /// the earlier (lower-layer) neighbour. When none fits, or no worker survives, this throws
    /// ``PlanningError/noWorkerCanTakeRange(deadWorker:range:reason:)`` and the job should fail with that reason.
    ///
    /// - Parameters:
    ///   - plan: The current plan: contiguous from layer 0, in order.
    ///   - deadWorker: The lost worker's name.
    ///   - completedLayers: Layers `0 ..< completedLayers` are completed (the job's resume point).
    ///   - survivors: Capacities of the plan's other workers (extra entries are ignored).
    ///   - bytesPerLayer: Memory one decoder layer needs on a worker.
    ///   - embeddingBytes: Extra memory the first worker needs for the embeddings.
    public static func replan(plan: [LayerAssignment], deadWorker: String, completedLayers: Int,
                              survivors: [WorkerCapacity], bytesPerLayer: Int64,
                              embeddingBytes: Int64 = 0) throws -> [LayerAssignment] {
        try validate(plan: plan)
        let layerCount = plan.last!.range.upperBound
        guard (0...layerCount).contains(completedLayers) else {
            throw PlanningError.invalidCompletedLayers(completed: completedLayers, layerCount: layerCount)
        }
        guard bytesPerLayer >= 0, embeddingBytes >= 0 else {
            throw PlanningError.invalidBytesPerLayer(min(bytesPerLayer, embeddingBytes))
        }
        guard let deadIndex = plan.firstIndex(where: { $0.worker == deadWorker }) else {
            throw PlanningError.workerNotInPlan(deadWorker)
        }
        let deadRange = plan[deadIndex].range
        var memory: [String: Int64] = [:]
        for capacity in survivors where capacity.name != deadWorker { memory[capacity.name] = capacity.memoryBytes }
        for entry in plan where entry.worker != deadWorker && memory[entry.worker] == nil {
            throw PlanningError.missingCapacity(worker: entry.worker)
        }
        guard plan.count > 1 else {
            throw PlanningError.noWorkerCanTakeRange(deadWorker: deadWorker, range: deadRange,
                                                     reason: "no other worker survives")
        }
        let uncompletedDeadLayers = Int64(max(0, deadRange.upperBound - max(deadRange.lowerBound, completedLayers)))

        // Candidates: the previous neighbour, then the next one.
        var refusals: [String] = []
        var best: (index: Int, spare: Int64)?
        for neighbourIndex in [deadIndex - 1, deadIndex + 1] where plan.indices.contains(neighbourIndex) {
            let neighbour = plan[neighbourIndex]
            let becomesFirst = neighbour.embeddings || deadIndex == 0
            let layers = Int64(neighbour.range.count) + uncompletedDeadLayers
            // Overflow means "more than any worker has".
            let (layerBytes, overflow1) = layers.multipliedReportingOverflow(by: bytesPerLayer)
            let (needed, overflow2) = layerBytes.addingReportingOverflow(becomesFirst ? embeddingBytes : 0)
            let available = memory[neighbour.worker]!
            if !overflow1, !overflow2, needed <= available {
                let spare = available - needed
                if best == nil || spare > best!.spare { best = (neighbourIndex, spare) }
            } else {
                let neededText = overflow1 || overflow2 ? "more than 2^63" : "\(needed)"
                refusals.append("'\(neighbour.worker)' would need \(neededText) bytes for \(layers) layers"
                                + (becomesFirst ? " and the embeddings" : "") + " but has \(available)")
            }
        }
        guard let chosen = best else {
            throw PlanningError.noWorkerCanTakeRange(deadWorker: deadWorker, range: deadRange,
                                                     reason: refusals.joined(separator: "; "))
        }
        var result: [LayerAssignment] = []
        for (index, entry) in plan.enumerated() where index != deadIndex {
            var entry = entry
            if index == chosen.index {
                entry.range = min(entry.range.lowerBound, deadRange.lowerBound) ..< max(entry.range.upperBound,
                                                                                        deadRange.upperBound)
            }
            result.append(entry)
        }
        for index in result.indices { result[index].embeddings = index == 0 }
        return result
    }

    /// Checks that a plan is non-empty, starts at layer 0, is contiguous with non-empty ranges, names each worker
    /// once and marks only the first entry with the embeddings.
    public static func validate(plan: [LayerAssignment]) throws {
        guard let first = plan.first else { throw PlanningError.invalidPlan("it has no entries") }
        guard first.range.lowerBound == 0 else {
            throw PlanningError.invalidPlan("it starts at layer \(first.range.lowerBound), not 0")
        }
        var names = Set<String>()
        var next = 0
        for (index, entry) in plan.enumerated() {
            guard names.insert(entry.worker).inserted else {
                throw PlanningError.invalidPlan("worker '\(entry.worker)' appears more than once")
            }
            guard entry.range.lowerBound == next else {
                throw PlanningError.invalidPlan("entry \(index) ('\(entry.worker)') starts at layer "
                                                + "\(entry.range.lowerBound), expected \(next)")
            }
            guard !entry.range.isEmpty else {
                throw PlanningError.invalidPlan("entry \(index) ('\(entry.worker)') has no layers")
            }
            guard entry.embeddings == (index == 0) else {
                throw PlanningError.invalidPlan("entry \(index) ('\(entry.worker)') has embeddings=\(entry.embeddings); "
                                                + "only the first entry runs the embeddings")
            }
            next = entry.range.upperBound
        }
    }

    /// One layer each, then the rest by largest remainder over `weights` (all positive, `total >= weights.count`).
    /// Integer arithmetic (full-width products), so every platform rounds alike. Nil when the weights' sum overflows.
    static func proportionalCounts(total: Int, weights: [Int64]) -> [Int]? {
        var weightSum: UInt64 = 0
        for weight in weights {
            let (next, overflow) = weightSum.addingReportingOverflow(UInt64(weight))
            if overflow { return nil }
            weightSum = next
        }
        let rest = UInt64(total - weights.count)
        var counts: [Int] = []
        var remainders: [UInt64] = []
        for weight in weights {
            // rest × weight / weightSum; the quotient is at most `rest`, so it fits.
            let product = rest.multipliedFullWidth(by: UInt64(weight))
            let (quotient, remainder) = weightSum.dividingFullWidth(product)
            counts.append(1 + Int(quotient))
            remainders.append(remainder)
        }
        let leftover = total - counts.reduce(0, +)
        // Largest remainder first; ties go to the earlier worker.
        let order = remainders.indices.sorted { remainders[$0] != remainders[$1] ? remainders[$0] > remainders[$1] : $0 < $1 }
        for index in order.prefix(leftover) { counts[index] += 1 }
        return counts
    }

    static func assignments(names: [String], counts: [Int]) -> [LayerAssignment] {
        var start = 0
        return zip(names, counts).enumerated().map { index, pair in
            defer { start += pair.1 }
            return LayerAssignment(worker: pair.0, range: start ..< start + pair.1, embeddings: index == 0)
        }
    }
}
