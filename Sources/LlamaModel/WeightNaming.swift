// LinearKind and FusedGroup are plain data in JobModel (the wire contract carries statistics per fused group); this
// module's API is built on them, so its users see them too.
@_exported import JobModel

/// One quantizable Linear of a decoder layer: its module name and weight shape `[outFeatures, inFeatures]`.
public struct LinearSpec: Sendable, Equatable {
    public let layer: Int
    public let kind: LinearKind
    /// The module name, e.g. `model.layers.3.self_attn.q_proj`.
    public let name: String
    public let outFeatures: Int
    public let inFeatures: Int

    public init(layer: Int, kind: LinearKind, name: String, outFeatures: Int, inFeatures: Int) {
        self.layer = layer
        self.kind = kind
        self.name = name
        self.outFeatures = outFeatures
        self.inFeatures = inFeatures
    }

    /// The weight tensor name, `<name>.weight`.
    public var weightName: String { name + ".weight" }
    public var shape: [Int] { [outFeatures, inFeatures] }
}

/// A tensor that must exist in the source checkpoint, with its expected shape.
public struct TensorSpec: Sendable, Equatable {
    public let name: String
    public let shape: [Int]

    public init(name: String, shape: [Int]) {
        self.name = name
        self.shape = shape
    }
}

extension LlamaConfig {
    public static let embedTokensName = "model.embed_tokens.weight"
    public static let finalNormName = "model.norm.weight"
    public static let lmHeadName = "lm_head.weight"

    /// `model.layers.N`, the prefix of every tensor of decoder layer N.
    public static func layerPrefix(_ layer: Int) -> String { "model.layers.\(layer)" }
    public static func inputLayerNormName(layer: Int) -> String { "\(layerPrefix(layer)).input_layernorm.weight" }
    public static func postAttentionLayerNormName(layer: Int) -> String {
        "\(layerPrefix(layer)).post_attention_layernorm.weight"
    }

    /// The weight shape `[out, in]` of a Linear under this config.
    public func expectedShape(of kind: LinearKind) -> [Int] {
        let queryWidth = numAttentionHeads * headDim
        let keyValueWidth = numKeyValueHeads * headDim
        switch kind {
        case .q: return [queryWidth, hiddenSize]
        case .k, .v: return [keyValueWidth, hiddenSize]
        case .o: return [hiddenSize, queryWidth]
        case .gate, .up: return [intermediateSize, hiddenSize]
        case .down: return [hiddenSize, intermediateSize]
        }
    }

    /// The seven Linears of a layer, in `LinearKind.allCases` order.
    public func linears(layer: Int) -> [LinearSpec] {
        LinearKind.allCases.map { kind in
            let shape = expectedShape(of: kind)
            return LinearSpec(layer: layer, kind: kind, name: "\(Self.layerPrefix(layer)).\(kind.rawValue)",
                              outFeatures: shape[0], inFeatures: shape[1])
        }
    }

    /// Every quantizable Linear of the model, layer by layer.
    public var allLinears: [LinearSpec] { (0..<numHiddenLayers).flatMap { linears(layer: $0) } }

    /// The two RMSNorm weights of a layer: input_layernorm, then post_attention_layernorm.
    public func layerNorms(layer: Int) -> [TensorSpec] {
        [TensorSpec(name: Self.inputLayerNormName(layer: layer), shape: [hiddenSize]),
         TensorSpec(name: Self.postAttentionLayerNormName(layer: layer), shape: [hiddenSize])]
    }

    /// The tensors kept unquantized (spec §8): embeddings, the norms, and `lm_head` only when not tied.
    public var nonQuantizedTensors: [TensorSpec] {
        var tensors = [TensorSpec(name: Self.embedTokensName, shape: [vocabSize, hiddenSize])]
        for layer in 0..<numHiddenLayers { tensors += layerNorms(layer: layer) }
        tensors.append(TensorSpec(name: Self.finalNormName, shape: [hiddenSize]))
        if !tieWordEmbeddings { tensors.append(TensorSpec(name: Self.lmHeadName, shape: [vocabSize, hiddenSize])) }
        return tensors
    }

    /// The tensor whose rows produce the logits: `lm_head.weight`, or `embed_tokens` when tied.
    public var outputEmbeddingName: String { tieWordEmbeddings ? Self.embedTokensName : Self.lmHeadName }
}
