import Checkpoint
import Foundation
import LlamaModel
import NVFP4
import SafeTensors
import Testing

/// Paths of the fixtures under Tests/Fixtures.
enum Fixtures {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")

    static let tinyLlama = directory.appendingPathComponent("tiny-llama")
    static let modelopt = directory.appendingPathComponent("tiny-llama-nvfp4-modelopt")
    static let llmCompressor = directory.appendingPathComponent("tiny-llama-nvfp4-llmcompressor")

    static func tinyConfig() throws -> LlamaConfig {
        try LlamaConfig.load(path: tinyLlama.appendingPathComponent("config.json").path)
    }
    static func tinySource() throws -> SafeTensorsModel { try SafeTensorsModel(directory: tinyLlama.path) }
    static func modeloptReference() throws -> SafeTensorsModel { try SafeTensorsModel(directory: modelopt.path) }
    static func llmCompressorReference() throws -> SafeTensorsModel {
        try SafeTensorsModel(directory: llmCompressor.path)
    }
}

/// A fresh, uniquely named directory under the system temporary directory, removed by `remove()`.
struct TemporaryDirectory {
    let url: URL

    init(_ label: String = "cktest") throws {
        url = FileManager.default.temporaryDirectory
            .appendingPathComponent("\(label)-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    func path(_ name: String) -> URL { url.appendingPathComponent(name) }

    func remove() { try? FileManager.default.removeItem(at: url) }
}

/// Runs `body` with a temporary directory that is removed afterwards, whatever happens.
func withTemporaryDirectory<R>(_ label: String = "cktest", _ body: (URL) throws -> R) throws -> R {
    let directory = try TemporaryDirectory(label)
    defer { directory.remove() }
    return try body(directory.url)
}

/// `name → (dtype, shape)` of every tensor of a model.
func tensorSignature(_ model: SafeTensorsModel) throws -> [String: String] {
    var signature: [String: String] = [:]
    for name in model.tensorNames {
        let info = try model.info(name)
        signature[name] = "\(info.dtype.rawValue) \(info.shape)"
    }
    return signature
}

func float32(_ model: SafeTensorsModel, _ name: String) throws -> Float {
    try model.withBytes(name) { bytes in
        try #require(bytes.count == 4, "\(name) is not one f32")
        return Float(bitPattern: UInt32(littleEndian: bytes.loadUnaligned(as: UInt32.self)))
    }
}

func float32Data(_ value: Float) -> Data {
    withUnsafeBytes(of: value.bitPattern.littleEndian) { Data($0) }
}

func jsonObject(_ url: URL) throws -> [String: Any] {
    try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
}

/// Key-order-insensitive JSON equality.
func sameJSON(_ a: Any?, _ b: Any?) -> Bool {
    func canonical(_ value: Any?) -> Data? {
        try? JSONSerialization.data(withJSONObject: [value ?? NSNull()], options: [.sortedKeys, .fragmentsAllowed])
    }
    guard let left = canonical(a), let right = canonical(b) else { return false }
    return left == right
}

/// Writes an NVFP4 checkpoint of the tiny model through the Checkpoint module alone: planning, streaming,
/// config files. The quantized Linears carry the modelopt reference's bytes, so the module is tested
/// independently of the quantizer and of QuantizeJob.
struct ReferenceCheckpoint: Sendable {
    let layout: CheckpointLayout
    let scheme: QuantizationScheme
    var maxShardSize = Int.max
    /// `--exclude` patterns: the Linears they match are written as their source weight.
    var excludePatterns: [String] = []

    var linearLayout: LinearTensorLayout {
        get throws {
            let config = try Fixtures.tinyConfig()
            let source = try Fixtures.tinySource()
            var excluded: [String: SafeTensorsDType] = [:]
            for name in try LinearExclusion(patterns: excludePatterns, config: config).moduleNames {
                excluded[name] = try source.info(name + ".weight").dtype
            }
            return LinearTensorLayout(layout: layout, scheme: scheme, excluded: excluded)
        }
    }

    @discardableResult
    func write(to directory: URL) throws -> ShardPlan {
        let config = try Fixtures.tinyConfig()
        let source = try Fixtures.tinySource()
        let reference = try Fixtures.modeloptReference()
        var sourceDTypes: [String: SafeTensorsDType] = [:]
        for tensor in config.nonQuantizedTensors { sourceDTypes[tensor.name] = try source.info(tensor.name).dtype }
        let linearLayout = try linearLayout
        let groups = checkpointTensorGroups(config: config, layout: linearLayout, sourceDTypes: sourceDTypes)
        let plan = ShardPlanner.plan(groups: groups, maxShardSize: maxShardSize)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let writer = CheckpointWriter(directory: directory, plan: plan)

        func copy(_ name: String) throws { try source.withBytes(name) { try writer.write(name, bytes: $0) } }
        try copy(LlamaConfig.embedTokensName)
        for layer in 0..<config.numHiddenLayers {
            for norm in config.layerNorms(layer: layer) { try copy(norm.name) }
            for linear in config.linears(layer: layer) {
                if linearLayout.isExcluded(linear) {
                    try copy(linear.weightName)
                    continue
                }
                let weight = NVFP4Weight(
                    rows: linear.outFeatures, cols: linear.inFeatures,
                    packed: [UInt8](try reference.data(linear.name + ".weight")),
                    blockScales: [UInt8](try reference.data(linear.name + ".weight_scale")),
                    weightScale2: try float32(reference, linear.name + ".weight_scale_2"))
                let inputScale = scheme.quantizesActivations
                    ? InputScale(stored: try float32(reference, linear.name + ".input_scale")) : nil
                for (name, bytes) in try linearLayout.tensorBytes(QuantizedLinear(spec: linear, weight: weight,
                                                                                    inputScale: inputScale)) {
                    try writer.write(name, data: bytes)
                }
            }
        }
        try copy(LlamaConfig.finalNormName)
        if !config.tieWordEmbeddings { try copy(LlamaConfig.lmHeadName) }
        try writer.finish()
        _ = try writeModelFiles(sourceDirectory: Fixtures.tinyLlama, outputDirectory: directory,
                                configWriter: QuantizationConfigWriter(
                                    layout: layout, scheme: scheme,
                                    excludedModules: linearLayout.excludedModuleNames(config: config)))
        return plan
    }

    func verifier() throws -> CheckpointVerifier {
        CheckpointVerifier(config: try Fixtures.tinyConfig(), layout: try linearLayout, source: try Fixtures.tinySource())
    }
}

/// Rewrites one safetensors file with its tensors changed by `edit` (which may drop, add, retype or change
/// bytes of tensors). Tensors are read into memory first, since the output replaces the input.
struct EditableTensor {
    var name: String
    var dtype: SafeTensorsDType
    var shape: [Int]
    var bytes: Data
}

func rewriteSafeTensors(_ url: URL, _ edit: (inout [EditableTensor]) throws -> Void) throws {
    var tensors: [EditableTensor] = []
    do {
        let file = try SafeTensorsFile(path: url.path)
        for info in file.tensors.sorted(by: { $0.dataOffsets.lowerBound < $1.dataOffsets.lowerBound }) {
            tensors.append(EditableTensor(name: info.name, dtype: info.dtype, shape: info.shape,
                                          bytes: try file.data(info.name)))
        }
    }
    try edit(&tensors)
    let temporary = url.deletingLastPathComponent().appendingPathComponent(".rewrite-\(UUID().uuidString)")
    let writer = try SafeTensorsWriter(path: temporary.path,
                                       tensors: tensors.map { PlannedTensor(name: $0.name, dtype: $0.dtype, shape: $0.shape) })
    for tensor in tensors { try writer.write(tensor.name, data: tensor.bytes) }
    try writer.finish()
    try FileManager.default.removeItem(at: url)
    try FileManager.default.moveItem(at: temporary, to: url)
}

/// The shard file of a written checkpoint that holds `tensor`.
func shardURL(of tensor: String, in directory: URL) throws -> URL {
    URL(fileURLWithPath: try SafeTensorsModel(directory: directory.path).file(containing: tensor).path)
}

/// Edits the tensor `name` wherever it lives in the checkpoint at `directory`.
func editTensor(_ name: String, in directory: URL, _ edit: (inout EditableTensor) throws -> Void) throws {
    try rewriteSafeTensors(try shardURL(of: name, in: directory)) { tensors in
        let index = try #require(tensors.firstIndex { $0.name == name })
        try edit(&tensors[index])
    }
}

/// Rewrites a JSON file after `edit` changes its top-level object.
func editJSON(_ url: URL, _ edit: (inout [String: Any]) throws -> Void) throws {
    var object = try jsonObject(url)
    try edit(&object)
    try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys]).write(to: url)
}

/// Runs `body`, which must throw a ``CheckpointError``; returns it.
func expectCheckpointError(_ comment: Comment? = nil, sourceLocation: SourceLocation = #_sourceLocation,
                           _ body: () throws -> Void) -> CheckpointError? {
    do {
        try body()
        Issue.record("expected a CheckpointError, but nothing was thrown. \(comment.map { "\($0)" } ?? "")",
                     sourceLocation: sourceLocation)
        return nil
    } catch let error as CheckpointError {
        return error
    } catch {
        Issue.record("expected a CheckpointError, got \(type(of: error)): \(error)", sourceLocation: sourceLocation)
        return nil
    }
}
