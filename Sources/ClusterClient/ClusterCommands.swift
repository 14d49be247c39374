/// # ClusterClient
///
/// coordctl's client verbs (`submit`, `status`, `list`, `workers`, `cancel`) and the job options they share with
/// `quantize`. They speak the wire contract only: this module links neither the engine nor a compute backend.
import ActorSystem
import ArgumentParser
import ClusterProtocol
import CommandLineOptions
import Distributed
import Foundation
import JobModel
import Logging
import Transport

/// How coordctl reaches coordd.
public struct ConnectionOptions: ParsableArguments {
    public init() {}

    @Option(name: .long, help: "coordd's address, HOST:PORT.")
    var coordinator: String = "127.0.0.1:7070"

    @Option(name: .long, help: "The node name coordd must prove (its certificate's name with TLS).")
    var coordinatorName: String = "coordinator"

    @OptionGroup var token: TokenOptions

    @OptionGroup var tls: TLSOptions

    @Option(name: .long, help: "Seconds to wait for coordd's answer.")
    var timeout: Double = 30

    /// Connects and resolves the coordinator actor; the caller shuts the system down.
    func connect() async throws -> (ClusterActorSystem, any CoordinatorEndpoint) {
        let address = try NodeAddress(parsing: coordinator)
        let token = try self.token.loadToken()
        var transport = TransportConfiguration()
        transport.defaultCallTimeout = .milliseconds(Int64(timeout * 1000))
        transport.tls = try tls.loadTLS()
        var logger = Logger(label: "coordctl")
        // Connection trouble is reported once, as a ClientError; the transport's own warnings would repeat it.
        logger.logLevel = .error
        let system = try await ClusterActorSystem.start(
            // With TLS the client is its certificate's name; otherwise a name of its own.
            identity: NodeIdentity(name: transport.tls?.name ?? "coordctl-\(ProcessInfo.processInfo.processIdentifier)",
                                   role: .client),
            listen: nil as NodeAddress?, token: token, configuration: transport, logger: logger)
        let coordinator = try $CoordinatorEndpoint.resolve(id: system.wellKnownID(WellKnownActor.coordinator, at: address, node: coordinatorName),
                                                           using: system)
        return (system, coordinator)
    }

    func withCoordinator<T>(_ body: (any CoordinatorEndpoint) async throws -> T) async throws -> T {
        let (system, coordinator) = try await connect()
        do {
            let result = try await body(coordinator)
            await system.shutdown()
            return result
        } catch {
            await system.shutdown()
            throw clientError(error)
        }
    }

    /// What went wrong, in the words of someone talking to coordd at this address.
    func clientError(_ error: any Error) -> ClientError {
        ClientError(error, address: coordinator, tokenFile: token.tokenFile, timeout: timeout)
    }
}

/// A client command's failure, naming coordd's address and what to do. Remote errors are decoded into the types
/// coordd threw; no Swift type name or internal state reaches the user.
public enum ClientError: Error, CustomStringConvertible, Equatable {
    case unreachable(address: String, reason: String)
    case tokenRequired(address: String)
    case tokenRejected(address: String, tokenFile: String)
    case timedOut(address: String, seconds: Double)
    /// Another node answered at coordd's address.
    case wrongNode(address: String, expected: String, found: String)
    case coordinator(address: String, CoordinatorError)
    /// coordd answered with an error of a kind this coordctl does not know (a newer coordd, say).
    case remote(address: String, message: String)

    init(_ error: any Error, address: String, tokenFile: String?, timeout: Double) {
        switch error {
        case let error as ClientError:
            self = error
        case let remote as RemoteCallError:
            if let refusal = try? remote.decode(as: CoordinatorError.self) {
                self = .coordinator(address: address, refusal)
            } else {
                self = .remote(address: address, message: remote.message)
            }
        case ClusterActorSystemError.connectFailed(_, let reason):
            self = .unreachable(address: address, reason: TransportError.plainConnectionFailure(reason))
        case ClusterActorSystemError.authenticationFailed:
            self = tokenFile.map { .tokenRejected(address: address, tokenFile: $0) } ?? .tokenRequired(address: address)
        case ClusterActorSystemError.wrongNode(_, let expected, let found):
            self = .wrongNode(address: address, expected: expected, found: found)
        case ClusterActorSystemError.callTimedOut:
            self = .timedOut(address: address, seconds: timeout)
        case ClusterActorSystemError.peerDisconnected(_, _, let reason):
            self = .unreachable(address: address, reason: "the connection dropped (\(reason))")
        default:
            self = .remote(address: address, message: "\(error)")
        }
    }


    public var description: String {
        switch self {
        case .unreachable(let address, let reason):
            "cannot reach coordd at \(address): \(reason) (is coordd running, and listening on that address?)"
        case .tokenRequired(let address):
            "coordd at \(address) requires a cluster token: pass --token-file with the file coordd was started with"
        case .tokenRejected(let address, let tokenFile):
            "coordd at \(address) rejected the cluster token in \(tokenFile): it is not the token coordd was started with"
        case .wrongNode(let address, let expected, let found):
            "the node at \(address) is '\(found)', not coordd ('\(expected)'); check --coordinator and --coordinator-name"
        case .timedOut(let address, let seconds):
            "coordd at \(address) did not answer within \(formatSeconds(seconds)) (--timeout)"
        case .coordinator(let address, .jobNotFound(let id)):
            "no job \(id) on coordd at \(address) (`coordctl list` shows the jobs it knows)"
        case .coordinator(let address, .jobAlreadyEnded(let id, let state)):
            "job \(id) on coordd at \(address) already \(state); there is nothing to cancel"
        case .coordinator(let address, let refusal):
            "coordd at \(address) refused: \(refusal)"
        case .remote(let address, let message):
            "coordd at \(address): \(message)"
        }
    }
}

/// `30 s`, `0.5 s`.
private func formatSeconds(_ seconds: Double) -> String {
    seconds == seconds.rounded() ? "\(Int(seconds)) s" : "\(seconds) s"
}


public struct Submit: AsyncParsableCommand {
    public init() {}

    public static let configuration = CommandConfiguration(
        abstract: "Submit a quantization job to coordd; prints the job id alone on the last line.",
        discussion: """
            Takes the options of `quantize`. The model directory must be readable at the same path on every worker \
            (local copies or shared storage); each worker checks the config.json hash before it starts. The output \
            is written by coordd, on its machine.

            Layers are split into contiguous ranges, one per worker, in proportion to each worker's memory, or as \
            --split says. Watch the job with `coordctl status JOB --watch`.
            """)

    @OptionGroup var connection: ConnectionOptions
    @OptionGroup var job: JobOptions

    @Option(name: .long, help: "Number of registered workers to use (default: all live ones).")
    var workers: Int?

    @Option(name: .long, help: "Layers per worker in route order, e.g. 40,40 (must add up to the model's layer count).")
    var split: String?

    public func validate() throws {
        try job.validate()
        if let workers, workers < 1 { throw ValidationError("--workers must be at least 1") }
        if workers != nil && split != nil { throw ValidationError("give --workers or --split, not both") }
    }

    public func run() async throws {
        let splitCounts = try split.map { text -> [Int] in
            try text.split(separator: ",").map {
                guard let count = Int($0.trimmingCharacters(in: .whitespaces)), count > 0 else {
                    throw ValidationError("--split \(text): expected positive layer counts such as 40,40")
                }
                return count
            }
        }
        let spec = try job.makeSpec()
        let submission = JobSubmission(spec: spec, workerCount: workers, split: splitCounts)
        let jobID = try await connection.withCoordinator { try await $0.submit(submission) }
        print("submitted; watch it with: coordctl status \(jobID) --watch")
        print(jobID)
    }
}

public struct Status: AsyncParsableCommand {
    public init() {}

    public static let configuration = CommandConfiguration(
        abstract: "Show a job: phase, layers calibrated and exported, rates, ETA, and each worker's range and progress.",
        discussion: """
            With --watch on a terminal the view is redrawn every second until the job ends: the job's phase, a \
            progress bar each for layers calibrated, layers exported and the quality report, the rates over the \
            last minute (layer-tokens/s while calibrating: tokens through one decoder layer; MB/s of checkpoint \
            while exporting), the ETA of the phase in progress and what the job waits for; then one row per worker: \
            its layers, device, the first of its layers still calibrating, its layer-tokens/s, memory and health. \
            When standard output is not a terminal, --watch prints one line per change instead.


            --json prints the stable schema documented in Docs/operations.md (schema_version 1, `state` at the top \
            level: queued, running, succeeded, failed or cancelled). The exit status is 0 unless the job failed (1) \
            or was cancelled (2), so scripts can wait with --watch.
            """)

    @OptionGroup var connection: ConnectionOptions

    @Argument(help: "The job id that submit printed.")
    var job: String

    @Flag(name: .long, help: "Follow the job until it ends: redraw on a terminal, one line per change otherwise.")
    var watch = false

    @Flag(name: .long, help: "Machine-readable output (one JSON object; with --watch one per line).")
    var json = false

    public func run() async throws {
        var display = StatusDisplay()
        let status = try await connection.withCoordinator { coordinator in
            var status: JobStatus
            repeat {
                status = try await coordinator.status(jobID: job)
                if json {
                    print(String(decoding: try status.jsonData(), as: UTF8.self))
                } else if watch {
                    display.show(status)
                } else {
                    print(StatusView.table(status))
                }
                if !watch || status.phase.isTerminal { break }
                try await Task.sleep(for: .seconds(1))
            } while true
            return status
        }
        switch status.state {
        case .failed: throw ExitCode(1)
        case .cancelled: throw ExitCode(2)
        default: break
        }
    }
}

public struct List: AsyncParsableCommand {
    public init() {}

    public static let configuration = CommandConfiguration(abstract: "List every job coordd knows, oldest first.")

    @OptionGroup var connection: ConnectionOptions

    @Flag(name: .long, help: "Machine-readable output: a JSON array of status objects.")
    var json = false

    public func run() async throws {
        let statuses = try await connection.withCoordinator { try await $0.list() }
        if json {
            let objects = try statuses.map { String(decoding: try $0.jsonData(), as: UTF8.self) }
            print("[" + objects.joined(separator: ",") + "]")
            return
        }
        if statuses.isEmpty { print("no jobs"); return }
        print(padded("JOB", 38) + padded("PHASE", 13) + padded("UPDATED", 22) + "OUTPUT")
        for status in statuses {
            print(padded(status.jobID, 38) + padded(status.phase.rawValue, 13) + padded(status.updatedAt, 22) + status.output)
        }
    }
}

public struct Workers: AsyncParsableCommand {
    public init() {}

    public static let configuration = CommandConfiguration(
        abstract: "List the registered workers. A peer that failed authentication never appears here.")

    @OptionGroup var connection: ConnectionOptions

    @Flag(name: .long, help: "Machine-readable output: a JSON array.")
    var json = false

    public func run() async throws {
        let workers = try await connection.withCoordinator { try await $0.workers() }
        if json {
            let encoder = JSONEncoder()
            encoder.keyEncodingStrategy = .convertToSnakeCase
            encoder.dateEncodingStrategy = .iso8601
            encoder.outputFormatting = [.sortedKeys]
            print(String(decoding: try encoder.encode(workers), as: UTF8.self))
            return
        }
        if workers.isEmpty { print("no workers registered"); return }
        for line in Self.table(workers) { print(line) }
    }

    /// The human listing: a header, then one line per worker.
    public static func table(_ workers: [WorkerRecord]) -> [String] {
        var lines = [padded("NAME", 16) + padded("ADDRESS", 22) + padded("DEVICE", 10) + padded("MEMORY", 10)
                     + padded("FREE DISK", 11) + padded("HEALTH", 8) + padded("LINK", 10) + "LAST HEARTBEAT"]
        for worker in workers {
            // The link to the next worker: its transport in the column, a fallback's reason at the end of the line.
            let link = worker.linkTransport.map { $0.split(separator: ":", maxSplits: 1).map(String.init) } ?? ["-"]
            lines.append(padded(worker.name, 16) + padded(worker.address, 22) + padded(worker.device, 10)
                         + padded(formatBytes(Int(worker.memoryBytes)), 10) + padded(formatBytes(Int(worker.freeDiskBytes)), 11)
                         + padded(worker.health.rawValue, 8) + padded(link[0], 10)
                         + ISO8601DateFormatter().string(from: worker.lastHeartbeat)
                         + (worker.deathReason.map { "  (\($0))" } ?? "")
                         + (link.count > 1 ? "  (link: \(link[1].trimmingCharacters(in: .whitespaces)))" : ""))
        }
        return lines
    }
}

public struct Cancel: AsyncParsableCommand {
    public init() {}

    public static let configuration = CommandConfiguration(
        abstract: "Cancel a job: stops its work on every worker and removes its partial output.")

    @OptionGroup var connection: ConnectionOptions

    @Argument(help: "The job id.")
    var job: String

    public func run() async throws {
        let status = try await connection.withCoordinator { try await $0.cancel(jobID: job) }
        print("job \(status.jobID): \(status.phase.rawValue)")
    }
}



public struct GC: AsyncParsableCommand {
    public init() {}

    public static let configuration = CommandConfiguration(
        commandName: "gc",
        abstract: "Remove the hidden states that workers keep for jobs that ended.",
        discussion: """
            A worker keeps the hidden states entering its range (under its --scratch) while a job runs, so that the \
            job can resume. coordd removes them when a job ends, and again when a worker that was away registers; \
            this removes what is left on every live worker for jobs that are neither queued nor running. It exits 1 \
            if a worker could not be asked.
            """)

    @OptionGroup var connection: ConnectionOptions

    public func run() async throws {
        let reports = try await connection.withCoordinator { try await $0.collectGarbage() }
        if reports.isEmpty { print("no live workers") }
        var failed = false
        for report in reports {
            if let error = report.error {
                print("\(report.worker): could not collect: \(error)")
                failed = true
            } else if report.removedJobs.isEmpty {
                print("\(report.worker): nothing to remove")
            } else {
                print("\(report.worker): removed the kept hidden states of \(report.removedJobs.joined(separator: ", "))")
            }
        }
        if failed { throw ExitCode(1) }
    }
}
