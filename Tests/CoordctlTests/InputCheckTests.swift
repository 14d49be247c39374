import Checkpoint
import Foundation
import LlamaModel
import NVFP4
import QuantizeJob
import SafeTensors
import Testing

/// Bad input fails at once, before any output exists, with an error naming the file, field or tensor.
@Suite struct InputCheckTests {
    /// Builds a model with `builder` (edited), runs `checkInputs()` on it, and returns the error.
    func checkInputsError(
        _ builder: TinyModelBuilder = TinyModelBuilder(),
        scheme: QuantizationScheme = .nvfp4a16, layout: CheckpointLayout = .compressedTensors,
        sourceLocation: SourceLocation = #_sourceLocation,
        editConfig: (inout [String: Any]) -> Void = { _ in },
        editTensors: (inout [TinyModelBuilder.Tensor]) -> Void = { _ in },
        editFiles: (URL) throws -> Void = { _ in }
    ) throws -> (any Error)? {
        try withTemporaryDirectory("coordctl-input") { parent throws in
            let model = try builder.write(to: parent.appendingPathComponent("model"), editConfig: editConfig,
                                          editTensors: editTensors)
            try editFiles(model)
            let output = parent.appendingPathComponent("OUT")
            let thrown = expectFailure(sourceLocation: sourceLocation) {
                _ = try makeJob(model: model, output: output, scheme: scheme, layout: layout).checkInputs()
            }
            #expect(try entries(of: parent, prefix: "OUT") == [], "checking input must not create the output",
                    sourceLocation: sourceLocation)
            return thrown
        }
    }

    func text(_ error: (any Error)?) -> String { error.map { "\($0)" } ?? "(no error)" }

    @Test func validBuiltModelPassesAndQuantizes() async throws {
        try await withTemporaryDirectory("coordctl-input") { parent async throws in
            let model = try TinyModelBuilder().write(to: parent.appendingPathComponent("model"))
            let output = parent.appendingPathComponent("OUT")
            let job = makeJob(model: model, output: output)
            let inputs = try job.checkInputs()
            #expect(inputs.config.numHiddenLayers == 2)
            #expect(inputs.weightAmax.count == 14)
            #expect(inputs.weightAmax.values.allSatisfy { $0 > 0 && $0 <= 0.1005 })
            let summary = try await quantize(model: model, output: output)
            #expect(summary.quantizedLinears == 14)
            #expect(try SafeTensorsModel(directory: output.path).tensorNames.count == 14 * 3 + 2 * 2 + 3)
        }
    }

    @Test func tiedEmbeddingsModelQuantizesWithoutLMHead() async throws {
        try await withTemporaryDirectory("coordctl-input") { parent async throws in
            let model = try TinyModelBuilder(tieWordEmbeddings: true).write(to: parent.appendingPathComponent("model"))
            let output = parent.appendingPathComponent("OUT")
            _ = try await quantize(model: model, output: output)
            let written = try SafeTensorsModel(directory: output.path)
            #expect(!written.contains("lm_head.weight"))
            #expect(written.contains("model.embed_tokens.weight"))
        }
    }

    @Test func tiedSourceThatStillHasAnLMHeadDropsIt() async throws {
        // Spec §8: with tie_word_embeddings no lm_head.weight is written, even if the source has one.
        try await withTemporaryDirectory("coordctl-input") { parent async throws in
            let builder = TinyModelBuilder(tieWordEmbeddings: true)
            let model = try builder.write(to: parent.appendingPathComponent("model"), editTensors: { tensors in
                var head = tensors[named: "model.embed_tokens.weight"]
                head.name = "lm_head.weight"
                tensors.append(head)
            })
            let output = parent.appendingPathComponent("OUT")
            _ = try await quantize(model: model, output: output)
            #expect(!(try SafeTensorsModel(directory: output.path).contains("lm_head.weight")))
        }
    }

    @Test(arguments: [SafeTensorsDType.f32, .f16])
    func widerSourceDTypeQuantizesLikeBF16(dtype: SafeTensorsDType) async throws {
        // BF16 values widened to F32 (or F16, exact for these magnitudes) must give the same NVFP4 bytes.
        try await withTemporaryDirectory("coordctl-input") { parent async throws in
            let bf16 = try TinyModelBuilder().write(to: parent.appendingPathComponent("bf16"))
            let wide = try TinyModelBuilder().write(to: parent.appendingPathComponent("wide"), editTensors: { tensors in
                for index in tensors.indices where tensors[index].name.hasSuffix("_proj.weight") {
                    let bits = tensors[index].bytes.withUnsafeBytes { Array($0.bindMemory(to: UInt16.self)) }
                    var bytes = Data()
                    for value in bits.map(BFloat16.toFloat) {
                        if dtype == .f32 {
                            withUnsafeBytes(of: value.bitPattern.littleEndian) { bytes.append(contentsOf: $0) }
                        } else {
                            withUnsafeBytes(of: Float16(value).bitPattern.littleEndian) { bytes.append(contentsOf: $0) }
                        }
                    }
                    tensors[index].dtype = dtype
                    tensors[index].bytes = bytes
                }
            })
            let bf16Output = parent.appendingPathComponent("OUT-bf16")
            let wideOutput = parent.appendingPathComponent("OUT-wide")
            _ = try await quantize(model: bf16, output: bf16Output)
            _ = try await quantize(model: wide, output: wideOutput)
            let expected = try SafeTensorsModel(directory: bf16Output.path)
            let actual = try SafeTensorsModel(directory: wideOutput.path)
            #expect(actual.tensorNames == expected.tensorNames)
            for name in expected.tensorNames {
                #expect(try actual.data(name) == expected.data(name), "\(name)")
            }
        }
    }

    @Test func indexNamingAMissingShard() throws {
        let thrown = try checkInputsError(editFiles: { model in
            let index = #"{"metadata": {"total_size": 1}, "weight_map": {"model.norm.weight": "model-00002-of-00002.safetensors"}}"#
            try Data(index.utf8).write(to: model.appendingPathComponent("model.safetensors.index.json"))
        })
        let safetensorsError = try #require(thrown as? SafeTensorsError)
        #expect(safetensorsError.kind == .missingShard)
        #expect(text(thrown).contains("model-00002-of-00002.safetensors"))
    }

    @Test
    func outputThatIsTheModelDirectoryIsRefused() async throws {
        for outputIsParent in [false, true] {
            try await withTemporaryDirectory("coordctl-input") { parent async throws in
                let model = try TinyModelBuilder().write(to: parent.appendingPathComponent("model"))
                let before = try Data(contentsOf: model.appendingPathComponent("model.safetensors"))
                let output = outputIsParent ? parent : model
                let thrown = await expectFailure { _ = try await quantize(model: model, output: output) { $0.force = true } }
                #expect(text(thrown).contains(output.standardizedFileURL.path))
                #expect(try Data(contentsOf: model.appendingPathComponent("model.safetensors")) == before)
            }
        }
    }

    @Test(arguments: ["tiny-llama-nvfp4-llmcompressor", "tiny-llama-nvfp4-modelopt"])
    func alreadyQuantizedModelIsRefusedBeforeAnyOutput(fixture: String) async throws {
        try await withTemporaryDirectory("coordctl-input") { parent async throws in
            let output = parent.appendingPathComponent("OUT")
            let thrown = await expectFailure {
                _ = try await quantize(model: Fixtures.directory.appendingPathComponent(fixture), output: output)
            }
            // Today this is reported as the first Linear's BF16 weight being missing or mis-shaped.
            #expect(thrown is LlamaWeightError)
            #expect(text(thrown).contains("model.layers.0.self_attn.q_proj.weight"))
            #expect(try entries(of: parent, prefix: "OUT") == [])
        }
    }

    @Test func nonLlamaModelType() throws {
        let thrown = try checkInputsError(editConfig: { $0["model_type"] = "gpt2" })
        let configError = try #require(thrown as? LlamaConfigError)
        #expect(configError.field == "model_type")
        #expect(configError.source.hasSuffix("config.json"))
        #expect(text(thrown).contains("gpt2"))
    }

    @Test func nonLlamaArchitecture() throws {
        let thrown = try checkInputsError(editConfig: { $0["architectures"] = ["GPT2LMHeadModel"] })
        #expect((thrown as? LlamaConfigError)?.field == "architectures")
        #expect(text(thrown).contains("GPT2LMHeadModel"))
    }

    @Test func hiddenSizeNotAMultipleOf16() throws {
        // hidden 24: q/k/v/gate/up read 24 features, which do not split into 16-wide blocks.
        let thrown = try checkInputsError(TinyModelBuilder(hiddenSize: 24, intermediateSize: 48, attentionHeads: 2,
                                                          keyValueHeads: 1))
        #expect(thrown as? LlamaWeightError
            == .inFeaturesNotMultipleOf16(name: "model.layers.0.self_attn.q_proj.weight", inFeatures: 24))
        #expect(text(thrown).contains("model.layers.0.self_attn.q_proj.weight"))
        #expect(text(thrown).contains("24"))
    }

    @Test func intermediateSizeNotAMultipleOf16() throws {
        let thrown = try checkInputsError(TinyModelBuilder(intermediateSize: 40))
        #expect(thrown as? LlamaWeightError
            == .inFeaturesNotMultipleOf16(name: "model.layers.0.mlp.down_proj.weight", inFeatures: 40))
    }

    @Test func missingWeightTensor() throws {
        let name = "model.layers.1.mlp.up_proj.weight"
        let thrown = try checkInputsError(editTensors: { $0.removeAll { $0.name == name } })
        #expect(thrown as? LlamaWeightError == .missingTensor(name: name))
        #expect(text(thrown).contains(name))
    }

    @Test func missingNorm() throws {
        let name = "model.norm.weight"
        let thrown = try checkInputsError(editTensors: { $0.removeAll { $0.name == name } })
        #expect(thrown as? LlamaWeightError == .missingTensor(name: name))
    }

    @Test func missingLMHeadWhenUntied() throws {
        let thrown = try checkInputsError(editTensors: { $0.removeAll { $0.name == "lm_head.weight" } })
        #expect(thrown as? LlamaWeightError == .missingTensor(name: "lm_head.weight"))
    }

    @Test(arguments: [SafeTensorsDType.i32, .u8, .i64])
    func weightWithANonFloatDType(dtype: SafeTensorsDType) throws {
        let name = "model.layers.0.self_attn.k_proj.weight"
        let thrown = try checkInputsError(editTensors: { tensors in
            let shape = tensors[named: name].shape
            tensors[named: name] = .init(name: name, dtype: dtype, shape: shape,
                                         bytes: Data(count: shape.reduce(1, *) * dtype.byteSize))
        })
        #expect(thrown as? LlamaWeightError == .unsupportedDType(name: name, dtype: dtype.rawValue))
        #expect(text(thrown).contains(name) && text(thrown).contains(dtype.rawValue))
    }

    @Test func weightWithTheWrongShape() throws {
        let name = "model.layers.1.self_attn.o_proj.weight"
        let thrown = try checkInputsError(editTensors: { tensors in
            tensors[named: name].shape = [16, 64]  // same element count as [32, 32]
        })
        #expect(thrown as? LlamaWeightError == .shapeMismatch(name: name, expected: [32, 32], actual: [16, 64]))
    }

    @Test(arguments: [("NaN", UInt16(0x7FC0)), ("+Inf", 0x7F80), ("-Inf", 0xFF80), ("-NaN", 0xFFC1)])
    func weightWithANonFiniteValue(label: String, bits: UInt16) throws {
        let name = "model.layers.1.mlp.gate_proj.weight"
        let row = 5
        let thrown = try checkInputsError(editTensors: { tensors in
            let cols = tensors[named: name].shape[1]
            let offset = (row * cols + 7) * 2
            tensors[named: name].bytes.replaceSubrange(offset..<(offset + 2), with: [UInt8(bits & 0xFF), UInt8(bits >> 8)])
        })
        #expect(thrown as? NVFP4Error == .nonFinite(tensor: name, row: row), "\(label)")
        #expect(text(thrown).contains(name))
        #expect(text(thrown).contains("NaN or Inf"))
    }

    @Test func normWithNaN() throws {
        let name = "model.layers.0.post_attention_layernorm.weight"
        let thrown = try checkInputsError(editTensors: { tensors in
            tensors[named: name].bytes.replaceSubrange(2..<4, with: [0xC0, 0x7F])
        })
        #expect(text(thrown).contains(name))
        #expect(thrown is NVFP4Error)
    }

    @Test func allZeroWeight() throws {
        let name = "model.layers.0.self_attn.v_proj.weight"
        let thrown = try checkInputsError(editTensors: { tensors in
            tensors[named: name].bytes = Data(count: tensors[named: name].bytes.count)
        })
        #expect(thrown as? NVFP4Error == .allZero(tensor: name))
    }

    @Test func truncatedSafetensorsHeader() throws {
        let thrown = try checkInputsError(editFiles: { model in
            let url = model.appendingPathComponent("model.safetensors")
            let data = try Data(contentsOf: url)
            let headerLength = Int(data.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) })
            try data.prefix(8 + headerLength / 2).write(to: url)
        })
        let safetensorsError = try #require(thrown as? SafeTensorsError)
        #expect(safetensorsError.kind == .headerLength)
        #expect(safetensorsError.path.hasSuffix("model/model.safetensors"))
    }

    @Test func fileShorterThanTheHeaderLength() throws {
        let thrown = try checkInputsError(editFiles: { model in
            try Data([1, 2, 3]).write(to: model.appendingPathComponent("model.safetensors"))
        })
        #expect((thrown as? SafeTensorsError)?.path.hasSuffix("model.safetensors") == true)
    }

    @Test func tensorOffsetsOutOfRange() throws {
        // Dropping the file's last bytes leaves the last tensor's data_offsets past the end of the data.
        let thrown = try checkInputsError(editFiles: { model in
            let url = model.appendingPathComponent("model.safetensors")
            try Data(contentsOf: url).dropLast(64).write(to: url)
        })
        let safetensorsError = try #require(thrown as? SafeTensorsError)
        #expect(safetensorsError.kind == .outOfBounds)
        #expect(safetensorsError.path.hasSuffix("model.safetensors"))
        #expect(safetensorsError.tensor != nil)
    }

    @Test func headerThatIsNotJSON() throws {
        let thrown = try checkInputsError(editFiles: { model in
            let header = Array("{\"a\": nope}    ".utf8)
            var data = Data()
            withUnsafeBytes(of: UInt64(header.count).littleEndian) { data.append(contentsOf: $0) }
            data.append(contentsOf: header)
            try data.write(to: model.appendingPathComponent("model.safetensors"))
        })
        #expect((thrown as? SafeTensorsError)?.kind == .headerJSON)
    }

    @Test func noWeightsFile() throws {
        let thrown = try checkInputsError(editFiles: { model in
            try FileManager.default.removeItem(at: model.appendingPathComponent("model.safetensors"))
        })
        #expect((thrown as? SafeTensorsError)?.kind == .noModel)
    }

    @Test func missingConfigJSON() throws {
        let thrown = try checkInputsError(editFiles: { model in
            try FileManager.default.removeItem(at: model.appendingPathComponent("config.json"))
        })
        #expect(thrown is QuantizeJobError)
        #expect(text(thrown).contains("model/config.json"))
        #expect(text(thrown).contains("not found"))
    }

    @Test(arguments: ["{\"model_type\": \"llama\",", "", "[1, 2]", "{\"model_type\": 3}"])
    func malformedConfigJSON(contents: String) throws {
        let thrown = try checkInputsError(editFiles: { model in
            try Data(contents.utf8).write(to: model.appendingPathComponent("config.json"))
        })
        let configError = try #require(thrown as? LlamaConfigError)
        #expect(configError.source.hasSuffix("model/config.json"))
    }

    @Test(arguments: ["hidden_size", "num_hidden_layers", "vocab_size"])
    func configMissingARequiredField(field: String) throws {
        let thrown = try checkInputsError(editConfig: { $0.removeValue(forKey: field) })
        #expect((thrown as? LlamaConfigError)?.field == field)
    }

    @Test func weightOnlyModeloptIsRefusedBeforeReadingAnything() async throws {
        // The format check comes first: even a model directory that does not exist gets the format error.
        try await withTemporaryDirectory("coordctl-input") { parent async throws in
            let model = parent.appendingPathComponent("no-such-model"), output = parent.appendingPathComponent("OUT")
            let job = makeJob(model: model, output: output, scheme: .nvfp4a16, layout: .modelopt)
            let thrown = expectFailure { _ = try job.checkInputs() }
            #expect((thrown as? CheckpointError)?.subject == "--format modelopt")
            #expect(text(thrown).contains("compressed-tensors"))
            let runThrown = await expectFailure {
                _ = try await quantize(model: model, output: output, scheme: .nvfp4a16, layout: .modelopt)
            }
            #expect((runThrown as? CheckpointError)?.subject == "--format modelopt")
            #expect(try entries(of: parent, prefix: "OUT") == [])
        }
    }

    @Test func w4a4CalibratesTheFixtureModelLikeTheReferenceForward() async throws {
        try await withTemporaryDirectory("coordctl-input") { parent async throws in
            let output = parent.appendingPathComponent("OUT")
            let summary = try await quantize(model: Fixtures.tinyLlama, output: output, scheme: .nvfp4) { options in
                options.calibration.dataPath = Fixtures.directory.appendingPathComponent("tiny-llama-calib.jsonl").path
                options.calibration.selection.minTokens = 1
                options.calibration.activationPrecision = .float32  // the fixture amax comes from an f32 forward
            }
            let reference = try Fixtures.referenceAmax()
            let config = try Fixtures.tinyConfig()
            // One value per observed input: 2 layers × 4 fused groups, each against every member's reference.
            #expect(summary.activationAmax.values.reduce(0) { $0 + $1.count } == 8)
            for linear in config.allLinears {
                let amax = try #require(summary.activationAmax[linear.layer]?[linear.kind.group], "\(linear.name)")
                let expected = try #require(reference[linear.name])
                #expect(abs(Double(amax.value) - expected) <= expected * 1e-4, "\(linear.name)")
            }
        }
    }

    @Test func calibrationWithNoSampleLongEnoughFailsBeforeWriting() async throws {
        try await withTemporaryDirectory("coordctl-input") { parent async throws in
            let output = parent.appendingPathComponent("OUT")
            let thrown = await expectFailure {
                _ = try await quantize(model: Fixtures.tinyLlama, output: output, scheme: .nvfp4) { options in
                    options.calibration.dataPath = Fixtures.directory.appendingPathComponent("tiny-llama-calib.jsonl").path
                }
            }
            #expect(text(thrown).contains("150"))
            #expect(try entries(of: parent, prefix: "OUT") == [])
        }
    }

    @Test func existingOutputWithoutForce() async throws {
        try await withTemporaryDirectory("coordctl-input") { parent async throws in
            let output = parent.appendingPathComponent("OUT")
            try FileManager.default.createDirectory(at: output, withIntermediateDirectories: false)
            try Data("keep".utf8).write(to: output.appendingPathComponent("keep.txt"))
            let checked = expectFailure { _ = try makeJob(model: Fixtures.tinyLlama, output: output).checkInputs() }
            let run = await expectFailure { _ = try await quantize(model: Fixtures.tinyLlama, output: output) }
            for thrown in [checked, run] {
                #expect((thrown as? CheckpointError)?.subject == output.standardizedFileURL.path)
                #expect(text(thrown).contains("--force"))
            }
            #expect(try entries(of: parent, prefix: "") == ["OUT"])
            #expect(try entries(of: output, prefix: "") == ["keep.txt"])
        }
    }

    @Test func maxShardSizeIsParsedStrictly() {
        for text in ["abc", "0", "-5GB"] {
            let thrown = expectFailure { _ = try ShardPlanner.parseSize(text) }
            #expect((thrown as? CheckpointError)?.subject == "--max-shard-size")
        }
    }
}
