import Tokenizer

/// The data loader tokenizes text the way the model saw it in training: with the post-processor's special
/// tokens (BOS for Llama-3.1+ and SmolLM2-style templates) added.
extension BPETokenizer: CalibrationTokenizer {
    public func encode(_ text: String) -> [Int] { encode(text, addSpecialTokens: true) }
}
