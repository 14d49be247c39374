import Foundation
import Logging
import NIOCore
import NIOSSL

/// Everything the transport throws. Descriptions name the peer or field at fault and never contain secrets.
public enum TransportError: Error, Sendable, Equatable, CustomStringConvertible {
    /// No TCP connection could be made to `address`.
    case connectFailed(address: String, reason: String)
    /// The connection to `peer` closed (or was closed) while the operation was pending.
    case connectionClosed(peer: String)
    /// The deadline passed before an answer arrived (or the handshake did not finish in time).
    case timedOut
    /// The peer does not hold the same cluster token, or it refused ours.
    case authenticationFailed(peer: String, reason: String)
    /// The peer broke the wire protocol; the connection is closed.
    case protocolViolation(ProtocolViolation)
    /// The remote handler threw; `code` and `message` come from its error envelope.
    case remoteError(code: String, message: String)
    /// A configuration the transport refuses (e.g. a non-loopback bind without a token).
    case invalidConfiguration(String)
    /// A tensor could not be sent or received (e.g. it exceeds the tensor cap).
    case bulkTransferFailed(tensorID: UInt64, reason: String)
    /// The dialer expected node `expected` at `address`, and `found` answered.
    case unexpectedPeer(address: String, expected: String, found: String)
    /// TLS refused a record after the handshake: it was altered, injected or replayed on the path.
    case integrityCheckFailed(peer: String, reason: String)

    public var description: String {
        switch self {
        case .connectFailed(let address, let reason): "could not connect to \(address): \(reason)"
        case .connectionClosed(let peer): "connection to \(peer) closed"
        case .timedOut: "deadline exceeded"
        case .authenticationFailed(let peer, let reason): "authentication with \(peer) failed: \(reason)"
        case .protocolViolation(let violation): "protocol violation: \(violation)"
        case .remoteError(let code, let message): "remote error [\(code)]: \(message)"
        case .invalidConfiguration(let why): "invalid transport configuration: \(why)"
        case .bulkTransferFailed(let id, let reason): "bulk transfer of tensor \(id) failed: \(reason)"
        case .integrityCheckFailed(let peer, let reason):
            "integrity check failed on the connection with \(peer): TLS refused a record that was altered or injected on the path (\(reason))"
        case .unexpectedPeer(let address, let expected, let found):
            "expected node '\(expected)' at \(address), but '\(found)' answered"
        }
    }
}

extension TransportError {
    /// What a connection closes with for an error that reached the end of its pipeline: the transport's own errors
    /// as they are, anything else (a socket error, the peer closing in the middle of a frame) as a plain close.
    static func closing(for error: any Error, peer: String, logger: Logger) -> TransportError {
        if let error = error as? TransportError { return error }
        // After the TLS handshake, BoringSSL fails a read only when a record does not decrypt and authenticate.
        if let error = error as? BoringSSLError {
            switch error {
            case .sslError, .unknownError: return .integrityCheckFailed(peer: peer, reason: "\(error)")
            default: break
            }
        }
        if error is ByteToMessageDecoderError {
            logger.debug("connection closed in the middle of a frame")
        } else {
            logger.debug("connection error: \(error)")
        }
        return .connectionClosed(peer: peer)
    }

    /// Logs why a connection is being closed, once, at a level that fits the reason.
    func logClosing(peer: String, logger: Logger) {
        switch self {
        case .authenticationFailed, .unexpectedPeer: break  // logged where it is detected, with context
        case .connectionClosed: logger.debug("closing connection: \(self)")
        default: logger.warning("closing connection to \(peer): \(self)")
        }
    }
}

/// The ways a peer can break the wire protocol.
public enum ProtocolViolation: Sendable, Equatable, CustomStringConvertible {
    case badMagic(found: UInt32)
    case unsupportedVersion(found: UInt16, supported: UInt16)
    case unknownFrameType(UInt8)
    case frameTooLarge(type: FrameType, length: Int, limit: Int)
    /// A frame that is not allowed in the current connection state (e.g. a request before authentication).
    case unexpectedFrame(type: FrameType, state: String)
    /// A frame whose payload does not parse; `field` names what was wrong.
    case malformedPayload(type: FrameType, field: String)
    case peerUnresponsive(silentForMilliseconds: Int64)
    /// Bulk chunks out of order (a chunk outside a tensor, a new tensor before the last one ended, a changed id).
    case bulkSequence(tensorID: UInt64, reason: String)
    case tensorTooLarge(tensorID: UInt64, bytes: Int, limit: Int)

    public var description: String {
        switch self {
        case .badMagic(let found): "bad magic 0x\(String(found, radix: 16)) (expected 0x4e564643 \"NVFC\")"
        case .unsupportedVersion(let found, let supported): "protocol version \(found) (this node speaks \(supported))"
        case .unknownFrameType(let raw): "unknown frame type 0x\(String(raw, radix: 16))"
        case .frameTooLarge(let type, let length, let limit): "\(type) frame payload of \(length) bytes exceeds the limit of \(limit)"
        case .unexpectedFrame(let type, let state): "\(type) frame not allowed while \(state)"
        case .malformedPayload(let type, let field): "malformed \(type) payload: \(field)"
        case .peerUnresponsive(let ms): "peer silent for \(ms) ms, declared dead"
        case .bulkSequence(let id, let reason): "bulk tensor \(id): \(reason)"
        case .tensorTooLarge(let id, let bytes, let limit): "bulk tensor \(id) reached \(bytes) bytes, over the limit of \(limit)"
        }
    }
}

/// The body of every ERROR (and REJECT / BULK_ABORT) frame, JSON-encoded. Never empty.
public struct RemoteErrorEnvelope: Codable, Sendable, Equatable, Error {
    public var code: String
    public var message: String

    public init(code: String, message: String) {
        self.code = code.isEmpty ? "unspecified" : code
        self.message = message.isEmpty ? "(no message)" : message
    }
}

/// Errors a request handler throws can conform to choose the envelope the caller sees.
public protocol RemoteErrorConvertible: Error {
    var remoteErrorEnvelope: RemoteErrorEnvelope { get }
}

extension RemoteErrorEnvelope: RemoteErrorConvertible {
    public var remoteErrorEnvelope: RemoteErrorEnvelope { self }

    /// The envelope of any error: its own if it has one, else `fallbackCode` and its description.
    init(for error: any Error, fallbackCode: String) {
        self = (error as? any RemoteErrorConvertible)?.remoteErrorEnvelope
            ?? RemoteErrorEnvelope(code: fallbackCode, message: String(describing: error))
    }

    /// JSON bytes for an ERROR / REJECT / BULK_ABORT payload.
    var payload: ByteBuffer {
        ByteBuffer(bytes: (try? JSONEncoder().encode(self)) ?? Data(#"{"code":"internal","message":"unencodable error"}"#.utf8))
    }

    static func decode(_ payload: ByteBuffer) -> RemoteErrorEnvelope? {
        try? JSONDecoder().decode(RemoteErrorEnvelope.self, from: Data(payload.readableBytesView))
    }
}

extension TransportError {
    /// `connection refused` rather than the socket library's nested report of a failed connect, for messages that
    /// name the address; other reasons are returned as they are.
    public static func plainConnectionFailure(_ reason: String) -> String {
        let lowered = reason.lowercased()
        for (needle, plain) in [("connection refused", "connection refused"), ("timed out", "connection timed out"),
                                ("no route to host", "no route to host"), ("network is unreachable", "network is unreachable")]
        where lowered.contains(needle) {
            return plain
        }
        return reason
    }
}
