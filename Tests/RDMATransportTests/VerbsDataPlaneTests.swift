import Foundation
import Testing
@testable import RDMATransport

/// The verbs state machine and registration rules as the fake fabric enforces them, so that the transport's tests
/// run against the same rules a NIC applies.
@Suite("Queue pairs and registrations on the fake fabric")
struct VerbsDataPlaneTests {
    struct Side {
        let domain: any VerbsProtectionDomain
        let queue: any VerbsCompletionQueue
        let pair: any VerbsQueuePair
    }

    static func side(_ fabric: FakeFabric, _ name: String) throws -> Side {
        let device = fabric.device(name)
        let domain = try device.allocateProtectionDomain()
        let queue = try device.createCompletionQueue(entries: 16)
        let pair = try domain.createQueuePair(sendQueue: queue, receiveQueue: queue, maxSendRequests: 8, maxReceiveRequests: 8)
        return Side(domain: domain, queue: queue, pair: pair)
    }

    static func remote(_ pair: any VerbsQueuePair) -> VerbsRemoteQueuePair {
        VerbsRemoteQueuePair(queuePairNumber: pair.number, packetSequenceNumber: 0, mtuCode: 5,
                             gid: FakeLink.endpoint(9).gid, localGIDIndex: 3, port: 1)
    }

    @Test("RESET → INIT → RTR → RTS, then ERR")
    func forwardTransitions() throws {
        let fabric = FakeFabric()
        let a = try Self.side(fabric, "fake_a")
        #expect(try a.pair.state() == .reset)
        try a.pair.modifyToInit(port: 1)
        #expect(try a.pair.state() == .initialized)
        try a.pair.modifyToReadyToReceive(Self.remote(a.pair))
        #expect(try a.pair.state() == .readyToReceive)
        try a.pair.modifyToReadyToSend(packetSequenceNumber: 7)
        #expect(try a.pair.state() == .readyToSend)
        try a.pair.modifyToError()
        #expect(try a.pair.state() == .error)
        #expect(fabric.transitions.map { $0.components(separatedBy: ": ").last! }
                == ["RESET -> INIT", "INIT -> RTR", "RTR -> RTS", "RTS -> ERR"])
    }

    @Test("every state can go to ERR", arguments: [0, 1, 2, 3])
    func errorFromEveryState(steps: Int) throws {
        let fabric = FakeFabric()
        let a = try Self.side(fabric, "fake_a")
        if steps >= 1 { try a.pair.modifyToInit(port: 1) }
        if steps >= 2 { try a.pair.modifyToReadyToReceive(Self.remote(a.pair)) }
        if steps >= 3 { try a.pair.modifyToReadyToSend(packetSequenceNumber: 0) }
        try a.pair.modifyToError()
        #expect(try a.pair.state() == .error)
    }

    @Test("skipping or reversing a state is refused, naming the device and the state")
    func invalidTransitions() throws {
        let fabric = FakeFabric()
        let a = try Self.side(fabric, "fake_a")
        #expect(throws: VerbsError.self) { try a.pair.modifyToReadyToReceive(Self.remote(a.pair)) }  // RESET → RTR
        #expect(throws: VerbsError.self) { try a.pair.modifyToReadyToSend(packetSequenceNumber: 0) }  // RESET → RTS
        #expect(throws: VerbsError.self) { try a.pair.modifyToInit(port: 2) }  // no such port
        try a.pair.modifyToInit(port: 1)
        #expect(throws: VerbsError.self) { try a.pair.modifyToInit(port: 1) }  // INIT → INIT
        #expect(throws: VerbsError.self) { try a.pair.modifyToReadyToSend(packetSequenceNumber: 0) }  // INIT → RTS
        try a.pair.modifyToReadyToReceive(Self.remote(a.pair))
        #expect(throws: VerbsError.self) { try a.pair.modifyToInit(port: 1) }  // RTR → INIT
        try a.pair.modifyToReadyToSend(packetSequenceNumber: 0)
        #expect(throws: VerbsError.self) { try a.pair.modifyToReadyToReceive(Self.remote(a.pair)) }  // RTS → RTR
        try a.pair.modifyToError()
        do {
            try a.pair.modifyToReadyToSend(packetSequenceNumber: 0)  // ERR → RTS
            Issue.record("ERR → RTS accepted")
        } catch {
            #expect(error.description.contains("fake_a") && error.description.contains("from ERR"))
        }
        #expect(try a.pair.state() == .error)
    }

    @Test("posting before RTS is refused; after ERR it completes flushed")
    func postingByState() throws {
        let fabric = FakeFabric()
        let a = try Self.side(fabric, "fake_a")
        let bytes = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 8)
        defer { bytes.deallocate() }
        let region = try a.domain.register(bytes, remoteWrite: false)
        try a.pair.modifyToInit(port: 1)
        #expect(throws: VerbsError.self) {
            try a.pair.postWriteWithImmediate(workRequestID: 1, region: region, offset: 0, length: 8, remoteAddress: 0,
                                              remoteKey: 0, immediate: 0)
        }
        try a.pair.modifyToError()
        try a.pair.postWriteWithImmediate(workRequestID: 2, region: region, offset: 0, length: 8, remoteAddress: 0,
                                          remoteKey: 0, immediate: 0)
        #expect(try a.queue.poll(maxCompletions: 4).map(\.status) == [VerbsCompletion.statusWorkRequestFlushed])
        try a.pair.destroy()
        try region.deregister()
    }

    @Test("a deregistered region cannot be written from or into, nor deregistered twice")
    func registrationLifetime() throws {
        let fabric = FakeFabric()
        let a = try Self.side(fabric, "fake_a")
        let b = try Self.side(fabric, "fake_b")
        let source = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 8)
        let target = UnsafeMutableRawBufferPointer.allocate(byteCount: 64, alignment: 8)
        defer {
            source.deallocate()
            target.deallocate()
        }
        source.initializeMemory(as: UInt8.self, repeating: 0xab)
        target.initializeMemory(as: UInt8.self, repeating: 0)
        let sourceRegion = try a.domain.register(source, remoteWrite: false)
        let targetRegion = try b.domain.register(target, remoteWrite: true)
        for (pair, peer) in [(a.pair, b.pair), (b.pair, a.pair)] {
            try pair.modifyToInit(port: 1)
            try pair.postReceive(workRequestID: 9)
            try pair.modifyToReadyToReceive(Self.remote(peer))
            try pair.modifyToReadyToSend(packetSequenceNumber: 0)
        }
        try a.pair.postWriteWithImmediate(workRequestID: 1, region: sourceRegion, offset: 0, length: 16,
                                          remoteAddress: targetRegion.address, remoteKey: targetRegion.remoteKey, immediate: 42)
        #expect(Array(target.prefix(16)) == Array(repeating: 0xab, count: 16))
        #expect(try b.queue.poll(maxCompletions: 4) == [VerbsCompletion(workRequestID: 9, status: 0, opcode: .receiveWithImmediate,
                                                                          byteLength: 16, immediate: 42)])
        #expect(try a.queue.poll(maxCompletions: 4).map(\.status) == [0])

        // The PD refuses to go while a region is registered on it.
        #expect(throws: VerbsError.callFailed(call: "ibv_dealloc_pd", device: "fake_b", port: nil, code: EBUSY)) {
            try b.domain.deallocate()
        }
        try targetRegion.deregister()
        #expect(throws: VerbsError.self) { try targetRegion.deregister() }
        try b.pair.postReceive(workRequestID: 10)
        try a.pair.postWriteWithImmediate(workRequestID: 2, region: sourceRegion, offset: 0, length: 16,
                                          remoteAddress: targetRegion.address, remoteKey: targetRegion.remoteKey, immediate: 43)
        // The failed write, then a's own posted receive flushed by the move to ERR.
        #expect(try a.queue.poll(maxCompletions: 4).map(\.status)
                == [VerbsCompletion.statusRemoteAccessError, VerbsCompletion.statusWorkRequestFlushed])
        #expect(try a.pair.state() == .error)
        #expect(try b.pair.state() == .error)

        try sourceRegion.deregister()
        for side in [a, b] {
            try side.pair.destroy()
            try side.queue.destroy()
            try side.domain.deallocate()
        }
    }

    @Test("a completion queue in use by a queue pair cannot be destroyed")
    func completionQueueInUse() throws {
        let fabric = FakeFabric()
        let a = try Self.side(fabric, "fake_a")
        #expect(throws: VerbsError.self) { try a.queue.destroy() }
        try a.pair.destroy()
        try a.queue.destroy()
        #expect(throws: VerbsError.self) { try a.pair.destroy() }
    }
}
