// libFuzzer target: the actor-call envelope (a REQUEST body) and the binary decoding of its arguments.
// Invariants: no input traps; an accepted envelope re-encodes to exactly its input bytes; its arguments decode (or
// fail with an error) as the receiver decodes them.
import FuzzDriver
import ActorSystem

runFuzzer(fuzz)

func fuzz(_ bytes: UnsafeRawBufferPointer) {
    let input = Array(bytes)
    guard let decoded = try? CallEnvelopeFuzzing.decodeAndReencode(input) else { return }
    precondition(decoded.reencoded == input, "an accepted envelope re-encodes to other bytes")
    for argument in decoded.arguments {
        _ = try? BinaryDecoder().decode(String.self, from: Array(argument))
        _ = try? BinaryDecoder().decode([Int64].self, from: Array(argument))
        _ = try? BinaryDecoder().decode([String: [UInt8]].self, from: Array(argument))
    }
}
