import NIOCore

/// One item of the bulk receive queue.
enum BulkItem: Sendable {
    case chunk(tensorID: UInt64, flags: FrameFlags, bytes: ByteBuffer)
    case abort(tensorID: UInt64, RemoteErrorEnvelope)

    /// The payload bytes it holds, as the bounded queues count them.
    var payloadBytes: Int {
        if case .chunk(_, _, let bytes) = self { return bytes.readableBytes }
        return 0
    }
}

extension CircularBuffer where Element == BulkItem {
    /// Takes items from the front until they hold `byteLimit` payload bytes, at least one item (one consumer visit).
    mutating func popBatch(byteLimit: Int) -> (items: [BulkItem], bytes: Int) {
        let limit = Swift.max(1, byteLimit)
        var items: [BulkItem] = []
        var bytes = 0
        while bytes < limit, let item = popFirst() {
            bytes += item.payloadBytes
            items.append(item)
        }
        return (items, bytes)
    }
}

/// The receiving end of the bulk data path: takes BULK_CHUNK and BULK_ABORT frames off the pipeline into a bounded
/// queue and holds back socket reads while the queue is full, so that a slow consumer slows the sender through TCP
/// flow control instead of growing the queue. Other frames pass through. Confined to the channel's event loop;
/// one consumer at a time.
final class BulkReceiveHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = Frame
    typealias InboundOut = Frame
    typealias OutboundIn = Frame
    typealias OutboundOut = Frame

    private let configuration: TransportConfiguration
    /// The channel's; futures for the consumer are made on it whether or not the handler is in a pipeline.
    private let eventLoop: any EventLoop
    /// `nil` until the handler is added, and again once it is removed.
    private var context: ChannelHandlerContext?
    /// No more items will arrive (closed, removed, or a sequence violation): the queue only drains.
    private var isFinished = false

    private var queue = CircularBuffer<BulkItem>()
    private var queuedBytes = 0
    private(set) var peakQueuedBytes = 0
    private var waiter: EventLoopPromise<BulkItem?>?
    /// The tensor whose chunks are arriving, and its bytes so far.
    private var inboundTensor: (id: UInt64, bytes: Int)?
    private var readsPaused = false
    /// A read asked for while paused, passed on when the queue drains.
    private var readPending = false

    init(configuration: TransportConfiguration, eventLoop: any EventLoop) {
        self.configuration = configuration
        self.eventLoop = eventLoop
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        finish()
        self.context = nil
        // A read held back must not be lost with this handler.
        if readPending {
            readPending = false
            context.read()
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        finish()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.type {
        case .bulkChunk, .bulkAbort:
            guard !isFinished else { return }  // the connection is closing: dropped unread
            do {
                try receive(frame)
            } catch {
                finish()
                context.fireErrorCaught(error)  // the connection's last handler closes with it
            }
        default:
            context.fireChannelRead(data)
        }
    }

    func read(context: ChannelHandlerContext) {
        if readsPaused {
            readPending = true
        } else {
            context.read()
        }
    }

    private func receive(_ frame: Frame) throws(TransportError) {
        let id = frame.correlationID
        guard frame.type == .bulkChunk else {
            let envelope = RemoteErrorEnvelope.decode(frame.payload)
                ?? RemoteErrorEnvelope(code: "aborted", message: "sender aborted the tensor")
            inboundTensor = nil
            enqueue(.abort(tensorID: id, envelope), bytes: 0)
            return
        }
        let size = frame.payload.readableBytes
        if frame.flags.contains(.firstChunk) {
            if let current = inboundTensor {
                throw .protocolViolation(.bulkSequence(tensorID: id, reason: "starts before tensor \(current.id) ended"))
            }
            inboundTensor = (id, 0)
        }
        guard var current = inboundTensor else {
            throw .protocolViolation(.bulkSequence(tensorID: id, reason: "chunk without a first chunk"))
        }
        guard current.id == id else {
            throw .protocolViolation(.bulkSequence(tensorID: id, reason: "chunk inside tensor \(current.id)"))
        }
        current.bytes += size
        guard current.bytes <= configuration.maxTensorBytes else {
            throw .protocolViolation(.tensorTooLarge(tensorID: id, bytes: current.bytes, limit: configuration.maxTensorBytes))
        }
        inboundTensor = frame.flags.contains(.lastChunk) ? nil : current
        enqueue(.chunk(tensorID: id, flags: frame.flags, bytes: frame.payload), bytes: size)
    }

    private func enqueue(_ item: BulkItem, bytes: Int) {
        if let waiter {
            self.waiter = nil
            waiter.succeed(item)
            return
        }
        queue.append(item)
        queuedBytes += bytes
        peakQueuedBytes = max(peakQueuedBytes, queuedBytes)
        if queuedBytes >= configuration.bulkReceiveBufferBytes { readsPaused = true }
    }

    /// Ends the stream for the consumer once the queue is drained.
    private func finish() {
        isFinished = true
        if let waiter {
            self.waiter = nil
            waiter.succeed(nil)
        }
    }

    /// The items queued now, up to a quarter of the queue's bound in bytes (at least one item), or the next one to
    /// arrive; `nil` once the connection is closed and the queue drained. Taking several per call spares the
    /// consumer a hop to the event loop per piece. Reading resumes once the queue is below half its bound.
    func nextItems() -> EventLoopFuture<[BulkItem]?> {
        if !queue.isEmpty {
            let (batch, batchBytes) = queue.popBatch(byteLimit: configuration.bulkReceiveBufferBytes / 4)
            queuedBytes -= batchBytes
            if readsPaused, queuedBytes <= configuration.bulkReceiveBufferBytes / 2 {
                readsPaused = false
                if readPending, let context {
                    readPending = false
                    context.read()
                }
            }
            return eventLoop.makeSucceededFuture(batch)
        }
        if isFinished { return eventLoop.makeSucceededFuture(nil) }
        if waiter != nil {
            return eventLoop.makeFailedFuture(TransportError.invalidConfiguration("two consumers are receiving tensors on one connection"))
        }
        let promise = eventLoop.makePromise(of: BulkItem?.self)
        waiter = promise
        return promise.futureResult.map { $0.map { [$0] } }
    }

    /// Fails the consumer waiting in ``nextItems()``, if any, with `CancellationError` (its task was cancelled).
    func cancelWait() {
        guard let waiter else { return }
        self.waiter = nil
        waiter.fail(CancellationError())
    }
}
