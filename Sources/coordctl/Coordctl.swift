import ArgumentParser
import ClusterProtocol
import CPUBackend
import Calibration
import Checkpoint
import CommandLineOptions
import ComputeBackend
import Foundation
import LocalCluster
import Logging
import QuantizeJob

@main
struct Coordctl: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "coordctl",
        abstract: "Turn BF16 Llama-family checkpoints into NVFP4 checkpoints that vLLM serves.",
        discussion: """
            `coordctl quantize` runs a whole job on this machine. The output directory appears only once the \
            checkpoint has been written and re-read against every rule a loader relies on.

            A cluster runs coordd on one node and workerd on each node; `coordctl submit` starts a job there and \
            `coordctl status JOB --watch` follows it. The client commands take --coordinator HOST:PORT and \
            --token-file F (before or after the command name).
            """,
        subcommands: [Quantize.self, Submit.self, Status.self, List.self, Workers.self, Cancel.self, Eval.self]
    )

    /// Accepts the connection options before the command name too (`coordctl --coordinator H:P status JOB`), by
    /// moving them behind it, where the client commands declare them.
    static func main() async {
        let arguments = movingLeadingConnectionOptions(Array(CommandLine.arguments.dropFirst()))
        do {
            var command = try parseAsRoot(arguments)
            if var asyncCommand = command as? AsyncParsableCommand {
                try await asyncCommand.run()
            } else {
                try command.run()
            }
        } catch {
            exit(withError: error)
        }
    }
}

/// `[--coordinator X] [--token-file F] [--timeout S] COMMAND rest…` → `COMMAND --coordinator X … rest…`.
func movingLeadingConnectionOptions(_ arguments: [String]) -> [String] {
    let names = ["--coordinator", "--token-file", "--timeout"]
    var rest = arguments
    var leading: [String] = []
    while let first = rest.first, names.contains(where: { first == $0 || first.hasPrefix($0 + "=") }) {
        leading.append(rest.removeFirst())
        if !first.contains("="), !rest.isEmpty { leading.append(rest.removeFirst()) }
    }
    guard !leading.isEmpty, !rest.isEmpty else { return arguments }
    rest.insert(contentsOf: leading, at: 1)
    return rest
}

extension QuantizationScheme: ExpressibleByArgument {}
extension CheckpointLayout: ExpressibleByArgument {}
extension ActivationPrecision: ExpressibleByArgument {}

struct Quantize: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Quantize a model on this machine (the cluster's coordinator and one worker, in this process).",
        discussion: """
            Reads a Hugging Face Llama-family directory (config.json plus model.safetensors or sharded files with \
            model.safetensors.index.json) and writes an NVFP4 checkpoint.

            Schemes:
              nvfp4     W4A4: NVFP4 weights and calibrated activation scales (default).
              nvfp4a16  weight-only NVFP4; activations stay 16-bit.

            Formats:
              compressed-tensors  vLLM's default NVFP4 layout (weight_packed, weight_scale, weight_global_scale).
              modelopt            NVIDIA modelopt's layout (weight, weight_scale, weight_scale_2, input_scale);
                                  W4A4 only, since vLLM's modelopt loader has no weight-only NVFP4.

            The job writes into OUTPUT.partial-<id>/ and renames it to OUTPUT only after verification (every tensor, \
            and every activation scale against the calibration it came from) and the quality gate: the perplexity of \
            the quantized model on held-out text must be finite and at most --max-perplexity-ratio (default 2) times \
            the original's. A checkpoint that fails the gate stays as OUTPUT.partial-<id>/ for inspection and the \
            command exits non-zero. An existing non-empty OUTPUT is replaced only with --force.
            """)

    @OptionGroup var job: JobOptions

    @OptionGroup var logging: LoggingOptions

    func run() async throws {
        logging.bootstrap()
        let logger = Logger(label: "coordctl.quantize")
        let summary = try await LocalCluster.quantize(options: try job.makeOptions(), logger: logger)
        print(summary.description)
    }
}

/// The options of a job, shared by `quantize` and `submit`.
struct JobOptions: ParsableArguments {
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

    @Option(name: .long, help: "Number of calibration samples.")
    var samples: Int = 256

    @Option(name: .long, help: "Calibration records shorter than this many tokens are skipped.")
    var minTokens: Int = 150

    @Option(name: .long, help: "Calibration records longer than this are truncated.")
    var maxTokens: Int = 1200

    @Option(name: .long, help: "Shuffle calibration records with this seed before selecting them.")
    var seed: UInt64?

    @OptionGroup var device: DeviceOptions

    @Option(name: .long, help: "Memory for calibration hidden states (e.g. 8GB); beyond it they spill to --scratch-dir.")
    var activationMemory: String = "8GB"

    @Option(name: .long, help: "Most tokens batched into one calibration forward pass (a longer sample is one chunk of its own).")
    var chunkTokens: Int = 4096

    @Option(name: .long, help: "Directory for spilled hidden states (default: the system temporary directory).")
    var scratchDir: String?

    @Option(name: .long, help: "Calibration activations: bf16 (round where a BF16 forward rounds, as modelopt calibrates) or f32.")
    var activationPrecision: ActivationPrecision = .bfloat16

    @Option(name: .long, help: "Held-out samples for the closing quality report (perplexity of the original against the quantized model); 0 skips the report and its gate.")
    var evalSamples: Int = 16

    @Option(name: .long, help: ArgumentHelp("Quality gate: the job fails, and its checkpoint stays as OUTPUT.partial-<id>, when the quantized perplexity is not finite or exceeds X times the original's.", valueName: "X"))
    var maxPerplexityRatio: Double = QualityGate.defaultMaxPerplexityRatio

    @Flag(name: .long, help: "Turn the quality gate off: the checkpoint is kept whatever its perplexity (the report is still printed).")
    var noQualityGate = false

    func validate() throws {
        if evalSamples < 0 { throw ValidationError("--eval-samples must not be negative") }
        if !maxPerplexityRatio.isFinite || maxPerplexityRatio < 1 {
            throw ValidationError("--max-perplexity-ratio must be a number of at least 1 (got \(maxPerplexityRatio))")
        }
        if samples < 1 { throw ValidationError("--samples must be at least 1") }
        if chunkTokens < 1 { throw ValidationError("--chunk-tokens must be at least 1") }
        if minTokens < 1 { throw ValidationError("--min-tokens must be at least 1") }
        if maxTokens < minTokens { throw ValidationError("--max-tokens (\(maxTokens)) must be >= --min-tokens (\(minTokens))") }
    }

    /// The options of a one-machine job.
    func makeOptions() throws -> QuantizeOptions {
        var options = QuantizeOptions(modelDirectory: URL(fileURLWithPath: model),
                                      outputDirectory: URL(fileURLWithPath: output))
        options.scheme = scheme
        options.layout = format
        options.force = force
        options.omitScaleDTypeKeys = omitScaleDtypeKeys
        options.maxShardSize = try ShardPlanner.parseSize(maxShardSize)
        options.calibration.dataPath = calib
        options.calibration.selection = CalibrationOptions(samples: samples, minTokens: minTokens, maxTokens: maxTokens,
                                                           seed: seed)
        options.calibration.device = device.device
        options.calibration.activationMemoryBudget = try ShardPlanner.parseSize(activationMemory)
        options.calibration.scratchDirectory = scratchDir.map { URL(fileURLWithPath: $0) }
        options.calibration.activationPrecision = activationPrecision
        options.calibration.chunkTokens = chunkTokens
        options.evaluationSamples = evalSamples
        options.maxPerplexityRatio = noQualityGate ? nil : maxPerplexityRatio
        return options
    }

    /// The options of a cluster job, with absolute paths (they are read on other machines).
    func makeSpec() throws -> JobSpec {
        var options = try makeOptions()
        options.modelDirectory = options.modelDirectory.standardizedFileURL
        options.outputDirectory = options.outputDirectory.standardizedFileURL
        return try JobSpec(options: options)
    }
}



