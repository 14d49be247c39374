import ActorSystem
import ArgumentParser
import Checkpoint
import CommandLineOptions
import ClusterProtocol
import Foundation
import Logging
import MetricsEndpoint
import ServiceLifecycle
import Transport
import Worker

@main
struct Workerd: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "workerd",
        abstract: "The NVFP4Cluster worker daemon: holds a range of decoder layers and calibrates and exports them.",
        discussion: """
            Registers with coordd (and again whenever coordd restarts), then waits for work. The model directory \
            of a job must be readable at the same path here as on the coordinator (local copy or shared storage); \
            the worker checks the config.json hash before loading.

            Hidden states of the chunks entering this worker's range are kept under --scratch until the job ends, \
            so an interrupted job resumes from the start of the range. SIGTERM stops after the chunk in progress.

            Metrics: --metrics-listen [HOST:]PORT serves Prometheus metrics at http://HOST:PORT/metrics (tokens, \
            chunk latency, worker-to-worker and export bytes and time, hidden-state and GPU memory, connection and \
            authentication failures; Docs/operations.md#metrics lists every series). A bare port listens on \
            loopback; off unless given.

            Transport: --transport auto (default) offers RDMA verbs to the next worker when this node has an ACTIVE \
            port, and stays on TCP where it has none or the next worker refuses, logging why; --transport rdma \
            refuses to start, naming what is missing, and fails the job if the next worker refuses RDMA. An RDMA \
            link that fails mid-job falls back to TCP for the rest of the job. The RDMA links have run only on a \
            simulated fabric in the tests, never on RDMA hardware. `coordctl doctor rdma` lists the node's devices, \
            ports and GIDs; `coordctl doctor rdma --peer HOST:PORT` on another node tests RDMA to this workerd, \
            which checks every byte (one test at a time, beside any job).
            """,
        version: commandLineVersion)

    @Option(name: .long, help: "coordd's address, HOST:PORT.")
    var coordinator: String = "127.0.0.1:7070"

    @Option(name: .long, help: "The node name coordd must prove when dialed (its certificate's name with TLS).")
    var coordinatorName: String = "coordinator"

    @Option(name: .long, help: "Address to listen on for the coordinator and the previous worker, HOST:PORT (port 0: any free port). Non-loopback addresses need TLS (or --insecure-token-only).")
    var listen: String = "127.0.0.1:0"

    @Option(name: .long, help: "Address other nodes reach this worker at, when it differs from --listen (e.g. listening on 0.0.0.0).")
    var advertise: String?

    @Option(name: .long, help: "Worker name, unique in the cluster (default: the name in --tls-cert, else the host name). With TLS it must be the certificate's name.")
    var name: String?

    @OptionGroup var device: DeviceOptions

    @OptionGroup var token: TokenOptions

    @OptionGroup var tls: TLSOptions

    @Flag(name: .long, help: "Listen beyond loopback with the cluster token alone, without TLS: every frame travels in the clear and can be altered on the path. For trusted, isolated links only.")
    var insecureTokenOnly = false

    @Option(name: .long, help: "Directory for kept hidden states and spill files.")
    var scratch: String = FileManager.default.temporaryDirectory.appendingPathComponent("workerd").path

    @Option(name: .long, help: "Memory for layer weights (e.g. 100GB; default 80% of RAM). A range that needs more is calibrated one layer at a time: correct, but not pipelined with the other workers.")
    var memoryBudget: String?

    @OptionGroup var gpuMemory: GPUMemoryOptions

    @Option(name: .long, help: "Seconds the data path to the next worker may stay down. Meanwhile this worker dials again with backoff and resends the chunk in flight; after it, the chunk fails and coordd decides (re-plans or fails the job, naming the link).")
    var linkTimeout: Int = 60

    @OptionGroup var activationTransport: ActivationTransportOptions

    @Option(name: .long, help: .hidden)
    var debugChunkDelayMs: Int = 0

    @OptionGroup var metrics: MetricsOptions

    @OptionGroup var logging: LoggingOptions

    func run() async throws {
        ProcessMemory.returnLargeBlocksToTheSystem()
        logging.bootstrap()
        // Before anything else records: swift-metrics takes one bootstrap per process.
        let metricsAddress = try metrics.address()
        let metricsRegistry = metricsAddress.map { _ in MetricsEndpoint.bootstrap() }
        let transportTLS = try tls.loadTLS()
        let workerName = name ?? transportTLS?.name ?? ProcessInfo.processInfo.hostName
        let logger = Logger(label: "workerd.\(workerName)")
        // First: `--transport rdma` on a node without usable RDMA fails the start, before this node joins the cluster.
        let activationLinks = try activationTransport.setup(logger: logger)
        var configuration = WorkerService.Configuration(
            coordinator: try NodeAddress(parsing: coordinator), listen: try NodeAddress(parsing: listen), name: workerName,
            device: device.device, token: try token.loadToken(),
            scratchDirectory: URL(fileURLWithPath: scratch))
        configuration.advertise = try advertise.map { try NodeAddress(parsing: $0) }
        configuration.transport.tls = transportTLS
        configuration.coordinatorName = coordinatorName
        configuration.transport.allowTokenOnlyBeyondLoopback = insecureTokenOnly
        configuration.chunkDelay = .milliseconds(debugChunkDelayMs)
        guard linkTimeout > 0 else {
            throw WorkerError.badSetting(worker: workerName, option: "--link-timeout \(linkTimeout)", reason: "must be at least 1 second")
        }
        configuration.linkTimeout = .seconds(linkTimeout)
        configuration.activationLinks = activationLinks
        if let memoryBudget { configuration.memoryBudget = try ShardPlanner.parseSize(memoryBudget) }
        configuration.gpuMemoryLimit = try gpuMemory.limit()
        // The metrics listener first: an address in use fails the start, before this node joins the cluster.
        var metricsServices: [any Service] = []
        if let metricsAddress, let metricsRegistry {
            metricsServices = try await MetricsService.start(host: metricsAddress.host, port: metricsAddress.port,
                                                             registry: metricsRegistry, logger: logger)
        }
        let system = try await WorkerService.startSystem(configuration: configuration, logger: logger)
        // Shut down in reverse: the worker finishes its chunk first, then the actor system closes its connections,
        // and the metrics listener last, so a scrape still answers meanwhile.
        let group = ServiceGroup(configuration: .init(
            services: metricsServices + [ClusterActorSystemService(system: system),
                                         WorkerService(configuration: configuration, system: system, logger: logger)],
            gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
        logger.info("workerd stopped")
    }
}

