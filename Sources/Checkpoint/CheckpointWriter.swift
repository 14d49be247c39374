import Foundation
import JobModel
import LlamaModel
import SafeTensors

/// Tensors that must land in one shard (a Linear's tensors stay together, spec §9).
public struct TensorGroup: Sendable, Equatable {
    public var tensors: [PlannedTensor]
    public init(_ tensors: [PlannedTensor]) { self.tensors = tensors }
    public var byteCount: Int { tensors.reduce(0) { $0 + $1.byteCount } }
}

/// Which tensors go to which file.
public struct ShardPlan: Sendable, Equatable {
    public struct Shard: Sendable, Equatable {
        public let fileName: String
        public let tensors: [PlannedTensor]
        public var byteCount: Int { tensors.reduce(0) { $0 + $1.byteCount } }
    }

    public let shards: [Shard]
    public var tensorCount: Int { shards.reduce(0) { $0 + $1.tensors.count } }
    public var totalSize: Int { shards.reduce(0) { $0 + $1.byteCount } }
    public var needsIndex: Bool { shards.count > 1 }

    /// Tensor name → file name, for `model.safetensors.index.json`.
    public var weightMap: [String: String] {
        var map: [String: String] = [:]
        for shard in shards { for tensor in shard.tensors { map[tensor.name] = shard.fileName } }
        return map
    }
}

public enum ShardPlanner {
    /// Greedy packing in write order: a new shard starts when the next group would push the current one past
    /// `maxShardSize`. A group larger than the limit gets a shard of its own.
    public static func plan(groups: [TensorGroup], maxShardSize: Int) -> ShardPlan {
        var shards: [[PlannedTensor]] = []
        var current: [PlannedTensor] = []
        var currentSize = 0
        for group in groups where !group.tensors.isEmpty {
            if !current.isEmpty && currentSize + group.byteCount > maxShardSize {
                shards.append(current)
                current = []
                currentSize = 0
            }
            current += group.tensors
            currentSize += group.byteCount
        }
        if !current.isEmpty { shards.append(current) }
        let count = shards.count
        return ShardPlan(shards: shards.enumerated().map { index, tensors in
            ShardPlan.Shard(fileName: shardFileName(index: index, count: count), tensors: tensors)
        })
    }

    /// `model.safetensors` alone, or `model-00001-of-00003.safetensors` (1-based, five digits each).
    public static func shardFileName(index: Int, count: Int) -> String {
        if count == 1 { return SafeTensorsModel.singleFileName }
        return String(format: "model-%05d-of-%05d.safetensors", index + 1, count)
    }

    /// Parses sizes such as `5GB`, `500MB`, `2GiB` or a byte count (``ByteCount/parse(_:)``).
    public static func parseSize(_ text: String) throws -> Int {
        guard let bytes = ByteCount.parse(text) else {
            throw CheckpointError("--max-shard-size", "'\(text)' is not a size such as 5GB, 500MB or 2GiB (at least 1 byte, below 2^62)")
        }
        return bytes
    }
}

/// The tensors of an NVFP4 checkpoint of `config`, grouped and in write order: embeddings, then each layer's
/// norms and Linears, then the final norm and (untied only) `lm_head`.
public func checkpointTensorGroups(
    config: LlamaConfig, layout: LinearTensorLayout, sourceDTypes: [String: SafeTensorsDType]
) -> [TensorGroup] {
    func verbatim(_ spec: TensorSpec) -> TensorGroup {
        TensorGroup([PlannedTensor(name: spec.name, dtype: sourceDTypes[spec.name] ?? .bf16, shape: spec.shape)])
    }
    let nonQuantized = Dictionary(uniqueKeysWithValues: config.nonQuantizedTensors.map { ($0.name, $0) })
    var groups: [TensorGroup] = []
    if let embed = nonQuantized[LlamaConfig.embedTokensName] { groups.append(verbatim(embed)) }
    for layer in 0..<config.numHiddenLayers {
        groups += config.layerNorms(layer: layer).map(verbatim)
        groups += config.linears(layer: layer).map { TensorGroup(layout.plannedTensors(for: $0)) }
    }
    if let norm = nonQuantized[LlamaConfig.finalNormName] { groups.append(verbatim(norm)) }
    if let head = nonQuantized[LlamaConfig.lmHeadName] { groups.append(verbatim(head)) }
    return groups
}

/// Streams planned tensors into their shards, in plan order, never holding more than one tensor in memory.
public final class CheckpointWriter {
    public let directory: URL
    public let plan: ShardPlan
    private var shardIndex = -1
    private var tensorIndex = 0
    private var writer: SafeTensorsWriter?
    public private(set) var bytesWritten = 0

    public init(directory: URL, plan: ShardPlan) {
        self.directory = directory
        self.plan = plan
    }

    /// The name of the tensor the writer expects next, or nil when all are written.
    public var nextTensorName: String? {
        if shardIndex >= 0 && shardIndex < plan.shards.count && tensorIndex < plan.shards[shardIndex].tensors.count {
            return plan.shards[shardIndex].tensors[tensorIndex].name
        }
        let next = shardIndex + 1
        return next < plan.shards.count ? plan.shards[next].tensors.first?.name : nil
    }

    public func write(_ name: String, bytes: UnsafeRawBufferPointer) throws {
        if shardIndex < 0 || tensorIndex >= plan.shards[shardIndex].tensors.count {
            try writer?.finish()
            writer = nil
            shardIndex += 1
            tensorIndex = 0
            guard shardIndex < plan.shards.count else {
                throw CheckpointError(name, "written after every planned tensor was already written")
            }
            let shard = plan.shards[shardIndex]
            writer = try SafeTensorsWriter(path: directory.appendingPathComponent(shard.fileName).path,
                                           tensors: shard.tensors)
        }
        let expected = plan.shards[shardIndex].tensors[tensorIndex].name
        guard expected == name else {
            throw CheckpointError(name, "written out of order; the plan expects '\(expected)' next")
        }
        try writer!.write(name, bytes: bytes)
        tensorIndex += 1
        bytesWritten += bytes.count
    }

    public func write(_ name: String, data: Data) throws {
        try data.withUnsafeBytes { try write(name, bytes: $0) }
    }

    /// Closes the last shard, checks nothing planned is missing, and writes the index when there are shards.
    public func finish() throws {
        if let missing = nextTensorName {
            throw CheckpointError(missing, "was planned but never written")
        }
        try writer?.finish()
        writer = nil
        if plan.needsIndex {
            try writeIndex()
        }
    }

    func writeIndex() throws {
        let map = plan.weightMap
        let entries = map.keys.sorted().map { "    \(JSONText.quote($0)): \(JSONText.quote(map[$0]!))" }
        let text = "{\n  \"metadata\": {\n    \"total_size\": \(plan.totalSize)\n  },\n  \"weight_map\": {\n"
            + entries.joined(separator: ",\n") + "\n  }\n}\n"
        try DurableFile.write(Data(text.utf8), to: directory.appendingPathComponent(SafeTensorsModel.indexFileName))
    }
}

/// Writes the non-tensor files of the checkpoint: config.json, hf_quant_config.json (modelopt) and the files
/// copied verbatim from the source model.
public func writeModelFiles(
    sourceDirectory: URL, outputDirectory: URL, configWriter: QuantizationConfigWriter
) throws -> [String] {
    let configURL = ModelDirectory(sourceDirectory).configURL
    let original = try Data(contentsOf: configURL)
    try DurableFile.write(try configWriter.configWithQuantization(original: original, source: configURL.path),
                          to: ModelDirectory(outputDirectory).configURL)
    var written = [ModelDirectory.configFileName]
    if configWriter.layout == .modelopt {
        try DurableFile.write(Data(configWriter.hfQuantConfigJSON().utf8),
                              to: outputDirectory.appendingPathComponent("hf_quant_config.json"))
        written.append("hf_quant_config.json")
    }
    let fileManager = FileManager.default
    for name in verbatimModelFiles {
        let source = sourceDirectory.appendingPathComponent(name)
        guard fileManager.fileExists(atPath: source.path) else { continue }
        // Contents only: a read-only source file must not make the output read-only.
        try DurableFile.write(try Data(contentsOf: source), to: outputDirectory.appendingPathComponent(name))
        written.append(name)
    }
    return written
}
