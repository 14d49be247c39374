import Calibration
import Checkpoint
import Foundation
import LlamaModel
import LocalCluster
import Logging
import NVFP4
import QuantizeJob
import SafeTensors
import Testing

// LlamaModel and Logging are not listed as dependencies of this test target, but QuantizeJob depends on both,
// so they are always built before it and their modules are importable here.

enum Fixtures {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")
    static let tinyLlama = directory.appendingPathComponent("tiny-llama")
    static let modelopt = directory.appendingPathComponent("tiny-llama-nvfp4-modelopt")
    static let llmCompressor = directory.appendingPathComponent("tiny-llama-nvfp4-llmcompressor")
    static let amax = directory.appendingPathComponent("tiny-llama-amax-fp32.json")

    static func tinyConfig() throws -> LlamaConfig {
        try LlamaConfig.load(path: tinyLlama.appendingPathComponent("config.json").path)
    }

    /// Linear module name → activation amax of the f32 reference forward.
    static func referenceAmax() throws -> [String: Double] {
        try JSONDecoder().decode([String: Double].self, from: Data(contentsOf: amax))
    }
}

/// A fresh, uniquely named directory under the system temporary directory, removed afterwards.
func withTemporaryDirectory<R>(_ label: String = "coordctl-test", _ body: (URL) throws -> R) throws -> R {
    let url = try makeTemporaryDirectory(label)
    defer { try? FileManager.default.removeItem(at: url) }
    return try body(url)
}

/// ``withTemporaryDirectory(_:_:)`` for async bodies.
func withTemporaryDirectory<R>(_ label: String = "coordctl-test", _ body: (URL) async throws -> R) async throws -> R {
    let url = try makeTemporaryDirectory(label)
    defer { try? FileManager.default.removeItem(at: url) }
    return try await body(url)
}

private func makeTemporaryDirectory(_ label: String) throws -> URL {
    let url = FileManager.default.temporaryDirectory
        .appendingPathComponent("\(label)-\(UUID().uuidString)", isDirectory: true)
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}

func quietLogger() -> Logger { Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }) }

/// The options of a job over `model` writing to `output`, without the quality report unless a test asks for it.
func jobOptions(model: URL, output: URL, scheme: QuantizationScheme = .nvfp4a16,
                layout: CheckpointLayout = .compressedTensors, configure: (inout QuantizeOptions) -> Void = { _ in })
    -> QuantizeOptions
{
    var options = QuantizeOptions(modelDirectory: model, outputDirectory: output)
    options.evaluationSamples = 0  // the quality report and its gate are tested where asked for
    options.scheme = scheme
    options.layout = layout
    options.calibration.device = "cpu"
    configure(&options)
    return options
}

/// The input checks of a job, logging nowhere.
func makeJob(model: URL, output: URL, scheme: QuantizationScheme = .nvfp4a16,
             layout: CheckpointLayout = .compressedTensors, configure: (inout QuantizeOptions) -> Void = { _ in })
    -> QuantizeJob
{
    QuantizeJob(options: jobOptions(model: model, output: output, scheme: scheme, layout: layout, configure: configure),
                logger: quietLogger())
}

/// Runs a job through the production path, as `coordctl quantize` does: the coordinator and a worker in this
/// process (LocalCluster), logging nowhere.
func quantize(model: URL, output: URL, scheme: QuantizationScheme = .nvfp4a16,
              layout: CheckpointLayout = .compressedTensors, configure: (inout QuantizeOptions) -> Void = { _ in })
    async throws -> QuantizeSummary
{
    try await LocalCluster.quantize(
        options: jobOptions(model: model, output: output, scheme: scheme, layout: layout, configure: configure),
        logger: quietLogger())
}

/// W4A4 options on the fixture model with its token-id calibration file, in several chunks.
func fixtureW4A4Options(output: URL, layout: CheckpointLayout) -> QuantizeOptions {
    jobOptions(model: Fixtures.tinyLlama, output: output, scheme: .nvfp4, layout: layout) { options in
        options.jobID = "cluster-test"
        options.calibration.dataPath = Fixtures.directory.appendingPathComponent("tiny-llama-calib.jsonl").path
        options.calibration.selection.minTokens = 1
        options.calibration.chunkTokens = 64
    }
}

func float32(_ model: SafeTensorsModel, _ name: String) throws -> Float {
    try model.withBytes(name) { bytes in
        try #require(bytes.count == 4, "\(name) is not one f32")
        return Float(bitPattern: UInt32(littleEndian: bytes.loadUnaligned(as: UInt32.self)))
    }
}

func jsonObject(_ url: URL) throws -> [String: Any] {
    try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
}

func sameJSON(_ a: Any?, _ b: Any?) -> Bool {
    func canonical(_ value: Any?) -> Data? {
        try? JSONSerialization.data(withJSONObject: [value ?? NSNull()], options: [.sortedKeys, .fragmentsAllowed])
    }
    guard let left = canonical(a), let right = canonical(b) else { return false }
    return left == right
}

func tensorSignature(_ model: SafeTensorsModel) throws -> [String: String] {
    var signature: [String: String] = [:]
    for name in model.tensorNames {
        let info = try model.info(name)
        signature[name] = "\(info.dtype.rawValue) \(info.shape)"
    }
    return signature
}

/// Entries of `directory` whose names start with `prefix`.
func entries(of directory: URL, prefix: String) throws -> [String] {
    try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.hasPrefix(prefix) }.sorted()
}

/// Runs `body`, which must throw; returns the error.
func expectFailure(sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) -> (any Error)? {
    do {
        try body()
        Issue.record("expected an error, but nothing was thrown", sourceLocation: sourceLocation)
        return nil
    } catch {
        return error
    }
}

/// ``expectFailure(sourceLocation:_:)`` for async bodies.
func expectFailure(sourceLocation: SourceLocation = #_sourceLocation, _ body: () async throws -> Void) async -> (any Error)? {
    do {
        try await body()
        Issue.record("expected an error, but nothing was thrown", sourceLocation: sourceLocation)
        return nil
    } catch {
        return error
    }
}
