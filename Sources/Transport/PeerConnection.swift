import Foundation
import Logging
import NIOCore
import NIOPosix

/// Answers the calls and messages a peer sends. Handlers run concurrently, one child task per request.
public protocol TransportRequestHandler: Sendable {
    /// Returns the response payload; a thrown error travels back as an ERROR frame
    /// (``RemoteErrorConvertible`` errors choose their envelope, others become code "internal").
    func handleRequest(type: UInt16, payload: ByteBuffer, from connection: PeerConnection) async throws -> ByteBuffer
    /// A one-way message; nothing is sent back.
    func handleMessage(type: UInt16, payload: ByteBuffer, from connection: PeerConnection) async
    /// Called by ``TransportServer`` once per authenticated connection, concurrently with request serving.
    func connectionOpened(_ connection: PeerConnection) async
}

extension TransportRequestHandler {
    public func handleMessage(type: UInt16, payload: ByteBuffer, from connection: PeerConnection) async {}
    public func connectionOpened(_ connection: PeerConnection) async {}
}

/// One authenticated connection to a peer, usable from both ends: either side can `call`, `send` and `serveRequests`.
public final class PeerConnection: Sendable {
    /// The peer's identity, proven by the handshake.
    public let peer: NodeIdentity
    /// Control (calls and messages) or bulk (activation tensors), as the connecting side declared it.
    public let purpose: ConnectionPurpose
    public let remoteAddress: SocketAddress?
    public let configuration: TransportConfiguration
    let channel: any Channel
    /// The pipeline's last handler: calls, requests, writes and the close reason.
    let calls: NIOLoopBound<RequestResponseHandler>
    /// The bounded receive queue of BULK_CHUNK frames.
    let bulk: NIOLoopBound<BulkReceiveHandler>
    private let inboundCalls: AsyncStream<InboundCall>
    private let logger: Logger

    init(channel: any Channel, authenticated: AuthenticatedPeer, configuration: TransportConfiguration, logger: Logger) {
        self.channel = channel
        self.peer = authenticated.identity
        self.purpose = authenticated.purpose
        self.calls = authenticated.calls
        self.bulk = authenticated.bulk
        self.inboundCalls = authenticated.inboundCalls
        self.remoteAddress = channel.remoteAddress
        self.configuration = configuration
        self.logger = logger
    }

    /// Connects, runs the handshake and returns once both sides have proven the token.
    /// Throws ``TransportError/authenticationFailed(peer:reason:)`` when the tokens differ.
    /// `expectedPeer`, when given, is the node name the peer must prove (its certificate's name with TLS).
    public static func connect(
        host: String, port: Int, identity: NodeIdentity, token: ClusterToken?, purpose: ConnectionPurpose = .control,
        expectedPeer: String? = nil, configuration: TransportConfiguration = TransportConfiguration(),
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger
    ) async throws -> PeerConnection {
        try Handshake.validate(identity)
        try configuration.checkLocalIdentity(identity)
        if token == nil, configuration.tls == nil {
            let address = try? SocketAddress.makeAddressResolvingHost(host, port: port)
            guard address?.isLoopback == true else {
                throw TransportError.invalidConfiguration(
                    "refusing to dial \(host):\(port) with neither TLS nor a cluster token: only loopback peers may be "
                        + "reached unauthenticated (give --tls-cert/--tls-key/--tls-ca or --token-file)")
            }
        }
        let eventLoop = group.next()
        let authPromise = eventLoop.makePromise(of: AuthenticatedPeer.self)
        let bootstrap = ClientBootstrap(group: eventLoop)
            .connectTimeout(configuration.handshakeTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.recvAllocator, value: largeReads)
            .channelOption(.maxMessagesPerRead, value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try installPipeline(on: channel, side: .client, purpose: purpose, identity: identity, token: token,
                                        expectedPeer: expectedPeer, configuration: configuration, logger: logger,
                                        authPromise: authPromise)
                }
            }
        let channel: any Channel
        do {
            channel = try await bootstrap.connect(host: host, port: port).get()
        } catch {
            TransportMetrics.connectionFailed(.connectFailed)
            throw TransportError.connectFailed(address: "\(host):\(port)", reason: "\(error)")
        }
        do {
            let authenticated = try await authPromise.futureResult.get()
            return PeerConnection(channel: channel, authenticated: authenticated, configuration: configuration, logger: logger)
        } catch {
            channel.close(promise: nil)
            throw error
        }
    }

    /// Sends a request and waits for its response, its error envelope, the deadline or the connection's end.
    public func call(type: UInt16, payload: ByteBuffer, deadline: NIODeadline) async throws -> ByteBuffer {
        let calls = self.calls
        let (id, response) = try await channel.eventLoop.submit {
            calls.value.startCall(messageType: type, payload: payload, deadline: deadline)
        }.get()
        return try await withTaskCancellationHandler {
            try await response.get()
        } onCancel: {
            channel.eventLoop.execute { calls.value.cancelCall(id: id) }
        }
    }

    /// ``call(type:payload:deadline:)`` with a relative timeout (the configuration's default when `nil`).
    public func call(type: UInt16, payload: ByteBuffer, timeout: TimeAmount? = nil) async throws -> ByteBuffer {
        try await call(type: type, payload: payload, deadline: .now() + (timeout ?? configuration.defaultCallTimeout))
    }

    /// A one-way message: returns once it reached the socket; the peer sends nothing back.
    public func send(type: UInt16, payload: ByteBuffer) async throws {
        var body = channel.allocator.buffer(capacity: 2 + payload.readableBytes)
        body.writeInteger(type)
        body.writeImmutableBuffer(payload)
        try await write(Frame(type: .message, correlationID: 0, payload: body))
    }

    func write(_ frame: Frame) async throws {
        try await writeFuture(frame).get()
    }

    /// ``write(_:)`` for callers that keep several writes in flight.
    func writeFuture(_ frame: Frame) -> EventLoopFuture<Void> {
        let calls = self.calls
        return channel.eventLoop.flatSubmit { calls.value.write(frame) }
    }

    /// Serves the peer's requests and messages until the connection closes (or the task is cancelled).
    /// Call it once per connection: incoming requests queue until it runs.
    public func serveRequests(with requestHandler: some TransportRequestHandler) async {
        await withTaskCancellationHandler {
            await withDiscardingTaskGroup { group in
                for await call in inboundCalls {
                    group.addTask { await self.answer(call, with: requestHandler) }
                }
            }
        } onCancel: {
            self.channel.close(promise: nil)
        }
    }

    private func answer(_ call: InboundCall, with requestHandler: some TransportRequestHandler) async {
        guard let id = call.correlationID else {
            await requestHandler.handleMessage(type: call.messageType, payload: call.payload, from: self)
            return
        }
        let frame: Frame
        do {
            let response = try await requestHandler.handleRequest(type: call.messageType, payload: call.payload, from: self)
            frame = Frame(type: .response, correlationID: id, payload: response)
        } catch {
            frame = Frame(type: .errorResponse, correlationID: id,
                          payload: RemoteErrorEnvelope(for: error, fallbackCode: "internal").payload)
        }
        do {
            try await write(frame)
        } catch {
            logger.debug("could not answer request \(id) from \(peer.name): \(error)")
        }
    }

    /// Closes the connection; pending calls fail with ``TransportError/connectionClosed(peer:)``.
    public func close() async {
        let calls = self.calls
        channel.eventLoop.execute { calls.value.close() }
        try? await channel.closeFuture.get()
    }

    /// What the receiving side has done with the bytes read so far: how many it copied, and in how many pieces the
    /// bulk payload was delivered.
    public func receiveStatistics() async throws -> ReceiveStatistics {
        let channel = self.channel
        return try await channel.eventLoop.submit {
            try channel.pipeline.syncOperations.handler(type: FrameStreamDecoder.self).statistics
        }.get()
    }

    /// Whether the connection is still open (it may close right after this returns).
    public var isOpen: Bool { channel.isActive }

    /// Returns when the connection has closed, for whatever reason.
    public func waitUntilClosed() async {
        try? await channel.closeFuture.get()
    }

    /// Waits for the connection to close and says why: a protocol violation, a dead peer, a local `close()`
    /// or the peer closing (``TransportError/connectionClosed(peer:)``).
    public func closeReason() async -> TransportError {
        try? await channel.closeFuture.get()
        let calls = self.calls
        let peer = self.peer.name
        let reason = try? await channel.eventLoop.submit { calls.value.closeReason }.get()
        return (reason ?? nil) ?? .connectionClosed(peer: peer)
    }
}

/// Frame codec + handshake; the handshake handler replaces itself with the handlers of an authenticated connection.
/// Used by clients, the server and the tests (on EmbeddedChannels).
func installPipeline(on channel: any Channel, side: HandshakeHandler.Side, purpose: ConnectionPurpose = .control,
                     identity: NodeIdentity, token: ClusterToken?, expectedPeer: String? = nil,
                     configuration: TransportConfiguration, logger: Logger,
                     authPromise: EventLoopPromise<AuthenticatedPeer>) throws {
    let admission = FrameAdmission()
    let handler = HandshakeHandler(side: side, purpose: purpose, identity: identity, token: token,
                                   expectedPeer: expectedPeer, admission: admission, configuration: configuration,
                                   logger: logger, authPromise: authPromise)
    // TLS first: every frame, the handshake's included, travels inside it.
    if let tls = configuration.tls {
        try channel.pipeline.syncOperations.addHandler(try tls.makeHandler(side: side))
    }
    try channel.pipeline.syncOperations.addHandlers([
        FrameStreamDecoder(limits: configuration.frameLimits, admission: admission),
        FrameWriter(),
        handler,
    ])
}

/// Reads grow up to 1 MiB so a bulk chunk arrives in a few reads instead of sixteen 64 KiB ones. With one read per
/// read event (`maxMessagesPerRead` 1), pausing reads bounds the bulk queue to its limit + 1 MiB + one chunk.
let largeReads = AdaptiveRecvByteBufferAllocator(minimum: 4096, initial: 64 << 10, maximum: 1 << 20)
