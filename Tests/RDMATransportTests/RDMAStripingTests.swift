import Foundation
import Logging
import Testing
import Transport
@testable import RDMATransport
@testable import Worker

/// `--rdma-device` given twice: one queue pair per device (port half), each tensor cut across them, joined in order.
@Suite("A link striped over one queue pair per device", .serialized)
struct RDMAStripingTests {
    static let ring = RDMARingParameters(slotBytes: 4096, slotCount: 8)

    static func lane(_ fabric: FakeFabric, _ device: String, peer: String, last: UInt8) throws -> RDMAActivationTransport {
        try RDMAActivationTransport(device: fabric.device(device), endpoint: FakeLink.endpoint(last), peerName: peer, ring: ring,
                                    logger: Logger(label: "t"))
    }

    /// Two lanes each way, connected lane to lane through the wire encoding.
    static func stripedPair(_ fabric: FakeFabric) throws -> (StripedActivationTransport, StripedActivationTransport) {
        let a = [try lane(fabric, "fake_a0", peer: "b", last: 1), try lane(fabric, "fake_a1", peer: "b", last: 2)]
        let b = [try lane(fabric, "fake_b0", peer: "a", last: 3), try lane(fabric, "fake_b1", peer: "a", last: 4)]
        for (x, y) in zip(a, b) {
            try x.connect(to: RDMAConnectionInfo.decode(y.localInfo.encoded(), peer: "b"))
            try y.connect(to: RDMAConnectionInfo.decode(x.localInfo.encoded(), peer: "a"))
        }
        return (StripedActivationTransport(lanes: a), StripedActivationTransport(lanes: b))
    }

    @Test("tensors of every size cross in order, byte-identical, both lanes carrying data; acknowledgements too")
    func inOrderAndIdentical() async throws {
        let fabric = FakeFabric()
        let (a, b) = try Self.stripedPair(fabric)
        // Empty, shorter than the lane count, odd, several slots, and one whose parts differ in length.
        let sizes = [0, 1, 3, 4095, 50_001, 200_000]
        let sending = Task {
            for (index, size) in sizes.enumerated() {
                try await a.sendTensor(id: UInt64(100 + index), data: pattern(size, seed: UInt8(index)))
            }
        }
        var tensors = b.incomingTensors.makeAsyncIterator()
        for (index, size) in sizes.enumerated() {
            let tensor = try #require(try await tensors.next())
            #expect(tensor.id == UInt64(100 + index))
            let bytes = try await tensor.chunks.collectData()
            #expect(bytes == pattern(size, seed: UInt8(index)), "tensor \(index): \(bytes.count) bytes, sent \(size)")
            try await b.acknowledge(id: tensor.id, byteCount: bytes.count)
        }
        try await sending.value
        var acknowledgements = a.acknowledgements().makeAsyncIterator()
        for (index, size) in sizes.enumerated() {
            let ack = try #require(try await acknowledgements.next())
            #expect(ack.id == UInt64(100 + index) && ack.byteCount == size, "\(ack)")
        }
        #expect(fabric.landed(on: "fake_b0") > 0 && fabric.landed(on: "fake_b1") > 0)
        await a.close()
        await b.close()
        for device in ["fake_a0", "fake_a1", "fake_b0", "fake_b1"] {
            #expect(fabric.liveRegions(on: device) == 0 && fabric.liveQueuePairs(on: device) == 0, "\(device)")
        }
    }

    @Test("a completion error on one lane fails the striped link and names that lane's device")
    func oneLaneFails() async throws {
        let fabric = FakeFabric()
        let (a, b) = try Self.stripedPair(fabric)
        fabric.injectCompletionError(on: "fake_a1", status: VerbsCompletion.statusRetryExceeded)
        await #expect(throws: RDMALinkError.self) {
            try await a.sendTensor(id: 1, data: pattern(100_000, seed: 1))
        }
        let failure = try #require(a.failure)
        #expect(failure.isLinkFailure && failure.description.contains("fake_a1"), "\(failure)")
        await a.close()
        await b.close()
    }

    @Test("the offer carries a lane each; an answerer with one lane takes one and the dialer closes the other")
    func handshakeAgreesOnLanes() async throws {
        for answererLanes in [2, 1] {
            let fabric = FakeFabric()
            let (dialerControl, answererControl) = LocalActivationTransport.makePair()
            let answering = Task { () -> [RDMAActivationTransport]? in
                var tensors = answererControl.incomingTensors.makeAsyncIterator()
                let offer = try #require(try await tensors.next())
                let bytes = [UInt8](try await offer.chunks.collectData(maxBytes: 4096))
                #expect(bytes.count == 2 * RDMAConnectionInfo.encodedLength)
                return try await RDMALinkHandshake.answer(lanesOffer: bytes, over: answererControl, peer: "a") { count in
                    .success(try! (0..<min(count, answererLanes)).map { try Self.lane(fabric, "fake_b\($0)", peer: "a", last: UInt8(3 + $0)) })
                }
            }
            let offered = [try Self.lane(fabric, "fake_a0", peer: "b", last: 1), try Self.lane(fabric, "fake_a1", peer: "b", last: 2)]
            let outcome = try await RDMALinkHandshake.offer(lanes: offered, over: dialerControl, peer: "b")
            guard case let .rdma(dialer) = outcome else {
                Issue.record("refused: \(outcome)")
                return
            }
            let answerer = try #require(try await answering.value)
            #expect(dialer.count == answererLanes && answerer.count == answererLanes)
            if answererLanes == 1 { #expect(fabric.liveRegions(on: "fake_a1") == 0, "the lane the peer did not take is closed") }
            let a = StripedActivationTransport(lanes: dialer)
            let b = StripedActivationTransport(lanes: answerer)
            try await a.sendTensor(id: 5, data: pattern(30_000, seed: 9))
            var tensors = b.incomingTensors.makeAsyncIterator()
            let tensor = try #require(try await tensors.next())
            #expect(try await tensor.chunks.collectData() == pattern(30_000, seed: 9))
            await a.close()
            await b.close()
            #expect(fabric.liveRegions(on: "fake_a0") == 0 && fabric.liveRegions(on: "fake_b0") == 0)
        }
    }

    @Test("--rdma-device twice: both devices must be usable, each named once")
    func selection() throws {
        let (first, firstGIDs) = FakeNode.connectX(name: "mlx5_0")
        let (second, secondGIDs) = FakeNode.connectX(name: "mlx5_1")
        var gids = firstGIDs
        gids.types.merge(secondGIDs.types) { a, _ in a }
        gids.interfaces.merge(secondGIDs.interfaces) { a, _ in a }
        let survey = ActivationTransportSelectorTests.survey([first, second], gidAttributes: gids)
        let both = try ActivationTransportSelector.decide(preference: .rdma, devices: ["mlx5_1", "mlx5_0"], gidIndex: nil) { survey }
        #expect(both.transport == .rdma)
        #expect(both.endpoints.map(\.device) == ["mlx5_1", "mlx5_0"])
        #expect(throws: RDMASelectionError.deviceRepeated(name: "mlx5_0")) {
            try ActivationTransportSelector.decide(preference: .rdma, devices: ["mlx5_0", "mlx5_0"], gidIndex: nil) { survey }
        }
        #expect(throws: RDMASelectionError.deviceNotFound(name: "mlx5_7", available: ["mlx5_0", "mlx5_1"])) {
            try ActivationTransportSelector.decide(preference: .rdma, devices: ["mlx5_0", "mlx5_7"], gidIndex: nil) { survey }
        }
        let auto = try ActivationTransportSelector.decide(preference: .auto, devices: ["mlx5_0", "mlx5_7"], gidIndex: nil) { survey }
        #expect(auto.transport == .tcp && auto.reason.contains("mlx5_7"), "\(auto.reason)")
    }
}
