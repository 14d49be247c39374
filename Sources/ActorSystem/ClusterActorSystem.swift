import Distributed
import Foundation
import Logging
import NIOCore
import NIOPosix
import Transport

/// ActorSystem: Swift distributed actors over the NVFC transport (Docs/wire-protocol.md, "Actor calls").
///
/// - ``ClusterActorSystem``: the `DistributedActorSystem`. Listens (optionally), dials peers lazily over
///   authenticated control connections, runs remote calls with per-call timeouts, reports peer events and opens
///   dedicated bulk connections for activation tensors.
/// - ``ClusterActorID``: node endpoint + actor name; well-known names let a peer address an actor it was never told of.
/// - ``BinaryEncoder`` / ``BinaryDecoder``: the compact binary Codable format of arguments, returns and errors.
/// - ``RemoteCallError``: a remote throw, from which the original Codable error can be decoded.
public enum ActorSystemModule {}

/// A peer connection opening, closing or failing authentication.
public enum PeerEvent: Sendable, CustomStringConvertible {
    case connected(PeerInfo)
    /// The connection closed; `reason` says why (peer closed, dead peer, protocol violation, local close).
    case disconnected(PeerInfo, reason: TransportError)
    /// A handshake failed, inbound (a peer without our token) or outbound (a node we dialed). Never carries the token.
    case authenticationFailed(address: String, reason: String)

    public var description: String {
        switch self {
        case .connected(let peer): "connected \(peer)"
        case .disconnected(let peer, let reason): "disconnected \(peer): \(reason)"
        case .authenticationFailed(let address, let reason): "authentication failed for \(address): \(reason)"
        }
    }
}

/// Tells one connection from another (a peer may hold several, or connect again under the same name).
public struct ConnectionID: Sendable, Hashable {
    let raw: ObjectIdentifier
    init(_ connection: PeerConnection) { raw = ObjectIdentifier(connection) }
}

/// The peer whose remote call is running, as the handshake (and its certificate, with TLS) proved it:
/// ``ClusterActorSystem/callingPeer`` inside a distributed function. Nil for a call from this process.
public struct CallingPeer: Sendable, Hashable {
    public var identity: NodeIdentity
    public var connection: ConnectionID
}

/// One authenticated connection, as seen in ``PeerEvent``s.
public struct PeerInfo: Sendable, Hashable, CustomStringConvertible {
    public enum Direction: Sendable, Hashable { case inbound, outbound }
    /// Name and role the peer proved in the handshake.
    public var identity: NodeIdentity
    /// The peer's socket address.
    public var address: String
    public var direction: Direction
    public var purpose: ConnectionPurpose
    public var connection: ConnectionID

    public var description: String { "\(identity) at \(address) (\(direction), \(purpose))" }
}

/// A bulk connection a peer opened to us: who it is and the tensors it sends.
public struct IncomingBulkStream: Sendable {
    public let peer: NodeIdentity
    public let address: String
    /// Reply on it too: bulk connections carry tensors both ways.
    public let transport: TCPActivationTransport
    public var tensors: IncomingTensors { transport.incomingTensors }
}

/// Moves an incoming bulk connection onto another transport when its first tensor is `offerTensorID` (RDMA's offer):
/// `answer` gets the offer's bytes and the connection to reply on, and returns the transport that carries the link's
/// tensors from then on, or nil to keep the link on the connection. This module knows only that contract.
public struct BulkLinkUpgrade: Sendable {
    public let offerTensorID: UInt64
    public let maxOfferBytes: Int
    public let answer: @Sendable (_ peer: String, _ offer: Data, _ connection: TCPActivationTransport) async throws -> UpgradedBulkLink?

    public init(offerTensorID: UInt64, maxOfferBytes: Int,
                answer: @escaping @Sendable (_ peer: String, _ offer: Data, _ connection: TCPActivationTransport) async throws -> UpgradedBulkLink?) {
        self.offerTensorID = offerTensorID
        self.maxOfferBytes = maxOfferBytes
        self.answer = answer
    }
}

/// The transport an upgraded bulk link runs on, and how to close it. It is closed when it ends or fails, and when
/// the bulk connection (which stays open beside it) closes.
public struct UpgradedBulkLink: Sendable {
    public let transport: any ActivationTransport
    public let close: @Sendable () async -> Void

    public init(transport: any ActivationTransport, close: @escaping @Sendable () async -> Void) {
        self.transport = transport
        self.close = close
    }
}

extension ClusterActorSystem {
    /// Hands every tensor that arrives on any incoming bulk connection, whole, to `receive`, until the system shuts
    /// down. Connections are read side by side; one that breaks is logged and the others go on.
    /// `expectedBytes` says, before a byte is collected, how large tensor `id` from `peer` may be: nil refuses it
    /// (closing that data path), and more bytes than that fail it, so a peer never makes this node buffer more than
    /// the tensor it is due to send. With `acknowledge`, each tensor taken whole is acknowledged to its sender on the
    /// same connection (``ActivationTransport/acknowledge(id:byteCount:)``) before `receive` runs, so that a sender
    /// reading ``ActivationTransport/acknowledgements()`` knows what to resend after a broken link. With `upgrade`, a
    /// connection whose first tensor is its offer may move to the transport the upgrade answers with; tensors and
    /// acknowledgements then travel there.
    public func receiveIncomingTensors(
        logger: Logger,
        acknowledge: Bool = false,
        upgrade: BulkLinkUpgrade? = nil,
        expectedBytes: @escaping @Sendable (_ peer: String, _ id: UInt64) async -> Int? = { _, _ in .max },
        _ receive: @escaping @Sendable (_ peer: String, _ id: UInt64, _ bytes: Data) async -> Void
    ) async {
        await withTaskGroup(of: Void.self) { group in
            for await stream in incomingBulkStreams {
                group.addTask {
                    var upgraded: UpgradedBulkLink?
                    do {
                        var tensors = stream.tensors.makeAsyncIterator()
                        var first = true
                        while let tensor = try await tensors.next() {
                            defer { first = false }
                            if first, let upgrade, tensor.id == upgrade.offerTensorID {
                                let offer = try await tensor.chunks.collectData(maxBytes: upgrade.maxOfferBytes)
                                guard let link = try await upgrade.answer(stream.peer.name, offer, stream.transport) else {
                                    continue
                                }
                                upgraded = link
                                // The bulk connection is the link's liveness: when it goes, so does the upgraded link.
                                let connection = stream.transport.connection
                                Task {
                                    _ = await connection.closeReason()
                                    await link.close()
                                }
                                try await Self.take(from: link.transport, peer: stream.peer.name, acknowledge: acknowledge,
                                                    expectedBytes: expectedBytes, receive)
                                break
                            }
                            try await Self.take(tensor, on: stream.transport, peer: stream.peer.name,
                                                acknowledge: acknowledge, expectedBytes: expectedBytes, receive)
                        }
                    } catch {
                        logger.warning("data path from \(stream.peer.name) closed: \(error)")
                    }
                    await upgraded?.close()
                    await stream.transport.connection.close()
                }
            }
        }
    }

    private static func take<T: ActivationTransport>(
        from transport: T, peer: String, acknowledge: Bool,
        expectedBytes: @escaping @Sendable (_ peer: String, _ id: UInt64) async -> Int?,
        _ receive: @escaping @Sendable (_ peer: String, _ id: UInt64, _ bytes: Data) async -> Void
    ) async throws {
        for try await tensor in transport.incomingTensors {
            try await take(tensor, on: transport, peer: peer, acknowledge: acknowledge, expectedBytes: expectedBytes, receive)
        }
    }

    private static func take<T: ActivationTransport>(
        _ tensor: IncomingTensor, on transport: T, peer: String, acknowledge: Bool,
        expectedBytes: @escaping @Sendable (_ peer: String, _ id: UInt64) async -> Int?,
        _ receive: @escaping @Sendable (_ peer: String, _ id: UInt64, _ bytes: Data) async -> Void
    ) async throws {
        guard let limit = await expectedBytes(peer, tensor.id) else {
            throw TransportError.bulkTransferFailed(tensorID: tensor.id, reason: "\(peer) is not due to send this tensor here")
        }
        let bytes = try await tensor.chunks.collectData(maxBytes: limit)
        if acknowledge { try await transport.acknowledge(id: tensor.id, byteCount: bytes.count) }
        await receive(peer, tensor.id, bytes)
    }
}

/// The cluster's `DistributedActorSystem`. Thread-safe; one per process (or several in tests).
///
/// Startup: ``start(identity:listen:token:configuration:logger:)``. Local actors register when ready (held weakly; a
/// deinitialised actor resigns its id). Calls to remote ids go over one cached control connection per endpoint,
/// dialed on first use and again after a drop. Shut down with ``shutdown()``.
// @unchecked: DistributedActorSystem must be a class callable from any thread; all mutable state sits in `state`
// (a Locked), the rest is set once in init.
public final class ClusterActorSystem: DistributedActorSystem, @unchecked Sendable {
    public typealias ActorID = ClusterActorID
    public typealias InvocationEncoder = ClusterInvocationEncoder
    public typealias InvocationDecoder = ClusterInvocationDecoder
    public typealias ResultHandler = ClusterResultHandler
    public typealias SerializationRequirement = Codable

    /// The REQUEST message type carrying actor calls.
    public static let actorCallMessageType: UInt16 = 0x0A01

    public let identity: NodeIdentity
    /// This node's endpoint; local actors' ids carry it. Host `"unlisted"`, port 0 when not listening.
    public let endpoint: ClusterEndpoint
    public let configuration: TransportConfiguration
    /// Peer connections opening, closing and failing authentication (single consumer; newest 1024 kept).
    public let peerEvents: AsyncStream<PeerEvent>
    /// Bulk connections opened to this node (single consumer). Empty and finished when not listening.
    public let incomingBulkStreams: AsyncStream<IncomingBulkStream>

    private let token: ClusterToken?
    private let logger: Logger
    private let server: TransportServer?
    private let eventContinuation: AsyncStream<PeerEvent>.Continuation
    private let bulkContinuation: AsyncStream<IncomingBulkStream>.Continuation
    private let state = Locked(State())

    private struct State {
        var registry: [String: RegistryEntry] = [:]
        var reservedNames: Set<String> = []
        var nextUniqueID = 0
        var connections: [String: Task<PeerConnection, any Error>] = [:]
        var bulkConnections: [ObjectIdentifier: PeerConnection] = [:]
        var background: [Task<Void, Never>] = []
        var isShutDown = false
    }

    /// The port the server bound (the ephemeral one after asking for port 0); `nil` when not listening.
    public var boundPort: Int? { server?.port }

    private init(identity: NodeIdentity, endpoint: ClusterEndpoint, token: ClusterToken?, server: TransportServer?,
                 configuration: TransportConfiguration, logger: Logger) {
        self.identity = identity
        self.endpoint = endpoint
        self.token = token
        self.server = server
        self.configuration = configuration
        self.logger = logger
        (peerEvents, eventContinuation) = AsyncStream.makeStream(of: PeerEvent.self, bufferingPolicy: .bufferingNewest(1024))
        (incomingBulkStreams, bulkContinuation) = AsyncStream.makeStream(of: IncomingBulkStream.self)
    }

    /// Starts a system. With `listen`, binds a server there (port 0 picks a free port: see ``boundPort``); without,
    /// the system only calls out. Without a token, only loopback may be listened on
    /// (``ClusterActorSystemError/insecureListenAddress(host:)``); peers then need no token either.
    public static func start(
        identity: NodeIdentity, listen: (host: String, port: Int)?, token: ClusterToken?,
        configuration: TransportConfiguration = TransportConfiguration(), logger: Logger
    ) async throws -> ClusterActorSystem {
        var logger = logger
        logger[metadataKey: "node"] = "\(identity.name)"
        guard let listen else {
            return ClusterActorSystem(identity: identity, endpoint: ClusterEndpoint(host: "unlisted", port: 0, node: identity.name),
                                      token: token, server: nil, configuration: configuration, logger: logger)
        }
        if token == nil {
            let address: SocketAddress
            do {
                address = try SocketAddress.makeAddressResolvingHost(listen.host, port: listen.port)
            } catch {
                throw ClusterActorSystemError.listenFailed(address: "\(listen.host):\(listen.port)", reason: "\(error)")
            }
            guard isLoopback(address) else {
                logger.error("refusing to listen on \(listen.host) without a cluster token: only loopback may run unauthenticated")
                throw ClusterActorSystemError.insecureListenAddress(host: listen.host)
            }
        }
        let server: TransportServer
        do {
            server = try await TransportServer.bind(host: listen.host, port: listen.port, identity: identity, token: token,
                                                    configuration: configuration, logger: logger)
        } catch {
            throw ClusterActorSystemError.listenFailed(address: "\(listen.host):\(listen.port)", reason: "\(error)")
        }
        let system = ClusterActorSystem(identity: identity,
                                        endpoint: ClusterEndpoint(host: listen.host, port: server.port, node: identity.name),
                                        token: token, server: server, configuration: configuration, logger: logger)
        // Unstructured: the system outlives `start`; `shutdown()` closes the server, which ends both tasks, and awaits them.
        let serving = Task { await server.serve(with: InboundHandler(system: system)) }
        let failures = Task {
            for await failure in server.authenticationFailures {
                system.logger.warning("refused a peer: \(failure)")
                system.eventContinuation.yield(.authenticationFailed(address: failure.address, reason: failure.reason))
            }
        }
        system.state.withLock { $0.background += [serving, failures] }
        return system
    }

    private static func isLoopback(_ address: SocketAddress) -> Bool {
        guard let ip = address.ipAddress else { return false }
        return ip.hasPrefix("127.") || ip == "::1" || ip.hasPrefix("::ffff:127.")
    }

    // MARK: Task-local call timeout and actor naming

    @TaskLocal static var callTimeoutOverride: Duration?
    /// The peer whose call this task runs, for the callee to check a claimed name against the proven one.
    @TaskLocal public static var callingPeer: CallingPeer?
    @TaskLocal static var nameReservation: NameReservation?

    /// Runs `operation` with every remote call it makes (on this task and its children) limited to `timeout` instead
    /// of the configuration's `defaultCallTimeout`.
    public static func withCallTimeout<T>(_ timeout: Duration, _ operation: () async throws -> T) async rethrows -> T {
        try await $callTimeoutOverride.withValue(timeout) { try await operation() }
    }

    /// The timeout remote calls made here get.
    public var currentCallTimeout: Duration {
        Self.callTimeoutOverride ?? .nanoseconds(configuration.defaultCallTimeout.nanoseconds)
    }

    /// Creates an actor with the well-known `name` instead of a unique one: `make` must create exactly that actor
    /// (e.g. `{ Worker(actorSystem: system) }`). Throws ``ClusterActorSystemError/nameTaken(_:)`` when a live actor
    /// already has the name, ``ClusterActorSystemError/invalidActorName(_:)`` for a bad name.
    public func makeActor<Act>(named name: String, _ make: () throws -> Act) throws -> Act
    where Act: DistributedActor, Act.ActorSystem == ClusterActorSystem {
        try ClusterActorID.validateWellKnown(name)
        try state.withLock { state in
            guard !state.isShutDown else { throw ClusterActorSystemError.shutDown }
            if let existing = state.registry[name], existing.isAlive { throw ClusterActorSystemError.nameTaken(name) }
            guard state.reservedNames.insert(name).inserted else { throw ClusterActorSystemError.nameTaken(name) }
        }
        defer { _ = state.withLock { $0.reservedNames.remove(name) } }
        let reservation = NameReservation(name: name, system: ObjectIdentifier(self))
        let actor = try Self.$nameReservation.withValue(reservation) { try make() }
        guard actor.id.name == name else {
            throw ClusterActorSystemError.invalidActorName("\(name) (the factory returned \(actor.id), not a new actor)")
        }
        return actor
    }

    // MARK: DistributedActorSystem: identity and lifecycle

    public func assignID<Act>(_ actorType: Act.Type) -> ClusterActorID where Act: DistributedActor, Act.ID == ClusterActorID {
        if let reservation = Self.nameReservation, reservation.system == ObjectIdentifier(self), let name = reservation.take() {
            return ClusterActorID(endpoint: endpoint, name: name)
        }
        let number = state.withLock { state -> Int in
            state.nextUniqueID += 1
            return state.nextUniqueID
        }
        return ClusterActorID(endpoint: endpoint, name: "\(Act.self)#\(number)")
    }

    public func actorReady<Act>(_ actor: Act) where Act: DistributedActor, Act.ID == ClusterActorID {
        let entry = RegistryEntry(actor)
        state.withLock { $0.registry[actor.id.name] = entry }
        logger.trace("actor ready: \(actor.id)")
    }

    public func resignID(_ id: ClusterActorID) {
        state.withLock { state in
            // Only the entry of this id: a name may already have been reused by a newer actor.
            if let entry = state.registry[id.name], !entry.isAlive || entry.id == id { state.registry[id.name] = nil }
        }
    }

    /// Local ids resolve to the registered actor (or throw ``ClusterActorSystemError/actorNotFound(_:)`` /
    /// ``ClusterActorSystemError/actorTypeMismatch(_:expected:found:)``); remote ids become proxies (`nil`).
    public func resolve<Act>(id: ClusterActorID, as actorType: Act.Type) throws -> Act?
    where Act: DistributedActor, Act.ID == ClusterActorID {
        guard isLocal(id) else { return nil }
        let actor = state.withLock { $0.registry[id.name]?.actor }
        guard let actor else { throw ClusterActorSystemError.actorNotFound(id) }
        guard let typed = actor as? Act else {
            throw ClusterActorSystemError.actorTypeMismatch(id, expected: "\(Act.self)", found: "\(type(of: actor))")
        }
        return typed
    }

    /// Whether `id` names an actor of this node (same host and port; the node name too when the id has one).
    public func isLocal(_ id: ClusterActorID) -> Bool {
        id.endpoint.host == endpoint.host && id.endpoint.port == endpoint.port
            && (id.endpoint.node.isEmpty || id.endpoint.node == identity.name)
    }

    /// Ids of the live local actors (for diagnostics and tests).
    public var localActorIDs: [ClusterActorID] {
        state.withLock { $0.registry.values.filter(\.isAlive).map(\.id) }
    }

    public func makeInvocationEncoder() -> ClusterInvocationEncoder { ClusterInvocationEncoder() }

    // MARK: Remote calls (caller side)

    public func remoteCall<Act, Err, Res>(
        on actor: Act, target: RemoteCallTarget, invocation: inout ClusterInvocationEncoder,
        throwing: Err.Type, returning: Res.Type
    ) async throws -> Res where Act: DistributedActor, Act.ID == ClusterActorID, Err: Error, Res: Codable {
        let reply = try await call(actor.id, target: target, invocation: invocation)
        do {
            var decoder = BinaryDecoder()
            decoder.userInfo[.actorSystemKey] = self
            return try decoder.decode(Res.self, fromSlice: reply)
        } catch {
            throw ClusterActorSystemError.invalidReply(target: target.identifier, reason: "return value: \(error)")
        }
    }

    public func remoteCallVoid<Act, Err>(
        on actor: Act, target: RemoteCallTarget, invocation: inout ClusterInvocationEncoder, throwing: Err.Type
    ) async throws where Act: DistributedActor, Act.ID == ClusterActorID, Err: Error {
        let reply = try await call(actor.id, target: target, invocation: invocation)
        guard reply.isEmpty else {
            throw ClusterActorSystemError.invalidReply(target: target.identifier, reason: "\(reply.count) bytes for a Void call")
        }
    }

    /// Sends the call and returns the encoded return value; throws what the remote threw as ``RemoteCallError``.
    private func call(_ id: ClusterActorID, target: RemoteCallTarget, invocation: ClusterInvocationEncoder) async throws
        -> ArraySlice<UInt8> {
        let envelope = CallEnvelope(recipient: id.name, target: target.identifier,
                                    substitutions: invocation.genericSubstitutions,
                                    arguments: invocation.arguments.map { $0[...] }).encoded()
        let limit = configuration.frameLimits.maxControlPayload - 2  // the REQUEST body starts with the u16 type
        guard envelope.count <= limit else {
            throw ClusterActorSystemError.messageTooLarge(target: target.identifier, bytes: envelope.count, limit: limit)
        }
        let connection = try await controlConnection(to: id.endpoint)
        let timeout = currentCallTimeout
        let response: ByteBuffer
        do {
            response = try await connection.call(type: Self.actorCallMessageType, payload: ByteBuffer(bytes: envelope),
                                                 timeout: .nanoseconds(timeout.nanosecondsClamped))
        } catch TransportError.timedOut {
            throw ClusterActorSystemError.callTimedOut(actor: id, target: target.identifier,
                                                       timeoutMilliseconds: timeout.nanosecondsClamped / 1_000_000)
        } catch TransportError.connectionClosed(let peer) {
            let reason = await connection.closeReason()
            throw ClusterActorSystemError.peerDisconnected(peer: peer, endpoint: id.endpoint.address, reason: "\(reason)")
        } catch TransportError.remoteError(let code, let message) {
            // The remote transport refused the request itself (not an actor throw).
            throw RemoteCallError(details: RemoteErrorDetails(typeName: "Transport.TransportError", message: "[\(code)] \(message)",
                                                              payload: nil),
                                  actor: id, target: target.identifier)
        }
        let bytes = Array(response.readableBytesView)
        guard let status = bytes.first else {
            throw ClusterActorSystemError.invalidReply(target: target.identifier, reason: "empty reply")
        }
        switch status {
        case CallReply.returned:
            return bytes[1...]
        case CallReply.threw:
            let details: RemoteErrorDetails
            do {
                details = try BinaryDecoder().decode(RemoteErrorDetails.self, fromSlice: bytes[1...])
            } catch {
                throw ClusterActorSystemError.invalidReply(target: target.identifier, reason: "error details: \(error)")
            }
            throw RemoteCallError(details: details, actor: id, target: target.identifier)
        default:
            throw ClusterActorSystemError.invalidReply(target: target.identifier, reason: "unknown reply status \(status)")
        }
    }

    // MARK: Remote calls (callee side)

    /// Runs one incoming call and returns the RESPONSE body; every failure becomes an error reply.
    fileprivate func receiveCall(_ payload: ByteBuffer, from connection: PeerConnection) async -> ByteBuffer {
        let reply: [UInt8]
        do {
            let envelope = try CallEnvelope.decode(Array(payload.readableBytesView))
            reply = await execute(envelope, from: connection)
        } catch {
            logger.warning("refusing a call from \(connection.peer.name): \(error)")
            reply = CallReply.error(RemoteErrorDetails(error: error))
        }
        let limit = configuration.frameLimits.maxControlPayload
        guard reply.count <= limit else {
            let error = ClusterActorSystemError.messageTooLarge(target: "reply", bytes: reply.count, limit: limit)
            logger.warning("\(error)")
            return ByteBuffer(bytes: CallReply.error(RemoteErrorDetails(error: error)))
        }
        return ByteBuffer(bytes: reply)
    }

    private func execute(_ envelope: CallEnvelope, from connection: PeerConnection) async -> [UInt8] {
        let entry = state.withLock { $0.registry[envelope.recipient] }
        guard let entry, entry.isAlive else {
            let id = ClusterActorID(endpoint: endpoint, name: envelope.recipient)
            logger.debug("call \(envelope.target) from \(connection.peer.name) for unknown actor \(id)")
            return CallReply.error(RemoteErrorDetails(error: ClusterActorSystemError.actorNotFound(id)))
        }
        let handler = ClusterResultHandler()
        do {
            let caller = CallingPeer(identity: connection.peer, connection: ConnectionID(connection))
            try await Self.$callingPeer.withValue(caller) {
                try await entry.invoke(self, ClusterInvocationDecoder(envelope: envelope, system: self),
                                       RemoteCallTarget(envelope.target), handler)
            }
        } catch {
            // Unknown target, undecodable argument, unencodable return value: the call did not run (or not fully).
            logger.debug("call \(envelope.target) on \(envelope.recipient) failed: \(error)")
            return CallReply.error(RemoteErrorDetails(error: error))
        }
        return handler.reply ?? CallReply.error(RemoteErrorDetails(
            error: ClusterActorSystemError.invalidReply(target: envelope.target, reason: "the target produced no result")))
    }

    // MARK: Connections

    /// The cached control connection to `endpoint`, dialed (and authenticated) on first use or after a drop.
    private func controlConnection(to endpoint: ClusterEndpoint, redialIfClosed: Bool = true) async throws -> PeerConnection {
        let key = endpoint.address
        let task = try state.withLock { state -> Task<PeerConnection, any Error> in
            guard !state.isShutDown else { throw ClusterActorSystemError.shutDown }
            if let existing = state.connections[key] { return existing }
            // Unstructured: concurrent callers share one dial through the cache; shutdown cancels what is cached.
            let task = Task { try await self.dial(endpoint, purpose: .control) }
            state.connections[key] = task
            return task
        }
        let connection: PeerConnection
        do {
            connection = try await task.value
        } catch {
            state.withLock { state in
                if state.connections[key] == task { state.connections[key] = nil }
            }
            throw error
        }
        guard connection.isOpen || !redialIfClosed else {
            // Closed, but its watcher has not forgotten it yet: dial again now rather than fail the call.
            state.withLock { state in
                if state.connections[key] == task { state.connections[key] = nil }
            }
            return try await controlConnection(to: endpoint, redialIfClosed: false)
        }
        return connection
    }

    /// Connects, authenticates, checks the node name, starts serving the peer's requests on the connection and
    /// watches for its close.
    private func dial(_ endpoint: ClusterEndpoint, purpose: ConnectionPurpose) async throws -> PeerConnection {
        let connection: PeerConnection
        do {
            // A known node name is checked in the handshake (against its certificate with TLS).
            connection = try await PeerConnection.connect(host: endpoint.host, port: endpoint.port, identity: identity, token: token,
                                                          purpose: purpose, expectedPeer: endpoint.node.isEmpty ? nil : endpoint.node,
                                                          configuration: configuration, logger: logger)
        } catch TransportError.unexpectedPeer(_, let expected, let found) {
            throw ClusterActorSystemError.wrongNode(endpoint: endpoint.address, expected: expected, found: found)
        } catch TransportError.authenticationFailed(_, let reason) {
            logger.warning("could not authenticate with \(endpoint): \(reason)")
            eventContinuation.yield(.authenticationFailed(address: endpoint.address, reason: reason))
            throw ClusterActorSystemError.authenticationFailed(endpoint: endpoint.description, reason: reason)
        } catch {
            throw ClusterActorSystemError.connectFailed(endpoint: endpoint.description, reason: "\(error)")
        }
        guard endpoint.node.isEmpty || endpoint.node == connection.peer.name else {
            await connection.close()
            throw ClusterActorSystemError.wrongNode(endpoint: endpoint.address, expected: endpoint.node, found: connection.peer.name)
        }
        let info = PeerInfo(identity: connection.peer, address: endpoint.address, direction: .outbound, purpose: purpose,
                            connection: ConnectionID(connection))
        let key = endpoint.address
        // Unstructured: the connection outlives this dial; the watcher ends when the connection closes, which
        // `shutdown()` does to every connection.
        let watcher = Task {
            await withDiscardingTaskGroup { group in
                // Either side may call on a connection; serve what the peer sends us on ours.
                if purpose == .control { group.addTask { await connection.serveRequests(with: InboundHandler(system: self)) } }
                group.addTask {
                    let reason = await connection.closeReason()
                    if purpose == .control { await self.forgetIfCurrent(key, connection) }
                    _ = self.state.withLock { $0.bulkConnections.removeValue(forKey: ObjectIdentifier(connection)) }
                    self.logger.debug("connection to \(info) closed: \(reason)")
                    self.eventContinuation.yield(.disconnected(info, reason: reason))
                }
            }
        }
        let tracked = state.withLock { state -> Bool in
            guard !state.isShutDown else { return false }
            state.background.append(watcher)
            if purpose == .bulk { state.bulkConnections[ObjectIdentifier(connection)] = connection }
            return true
        }
        guard tracked else {
            await connection.close()
            throw ClusterActorSystemError.shutDown
        }
        logger.debug("connected to \(info)")
        eventContinuation.yield(.connected(info))
        return connection
    }

    /// Forgets the cached connection to `key` if it is `connection`, so the next call dials again.
    private func forgetIfCurrent(_ key: String, _ connection: PeerConnection) async {
        guard let cached = state.withLock({ $0.connections[key] }), (try? await cached.value) === connection else { return }
        state.withLock { state in
            if state.connections[key] == cached { state.connections[key] = nil }
        }
    }

    fileprivate func inboundConnectionOpened(_ connection: PeerConnection) async {
        let address = connection.remoteAddress.map { "\($0)" } ?? "unknown address"
        let info = PeerInfo(identity: connection.peer, address: address, direction: .inbound, purpose: connection.purpose,
                            connection: ConnectionID(connection))
        eventContinuation.yield(.connected(info))
        if connection.purpose == .bulk {
            bulkContinuation.yield(IncomingBulkStream(peer: connection.peer, address: address,
                                                      transport: TCPActivationTransport(connection: connection)))
        }
        let reason = await connection.closeReason()
        logger.debug("connection from \(info) closed: \(reason)")
        eventContinuation.yield(.disconnected(info, reason: reason))
    }

    // MARK: Bulk data path

    /// Opens a dedicated, authenticated bulk connection to the node at `endpoint` for activation tensors; the peer
    /// sees it in its ``incomingBulkStreams``. Tensors flow both ways on it. Close it with `transport.connection.close()`;
    /// ``shutdown()`` closes it too.
    public func openBulkTransport(to endpoint: ClusterEndpoint) async throws -> TCPActivationTransport {
        guard !state.withLock({ $0.isShutDown }) else { throw ClusterActorSystemError.shutDown }
        return TCPActivationTransport(connection: try await dial(endpoint, purpose: .bulk))
    }

    // MARK: Shutdown

    /// Stops listening, closes every connection (calls in flight fail with ``ClusterActorSystemError/peerDisconnected(peer:endpoint:reason:)``)
    /// and finishes the event streams. Idempotent.
    public func shutdown() async {
        let (connections, bulk, background) = state.withLock { state in
            let snapshot = (Array(state.connections.values), Array(state.bulkConnections.values), state.background)
            state.isShutDown = true
            state.connections.removeAll()
            state.bulkConnections.removeAll()
            state.background.removeAll()
            return snapshot
        }
        await server?.close()
        for task in connections {
            if let connection = try? await task.value { await connection.close() }
        }
        for connection in bulk { await connection.close() }
        for task in background {
            task.cancel()
            await task.value
        }
        eventContinuation.finish()
        bulkContinuation.finish()
        logger.debug("actor system \(identity.name) shut down")
    }
}

/// Serves the actor-call requests of one peer.
private struct InboundHandler: TransportRequestHandler {
    let system: ClusterActorSystem

    func handleRequest(type: UInt16, payload: ByteBuffer, from connection: PeerConnection) async throws -> ByteBuffer {
        guard type == ClusterActorSystem.actorCallMessageType else {
            throw RemoteErrorEnvelope(code: "unknown_message_type", message: "message type \(type) is not an actor call")
        }
        return await system.receiveCall(payload, from: connection)
    }

    func connectionOpened(_ connection: PeerConnection) async {
        await system.inboundConnectionOpened(connection)
    }
}

/// A registered local actor, held weakly, with a way to invoke it that keeps its concrete type.
// @unchecked: a weak reference (which Sendable checking does not admit) plus immutable fields; weak loads are atomic.
final class RegistryEntry: @unchecked Sendable {
    let id: ClusterActorID
    private weak var reference: (any DistributedActor)?
    let invoke: @Sendable (ClusterActorSystem, ClusterInvocationDecoder, RemoteCallTarget, ClusterResultHandler) async throws -> Void

    init<Act: DistributedActor>(_ actor: Act) where Act.ID == ClusterActorID {
        id = actor.id
        reference = actor
        invoke = { [weak actor] system, decoder, target, handler in
            guard let actor else { throw ClusterActorSystemError.actorNotFound(system.localID(decoder.envelope.recipient)) }
            var decoder = decoder
            try await system.executeDistributedTarget(on: actor, target: target, invocationDecoder: &decoder, handler: handler)
        }
    }

    var actor: (any DistributedActor)? { reference }
    var isAlive: Bool { reference != nil }
}

extension ClusterActorSystem {
    func localID(_ name: String) -> ClusterActorID { ClusterActorID(endpoint: endpoint, name: name) }
}

/// A well-known name handed to the next `assignID` on this task, once.
// @unchecked: every mutable field is guarded by `lock` (NSLock; Mutex needs macOS 15, above this package's floor).
final class NameReservation: @unchecked Sendable {
    let system: ObjectIdentifier
    private let lock = NSLock()
    private var name: String?

    init(name: String, system: ObjectIdentifier) {
        self.name = name
        self.system = system
    }

    func take() -> String? {
        lock.lock(); defer { lock.unlock() }
        defer { name = nil }
        return name
    }
}

/// A value behind a lock.
// @unchecked: every mutable field is guarded by `lock` (NSLock; Mutex needs macOS 15, above this package's floor).
final class Locked<Value>: @unchecked Sendable {
    private let lock = NSLock()
    private var value: Value

    init(_ value: Value) { self.value = value }

    func withLock<T>(_ body: (inout Value) throws -> T) rethrows -> T {
        lock.lock(); defer { lock.unlock() }
        return try body(&value)
    }
}

extension Duration {
    /// Whole nanoseconds, clamped to Int64.
    var nanosecondsClamped: Int64 {
        let (seconds, attoseconds) = components
        let (scaled, overflow) = seconds.multipliedReportingOverflow(by: 1_000_000_000)
        return overflow ? (seconds < 0 ? .min : .max) : scaled &+ attoseconds / 1_000_000_000
    }
}
