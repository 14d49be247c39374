import ActorSystem
import ArgumentParser
import ClusterProtocol
import CommandLineOptions
import Coordinator
import Foundation
import Logging
import MetricsEndpoint
import ServiceLifecycle
import Transport

@main
struct Coordd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "coordd",
        abstract: "The NVFP4Cluster coordinator daemon.",
        discussion: """
            Keeps jobs and workers in SQLite under --state-dir, plans which worker holds which decoder layers, \
            routes calibration chunks through the workers, merges their statistics and writes the final checkpoint \
            to each job's output path (on this machine).

            Security: with --tls-cert/--tls-key/--tls-ca every connection is mutual TLS 1.3 and a node's identity is \
            its certificate's name (`coordctl certs` makes a cluster CA and node certificates). The cluster token \
            (an HMAC challenge-response; the token never crosses the wire) is checked inside TLS when given. Without \
            TLS, coordd listens on loopback only, unless --insecure-token-only. SIGTERM stops gracefully: running \
            jobs keep their state and resume when coordd starts again.

            Metrics: --metrics-listen [HOST:]PORT serves Prometheus metrics at http://HOST:PORT/metrics (jobs by \
            state, layers calibrated and exported, export bytes and time, connection and authentication failures; \
            Docs/operations.md#metrics lists every series). A bare port listens on loopback; off unless given.
            """,
        version: commandLineVersion)

    @Option(name: .long, help: "Address to listen on, HOST:PORT. Non-loopback addresses need TLS (or --insecure-token-only).")
    var listen: String = "127.0.0.1:7070"

    @Option(name: .long, help: "Directory for coordd.sqlite (jobs, workers, plans, statistics).")
    var stateDir: String

    @Option(name: .long, help: ArgumentHelp("A directory inside which job outputs may be written (repeatable). A job whose output is elsewhere is refused, whatever --force says; without any, coordd writes nothing.", valueName: "DIR"))
    var outputRoot: [String] = []

    @OptionGroup var token: TokenOptions

    @OptionGroup var tls: TLSOptions

    @Flag(name: .long, help: "Listen beyond loopback with the cluster token alone, without TLS: every frame travels in the clear and can be altered on the path. For trusted, isolated links only.")
    var insecureTokenOnly = false

    @Option(name: .long, help: "Seconds a job waits for a lost worker before re-planning its layers onto the others.")
    var workerGrace: Double = 30

    @Option(name: .long, help: "Seconds a worker that owes a chunk report or an export may go without progress before it counts as hung; to it is added the time of the work between two reports at 50 GFLOP/s. A hung worker's layers are re-planned onto the others when they can hold them, or the job fails naming the worker and what it was doing.")
    var progressTimeout: Double = 300

    @Option(name: .long, help: "Seconds one compute call (loading a range, calibrating a chunk) may take.")
    var computeTimeout: Double = 3600

    @Option(name: .long, help: "Seconds without a heartbeat after which a worker is lost, even if its connection stays up.")
    var heartbeatTimeout: Double = 15

    @OptionGroup var metrics: MetricsOptions

    @OptionGroup var logging: LoggingOptions

    func run() async throws {
        ProcessMemory.returnLargeBlocksToTheSystem()
        logging.bootstrap()
        // Before anything else records: swift-metrics takes one bootstrap per process.
        let metricsAddress = try metrics.address()
        let metricsRegistry = metricsAddress.map { _ in MetricsEndpoint.bootstrap() }
        let logger = Logger(label: "coordd")
        var configuration = CoordinatorService.Configuration(
            listen: try NodeAddress(parsing: listen), stateDirectory: stateDir,
            token: try token.loadToken())
        configuration.settings.workerGraceSeconds = workerGrace
        guard progressTimeout > 0, computeTimeout > 0 else {
            throw ValidationError("--progress-timeout and --compute-timeout must be positive")
        }
        configuration.settings.progressTimeoutSeconds = progressTimeout
        configuration.settings.computeCallTimeoutSeconds = computeTimeout
        guard heartbeatTimeout > configuration.settings.heartbeatSeconds else {
            throw ValidationError("--heartbeat-timeout must be longer than the heartbeat interval (\(configuration.settings.heartbeatSeconds) s)")
        }
        configuration.settings.staleHeartbeatSeconds = heartbeatTimeout
        configuration.settings.outputRoots = outputRoot
        if outputRoot.isEmpty {
            logger.warning("no --output-root: every job will be refused until coordd is started with one")
        }
        configuration.transport.tls = try tls.loadTLS()
        configuration.transport.allowTokenOnlyBeyondLoopback = insecureTokenOnly
        // The metrics listener first: an address in use fails the start, before this node joins the cluster.
        var metricsServices: [any Service] = []
        if let metricsAddress, let metricsRegistry {
            metricsServices = try await MetricsService.start(host: metricsAddress.host, port: metricsAddress.port,
                                                             registry: metricsRegistry, logger: logger)
        }
        let system = try await CoordinatorService.startSystem(configuration: configuration, logger: logger)
        // Shut down in reverse: the coordinator stops its jobs first, then the actor system closes its connections,
        // and the metrics listener last, so a scrape still answers meanwhile.
        let group = ServiceGroup(configuration: .init(
            services: metricsServices + [ClusterActorSystemService(system: system),
                                         CoordinatorService(configuration: configuration, system: system, logger: logger)],
            gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
        logger.info("coordd stopped")
    }
}

