import Foundation

/// What the actor system itself throws (as opposed to what a remote actor threw, see ``RemoteCallError``).
/// Codable, so a failure on the remote system (e.g. ``actorNotFound(_:)``) reaches the caller as a decodable payload.
public enum ClusterActorSystemError: Error, Codable, Sendable, Equatable, CustomStringConvertible {
    /// No cluster token and a non-loopback listen address: refused, peers could not be authenticated.
    case insecureListenAddress(host: String)
    /// The listen socket could not be bound.
    case listenFailed(address: String, reason: String)
    /// No connection could be made to the endpoint.
    case connectFailed(endpoint: String, reason: String)
    /// The peer at `endpoint` does not hold our cluster token (or refused ours).
    case authenticationFailed(endpoint: String, reason: String)
    /// The endpoint named a node, but a different node answered there.
    case wrongNode(endpoint: String, expected: String, found: String)
    /// The connection to `peer` dropped while the call was in flight (or before it could be sent).
    case peerDisconnected(peer: String, endpoint: String, reason: String)
    /// No reply within the call timeout.
    case callTimedOut(actor: ClusterActorID, target: String, timeoutMilliseconds: Int64)
    /// No live actor of that id on its node.
    case actorNotFound(ClusterActorID)
    /// The actor exists but is not of the type asked for.
    case actorTypeMismatch(ClusterActorID, expected: String, found: String)
    /// A well-known name is already in use on this node.
    case nameTaken(String)
    /// Not a valid well-known name (empty, over 255 bytes, contains `#` or control characters).
    case invalidActorName(String)
    /// The encoded call (or reply) exceeds the frame limit.
    case messageTooLarge(target: String, bytes: Int, limit: Int)
    /// Distributed functions must be monomorphic: generic calls are refused.
    case genericSubstitutionsUnsupported(target: String)
    /// The call envelope could not be parsed.
    case malformedInvocation(reason: String)
    /// An argument could not be decoded for `target`.
    case argumentDecodingFailed(target: String, index: Int, reason: String)
    /// The reply could not be parsed or decoded.
    case invalidReply(target: String, reason: String)
    /// ``RemoteCallError/decode(as:)`` was asked for a type other than the one thrown.
    case errorTypeMismatch(expected: String, found: String)
    /// The remote error is not Codable, so only its type name and message travelled.
    case noErrorPayload(typeName: String)
    /// The system was shut down.
    case shutDown
    /// An operation that needs a listening system (e.g. accepting bulk streams) on one that does not listen.
    case notListening

    public var description: String {
        switch self {
        case .insecureListenAddress(let host):
            "no cluster token: refusing to listen on non-loopback address \(host); set a token or listen on 127.0.0.1"
        case .listenFailed(let address, let reason): "could not listen on \(address): \(reason)"
        case .connectFailed(let endpoint, let reason): "could not connect to \(endpoint): \(reason)"
        case .authenticationFailed(let endpoint, let reason): "authentication with \(endpoint) failed: \(reason)"
        case .wrongNode(let endpoint, let expected, let found):
            "expected node \"\(expected)\" at \(endpoint) but \"\(found)\" answered"
        case .peerDisconnected(let peer, let endpoint, let reason): "connection to \(peer) at \(endpoint) dropped: \(reason)"
        case .callTimedOut(let actor, let target, let ms): "call \(target) on \(actor) timed out after \(ms) ms"
        case .actorNotFound(let id): "no actor \(id)"
        case .actorTypeMismatch(let id, let expected, let found): "actor \(id) is a \(found), not a \(expected)"
        case .nameTaken(let name): "actor name \"\(name)\" is already in use on this node"
        case .invalidActorName(let name): "invalid well-known actor name \"\(name)\" (1-255 bytes, no '#', no control characters)"
        case .messageTooLarge(let target, let bytes, let limit):
            "\(target): encoded message of \(bytes) bytes exceeds the frame limit of \(limit) bytes; send tensors over a bulk connection"
        case .genericSubstitutionsUnsupported(let target): "\(target) is generic; distributed functions must be monomorphic"
        case .malformedInvocation(let reason): "malformed call envelope: \(reason)"
        case .argumentDecodingFailed(let target, let index, let reason): "\(target): argument \(index) does not decode: \(reason)"
        case .invalidReply(let target, let reason): "\(target): invalid reply: \(reason)"
        case .errorTypeMismatch(let expected, let found): "remote error is a \(found), not a \(expected)"
        case .noErrorPayload(let typeName): "remote error \(typeName) is not Codable; only its message travelled"
        case .shutDown: "the actor system is shut down"
        case .notListening: "the actor system does not listen"
        }
    }
}

/// What travels back when a distributed function throws: never empty. Binary-encoded (see Docs/wire-protocol.md).
public struct RemoteErrorDetails: Codable, Sendable, Equatable {
    /// `String(reflecting:)` of the thrown error's type, e.g. `WorkerModule.WorkerError`.
    public var typeName: String
    /// `String(describing:)` of the thrown error.
    public var message: String
    /// The error itself, binary-encoded, when it is `Encodable`.
    public var payload: [UInt8]?

    public init(typeName: String, message: String, payload: [UInt8]?) {
        self.typeName = typeName.isEmpty ? "unknown" : typeName
        self.message = message.isEmpty ? "(no message)" : message
        self.payload = payload
    }

    init(error: any Error) {
        let payload: [UInt8]? = (error as? any Encodable).flatMap { try? BinaryEncoder().encode($0) }
        self.init(typeName: String(reflecting: type(of: error)), message: String(describing: error), payload: payload)
    }
}

/// A distributed function (or the remote system on its behalf) threw. Decode the original error with
/// ``decode(as:)``; `description` carries the remote message.
public struct RemoteCallError: Error, Sendable, CustomStringConvertible {
    public let details: RemoteErrorDetails
    /// The actor that was called.
    public let actor: ClusterActorID
    /// The distributed target's identifier (mangled name).
    public let target: String

    public init(details: RemoteErrorDetails, actor: ClusterActorID, target: String) {
        self.details = details
        self.actor = actor
        self.target = target
    }

    public var typeName: String { details.typeName }
    public var message: String { details.message }

    /// Whether the remote error was an `E` (by type name).
    public func isError<E: Error>(ofType type: E.Type) -> Bool { details.typeName == String(reflecting: type) }

    /// The remote error as the `E` it was. Throws ``ClusterActorSystemError/errorTypeMismatch(expected:found:)``
    /// when it was another type, ``ClusterActorSystemError/noErrorPayload(typeName:)`` when it was not Codable.
    public func decode<E: Error & Decodable>(as type: E.Type) throws -> E {
        let expected = String(reflecting: type)
        guard details.typeName == expected else {
            throw ClusterActorSystemError.errorTypeMismatch(expected: expected, found: details.typeName)
        }
        guard let payload = details.payload else { throw ClusterActorSystemError.noErrorPayload(typeName: details.typeName) }
        return try BinaryDecoder().decode(type, from: payload)
    }

    public var description: String {
        "remote call on \(actor) threw \(details.typeName): \(details.message)"
    }
}
