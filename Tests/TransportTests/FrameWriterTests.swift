import NIOCore
import NIOEmbedded
import Testing
@testable import Transport

@Suite("Frame writer")
struct FrameWriterTests {
    @Test("small frames go out as one buffer; large payloads as header + the payload buffer itself; bytes match FrameEncoder")
    func vectoredLargePayloads() throws {
        let channel = EmbeddedChannel(handler: FrameWriter())
        defer { _ = try? channel.finish() }
        let small = Frame(type: .request, correlationID: 3, payload: ByteBuffer(bytes: [0, 1, 2]))
        let large = Frame(type: .bulkChunk, flags: [.firstChunk], correlationID: 9,
                          payload: ByteBuffer(bytes: (0..<(FrameWriter.copyThreshold + 5)).map { UInt8(truncatingIfNeeded: $0) }))
        try channel.writeOutbound(small)
        try channel.writeOutbound(large)
        var written: [ByteBuffer] = []
        while let buffer = try channel.readOutbound(as: ByteBuffer.self) { written.append(buffer) }
        #expect(written.count == 3)
        #expect(written.first == frameBytes(small))
        #expect(written.count == 3 && written[1].readableBytes == Frame.headerSize && written[2] == large.payload)
        var joined = ByteBuffer()
        for var buffer in written { joined.writeBuffer(&buffer) }
        var expected = frameBytes(small)
        var largeBytes = frameBytes(large)
        expected.writeBuffer(&largeBytes)
        #expect(joined == expected)
    }
}
