import ClusterMetrics
import Crypto
import Logging
import NIOCore
import NIOSSL

/// What the handshake hands out once both sides have proven the token: the peer, and the handlers that now serve
/// the connection (bound to its event loop).
struct AuthenticatedPeer: Sendable {
    var identity: NodeIdentity
    var purpose: ConnectionPurpose
    var calls: NIOLoopBound<RequestResponseHandler>
    var bulk: NIOLoopBound<BulkReceiveHandler>
    var inboundCalls: AsyncStream<InboundCall>
}

/// Runs the client or the server side of the mutual HMAC handshake (``Handshake``, Docs/wire-protocol.md) and
/// enforces its timeout. Until it succeeds this is the last handler of the pipeline, so it sees every frame (only
/// handshake frames in the expected order are allowed) and every error. On success it installs the handlers of an
/// authenticated connection behind itself — ``LivenessHandler``, ``BulkReceiveHandler``, ``RequestResponseHandler``
/// — and removes itself, so frames that followed the last handshake frame in the same read go straight to them.
/// On failure it closes the connection and fails `authPromise` with the reason.
final class HandshakeHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = Frame
    typealias OutboundOut = Frame

    enum Side: Sendable { case client, server }

    private enum State {
        case idle
        case clientAwaitingChallenge(hello: ByteBuffer)
        case clientAwaitingAccept(transcript: [UInt8], peer: NodeIdentity)
        case serverAwaitingHello
        case serverAwaitingProof(transcript: [UInt8], peer: NodeIdentity)
        case authenticated
        case closed

        /// Named in `unexpectedFrame` violations.
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

    let side: Side
    /// The client's declared purpose; on the server, learnt from the HELLO.
    private(set) var purpose: ConnectionPurpose
    let localIdentity: NodeIdentity
    /// The node name a dialer expects at the other end (client side), or nil.
    let expectedPeer: String?
    /// The decoder's gate: opened to the connection's purpose once authenticated.
    private let admission: FrameAdmission
    private let key: SymmetricKey
    let configuration: TransportConfiguration
    private var logger: Logger
    private let authPromise: EventLoopPromise<AuthenticatedPeer>

    private var state: State = .idle
    private var context: ChannelHandlerContext?
    private var handshakeTimeout: Scheduled<Void>?
    /// Set before closing: frames that still arrive are dropped, and `authPromise` fails with it.
    private var closeReason: TransportError?
    /// Why the peer was refused, when it was (the `reason` of the authentication-failure counter).
    private var authenticationFailure: AuthenticationFailureReason?
    /// A connection's failure is counted once, by its first cause.
    private var failureCounted = false

    /// The peer's claimed name once its greeting arrived, else its address.
    private var claimedPeer: NodeIdentity?
    private var remoteAddressText = "unknown peer"
    private var peerName: String { claimedPeer?.name ?? remoteAddressText }

    init(side: Side, purpose: ConnectionPurpose = .control, identity: NodeIdentity, token: ClusterToken?,
         expectedPeer: String? = nil, admission: FrameAdmission = FrameAdmission(),
         configuration: TransportConfiguration, logger: Logger, authPromise: EventLoopPromise<AuthenticatedPeer>) {
        self.side = side
        self.purpose = purpose
        self.localIdentity = identity
        self.expectedPeer = expectedPeer
        self.admission = admission
        self.key = Handshake.key(for: token)
        self.configuration = configuration
        self.logger = logger
        self.authPromise = authPromise
    }

    // MARK: Channel events

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        if context.channel.isActive { start(context: context) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        handshakeTimeout?.cancel()
        handshakeTimeout = nil
        // Taken out before finishing (not by itself): nobody is left to complete the handshake.
        if case .authenticated = state {} else {
            state = .closed
            countFailure(closeReason ?? .connectionClosed(peer: peerName))
            authPromise.fail(closeReason ?? .connectionClosed(peer: peerName))
        }
    }

    func channelActive(context: ChannelHandlerContext) {
        start(context: context)
        context.fireChannelActive()
    }

    private func start(context: ChannelHandlerContext) {
        guard case .idle = state else { return }
        if let remote = context.channel.remoteAddress {
            logger[metadataKey: "peer.address"] = "\(remote)"
            remoteAddressText = "\(remote)"
        }
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
        // Once we decided to close (violation, refusal, timeout), nothing else on this connection is acted on.
        guard closeReason == nil else { return }
        let frame = unwrapInboundIn(data)
        do {
            try handle(frame, context: context)
        } catch {
            fail(with: error)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // A TLS handshake that fails (certificate not from the cluster CA, expired, wrong key) refuses the peer.
        if error is NIOSSLError, authenticationFailure == nil { authenticationFailure = .tlsHandshake }
        fail(with: .closing(for: error, peer: peerName, logger: logger))
    }

    func channelInactive(context: ChannelHandlerContext) {
        if case .authenticated = state {} else { countFailure(closeReason ?? .connectionClosed(peer: peerName)) }
        state = .closed
        handshakeTimeout?.cancel()
        handshakeTimeout = nil
        authPromise.fail(closeReason ?? .connectionClosed(peer: peerName))
        context.fireChannelInactive()
    }

    /// Logs the typed reason once and closes this connection only.
    private func fail(with error: TransportError) {
        guard closeReason == nil, let context else { return }
        closeReason = error
        error.logClosing(peer: peerName, logger: logger)
        countFailure(error)
        authPromise.fail(error)
        context.close(promise: nil)
    }

    /// Counts this connection's failure (once): refused peers by reason, other handshakes that did not finish by cause.
    private func countFailure(_ error: TransportError) {
        guard !failureCounted else { return }
        if case .authenticated = state { return }
        failureCounted = true
        TransportMetrics.handshakeFailed(error, authentication: authenticationFailure)
    }

    // MARK: Handshake

    private func handle(_ frame: Frame, context: ChannelHandlerContext) throws(TransportError) {
        switch (state, frame.type) {
        case (.serverAwaitingHello, .hello):
            let hello = try Handshake.Greeting.decode(frame.payload, type: .hello)
            claimedPeer = hello.identity
            if let mismatch = certificateMismatch(claimed: hello.identity.name, context: context) {
                reject(hello.identity, reason: mismatch, because: .certificateNameMismatch, context: context)
                return
            }
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
            logger[metadataKey: "peer.name"] = "\(challenge.identity.name)"
            claimedPeer = challenge.identity
            if let expectedPeer, expectedPeer != challenge.identity.name {
                logger.warning("expected node '\(expectedPeer)' at \(remoteAddressText), but '\(challenge.identity.name)' answered")
                let address = context.channel.remoteAddress.flatMap { remote in
                    remote.ipAddress.map { ip in ip.contains(":") ? "[\(ip)]:\(remote.port ?? 0)" : "\(ip):\(remote.port ?? 0)" }
                } ?? remoteAddressText
                authenticationFailure = .unexpectedPeer
                throw .unexpectedPeer(address: address, expected: expectedPeer, found: challenge.identity.name)
            }
            if let mismatch = certificateMismatch(claimed: challenge.identity.name, context: context) {
                authenticationFailure = .certificateNameMismatch
                throw .authenticationFailed(peer: challenge.identity.name, reason: mismatch)
            }
            state = .clientAwaitingAccept(transcript: transcript, peer: challenge.identity)
            let mac = Handshake.proof(label: Handshake.clientLabel, transcript: transcript, key: key)
            context.writeAndFlush(wrapOutboundOut(Frame(type: .proof, correlationID: 0, payload: ByteBuffer(bytes: mac))),
                                  promise: nil)

        case (.serverAwaitingProof(let transcript, let peer), .proof):
            guard Handshake.verify(frame.payload, label: Handshake.clientLabel, transcript: transcript, key: key) else {
                logger.warning("refusing \(peer): it did not prove knowledge of the cluster token")
                reject(peer, reason: "peer's proof did not match the cluster token", because: .tokenMismatch,
                       message: "cluster token mismatch: proof rejected by \(localIdentity.name)", context: context)
                return
            }
            let mac = Handshake.proof(label: Handshake.serverLabel, transcript: transcript, key: key)
            context.writeAndFlush(wrapOutboundOut(Frame(type: .accept, correlationID: 0, payload: ByteBuffer(bytes: mac))),
                                  promise: nil)
            authenticated(peer: peer, context: context)

        case (.clientAwaitingAccept(let transcript, let peer), .accept):
            guard Handshake.verify(frame.payload, label: Handshake.serverLabel, transcript: transcript, key: key) else {
                logger.warning("refusing \(peer): it accepted us but did not prove knowledge of the cluster token")
                authenticationFailure = .tokenMismatch
                throw .authenticationFailed(peer: peer.name, reason: "server's proof did not match the cluster token")
            }
            authenticated(peer: peer, context: context)

        case (.clientAwaitingAccept(_, let peer), .reject):
            let envelope = RemoteErrorEnvelope.decode(frame.payload)
                ?? RemoteErrorEnvelope(code: "authentication_failed", message: "rejected")
            logger.warning("\(peer) refused our handshake: [\(envelope.code)] \(envelope.message)")
            authenticationFailure = .refusedByPeer
            throw .authenticationFailed(peer: peer.name, reason: "refused by peer: \(envelope.message)")

        default:
            throw .protocolViolation(.unexpectedFrame(type: frame.type, state: state.name))
        }
    }

    /// With TLS: why the name `claimed` in the handshake is not the name in the peer's verified certificate; nil when
    /// it is, or without TLS.
    private func certificateMismatch(claimed: String, context: ChannelHandlerContext) -> String? {
        do {
            guard let certified = try context.pipeline.syncOperations.peerCertificateName() else { return nil }
            return certified == claimed ? nil
                : "its certificate is for '\(certified)' but it calls itself '\(claimed)' in the handshake"
        } catch {
            return "its certificate cannot be read: \(error)"
        }
    }

    /// Refuses the peer: REJECT with `message` (the peer's to read), then close, failing `authPromise` with `reason`.
    private func reject(_ peer: NodeIdentity, reason: String, because cause: AuthenticationFailureReason,
                        message: String? = nil, context: ChannelHandlerContext) {
        logger.warning("refusing \(peer): \(reason)")
        let envelope = RemoteErrorEnvelope(code: "authentication_failed",
                                           message: message ?? "\(localIdentity.name) refused \(peer.name): \(reason)")
        let rejection = Frame(type: .reject, correlationID: 0, payload: envelope.payload)
        let error = TransportError.authenticationFailed(peer: peer.name, reason: reason)
        closeReason = error
        authenticationFailure = cause
        countFailure(error)
        state = .closed
        authPromise.fail(error)
        // Close only once REJECT is on its way, so the client learns why.
        context.writeAndFlush(wrapOutboundOut(rejection)).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }

    /// Hands the connection over to the handlers of an authenticated connection and leaves the pipeline.
    private func authenticated(peer: NodeIdentity, context: ChannelHandlerContext) {
        state = .authenticated
        // Frames already read behind the last handshake frame are judged by the connection's purpose from here on.
        admission.phase = .authenticated(purpose)
        handshakeTimeout?.cancel()
        handshakeTimeout = nil
        logger.debug("authenticated \(peer)")
        let eventLoop = context.eventLoop
        let liveness = LivenessHandler(configuration: configuration)
        let bulk = BulkReceiveHandler(configuration: configuration, eventLoop: eventLoop)
        let calls = RequestResponseHandler(peer: peer, eventLoop: eventLoop,
                                           maxInboundInFlight: configuration.maxInboundRequestsInFlight, logger: logger)
        do {
            // Liveness first so that every frame counts as a sign of life; bulk takes its frames before the calls
            // handler, which is last so that every error ends there.
            try context.pipeline.syncOperations.addHandlers([liveness, bulk, calls], position: .after(self))
        } catch {
            // The pipeline is being torn down: the channel is closing.
            state = .closed
            fail(with: .connectionClosed(peer: peer.name))
            return
        }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        authPromise.succeed(AuthenticatedPeer(identity: peer, purpose: purpose,
                                              calls: NIOLoopBound(calls, eventLoop: eventLoop),
                                              bulk: NIOLoopBound(bulk, eventLoop: eventLoop),
                                              inboundCalls: calls.inboundCalls))
    }
}
