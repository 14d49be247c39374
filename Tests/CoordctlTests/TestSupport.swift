import Calibration
import Checkpoint
import Foundation
import LlamaModel
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
    let url = FileManager.default.temporaryDirectory
        .appendingPathComponent("\(label)-\(UUID().uuidString)", isDirectory: true)
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: url) }
    return try body(url)
}

func quietLogger() -> Logger { Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }) }

/// A job over `model` writing to `output`, logging nowhere.
func makeJob(model: URL, output: URL, scheme: QuantizationScheme = .nvfp4a16,
             layout: CheckpointLayout = .compressedTensors, configure: (inout QuantizeOptions) -> Void = { _ in })
    -> QuantizeJob
{
    var options = QuantizeOptions(modelDirectory: model, outputDirectory: output)
    options.evaluationSamples = 0  // the quality report is tested on its own
    options.scheme = scheme
    options.layout = layout
    configure(&options)
    let logger = quietLogger()
    return QuantizeJob(options: options, logger: logger, progress: ProgressReporter(logger: logger, interactive: false))
}

/// Serves the activation amax values of tiny-llama-amax-fp32.json, as a calibration run would.
final class FixtureCalibrator: ActivationCalibrator {
    let amax: [String: Double]
    private(set) var layersAsked: [Int] = []

    init() throws { amax = try Fixtures.referenceAmax() }

    /// The f32 value for a Linear module, as the job receives it.
    func value(module: String) throws -> Float { Float(try #require(amax[module], "\(module) not in the amax fixture")) }

    func activationAmax(layer: Int) throws -> [FusedGroup: Float] {
        layersAsked.append(layer)
        var result: [FusedGroup: Float] = [:]
        for group in FusedGroup.allCases {
            let values = try group.members.map { try value(module: "\(LlamaConfig.layerPrefix(layer)).\($0.rawValue)") }
            // One observed input per fused group: the fixture must agree with itself.
            guard Set(values).count == 1 else { throw QuantizeJobError("fixture amax differs within \(group)") }
            result[group] = values[0]
        }
        return result
    }
}

struct CalibrationFailure: Error, Equatable { let layer: Int }

/// Throws at `failingLayer`, after answering the layers before it from the fixture.
final class FailingCalibrator: ActivationCalibrator {
    let base: FixtureCalibrator
    let failingLayer: Int
    init(failingLayer: Int) throws {
        base = try FixtureCalibrator()
        self.failingLayer = failingLayer
    }
    func activationAmax(layer: Int) throws -> [FusedGroup: Float] {
        if layer == failingLayer { throw CalibrationFailure(layer: layer) }
        return try base.activationAmax(layer: layer)
    }
}

/// Answers with a fixed map for every layer.
final class ConstantCalibrator: ActivationCalibrator {
    let values: [FusedGroup: Float]
    init(_ values: [FusedGroup: Float]) { self.values = values }
    func activationAmax(layer: Int) throws -> [FusedGroup: Float] { values }
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

/// Runs `body`, which must throw; returns the error's description.
func expectFailure(sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void) -> (any Error)? {
    do {
        try body()
        Issue.record("expected an error, but nothing was thrown", sourceLocation: sourceLocation)
        return nil
    } catch {
        return error
    }
}
