import Checkpoint
import CPUBackend
import Evaluation
import Foundation
import LlamaModel
import SafeTensors
import Testing

/// Rewrites `directory/model.safetensors`: `edit` returns a tensor's new bytes, or nil to drop it.
func rewriteTensors(in directory: URL, _ edit: (String, Data) -> Data?) throws {
    let path = directory.appendingPathComponent("model.safetensors").path
    let file = try SafeTensorsFile(path: path)
    var kept: [(PlannedTensor, Data)] = []
    for info in file.tensors {
        if let data = edit(info.name, try file.data(info.name)) {
            kept.append((PlannedTensor(name: info.name, dtype: info.dtype, shape: info.shape), data))
        }
    }
    try replaceTensors(at: path, with: kept)
}

/// Writes `tensors` to a new file and renames it over `path`.
func replaceTensors(at path: String, with tensors: [(PlannedTensor, Data)]) throws {
    let temporary = path + ".new"
    let writer = try SafeTensorsWriter(path: temporary, tensors: tensors.map(\.0))
    for (tensor, data) in tensors { try writer.write(tensor.name, data: data) }
    try writer.finish()
    try FileManager.default.removeItem(atPath: path)
    try FileManager.default.moveItem(atPath: temporary, toPath: path)
}

/// Adds a tensor to `directory/model.safetensors`, keeping the others as they are.
func appendTensor(in directory: URL, name: String, dtype: SafeTensorsDType, shape: [Int], data: Data) throws {
    let path = directory.appendingPathComponent("model.safetensors").path
    let file = try SafeTensorsFile(path: path)
    var kept = try file.tensors.map { (PlannedTensor(name: $0.name, dtype: $0.dtype, shape: $0.shape), try file.data($0.name)) }
    kept.append((PlannedTensor(name: name, dtype: dtype, shape: shape), data))
    try replaceTensors(at: path, with: kept)
}

/// Rewrites `directory/config.json` through `edit`.
func editConfig(in directory: URL, _ edit: (inout [String: Any]) -> Void) throws {
    let url = directory.appendingPathComponent("config.json")
    var object = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
    edit(&object)
    try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]).write(to: url)
}

/// The tiny config with `intermediate_size` changed.
func tinyConfig(intermediateSize: Int) throws -> LlamaConfig {
    let url = Fixtures.tinyLlama.appendingPathComponent("config.json")
    var object = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any])
    object["intermediate_size"] = intermediateSize
    return try LlamaConfig(json: try JSONSerialization.data(withJSONObject: object), source: "edited config.json")
}

func evaluationError(_ body: () throws -> Void, sourceLocation: SourceLocation = #_sourceLocation) -> EvaluationError? {
    let error = expectFailure(sourceLocation: sourceLocation, body)
    guard let error else { return nil }
    guard let typed = error as? EvaluationError else {
        Issue.record("expected an EvaluationError, got \(type(of: error)): \(error)", sourceLocation: sourceLocation)
        return nil
    }
    return typed
}

@Suite struct ErrorTests {
    @Test func originalModelIsNotAnNVFP4Checkpoint() throws {
        let error = evaluationError {
            _ = try QuantizedCheckpoint(directory: Fixtures.tinyLlama, originalConfig: try Fixtures.tinyConfig())
        }
        #expect(error?.subject == Fixtures.tinyLlama.appendingPathComponent("config.json").path + ": quantization_config")
        #expect(error?.message.contains("not a quantized checkpoint") == true)
    }

    @Test func directoryWithoutConfig() throws {
        try withTemporaryDirectory { directory in
            let error = evaluationError { _ = try QuantizedCheckpoint(directory: directory, originalConfig: try Fixtures.tinyConfig()) }
            #expect(error?.subject == directory.appendingPathComponent("config.json").path)
            #expect(error?.message.contains("not found") == true)
        }
    }

    @Test func otherQuantizationMethod() throws {
        try withTemporaryDirectory { directory in
            let output = directory.appendingPathComponent("out")
            try writeTinyCheckpoint(to: output, layout: .compressedTensors)
            try editConfig(in: output) { object in
                var quantization = object["quantization_config"] as! [String: Any]
                quantization["quant_method"] = "fp8"
                object["quantization_config"] = quantization
            }
            let error = evaluationError { _ = try QuantizedCheckpoint(directory: output, originalConfig: try Fixtures.tinyConfig()) }
            #expect(error?.subject.hasSuffix("config.json: quantization_config.quant_method") == true)
            #expect(error?.message.contains("\"fp8\"") == true)
        }
    }

    @Test func modeloptOtherAlgorithm() throws {
        try withTemporaryDirectory { directory in
            let output = directory.appendingPathComponent("out")
            try writeTinyCheckpoint(to: output, layout: .modelopt)
            try editConfig(in: output) { object in
                var quantization = object["quantization_config"] as! [String: Any]
                quantization["quant_algo"] = "FP8"
                object["quantization_config"] = quantization
            }
            let error = evaluationError { _ = try QuantizedCheckpoint(directory: output, originalConfig: try Fixtures.tinyConfig()) }
            #expect(error?.subject.hasSuffix("config.json: quantization_config.quant_algo") == true)
        }
    }

    @Test func checkpointConfigOfAnotherModel() throws {
        try withTemporaryDirectory { directory in
            let output = directory.appendingPathComponent("out")
            try writeTinyCheckpoint(to: output, layout: .compressedTensors)
            let error = evaluationError {
                _ = try QuantizedCheckpoint(directory: output, originalConfig: try tinyConfig(intermediateSize: 336))
            }
            #expect(error?.subject == output.appendingPathComponent("config.json").path + ": intermediate_size")
            #expect(error?.message.contains("is 352, but the original model has 336") == true)
        }
    }

    /// The config claims the dimensions of the original, but the tensors were quantized from another model.
    @Test(arguments: CheckpointLayout.allCases)
    func tensorShapeOfAnotherModel(layout: CheckpointLayout) throws {
        try withTemporaryDirectory { directory in
            let output = directory.appendingPathComponent("out")
            try writeTinyCheckpoint(to: output, layout: layout)
            try editConfig(in: output) { $0["intermediate_size"] = 336 }
            let error = evaluationError {
                _ = try QuantizedCheckpoint(directory: output, originalConfig: try tinyConfig(intermediateSize: 336))
            }
            let packed = layout == .compressedTensors ? "weight_packed" : "weight"
            #expect(error?.subject == output.appendingPathComponent("model.safetensors").path
                        + ": model.layers.0.mlp.gate_proj.\(packed)")
            #expect(error?.message.contains("has shape [352, 64], but the original model implies [336, 64]") == true)
        }
    }

    /// A config that declares W4A4 over tensors without activation scales.
    @Test func missingInputScale() throws {
        try withTemporaryDirectory { directory in
            let output = directory.appendingPathComponent("out")
            try writeTinyCheckpoint(to: output, layout: .compressedTensors, scheme: .nvfp4a16)
            try editConfig(in: output) { object in
                var quantization = object["quantization_config"] as! [String: Any]
                var groups = quantization["config_groups"] as! [String: Any]
                var group = groups["group_0"] as! [String: Any]
                group["input_activations"] = group["weights"]
                groups["group_0"] = group
                quantization["config_groups"] = groups
                object["quantization_config"] = quantization
            }
            let error = evaluationError { _ = try QuantizedCheckpoint(directory: output, originalConfig: try Fixtures.tinyConfig()) }
            #expect(error?.subject == output.path + ": model.layers.0.self_attn.q_proj.input_global_scale")
            #expect(error?.message.contains("missing") == true)
        }
    }

    @Test(arguments: [("weight_global_scale", CheckpointLayout.compressedTensors), ("weight_scale_2", .modelopt),
                      ("input_scale", .modelopt), ("weight_scale", .compressedTensors)])
    func missingScaleTensor(suffix: String, layout: CheckpointLayout) throws {
        try withTemporaryDirectory { directory in
            let output = directory.appendingPathComponent("out")
            try writeTinyCheckpoint(to: output, layout: layout)
            let dropped = "model.layers.1.mlp.down_proj.\(suffix)"
            try rewriteTensors(in: output) { name, data in name == dropped ? nil : data }
            let error = evaluationError { _ = try QuantizedCheckpoint(directory: output, originalConfig: try Fixtures.tinyConfig()) }
            #expect(error?.subject == output.path + ": " + dropped)
            #expect(error?.message.contains("missing") == true)
        }
    }

    /// modelopt's AWQ exports carry `pre_quant_scale` (the Linear's input is multiplied by it before quantization).
    /// Ignored, a fixture checkpoint with one such tensor added was judged "+0.2%, fine", and an emulation that ignores
    /// them put modelopt's SmolLM2 AWQ export at perplexity 2e7 against modelopt's own 57.9: refused.
    @Test(arguments: [("model.layers.0.self_attn.o_proj.pre_quant_scale", "AWQ"),
                      ("model.layers.1.self_attn.k_proj.k_scale", "not a tensor of an NVFP4 Llama checkpoint")])
    func tensorTheEvaluationCannotApplyIsRefused(name: String, reason: String) throws {
        try withTemporaryDirectory { directory in
            let output = directory.appendingPathComponent("out")
            try writeTinyCheckpoint(to: output, layout: .modelopt)
            let config = try Fixtures.tinyConfig()
            try appendTensor(in: output, name: name, dtype: .bf16, shape: [config.hiddenSize],
                             data: Data(repeating: 0x40, count: 2 * config.hiddenSize))
            let error = evaluationError { _ = try QuantizedCheckpoint(directory: output, originalConfig: config) }
            #expect(error?.subject == output.appendingPathComponent("model.safetensors").path + ": " + name)
            #expect(error?.message.contains(reason) == true)
            #expect(error?.message.contains("perplexity the checkpoint does not have") == true)
        }
    }

    @Test func storedNormOfAnotherShapeIsRefused() throws {
        try withTemporaryDirectory { directory in
            let output = directory.appendingPathComponent("out")
            try writeTinyCheckpoint(to: output, layout: .compressedTensors)
            let config = try Fixtures.tinyConfig()
            let norm = LlamaConfig.finalNormName
            try rewriteTensors(in: output) { name, data in name == norm ? nil : data }
            try appendTensor(in: output, name: norm, dtype: .bf16, shape: [2 * config.hiddenSize],
                             data: Data(count: 4 * config.hiddenSize))
            let error = evaluationError { _ = try QuantizedCheckpoint(directory: output, originalConfig: config) }
            #expect(error?.subject == output.appendingPathComponent("model.safetensors").path + ": " + norm)
            #expect(error?.message == "has shape [\(2 * config.hiddenSize)], but the original model implies [\(config.hiddenSize)]")
        }
    }

    @Test func zeroScaleIsRejectedWhenRead() throws {
        try withTemporaryDirectory { directory in
            let output = directory.appendingPathComponent("out")
            try writeTinyCheckpoint(to: output, layout: .modelopt)
            let broken = "model.layers.0.self_attn.o_proj.weight_scale_2"
            try rewriteTensors(in: output) { name, data in name == broken ? Data(count: 4) : data }
            let config = try Fixtures.tinyConfig()
            let checkpoint = try QuantizedCheckpoint(directory: output, originalConfig: config)
            let error = evaluationError { _ = try checkpoint.dequantizedWeight(config.linears(layer: 0)[3]) }
            #expect(error?.subject == output.appendingPathComponent("model.safetensors").path + ": " + broken)
            #expect(error?.message.contains("finite and positive") == true)
        }
    }

    @Test func samplesTooShortOrMissing() throws {
        let config = try Fixtures.tinyConfig()
        let evaluator = PerplexityEvaluator(backend: CPUBackend(config: config), logger: quietLogger())
        let checkpoint = try QuantizedCheckpoint(directory: Fixtures.w4a4Checkpoint, originalConfig: config)
        let model = try Fixtures.tinyModel()
        let empty = evaluationError { _ = try evaluator.evaluate(original: model, checkpoint: checkpoint, samples: []) }
        #expect(empty?.message == "none given")
        let short = evaluationError {
            _ = try evaluator.evaluate(original: model, checkpoint: checkpoint, samples: [[510, 20, 30], [510]])
        }
        #expect(short?.subject == "evaluation sample 1")
    }

    /// Output-error samples come from coordd over the network: ids outside the vocabulary and more tokens than are
    /// measured are refused, naming what is wrong.
    @Test func outputErrorSamplesOutsideTheVocabularyOrTooLong() throws {
        let config = try Fixtures.tinyConfig()
        let evaluator = PerplexityEvaluator(backend: CPUBackend(config: config), logger: quietLogger())
        let checkpoint = try QuantizedCheckpoint(directory: Fixtures.w4a4Checkpoint, originalConfig: config)
        let model = try Fixtures.tinyModel()
        let outside = evaluationError {
            _ = try evaluator.evaluate(original: model, checkpoint: checkpoint, samples: [[510, 20, 30]],
                                       outputErrorSamples: [[510, 20], [510, config.vocabSize]])
        }
        #expect(outside?.description == "output-error sample 1: token id \(config.vocabSize) is outside the vocabulary (0..<\(config.vocabSize))")
        let long = evaluationError {
            _ = try evaluator.evaluate(original: model, checkpoint: checkpoint, samples: [[510, 20, 30]],
                                       outputErrorSamples: [Array(repeating: 20, count: 1025)])
        }
        #expect(long?.description == "output-error samples: 1025 tokens, where at most 1024 are measured")
    }
}
