import ActorSystem
import ArgumentParser
import ClusterProtocol
import CommandLineOptions
import Coordinator
import Foundation
import Logging
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

            Security: peers authenticate with the cluster token (an HMAC challenge-response; the token never \
            crosses the wire). Without --token-file, coordd listens on loopback only. SIGTERM stops gracefully: \
            running jobs keep their state and resume when coordd starts again.
            """)

    @Option(name: .long, help: "Address to listen on, HOST:PORT. Non-loopback addresses need --token-file.")
    var listen: String = "127.0.0.1:7070"

    @Option(name: .long, help: "Directory for coordd.sqlite (jobs, workers, plans, statistics).")
    var stateDir: String

    @OptionGroup var token: TokenOptions

    @Option(name: .long, help: "Seconds a job waits for a lost worker before re-planning its layers onto the others.")
    var workerGrace: Double = 30

    @OptionGroup var logging: LoggingOptions

    func run() async throws {
        logging.bootstrap()
        let logger = Logger(label: "coordd")
        var configuration = CoordinatorService.Configuration(
            listen: try NodeAddress(parsing: listen), stateDirectory: stateDir,
            token: try token.loadToken())
        configuration.settings.workerGraceSeconds = workerGrace
        let system = try await CoordinatorService.startSystem(configuration: configuration, logger: logger)
        // Shut down in reverse: the coordinator stops its jobs first, then the actor system closes its connections.
        let group = ServiceGroup(configuration: .init(
            services: [ClusterActorSystemService(system: system),
                       CoordinatorService(configuration: configuration, system: system, logger: logger)],
            gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
        logger.info("coordd stopped")
    }
}

