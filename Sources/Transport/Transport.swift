import Crypto
import NIOCore

/// Transport: typed frames and bulk bytes between authenticated cluster peers over TCP (SwiftNIO).
///
/// - ``Frame``, ``FrameDecoder``, ``FrameEncoder``: the 20-byte-header framing (Docs/wire-protocol.md); connections
///   decode with `FrameStreamDecoder`, which passes bulk payload on as slices of the socket's reads, uncopied.
/// - ``PeerConnection``: one authenticated connection; `call` (request/response keyed by correlation id,
///   with a deadline), `send` (one-way), `serveRequests` (answer the peer's calls).
/// - ``TransportServer``: accepts connections, runs the mutual HMAC handshake, hands out ``PeerConnection``s.
/// - ``ActivationTransport`` / ``TCPActivationTransport``: raw tensor bytes in bounded chunks with back-pressure;
///   ``LocalActivationTransport``: the same contract in-process. ``ConnectionPurpose`` (in the HELLO) marks
///   connections dedicated to bulk data.
///
/// The module knows nothing of models: payloads are opaque bytes and request types are plain `UInt16`s.
public enum Transport {}

/// What a node does in the cluster. Opaque to the transport beyond being exchanged in the handshake.
public struct NodeRole: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let coordinator = NodeRole(rawValue: 1)
    public static let worker = NodeRole(rawValue: 2)
    public static let client = NodeRole(rawValue: 3)

    public var description: String {
        switch rawValue {
        case 1: "coordinator"
        case 2: "worker"
        case 3: "client"
        default: "role#\(rawValue)"
        }
    }
}

/// Who a node says it is. Only trusted once the handshake has proven the peer holds the cluster token.
public struct NodeIdentity: Sendable, Hashable, CustomStringConvertible {
    /// At most 255 UTF-8 bytes.
    public var name: String
    public var role: NodeRole

    public init(name: String, role: NodeRole) {
        self.name = name
        self.role = role
    }

    public var description: String { "\(name) (\(role))" }
}

/// What a connection carries, declared by the connecting side in its HELLO (and so covered by both proofs).
/// Bulk connections carry activation tensors only, so control calls never wait behind a paused bulk stream.
public enum ConnectionPurpose: UInt8, Sendable, Hashable, CustomStringConvertible {
    case control = 0
    case bulk = 1

    public var description: String { self == .control ? "control" : "bulk" }
}

/// The shared cluster secret. Never written to the wire or to logs: `description` is redacted.
public struct ClusterToken: Sendable, CustomStringConvertible {
    /// Tokens shorter than this are refused: the handshake MACs would be open to offline guessing.
    public static let minimumLength = 16

    private let secret: [UInt8]
    var key: SymmetricKey { SymmetricKey(data: secret) }

    public init(_ secret: some Collection<UInt8>) throws {
        guard secret.count >= Self.minimumLength else {
            throw TransportError.invalidConfiguration(
                "cluster token is \(secret.count) bytes; at least \(Self.minimumLength) are required")
        }
        self.secret = Array(secret)
    }

    public init(_ secret: String) throws {
        try self.init(Array(secret.utf8))
    }

    public var description: String { "ClusterToken(<redacted>)" }
}

/// Timeouts, limits and buffer sizes. The defaults suit a LAN cluster; tests shrink the timers.
public struct TransportConfiguration: Sendable {
    public var frameLimits = FrameLimits()
    /// Largest whole tensor accepted on the bulk path (sum of its chunks).
    public var maxTensorBytes: Int = 16 << 30
    /// Size bulk senders cut chunks to when a caller hands them bigger buffers.
    public var bulkChunkSize: Int = 1 << 20
    /// Receive-side buffering of bulk chunks; reading from the socket pauses above it.
    public var bulkReceiveBufferBytes: Int = 8 << 20
    /// Bulk chunk writes in flight before a sender waits for the oldest to reach the socket.
    public var bulkWritesInFlight: Int = 4
    /// How long the handshake may take before the connection is dropped.
    public var handshakeTimeout: TimeAmount = .seconds(5)
    /// How often a PING is sent; `nil` disables sending (the peer-dead check still runs).
    public var heartbeatInterval: TimeAmount? = .seconds(1)
    /// A peer heard nothing from for this long is declared dead and its connection closed.
    public var peerDeadTimeout: TimeAmount = .seconds(5)
    /// Deadline used by `call` when none is given.
    public var defaultCallTimeout: TimeAmount = .seconds(30)
    /// Connections a server holds at once, authenticated or not; one more is closed on accept (and logged).
    public var maxConnections: Int = 512
    /// Requests one peer may have waiting for an answer from us; beyond it a request is answered at once with an
    /// ERROR (code `busy`) and never queued.
    public var maxInboundRequestsInFlight: Int = 256
    /// Mutual TLS 1.3 on every connection; nil: plaintext, for loopback and the token-only mode.
    public var tls: TransportTLS?
    /// Lets a server listen beyond loopback with the token alone (`--insecure-token-only`): frames travel in the
    /// clear and without integrity, so this is logged as a warning.
    public var allowTokenOnlyBeyondLoopback = false

    public init() {}
}
