/// # Checkpoint
///
/// Writes NVFP4 checkpoints that vLLM loads, in either on-disk layout of `nvfp4-checkpoint-spec.md` §6–§9, and
/// refuses to call one finished before it has been re-read and checked against every rule of §10.
///
/// - ``CheckpointLayout`` and ``QuantizationScheme`` name what is written.
/// - ``LinearTensorLayout`` maps one quantized Linear to its tensors (names, dtypes, shapes, bytes).
/// - ``ShardPlanner`` assigns tensors to `model-0000i-of-0000N.safetensors` files of about `--max-shard-size`.
/// - ``CheckpointWriter`` streams the planned tensors to disk layer by layer, then writes the index,
///   `config.json` with its `quantization_config`, `hf_quant_config.json` (modelopt) and the tokenizer files.
/// - ``CheckpointVerifier`` re-reads a written directory and enforces the failure-mode rules.
/// - ``OutputDirectory`` makes the output appear atomically: everything is written under
///   `OUTPUT.partial-<id>/` and renamed into place only after verification.
import Foundation
@_exported import JobModel
import LlamaModel

public struct CheckpointError: Error, CustomStringConvertible, Equatable {
    /// The file, tensor or field at fault.
    public let subject: String
    public let message: String

    public init(_ subject: String, _ message: String) {
        self.subject = subject
        self.message = message
    }

    public var description: String { "\(subject): \(message)" }
}

extension CheckpointLayout {
    /// Whether this layout can express the scheme in a way vLLM loads.
    public func validate(scheme: QuantizationScheme) throws {
        if self == .modelopt && scheme == .nvfp4a16 {
            throw CheckpointError(
                "--format modelopt",
                "weight-only NVFP4 (nvfp4a16) cannot be written in the modelopt layout: vLLM's modelopt loader has "
                    + "no weight-only NVFP4 method. Use --format compressed-tensors, or --scheme nvfp4.")
        }
    }
}

/// Files copied verbatim from the source model when present (spec §9).
public let verbatimModelFiles = [
    "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
    "tokenizer.model", "chat_template.jinja", "chat_template.json",
]
