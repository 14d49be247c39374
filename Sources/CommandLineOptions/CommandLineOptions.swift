/// # CommandLineOptions
///
/// The options that coordd, workerd and coordctl share, declared once so that they are spelled, explained and checked
/// the same way everywhere: `--log-level`, `--token-file`, `--tls-cert`/`--tls-key`/`--tls-ca`, `--device`, the
/// daemons' `--metrics-listen`, and workerd's `--transport`/`--rdma-device`/`--rdma-gid-index`.
import ArgumentParser
import ClusterProtocol
import JobModel
import Logging
import RDMATransport
import Transport

/// `--log-level`. Logs go to standard error; standard output carries only results.
public struct LoggingOptions: ParsableArguments {
    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error (default: info; warning for `quantize` on a terminal, where the progress view is redrawn).")
    public var logLevel: Logger.Level?

    public init() {}

    /// Sends every logger of the process to standard error at `--log-level`, or at `defaultLevel` without it.
    public func bootstrap(defaultLevel: Logger.Level = .info) {
        let level = logLevel ?? defaultLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
    }
}

/// `--token-file`: the cluster token that authenticates every peer.
public struct TokenOptions: ParsableArguments {
    @Option(name: .long, help: "File holding the cluster token (mode 600); coordd, every workerd and coordctl use the same file. Without it, daemons listen on loopback only.")
    public var tokenFile: String?

    public init() {}

    /// The token, or nil without `--token-file`; a bad file is an error naming it.
    public func loadToken() throws -> ClusterToken? { try tokenFile.map { try TokenFile.load(path: $0) } }
}

/// `--tls-cert`, `--tls-key`, `--tls-ca`: mutual TLS 1.3 on every connection (`coordctl certs` makes the files).
public struct TLSOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("This node's certificate (PEM), from `coordctl certs issue`; its name is the node's identity.", valueName: "FILE"))
    public var tlsCert: String?

    @Option(name: .long, help: ArgumentHelp("The private key of --tls-cert (PEM, mode 600).", valueName: "FILE"))
    public var tlsKey: String?

    @Option(name: .long, help: ArgumentHelp("The cluster CA (PEM) that signed every node's certificate.", valueName: "FILE"))
    public var tlsCA: String?

    public init() {}

    public func validate() throws {
        let given = [tlsCert, tlsKey, tlsCA].filter { $0 != nil }.count
        if given != 0 && given != 3 {
            throw ValidationError("--tls-cert, --tls-key and --tls-ca go together: give all three or none")
        }
    }

    /// The TLS setup, or nil without the options; a bad file is an error naming it.
    public func loadTLS() throws -> TransportTLS? {
        guard let tlsCert, let tlsKey, let tlsCA else { return nil }
        return try TransportTLS(certificateFile: tlsCert, keyFile: tlsKey, caFile: tlsCA)
    }
}

/// `--device`: where calibration computes.
public struct DeviceOptions: ParsableArguments {
    @Option(name: .long, help: "Compute device for calibration: cpu, cuda (GPU 0), cuda:N, or auto (a GPU when one is usable, else the CPU).")
    public var device: String = "auto"

    public init() {}

    public func validate() throws {
        do {
            _ = try DeviceChoice(parsing: device)
        } catch {
            throw ValidationError(error.description)
        }
    }
}

/// `--gpu-memory`: the most GPU memory this process may allocate (workerd, `coordctl quantize`).
public struct GPUMemoryOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "Most GPU memory this process may allocate, e.g. 96GB or 80GiB (default: what the driver reports free). Calibration sizes its token passes and resident hidden states inside it, and an allocation past it fails, naming it. Give it on a GB10, whose GPU memory is the host's: \"free\" there is the machine's.",
        valueName: "SIZE"))
    public var gpuMemory: String?

    public init() {}

    /// The limit in bytes, nil when not given.
    public func limit() throws -> Int? {
        guard let gpuMemory else { return nil }
        guard let bytes = ByteCount.parse(gpuMemory) else {
            throw ValidationError("--gpu-memory '\(gpuMemory)' is not a size such as 96GB, 80GiB or a byte count")
        }
        return bytes
    }

    public func validate() throws { _ = try limit() }
}

/// `--metrics-listen`: where coordd and workerd serve `/metrics` (Prometheus text format). Off unless given.
public struct MetricsOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "Serve Prometheus metrics at http://HOST:PORT/metrics (plain HTTP, no authentication). A bare PORT listens on 127.0.0.1 (loopback); give a HOST (e.g. 0.0.0.0 or the node's address) only for a scraper elsewhere. Port 0 picks a free port (logged). Off unless given. Docs/operations.md#metrics lists the series.",
        valueName: "[HOST:]PORT"))
    public var metricsListen: String?

    public init() {}

    public func validate() throws {
        do {
            _ = try address()
        } catch {
            throw ValidationError("\(error)")
        }
    }

    /// The address to serve metrics on, or nil when `--metrics-listen` is not given. A bare port means loopback.
    public func address() throws -> NodeAddress? {
        guard let metricsListen else { return nil }
        if let port = Int(metricsListen) {
            guard (0...65535).contains(port) else {
                throw ClusterProtocolError.badAddress(metricsListen)
            }
            return NodeAddress(host: "127.0.0.1", port: port)
        }
        return try NodeAddress(parsing: metricsListen)
    }
}

/// `--transport auto|tcp|rdma`, `--rdma-device`, `--rdma-gid-index`: how hidden states travel to the next worker.
public struct ActivationTransportOptions: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp(
        "How hidden states travel between workers: auto (offer RDMA to the next worker when this node has a usable verbs port; TCP where it has none or the peer refuses, logging why), tcp, or rdma (fail at start, naming what is missing, when RDMA cannot be used here, and fail the job when the next worker refuses it). An RDMA link that fails mid-job falls back to TCP for the rest of the job. Tested on a simulated fabric only, never on RDMA hardware; `coordctl doctor rdma` shows what the node has.",
        valueName: "auto|tcp|rdma"))
    public var transport: ActivationTransportPreference = .auto

    @Option(name: .long, help: ArgumentHelp("The RDMA device to use (e.g. mlx5_0; default: the first with an ACTIVE port). Given more than once (or as a comma list, e.g. mlx5_0,mlx5_1: both halves of a ConnectX-7 port), each link stripes over one queue pair per device, in that order.", valueName: "NAME"))
    public var rdmaDevice: [String] = []

    /// `--rdma-device` values, comma lists split, in order.
    public var rdmaDevices: [String] {
        rdmaDevice.flatMap { $0.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) } }
    }

    @Option(name: .long, help: ArgumentHelp("The GID table index to use on the device's active port (default: its first RoCE v2 GID on Ethernet, preferring an IPv4 one; GID 0 on InfiniBand).", valueName: "N"))
    public var rdmaGidIndex: Int?

    public init() {}

    public func validate() throws {
        if let rdmaGidIndex, rdmaGidIndex < 0 {
            throw ValidationError("--rdma-gid-index \(rdmaGidIndex): a GID index is 0 or more")
        }
        if rdmaDevices.contains(where: \.isEmpty) {
            throw ValidationError("--rdma-device \(rdmaDevice.joined(separator: ",")): a device name is empty")
        }
        if rdmaDevices.count > RDMALinkHandshake.maxLanes {
            throw ValidationError("--rdma-device: \(rdmaDevices.count) devices; a link stripes over at most \(RDMALinkHandshake.maxLanes)")
        }
        if transport == .tcp, !rdmaDevice.isEmpty || rdmaGidIndex != nil {
            throw ValidationError("--rdma-device and --rdma-gid-index choose an RDMA port; they do nothing with --transport tcp")
        }
    }

    /// Resolves the options against this node (a survey of libibverbs, taken only when RDMA is possible) and logs
    /// the choice with its reason. Throws ``RDMATransportUnavailable`` for `--transport rdma` when RDMA cannot be used.
    public func decide(logger: Logger,
                       survey: () -> RDMASurvey = { RDMASurvey.take(logger: Logger(label: "rdma")) }) throws -> ActivationTransportDecision {
        let decision: ActivationTransportDecision
        do throws(RDMASelectionError) {
            decision = try ActivationTransportSelector.decide(preference: transport, devices: rdmaDevices, gidIndex: rdmaGidIndex,
                                                              survey: survey)
        } catch {
            throw RDMATransportUnavailable(reason: error)
        }
        ActivationTransportSelector.log(decision, preference: transport, logger: logger)
        return decision
    }

    /// ``decide(logger:survey:)``, then opens the chosen device for data: the setup workerd's links run on. A device
    /// that cannot carry data fails `rdma` and turns `auto` to TCP.
    public func setup(logger: Logger, locator: VerbsLibraryLocator = VerbsLibraryLocator()) throws -> ActivationLinkSetup {
        let decision = try decide(logger: logger, survey: { RDMASurvey.take(locator: locator, logger: Logger(label: "rdma")) })
        do throws(RDMASelectionError) {
            return try ActivationLinkSetup.open(decision, preference: transport,
                                                provider: { () throws(VerbsError) in try locator.open() }, logger: logger)
        } catch {
            throw RDMATransportUnavailable(reason: error)
        }
    }
}

/// `--transport rdma` on a node where RDMA cannot be used.
public struct RDMATransportUnavailable: Error, CustomStringConvertible, Equatable {
    public let reason: RDMASelectionError

    public var description: String { "--transport rdma: \(reason)" }
}

extension ActivationTransportPreference: ExpressibleByArgument {}

extension Logger.Level: @retroactive ExpressibleByArgument {}

/// What `--version` prints for every binary of this build.
public let commandLineVersion = NVFP4ClusterVersion.full
