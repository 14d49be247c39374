import Foundation
import NVFP4
import SafeTensors

/// Writes a small, valid Llama model directory (config.json + model.safetensors of random BF16 weights) for a
/// given shape, so each input-checking test can break exactly one thing of an otherwise good model.
struct TinyModelBuilder {
    var hiddenSize = 32
    var intermediateSize = 64
    var attentionHeads = 2
    var keyValueHeads = 1
    var layers = 2
    var vocabSize = 48
    var tieWordEmbeddings = false
    var seed: UInt64 = 0x5EED

    struct Tensor {
        var name: String
        var dtype: SafeTensorsDType
        var shape: [Int]
        var bytes: Data
    }

    var headDim: Int { hiddenSize / attentionHeads }

    /// config.json as an object; tests edit it before writing.
    func config() -> [String: Any] {
        [
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": hiddenSize,
            "intermediate_size": intermediateSize,
            "num_attention_heads": attentionHeads,
            "num_key_value_heads": keyValueHeads,
            "num_hidden_layers": layers,
            "vocab_size": vocabSize,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "hidden_act": "silu",
            "tie_word_embeddings": tieWordEmbeddings,
            "torch_dtype": "bfloat16",
            "bos_token_id": 1,
            "eos_token_id": 2,
        ]
    }

    /// Every tensor a Llama checkpoint of this shape holds, written in name order.
    func tensors() -> [Tensor] {
        var generator = SplitMix64(seed: seed)
        func random(_ name: String, _ shape: [Int], around center: Float = 0, spread: Float = 0.1) -> Tensor {
            let count = shape.reduce(1, *)
            var bytes = Data(capacity: count * 2)
            for _ in 0..<count {
                let value = center + spread * (generator.nextUnit() * 2 - 1)
                withUnsafeBytes(of: BFloat16.fromFloat(value).littleEndian) { bytes.append(contentsOf: $0) }
            }
            return Tensor(name: name, dtype: .bf16, shape: shape, bytes: bytes)
        }
        let q = attentionHeads * headDim, kv = keyValueHeads * headDim
        var result = [random("model.embed_tokens.weight", [vocabSize, hiddenSize])]
        for layer in 0..<layers {
            let prefix = "model.layers.\(layer)"
            result += [
                random("\(prefix).input_layernorm.weight", [hiddenSize], around: 1),
                random("\(prefix).post_attention_layernorm.weight", [hiddenSize], around: 1),
                random("\(prefix).self_attn.q_proj.weight", [q, hiddenSize]),
                random("\(prefix).self_attn.k_proj.weight", [kv, hiddenSize]),
                random("\(prefix).self_attn.v_proj.weight", [kv, hiddenSize]),
                random("\(prefix).self_attn.o_proj.weight", [hiddenSize, q]),
                random("\(prefix).mlp.gate_proj.weight", [intermediateSize, hiddenSize]),
                random("\(prefix).mlp.up_proj.weight", [intermediateSize, hiddenSize]),
                random("\(prefix).mlp.down_proj.weight", [hiddenSize, intermediateSize]),
            ]
        }
        result.append(random("model.norm.weight", [hiddenSize], around: 1))
        if !tieWordEmbeddings { result.append(random("lm_head.weight", [vocabSize, hiddenSize])) }
        return result
    }

    /// Writes the model into `directory` (created if needed), after `editConfig` and `editTensors`.
    @discardableResult
    func write(to directory: URL, editConfig: (inout [String: Any]) -> Void = { _ in },
               editTensors: (inout [Tensor]) -> Void = { _ in }) throws -> URL {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        var config = config()
        editConfig(&config)
        try JSONSerialization.data(withJSONObject: config, options: [.prettyPrinted, .sortedKeys])
            .write(to: directory.appendingPathComponent("config.json"))
        var tensors = tensors()
        editTensors(&tensors)
        let path = directory.appendingPathComponent("model.safetensors").path
        let writer = try SafeTensorsWriter(path: path, tensors: tensors.map {
            PlannedTensor(name: $0.name, dtype: $0.dtype, shape: $0.shape)
        })
        for tensor in tensors { try writer.write(tensor.name, data: tensor.bytes) }
        try writer.finish()
        return directory
    }
}

extension Array where Element == TinyModelBuilder.Tensor {
    /// The tensor named `name`; traps if absent, since tests name tensors the builder writes.
    subscript(named name: String) -> TinyModelBuilder.Tensor {
        get { first { $0.name == name }! }
        set { self[firstIndex { $0.name == name }!] = newValue }
    }
}

/// A small deterministic generator, so a failing case reproduces.
struct SplitMix64 {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    mutating func nextUnit() -> Float { Float(next() >> 40) / Float(1 << 24) }
}
