import Foundation
import Logging
import NIOCore
import Testing
import Transport
@testable import RDMATransport

/// Two transports on the fake fabric, connected as the control connection would connect them.
struct FakeLink {
    let fabric: FakeFabric
    let a: RDMAActivationTransport
    let b: RDMAActivationTransport

    static func endpoint(_ last: UInt8) -> RDMALinkEndpoint {
        RDMALinkEndpoint(port: 1, gidIndex: 3,
                         gid: VerbsGID(bytes: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 168, 100, last])!, mtuCode: 5)
    }

    static func make(ring: RDMARingParameters = RDMARingParameters(slotBytes: 4096, slotCount: 8),
                     inboundBufferBytes: Int = 1 << 20) throws -> FakeLink {
        let fabric = FakeFabric()
        let logger = Logger(label: "rdma-test")
        let a = try RDMAActivationTransport(device: fabric.device("fake_a"), endpoint: endpoint(1), peerName: "worker-b",
                                            ring: ring, inboundBufferBytes: inboundBufferBytes, logger: logger)
        let b = try RDMAActivationTransport(device: fabric.device("fake_b"), endpoint: endpoint(2), peerName: "worker-a",
                                            ring: ring, inboundBufferBytes: inboundBufferBytes, logger: logger)
        // Through the wire encoding, as over the control connection.
        try a.connect(to: RDMAConnectionInfo.decode(b.localInfo.encoded(), peer: "worker-b"))
        try b.connect(to: RDMAConnectionInfo.decode(a.localInfo.encoded(), peer: "worker-a"))
        return FakeLink(fabric: fabric, a: a, b: b)
    }

    func close() async {
        await a.close()
        await b.close()
    }
}

func pattern(_ count: Int, seed: UInt8) -> Data {
    Data((0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed)) })
}

/// Chunks that throw after `goodChunks`.
struct FailingChunks: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    struct ChunkFailure: Error {}
    let goodChunks: Int
    let chunkBytes: Int
    struct AsyncIterator: AsyncIteratorProtocol {
        var remaining: Int
        let chunkBytes: Int
        mutating func next() async throws -> ByteBuffer? {
            guard remaining > 0 else { throw ChunkFailure() }
            remaining -= 1
            return ByteBuffer(bytes: pattern(chunkBytes, seed: 7))
        }
    }
    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(remaining: goodChunks, chunkBytes: chunkBytes) }
}

@Suite("RDMAActivationTransport on the fake fabric")
struct RDMAActivationTransportTests {
    @Test("tensors of every size arrive whole, in order and byte-identical; slots and credits come back")
    func roundTrip() async throws {
        let link = try FakeLink.make()
        let payload = link.a.ring.payloadBytesPerSlot
        let sizes = [0, 1, payload - 1, payload, payload + 1, 5 * payload + 17, 100_000]
        let sender = Task {
            for (index, size) in sizes.enumerated() {
                try await link.a.sendTensor(id: UInt64(100 + index), data: pattern(size, seed: UInt8(index)))
            }
        }
        var iterator = link.b.incomingTensors.makeAsyncIterator()
        for (index, size) in sizes.enumerated() {
            let tensor = try #require(try await iterator.next())
            #expect(tensor.id == UInt64(100 + index))
            let bytes = try await tensor.chunks.collectData()
            #expect(bytes == pattern(size, seed: UInt8(index)), "tensor of \(size) bytes")
        }
        try await sender.value
        // Every slot is credited back once the receiver drained it.
        for _ in 0..<100 where link.a.availableCredits < link.a.ring.slotCount { try await Task.sleep(for: .milliseconds(10)) }
        #expect(link.a.availableCredits == link.a.ring.slotCount)
        await link.close()
    }

    @Test("both directions at once, with acknowledgements on the same link")
    func acknowledgements() async throws {
        let link = try FakeLink.make()
        let acks = link.a.acknowledgements()
        let receiver = Task {
            for try await tensor in link.b.incomingTensors {
                let bytes = try await tensor.chunks.collectData()
                try await link.b.acknowledge(id: tensor.id, byteCount: bytes.count)
                if tensor.id == 3 { return }
            }
        }
        for id in 1...3 { try await link.a.sendTensor(id: UInt64(id), data: pattern(10_000 * id, seed: 1)) }
        var seen: [TensorAcknowledgement] = []
        for try await ack in acks {
            seen.append(ack)
            if seen.count == 3 { break }
        }
        #expect(seen.map(\.id) == [1, 2, 3])
        #expect(seen.map(\.byteCount) == [10_000, 20_000, 30_000])
        try await receiver.value
        await link.close()
    }

    @Test("ring exhaustion: a sender out of credits waits and never overwrites an undrained slot")
    func ringExhaustion() async throws {
        let ring = RDMARingParameters(slotBytes: 256, slotCount: 4)
        // The inbound queue takes one slot's bytes, so the consumer's backlog shows up as withheld credits.
        let link = try FakeLink.make(ring: ring, inboundBufferBytes: 1)
        let data = pattern(40 * ring.payloadBytesPerSlot, seed: 9)
        let sender = Task { try await link.a.sendTensor(id: 1, data: data) }
        try await Task.sleep(for: .milliseconds(300))
        // Nobody reads: the queue holds one piece, one more is being delivered, and the ring's slots are all written.
        #expect(link.a.availableCredits == 0)
        let landed = link.fabric.landed(on: "fake_b")
        #expect(landed <= ring.slotCount + 2, "\(landed) writes landed with 4 slots and nothing consumed")
        #expect(!sender.isCancelled)
        var iterator = link.b.incomingTensors.makeAsyncIterator()
        let tensor = try #require(try await iterator.next())
        #expect(try await tensor.chunks.collectData() == data)
        try await sender.value
        #expect(link.fabric.landed(on: "fake_b") == 40)
        await link.close()
    }

    @Test("a sender that fails mid-tensor aborts it at the receiver with its reason")
    func abortMidTensor() async throws {
        let link = try FakeLink.make()
        await #expect(throws: FailingChunks.ChunkFailure.self) {
            try await link.a.sendTensor(id: 5, chunks: FailingChunks(goodChunks: 3, chunkBytes: 5000))
        }
        try await link.a.sendTensor(id: 6, data: pattern(10, seed: 2))
        var iterator = link.b.incomingTensors.makeAsyncIterator()
        let aborted = try #require(try await iterator.next())
        #expect(aborted.id == 5)
        do {
            _ = try await aborted.chunks.collectData()
            Issue.record("an aborted tensor read whole")
        } catch let TransportError.remoteError(code, message) {
            #expect(code == "aborted")
            #expect(message.contains("sender failed"))
        }
        let next = try #require(try await iterator.next())
        #expect(next.id == 6)
        #expect(try await next.chunks.collectData() == pattern(10, seed: 2))
        await link.close()
    }

    @Test("a completion with an error status takes the link down, naming device, QP and peer")
    func completionError() async throws {
        let link = try FakeLink.make()
        try await link.a.sendTensor(id: 1, data: pattern(100, seed: 1))
        link.fabric.injectCompletionError(on: "fake_a", status: VerbsCompletion.statusRemoteAccessError)
        // The first write fails asynchronously; the next send sees the failure.
        try? await link.a.sendTensor(id: 2, data: pattern(100, seed: 2))
        for _ in 0..<100 where link.a.failure == nil { try await Task.sleep(for: .milliseconds(10)) }
        let failure = try #require(link.a.failure)
        guard case let .completionFailed(device, _, peer, operation, status) = failure else {
            Issue.record("unexpected \(failure)")
            return
        }
        #expect(device == "fake_a" && peer == "worker-b" && status == VerbsCompletion.statusRemoteAccessError)
        #expect(operation.contains("WRITE"))
        #expect(failure.description.contains("remote access error"))
        #expect(failure.isLinkFailure)
        #expect(try link.a.queuePairState() == .error)
        await #expect(throws: RDMALinkError.self) { try await link.a.sendTensor(id: 3, data: pattern(1, seed: 0)) }
        // The receiver still gets what arrived whole before the failure.
        var iterator = link.b.incomingTensors.makeAsyncIterator()
        let first = try #require(try await iterator.next())
        #expect(try await first.chunks.collectData() == pattern(100, seed: 1))
        await link.close()
        #expect(link.fabric.liveRegions(on: "fake_a") == 0)
    }

    @Test("a peer that vanishes makes the next write fail with the retry counter exceeded")
    func peerVanishes() async throws {
        let link = try FakeLink.make()
        try await link.a.sendTensor(id: 1, data: pattern(10, seed: 1))
        link.fabric.vanish("fake_b")
        try? await link.a.sendTensor(id: 2, data: pattern(10, seed: 2))
        for _ in 0..<100 where link.a.failure == nil { try await Task.sleep(for: .milliseconds(10)) }
        #expect(link.a.failure.map { if case .completionFailed(_, _, "worker-b", _, VerbsCompletion.statusRetryExceeded) = $0 { true } else { false } } == true)
        #expect(link.a.failure?.description.contains("peer unreachable") == true)
        // The sender's reader ends with the failure instead of waiting for ever.
        await #expect(throws: RDMALinkError.self) {
            for try await _ in link.a.incomingTensors {}
        }
        await link.a.close()
        #expect(link.fabric.liveQueuePairs(on: "fake_a") == 0)
    }

    @Test("close ends the peer's stream cleanly and deregisters everything; nothing is used after")
    func closeReleasesEverything() async throws {
        let link = try FakeLink.make()
        #expect(link.fabric.liveRegions(on: "fake_a") == 2)
        #expect(link.fabric.liveQueuePairs(on: "fake_a") == 1)
        try await link.a.sendTensor(id: 1, data: pattern(50, seed: 3))
        await link.a.close()
        var received: [UInt64] = []
        for try await tensor in link.b.incomingTensors {
            received.append(tensor.id)
            _ = try await tensor.chunks.collectData()
        }
        #expect(received == [1])
        await #expect(throws: RDMALinkError.self) { try await link.a.sendTensor(id: 2, data: pattern(1, seed: 0)) }
        await link.b.close()
        for device in ["fake_a", "fake_b"] {
            #expect(link.fabric.liveRegions(on: device) == 0)
            #expect(link.fabric.liveQueuePairs(on: device) == 0)
            #expect(link.fabric.liveCompletionQueues(on: device) == 0)
            #expect(link.fabric.liveDomains(on: device) == 0)
        }
        await link.a.close()  // idempotent
    }

    @Test("an idle link sleeps on the completion channel instead of polling")
    func idleDoesNotSpin() async throws {
        let link = try FakeLink.make()
        try await Task.sleep(for: .milliseconds(100))
        let queue = try #require(link.fabric.completionQueues.first { $0.device == "fake_b" })
        let before = queue.polls
        try await Task.sleep(for: .milliseconds(500))
        // With a 200 ms wake-up for close, 500 ms idle costs a handful of polls, not thousands.
        #expect(queue.polls - before <= 10, "\(queue.polls - before) polls while idle")
        await link.close()
    }

    @Test("rings of different shapes are refused at connect")
    func ringMismatch() async throws {
        let fabric = FakeFabric()
        let logger = Logger(label: "rdma-test")
        let a = try RDMAActivationTransport(device: fabric.device("fake_a"), endpoint: FakeLink.endpoint(1), peerName: "b",
                                            ring: RDMARingParameters(slotBytes: 4096, slotCount: 8), logger: logger)
        let b = try RDMAActivationTransport(device: fabric.device("fake_b"), endpoint: FakeLink.endpoint(2), peerName: "a",
                                            ring: RDMARingParameters(slotBytes: 4096, slotCount: 4), logger: logger)
        #expect(throws: RDMALinkError.ringMismatch(device: "fake_a", peer: "b",
                                                   local: RDMARingParameters(slotBytes: 4096, slotCount: 8),
                                                   remote: RDMARingParameters(slotBytes: 4096, slotCount: 4))) {
            try a.connect(to: b.localInfo)
        }
        #expect(try a.queuePairState() == .initialized)
        await #expect(throws: RDMALinkError.notConnected(device: "fake_a", peer: "b")) {
            try await a.sendTensor(id: 1, data: pattern(1, seed: 0))
        }
        await a.close()
        await b.close()
        #expect(fabric.liveRegions(on: "fake_a") == 0 && fabric.liveRegions(on: "fake_b") == 0)
    }

    @Test("a ring outside the protocol's limits is refused before anything is registered")
    func badRing() {
        let fabric = FakeFabric()
        #expect(throws: RDMALinkError.invalidRing(device: "fake_a", ring: RDMARingParameters(slotBytes: 8, slotCount: 4))) {
            _ = try RDMAActivationTransport(device: fabric.device("fake_a"), endpoint: FakeLink.endpoint(1), peerName: "b",
                                            ring: RDMARingParameters(slotBytes: 8, slotCount: 4), logger: Logger(label: "t"))
        }
        #expect(fabric.liveRegions(on: "fake_a") == 0)
    }
}

/// A peer that speaks the wire format badly, written with the raw fake verbs: the transport must refuse each
/// violation, naming it, instead of delivering garbage.
@Suite("RDMAActivationTransport refuses a misbehaving peer")
struct RDMAProtocolViolationTests {
    struct RawPeer {
        let side: VerbsDataPlaneTests.Side
        let staging: UnsafeMutableRawBufferPointer
        let region: any VerbsMemoryRegion
        let ring: RDMAConnectionInfo

        /// Writes `payload` with `header` into slot `slot` of the transport's ring, announced by `immediate`.
        func write(slot: Int, tensorID: UInt64, claimedLength: Int, payload: [UInt8], immediate: UInt32) throws {
            RDMARing.writeHeader(tensorID: tensorID, payloadBytes: claimedLength, into: staging.baseAddress!)
            (staging.baseAddress! + RDMARing.headerBytes).copyMemory(from: payload, byteCount: payload.count)
            try side.pair.postWriteWithImmediate(
                workRequestID: 1, region: region, offset: 0, length: RDMARing.headerBytes + payload.count,
                remoteAddress: ring.ringAddress + UInt64(slot * Int(ring.slotBytes)), remoteKey: ring.ringKey, immediate: immediate)
        }
    }

    static func connect() throws -> (RDMAActivationTransport, RawPeer) {
        let fabric = FakeFabric()
        let ring = RDMARingParameters(slotBytes: 256, slotCount: 4)
        let transport = try RDMAActivationTransport(device: fabric.device("fake_a"), endpoint: FakeLink.endpoint(1),
                                                    peerName: "rogue", ring: ring, logger: Logger(label: "t"))
        let side = try VerbsDataPlaneTests.side(fabric, "fake_rogue")
        let staging = UnsafeMutableRawBufferPointer.allocate(byteCount: ring.slotBytes, alignment: 64)
        let region = try side.domain.register(staging, remoteWrite: false)
        try side.pair.modifyToInit(port: 1)
        for _ in 0..<4 { try side.pair.postReceive(workRequestID: 7) }
        let info = transport.localInfo
        try side.pair.modifyToReadyToReceive(VerbsRemoteQueuePair(queuePairNumber: info.queuePairNumber, packetSequenceNumber: 0,
                                                                  mtuCode: 5, gid: info.gid, localGIDIndex: 0, port: 1))
        try side.pair.modifyToReadyToSend(packetSequenceNumber: 0)
        try transport.connect(to: RDMAConnectionInfo(
            queuePairNumber: side.pair.number, packetSequenceNumber: 0, mtuCode: 5, lid: 0, port: 1, addressByGID: true,
            gid: FakeLink.endpoint(2).gid, ringAddress: region.address, ringKey: region.remoteKey,
            slotBytes: UInt32(ring.slotBytes), slotCount: UInt16(ring.slotCount)))
        return (transport, RawPeer(side: side, staging: staging, region: region, ring: info))
    }

    static func violation(of transport: RDMAActivationTransport) async throws -> String {
        do {
            for try await tensor in transport.incomingTensors { _ = try await tensor.chunks.collectData() }
            Issue.record("the stream ended cleanly")
            return ""
        } catch let error as RDMALinkError {
            guard case let .protocolViolation(device, peer, reason) = error else {
                Issue.record("unexpected \(error)")
                return ""
            }
            #expect(device == "fake_a" && peer == "rogue")
            return reason
        }
    }

    @Test("a slot out of turn")
    func slotOutOfTurn() async throws {
        let (transport, peer) = try Self.connect()
        try peer.write(slot: 2, tensorID: 1, claimedLength: 3, payload: [1, 2, 3],
                       immediate: RDMARing.immediate(.data(slot: 2, first: true, last: true, abort: false)))
        #expect(try await Self.violation(of: transport) == "write announced slot 2, expected 0")
        await transport.close()
    }

    @Test("a length beyond the slot")
    func lengthBeyondSlot() async throws {
        let (transport, peer) = try Self.connect()
        try peer.write(slot: 0, tensorID: 1, claimedLength: 10_000, payload: [1],
                       immediate: RDMARing.immediate(.data(slot: 0, first: true, last: true, abort: false)))
        #expect(try await Self.violation(of: transport) == "slot 0 claims 10000 bytes; a slot holds 240")
        await transport.close()
    }

    @Test("a piece of another tensor while one is open")
    func pieceOutOfOrder() async throws {
        let (transport, peer) = try Self.connect()
        try peer.write(slot: 0, tensorID: 1, claimedLength: 1, payload: [1],
                       immediate: RDMARing.immediate(.data(slot: 0, first: true, last: false, abort: false)))
        try peer.write(slot: 1, tensorID: 2, claimedLength: 1, payload: [2],
                       immediate: RDMARing.immediate(.data(slot: 1, first: false, last: true, abort: false)))
        let reason = try await Self.violation(of: transport)
        #expect(reason == "tensor 2 piece out of order (tensor 1 is open)")
        await transport.close()
    }

    @Test("an immediate of no known form")
    func unknownImmediate() async throws {
        let (transport, peer) = try Self.connect()
        try peer.write(slot: 0, tensorID: 1, claimedLength: 1, payload: [1], immediate: 3 << 30)
        #expect(try await Self.violation(of: transport) == "received receiveWithImmediate with immediate \(UInt32(3) << 30)")
        await transport.close()
    }

    @Test("more credits than slots")
    func creditOverflow() async throws {
        let (transport, peer) = try Self.connect()
        try peer.side.pair.postWriteWithImmediate(workRequestID: 2, region: peer.region, offset: 0, length: 0,
                                                  remoteAddress: 0, remoteKey: 0,
                                                  immediate: RDMARing.immediate(.credit(count: 1)))
        for _ in 0..<100 where transport.failure == nil { try await Task.sleep(for: .milliseconds(10)) }
        #expect(transport.failure == .protocolViolation(device: "fake_a", peer: "rogue", reason: "more credits returned than slots"))
        await transport.close()
    }
}
