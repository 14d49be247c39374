// libFuzzer target: the frame decoder (FrameDecoder's step) under every admission state, and its encoder.
// Invariants: no input traps; every decoded frame re-encodes to exactly the bytes it was decoded from; an incomplete
// frame consumes nothing; a frame is only accepted within its limit.
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
    while true {
        let before = buffer.readerIndex
        let unread = buffer
        let frame: Frame?
        do {
            frame = try TransportFuzzing.decodeFrame(from: &buffer, limits: limits, admission: admission)
        } catch {
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
    }
}
