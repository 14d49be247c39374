import NIOCore
import NIOEmbedded
import NIOTestUtils
import Testing
@testable import Transport

@Suite("Frame codec")
struct FrameCodecTests {
    let request = Frame(type: .request, correlationID: 7, payload: ByteBuffer(string: "\u{0}\u{3}hello"))
    let bulk = Frame(type: .bulkChunk, flags: [.firstChunk, .lastChunk], correlationID: 0xDEAD_BEEF_0000_0001,
                     payload: ByteBuffer(bytes: Array(0..<200).map { UInt8($0) }))
    let ping = Frame(type: .ping, correlationID: 1)

    @Test("header is 20 bytes: NVFC, version 1, type, flags, u64 id, u32 length, big-endian")
    func headerLayout() {
        let bytes = Array(frameBytes(Frame(type: .bulkChunk, flags: [.lastChunk], correlationID: 0x0102_0304_0506_0708,
                                           payload: ByteBuffer(bytes: [0xAA, 0xBB]))).readableBytesView)
        #expect(bytes == [0x4E, 0x56, 0x46, 0x43, 0x00, 0x01, 0x30, 0x02,
                          0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,
                          0x00, 0x00, 0x00, 0x02, 0xAA, 0xBB])
    }

    @Test("verifier: single frames, several frames per buffer, any split (byte by byte included)")
    func verifierHappyPaths() throws {
        var twoFrames = frameBytes(request)
        var second = frameBytes(bulk)
        twoFrames.writeBuffer(&second)
        var three = frameBytes(ping)
        var more = frameBytes(request)
        three.writeBuffer(&more)
        more = frameBytes(ping)
        three.writeBuffer(&more)
        try ByteToMessageDecoderVerifier.verifyDecoder(
            inputOutputPairs: [
                (frameBytes(request), [request]),
                (frameBytes(ping), [ping]),
                (twoFrames, [request, bulk]),
                (three, [ping, request, ping]),
            ],
            decoderFactory: { FrameDecoder() })
    }

    @Test("byte-by-byte input yields the frame only after its last byte")
    func byteByByte() throws {
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(FrameDecoder()))
        let bytes = Array(frameBytes(bulk).readableBytesView)
        for (index, byte) in bytes.enumerated() {
            try channel.writeInbound(ByteBuffer(bytes: [byte]))
            let decoded = try channel.readInbound(as: Frame.self)
            if index < bytes.count - 1 {
                #expect(decoded == nil)
            } else {
                #expect(decoded == bulk)
            }
        }
        #expect(try channel.finish().isClean)
    }

    @Test("corrupt magic is refused as soon as the first four bytes arrive")
    func corruptMagic() throws {
        var bytes = ByteBuffer(bytes: [0x47, 0x45, 0x54, 0x20])  // "GET "
        #expect(throws: TransportError.protocolViolation(.badMagic(found: 0x4745_5420))) {
            try FrameDecoder.decodeFrame(from: &bytes, limits: FrameLimits())
        }
        let channel = EmbeddedChannel(handler: ByteToMessageHandler(FrameDecoder()))
        var corrupted = frameBytes(request)
        corrupted.setInteger(UInt8(0x00), at: 2)
        #expect(throws: TransportError.self) { try channel.writeInbound(corrupted) }
        _ = try? channel.finish()
    }

    @Test("oversized length is refused from the header alone, per frame kind")
    func oversizedLength() throws {
        let limits = FrameLimits(maxControlPayload: 1024, maxBulkChunkPayload: 4096)
        func header(_ type: FrameType, length: UInt32) -> ByteBuffer {
            var buffer = ByteBuffer()
            buffer.writeInteger(Frame.magic)
            buffer.writeInteger(Frame.protocolVersion)
            buffer.writeInteger(type.rawValue)
            buffer.writeInteger(UInt8(0))
            buffer.writeInteger(UInt64(9))
            buffer.writeInteger(length)
            return buffer
        }
        var control = header(.request, length: 1025)
        #expect(throws: TransportError.protocolViolation(.frameTooLarge(type: .request, length: 1025, limit: 1024))) {
            try FrameDecoder.decodeFrame(from: &control, limits: limits)
        }
        // The same length is fine on the bulk path (the decoder just waits for the payload)...
        var bulkHeader = header(.bulkChunk, length: 1025)
        #expect(try FrameDecoder.decodeFrame(from: &bulkHeader, limits: limits) == nil)
        // ...up to the bulk cap.
        var hugeBulk = header(.bulkChunk, length: 4097)
        #expect(throws: TransportError.protocolViolation(.frameTooLarge(type: .bulkChunk, length: 4097, limit: 4096))) {
            try FrameDecoder.decodeFrame(from: &hugeBulk, limits: limits)
        }
        var maxLength = header(.response, length: .max)
        #expect(throws: TransportError.self) { try FrameDecoder.decodeFrame(from: &maxLength, limits: FrameLimits()) }
    }

    @Test("a wrong protocol version is refused")
    func wrongVersion() throws {
        var bytes = frameBytes(ping)
        bytes.setInteger(UInt16(2), at: bytes.readerIndex + 4)
        #expect(throws: TransportError.protocolViolation(.unsupportedVersion(found: 2, supported: 1))) {
            try FrameDecoder.decodeFrame(from: &bytes, limits: FrameLimits())
        }
    }

    @Test("an unknown frame type is refused")
    func unknownType() throws {
        var bytes = frameBytes(ping)
        bytes.setInteger(UInt8(0x7F), at: bytes.readerIndex + 6)
        #expect(throws: TransportError.protocolViolation(.unknownFrameType(0x7F))) {
            try FrameDecoder.decodeFrame(from: &bytes, limits: FrameLimits())
        }
    }

    @Test("violation descriptions name what was wrong")
    func descriptions() {
        #expect("\(TransportError.protocolViolation(.badMagic(found: 0x47455420)))".contains("bad magic 0x47455420"))
        #expect("\(TransportError.protocolViolation(.frameTooLarge(type: .request, length: 20, limit: 10)))"
            .contains("REQUEST frame payload of 20 bytes exceeds the limit of 10"))
        #expect("\(try! ClusterToken(correctToken))" == "ClusterToken(<redacted>)")
    }
}
