import Checkpoint
import Foundation
import NVFP4
import QuantizeJob
import SafeTensors
import Testing

/// Sources that are valid but unusual must give the same checkpoint as the plain BF16 model.
@Suite struct SourceVariantTests {
    /// Quantizes `plain` and `variant` builds of the same model and returns both outputs.
    func outputs(variant editTensors: (inout [TinyModelBuilder.Tensor]) -> Void, in parent: URL)
        async throws -> (plain: SafeTensorsModel, variant: SafeTensorsModel)
    {
        let plain = try TinyModelBuilder().write(to: parent.appendingPathComponent("plain"))
        let variant = try TinyModelBuilder().write(to: parent.appendingPathComponent("variant"), editTensors: editTensors)
        _ = try await quantize(model: plain, output: parent.appendingPathComponent("OUT-plain"))
        _ = try await quantize(model: variant, output: parent.appendingPathComponent("OUT-variant"))
        return (try SafeTensorsModel(directory: parent.appendingPathComponent("OUT-plain").path),
                try SafeTensorsModel(directory: parent.appendingPathComponent("OUT-variant").path))
    }

    @Test func oddAlignedBF16DataAndExtraSourceTensors() async throws {
        // A 1-byte tensor first puts every BF16 tensor at an odd offset; rotary inv_freq buffers appear in old
        // exports. Neither may change the output, and neither is copied (spec §8: nothing else is written).
        try await withTemporaryDirectory { parent async throws in
            let (plain, variant) = try await outputs(variant: { tensors in
                tensors.insert(.init(name: "aaa.odd", dtype: .u8, shape: [1], bytes: Data([7])), at: 0)
                tensors.append(.init(name: "model.layers.0.self_attn.rotary_emb.inv_freq", dtype: .f32, shape: [8],
                                     bytes: Data(count: 32)))
            }, in: parent)
            let source = try SafeTensorsFile(path: parent.appendingPathComponent("variant/model.safetensors").path)
            #expect(try source.info("model.embed_tokens.weight").dataOffsets.lowerBound % 2 == 1)
            #expect(variant.tensorNames == plain.tensorNames)
            for name in plain.tensorNames { #expect(try variant.data(name) == plain.data(name), "\(name)") }
        }
    }

    @Test(arguments: [SafeTensorsDType.f32, .f16])
    func nonFiniteInAWideWeight(dtype: SafeTensorsDType) throws {
        try withTemporaryDirectory { parent throws in
            let name = "model.layers.0.mlp.up_proj.weight"
            let model = try TinyModelBuilder().write(to: parent.appendingPathComponent("model"), editTensors: { tensors in
                let count = tensors[named: name].shape.reduce(1, *)
                var bytes = Data()
                for index in 0..<count {
                    let value: Float = index == 2 * 32 + 3 ? .infinity : 0.01
                    if dtype == .f32 {
                        withUnsafeBytes(of: value.bitPattern.littleEndian) { bytes.append(contentsOf: $0) }
                    } else {
                        withUnsafeBytes(of: Float16(value).bitPattern.littleEndian) { bytes.append(contentsOf: $0) }
                    }
                }
                tensors[named: name].dtype = dtype
                tensors[named: name].bytes = bytes
            })
            let thrown = expectFailure {
                _ = try makeJob(model: model, output: parent.appendingPathComponent("OUT")).checkInputs()
            }
            #expect(thrown as? NVFP4Error == .nonFinite(tensor: name, row: 2))
        }
    }
}
