/// # LlamaModel
///
/// What this project knows about Llama-family checkpoints, independent of any compute:
/// - ``LlamaConfig`` parses and validates `config.json` (spec §11): bias-free SiLU decoders, full causal
///   attention with GQA, default or llama3 RoPE. Anything else is rejected with a ``LlamaConfigError`` that
///   names the file and field. The original bytes are kept in ``LlamaConfig/raw`` for the writer.
/// - Weight naming: ``LinearKind``, ``FusedGroup`` (spec §5), ``LinearSpec``, and the names of the tensors that
///   stay unquantized (spec §8).
/// - ``WeightSource``: read access to tensors by name, which backends load weights through, with in-memory and
///   overlay implementations, and `SafeTensorsModel` / `SafeTensorsFile` conforming; ``validateWeights(config:describe:)`` checks a model against its config before
///   any work starts.
/// - ``RopeParameters/inverseFrequencies(headDim:)``, shared by every backend so they rotate identically.
public enum LlamaModelOverview {}
