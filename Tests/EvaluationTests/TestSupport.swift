import Calibration
import Checkpoint
import CPUBackend
import Foundation
import LlamaModel
import Logging
import NVFP4
import QuantizeJob
import SafeTensors
import Testing

enum Fixtures {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")
    static let tinyLlama = directory.appendingPathComponent("tiny-llama")
    static let amax = directory.appendingPathComponent("tiny-llama-amax-fp32.json")
    static let calibrationSamples = directory.appendingPathComponent("tiny-llama-calib.jsonl")
    static let evaluation = directory.appendingPathComponent("evaluation")
    /// The W4A4 compressed-tensors checkpoint the PyTorch reference script read.
    static let w4a4Checkpoint = evaluation.appendingPathComponent("tiny-llama-nvfp4-w4a4")
    static let referencePerplexity = evaluation.appendingPathComponent("tiny-llama-w4a4-perplexity.json")

    static func tinyConfig() throws -> LlamaConfig {
        try LlamaConfig.load(path: tinyLlama.appendingPathComponent("config.json").path)
    }

    static func tinyModel() throws -> SafeTensorsModel { try SafeTensorsModel(directory: tinyLlama.path) }

    /// Linear module name → activation amax of the f32 reference forward.
    static func referenceAmax() throws -> [String: Float] {
        try JSONDecoder().decode([String: Double].self, from: Data(contentsOf: amax)).mapValues { Float($0) }
    }

    /// The `input_ids` of each line of tiny-llama-calib.jsonl.
    static func samples() throws -> [[Int]] {
        let text = try String(contentsOf: calibrationSamples, encoding: .utf8)
        return try text.split(separator: "\n").map { line in
            let object = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            return try #require(object["input_ids"] as? [Int])
        }
    }
}

func quietLogger() -> Logger { Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }) }

/// A fresh, uniquely named directory under the system temporary directory, removed afterwards.
func withTemporaryDirectory<R>(_ body: (URL) throws -> R) throws -> R {
    let url = FileManager.default.temporaryDirectory
        .appendingPathComponent("evaluation-test-\(UUID().uuidString)", isDirectory: true)
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: url) }
    return try body(url)
}

/// Layer → fused group → the activation amax of tiny-llama-amax-fp32.json (an f32 reference forward).
func fixtureActivationAmax(config: LlamaConfig) throws -> [Int: [FusedGroup: ActivationAmax]] {
    let amax = try Fixtures.referenceAmax()
    var result: [Int: [FusedGroup: ActivationAmax]] = [:]
    for layer in 0..<config.numHiddenLayers {
        for group in FusedGroup.allCases {
            let module = "\(LlamaConfig.layerPrefix(layer)).\(group.members[0].rawValue)"
            result[layer, default: [:]][group] = ActivationAmax(try #require(amax[module], "\(module) not in the amax fixture"))
        }
    }
    return result
}

/// Writes the tiny model's checkpoint into `output` with the job's exporter and assembler (the writer coordd uses),
/// W4A4 scales from the fixture's reference amax, so the reader is tested against known values. Returns the shard
/// count.
@discardableResult
func writeTinyCheckpoint(to output: URL, layout: CheckpointLayout, scheme: QuantizationScheme = .nvfp4,
                         maxShardSize: Int? = nil) throws -> Int
{
    var options = QuantizeOptions(modelDirectory: Fixtures.tinyLlama, outputDirectory: output)
    options.layout = layout
    options.scheme = scheme
    if let maxShardSize { options.maxShardSize = maxShardSize }
    options.jobID = "test"
    let spec = try JobSpec(options: options)
    let config = try Fixtures.tinyConfig()
    let source = try SafeTensorsModel(directory: Fixtures.tinyLlama.path)
    let amax = scheme.quantizesActivations ? try fixtureActivationAmax(config: config) : [:]
    let exporter = try LayerExporter(spec: spec, config: config, source: source)
    let assembler = try CheckpointAssembler(spec: spec, config: config, source: source, logger: quietLogger())
    try assembler.writeEmbeddings()
    for layer in 0..<config.numHiddenLayers {
        try assembler.add(layer: layer, tensors: try exporter.export(layer: layer, activationAmax: amax[layer]))
    }
    var calibration: CalibrationRecord?
    if scheme.quantizesActivations {
        calibration = CalibrationRecord(source: "tiny-llama-amax-fp32.json", samples: 8, tokens: 0, contentHash: "",
                                        device: "reference", activationAmax: amax)
    }
    try assembler.finish(calibration: calibration)
    try assembler.commit()
    return assembler.plan.shards.count
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
