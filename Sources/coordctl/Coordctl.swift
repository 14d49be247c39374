import ArgumentParser
import ClusterClient
import ClusterProtocol
import CPUBackend
import Calibration
import Checkpoint
import CommandLineOptions
import ComputeBackend
import Foundation
import JobModel
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
        version: commandLineVersion,
        subcommands: [Quantize.self, Submit.self, Status.self, List.self, Workers.self, Cancel.self, GC.self, Eval.self, Report.self, Certs.self,
                      Doctor.self]
    )

    /// Accepts the connection options before the command name too (`coordctl --coordinator H:P status JOB`), by
    /// moving them behind it, where the client commands declare them.
    static func main() async {
        ProcessMemory.returnLargeBlocksToTheSystem()
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

/// `[--coordinator X] [--token-file F] [--timeout S] COMMAND rest…` → `COMMAND --coordinator X … rest…` (after
/// `doctor SUBCOMMAND` for the doctor).
func movingLeadingConnectionOptions(_ arguments: [String]) -> [String] {
    let names = ["--coordinator", "--coordinator-name", "--token-file", "--timeout", "--tls-cert", "--tls-key", "--tls-ca"]
    var rest = arguments
    var leading: [String] = []
    while let first = rest.first, names.contains(where: { first == $0 || first.hasPrefix($0 + "=") }) {
        leading.append(rest.removeFirst())
        if !first.contains("="), !rest.isEmpty { leading.append(rest.removeFirst()) }
    }
    guard !leading.isEmpty, !rest.isEmpty else { return arguments }
    // `doctor rdma` declares them, not `doctor`.
    let at = rest.first == "doctor" && rest.count > 1 ? 2 : 1
    rest.insert(contentsOf: leading, at: at)
    return rest
}

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

    @OptionGroup var gpuMemory: GPUMemoryOptions

    @OptionGroup var logging: LoggingOptions

    func run() async throws {
        // The progress view goes to standard error (standard output carries the summary): redrawn on a terminal,
        // where info logs would break it up, one line per change otherwise.
        let terminal = isatty(STDERR_FILENO) == 1
        logging.bootstrap(defaultLevel: terminal ? .warning : .info)
        let logger = Logger(label: "coordctl.quantize")
        let display = ProgressDisplay(StatusDisplay(interactive: terminal, write: { FileHandle.standardError.write(Data($0.utf8)) }))
        let summary: QuantizeSummary
        do {
            summary = try await LocalCluster.quantize(options: try job.makeSpec(configSHA256: "").quantizeOptions,
                                                      gpuMemoryLimit: try gpuMemory.limit(), logger: logger, interrupts: InterruptSignal.install(),
                                                      observe: { display.show($0) })
        } catch let error as QuantizeJobError {
            guard case .interrupted = error else { throw error }
            FileHandle.standardError.write(Data("\(error)\n".utf8))
            // 128 + SIGINT, as a shell reports a command stopped by Ctrl-C.
            throw ExitCode(130)
        }
        print(summary.description)
    }
}

/// A ``StatusDisplay`` that the job's observer may call from any task; a terminal is redrawn at most once a second.
final class ProgressDisplay: @unchecked Sendable {
    private let lock = NSLock()
    private var display: StatusDisplay
    private var lastDrawn = ContinuousClock.now - .seconds(10)
    private var lastPhase: JobState?

    init(_ display: StatusDisplay) {
        self.display = display
    }

    func show(_ status: JobStatus) {
        lock.lock()
        defer { lock.unlock() }
        let now = ContinuousClock.now
        guard !display.interactive || status.phase != lastPhase || status.phase.isTerminal || now - lastDrawn >= .seconds(1) else { return }
        lastDrawn = now
        lastPhase = status.phase
        display.show(status)
    }
}

/// Ctrl-C while `quantize` runs: the first one cancels the job, which removes its partial output before the command
/// exits; a second one exits at once (the partial output may then remain, and the message says so).
enum InterruptSignal {
    private final class State: @unchecked Sendable {
        // Touched only on `queue`.
        var count = 0
        var source: (any DispatchSourceSignal)?
    }
    private static let queue = DispatchQueue(label: "coordctl.interrupt")
    private static let state = State()

    static func install() -> AsyncStream<Void> {
        let (stream, continuation) = AsyncStream<Void>.makeStream()
        signal(SIGINT, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: SIGINT, queue: queue)
        source.setEventHandler {
            state.count += 1
            if state.count == 1 {
                FileHandle.standardError.write(Data("\ninterrupted: cancelling the job (Ctrl-C again to exit at once)\n".utf8))
                continuation.yield()
            } else {
                FileHandle.standardError.write(Data("interrupted again: exiting now; an OUTPUT.partial-<id> directory may remain\n".utf8))
                exit(130)
            }
        }
        source.resume()
        queue.sync { state.source = source }
        return stream
    }
}
