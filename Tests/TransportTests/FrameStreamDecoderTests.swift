import NIOCore
import NIOEmbedded
import Testing
@testable import Transport

/// ``patternChunk(index:size:)`` cut to a size that is not a multiple of 8.
private func oddSized(index: Int, size: Int) -> ByteBuffer {
    patternChunk(index: index, size: (size + 7) / 8 * 8).getSlice(at: 0, length: size)!
}

@Suite("Streaming frame decoder")
struct FrameStreamDecoderTests {
    let frames: [Frame] = [
        Frame(type: .request, correlationID: 7, payload: ByteBuffer(string: "\u{0}\u{3}hello")),
        Frame(type: .bulkChunk, flags: .firstChunk, correlationID: 42, payload: patternChunk(index: 1, size: 200_000)),
        Frame(type: .ping, correlationID: 1),
        Frame(type: .bulkChunk, correlationID: 42, payload: oddSized(index: 2, size: 70_001)),
        Frame(type: .bulkChunk, flags: .lastChunk, correlationID: 42, payload: ByteBuffer()),
        Frame(type: .bulkChunk, flags: [.firstChunk, .lastChunk], correlationID: 43, payload: oddSized(index: 3, size: 5)),
        Frame(type: .response, correlationID: 7, payload: patternChunk(index: 4, size: 3000)),
    ]

    /// The frames' bytes cut into reads of the given sizes (the last read takes the rest).
    func reads(sizes: [Int]) -> [ByteBuffer] {
        var stream = ByteBuffer()
        for frame in frames {
            var bytes = frameBytes(frame)
            stream.writeBuffer(&bytes)
        }
        var result: [ByteBuffer] = []
        var index = 0
        while stream.readableBytes > 0 {
            let size = min(sizes[index % sizes.count], stream.readableBytes)
            // Each read in its own storage, as the socket gives them.
            result.append(ByteBuffer(bytes: stream.readSlice(length: size)!.readableBytesView))
            index += 1
        }
        return result
    }

    /// Feeds `reads` through the decoder on an EmbeddedChannel; returns what it delivered and its statistics.
    func decode(_ reads: [ByteBuffer]) throws -> (pieces: [Frame], statistics: ReceiveStatistics) {
        let decoder = FrameStreamDecoder(limits: FrameLimits(), admission: nil)
        let channel = EmbeddedChannel(handler: decoder)
        for read in reads { try channel.writeInbound(read) }
        var pieces: [Frame] = []
        while let frame = try channel.readInbound(as: Frame.self) { pieces.append(frame) }
        #expect(try channel.finish().isClean)
        return (pieces, decoder.statistics)
    }

    /// Joins runs of bulk pieces back into frames, checking that only the first piece of a frame may carry the first
    /// flag and only its last the last flag.
    func join(_ pieces: [Frame]) -> [Frame] {
        var joined: [Frame] = []
        var index = 0
        for original in frames {
            guard original.type == .bulkChunk else {
                joined.append(pieces[index])
                index += 1
                continue
            }
            var payload = ByteBuffer()
            var flags: FrameFlags = []
            let start = index
            repeat {
                var piece = pieces[index]
                #expect(piece.correlationID == original.correlationID)
                if index > start { #expect(!piece.flags.contains(.firstChunk), "first flag on a later piece") }
                flags.formUnion(piece.flags)
                payload.writeBuffer(&piece.payload)
                index += 1
            } while payload.readableBytes < original.payload.readableBytes
            #expect(index - 1 == start || !pieces[start].flags.contains(.lastChunk), "last flag on an earlier piece")
            joined.append(Frame(type: .bulkChunk, flags: flags, correlationID: original.correlationID, payload: payload))
        }
        #expect(index == pieces.count)
        return joined
    }

    @Test("any split of the stream: control frames whole, bulk frames as pieces that join to the payload and flags")
    func anySplit() throws {
        for sizes in [[1 << 20], [65_536], Array(repeating: 1, count: 23) + [65_536], [7, 19, 20, 21, 4096], [3, 100_000, 17]] {
            let (pieces, _) = try decode(reads(sizes: sizes))
            #expect(join(pieces) == frames, "reads of \(sizes)")
        }
    }

    @Test("bulk payload is handed on as slices of the reads, never copied; only split headers and control frames are")
    func bulkPayloadIsNotCopied() throws {
        let input = reads(sizes: [7, 65_536, 33, 65_536])
        let (pieces, statistics) = try decode(input)
        let bulkBytes = frames.filter { $0.type == .bulkChunk }.reduce(0) { $0 + $1.payload.readableBytes }
        let controlBytes = frames.filter { $0.type != .bulkChunk }.reduce(0) { $0 + $1.payload.readableBytes }
        #expect(statistics.bulkPayloadBytes == bulkBytes)
        #expect(statistics.receivedBytes == input.reduce(0) { $0 + $1.readableBytes })
        #expect(statistics.copiedBytes > 0 && statistics.copiedBytes <= frames.count * Frame.headerSize + controlBytes)
        // Every non-empty bulk piece points into one of the reads' own memory.
        let ranges = input.map { read in
            read.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress!)..<UInt(bitPattern: $0.baseAddress! + $0.count) }
        }
        for piece in pieces where piece.type == .bulkChunk && piece.payload.readableBytes > 0 {
            let address = piece.payload.withUnsafeReadableBytes { UInt(bitPattern: $0.baseAddress!) }
            #expect(ranges.contains { $0.contains(address) }, "a bulk piece was copied out of the reads")
        }
    }

    @Test("reads that line up with frames copy nothing at all")
    func alignedReadsCopyNothing() throws {
        let input = frames.map(frameBytes)
        let (pieces, statistics) = try decode(input)
        #expect(statistics.copiedBytes == 0)
        #expect(pieces == frames)
    }

    @Test("a bad header is refused as soon as its bytes arrive, after the frames before it, and nothing follows")
    func refusalStopsTheStream() throws {
        let decoder = FrameStreamDecoder(limits: FrameLimits(maxControlPayload: 64, maxBulkChunkPayload: 128), admission: nil)
        let channel = EmbeddedChannel(handler: decoder)
        var stream = frameBytes(Frame(type: .ping, correlationID: 1))
        stream.writeBytes([0x4E, 0x56, 0x46])  // the start of a header, then a wrong fourth magic byte
        try channel.writeInbound(stream)
        #expect(try channel.readInbound(as: Frame.self)?.type == .ping)
        #expect(throws: TransportError.protocolViolation(.badMagic(found: 0x4E56_4600))) {
            try channel.writeInbound(ByteBuffer(bytes: [0x00, 0x00, 0x01]))
        }
        // Dropped after the violation, even a valid frame.
        try channel.writeInbound(frameBytes(Frame(type: .ping, correlationID: 2)))
        #expect(try channel.readInbound(as: Frame.self) == nil)
        _ = try? channel.finish()

        // An oversized bulk length is refused from the header alone, before any of its payload.
        let second = EmbeddedChannel(handler: FrameStreamDecoder(limits: FrameLimits(maxBulkChunkPayload: 128), admission: nil))
        var header = frameBytes(Frame(type: .bulkChunk, flags: .firstChunk, correlationID: 3, payload: oddSized(index: 0, size: 129)))
        #expect(throws: TransportError.protocolViolation(.frameTooLarge(type: .bulkChunk, length: 129, limit: 128))) {
            try second.writeInbound(header.readSlice(length: Frame.headerSize)!)
        }
        _ = try? second.finish()
    }

    @Test("before authentication only small handshake frames are admitted; a bulk chunk is refused at its header")
    func admissionBeforeHandshake() throws {
        let channel = EmbeddedChannel(handler: FrameStreamDecoder(limits: FrameLimits(), admission: FrameAdmission()))
        var bulk = frameBytes(Frame(type: .bulkChunk, flags: .firstChunk, correlationID: 1, payload: patternChunk(index: 0, size: 64)))
        #expect(throws: TransportError.protocolViolation(.unexpectedFrame(type: .bulkChunk, state: "awaiting authentication"))) {
            try channel.writeInbound(bulk.readSlice(length: Frame.headerSize)!)
        }
        #expect(try channel.readInbound(as: Frame.self) == nil)
        _ = try? channel.finish()
    }
}
