import NIOCore

/// ``ActivationTransport`` between two parts of one process (the embedded single-process mode): chunks are handed
/// over by reference, never copied, through a bounded buffer per direction, so a slow consumer slows the producer
/// exactly as the TCP path does.
///
/// Make the two ends with ``makePair(bufferBytes:)``; what one sends the other receives. ``close()`` ends both
/// directions: the peer's `incomingTensors` finishes, a tensor being read throws `connectionClosed`, senders throw.
public final class LocalActivationTransport: ActivationTransport {
    /// Names this end in errors seen by the other end.
    public let name: String
    private let outbound: LocalBulkPipe
    private let inbound: LocalBulkPipe
    private let receiver: BulkReceiver
    private let sendGate = SerialGate()

    private init(name: String, outbound: LocalBulkPipe, inbound: LocalBulkPipe) {
        self.name = name
        self.outbound = outbound
        self.inbound = inbound
        self.receiver = BulkReceiver(source: inbound)
    }

    /// Two connected ends. Each direction buffers at most `bufferBytes` of chunks (plus the one chunk that crossed
    /// the bound); a sender waits until the receiver brings it under the bound.
    public static func makePair(bufferBytes: Int = 8 << 20, names: (String, String) = ("local-a", "local-b"))
        -> (LocalActivationTransport, LocalActivationTransport) {
        let aToB = LocalBulkPipe(capacity: max(1, bufferBytes), senderName: names.0)
        let bToA = LocalBulkPipe(capacity: max(1, bufferBytes), senderName: names.1)
        return (LocalActivationTransport(name: names.0, outbound: aToB, inbound: bToA),
                LocalActivationTransport(name: names.1, outbound: bToA, inbound: aToB))
    }

    public func sendTensor<Chunks: AsyncSequence>(id: UInt64, chunks: Chunks) async throws where Chunks.Element == ByteBuffer {
        try await sendGate.serialize { try await sendUnordered(id: id, chunks: chunks) }
    }

    private func sendUnordered<Chunks: AsyncSequence>(id: UInt64, chunks: Chunks) async throws where Chunks.Element == ByteBuffer {
        var isFirst = true
        // One chunk is held back so the last one can carry the last-chunk flag.
        var held: ByteBuffer?
        func emit(_ chunk: ByteBuffer, last: Bool) async throws {
            var flags: FrameFlags = []
            if isFirst { flags.insert(.firstChunk) }
            if last { flags.insert(.lastChunk) }
            isFirst = false
            try await outbound.push(.chunk(tensorID: id, flags: flags, bytes: chunk))
        }
        do {
            for try await chunk in chunks where chunk.readableBytes > 0 {
                if let previous = held { try await emit(previous, last: false) }
                held = chunk
            }
        } catch {
            if !isFirst {
                let envelope = (error as? any RemoteErrorConvertible)?.remoteErrorEnvelope
                    ?? RemoteErrorEnvelope(code: "aborted", message: "sender failed: \(error)")
                try? await outbound.push(.abort(tensorID: id, envelope))
            }
            throw error
        }
        try await emit(held ?? ByteBuffer(), last: true)
    }

    public var incomingTensors: IncomingTensors { IncomingTensors(receiver: receiver) }

    /// Largest number of chunk bytes buffered towards this end at once (for tests and tuning).
    public func peakReceiveQueueBytes() async -> Int { await inbound.peakBytes }

    /// Closes both directions (idempotent).
    public func close() async {
        await outbound.close()
        await inbound.close()
    }
}

/// One direction of a ``LocalActivationTransport``: a bounded FIFO of bulk items with one producer and one consumer.
actor LocalBulkPipe: BulkItemSource {
    private let capacity: Int
    nonisolated let peerName: String
    private var queue = CircularBuffer<BulkItem>()
    private var queuedBytes = 0
    private(set) var peakBytes = 0
    private var closed = false
    /// Set by ``fail(_:)``: the consumer sees this error once the queue is drained, instead of a clean end.
    private var failure: (any Error)?
    private var consumer: CheckedContinuation<BulkItem?, any Error>?
    private var producers: [CheckedContinuation<Void, Never>] = []

    init(capacity: Int, senderName: String) {
        self.capacity = capacity
        self.peerName = senderName
    }

    /// Appends an item; waits first while the buffer is at its bound.
    func push(_ item: BulkItem) async throws {
        while queuedBytes >= capacity && !closed {
            await withCheckedContinuation { producers.append($0) }
        }
        guard !closed else { throw TransportError.connectionClosed(peer: "local transport \(peerName)") }
        if let waiting = consumer {
            consumer = nil
            waiting.resume(returning: item)
            return
        }
        let bytes = item.payloadBytes
        queue.append(item)
        queuedBytes += bytes
        peakBytes = max(peakBytes, queuedBytes)
    }

    /// The items queued now, up to a quarter of the capacity in bytes (at least one), or the next one to arrive.
    func nextItems() async throws -> [BulkItem]? {
        if !queue.isEmpty {
            let (batch, batchBytes) = queue.popBatch(byteLimit: capacity / 4)
            queuedBytes -= batchBytes
            if queuedBytes < capacity { wakeProducers() }
            return batch
        }
        if let failure { throw failure }
        if closed { return nil }
        precondition(consumer == nil, "one consumer reads a local transport at a time")
        return try await withCheckedThrowingContinuation { consumer = $0 }.map { [$0] }
    }

    func close() {
        guard !closed else { return }
        closed = true
        consumer?.resume(returning: nil)
        consumer = nil
        wakeProducers()
    }

    /// Closes with an error: what is queued is still delivered, then the consumer throws `error`.
    func fail(_ error: any Error) {
        guard !closed else { return }
        closed = true
        failure = error
        consumer?.resume(throwing: error)
        consumer = nil
        wakeProducers()
    }

    private func wakeProducers() {
        let waiting = producers
        producers.removeAll()
        for producer in waiting { producer.resume() }
    }
}
