import ActorSystem
import ClusterProtocol
import Distributed
import Foundation
import JobModel
import Logging
import RDMATransport
import ServiceLifecycle
import Transport

/// workerd as a swift-service-lifecycle `Service`: on a started actor system, answers the coordinator's calls and
/// takes the predecessor's hidden states, registers with the coordinator (again after it restarts), sends heartbeats,
/// and on SIGTERM stops after the chunk in progress; kept hidden states stay on disk for a resume.
public struct WorkerService: Service {
    public struct Configuration: Sendable {
        public var coordinator: NodeAddress
        public var listen: NodeAddress
        /// The address peers use to reach this worker; the listen address when nil.
        public var advertise: NodeAddress?
        public var name: String
        public var device: String
        public var token: ClusterToken?
        public var scratchDirectory: URL
        public var memoryBytes: Int64 = Int64(ProcessInfo.processInfo.physicalMemory)
        public var transport = TransportConfiguration()
        /// The node name coordd must prove (`--coordinator-name`).
        public var coordinatorName = WellKnownActor.coordinatorNode
        /// Sleeps after each chunk (`--debug-chunk-delay-ms`): gives fault tests a mid-calibration moment.
        public var chunkDelay: Duration = .zero
        /// Bytes of layer weights held at once (`--memory-budget`); a larger range is calibrated one layer at a time.
        public var memoryBudget = Int(ProcessInfo.processInfo.physicalMemory) / 10 * 8
        /// `--gpu-memory`: most GPU memory the worker may allocate; nil: the driver's free memory.
        public var gpuMemoryLimit: Int?
        /// How long the data path to the next range may stay down before the send fails (`--link-timeout`); the
        /// worker dials again with backoff meanwhile and resends the chunk in flight.
        public var linkTimeout: Duration = .seconds(60)
        /// What activation links to and from other workers run on (`--transport`): TCP unless set.
        public var activationLinks: ActivationLinkSetup = .tcp()

        public init(coordinator: NodeAddress, listen: NodeAddress, name: String, device: String, token: ClusterToken?,
                    scratchDirectory: URL) {
            self.coordinator = coordinator
            self.listen = listen
            self.name = name
            self.device = device
            self.token = token
            self.scratchDirectory = scratchDirectory
        }
    }

    let configuration: Configuration
    let system: ClusterActorSystem
    let logger: Logger

    /// Starts the actor system workerd serves on: listening on `configuration.listen`, which must be loopback without
    /// a token. Run it as a ``ClusterActorSystemService`` listed before this service in the same group, so that it
    /// shuts down after the worker has finished its chunk.
    public static func startSystem(configuration: Configuration, logger: Logger) async throws -> ClusterActorSystem {
        if configuration.token == nil && configuration.transport.tls == nil && !configuration.listen.isLoopback {
            throw WorkerError.badSetting(
                worker: configuration.name, option: "--listen \(configuration.listen)",
                reason: "is not a loopback address; without TLS (--tls-cert/--tls-key/--tls-ca) or --token-file workerd listens on loopback only")
        }
        try FileManager.default.createDirectory(at: configuration.scratchDirectory, withIntermediateDirectories: true)
        return try await ClusterActorSystem.start(
            identity: NodeIdentity(name: configuration.name, role: .worker), listen: configuration.listen,
            token: configuration.token, configuration: configuration.transport, logger: logger)
    }

    public init(configuration: Configuration, system: ClusterActorSystem, logger: Logger) {
        self.configuration = configuration
        self.system = system
        self.logger = logger
    }

    public func run() async throws {
        let configuration = self.configuration
        let system = self.system
        let logger = self.logger
        let stopping = StopFlag()
        var advertised = configuration.advertise ?? system.boundAddress!
        if advertised.port == 0 { advertised.port = system.boundAddress!.port }
        if advertised.host == "0.0.0.0" || advertised.host == "::" {
            throw WorkerError.badSetting(worker: configuration.name, option: "--listen \(advertised.host)",
                                         reason: "needs --advertise HOST:PORT, the address other nodes reach this worker at")
        }
        let advertisedAddress = advertised
        let worker = try system.makeActor(named: WellKnownActor.worker) {
            Worker(actorSystem: system, name: configuration.name, device: configuration.device,
                   scratchDirectory: configuration.scratchDirectory, coordinator: configuration.coordinator,
                   coordinatorName: configuration.coordinatorName,
                   chunkDelay: configuration.chunkDelay, memoryBudget: configuration.memoryBudget,
                   gpuMemoryLimit: configuration.gpuMemoryLimit,
                   linkTimeout: configuration.linkTimeout, activationLinks: configuration.activationLinks, logger: logger)
        }
        // `coordctl doctor rdma --peer`'s other end; it refuses, naming what is missing, when links run on TCP here.
        let peerTest = try system.makeActor(named: RDMAPeerTestService.wellKnownName) {
            RDMAPeerTestService(actorSystem: system,
                                responder: RDMAPeerTestResponder(setup: configuration.activationLinks, node: configuration.name,
                                                                 logger: logger))
        }
        logger.info("workerd listening", metadata: ["address": "\(advertisedAddress)", "coordinator": "\(configuration.coordinator)"])
        let info: @Sendable () -> WorkerInfo = { WorkerInfo(name: configuration.name, address: advertisedAddress, device: configuration.device,
                                memoryBytes: configuration.memoryBytes,
                                freeDiskBytes: freeDiskBytes(at: configuration.scratchDirectory),
                                softwareVersion: workerSoftwareVersion) }

        // Serve until graceful shutdown (SIGTERM) reaches this service: then finish the chunk in progress (kept hidden
        // states stay on disk) and end the loops by cancellation. The actor system closes after this returns.
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                await registerAndBeat(system: system, coordinatorAddress: configuration.coordinator,
                                      coordinatorName: configuration.coordinatorName, info: info,
                                      worker: worker, stopping: stopping, logger: logger)
            }
            group.addTask {
                // Every incoming bulk connection is the predecessor streaming hidden states; it resends what is not
                // acknowledged when its link breaks. It may offer RDMA first; this node's setup answers.
                await system.receiveIncomingTensors(logger: logger, acknowledge: true,
                                                    upgrade: ActivationLinks.upgrade(setup: configuration.activationLinks, logger: logger),
                                                    expectedBytes: { peer, id in
                    await worker.whenLocal { $0.expectedHiddenStateBytes(from: peer, id: id) } ?? nil
                }) { peer, id, bytes in
                    await worker.whenLocal { await $0.receiveHiddenStates(from: peer, id: id, bytes: bytes) }
                }
            }
            try? await gracefulShutdown()
            stopping.set()
            logger.info("shutting down: finishing the chunk in progress; kept hidden states stay on disk")
            await worker.whenLocal { await $0.stopForShutdown() }
            group.cancelAll()
        }
        // The system holds actors weakly: this keeps the peer test's registered until workerd stops.
        withExtendedLifetime(peerTest) {}
    }
}

public let workerSoftwareVersion = NVFP4ClusterVersion.full

/// Registers with the coordinator, retrying until it answers, then sends heartbeats; starts over when it goes away.
private func registerAndBeat(system: ClusterActorSystem, coordinatorAddress: NodeAddress, coordinatorName: String,
                             info: @escaping @Sendable () -> WorkerInfo, worker: Worker, stopping: StopFlag,
                             logger: Logger) async {
    var announcedWaiting = false
    while !Task.isCancelled && !stopping.isSet {
        do {
            let coordinator = try $CoordinatorEndpoint.resolve(
                id: system.wellKnownID(WellKnownActor.coordinator, at: coordinatorAddress, node: coordinatorName),
                using: system)
            let reply = try await coordinator.register(info())
            announcedWaiting = false
            logger.info("registered with the coordinator", metadata: ["coordinator": "\(coordinatorAddress)",
                                                                      "version": "\(reply.coordinatorVersion)"])
            while !Task.isCancelled && !stopping.isSet {
                try await Task.sleep(for: .seconds(reply.heartbeatSeconds))
                if DebugHang.heartbeatsStopped { continue }
                try await coordinator.heartbeat(worker: info().name, freeDiskBytes: info().freeDiskBytes)
            }
        } catch {
            if stopping.isSet { return }
            if !announcedWaiting {
                logger.warning("coordinator \(coordinatorAddress) not reachable (\(error)); retrying every second")
                announcedWaiting = true
            }
            await worker.whenLocal { await $0.coordinatorLost() }
            try? await Task.sleep(for: .seconds(1))
        }
    }
}

/// Set once, read from any task.
// @unchecked: every mutable field is guarded by `lock` (NSLock; Mutex needs macOS 15, above this package's floor).
final class StopFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func set() { lock.withLock { value = true } }
    var isSet: Bool { lock.withLock { value } }
}
