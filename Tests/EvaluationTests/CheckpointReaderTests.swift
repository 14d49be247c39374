import Checkpoint
import Evaluation
import Foundation
import LlamaModel
import NVFP4
import SafeTensors
import Testing

/// The tiny model's Linear quantized directly (BF16 source, fused-group S2), as the job does it.
func directQuantization(_ linear: LinearSpec, config: LlamaConfig, model: SafeTensorsModel) throws -> NVFP4Weight {
    func bf16(_ name: String) throws -> [UInt16] {
        try #require(try model.info(name).dtype == .bf16, "\(name) is expected to be BF16")
        return try model.withBytes(name) { bytes in
            (0..<(bytes.count / 2)).map { UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: 2 * $0, as: UInt16.self)) }
        }
    }
    let members = config.linears(layer: linear.layer).filter { $0.kind.group == linear.kind.group }
    let memberAmax = try members.map { member in
        try bf16(member.weightName).withUnsafeBufferPointer {
            try NVFP4Quantizer.amax(bf16: $0, cols: member.inFeatures, tensor: member.weightName)
        }
    }
    let s2 = FusedScales.sharedWeightScale2(memberAmax: memberAmax)
    return try bf16(linear.weightName).withUnsafeBufferPointer {
        try NVFP4Quantizer.quantize(bf16: $0, rows: linear.outFeatures, cols: linear.inFeatures, weightScale2: s2,
                                    tensor: linear.weightName)
    }
}

func bits(_ values: [Float]) -> [UInt32] { values.map(\.bitPattern) }

@Suite struct CheckpointReaderTests {
    @Test(arguments: CheckpointLayout.allCases)
    func detectsLayoutAndScheme(layout: CheckpointLayout) throws {
        try withTemporaryDirectory { directory in
            let output = directory.appendingPathComponent("out")
            try writeTinyCheckpoint(to: output, layout: layout)
            let checkpoint = try QuantizedCheckpoint(directory: output, originalConfig: try Fixtures.tinyConfig())
            #expect(checkpoint.layout == layout)
            #expect(checkpoint.scheme == .nvfp4)
        }
    }

    /// modelopt stores S2 itself, so the dequantized weights are those of a direct quantization, bit for bit.
    @Test func modeloptWeightsEqualDirectDequantization() throws {
        try withTemporaryDirectory { directory in
            let output = directory.appendingPathComponent("out")
            try writeTinyCheckpoint(to: output, layout: .modelopt)
            let config = try Fixtures.tinyConfig()
            let model = try Fixtures.tinyModel()
            let checkpoint = try QuantizedCheckpoint(directory: output, originalConfig: config)
            for linear in config.allLinears {
                let direct = try directQuantization(linear, config: config, model: model)
                #expect(try checkpoint.nvfp4Weight(linear) == direct, "\(linear.name)")
                #expect(bits(try checkpoint.dequantizedWeight(linear)) == bits(NVFP4Quantizer.dequantize(direct)), "\(linear.name)")
            }
        }
    }

    /// compressed-tensors stores f32(1/S2); where that reciprocal round-trips (all 14 Linears of the tiny
    /// model) the weights are bit-identical to a direct quantization and to the modelopt layout.
    @Test func compressedTensorsWeightsEqualDirectAndModelopt() throws {
        try withTemporaryDirectory { directory in
            let compressed = directory.appendingPathComponent("ct")
            let modelopt = directory.appendingPathComponent("mo")
            try writeTinyCheckpoint(to: compressed, layout: .compressedTensors)
            try writeTinyCheckpoint(to: modelopt, layout: .modelopt)
            let config = try Fixtures.tinyConfig()
            let model = try Fixtures.tinyModel()
            let fromCompressed = try QuantizedCheckpoint(directory: compressed, originalConfig: config)
            let fromModelopt = try QuantizedCheckpoint(directory: modelopt, originalConfig: config)
            for linear in config.allLinears {
                let direct = try directQuantization(linear, config: config, model: model)
                #expect(1 / (1 / direct.weightScale2) == direct.weightScale2, "fixture property: 1/S2 round-trips")
                let dequantized = bits(try fromCompressed.dequantizedWeight(linear))
                #expect(dequantized == bits(NVFP4Quantizer.dequantize(direct)), "\(linear.name)")
                #expect(dequantized == bits(try fromModelopt.dequantizedWeight(linear)), "\(linear.name)")
            }
        }
    }

    @Test func modeloptInputScaleIsAmaxOver2688Bitwise() throws {
        try withTemporaryDirectory { directory in
            let output = directory.appendingPathComponent("out")
            try writeTinyCheckpoint(to: output, layout: .modelopt)
            let config = try Fixtures.tinyConfig()
            let amax = try Fixtures.referenceAmax()
            let checkpoint = try QuantizedCheckpoint(directory: output, originalConfig: config)
            for linear in config.allLinears {
                let expected = try #require(amax[linear.name]) / 2688
                #expect(try checkpoint.inputScale(linear)?.value.bitPattern == expected.bitPattern, "\(linear.name)")
            }
            for layer in 0..<config.numHiddenLayers {
                let scales = try checkpoint.inputScales(layer: layer)
                for group in FusedGroup.allCases {
                    let module = "\(LlamaConfig.layerPrefix(layer)).\(group.members[0].rawValue)"
                    #expect(scales[group]?.value.bitPattern == (try #require(amax[module]) / 2688).bitPattern)
                }
            }
        }
    }

    /// compressed-tensors stores f32(1/Sx): reading gives f32(1/stored), which re-stores to the same bytes and is
    /// within one ulp of amax/2688 (several input scales of the tiny model do not round-trip exactly).
    @Test func compressedTensorsInputScaleWithinOneULP() throws {
        try withTemporaryDirectory { directory in
            let output = directory.appendingPathComponent("out")
            try writeTinyCheckpoint(to: output, layout: .compressedTensors)
            let config = try Fixtures.tinyConfig()
            let amax = try Fixtures.referenceAmax()
            let checkpoint = try QuantizedCheckpoint(directory: output, originalConfig: config)
            let model = try SafeTensorsModel(directory: output.path)
            var exact = 0
            for linear in config.allLinears {
                let expected = try #require(amax[linear.name]) / 2688
                let read = try #require(try checkpoint.inputScale(linear)).value
                let stored = try model.withBytes(linear.name + ".input_global_scale") {
                    Float(bitPattern: UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self)))
                }
                #expect(stored == 1 / expected)
                #expect(1 / read == stored)
                #expect(read == expected || read == expected.nextUp || read == expected.nextDown, "\(linear.name)")
                if read == expected { exact += 1 }
            }
            #expect(exact > 0)
        }
    }

    @Test func weightOnlyCheckpointHasNoInputScales() throws {
        try withTemporaryDirectory { directory in
            let output = directory.appendingPathComponent("out")
            try writeTinyCheckpoint(to: output, layout: .compressedTensors, scheme: .nvfp4a16)
            let config = try Fixtures.tinyConfig()
            let checkpoint = try QuantizedCheckpoint(directory: output, originalConfig: config)
            #expect(checkpoint.scheme == .nvfp4a16)
            for linear in config.allLinears { #expect(try checkpoint.inputScale(linear) == nil) }
            #expect(try checkpoint.inputScales(layer: 0).isEmpty)
            #expect(try NVFP4InputFakeQuantization(checkpoint: checkpoint) == nil)
            let model = try Fixtures.tinyModel()
            let linear = config.allLinears[3]
            #expect(bits(try checkpoint.dequantizedWeight(linear))
                        == bits(NVFP4Quantizer.dequantize(try directQuantization(linear, config: config, model: model))))
        }
    }

    @Test func readsShardedCheckpoint() throws {
        try withTemporaryDirectory { directory in
            let sharded = directory.appendingPathComponent("sharded")
            let single = directory.appendingPathComponent("single")
            let shards = try writeTinyCheckpoint(to: sharded, layout: .modelopt, maxShardSize: 150_000)
            try writeTinyCheckpoint(to: single, layout: .modelopt)
            #expect(shards > 1)
            let config = try Fixtures.tinyConfig()
            let fromShards = try QuantizedCheckpoint(directory: sharded, originalConfig: config)
            let fromSingle = try QuantizedCheckpoint(directory: single, originalConfig: config)
            for linear in config.allLinears {
                #expect(try fromShards.nvfp4Weight(linear) == (try fromSingle.nvfp4Weight(linear)))
                #expect(try fromShards.inputScale(linear) == (try fromSingle.inputScale(linear)))
            }
        }
    }

    /// The reference exports of modelopt and llm-compressor (Tests/Fixtures) open too.
    @Test func readsReferenceExports() throws {
        let config = try Fixtures.tinyConfig()
        let modelopt = try QuantizedCheckpoint(
            directory: Fixtures.directory.appendingPathComponent("tiny-llama-nvfp4-modelopt"), originalConfig: config)
        let compressed = try QuantizedCheckpoint(
            directory: Fixtures.directory.appendingPathComponent("tiny-llama-nvfp4-llmcompressor"), originalConfig: config)
        #expect(modelopt.layout == .modelopt && modelopt.scheme == .nvfp4)
        #expect(compressed.layout == .compressedTensors && compressed.scheme == .nvfp4)
        // modelopt's export is bit-exact with our quantizer (spec §3).
        let model = try Fixtures.tinyModel()
        let linear = config.allLinears[0]
        #expect(try modelopt.nvfp4Weight(linear) == (try directQuantization(linear, config: config, model: model)))
    }

    /// Embeddings and norms are read from the checkpoint, which is what a server loads (AWQ folds its scales into
    /// the norms); our checkpoints copy them verbatim, so their figures do not move. A checkpoint without them
    /// leaves them to the original.
    @Test func storedNormsAreTheCheckpointsAndMissingOnesTheOriginals() throws {
        try withTemporaryDirectory { directory in
            let output = directory.appendingPathComponent("out")
            try writeTinyCheckpoint(to: output, layout: .modelopt)
            let config = try Fixtures.tinyConfig()
            let model = try Fixtures.tinyModel()
            let changed = LlamaConfig.inputLayerNormName(layer: 1)
            let dropped = LlamaConfig.finalNormName
            // Ones in place of the original's norm, and no final norm at all.
            try rewriteTensors(in: output) { name, data in
                if name == dropped { return nil }
                guard name == changed else { return data }
                // 1.0 in the stored dtype: BF16 0x3F80 or F32 0x3F800000, little-endian.
                let one: [UInt8] = data.count == 2 * config.hiddenSize ? [0x80, 0x3F] : [0x00, 0x00, 0x80, 0x3F]
                return Data((0..<config.hiddenSize).flatMap { _ in one })
            }
            let checkpoint = try QuantizedCheckpoint(directory: output, originalConfig: config)
            let source = DequantizedWeightSource(base: model, checkpoint: checkpoint)
            let shape = [config.hiddenSize]
            #expect(try source.floats(changed, expectedShape: shape) == [Float](repeating: 1, count: config.hiddenSize))
            #expect(try model.floats(changed, expectedShape: shape) != [Float](repeating: 1, count: config.hiddenSize))
            #expect(bits(try source.floats(dropped, expectedShape: shape)) == bits(try model.floats(dropped, expectedShape: shape)))
        }
    }

    @Test func dequantizedSourceOverridesOnlyLinearWeights() throws {
        try withTemporaryDirectory { directory in
            let output = directory.appendingPathComponent("out")
            try writeTinyCheckpoint(to: output, layout: .modelopt)
            let config = try Fixtures.tinyConfig()
            let model = try Fixtures.tinyModel()
            let checkpoint = try QuantizedCheckpoint(directory: output, originalConfig: config)
            let source = DequantizedWeightSource(base: model, checkpoint: checkpoint)
            let linear = config.allLinears[5]
            #expect(source.describeTensor(linear.weightName) == WeightTensorDescription(dtype: "F32", shape: linear.shape))
            #expect(bits(try source.floats(linear.weightName, expectedShape: linear.shape))
                        == bits(try checkpoint.dequantizedWeight(linear)))
            for tensor in config.nonQuantizedTensors {
                #expect(source.describeTensor(tensor.name) == model.describeTensor(tensor.name))
                #expect(bits(try source.floats(tensor.name, expectedShape: tensor.shape))
                            == bits(try model.floats(tensor.name, expectedShape: tensor.shape)))
            }
        }
    }
}
