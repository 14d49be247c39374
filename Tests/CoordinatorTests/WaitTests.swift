import ClusterProtocol
import Foundation
import Testing
@testable import Coordinator

/// The coordinator's waits (a tensor on the data path, a change of the worker set) end when what they wait for
/// happens, when it can no longer happen, and when their task is cancelled.
@Suite struct WaitTests {
    struct Lost: Error, Equatable { let peer: String }

    @Test func aTensorDeliveredBeforeOrWhileWaitingIsCollectedOnce() async throws {
        let mailbox = BulkMailbox()
        await mailbox.deliver(peer: "w1", id: 7, bytes: Data([1, 2]))
        #expect(try await mailbox.take(peer: "w1", id: 7) == Data([1, 2]))
        async let later = mailbox.take(peer: "w1", id: 8)
        try await Task.sleep(for: .milliseconds(50))
        await mailbox.deliver(peer: "w2", id: 8, bytes: Data([9]))   // another peer's tensor 8 is not it
        await mailbox.deliver(peer: "w1", id: 8, bytes: Data([3]))
        #expect(try await later == Data([3]))
    }

    @Test func aLossFailsTheWaitersEvenWhenThePeerIsBackBeforeTheyWake() async throws {
        let mailbox = BulkMailbox()
        let waiting = Task { try await mailbox.take(peer: "w1", id: 1) }
        try await Task.sleep(for: .milliseconds(50))
        await mailbox.failAll(peer: "w1", error: Lost(peer: "w1"))
        await mailbox.peerReturned("w1")
        await #expect(throws: Lost(peer: "w1")) { try await waiting.value }
        // While lost, a new collector fails at once; once back, it waits again.
        await mailbox.failAll(peer: "w1", error: Lost(peer: "w1"))
        await #expect(throws: Lost(peer: "w1")) { try await mailbox.take(peer: "w1", id: 2) }
    }

    @Test func aCancelledCollectorStopsWaiting() async throws {
        let mailbox = BulkMailbox()
        let collector = Task { try await mailbox.take(peer: "w1", id: 1) }
        try await Task.sleep(for: .milliseconds(50))
        collector.cancel()
        await #expect(throws: CancellationError.self) { try await collector.value }
    }

    @Test func aWaitForTheWorkerSetEndsOnAChangeOrItsTimeout() async throws {
        let registry = WorkerRegistry()
        let seen = await registry.generation
        let started = ContinuousClock.now
        await registry.waitForChange(after: seen, timeout: .milliseconds(100))
        #expect(ContinuousClock.now - started >= .milliseconds(100))

        async let woken: Void = registry.waitForChange(after: seen, timeout: .seconds(30))
        try await Task.sleep(for: .milliseconds(50))
        await registry.register(WorkerInfo(name: "w1", address: NodeAddress(host: "127.0.0.1", port: 1), device: "cpu",
                                           memoryBytes: 1, freeDiskBytes: 1, softwareVersion: "test"))
        let wokenAt = ContinuousClock.now
        await woken
        #expect(ContinuousClock.now - wokenAt < .seconds(5))
    }

    @Test func aPeerThatSendsMoreThanTheMailboxHoldsFailsItsCollectors() async throws {
        let mailbox = BulkMailbox(maxHeldBytes: 10)
        await mailbox.deliver(peer: "w1", id: 1, bytes: Data(count: 6))
        await mailbox.deliver(peer: "w1", id: 2, bytes: Data(count: 6))   // 12 > 10: dropped, w1 fails
        await #expect(throws: BulkMailboxFull.self) { try await mailbox.take(peer: "w1", id: 2) }
        // Another peer is unaffected, and what is collected frees room.
        await mailbox.deliver(peer: "w2", id: 1, bytes: Data(count: 8))
        #expect(try await mailbox.take(peer: "w2", id: 1).count == 8)
        await mailbox.deliver(peer: "w2", id: 2, bytes: Data(count: 8))
        #expect(try await mailbox.take(peer: "w2", id: 2).count == 8)
    }
}
