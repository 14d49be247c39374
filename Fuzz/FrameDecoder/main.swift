// libFuzzer target: the frame decoder (FrameDecoder's step) under every admission state, its encoder, and the
// streaming decoder connections use (FrameStreamDecoder).
// Invariants: no input traps; every decoded frame re-encodes to exactly the bytes it was decoded from; an incomplete
// frame consumes nothing; a frame is only accepted within its limit; the streaming decoder, fed the same bytes in
// reads split where the input says, delivers the same frames (a bulk frame as pieces that join to its payload, with
// its flags on the first and last piece) and refuses exactly the streams the whole-frame decoder refuses.
import FuzzDriver
import NIOCore
import Transport

runFuzzer(fuzz)

func fuzz(_ bytes: UnsafeRawBufferPointer) {
    // The first byte picks the admission state and small limits, so the limit checks are reachable too.
    guard let selector = bytes.first else { return }
    let admission = TransportFuzzing.Admission.allCases[Int(selector & 3)]
    let limits = selector & 4 == 0
        ? FrameLimits()
        : FrameLimits(maxControlPayload: 64, maxBulkChunkPayload: 128, maxHandshakePayload: 32)
    var buffer = ByteBuffer(bytes: bytes.dropFirst())
    var decoded: [Frame] = []
    defer { checkStreaming(bytes: bytes, limits: limits, admission: admission, wholeFrames: decoded) }
    while true {
        let before = buffer.readerIndex
        let unread = buffer
        let frame: Frame?
        do {
            frame = try TransportFuzzing.decodeFrame(from: &buffer, limits: limits, admission: admission)
        } catch {
            refusedByWholeDecoder = true
            return
        }
        guard let frame else {
            precondition(buffer.readerIndex == before, "an incomplete frame consumed bytes")
            return
        }
        let consumed = buffer.readerIndex - before
        let original = unread.getBytes(at: before, length: consumed)!
        let encoded = TransportFuzzing.encode(frame)
        precondition(Array(encoded.readableBytesView) == original, "a decoded frame re-encodes to other bytes")
        let limit = frame.type == .bulkChunk ? limits.maxBulkChunkPayload : limits.maxControlPayload
        precondition(frame.payload.readableBytes <= limit, "a frame over its limit was accepted")
        // Decoding the re-encoded frame gives the same frame.
        var again = encoded
        let redecoded = try! TransportFuzzing.decodeFrame(from: &again, limits: limits, admission: admission)
        precondition(redecoded == frame && again.readableBytes == 0, "a re-encoded frame decodes differently")
        decoded.append(frame)
    }
}

nonisolated(unsafe) var refusedByWholeDecoder = false

/// Feeds the same bytes to the streaming decoder in reads whose lengths come from the input's second byte, and
/// compares with what the whole-frame decoder made of them.
func checkStreaming(bytes: UnsafeRawBufferPointer, limits: FrameLimits, admission: TransportFuzzing.Admission,
                    wholeFrames: [Frame]) {
    defer { refusedByWholeDecoder = false }
    let stream = Array(bytes.dropFirst())
    let step = max(1, Int(bytes.count > 1 ? bytes[1] : 1))
    var reads: [ByteBuffer] = []
    var offset = 0
    var size = step
    while offset < stream.count {
        let end = min(stream.count, offset + size)
        reads.append(ByteBuffer(bytes: stream[offset..<end]))
        offset = end
        size = size % 97 + 1 + step % 13  // uneven read sizes
    }
    let (pieces, refused) = TransportFuzzing.streamDecode(reads, limits: limits, admission: admission)
    precondition(refused == refusedByWholeDecoder, "the streaming decoder refused \(refused), the whole-frame one \(refusedByWholeDecoder)")
    // Each whole frame is, in order, one control frame or the run of bulk pieces that joins to it: the first piece
    // carries its first-chunk flag, the last its last-chunk flag, the others none.
    var index = 0
    for whole in wholeFrames {
        guard whole.type == .bulkChunk else {
            precondition(index < pieces.count && pieces[index] == whole, "a control frame differs")
            index += 1
            continue
        }
        var payload = ByteBuffer()
        let start = index
        repeat {
            precondition(index < pieces.count, "a bulk frame is missing pieces")
            var piece = pieces[index]
            precondition(piece.type == .bulkChunk && piece.correlationID == whole.correlationID, "a piece of another frame")
            payload.writeBuffer(&piece.payload)
            index += 1
        } while payload.readableBytes < whole.payload.readableBytes
        precondition(payload == whole.payload, "bulk pieces do not join to the frame's payload")
        for position in start..<index {
            var expected: FrameFlags = []
            if position == start { expected.formUnion(whole.flags.intersection(.firstChunk)) }
            if position == index - 1 { expected.formUnion(whole.flags.intersection(.lastChunk)) }
            precondition(pieces[position].flags == expected, "a bulk piece carries the wrong flags")
        }
    }
    // What follows is at most the start of one bulk frame the whole-frame decoder is still waiting for.
    for piece in pieces[index...] {
        precondition(piece.type == .bulkChunk && !piece.flags.contains(.lastChunk), "delivered more than the whole frames")
    }
}
