import ArgumentParser
import Checkpoint
import CommandLineOptions
import Foundation
import JobModel
import LlamaModel

/// The options of a job, shared by `quantize` and `submit`.
public struct JobOptions: ParsableArguments {
    public init() {}

    @Option(name: .long, help: "Source model directory (Hugging Face layout).")
    var model: String

    @Option(name: .long, help: "Output directory for the NVFP4 checkpoint.")
    var output: String

    @Option(name: .long, help: "nvfp4 (W4A4) or nvfp4a16 (weight-only).")
    var scheme: QuantizationScheme = .nvfp4

    @Option(name: .long, help: "Checkpoint layout: compressed-tensors or modelopt.")
    var format: CheckpointLayout = .compressedTensors

    @Option(name: .long, help: "Approximate size of each safetensors shard, e.g. 5GB, 500MB, 2GiB.")
    var maxShardSize: String = "5GB"

    @Flag(name: .long, help: "Replace an existing non-empty output directory.")
    var force = false

    @Flag(name: .long, help: "Leave scale_dtype and zp_dtype out of the compressed-tensors config (for vLLM builds pinned to compressed-tensors <= 0.12).")
    var omitScaleDtypeKeys = false

    @Option(name: .long, help: "Calibration data: a .jsonl (text or input_ids per line), .txt/.md file, or a directory of them. Default: the built-in set.")
    var calib: String?

    @Option(name: .long, parsing: .unconditional, help: "Number of calibration samples.")
    var samples: Int = 256

    @Option(name: .long, parsing: .unconditional, help: "Calibration records shorter than this many tokens are skipped.")
    var minTokens: Int = 150

    @Option(name: .long, parsing: .unconditional, help: "Calibration records longer than this are truncated.")
    var maxTokens: Int = 1200

    @Option(name: .long, parsing: .unconditional, help: "Shuffle calibration records with this seed before selecting them.")
    var seed: UInt64?

    @OptionGroup var device: DeviceOptions

    @Option(name: .long, help: "Memory for calibration hidden states (e.g. 8GB); beyond it they spill to --scratch-dir.")
    var activationMemory: String = "8GB"

    @Option(name: .long, parsing: .unconditional, help: "Most tokens batched into one calibration forward pass (a longer sample is one chunk of its own).")
    var chunkTokens: Int = 4096

    @Option(name: .long, help: "Directory for spilled hidden states (default: the system temporary directory).")
    var scratchDir: String?

    @Option(name: .long, help: "Calibration activations: bf16 (round where a BF16 forward rounds, as modelopt calibrates) or f32.")
    var activationPrecision: ActivationPrecision = .bfloat16

    @Option(name: .long, parsing: .unconditional, help: "Held-out samples for the closing quality report (perplexity of the original against the quantized model); 0 skips the report and its gate.")
    var evalSamples: Int = 16

    @Option(name: .long, parsing: .unconditional, help: ArgumentHelp("Quality gate: the job fails, and its checkpoint stays as OUTPUT.partial-<id>, when the quantized perplexity is not finite or exceeds X times the original's.", valueName: "X"))
    var maxPerplexityRatio: Double = QualityGate.defaultMaxPerplexityRatio

    @Flag(name: .long, help: "Turn the quality gate off: the checkpoint is kept whatever its perplexity (the report is still printed).")
    var noQualityGate = false

    @Option(name: .long, help: ArgumentHelp(
        "Keep the Linears whose module name matches PATTERN unquantized, in the source dtype (repeatable).",
        discussion: """
            fnmatch-style on module names (* also crosses dots, ?, [set]), e.g. 'model.layers.0.*' (every Linear \
            of layer 0), '*.down_proj' (every down_proj), 'model.layers.1[0-5].mlp.*'. The checkpoint lists the \
            excluded modules in compressed-tensors' ignore or modelopt's exclude_modules, so vLLM loads them as \
            BF16. q/k/v and gate/up are fused by vLLM and must be excluded together; a pattern that takes part of \
            such a group, or matches nothing, is refused.
            """,
        valueName: "PATTERN"))
    var exclude: [String] = []

    @Option(name: .long, help: ArgumentHelp(
        "How weights are rounded to NVFP4: rtn or gptq.",
        discussion: """
            rtn (the default) rounds to nearest: modelopt's packed weights and scales, bit for bit. gptq keeps rtn's \
            block and global scales (unless --scale-search) and chooses each E2M1 code so that the rounding error of \
            a column is compensated by the columns after it, weighted by the Hessian of the Linear's input, which \
            accumulates during the calibration forward (one per shared input: q/k/v share one, gate/up share one; \
            Hessians stay on the worker that holds the layer). W4A4 only. It costs a Hessian update per calibration \
            chunk, a Cholesky factorization per input once its layer is calibrated, a second forward per layer with \
            --propagate quantized (about 2.5x rtn's time on SmolLM2 on the CPU). On the CPU it holds in_features² × 8 \
            bytes per shared input of every layer a worker calibrates; on CUDA (--device cuda, which also needs \
            cuSOLVER; TF32 products in the column loop) in_features² × 4 bytes of GPU memory per shared input of each \
            layer being calibrated, with the chunks' hidden states on the host. Same tensors and dtypes as rtn: vLLM loads either.
            """))
    var algorithm: QuantizationAlgorithm = .rtn

    @Option(name: .long, parsing: .unconditional, help: "GPTQ: columns quantized between two lazy updates of the rest (standard 128).")
    var gptqBlockSize: Int?

    @Option(name: .long, parsing: .unconditional, help: "GPTQ: dampening added to the Hessian's diagonal, as a fraction of its mean (standard 0.01).")
    var gptqDampening: Double?

    @Flag(name: .long, help: "GPTQ: quantize columns in descending order of their input's energy (activation order).")
    var gptqActOrder = false

    @Option(name: .long, help: ArgumentHelp(
        "GPTQ: what layer L+1 calibrates on: quantized (default) or original.",
        discussion: """
            quantized: the outputs of layer L with its GPTQ weights, as the quantized model computes them (each layer \
            runs twice, and a worker runs its layers one at a time over all its chunks). original: the outputs of the \
            unquantized layer (one forward per layer).
            """))
    var propagate: GPTQPropagationMode?

    @Option(name: .long, help: ArgumentHelp(
        "Block scales: none (round-to-nearest's) or mse.",
        discussion: """
            mse: for each block of 16, the FP8 scale among round-to-nearest's and the two codes either side whose \
            rounding leaves the smallest squared error, weighted by the diagonal of the input's Hessian with \
            --algorithm gptq. Same tensors and global scales; five roundings per block instead of one, on the CPU.
            """))
    var scaleSearch: ScaleSearch = .off

    /// The GPTQ settings these options ask for; nil for rtn.
    var gptqSettings: GPTQSettings? {
        guard algorithm == .gptq else { return nil }
        return GPTQSettings(blockSize: gptqBlockSize ?? GPTQSettings.standardBlockSize,
                            dampening: gptqDampening ?? GPTQSettings.standardDampening, activationOrder: gptqActOrder,
                            propagation: propagate ?? .quantized)
    }

    public func validate() throws {
        // Sizes are checked here, so that a bad one is a usage error (exit 64) like every other.
        for (option, text) in [("--max-shard-size", maxShardSize), ("--activation-memory", activationMemory)] {
            do {
                _ = try ShardPlanner.parseSize(text)
            } catch {
                throw ValidationError("\(option) '\(text)' is not a size such as 5GB, 500MB or 2GiB")
            }
        }
        if evalSamples < 0 { throw ValidationError("--eval-samples must not be negative (got \(evalSamples))") }
        if !maxPerplexityRatio.isFinite || maxPerplexityRatio < 1 {
            throw ValidationError("--max-perplexity-ratio must be a number of at least 1 (got \(maxPerplexityRatio))")
        }
        if samples < 1 { throw ValidationError("--samples must be at least 1 (got \(samples))") }
        if chunkTokens < 1 { throw ValidationError("--chunk-tokens must be at least 1 (got \(chunkTokens))") }
        if minTokens < 1 { throw ValidationError("--min-tokens must be at least 1 (got \(minTokens))") }
        if maxTokens < minTokens { throw ValidationError("--max-tokens (\(maxTokens)) must be >= --min-tokens (\(minTokens))") }
        try validateExclusion()
        if algorithm == .rtn, gptqBlockSize != nil || gptqDampening != nil || gptqActOrder || propagate != nil {
            throw ValidationError("--gptq-block-size, --gptq-dampening, --gptq-act-order and --propagate apply to --algorithm gptq")
        }
        if let problem = gptqSettings?.problem(scheme: scheme) { throw ValidationError(problem) }
    }

    /// `--exclude` against the model's config, when it can be read here (a model that cannot is reported by the
    /// job's own input checks, and coordd checks the patterns again on its side).
    func validateExclusion() throws {
        guard !exclude.isEmpty,
              let config = try? ModelDirectory(URL(fileURLWithPath: model)).loadConfig() else { return }
        do {
            _ = try LinearExclusion(patterns: exclude, config: config)
        } catch {
            throw ValidationError("--exclude: \(error)")
        }
    }

    /// The job these options describe. `configSHA256` is that of the model's config.json (the engine hashes it
    /// itself when it runs the job in this process).
    public func makeSpec(configSHA256: String, absolutePaths: Bool = false) throws -> JobSpec {
        let modelURL = URL(fileURLWithPath: model)
        let outputURL = URL(fileURLWithPath: output)
        return JobSpec(
            jobID: String(UInt32.random(in: 0...UInt32.max), radix: 16),
            modelPath: absolutePaths ? modelURL.standardizedFileURL.path : modelURL.path,
            outputPath: absolutePaths ? outputURL.standardizedFileURL.path : outputURL.path,
            scheme: scheme, layout: format, maxShardSize: try ShardPlanner.parseSize(maxShardSize),
            omitScaleDTypeKeys: omitScaleDtypeKeys, force: force,
            calibration: JobSpec.Calibration(
                dataPath: calib, samples: samples, seed: seed, minTokens: minTokens, maxTokens: maxTokens,
                chunkTokens: chunkTokens, activationPrecision: activationPrecision,
                activationMemoryBudget: try ShardPlanner.parseSize(activationMemory),
                scratchDirectory: scratchDir.map { URL(fileURLWithPath: $0).path }, device: device.device),
            evaluationSamples: evalSamples, evaluationMaxTokens: JobSpec.defaultEvaluationMaxTokens,
            maxPerplexityRatio: noQualityGate ? nil : maxPerplexityRatio, configSHA256: configSHA256,
            excludePatterns: exclude, gptq: gptqSettings, scaleSearch: scaleSearch)
    }

    /// The job of a cluster: absolute paths (they are read on other machines) and the model's config hash, which
    /// every worker checks.
    public func makeSpec() throws -> JobSpec {
        try makeSpec(configSHA256: try ModelCheck.configSHA256(modelDirectory: URL(fileURLWithPath: model).standardizedFileURL),
                     absolutePaths: true)
    }
}

extension QuantizationScheme: ExpressibleByArgument {}
extension QuantizationAlgorithm: ExpressibleByArgument {}
extension GPTQPropagationMode: ExpressibleByArgument {}
extension ScaleSearch: ExpressibleByArgument {}
extension CheckpointLayout: ExpressibleByArgument {}
extension ActivationPrecision: ExpressibleByArgument {}
