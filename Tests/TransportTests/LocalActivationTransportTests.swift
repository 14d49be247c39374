import Foundation
import NIOCore
import Testing
@testable import Transport

@Suite("Local activation transport", .timeLimit(.minutes(1)))
struct LocalActivationTransportTests {
    @Test("tensors arrive whole, in order, both ways, with the sender's bytes")
    func bothWaysInOrder() async throws {
        let (a, b) = LocalActivationTransport.makePair()
        let first = (0..<4).map { patternChunk(index: $0, size: 4096) }
        let second = [patternChunk(index: 9, size: 64)]
        try await a.sendTensor(id: 1, chunks: first)
        try await a.sendTensor(id: 2, chunks: second)
        try await b.sendTensor(id: 3, chunks: [ByteBuffer(bytes: [5, 6])])
        var incoming = b.incomingTensors.makeAsyncIterator()
        let t1 = try #require(try await incoming.next())
        #expect(t1.id == 1)
        var expected = StreamChecksum(), got = StreamChecksum()
        first.forEach { expected.update($0) }
        got.update(try await t1.chunks.collect(maxBytes: 1 << 20))
        #expect(got.final == expected.final)
        let t2 = try #require(try await incoming.next())
        #expect(t2.id == 2)
        #expect(try await t2.chunks.collect(maxBytes: 1 << 20) == second[0])
        var back = a.incomingTensors.makeAsyncIterator()
        let t3 = try #require(try await back.next())
        #expect(t3.id == 3)
        let t3Bytes = try await t3.chunks.collect(maxBytes: 8)
        #expect(Array(t3Bytes.readableBytesView) == [5, 6])
        await a.close()
        #expect(try await incoming.next() == nil)
    }

    @Test("collectData joins the chunks into one Data, byte for byte, and refuses more than maxBytes")
    func collectDataJoinsChunks() async throws {
        let (a, b) = LocalActivationTransport.makePair()
        let chunks = (0..<5).map { patternChunk(index: $0, size: 3000 + 8 * $0) }
        try await a.sendTensor(id: 1, chunks: chunks)
        try await a.sendTensor(id: 2, chunks: chunks)
        var incoming = b.incomingTensors.makeAsyncIterator()
        let whole = try await #require(try await incoming.next()).chunks.collectData()
        #expect(whole == Data(chunks.flatMap { Array($0.readableBytesView) }))
        let second = try #require(try await incoming.next())
        await #expect(throws: TransportError.self) { _ = try await second.chunks.collectData(maxBytes: 6000) }
        await a.close()
    }

    @Test("the buffer is bounded: a sender waits for a slow consumer, and the peak stays within bound + one chunk")
    func backPressure() async throws {
        let chunkSize = 64 << 10
        let (a, b) = LocalActivationTransport.makePair(bufferBytes: 256 << 10)
        let sender = Task {
            try await a.sendTensor(id: 7, chunks: (0..<64).map { patternChunk(index: $0, size: chunkSize) })
        }
        try await Task.sleep(for: .milliseconds(100))
        // The consumer has not started: the sender must be held back well before 64 chunks (4 MiB).
        #expect(await b.peakReceiveQueueBytes() <= (256 << 10) + chunkSize)
        var incoming = b.incomingTensors.makeAsyncIterator()
        let tensor = try #require(try await incoming.next())
        var total = 0
        for try await chunk in tensor.chunks {
            total += chunk.readableBytes
            try await Task.sleep(for: .microseconds(200))
        }
        try await sender.value
        #expect(total == 64 * chunkSize)
        #expect(await b.peakReceiveQueueBytes() <= (256 << 10) + chunkSize)
        #expect(await b.peakReceiveQueueBytes() >= 128 << 10)
    }

    @Test("a failing sender aborts the tensor on the receiver; closing mid-tensor fails the reader with connectionClosed")
    func abortAndClose() async throws {
        let (a, b) = LocalActivationTransport.makePair()
        await #expect(throws: FailingChunks.SenderGaveUp.self) { try await a.sendTensor(id: 4, chunks: FailingChunks(failAfter: 3)) }
        var incoming = b.incomingTensors.makeAsyncIterator()
        let aborted = try #require(try await incoming.next())
        await #expect { _ = try await aborted.chunks.collect(maxBytes: 1 << 20) } throws: { error in
            guard case .remoteError(let code, _) = error as? TransportError else { return false }
            return code == "aborted"
        }
        // Two chunks of a tensor whose last chunk never comes.
        let open = Task { try await a.sendTensor(id: 5, chunks: NeverEndingChunks()) }
        let partial = try #require(try await incoming.next())
        await a.close()
        await #expect { _ = try await partial.chunks.collect(maxBytes: 1 << 30) } throws: { error in
            guard case .connectionClosed = error as? TransportError else { return false }
            return true
        }
        await #expect(throws: TransportError.self) { try await open.value }
    }
}

/// Chunks forever, a little at a time.
struct NeverEndingChunks: AsyncSequence, Sendable {
    typealias Element = ByteBuffer
    struct AsyncIterator: AsyncIteratorProtocol {
        mutating func next() async throws -> ByteBuffer? {
            try await Task.sleep(for: .milliseconds(1))
            return ByteBuffer(bytes: [1, 2, 3, 4])
        }
    }
    func makeAsyncIterator() -> AsyncIterator { AsyncIterator() }
}
