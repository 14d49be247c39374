import Logging
import NIOCore

/// A request or one-way message the peer sent us, waiting for `serveRequests`.
struct InboundCall: Sendable {
    /// `nil` for one-way messages.
    var correlationID: UInt64?
    var messageType: UInt16
    var payload: ByteBuffer
}

/// The application's end of an authenticated connection, and the last handler of its pipeline: the calls we make
/// (correlation ids, deadlines, the pending-call table), the requests and messages the peer makes (queued for
/// `serveRequests`), and why the connection closed. Every error in the pipeline ends here: it records the reason,
/// logs it once and closes the connection, which fails every pending call. Confined to the channel's event loop.
final class RequestResponseHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = Frame
    typealias OutboundOut = Frame

    private enum State {
        /// Made by the handshake handler, not yet in a pipeline.
        case idle
        case active(ChannelHandlerContext)
        /// Inactive or out of the pipeline: calls and writes fail at once.
        case closed
    }

    private struct PendingCall {
        var promise: EventLoopPromise<ByteBuffer>
        var timeout: Scheduled<Void>
    }

    /// The peer the handshake proved.
    let peer: NodeIdentity
    /// The channel's; calls made outside a pipeline fail on it.
    private let eventLoop: any EventLoop
    private let logger: Logger
    private var state: State = .idle
    /// Set before closing so that waiters and logs see why; frames that still arrive are dropped.
    private(set) var closeReason: TransportError?

    // Calls we made.
    private var nextCorrelationID: UInt64 = 1
    private var pending: [UInt64: PendingCall] = [:]

    // Calls the peer made.
    let inboundCalls: AsyncStream<InboundCall>
    private let inboundContinuation: AsyncStream<InboundCall>.Continuation
    /// Requests queued or being answered; capped so a peer cannot queue unbounded work.
    private var inboundInFlight: Set<UInt64> = []
    private let maxInboundInFlight: Int

    init(peer: NodeIdentity, eventLoop: any EventLoop, maxInboundInFlight: Int = 256, logger: Logger) {
        self.peer = peer
        self.maxInboundInFlight = maxInboundInFlight
        self.eventLoop = eventLoop
        self.logger = logger
        (inboundCalls, inboundContinuation) = AsyncStream.makeStream(of: InboundCall.self)
    }

    // MARK: Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        guard case .idle = state else { return }
        state = .active(context)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        tearDown()
    }

    func channelInactive(context: ChannelHandlerContext) {
        tearDown()
        context.fireChannelInactive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .active = state, closeReason == nil else { return }
        do {
            try handle(unwrapInboundIn(data))
        } catch {
            fail(with: error)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        fail(with: .closing(for: error, peer: peer.name, logger: logger))
    }

    /// Logs the typed reason once and closes this connection only.
    private func fail(with error: TransportError) {
        guard case .active(let context) = state, closeReason == nil else { return }
        closeReason = error
        error.logClosing(peer: peer.name, logger: logger)
        context.close(promise: nil)
    }

    /// Fails every pending call and ends the inbound queue, once.
    private func tearDown() {
        if case .closed = state { return }
        state = .closed
        let calls = pending
        pending.removeAll()
        let failure = TransportError.connectionClosed(peer: peer.name)
        for (_, call) in calls {
            call.timeout.cancel()
            call.promise.fail(failure)
        }
        inboundContinuation.finish()
        logger.debug("connection to \(peer.name) closed; failed \(calls.count) pending call(s)")
    }

    private func handle(_ frame: Frame) throws(TransportError) {
        switch frame.type {
        case .request, .message:
            var payload = frame.payload
            guard let messageType = payload.readInteger(as: UInt16.self) else {
                throw .protocolViolation(.malformedPayload(type: frame.type, field: "message type (u16)"))
            }
            if frame.type == .request {
                guard inboundInFlight.count < maxInboundInFlight, !inboundInFlight.contains(frame.correlationID) else {
                    refuseBusy(frame.correlationID)
                    return
                }
                inboundInFlight.insert(frame.correlationID)
            }
            inboundContinuation.yield(InboundCall(correlationID: frame.type == .request ? frame.correlationID : nil,
                                                  messageType: messageType, payload: payload))
        case .response:
            complete(frame.correlationID, with: .success(frame.payload))
        case .errorResponse:
            guard let envelope = RemoteErrorEnvelope.decode(frame.payload) else {
                throw .protocolViolation(.malformedPayload(type: .errorResponse, field: "error envelope JSON {code, message}"))
            }
            complete(frame.correlationID, with: .failure(TransportError.remoteError(code: envelope.code, message: envelope.message)))
        case .hello, .challenge, .proof, .accept, .reject,
             .ping, .pong, .bulkChunk, .bulkAbort:  // the last four end in the liveness and bulk handlers
            throw .protocolViolation(.unexpectedFrame(type: frame.type, state: "authenticated"))
        }
    }

    /// Answers a request over the in-flight cap (or reusing an id still in flight) at once, without queueing it.
    private func refuseBusy(_ id: UInt64) {
        guard case .active(let context) = state else { return }
        logger.warning("\(peer.name) has \(inboundInFlight.count) requests in flight (the cap is \(maxInboundInFlight)); refusing request \(id)")
        let envelope = RemoteErrorEnvelope(code: "busy", message: "\(inboundInFlight.count) requests from \(peer.name) are in flight; retry later")
        context.writeAndFlush(wrapOutboundOut(Frame(type: .errorResponse, correlationID: id, payload: envelope.payload)), promise: nil)
    }

    /// A response for a call that already timed out or was cancelled is dropped: its slot is gone.
    private func complete(_ id: UInt64, with result: Result<ByteBuffer, any Error>) {
        guard let call = pending.removeValue(forKey: id) else {
            logger.debug("dropping late answer for correlation id \(id)")
            return
        }
        call.timeout.cancel()
        call.promise.completeWith(result)
    }

    // MARK: Calls and writes (on the event loop)

    /// Sends a REQUEST; the future fails with `.timedOut` at `deadline`, and at once with `.connectionClosed` when
    /// the handler is not (or no longer) in an open pipeline.
    func startCall(messageType: UInt16, payload: ByteBuffer, deadline: NIODeadline) -> (id: UInt64, EventLoopFuture<ByteBuffer>) {
        let promise = eventLoop.makePromise(of: ByteBuffer.self)
        guard case .active(let context) = state, closeReason == nil else {
            promise.fail(TransportError.connectionClosed(peer: peer.name))
            return (0, promise.futureResult)
        }
        nextCorrelationID &+= 1
        let id = nextCorrelationID
        let timeout = eventLoop.assumeIsolated().scheduleTask(deadline: deadline) {
            if let expired = self.pending.removeValue(forKey: id) { expired.promise.fail(TransportError.timedOut) }
        }
        pending[id] = PendingCall(promise: promise, timeout: timeout)
        var body = context.channel.allocator.buffer(capacity: 2 + payload.readableBytes)
        body.writeInteger(messageType)
        body.writeImmutableBuffer(payload)
        context.writeAndFlush(wrapOutboundOut(Frame(type: .request, correlationID: id, payload: body)), promise: nil)
        return (id, promise.futureResult)
    }

    var pendingCallCount: Int { pending.count }

    func cancelCall(id: UInt64) {
        guard let call = pending.removeValue(forKey: id) else { return }
        call.timeout.cancel()
        call.promise.fail(CancellationError())
    }

    /// Writes any authenticated-phase frame; the future completes when it reached the socket.
    func write(_ frame: Frame) -> EventLoopFuture<Void> {
        if frame.type == .response || frame.type == .errorResponse { inboundInFlight.remove(frame.correlationID) }
        guard case .active(let context) = state, closeReason == nil else {
            return eventLoop.makeFailedFuture(TransportError.connectionClosed(peer: peer.name))
        }
        return context.writeAndFlush(wrapOutboundOut(frame))
    }

    /// Closes the connection; pending calls fail with `.connectionClosed`.
    func close() {
        guard case .active(let context) = state, closeReason == nil else { return }
        closeReason = .connectionClosed(peer: peer.name)
        context.close(promise: nil)
    }
}
