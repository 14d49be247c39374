import Foundation
import Logging
import NIOCore
import Testing
import Transport
@testable import RDMATransport

/// The offer/answer exchange over a bulk connection (a local transport pair stands in for the authenticated TCP one).
@Suite("The RDMA offer and answer over the bulk connection")
struct RDMALinkHandshakeTests {
    static let ring = RDMARingParameters(slotBytes: 4096, slotCount: 8)

    static func transport(_ fabric: FakeFabric, _ device: String, peer: String, ring: RDMARingParameters = ring,
                          last: UInt8) throws -> RDMAActivationTransport {
        try RDMAActivationTransport(device: fabric.device(device), endpoint: FakeLink.endpoint(last), peerName: peer,
                                    ring: ring, logger: Logger(label: "t"))
    }

    /// Reads the offer on the answerer's end of the control connection and answers it.
    static func answer(on control: LocalActivationTransport,
                       makeLocal: @escaping @Sendable () -> Result<RDMAActivationTransport, RDMASelectionError>)
        -> Task<RDMAActivationTransport?, any Error> {
        Task {
            var tensors = control.incomingTensors.makeAsyncIterator()
            let offer = try #require(try await tensors.next())
            #expect(offer.id == RDMALinkHandshake.offerTensorID)
            let bytes = [UInt8](try await offer.chunks.collectData(maxBytes: 1024))
            return try await RDMALinkHandshake.answer(offer: bytes, over: control, peer: "worker-a", makeLocal: makeLocal)
        }
    }

    @Test("both ends usable: the link runs over RDMA and carries tensors")
    func accepted() async throws {
        let fabric = FakeFabric()
        let (dialerControl, answererControl) = LocalActivationTransport.makePair()
        let answering = Self.answer(on: answererControl) {
            Result { () throws(RDMASelectionError) in try! Self.transport(fabric, "fake_b", peer: "worker-a", last: 2) }
        }
        let outcome = try await RDMALinkHandshake.offer(try Self.transport(fabric, "fake_a", peer: "worker-b", last: 1),
                                                        over: dialerControl, peer: "worker-b")
        guard case let .rdma(dialer) = outcome else {
            Issue.record("refused: \(outcome)")
            return
        }
        let answerer = try #require(try await answering.value)
        try await dialer.sendTensor(id: 9, data: pattern(50_000, seed: 4))
        var tensors = answerer.incomingTensors.makeAsyncIterator()
        let tensor = try #require(try await tensors.next())
        #expect(tensor.id == 9)
        #expect(try await tensor.chunks.collectData() == pattern(50_000, seed: 4))
        #expect(fabric.landed(on: "fake_b") > 0)
        await dialer.close()
        await answerer.close()
        #expect(fabric.liveRegions(on: "fake_a") == 0 && fabric.liveRegions(on: "fake_b") == 0)
    }

    @Test("an answerer without a usable endpoint refuses with its reason; the bulk connection goes on as TCP")
    func refusedWithoutEndpoint() async throws {
        let fabric = FakeFabric()
        let (dialerControl, answererControl) = LocalActivationTransport.makePair()
        let answering = Self.answer(on: answererControl) {
            .failure(.unavailable(reason: "libibverbs is not installed (or not found)"))
        }
        let outcome = try await RDMALinkHandshake.offer(try Self.transport(fabric, "fake_a", peer: "worker-b", last: 1),
                                                        over: dialerControl, peer: "worker-b")
        guard case let .refused(reason) = outcome else {
            Issue.record("accepted")
            return
        }
        #expect(reason == "no usable RDMA endpoint here: RDMA is unavailable: libibverbs is not installed (or not found)")
        #expect(try await answering.value == nil)
        // The dialer's rings are released at once.
        #expect(fabric.liveRegions(on: "fake_a") == 0)
        // The same connection then carries the data.
        try await dialerControl.sendTensor(id: 1, data: pattern(100, seed: 1))
        var tensors = answererControl.incomingTensors.makeAsyncIterator()
        let tensor = try #require(try await tensors.next())
        #expect(try await tensor.chunks.collectData() == pattern(100, seed: 1))
    }

    @Test("rings of different shapes are refused by the answerer, naming both")
    func ringMismatch() async throws {
        let fabric = FakeFabric()
        let (dialerControl, answererControl) = LocalActivationTransport.makePair()
        let answering = Self.answer(on: answererControl) {
            Result { () throws(RDMASelectionError) in
                try! Self.transport(fabric, "fake_b", peer: "worker-a", ring: RDMARingParameters(slotBytes: 4096, slotCount: 4), last: 2)
            }
        }
        let outcome = try await RDMALinkHandshake.offer(try Self.transport(fabric, "fake_a", peer: "worker-b", last: 1),
                                                        over: dialerControl, peer: "worker-b")
        guard case let .refused(reason) = outcome else {
            Issue.record("accepted")
            return
        }
        #expect(reason.contains("rings differ (here 4 × 4096 bytes, there 8 × 4096 bytes)"), "\(reason)")
        #expect(try await answering.value == nil)
        #expect(fabric.liveRegions(on: "fake_a") == 0 && fabric.liveRegions(on: "fake_b") == 0)
    }

    @Test("a malformed offer is refused, saying what is wrong with it")
    func malformedOffer() async throws {
        let (dialerControl, answererControl) = LocalActivationTransport.makePair()
        let answering = Self.answer(on: answererControl) { .failure(.unavailable(reason: "unused")) }
        try await dialerControl.sendTensor(id: RDMALinkHandshake.offerTensorID, data: Data([0x4e, 0x56]))
        var tensors = dialerControl.incomingTensors.makeAsyncIterator()
        let answer = try #require(try await tensors.next())
        let bytes = [UInt8](try await answer.chunks.collectData(maxBytes: 2048))
        #expect(bytes.first == 0)
        #expect(String(decoding: bytes.dropFirst(), as: UTF8.self)
                == "RDMA connection information from worker-a is malformed: 2 bytes, expected 56")
        #expect(try await answering.value == nil)
    }

    @Test("a malformed answer fails the exchange and releases the dialer's rings")
    func malformedAnswer() async throws {
        let fabric = FakeFabric()
        let (dialerControl, answererControl) = LocalActivationTransport.makePair()
        let answering = Task {
            var tensors = answererControl.incomingTensors.makeAsyncIterator()
            _ = try await tensors.next()?.chunks.collectData()
            try await answererControl.sendTensor(id: RDMALinkHandshake.offerTensorID, data: Data([7, 1, 2]))
        }
        await #expect {
            _ = try await RDMALinkHandshake.offer(try Self.transport(fabric, "fake_a", peer: "worker-b", last: 1),
                                                  over: dialerControl, peer: "worker-b")
        } throws: { error in
            (error as? RDMALinkHandshake.Failure)?.description == "RDMA answer from worker-b is malformed: status 7"
        }
        try await answering.value
        #expect(fabric.liveRegions(on: "fake_a") == 0)
    }
}
