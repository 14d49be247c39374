import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

/// A connection the server refused because the peer did not prove the cluster token. Never carries the token or MACs.
public struct AuthenticationFailure: Sendable, CustomStringConvertible {
    /// The peer's socket address.
    public var address: String
    /// The name the peer claimed in its HELLO (unproven), if it got that far.
    public var claimedName: String?
    public var reason: String

    public var description: String {
        "authentication of \(claimedName.map { "\"\($0)\" at " } ?? "")\(address) failed: \(reason)"
    }
}

/// Listens for peers, authenticates each one and serves it with a ``TransportRequestHandler``.
/// A connection that fails the handshake or breaks the protocol is closed and logged; the server keeps accepting.
public final class TransportServer: Sendable {
    public let localAddress: SocketAddress
    public let identity: NodeIdentity
    private let serverChannel: any Channel
    private let accepted: AsyncStream<PeerConnection>
    /// Every refused handshake, as it happens (single consumer; the newest 256 are kept if nobody reads).
    public let authenticationFailures: AsyncStream<AuthenticationFailure>
    private let children: NIOLoopBoundBox<[ObjectIdentifier: any Channel]>
    private let logger: Logger

    private init(serverChannel: any Channel, identity: NodeIdentity, accepted: AsyncStream<PeerConnection>,
                 authenticationFailures: AsyncStream<AuthenticationFailure>,
                 children: NIOLoopBoundBox<[ObjectIdentifier: any Channel]>, logger: Logger) {
        self.authenticationFailures = authenticationFailures
        self.serverChannel = serverChannel
        self.localAddress = serverChannel.localAddress!
        self.identity = identity
        self.accepted = accepted
        self.children = children
        self.logger = logger
    }

    /// The bound port (useful after binding port 0).
    public var port: Int { localAddress.port ?? 0 }

    /// Binds `host:port`. Without a token only loopback addresses are allowed (and peers are not authenticated).
    public static func bind(
        host: String, port: Int, identity: NodeIdentity, token: ClusterToken?,
        configuration: TransportConfiguration = TransportConfiguration(),
        group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton, logger: Logger
    ) async throws -> TransportServer {
        try Handshake.validate(identity)
        try configuration.checkLocalIdentity(identity)
        TransportMetrics.registerAll()
        let address = try SocketAddress.makeAddressResolvingHost(host, port: port)
        if configuration.tls == nil {
            if token == nil {
                guard address.isLoopback else {
                    logger.error("refusing to listen on \(address) without TLS or a cluster token: only loopback may run unauthenticated")
                    throw TransportError.invalidConfiguration(
                        "no TLS and no cluster token: refusing to bind non-loopback address \(host); "
                            + "give --tls-cert/--tls-key/--tls-ca, or bind 127.0.0.1")
                }
                logger.notice("no cluster token: listening on loopback \(address) only; peers are not authenticated")
            } else if !address.isLoopback {
                guard configuration.allowTokenOnlyBeyondLoopback else {
                    logger.error("refusing to listen on \(address) without TLS")
                    throw TransportError.invalidConfiguration(
                        "refusing to listen on non-loopback address \(host) without TLS: every frame would travel in the "
                            + "clear; give --tls-cert/--tls-key/--tls-ca (see `coordctl certs`), or --insecure-token-only")
                }
                logger.warning("--insecure-token-only: listening on \(address) without TLS; hidden states, weights and calls travel in the clear and can be altered on the path")
            }
        }
        let (accepted, acceptedContinuation) = AsyncStream.makeStream(of: PeerConnection.self)
        let (failures, failureContinuation) = AsyncStream.makeStream(of: AuthenticationFailure.self,
                                                                     bufferingPolicy: .bufferingNewest(256))
        let acceptLoop = group.next()
        let openConnections = NIOLockedValueBox(0)
        let children = NIOLoopBoundBox.makeBoxSendingValue([ObjectIdentifier: any Channel](), eventLoop: acceptLoop)
        let channel = try await ServerBootstrap(group: acceptLoop, childGroup: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.recvAllocator, value: largeReads)
            .childChannelOption(.maxMessagesPerRead, value: 1)
            .childChannelInitializer { child in
                // The cap counts every open connection, authenticated or not, so idle strangers cannot pile up.
                let admitted = openConnections.withLockedValue { count in
                    guard count < configuration.maxConnections else { return false }
                    count += 1
                    return true
                }
                guard admitted else {
                    TransportMetrics.connectionFailed(.connectionLimit)
                    logger.warning("refusing a connection from \(child.remoteAddress.map { "\($0)" } ?? "?"): \(configuration.maxConnections) connections are open (maxConnections)")
                    return child.eventLoop.makeFailedFuture(TransportError.invalidConfiguration("connection cap reached"))
                }
                child.closeFuture.whenComplete { _ in openConnections.withLockedValue { $0 -= 1 } }
                let authPromise = child.eventLoop.makePromise(of: AuthenticatedPeer.self)
                let childID = ObjectIdentifier(child)
                acceptLoop.execute { children.value[childID] = child }
                child.closeFuture.whenComplete { _ in acceptLoop.execute { children.value[childID] = nil } }
                authPromise.futureResult.whenSuccess { authenticated in
                    logger.info("peer \(authenticated.identity) authenticated from \(child.remoteAddress.map { "\($0)" } ?? "?")")
                    acceptedContinuation.yield(PeerConnection(channel: child, authenticated: authenticated,
                                                              configuration: configuration, logger: logger))
                }
                authPromise.futureResult.whenFailure { error in
                    guard case .authenticationFailed(let peer, let reason) = error as? TransportError else { return }
                    let address = child.remoteAddress.map { "\($0)" } ?? "unknown address"
                    failureContinuation.yield(AuthenticationFailure(address: address, claimedName: peer == address ? nil : peer,
                                                                    reason: reason))
                }
                return child.eventLoop.makeCompletedFuture {
                    try installPipeline(on: child, side: .server, identity: identity, token: token,
                                        configuration: configuration, logger: logger, authPromise: authPromise)
                }
            }
            .bind(to: address).get()
        channel.closeFuture.whenComplete { _ in
            acceptedContinuation.finish()
            failureContinuation.finish()
        }
        logger.info("transport server \(identity) listening on \(channel.localAddress.map { "\($0)" } ?? "?")")
        return TransportServer(serverChannel: channel, identity: identity, accepted: accepted,
                               authenticationFailures: failures, children: children, logger: logger)
    }

    /// Serves every authenticated connection until ``close()`` or cancellation; then closes all connections.
    /// Call once.
    public func serve(with handler: some TransportRequestHandler) async {
        await withTaskCancellationHandler {
            await withDiscardingTaskGroup { group in
                for await connection in accepted {
                    group.addTask {
                        await withDiscardingTaskGroup { perConnection in
                            perConnection.addTask { await handler.connectionOpened(connection) }
                            perConnection.addTask { await connection.serveRequests(with: handler) }
                        }
                    }
                }
                await closeChildren()
            }
        } onCancel: {
            serverChannel.close(promise: nil)
        }
    }

    /// Stops accepting and closes every connection; pending calls on them fail with `connectionClosed`.
    public func close() async {
        try? await serverChannel.close()
        await closeChildren()
    }

    private func closeChildren() async {
        let children = self.children
        let open = try? await serverChannel.eventLoop.submit { Array(children.value.values) }.get()
        for child in open ?? [] {
            try? await child.close()
        }
    }
}

extension SocketAddress {
    /// 127.0.0.0/8 or ::1 (or an IPv4-mapped 127/8).
    var isLoopback: Bool {
        switch self {
        case .v4(let address):
            return UInt32(bigEndian: address.address.sin_addr.s_addr) >> 24 == 127
        case .v6:
            guard let ip = ipAddress else { return false }
            return ip == "::1" || ip.hasPrefix("::ffff:127.")
        default:
            return false
        }
    }
}
