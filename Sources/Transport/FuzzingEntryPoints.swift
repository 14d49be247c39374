import NIOCore

/// The frame and handshake codecs as the fuzz targets (Fuzz/) drive them. `package`: nothing outside this package
/// sees them; they add no behaviour, only reach the internal decoders without a channel.
package enum TransportFuzzing {
    /// Which frames the decoder admits: none checked (the codec on its own), a connection awaiting authentication,
    /// or an authenticated control or bulk connection.
    package enum Admission: CaseIterable {
        case none, handshake, control, bulk
    }

    private static func makeCheck(_ admission: Admission) -> FrameAdmission? {
        switch admission {
        case .none: return nil
        case .handshake: return FrameAdmission()
        case .control, .bulk:
            let state = FrameAdmission()
            state.phase = .authenticated(admission == .control ? .control : .bulk)
            return state
        }
    }

    /// ``FrameDecoder``'s step: one frame from the front of `buffer`, nil when it holds no whole frame yet.
    package static func decodeFrame(from buffer: inout ByteBuffer, limits: FrameLimits, admission: Admission) throws -> Frame? {
        try FrameDecoder.decodeFrame(from: &buffer, limits: limits, admission: makeCheck(admission))
    }

    /// ``FrameStreamDecoder`` (the decoder connections use) fed `reads` one after another: the frames and bulk pieces
    /// it delivered, and whether it refused the stream.
    package static func streamDecode(_ reads: [ByteBuffer], limits: FrameLimits, admission: Admission) -> (frames: [Frame], refused: Bool) {
        let decoder = FrameStreamDecoder(limits: limits, admission: makeCheck(admission))
        var frames: [Frame] = []
        for var read in reads {
            do {
                try decoder.decode(&read) { frames.append($0) }
            } catch {
                return (frames, true)
            }
        }
        return (frames, false)
    }

    /// ``FrameEncoder``'s bytes for `frame`.
    package static func encode(_ frame: Frame) -> ByteBuffer {
        var out = ByteBuffer()
        FrameEncoder.encode(frame, into: &out)
        return out
    }

    /// A HELLO or CHALLENGE payload, decoded: the peer's name and role, its nonce and (HELLO only) the purpose.
    package struct Greeting: Equatable {
        package var name: String
        package var role: UInt8
        package var nonce: [UInt8]
        package var purpose: UInt8?
    }

    package static func decodeGreeting(_ payload: ByteBuffer, type: FrameType) throws -> Greeting {
        let greeting = try Handshake.Greeting.decode(payload, type: type)
        return Greeting(name: greeting.identity.name, role: greeting.identity.role.rawValue, nonce: greeting.nonce,
                        purpose: greeting.purpose?.rawValue)
    }

    /// The payload ``Handshake/Greeting`` encodes for `greeting` (its name must be at most 255 UTF-8 bytes).
    package static func encodeGreeting(_ greeting: Greeting) -> ByteBuffer {
        Handshake.Greeting(identity: NodeIdentity(name: greeting.name, role: NodeRole(rawValue: greeting.role)),
                           nonce: greeting.nonce, purpose: greeting.purpose.flatMap(ConnectionPurpose.init(rawValue:)))
            .encoded()
    }
}
