import ActorSystem
import ClusterProtocol
import ClusterState
import Foundation
import Logging
import ServiceLifecycle
import Transport

/// coordd as a swift-service-lifecycle `Service`: hosts the ``Coordinator`` actor on a started actor system, resumes
/// unfinished jobs, watches peers and receives exported tensors. On graceful shutdown (SIGTERM) the job runners stop
/// at their next step and everything persisted stays in SQLite; the system's own service then closes the listener.
public struct CoordinatorService: Service {
    public struct Configuration: Sendable {
        public var listen: NodeAddress
        public var stateDirectory: String
        public var token: ClusterToken?
        public var settings = CoordinatorSettings()
        public var transport = TransportConfiguration()

        public init(listen: NodeAddress, stateDirectory: String, token: ClusterToken?) {
            self.listen = listen
            self.stateDirectory = stateDirectory
            self.token = token
        }
    }

    let configuration: Configuration
    let system: ClusterActorSystem
    let logger: Logger
    /// Called once the listener is bound (tests and `coordctl quantize` learn the port this way).
    let onReady: (@Sendable (NodeAddress) -> Void)?

    /// Starts the actor system coordd serves on: listening on `configuration.listen`, which must be loopback without a
    /// token. Run it as a ``ClusterActorSystemService`` listed before this service in the same group, so that it
    /// shuts down after the job runners have stopped.
    public static func startSystem(configuration: Configuration, logger: Logger) async throws -> ClusterActorSystem {
        if configuration.token == nil && configuration.transport.tls == nil {
            guard configuration.listen.isLoopback else {
                throw CoordinatorError.badSetting(
                    option: "--listen \(configuration.listen)",
                    reason: "is not a loopback address; without TLS (--tls-cert/--tls-key/--tls-ca) or --token-file coordd listens on loopback only")
            }
            logger.warning(Logger.Message(stringLiteral: "no TLS and no cluster token: listening on loopback only (\(configuration.listen)); "
                           + "give --tls-cert/--tls-key/--tls-ca to accept workers on other hosts"))
        }
        return try await ClusterActorSystem.start(
            identity: NodeIdentity(name: configuration.transport.tls?.name ?? "coordinator", role: .coordinator),
            listen: configuration.listen,
            token: configuration.token, configuration: configuration.transport, logger: logger)
    }

    public init(configuration: Configuration, system: ClusterActorSystem, logger: Logger,
                onReady: (@Sendable (NodeAddress) -> Void)? = nil) {
        self.configuration = configuration
        self.system = system
        self.logger = logger
        self.onReady = onReady
    }

    public func run() async throws {
        let system = self.system
        let logger = self.logger
        let store = try ClusterStateStore(stateDirectory: configuration.stateDirectory)
        defer { try? store.close() }
        let coordinator = try system.makeActor(named: WellKnownActor.coordinator) {
            Coordinator(actorSystem: system, store: store, settings: configuration.settings, logger: logger)
        }
        let bound = system.boundAddress!
        logger.info("coordd listening", metadata: ["address": "\(bound)", "state": "\(configuration.stateDirectory)"])
        onReady?(bound)
        try await coordinator.whenLocal { try await $0.resumeUnfinishedJobs() }

        // Serve until graceful shutdown (SIGTERM) reaches this service: then stop the job runners (their state stays
        // in SQLite) and end the loops by cancellation. The actor system closes after this returns (its service is
        // listed first, so the group shuts it down last).
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                for await event in system.peerEvents {
                    switch event {
                    case .disconnected(let peer, let reason) where peer.identity.role == .worker
                        && peer.purpose == .control:
                        await coordinator.whenLocal {
                            await $0.peerDisconnected(name: peer.identity.name, connection: peer.connection, reason: "\(reason)")
                        }
                    case .authenticationFailed(let address, let reason):
                        logger.warning("refused a peer that failed authentication",
                                       metadata: ["address": "\(address)", "reason": "\(reason)"])
                    default:
                        break
                    }
                }
            }
            group.addTask {
                // Every incoming bulk connection is a worker streaming exported layer tensors.
                await system.receiveIncomingTensors(logger: logger, expectedBytes: { peer, id in
                    await coordinator.whenLocal { await $0.expectedExportBytes(from: peer, id: id) } ?? nil
                }) { peer, id, bytes in
                    await coordinator.whenLocal { await $0.receiveExportedTensor(from: peer, id: id, bytes: bytes) }
                }
            }
            group.addTask {
                // Stale heartbeats: a worker whose connection stays up but whose heartbeats stopped is lost.
                let interval = configuration.settings.heartbeatSeconds
                while !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(Int64(interval * 1000)))
                    await coordinator.whenLocal { await $0.loseWorkersWithStaleHeartbeats() }
                }
            }
            try? await gracefulShutdown()
            logger.info("shutting down: stopping job runners; unfinished jobs resume at the next start")
            await coordinator.whenLocal { await $0.drain() }
            group.cancelAll()
        }
    }
}
