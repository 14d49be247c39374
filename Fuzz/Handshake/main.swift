// libFuzzer target: the HELLO and CHALLENGE payload decoder (Handshake.Greeting).
// Invariants: no input traps; an accepted greeting has a 32-byte nonce and a known purpose (HELLO only); it re-encodes
// to a payload that decodes to the same greeting, and to the very input bytes when the name was valid UTF-8.
import FuzzDriver
import NIOCore
import Transport

runFuzzer(fuzz)

func fuzz(_ bytes: UnsafeRawBufferPointer) {
    guard let selector = bytes.first else { return }
    // Every frame type, handshake or not: the decoder is only called on HELLO and CHALLENGE, but must not trap on any.
    let types = FrameType.allCases
    let type = types[Int(selector) % types.count]
    let payload = ByteBuffer(bytes: bytes.dropFirst())
    guard let greeting = try? TransportFuzzing.decodeGreeting(payload, type: type) else { return }
    precondition(greeting.nonce.count == 32, "a greeting with a \(greeting.nonce.count)-byte nonce")
    precondition((type == .hello) == (greeting.purpose != nil), "purpose present on a non-HELLO or absent on a HELLO")
    // A name repaired from invalid UTF-8 (U+FFFD) can grow past 255 bytes: such a greeting is never re-encoded.
    guard greeting.name.utf8.count <= 255 else { return }
    let encoded = TransportFuzzing.encodeGreeting(greeting)
    precondition((try? TransportFuzzing.decodeGreeting(encoded, type: type)) == greeting, "a re-encoded greeting decodes differently")
    let nameLength = Int(bytes[1 + 1]) // role, then the name's length byte
    let nameBytes = bytes.dropFirst(3).prefix(nameLength)
    if String(validating: nameBytes, as: UTF8.self) != nil {
        let original = Array(bytes.dropFirst())
        // A HELLO without the purpose byte means control, which the encoder writes out.
        let expected = type == .hello && original.count == 2 + nameLength + 32 ? original + [0] : original
        precondition(Array(encoded.readableBytesView) == expected, "a greeting re-encodes to other bytes")
    }
}
