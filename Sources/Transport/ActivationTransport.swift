import Foundation
import NIOConcurrencyHelpers
import NIOCore

/// Moves raw tensor bytes (hidden states) between two nodes, in chunks, with back-pressure on both ends.
/// Free of any socket detail so an RDMA implementation can sit beside ``TCPActivationTransport``.
///
/// Tensors on one transport are delivered whole and in send order; concurrent `sendTensor` calls are queued.
public protocol ActivationTransport: Sendable {
    associatedtype Incoming: AsyncSequence & Sendable where Incoming.Element == IncomingTensor

    /// Sends the tensor `id` as the bytes of `chunks`, in order. Returns when the last chunk has been handed to the
    /// network; suspends while the receiver is behind. If `chunks` throws, the receiver sees the tensor aborted.
    func sendTensor<Chunks: AsyncSequence>(id: UInt64, chunks: Chunks) async throws where Chunks.Element == ByteBuffer

    /// The tensors arriving from the peer. A single consumer; each tensor's chunks must be consumed (or the tensor
    /// dropped) before the next tensor is produced. Buffering is bounded: a slow consumer slows the sender.
    var incomingTensors: Incoming { get }
}

extension ActivationTransport {
    /// Sends an in-memory sequence of chunks.
    public func sendTensor(id: UInt64, chunks: some Sequence<ByteBuffer> & Sendable) async throws {
        try await sendTensor(id: id, chunks: SyncChunks(base: chunks))
    }

    /// Sends `data` as tensor `id`, cut into 4 MiB chunks.
    public func sendTensor(id: UInt64, data: Data) async throws {
        let size = 4 << 20
        var chunks: [ByteBuffer] = []
        var offset = data.startIndex
        repeat {
            let end = min(offset + size, data.endIndex)
            chunks.append(ByteBuffer(bytes: data[offset..<end]))
            offset = end
        } while offset < data.endIndex
        try await sendTensor(id: id, chunks: chunks)
    }
}

/// That a receiver took a tensor whole: acknowledged delivery, for senders that must resend what a broken link lost
/// (a send returns once the bytes are handed to the network, which is not delivery).
public struct TensorAcknowledgement: Sendable, Equatable {
    public let id: UInt64
    public let byteCount: Int
}

extension ActivationTransport {
    /// Tells the sender, on this same connection, that tensor `id` arrived whole with `byteCount` bytes. The ack is
    /// a tensor of the same id whose 8 bytes are the count; only a sender reading ``acknowledgements()`` expects it.
    public func acknowledge(id: UInt64, byteCount: Int) async throws {
        var count = ByteBuffer()
        count.writeInteger(UInt64(byteCount))
        try await sendTensor(id: id, chunks: [count])
    }

    /// The acknowledgements the receiver sends back, in order. Finishes when the connection closes cleanly and
    /// throws when it breaks, or when the peer sends anything but an acknowledgement.
    public func acknowledgements() -> AsyncThrowingStream<TensorAcknowledgement, any Error> {
        let tensors = incomingTensors
        return AsyncThrowingStream { continuation in
            let reader = Task {
                do {
                    for try await tensor in tensors {
                        var count = try await tensor.chunks.collect(maxBytes: 8)
                        guard let byteCount = count.readInteger(as: UInt64.self), byteCount <= UInt64(Int.max) else {
                            throw TransportError.bulkTransferFailed(tensorID: tensor.id, reason: "not an acknowledgement")
                        }
                        continuation.yield(TensorAcknowledgement(id: tensor.id, byteCount: Int(byteCount)))
                    }
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in reader.cancel() }
        }
    }
}

/// Adapts a `Sequence` to `AsyncSequence` without dragging in swift-async-algorithms.
struct SyncChunks<Base: Sequence & Sendable>: AsyncSequence, Sendable where Base.Element == ByteBuffer {
    typealias Element = ByteBuffer
    let base: Base
    struct AsyncIterator: AsyncIteratorProtocol {
        var iterator: Base.Iterator
        mutating func next() async -> ByteBuffer? { iterator.next() }
    }
    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(iterator: base.makeIterator()) }
}

/// One arriving tensor: its id and its bytes as chunks (their boundaries are the sender's, or smaller).
public struct IncomingTensor: Sendable {
    public let id: UInt64
    public let chunks: TensorChunks
}

/// The chunks of one ``IncomingTensor``. Iterating ends after the last chunk; it throws
/// ``TransportError/remoteError(code:message:)`` if the sender aborted, or `connectionClosed` mid-tensor.
public struct TensorChunks: AsyncSequence, Sendable {
    public typealias Element = ByteBuffer
    let receiver: BulkReceiver
    let tensorID: UInt64
    let first: ByteBuffer
    let firstIsLast: Bool

    public struct AsyncIterator: AsyncIteratorProtocol {
        let chunks: TensorChunks
        var pendingFirst: ByteBuffer?
        var finished: Bool

        public mutating func next() async throws -> ByteBuffer? {
            if let first = pendingFirst {
                pendingFirst = nil
                finished = chunks.firstIsLast
                return first
            }
            if finished { return nil }
            let (bytes, isLast) = try await chunks.receiver.nextChunk(of: chunks.tensorID)
            finished = isLast
            return bytes
        }
    }

    public func makeAsyncIterator() -> AsyncIterator {
        AsyncIterator(chunks: self, pendingFirst: first, finished: false)
    }

    /// Gathers every chunk into one buffer (for small tensors and tests).
    public func collect(maxBytes: Int) async throws -> ByteBuffer {
        var whole = ByteBuffer()
        for try await var chunk in self {
            guard whole.readableBytes + chunk.readableBytes <= maxBytes else {
                throw TransportError.bulkTransferFailed(tensorID: tensorID, reason: "more than \(maxBytes) bytes")
            }
            whole.writeBuffer(&chunk)
        }
        return whole
    }

    /// Appends every chunk to one `Data`: one copy per byte, where ``collect(maxBytes:)`` followed by a conversion
    /// to `Data` costs two and regrows the buffer (hundreds of MB per exported layer).
    public func collectData(maxBytes: Int = .max) async throws -> Data {
        var whole = Data()
        for try await chunk in self {
            guard whole.count + chunk.readableBytes <= maxBytes else {
                throw TransportError.bulkTransferFailed(tensorID: tensorID, reason: "more than \(maxBytes) bytes")
            }
            whole.append(contentsOf: chunk.readableBytesView)
        }
        return whole
    }
}

/// Where a ``BulkReceiver`` gets its items: a TCP connection's bounded queue, or an in-process pipe.
protocol BulkItemSource: Sendable {
    /// The items queued now (at least one; waits for one when none is), or `nil` once the source is closed and
    /// drained.
    func nextItems() async throws -> [BulkItem]?
    /// Names the peer in errors.
    var peerName: String { get }
}

/// The bulk queue of one ``PeerConnection``, read on its event loop.
struct ConnectionBulkSource: BulkItemSource {
    let connection: PeerConnection

    var peerName: String { connection.peer.name }

    /// Cancellation-aware: a cancelled consumer stops waiting (the daemons' receive loops end this way on shutdown).
    func nextItems() async throws -> [BulkItem]? {
        let bulk = connection.bulk
        let eventLoop = connection.channel.eventLoop
        let cancelled = NIOLockedValueBox(false)
        return try await withTaskCancellationHandler {
            try await eventLoop.flatSubmit {
                // A cancellation that came before this ran finds no waiter to fail: refuse to wait at all.
                if cancelled.withLockedValue({ $0 }) { return eventLoop.makeFailedFuture(CancellationError()) }
                return bulk.value.nextItems()
            }.get()
        } onCancel: {
            cancelled.withLockedValue { $0 = true }
            eventLoop.execute { bulk.value.cancelWait() }
        }
    }
}

/// Pulls bulk items off a source, one consumer at a time. Tracks where the consumer is so that
/// an undrained tensor is skipped when the next one is asked for.
final class BulkReceiver: Sendable {
    private let source: any BulkItemSource

    /// The consumer's side: items taken from the source and not yet read, and the id of the tensor whose chunks are
    /// still arriving. One consumer at a time; the lock only makes the class safe to share.
    private struct State {
        var taken = CircularBuffer<BulkItem>()
        var open: UInt64?
    }
    private let state = NIOLockedValueBox(State())

    init(source: some BulkItemSource) {
        self.source = source
    }

    convenience init(connection: PeerConnection) {
        self.init(source: ConnectionBulkSource(connection: connection))
    }

    private func nextItem() async throws -> BulkItem? {
        if let item = state.withLockedValue({ $0.taken.popFirst() }) { return item }
        guard var items = try await source.nextItems(), !items.isEmpty else { return nil }
        let first = items.removeFirst()
        state.withLockedValue { $0.taken.append(contentsOf: items) }
        return first
    }

    private func setOpen(_ id: UInt64?) { state.withLockedValue { $0.open = id } }
    private var currentlyOpen: UInt64? { state.withLockedValue { $0.open } }

    /// Next tensor start, skipping what is left of an undrained one; `nil` when the connection is closed.
    func nextTensor() async throws -> IncomingTensor? {
        while let item = try await nextItem() {
            switch item {
            case .chunk(let id, let flags, let bytes):
                if flags.contains(.firstChunk) {
                    setOpen(flags.contains(.lastChunk) ? nil : id)
                    return IncomingTensor(id: id, chunks: TensorChunks(receiver: self, tensorID: id, first: bytes,
                                                                       firstIsLast: flags.contains(.lastChunk)))
                }
                if flags.contains(.lastChunk) { setOpen(nil) }  // tail of a tensor nobody drained
            case .abort:
                setOpen(nil)
            }
        }
        return nil
    }

    func nextChunk(of tensorID: UInt64) async throws -> (ByteBuffer, isLast: Bool) {
        guard currentlyOpen == tensorID else {
            throw TransportError.bulkTransferFailed(tensorID: tensorID, reason: "chunks read after a later tensor was requested")
        }
        guard let item = try await nextItem() else {
            throw TransportError.connectionClosed(peer: source.peerName)
        }
        switch item {
        case .chunk(let id, let flags, let bytes):
            // The handler validates order, so this is the open tensor.
            precondition(id == tensorID, "bulk order is validated by the BulkReceiveHandler")
            if flags.contains(.lastChunk) { setOpen(nil) }
            return (bytes, flags.contains(.lastChunk))
        case .abort(_, let envelope):
            setOpen(nil)
            throw TransportError.remoteError(code: envelope.code, message: envelope.message)
        }
    }
}

/// ``ActivationTransport`` over a ``PeerConnection``: BULK_CHUNK frames whose correlation id is the tensor id.
/// Use a connection dedicated to bulk data so that control calls never queue behind a large tensor.
public final class TCPActivationTransport: ActivationTransport {
    public let connection: PeerConnection
    private let receiver: BulkReceiver
    private let sendGate = SerialGate()

    public init(connection: PeerConnection) {
        self.connection = connection
        self.receiver = BulkReceiver(connection: connection)
    }

    public func sendTensor<Chunks: AsyncSequence>(id: UInt64, chunks: Chunks) async throws where Chunks.Element == ByteBuffer {
        try await sendGate.serialize { try await sendUnordered(id: id, chunks: chunks) }
    }

    private func sendUnordered<Chunks: AsyncSequence>(id: UInt64, chunks: Chunks) async throws where Chunks.Element == ByteBuffer {
        let configuration = connection.configuration
        let chunkLimit = max(1, min(configuration.bulkChunkSize, configuration.frameLimits.maxBulkChunkPayload))
        var inFlight: [EventLoopFuture<Void>] = []
        var sentBytes = 0
        var isFirst = true
        // Hold one piece back so the last frame can carry the last-chunk flag.
        var held: ByteBuffer?

        func emit(_ piece: ByteBuffer, last: Bool) async throws {
            var flags: FrameFlags = []
            if isFirst { flags.insert(.firstChunk) }
            if last { flags.insert(.lastChunk) }
            isFirst = false
            if inFlight.count >= max(1, configuration.bulkWritesInFlight) {
                try await inFlight.removeFirst().get()
            }
            inFlight.append(writeChunk(Frame(type: .bulkChunk, flags: flags, correlationID: id, payload: piece)))
        }

        do {
            for try await var chunk in chunks {
                while chunk.readableBytes > 0 {
                    let piece = chunk.readSlice(length: min(chunkLimit, chunk.readableBytes))!
                    sentBytes += piece.readableBytes
                    guard sentBytes <= configuration.maxTensorBytes else {
                        throw TransportError.bulkTransferFailed(
                            tensorID: id, reason: "tensor exceeds maxTensorBytes (\(configuration.maxTensorBytes))")
                    }
                    if let previous = held { try await emit(previous, last: false) }
                    held = piece
                }
            }
        } catch {
            if !isFirst {  // the receiver has seen the start: tell it the tensor will not complete
                let envelope = (error as? any RemoteErrorConvertible)?.remoteErrorEnvelope
                    ?? RemoteErrorEnvelope(code: "aborted", message: "sender failed: \(error)")
                _ = try? await connection.write(Frame(type: .bulkAbort, correlationID: id, payload: envelope.payload))
            }
            throw error
        }
        try await emit(held ?? ByteBuffer(), last: true)
        for write in inFlight { try await write.get() }
    }

    private func writeChunk(_ frame: Frame) -> EventLoopFuture<Void> {
        connection.writeFuture(frame)
    }

    public var incomingTensors: IncomingTensors { IncomingTensors(receiver: receiver) }

    /// Largest number of bulk payload bytes the receive queue held at once (for tests and tuning).
    public func peakReceiveQueueBytes() async throws -> Int {
        let bulk = connection.bulk
        return try await connection.channel.eventLoop.submit { bulk.value.peakQueuedBytes }.get()
    }
}

/// The incoming tensors of a ``TCPActivationTransport``; ends when the connection closes.
public struct IncomingTensors: AsyncSequence, Sendable {
    public typealias Element = IncomingTensor
    let receiver: BulkReceiver

    public struct AsyncIterator: AsyncIteratorProtocol {
        let receiver: BulkReceiver
        public mutating func next() async throws -> IncomingTensor? { try await receiver.nextTensor() }
    }

    public func makeAsyncIterator() -> AsyncIterator { AsyncIterator(receiver: receiver) }
}

/// Lets one sender at a time through, in arrival order. Public for transports built outside this module (RDMA).
public actor SerialGate {
    private var busy = false
    private var waiters: [CheckedContinuation<Void, Never>] = []

    public init() {}

    public func acquire() async {
        if busy {
            await withCheckedContinuation { waiters.append($0) }
        } else {
            busy = true
        }
    }

    public func release() {
        if waiters.isEmpty { busy = false } else { waiters.removeFirst().resume() }
    }

    /// Runs `body` once every earlier caller's body has finished; the next caller goes on however it ends. `body` runs
    /// on the caller's executor (nonsending), so it may touch the caller's state.
    public nonisolated(nonsending) func serialize(_ body: () async throws -> Void) async throws {
        await acquire()
        do {
            try await body()
            await release()
        } catch {
            await release()
            throw error
        }
    }
}
