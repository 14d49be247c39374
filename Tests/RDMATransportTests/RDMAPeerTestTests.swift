import ActorSystem
import ClusterProtocol
import Foundation
import Logging
import ServiceLifecycle
import Testing
import Transport
@testable import RDMATransport
@testable import Worker

/// `coordctl doctor rdma --peer`: the doctor's peer path against a workerd in this process (its service group, as
/// workerd runs it), both on one fake fabric: the doctor's device `mlx5_0`, workerd's `fake_w1`.
@Suite("coordctl doctor rdma --peer", .serialized)
struct RDMAPeerTestTests {
    static let token = try! ClusterToken("rdma-peer-test-token-0123456789")
    static let traffic = RDMATestTraffic(tensorBytes: 200_000, tensorCount: 4, latencyRounds: 5)
    static let ring = RDMARingParameters(slotBytes: 16 << 10, slotCount: 8)
    static let test = RDMAPeerTest(traffic: traffic, ring: ring, timeLimitSeconds: 30)

    /// workerd `w1` listening on loopback with `token`, its links set up as `links`.
    final class Workerd: Sendable {
        let address: NodeAddress
        let task: Task<Void, Never>

        init(links: ActivationLinkSetup, token: ClusterToken?, directory: URL) async throws {
            let logger = RDMAWorkerLinkTests.quiet("workerd")
            // No coordd: the worker retries its registration meanwhile, which the test does not need.
            var configuration = WorkerService.Configuration(
                coordinator: NodeAddress(host: "127.0.0.1", port: 1), listen: NodeAddress(host: "127.0.0.1", port: 0),
                name: "w1", device: "cpu", token: token, scratchDirectory: directory.appendingPathComponent("scratch"))
            configuration.activationLinks = links
            let system = try await WorkerService.startSystem(configuration: configuration, logger: logger)
            address = system.boundAddress!
            task = RDMAWorkerLinkTests.InProcessCluster.run(
                [ClusterActorSystemService(system: system), WorkerService(configuration: configuration, system: system, logger: logger)],
                logger: logger)
            // The service registers its actors once it runs; a doctor dialing before that is told workerd lacks them.
            let id = system.wellKnownID(RDMAPeerTestService.wellKnownName, at: address, node: "w1")
            let deadline = ContinuousClock.now + .seconds(10)
            while (try? system.resolve(id: id, as: RDMAPeerTestService.self)) == nil && ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(10))
            }
        }

        func stop() async {
            task.cancel()
            await task.value
        }
    }

    static func withWorkerd<T>(links: ActivationLinkSetup, token: ClusterToken? = token,
                               _ body: (Workerd) async throws -> T) async throws -> T {
        try await RDMAWorkerLinkTests.withDirectory { directory in
            let workerd = try await Workerd(links: links, token: token, directory: directory)
            do {
                let result = try await body(workerd)
                await workerd.stop()
                return result
            } catch {
                await workerd.stop()
                throw error
            }
        }
    }

    /// The doctor's report on a node with a usable `mlx5_0`, and `runPeerTest` through a client with `token`.
    static func runDoctor(fabric: FakeFabric, peer: NodeAddress, token: ClusterToken? = token,
                          nodeName: String? = nil) async -> RDMADoctorReport {
        var (report, listing) = RDMALoopbackTests.usableReport()
        let client = RDMAPeerTestClient(address: peer, nodeName: nodeName, token: token, tls: nil, callTimeout: .seconds(20))
        await report.runPeerTest(peer: peer.description, provider: { FabricVerbsProvider(listing: listing, fabric: fabric) },
                                 test: test, control: { client }, logger: RDMAWorkerLinkTests.quiet("doctor"))
        await client.shutdown()
        return report
    }

    @Test("workerd checks every byte; the report has the bandwidth, the round trip and what workerd checked")
    func passes() async throws {
        let fabric = FakeFabric()
        try await Self.withWorkerd(links: RDMAWorkerLinkTests.rdma(fabric, "w1", last: 1, preference: .auto)) { workerd in
            let report = await Self.runDoctor(fabric: fabric, peer: workerd.address, nodeName: "w1")
            let line = try #require(report.peerTest)
            #expect(!report.peerTestFailed, "\(line)")
            #expect(line.hasPrefix("peer RDMA WRITE mlx5_0 port 1 -> \(workerd.address) fake_w1 port 1: "), "\(line)")
            #expect(line.contains(" Gb/s (0 MiB in ") && line.contains("round trip"), "\(line)")
            #expect(line.contains("of this port's 200 Gb/s line rate"), "\(line)")
            #expect(line.hasSuffix("workerd checked 9 tensors, \(5 * 64 + 4 * 200_000) bytes"), "\(line)")
            #expect(report.text.hasSuffix(line))
            // The tensors crossed the fabric into workerd's ring, and both sides released everything.
            #expect(fabric.landed(on: "fake_w1") >= 9)
            #expect(fabric.liveQueuePairs(on: "fake_w1") == 0 && fabric.liveRegions(on: "fake_w1") == 0)
            #expect(fabric.liveQueuePairs(on: "mlx5_0") == 0 && fabric.liveRegions(on: "mlx5_0") == 0)
            // workerd serves the next test too.
            let again = await Self.runDoctor(fabric: fabric, peer: workerd.address)
            #expect(!again.peerTestFailed, "\(again.peerTest ?? "nil")")
        }
    }

    @Test("a workerd whose links run on TCP refuses, naming itself and what is missing, and stays up")
    func peerWithoutDevice() async throws {
        let fabric = FakeFabric()
        try await Self.withWorkerd(links: .tcp(preference: .tcp, reason: "--transport tcp")) { workerd in
            let report = await Self.runDoctor(fabric: fabric, peer: workerd.address)
            #expect(report.peerTestFailed)
            #expect(report.peerTest == "peer RDMA WRITE test with \(workerd.address): FAILED: "
                    + "workerd w1 has no verbs device open for RDMA: --transport tcp")
            #expect(fabric.liveRegions(on: "mlx5_0") == 0 && fabric.liveQueuePairs(on: "mlx5_0") == 0)
            let again = await Self.runDoctor(fabric: fabric, peer: workerd.address)
            #expect(again.peerTest == report.peerTest)
        }
    }

    @Test("an address nobody listens on is named as unreachable")
    func unreachable() async throws {
        // A port that was just free: bound, then closed.
        let probe = try await ClusterActorSystem.start(identity: NodeIdentity(name: "probe", role: .client),
                                                       listen: NodeAddress(host: "127.0.0.1", port: 0), token: nil,
                                                       configuration: TransportConfiguration(),
                                                       logger: RDMAWorkerLinkTests.quiet("probe"))
        let address = probe.boundAddress!
        await probe.shutdown()
        let fabric = FakeFabric()
        let report = await Self.runDoctor(fabric: fabric, peer: address)
        #expect(report.peerTestFailed)
        let line = try #require(report.peerTest)
        #expect(line.hasPrefix("peer RDMA WRITE test with \(address): FAILED: cannot reach workerd at \(address): connection refused"),
                "\(line)")
        #expect(fabric.liveRegions(on: "mlx5_0") == 0)
    }

    @Test("wrong credentials are refused in the handshake: workerd never sets anything up")
    func wrongCredentials() async throws {
        let fabric = FakeFabric()
        try await Self.withWorkerd(links: RDMAWorkerLinkTests.rdma(fabric, "w1", last: 1, preference: .auto)) { workerd in
            let report = await Self.runDoctor(fabric: fabric, peer: workerd.address,
                                              token: try ClusterToken("not-the-cluster-token-9876543210"))
            #expect(report.peerTestFailed)
            let line = try #require(report.peerTest)
            #expect(line.contains("FAILED: workerd at \(workerd.address) refused this node's credentials before any call ran"), "\(line)")
            #expect(fabric.queuePairsCreated(on: "fake_w1") == 0)
            #expect(fabric.liveRegions(on: "mlx5_0") == 0)
        }
    }

    @Test("another node answering at the address is named (--peer-name)")
    func wrongNode() async throws {
        let fabric = FakeFabric()
        try await Self.withWorkerd(links: RDMAWorkerLinkTests.rdma(fabric, "w1", last: 1, preference: .auto)) { workerd in
            let report = await Self.runDoctor(fabric: fabric, peer: workerd.address, nodeName: "w7")
            #expect(report.peerTest == "peer RDMA WRITE test with \(workerd.address): FAILED: "
                    + "the node at \(workerd.address) is 'w1', not 'w7' (--peer-name)")
            #expect(fabric.queuePairsCreated(on: "fake_w1") == 0)
        }
    }

    @Test("without a usable device here nothing is contacted and the test fails")
    func noDeviceHere() async {
        var report = RDMADoctorReport(survey: RDMASurvey(outcome: .noDevices(library: "libibverbs.so.1")))
        var asked = false
        await report.runPeerTest(peer: "10.0.0.2:7071", provider: { FakeVerbsProvider(devicesList: []) },
                                 test: Self.test, control: {
            asked = true
            return RDMAPeerTestClient(address: NodeAddress(host: "10.0.0.2", port: 7071), token: nil, tls: nil)
        }, logger: RDMAWorkerLinkTests.quiet("doctor"))
        #expect(!asked)
        #expect(report.peerTestFailed)
        #expect(report.text.hasSuffix("\npeer RDMA WRITE test with 10.0.0.2:7071: not run: this node has no usable verbs device "
                                      + "(see above); workerd at 10.0.0.2:7071 was not contacted"), "\(report.text)")
    }
}

/// A control that reaches a responder in process and tells it to expect tensors one byte shorter than sent, so
/// every large tensor arrives "wrong" as far as workerd can tell.
struct ShortExpectationControl: RDMAPeerTestControl {
    let responder: RDMAPeerTestResponder
    var peer: String { "in-process" }

    func open(_ request: RDMAPeerTestRequest) async throws(RDMAPeerTest.Failure) -> RDMAPeerTestAccepted {
        var altered = request
        altered.traffic.tensorBytes -= 1
        do throws(RDMAPeerTestRefusal) {
            return try await responder.open(altered, caller: "doctor")
        } catch {
            throw .refused(error)
        }
    }

    func finish(session: UInt64) async throws(RDMAPeerTest.Failure) -> RDMAPeerTestVerdict {
        do throws(RDMAPeerTestRefusal) {
            return try await responder.finish(session: session)
        } catch {
            throw .refused(error)
        }
    }
}

/// workerd's side on its own: the byte check, one test at a time, limits, and the time limit.
@Suite("workerd's RDMA peer test responder", .serialized)
struct RDMAPeerTestResponderTests {
    static func responder(_ fabric: FakeFabric) -> RDMAPeerTestResponder {
        RDMAPeerTestResponder(setup: RDMAWorkerLinkTests.rdma(fabric, "w1", last: 1), node: "w1",
                              logger: RDMAWorkerLinkTests.quiet("responder"))
    }

    /// The doctor's side, set up by hand so a test can send what it likes.
    static func doctorSide(_ fabric: FakeFabric) throws -> RDMAActivationTransport {
        try RDMAActivationTransport(device: fabric.device("fake_d"), endpoint: FakeLink.endpoint(9), peerName: "w1",
                                    ring: RDMAPeerTestTests.ring, logger: RDMAWorkerLinkTests.quiet("doctor"))
    }

    static func request(_ doctor: RDMAActivationTransport, timeLimit: Int = 30,
                        traffic: RDMATestTraffic = RDMAPeerTestTests.traffic) -> RDMAPeerTestRequest {
        RDMAPeerTestRequest(connectionInfo: doctor.localInfo.encoded(), traffic: traffic, ring: RDMAPeerTestTests.ring,
                            timeLimitSeconds: timeLimit)
    }

    @Test("a flipped byte, or a tensor in another's place, is named in the verdict", arguments: [false, true])
    func wrongTensor(swapped: Bool) async throws {
        let fabric = FakeFabric()
        let responder = Self.responder(fabric)
        let doctor = try Self.doctorSide(fabric)
        let accepted = try await responder.open(Self.request(doctor), caller: "doctor")
        try doctor.connect(to: RDMAConnectionInfo.decode(accepted.connectionInfo, peer: "w1"))
        // Tensor 0 passes; tensor 1 arrives wrong.
        try await doctor.sendTensor(id: 0, data: RDMATestTraffic.pattern(64, tensor: 0))
        var bad = RDMATestTraffic.pattern(64, tensor: swapped ? 2 : 1)
        if !swapped { bad[17] ^= 0x40 }
        try await doctor.sendTensor(id: 1, data: bad)
        // As the doctor does: wait for the acknowledgements. Tensor 1's never comes; workerd closes instead.
        var acknowledgements = doctor.acknowledgements().makeAsyncIterator()
        #expect(try await acknowledgements.next()?.id == 0)
        let after = try? await acknowledgements.next()
        #expect(after == nil)
        await doctor.close()
        let verdict = try await responder.finish(session: accepted.session)
        #expect(verdict.tensorsChecked == 1 && verdict.bytesChecked == 64)
        #expect(verdict.failure == "tensor 1 differs from the test pattern at byte \(swapped ? 0 : 17)")
        #expect(fabric.liveQueuePairs(on: "fake_w1") == 0 && fabric.liveRegions(on: "fake_w1") == 0)
    }

    @Test("the doctor fails the test with workerd's verdict when workerd finds a tensor wrong, and releases both sides")
    func doctorReportsWorkerdsVerdict() async throws {
        let fabric = FakeFabric()
        let responder = Self.responder(fabric)
        let test = RDMAPeerTest(traffic: RDMAPeerTestTests.traffic, ring: RDMAPeerTestTests.ring, timeLimitSeconds: 30)
        await #expect(throws: RDMAPeerTest.Failure.corrupted(
            peer: "in-process", reason: "tensor 5 arrived with more than the 199999 bytes expected")) {
            _ = try await test.run(device: fabric.device("fake_d"), endpoint: FakeLink.endpoint(9),
                                   control: ShortExpectationControl(responder: responder), lineRateGigabitsPerSecond: nil,
                                   logger: RDMAWorkerLinkTests.quiet("doctor"))
        }
        #expect(!responder.isBusy)
        #expect(fabric.liveQueuePairs(on: "fake_d") == 0 && fabric.liveQueuePairs(on: "fake_w1") == 0)
        #expect(fabric.liveRegions(on: "fake_d") == 0 && fabric.liveRegions(on: "fake_w1") == 0)
    }

    @Test("one test at a time; limits and a malformed request are refused naming the field")
    func refusals() async throws {
        let fabric = FakeFabric()
        let responder = Self.responder(fabric)
        let first = try Self.doctorSide(fabric)
        let accepted = try await responder.open(Self.request(first), caller: "doctor")
        let second = try Self.doctorSide(fabric)
        await #expect(throws: RDMAPeerTestRefusal.busy(peer: "w1")) {
            _ = try await responder.open(Self.request(second), caller: "doctor 2")
        }
        await first.close()
        _ = try await responder.finish(session: accepted.session)
        await #expect(throws: RDMAPeerTestRefusal.unknownSession(peer: "w1", session: accepted.session)) {
            _ = try await responder.finish(session: accepted.session)
        }
        let huge = RDMATestTraffic(tensorBytes: 1 << 30, tensorCount: 1, latencyRounds: 1)
        await #expect(throws: RDMAPeerTestRefusal.badRequest(peer: "w1", field: "tensor size",
                                                             reason: "1073741824 bytes; 1 to 67108864 are accepted")) {
            _ = try await responder.open(Self.request(second, traffic: huge), caller: "doctor 2")
        }
        var malformed = Self.request(second)
        malformed.connectionInfo = [1, 2]
        await #expect(throws: RDMAPeerTestRefusal.badRequest(
            peer: "w1", field: "connection information",
            reason: "RDMA connection information from doctor 2 is malformed: 2 bytes, expected 56")) {
            _ = try await responder.open(malformed, caller: "doctor 2")
        }
        await second.close()
        #expect(responder.openedCount == 1)
        #expect(fabric.liveQueuePairs(on: "fake_w1") == 0)
    }

    @Test("a test the doctor abandons is torn down at its time limit, and workerd takes the next")
    func abandoned() async throws {
        let fabric = FakeFabric()
        let responder = Self.responder(fabric)
        let doctor = try Self.doctorSide(fabric)
        let accepted = try await responder.open(Self.request(doctor, timeLimit: 1), caller: "doctor")
        try doctor.connect(to: RDMAConnectionInfo.decode(accepted.connectionInfo, peer: "w1"))
        #expect(fabric.liveQueuePairs(on: "fake_w1") == 1)
        let deadline = ContinuousClock.now + .seconds(10)
        while (responder.isBusy || fabric.liveQueuePairs(on: "fake_w1") > 0) && ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(!responder.isBusy)
        #expect(fabric.liveQueuePairs(on: "fake_w1") == 0 && fabric.liveRegions(on: "fake_w1") == 0)
        await #expect(throws: RDMAPeerTestRefusal.unknownSession(peer: "w1", session: accepted.session)) {
            _ = try await responder.finish(session: accepted.session)
        }
        await doctor.close()
        let next = try Self.doctorSide(fabric)
        let reopened = try await responder.open(Self.request(next), caller: "doctor")
        await next.close()
        _ = try await responder.finish(session: reopened.session)
    }
}
