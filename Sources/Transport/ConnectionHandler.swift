import Crypto
import Foundation
import Logging
import NIOCore

/// A request or one-way message the peer sent us, waiting for `serveRequests`.
struct InboundCall: Sendable {
    /// `nil` for one-way messages.
    var correlationID: UInt64?
    var messageType: UInt16
    var payload: ByteBuffer
}

/// What the handler hands out once the handshake succeeds.
struct AuthenticatedPeer: Sendable {
    var identity: NodeIdentity
    var purpose: ConnectionPurpose
    var handler: NIOLoopBound<ConnectionHandler>
    var bulk: NIOLoopBound<BulkReceiveHandler>
    var inboundCalls: AsyncStream<InboundCall>
}

/// The per-connection state machine, confined to the channel's event loop: handshake, pending-call table and
/// inbound request queue. Once authenticated it puts a ``LivenessHandler`` (heartbeats, dead-peer detection) and a
/// ``BulkReceiveHandler`` (the bounded bulk receive queue) in front of itself.
final class ConnectionHandler: ChannelDuplexHandler {
    typealias InboundIn = Frame
    typealias OutboundIn = Frame
    typealias OutboundOut = Frame

    enum Side: Sendable { case client, server }

    private enum State {
        case idle
        case clientAwaitingChallenge(hello: ByteBuffer)
        case clientAwaitingAccept(transcript: [UInt8], peer: NodeIdentity)
        case serverAwaitingHello
        case serverAwaitingProof(transcript: [UInt8], peer: NodeIdentity)
        case authenticated(peer: NodeIdentity)
        case closed

        var name: String {
            switch self {
            case .idle: "connecting"
            case .clientAwaitingChallenge, .serverAwaitingHello: "awaiting handshake greeting"
            case .clientAwaitingAccept, .serverAwaitingProof: "awaiting handshake proof"
            case .authenticated: "authenticated"
            case .closed: "closed"
            }
        }
    }

    private struct PendingCall {
        var promise: EventLoopPromise<ByteBuffer>
        var timeout: Scheduled<Void>
    }

    let side: Side
    /// The client's declared purpose; on the server, learnt from the HELLO.
    private(set) var purpose: ConnectionPurpose
    let localIdentity: NodeIdentity
    private let key: SymmetricKey
    let configuration: TransportConfiguration
    private var logger: Logger
    private let authPromise: EventLoopPromise<AuthenticatedPeer>

    private var state: State = .idle
    private var context: ChannelHandlerContext?
    private var handshakeTimeout: Scheduled<Void>?
    /// Set before closing so waiters and logs see why.
    private(set) var closeReason: TransportError?

    // Calls we made.
    private var nextCorrelationID: UInt64 = 1
    private var pending: [UInt64: PendingCall] = [:]

    // Calls the peer made.
    private let inboundCalls: AsyncStream<InboundCall>
    private let inboundContinuation: AsyncStream<InboundCall>.Continuation

    init(side: Side, purpose: ConnectionPurpose = .control, identity: NodeIdentity, token: ClusterToken?,
         configuration: TransportConfiguration, logger: Logger, authPromise: EventLoopPromise<AuthenticatedPeer>) {
        self.side = side
        self.purpose = purpose
        self.localIdentity = identity
        self.key = Handshake.key(for: token)
        self.configuration = configuration
        self.logger = logger
        self.authPromise = authPromise
        (inboundCalls, inboundContinuation) = AsyncStream.makeStream(of: InboundCall.self)
    }

    /// The peer's claimed name once its greeting arrived (kept after close), else its address.
    private var claimedPeer: NodeIdentity?
    private var remoteAddressText = "unknown peer"

    var peerName: String { claimedPeer?.name ?? remoteAddressText }

    // MARK: Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if let remote = context.channel.remoteAddress {
            logger[metadataKey: "peer.address"] = "\(remote)"
            remoteAddressText = "\(remote)"
        }
        if context.channel.isActive { start(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        if let remote = context.channel.remoteAddress {
            logger[metadataKey: "peer.address"] = "\(remote)"
            remoteAddressText = "\(remote)"
        }
        start(context: context)
        context.fireChannelActive()
    }

    private func start(context: ChannelHandlerContext) {
        guard case .idle = state else { return }
        handshakeTimeout = context.eventLoop.assumeIsolated().scheduleTask(in: configuration.handshakeTimeout) {
            self.logger.warning("handshake did not complete within \(self.configuration.handshakeTimeout); closing")
            self.fail(with: .timedOut)
        }
        switch side {
        case .server:
            state = .serverAwaitingHello
        case .client:
            let hello = Handshake.Greeting(identity: localIdentity, nonce: Handshake.makeNonce(), purpose: purpose).encoded()
            state = .clientAwaitingChallenge(hello: hello)
            context.writeAndFlush(wrapOutboundOut(Frame(type: .hello, correlationID: 0, payload: hello)), promise: nil)
        }
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // Once we decided to close (violation, refusal, close()), nothing else on this connection is acted on.
        guard closeReason == nil else { return }
        let frame = unwrapInboundIn(data)
        do {
            if case .authenticated = state {
                try handleAuthenticated(frame, context: context)
            } else {
                try handleHandshake(frame, context: context)
            }
        } catch let error as TransportError {
            fail(with: error)
        } catch {
            fail(with: .protocolViolation(.malformedPayload(type: frame.type, field: "\(error)")))
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: Error) {
        if let error = error as? TransportError {
            fail(with: error)
        } else if error is ByteToMessageDecoderError {
            logger.debug("connection closed in the middle of a frame")
            fail(with: .connectionClosed(peer: peerName))
        } else {
            logger.debug("connection error: \(error)")
            fail(with: .connectionClosed(peer: peerName))
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        let peer = peerName
        let wasAuthenticated: Bool
        if case .authenticated = state { wasAuthenticated = true } else { wasAuthenticated = false }
        state = .closed
        handshakeTimeout?.cancel()
        authPromise.fail(closeReason ?? .connectionClosed(peer: peer))
        let failure = TransportError.connectionClosed(peer: peer)
        let calls = pending
        pending.removeAll()
        for (_, call) in calls {
            call.timeout.cancel()
            call.promise.fail(failure)
        }
        inboundContinuation.finish()
        if wasAuthenticated { logger.debug("connection to \(peer) closed; failed \(calls.count) pending call(s)") }
        context.fireChannelInactive()
    }

    /// Logs the typed reason once and closes this connection only.
    private func fail(with error: TransportError) {
        guard closeReason == nil, let context else { return }
        closeReason = error
        switch error {
        case .authenticationFailed: break  // logged where it is detected, with context
        case .connectionClosed: logger.debug("closing connection: \(error)")
        default: logger.warning("closing connection to \(peerName): \(error)")
        }
        authPromise.fail(error)
        context.close(promise: nil)
    }

    // MARK: Handshake

    private func handleHandshake(_ frame: Frame, context: ChannelHandlerContext) throws {
        switch (state, frame.type) {
        case (.serverAwaitingHello, .hello):
            let hello = try Handshake.Greeting.decode(frame.payload, type: .hello)
            purpose = hello.purpose ?? .control
            let challenge = Handshake.Greeting(identity: localIdentity, nonce: Handshake.makeNonce()).encoded()
            state = .serverAwaitingProof(transcript: Handshake.transcript(hello: frame.payload, challenge: challenge),
                                         peer: hello.identity)
            logger[metadataKey: "peer.name"] = "\(hello.identity.name)"
            claimedPeer = hello.identity
            context.writeAndFlush(wrapOutboundOut(Frame(type: .challenge, correlationID: 0, payload: challenge)), promise: nil)

        case (.clientAwaitingChallenge(let hello), .challenge):
            let challenge = try Handshake.Greeting.decode(frame.payload, type: .challenge)
            let transcript = Handshake.transcript(hello: hello, challenge: frame.payload)
            state = .clientAwaitingAccept(transcript: transcript, peer: challenge.identity)
            logger[metadataKey: "peer.name"] = "\(challenge.identity.name)"
            claimedPeer = challenge.identity
            let mac = Handshake.proof(label: Handshake.clientLabel, transcript: transcript, key: key)
            context.writeAndFlush(wrapOutboundOut(Frame(type: .proof, correlationID: 0, payload: ByteBuffer(bytes: mac))),
                                  promise: nil)

        case (.serverAwaitingProof(let transcript, let peer), .proof):
            guard Handshake.verify(frame.payload, label: Handshake.clientLabel, transcript: transcript, key: key) else {
                logger.warning("refusing \(peer): it did not prove knowledge of the cluster token")
                let envelope = RemoteErrorEnvelope(code: "authentication_failed",
                                                   message: "cluster token mismatch: proof rejected by \(localIdentity.name)")
                let rejection = Frame(type: .reject, correlationID: 0, payload: envelope.payload)
                let error = TransportError.authenticationFailed(peer: peer.name, reason: "peer's proof did not match the cluster token")
                closeReason = error
                authPromise.fail(error)
                context.writeAndFlush(wrapOutboundOut(rejection)).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
                return
            }
            let mac = Handshake.proof(label: Handshake.serverLabel, transcript: transcript, key: key)
            context.writeAndFlush(wrapOutboundOut(Frame(type: .accept, correlationID: 0, payload: ByteBuffer(bytes: mac))),
                                  promise: nil)
            authenticated(peer: peer, context: context)

        case (.clientAwaitingAccept(let transcript, let peer), .accept):
            guard Handshake.verify(frame.payload, label: Handshake.serverLabel, transcript: transcript, key: key) else {
                logger.warning("refusing \(peer): it accepted us but did not prove knowledge of the cluster token")
                throw TransportError.authenticationFailed(peer: peer.name, reason: "server's proof did not match the cluster token")
            }
            authenticated(peer: peer, context: context)

        case (.clientAwaitingAccept(_, let peer), .reject):
            let envelope = RemoteErrorEnvelope.decode(frame.payload)
                ?? RemoteErrorEnvelope(code: "authentication_failed", message: "rejected")
            logger.warning("\(peer) refused our handshake: [\(envelope.code)] \(envelope.message)")
            throw TransportError.authenticationFailed(peer: peer.name, reason: "refused by peer: \(envelope.message)")

        default:
            throw TransportError.protocolViolation(.unexpectedFrame(type: frame.type, state: state.name))
        }
    }

    private func authenticated(peer: NodeIdentity, context: ChannelHandlerContext) {
        state = .authenticated(peer: peer)
        handshakeTimeout?.cancel()
        handshakeTimeout = nil
        logger.debug("authenticated \(peer)")
        let bulk = BulkReceiveHandler(configuration: configuration, eventLoop: context.eventLoop)
        do {
            // In front of this handler, liveness first so that every frame counts as a sign of life.
            try context.pipeline.syncOperations.addHandlers([LivenessHandler(configuration: configuration), bulk],
                                                             position: .before(self))
        } catch {
            fail(with: .connectionClosed(peer: peer.name))
            return
        }
        authPromise.succeed(AuthenticatedPeer(identity: peer, purpose: purpose, handler: NIOLoopBound(self, eventLoop: context.eventLoop),
                                              bulk: NIOLoopBound(bulk, eventLoop: context.eventLoop),
                                              inboundCalls: inboundCalls))
    }

    // MARK: Authenticated traffic

    private func handleAuthenticated(_ frame: Frame, context: ChannelHandlerContext) throws {
        switch frame.type {
        case .request, .message:
            var payload = frame.payload
            guard let messageType = payload.readInteger(as: UInt16.self) else {
                throw TransportError.protocolViolation(.malformedPayload(type: frame.type, field: "message type (u16)"))
            }
            inboundContinuation.yield(InboundCall(correlationID: frame.type == .request ? frame.correlationID : nil,
                                                  messageType: messageType, payload: payload))
        case .response:
            complete(frame.correlationID, with: .success(frame.payload))
        case .errorResponse:
            guard let envelope = RemoteErrorEnvelope.decode(frame.payload) else {
                throw TransportError.protocolViolation(.malformedPayload(type: .errorResponse, field: "error envelope JSON {code, message}"))
            }
            complete(frame.correlationID, with: .failure(TransportError.remoteError(code: envelope.code, message: envelope.message)))
        case .hello, .challenge, .proof, .accept, .reject,
             .ping, .pong, .bulkChunk, .bulkAbort:  // these end in the liveness and bulk handlers
            throw TransportError.protocolViolation(.unexpectedFrame(type: frame.type, state: state.name))
        }
    }

    /// A response for a call that already timed out or was cancelled is dropped: its slot is gone.
    private func complete(_ id: UInt64, with result: Result<ByteBuffer, Error>) {
        guard let call = pending.removeValue(forKey: id) else {
            logger.debug("dropping late answer for correlation id \(id)")
            return
        }
        call.timeout.cancel()
        call.promise.completeWith(result)
    }

    /// Starts a call on `eventLoop` (the channel's); the future fails with `.timedOut` at `deadline`, and at once
    /// with `.connectionClosed` when the handler is not (or no longer) in a pipeline or not yet authenticated.
    func startCall(messageType: UInt16, payload: ByteBuffer, deadline: NIODeadline,
                   on eventLoop: any EventLoop) -> (id: UInt64, EventLoopFuture<ByteBuffer>) {
        let promise = eventLoop.makePromise(of: ByteBuffer.self)
        guard case .authenticated = state, let context else {
            promise.fail(TransportError.connectionClosed(peer: peerName))
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
        guard case .authenticated = state, let context else {
            return (self.context?.eventLoop ?? authPromise.futureResult.eventLoop)
                .makeFailedFuture(TransportError.connectionClosed(peer: peerName))
        }
        return context.writeAndFlush(wrapOutboundOut(frame))
    }

    func close() {
        guard let context, closeReason == nil else { return }
        closeReason = .connectionClosed(peer: peerName)
        context.close(promise: nil)
    }
}
