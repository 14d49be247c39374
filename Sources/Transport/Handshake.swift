import Crypto
import NIOCore

/// The handshake payloads and the HMAC proofs (Docs/wire-protocol.md, "Handshake").
///
/// Client → HELLO(identity, client nonce); server → CHALLENGE(identity, server nonce);
/// client → PROOF(HMAC(token, "NVFC/1 client proof" ‖ transcript));
/// server → ACCEPT(HMAC(token, "NVFC/1 server proof" ‖ transcript)) or REJECT(envelope).
/// The transcript binds both identities and both nonces, so a proof cannot be replayed on another connection
/// and neither side's proof can be reflected as the other's.
enum Handshake {
    static let nonceSize = 32
    static let macSize = 32
    static let clientLabel = Array("NVFC/1 client proof".utf8)
    static let serverLabel = Array("NVFC/1 server proof".utf8)

    /// HELLO and CHALLENGE share one layout: role u8, name length u8, name UTF-8, nonce (32 bytes); HELLO may end
    /// with the connection purpose (u8; absent means control).
    struct Greeting: Equatable {
        var identity: NodeIdentity
        var nonce: [UInt8]
        /// Only HELLO carries it.
        var purpose: ConnectionPurpose? = nil

        func encoded() -> ByteBuffer {
            let name = Array(identity.name.utf8)
            precondition(name.count <= 255, "node names are validated before the handshake")
            var buffer = ByteBuffer()
            buffer.writeInteger(identity.role.rawValue)
            buffer.writeInteger(UInt8(name.count))
            buffer.writeBytes(name)
            buffer.writeBytes(nonce)
            if let purpose { buffer.writeInteger(purpose.rawValue) }
            return buffer
        }

        static func decode(_ payload: ByteBuffer, type: FrameType) throws(TransportError) -> Greeting {
            var payload = payload
            guard let role = payload.readInteger(as: UInt8.self) else {
                throw .protocolViolation(.malformedPayload(type: type, field: "role"))
            }
            guard let nameLength = payload.readInteger(as: UInt8.self),
                  let name = payload.readString(length: Int(nameLength))
            else { throw .protocolViolation(.malformedPayload(type: type, field: "name")) }
            let trailer = type == .hello ? 1 : 0
            guard payload.readableBytes == nonceSize || payload.readableBytes == nonceSize + trailer,
                  let nonce = payload.readBytes(length: nonceSize)
            else {
                throw .protocolViolation(.malformedPayload(type: type, field: "nonce (must be 32 bytes)"))
            }
            var purpose: ConnectionPurpose?
            if type == .hello {
                let raw = payload.readInteger(as: UInt8.self) ?? ConnectionPurpose.control.rawValue
                guard let known = ConnectionPurpose(rawValue: raw) else {
                    throw .protocolViolation(.malformedPayload(type: type, field: "connection purpose \(raw)"))
                }
                purpose = known
            }
            return Greeting(identity: NodeIdentity(name: name, role: NodeRole(rawValue: role)), nonce: nonce, purpose: purpose)
        }
    }

    static func makeNonce() -> [UInt8] {
        var generator = SystemRandomNumberGenerator()
        return (0..<nonceSize).map { _ in UInt8.random(in: .min ... .max, using: &generator) }
    }

    /// version (u16 BE) ‖ HELLO payload ‖ CHALLENGE payload, exactly as sent.
    static func transcript(hello: ByteBuffer, challenge: ByteBuffer) -> [UInt8] {
        var bytes: [UInt8] = [UInt8(Frame.protocolVersion >> 8), UInt8(Frame.protocolVersion & 0xFF)]
        bytes += hello.readableBytesView
        bytes += challenge.readableBytesView
        return bytes
    }

    static func proof(label: [UInt8], transcript: [UInt8], key: SymmetricKey) -> [UInt8] {
        var hmac = HMAC<SHA256>(key: key)
        hmac.update(data: label)
        hmac.update(data: transcript)
        return Array(hmac.finalize())
    }

    /// Constant-time check (swift-crypto compares MACs without early exit).
    static func verify(_ mac: ByteBuffer, label: [UInt8], transcript: [UInt8], key: SymmetricKey) -> Bool {
        guard mac.readableBytes == macSize else { return false }
        return HMAC<SHA256>.isValidAuthenticationCode(
            Array(mac.readableBytesView), authenticating: label + transcript, using: key)
    }

    /// No token means the empty key: two token-less loopback peers agree, a token-less peer never
    /// passes against a node that has one.
    static func key(for token: ClusterToken?) -> SymmetricKey {
        token?.key ?? SymmetricKey(data: [UInt8]())
    }

    static func validate(_ identity: NodeIdentity) throws {
        guard identity.name.utf8.count <= 255 else {
            throw TransportError.invalidConfiguration("node name is \(identity.name.utf8.count) UTF-8 bytes; at most 255 are allowed")
        }
    }
}
