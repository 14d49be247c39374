import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Testing
import Transport
@testable import ActorSystem

/// `receiveIncomingTensors(upgrade:)`: a bulk connection whose first tensor is the offer moves to the transport the
/// hook answers with (a local pair stands in for RDMA); any other connection, or a declined offer, stays on TCP.
@Suite("Bulk connections moved to another transport", .timeLimit(.minutes(1)))
struct BulkLinkUpgradeTests {
    static let offerID: UInt64 = 1 << 60 | 7

    /// What the receiver took, and what the hook saw and closed.
    final class Observed: Sendable {
        let received = NIOLockedValueBox<[(peer: String, id: UInt64, bytes: Data)]>([])
        let offers = NIOLockedValueBox<[Data]>([])
        let closes = NIOLockedValueBox(0)
        /// The end of the upgraded link the test holds (the "remote" side of the other transport).
        let remote = NIOLockedValueBox<LocalActivationTransport?>(nil)
    }

    static func receive(on system: ClusterActorSystem, accept: Bool, observed: Observed) -> Task<Void, Never> {
        let upgrade = BulkLinkUpgrade(offerTensorID: offerID, maxOfferBytes: 64) { _, offer, connection in
            observed.offers.withLockedValue { $0.append(offer) }
            // The answer goes back on the bulk connection, as RDMA's does.
            try await connection.sendTensor(id: offerID, data: Data([accept ? 1 : 0]))
            guard accept else { return nil }
            let (here, there) = LocalActivationTransport.makePair()
            observed.remote.withLockedValue { $0 = there }
            return UpgradedBulkLink(transport: here, close: {
                observed.closes.withLockedValue { $0 += 1 }
                await here.close()
            })
        }
        return Task {
            await system.receiveIncomingTensors(logger: quiet, acknowledge: true, upgrade: upgrade) { peer, id, bytes in
                observed.received.withLockedValue { $0.append((peer, id, bytes)) }
            }
        }
    }

    static func waitFor(_ condition: () -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(5)
        while !condition() {
            guard ContinuousClock.now < deadline else { Issue.record("timed out"); return }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    @Test("an accepted offer: tensors and acknowledgements travel on the new transport; closing the bulk connection closes it")
    func accepted() async throws {
        let a = try await startSystem("worker-a")
        let b = try await startSystem("worker-b")
        let observed = Observed()
        let receiving = Self.receive(on: b, accept: true, observed: observed)
        try await withSystems([a, b]) {
            let bulk = try await a.openBulkTransport(to: b.endpoint)
            try await bulk.sendTensor(id: Self.offerID, data: Data("offer".utf8))
            var answers = bulk.incomingTensors.makeAsyncIterator()
            let answer = try #require(try await answers.next())
            #expect(Array(try await answer.chunks.collectData(maxBytes: 8)) == [1])
            try await Self.waitFor { observed.remote.withLockedValue { $0 } != nil }
            let remote = try #require(observed.remote.withLockedValue { $0 })
            #expect(observed.offers.withLockedValue { $0 } == [Data("offer".utf8)])

            try await remote.sendTensor(id: 3, data: Data([9, 8, 7]))
            var remoteAcknowledgements = remote.acknowledgements().makeAsyncIterator()
            let acknowledgement = try #require(try await remoteAcknowledgements.next())
            #expect(acknowledgement.id == 3 && acknowledgement.byteCount == 3)
            try await Self.waitFor { observed.received.withLockedValue { $0.count } == 1 }
            let received = observed.received.withLockedValue { $0 }
            #expect(received.count == 1 && received.first?.peer == "worker-a" && received.first?.id == 3
                    && received.first?.bytes == Data([9, 8, 7]))

            await bulk.connection.close()
            try await Self.waitFor { observed.closes.withLockedValue { $0 } > 0 }
        }
        receiving.cancel()
    }

    @Test("a declined offer, and a connection that starts with data, stay on the bulk connection")
    func declinedAndPlain() async throws {
        let a = try await startSystem("worker-a")
        let b = try await startSystem("worker-b")
        let observed = Observed()
        let receiving = Self.receive(on: b, accept: false, observed: observed)
        try await withSystems([a, b]) {
            let declined = try await a.openBulkTransport(to: b.endpoint)
            try await declined.sendTensor(id: Self.offerID, data: Data("offer".utf8))
            var answers = declined.incomingTensors.makeAsyncIterator()
            let answer = try #require(try await answers.next())
            #expect(Array(try await answer.chunks.collectData(maxBytes: 8)) == [0])
            try await declined.sendTensor(id: 5, data: Data([1, 2]))
            var declinedAcknowledgements = declined.acknowledgements().makeAsyncIterator()
            let first = try #require(try await declinedAcknowledgements.next())
            #expect(first.id == 5 && first.byteCount == 2)

            // The offer's id counts only as the first tensor: later it is data like any other.
            let plain = try await a.openBulkTransport(to: b.endpoint)
            try await plain.sendTensor(id: 6, data: Data([3]))
            try await plain.sendTensor(id: Self.offerID, data: Data([4, 4]))
            var acknowledgements = plain.acknowledgements().makeAsyncIterator()
            let sixth = try #require(try await acknowledgements.next())
            let offerAsData = try #require(try await acknowledgements.next())
            #expect(sixth.id == 6 && sixth.byteCount == 1)
            #expect(offerAsData.id == Self.offerID && offerAsData.byteCount == 2)
            #expect(observed.offers.withLockedValue { $0.count } == 1)
            #expect(observed.remote.withLockedValue { $0 } == nil)
            // Acknowledged before `receive` runs: wait for it to have run.
            try await Self.waitFor { observed.received.withLockedValue { $0.count } == 3 }
            #expect(observed.received.withLockedValue { $0.map(\.id) } == [5, 6, Self.offerID])
        }
        receiving.cancel()
    }
}
