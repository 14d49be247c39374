import ActorSystem
import ClusterProtocol
import Coordinator
import Distributed
import Foundation
import JobModel
import LocalCluster
import Logging
import QuantizeJob
import ServiceLifecycle
import Testing
import Transport
@testable import RDMATransport
@testable import Worker

/// coordd and two workerd in this process on loopback, the workers' links on a fake RDMA fabric: what workerd runs,
/// with the verbs device injected through its configuration.
@Suite("Worker links over RDMA", .serialized)
struct RDMAWorkerLinkTests {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")

    static func options(output: URL, scratch: URL) -> QuantizeOptions {
        var options = QuantizeOptions(modelDirectory: fixtures.appendingPathComponent("tiny-llama"), outputDirectory: output)
        options.evaluationSamples = 0
        options.calibration.device = "cpu"
        options.calibration.dataPath = fixtures.appendingPathComponent("tiny-llama-calib.jsonl").path
        options.calibration.selection.minTokens = 1
        options.calibration.chunkTokens = 64  // several chunks, so a link can fail between two of them
        options.calibration.scratchDirectory = scratch
        return options
    }

    static func quiet(_ label: String) -> Logger {
        var logger = Logger(label: label)
        logger.logLevel = .critical
        return logger
    }

    /// The RDMA setup of worker `name` on `fabric`'s device `fake_<name>`.
    static func rdma(_ fabric: FakeFabric, _ name: String, last: UInt8,
                     preference: ActivationTransportPreference = .rdma) -> ActivationLinkSetup {
        ActivationLinkSetup(preference: preference,
                            decision: ActivationTransportDecision(transport: .rdma, reason: "fake fabric"),
                            device: fabric.device("fake_\(name)"), endpoint: FakeLink.endpoint(last),
                            ring: RDMARingParameters(slotBytes: 16 << 10, slotCount: 16))
    }

    /// One process's worth of cluster: a coordinator and workers, each a service group as in coordd and workerd.
    final class InProcessCluster: Sendable {
        let directory: URL
        let coordinatorAddress: NodeAddress
        let client: ClusterActorSystem
        let groups: [Task<Void, Never>]
        let workerSystems: [String: ClusterActorSystem]

        /// `loggers` replaces the quiet logger of the workers it names.
        init(directory: URL, workers: [(name: String, links: ActivationLinkSetup, chunkDelay: Duration)],
             loggers: [String: Logger] = [:]) async throws {
            self.directory = directory
            let logger = RDMAWorkerLinkTests.quiet("cluster")
            let configuration = CoordinatorService.Configuration(
                listen: NodeAddress(host: "127.0.0.1", port: 0),
                stateDirectory: directory.appendingPathComponent("state").path, token: nil)
            let coordinatorSystem = try await CoordinatorService.startSystem(configuration: configuration, logger: logger)
            coordinatorAddress = coordinatorSystem.boundAddress!
            var groups = [Self.run([ClusterActorSystemService(system: coordinatorSystem),
                                    CoordinatorService(configuration: configuration, system: coordinatorSystem, logger: logger)],
                                   logger: logger)]
            var systems: [String: ClusterActorSystem] = [:]
            for worker in workers {
                var workerConfiguration = WorkerService.Configuration(
                    coordinator: coordinatorAddress, listen: NodeAddress(host: "127.0.0.1", port: 0), name: worker.name,
                    device: "cpu", token: nil, scratchDirectory: directory.appendingPathComponent("scratch-\(worker.name)"))
                workerConfiguration.activationLinks = worker.links
                workerConfiguration.chunkDelay = worker.chunkDelay
                let workerLogger = loggers[worker.name] ?? logger
                let system = try await WorkerService.startSystem(configuration: workerConfiguration, logger: workerLogger)
                systems[worker.name] = system
                groups.append(Self.run([ClusterActorSystemService(system: system),
                                        WorkerService(configuration: workerConfiguration, system: system, logger: workerLogger)],
                                       logger: workerLogger))
            }
            self.groups = groups
            self.workerSystems = systems
            client = try await ClusterActorSystem.start(identity: NodeIdentity(name: "test-client", role: .client),
                                                        listen: nil as NodeAddress?, token: nil,
                                                        configuration: TransportConfiguration(), logger: logger)
        }

        static func run(_ services: [any Service], logger: Logger) -> Task<Void, Never> {
            Task {
                let group = ServiceGroup(configuration: .init(services: services, logger: logger))
                try? await group.run()
            }
        }

        func coordinator() throws -> any CoordinatorEndpoint {
            try $CoordinatorEndpoint.resolve(id: client.wellKnownID(WellKnownActor.coordinator, at: coordinatorAddress,
                                                                    node: WellKnownActor.coordinatorNode),
                                             using: client)
        }

        /// The worker actor workerd `name` hosts.
        func worker(_ name: String) throws -> Worker {
            let system = workerSystems[name]!
            return try Worker.resolve(id: system.wellKnownID(WellKnownActor.worker, at: system.boundAddress!, node: name),
                                      using: system)
        }

        /// Submits the tiny job over every worker, one layer each, and waits for its end.
        func runJob(output: URL, workers: Int, whileRunning: @Sendable () async throws -> Void = {}) async throws -> JobStatus {
            let coordinator = try coordinator()
            let deadline = ContinuousClock.now + .seconds(30)
            // The coordinator actor exists once its service runs; until then (and until both registered) ask again.
            while ((try? await coordinator.workers().count) ?? 0) < workers {
                guard ContinuousClock.now < deadline else { throw CancellationError() }
                try await Task.sleep(for: .milliseconds(50))
            }
            let spec = try JobSpec(options: RDMAWorkerLinkTests.options(
                output: output, scratch: directory.appendingPathComponent("job-scratch")))
            let job = try await coordinator.submit(JobSubmission(spec: spec, workerCount: workers,
                                                                 split: Array(repeating: 1, count: workers)))
            try await whileRunning()
            while true {
                let status = try await coordinator.status(jobID: job)
                if status.phase.isTerminal { return status }
                guard ContinuousClock.now < deadline + .seconds(60) else { throw CancellationError() }
                try await Task.sleep(for: .milliseconds(50))
            }
        }

        /// What coordd shows as worker `name`'s link (`coordctl workers`), once the worker has reported `matching`.
        func reportedLink(_ name: String, matching: (String) -> Bool) async throws -> String? {
            let coordinator = try coordinator()
            let deadline = ContinuousClock.now + .seconds(5)
            var link: String?
            repeat {
                link = try await coordinator.workers().first { $0.name == name }?.linkTransport
                if let link, matching(link) { return link }
                try await Task.sleep(for: .milliseconds(20))
            } while ContinuousClock.now < deadline
            return link
        }

        func stop() async {
            for group in groups.reversed() { group.cancel() }
            for group in groups { await group.value }
            await client.shutdown()
        }
    }

    static func embeddedReference(in directory: URL) async throws -> URL {
        let output = directory.appendingPathComponent("embedded")
        _ = try await LocalCluster.quantize(options: options(output: output, scratch: directory.appendingPathComponent("embedded-scratch")),
                                            logger: quiet("embedded"))
        return output
    }

    static func expectIdenticalDirectories(_ left: URL, _ right: URL, sourceLocation: SourceLocation = #_sourceLocation) throws {
        let names = try FileManager.default.contentsOfDirectory(atPath: left.path).sorted()
        #expect(names == (try FileManager.default.contentsOfDirectory(atPath: right.path).sorted()), sourceLocation: sourceLocation)
        #expect(names.contains { $0.hasSuffix(".safetensors") }, sourceLocation: sourceLocation)
        for name in names {
            let same = try Data(contentsOf: left.appendingPathComponent(name)) == Data(contentsOf: right.appendingPathComponent(name))
            #expect(same, "\(name) differs", sourceLocation: sourceLocation)
        }
    }

    static func withDirectory<T>(_ body: (URL) async throws -> T) async throws -> T {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("rdma-worker-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        return try await body(directory)
    }

    @Test("hidden states cross on RDMA and the checkpoint is the embedded run's, byte for byte")
    func twoWorkersOverRDMA() async throws {
        try await Self.withDirectory { directory in
            let reference = try await Self.embeddedReference(in: directory)
            let fabric = FakeFabric()
            let cluster = try await InProcessCluster(directory: directory, workers: [
                ("w1", Self.rdma(fabric, "w1", last: 1), .zero), ("w2", Self.rdma(fabric, "w2", last: 2), .zero),
            ])
            let output = directory.appendingPathComponent("cluster-out")
            let status = try await cluster.runJob(output: output, workers: 2)
            let link = await (try cluster.worker("w1")).whenLocal { $0.successorLinkTransport() }
            let reported = try await cluster.reportedLink("w1") { $0 == "rdma" }
            let last = try await cluster.coordinator().workers().first { $0.name == "w2" }?.linkTransport
            await cluster.stop()
            #expect(status.state == .succeeded, "\(status.failureReason ?? "")")
            try Self.expectIdenticalDirectories(reference, output)
            #expect(reported == "rdma")
            #expect(last == nil, "the last range has no link to report")
            // The hidden states landed in w2's ring, not (only) on the bulk connection.
            #expect(fabric.landed(on: "fake_w2") > 0)
            #expect(link??.transport == .rdma, "\(String(describing: link))")
        }
    }

    @Test("links striped over two devices per worker write the embedded run's checkpoint; both devices carry data")
    func twoLanesPerLink() async throws {
        try await Self.withDirectory { directory in
            let reference = try await Self.embeddedReference(in: directory)
            let fabric = FakeFabric()
            func striped(_ name: String, last: UInt8) -> ActivationLinkSetup {
                ActivationLinkSetup(preference: .rdma, decision: ActivationTransportDecision(transport: .rdma, reason: "fake fabric"),
                                    lanes: [.init(device: fabric.device("fake_\(name)a"), endpoint: FakeLink.endpoint(last)),
                                            .init(device: fabric.device("fake_\(name)b"), endpoint: FakeLink.endpoint(last + 10))],
                                    ring: RDMARingParameters(slotBytes: 16 << 10, slotCount: 16))
            }
            let cluster = try await InProcessCluster(directory: directory, workers: [
                ("w1", striped("w1", last: 1), .zero), ("w2", striped("w2", last: 2), .zero),
            ])
            let output = directory.appendingPathComponent("cluster-out")
            let status = try await cluster.runJob(output: output, workers: 2)
            let reported = try await cluster.reportedLink("w1") { $0 == "rdma" }
            await cluster.stop()
            #expect(status.state == .succeeded, "\(status.failureReason ?? "")")
            try Self.expectIdenticalDirectories(reference, output)
            #expect(reported == "rdma")
            #expect(fabric.landed(on: "fake_w2a") > 0 && fabric.landed(on: "fake_w2b") > 0)
            for device in ["fake_w1a", "fake_w1b", "fake_w2a", "fake_w2b"] {
                #expect(fabric.liveRegions(on: device) == 0, "\(device)")
            }
        }
    }

    @Test("a completion error mid-job moves the link to TCP; the job completes with the same bytes",
          arguments: [ActivationTransportPreference.auto, .rdma])
    func completionErrorMidJobFallsBackToTCP(preference: ActivationTransportPreference) async throws {
        try await Self.withDirectory { directory in
            let reference = try await Self.embeddedReference(in: directory)
            let fabric = FakeFabric()
            let cluster = try await InProcessCluster(directory: directory, workers: [
                ("w1", Self.rdma(fabric, "w1", last: 1, preference: preference), .milliseconds(100)),
                ("w2", Self.rdma(fabric, "w2", last: 2, preference: preference), .zero),
            ])
            let output = directory.appendingPathComponent("cluster-out")
            let status = try await cluster.runJob(output: output, workers: 2) {
                // Once the first hidden states have crossed over RDMA, the next write of w1 fails.
                let deadline = ContinuousClock.now + .seconds(20)
                while fabric.landed(on: "fake_w2") == 0 && ContinuousClock.now < deadline {
                    try await Task.sleep(for: .milliseconds(5))
                }
                fabric.injectCompletionError(on: "fake_w1", status: VerbsCompletion.statusRetryExceeded)
            }
            let link = await (try cluster.worker("w1")).whenLocal { $0.successorLinkTransport() }
            let reported = try await cluster.reportedLink("w1") { $0.hasPrefix("rdma→tcp") }
            await cluster.stop()
            #expect(status.state == .succeeded, "\(status.failureReason ?? "")")
            try Self.expectIdenticalDirectories(reference, output)
            #expect(reported?.hasPrefix("rdma→tcp: RDMA link failed mid-job: RDMA ") == true, "\(reported ?? "nil")")
            let decision = try #require(link ?? nil)
            #expect(decision.transport == .tcp)
            #expect(decision.reason.contains("RDMA link failed mid-job") && decision.reason.contains("fake_w1"), "\(decision.reason)")
        }
    }

    @Test("an RDMA exchange that fails at load moves the link to TCP for good: one attempt, one log line, same bytes")
    func failedExchangeFallsBackOnce() async throws {
        try await Self.withDirectory { directory in
            let reference = try await Self.embeddedReference(in: directory)
            let fabric = FakeFabric()
            // w2 accepts and connects its side; w1's queue pair then cannot reach RTR, so the exchange fails.
            fabric.failConnects(on: "fake_w1")
            let records = LogRecords()
            var w1Logger = Logger(label: "w1") { _ in records }
            w1Logger.logLevel = .info
            let cluster = try await InProcessCluster(directory: directory, workers: [
                ("w1", Self.rdma(fabric, "w1", last: 1, preference: .auto), .zero),
                ("w2", Self.rdma(fabric, "w2", last: 2, preference: .auto), .zero),
            ], loggers: ["w1": w1Logger])
            let output = directory.appendingPathComponent("cluster-out")
            let status = try await cluster.runJob(output: output, workers: 2)
            let reported = try await cluster.reportedLink("w1") { $0.hasPrefix("rdma→tcp") }
            await cluster.stop()
            #expect(status.state == .succeeded, "\(status.failureReason ?? "")")
            try Self.expectIdenticalDirectories(reference, output)
            #expect(reported?.hasPrefix("rdma→tcp: RDMA exchange failed: ") == true, "\(reported ?? "nil")")
            #expect(reported?.contains("ibv_modify_qp to RTR") == true, "\(reported ?? "nil")")
            // No retry storm: one queue pair was ever made for the link, every chunk went over TCP after it.
            #expect(fabric.queuePairsCreated(on: "fake_w1") == 1)
            #expect(fabric.landed(on: "fake_w2") == 0)
            #expect(fabric.liveRegions(on: "fake_w1") == 0 && fabric.liveRegions(on: "fake_w2") == 0)
            let fallbacks = records.messages.filter { $0.message == "activation link falls back to TCP" }
            #expect(fallbacks.count == 1, "\(records.messages.map(\.message))")
            #expect(fallbacks.first?.reason.contains("ibv_modify_qp to RTR") == true, "\(fallbacks)")
        }
    }

    @Test("--transport rdma fails the job at load when the next worker refuses, naming it and its reason")
    func rdmaRefusedByThePeerFailsTheJob() async throws {
        try await Self.withDirectory { directory in
            let fabric = FakeFabric()
            let cluster = try await InProcessCluster(directory: directory, workers: [
                ("w1", Self.rdma(fabric, "w1", last: 1), .zero), ("w2", .tcp(), .zero),
            ])
            let status = try await cluster.runJob(output: directory.appendingPathComponent("cluster-out"), workers: 2)
            await cluster.stop()
            #expect(status.state == .failed)
            let reason = status.failureReason ?? ""
            #expect(reason.contains("--transport rdma, but the link to w2 cannot use RDMA: w2 refused RDMA: no usable RDMA endpoint here"),
                    "\(reason)")
            #expect(fabric.liveRegions(on: "fake_w1") == 0)
        }
    }

    /// This machine's libibverbs offers no usable port (the test's premise; a node with RDMA hardware skips it).
    static let noUsableRDMA = (try? ActivationTransportSelector.usableEndpoint(
        in: RDMASurvey.take(logger: quiet("rdma")), device: nil, gidIndex: nil)) == nil

    @Test("auto with this node's real libibverbs and no usable port stays on TCP, and the job runs",
          .enabled(if: noUsableRDMA, "needs a node without a usable RDMA port"))
    func autoWithTheRealLibraryStaysOnTCP() async throws {
        let logger = Self.quiet("rdma")
        let locator = VerbsLibraryLocator()
        let decision = try ActivationTransportSelector.decide(preference: .auto, device: nil, gidIndex: nil) {
            RDMASurvey.take(locator: locator, logger: logger)
        }
        let setup = try ActivationLinkSetup.open(decision, preference: .auto,
                                                 provider: { () throws(VerbsError) in try locator.open() }, logger: logger)
        #expect(setup.decision.transport == .tcp)
        #expect(setup.device == nil)
        try await Self.withDirectory { directory in
            let reference = try await Self.embeddedReference(in: directory)
            let cluster = try await InProcessCluster(directory: directory, workers: [
                ("w1", setup, .zero), ("w2", setup, .zero),
            ])
            let output = directory.appendingPathComponent("cluster-out")
            let status = try await cluster.runJob(output: output, workers: 2)
            let link = await (try cluster.worker("w1")).whenLocal { $0.successorLinkTransport() }
            let reported = try await cluster.reportedLink("w1") { $0 == "tcp" }
            await cluster.stop()
            #expect(status.state == .succeeded, "\(status.failureReason ?? "")")
            try Self.expectIdenticalDirectories(reference, output)
            #expect(link??.transport == .tcp)
            #expect(reported == "tcp")
        }
    }
}

/// A log handler that keeps each message and its `reason` metadata.
final class LogRecords: LogHandler, @unchecked Sendable {
    struct Record: Sendable {
        var message: String
        var reason: String
    }
    private let lock = NSLock()
    private var records: [Record] = []
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .info

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let reason = event.metadata?["reason"].map { "\($0)" } ?? ""
        lock.withLock { records.append(Record(message: event.message.description, reason: reason)) }
    }

    var messages: [Record] { lock.withLock { records } }
}
