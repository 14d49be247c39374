import NIOCore

/// Splits the byte stream into frames like ``FrameDecoder``, but hands a BULK_CHUNK's payload on as it arrives,
/// as slices of the socket's own read buffers, instead of gathering the whole payload into one buffer first.
///
/// A bulk frame whose payload spans several reads becomes several `Frame`s of type BULK_CHUNK with the same tensor
/// id: the first carries the frame's first-chunk flag, the last its last-chunk flag, so downstream they read as
/// smaller chunks of the same tensor (``IncomingTensor`` promises chunk boundaries "the sender's, or smaller").
/// Other frames are delivered whole. Only header bytes split across reads, and control frames split across reads,
/// are copied; the counts are kept for ``PeerConnection/receiveStatistics()``.
///
/// Headers are judged before any payload is buffered, exactly as ``FrameDecoder`` judges them. After a violation the
/// decoder drops all further input: the connection's last handler closes the channel on the error.
final class FrameStreamDecoder: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = Frame

    private let limits: FrameLimits
    private let admission: FrameAdmission?

    /// Bytes of a header, or of a whole non-bulk frame, that did not fit in one read.
    private var pending: ByteBuffer?
    /// The bulk frame whose payload is arriving, and how much of it is still to come.
    private var bulkFrame: (header: FrameHeader, remaining: Int, deliveredAny: Bool)?
    private var failed = false
    private(set) var statistics = ReceiveStatistics()

    init(limits: FrameLimits, admission: FrameAdmission?) {
        self.limits = limits
        self.admission = admission
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !failed else { return }
        var input = unwrapInboundIn(data)
        statistics.receivedBytes += input.readableBytes
        do {
            try decode(&input) { context.fireChannelRead(wrapInboundOut($0)) }
        } catch {
            failed = true
            pending = nil
            bulkFrame = nil
            context.fireErrorCaught(error)
        }
    }

    /// Delivers every frame, or piece of a bulk frame, that `input` completes. `deliver` runs synchronously, so a
    /// handshake that changes what ``FrameAdmission`` admits takes effect before the next header is judged.
    func decode(_ input: inout ByteBuffer, deliver: (Frame) -> Void) throws {
        while true {
            if var bulk = bulkFrame {
                let count = min(bulk.remaining, input.readableBytes)
                // An empty read delivers nothing, unless the payload itself is empty (an empty last chunk).
                guard count > 0 || bulk.remaining == 0 else { return }
                let piece = input.readSlice(length: count)!
                bulk.remaining -= count
                var flags: FrameFlags = []
                if !bulk.deliveredAny, bulk.header.flags.contains(.firstChunk) { flags.insert(.firstChunk) }
                if bulk.remaining == 0, bulk.header.flags.contains(.lastChunk) { flags.insert(.lastChunk) }
                bulk.deliveredAny = true
                bulkFrame = bulk.remaining == 0 ? nil : bulk
                statistics.bulkPieces += 1
                statistics.bulkPayloadBytes += count
                deliver(Frame(type: .bulkChunk, flags: flags, correlationID: bulk.header.correlationID, payload: piece))
                continue
            }
            if var held = pending {
                // Complete the header first, taking no more than it needs.
                if held.readableBytes < Frame.headerSize {
                    let take = min(Frame.headerSize - held.readableBytes, input.readableBytes)
                    copy(take, from: &input, into: &held)
                }
                guard let header = try FrameHeader.read(from: held, limits: limits, admission: admission) else {
                    pending = held
                    return
                }
                if header.type == .bulkChunk {
                    pending = nil
                    bulkFrame = (header, header.length, false)
                    continue
                }
                let missing = Frame.headerSize + header.length - held.readableBytes
                copy(min(missing, input.readableBytes), from: &input, into: &held)
                guard let frame = try FrameDecoder.decodeFrame(from: &held, limits: limits, admission: nil) else {
                    pending = held
                    return
                }
                pending = nil
                deliver(frame)
                continue
            }
            guard input.readableBytes > 0 else { return }
            guard let header = try FrameHeader.read(from: input, limits: limits, admission: admission) else {
                var held = ByteBuffer()
                copy(input.readableBytes, from: &input, into: &held)
                pending = held
                return
            }
            if header.type == .bulkChunk {
                input.moveReaderIndex(forwardBy: Frame.headerSize)
                bulkFrame = (header, header.length, false)
                continue
            }
            if let frame = try FrameDecoder.decodeFrame(from: &input, limits: limits, admission: nil) {
                deliver(frame)
                continue
            }
            // A control frame that ends in a later read: gather it (its size is known and within the limit).
            var held = ByteBuffer()
            held.reserveCapacity(Frame.headerSize + header.length)
            copy(input.readableBytes, from: &input, into: &held)
            pending = held
            return
        }
    }

    private func copy(_ count: Int, from input: inout ByteBuffer, into held: inout ByteBuffer) {
        guard count > 0 else { return }
        var bytes = input.readSlice(length: count)!
        held.writeBuffer(&bytes)
        statistics.copiedBytes += count
    }
}

/// What a connection's receiving side has done with the bytes it read, for measuring the bulk path's copies.
public struct ReceiveStatistics: Sendable, Equatable {
    /// Bytes read from the connection (after TLS, when it is on).
    public var receivedBytes = 0
    /// Bytes the decoder copied: headers and control frames split across reads. Bulk payload is never copied.
    public var copiedBytes = 0
    /// BULK_CHUNK payload bytes delivered, and in how many pieces.
    public var bulkPayloadBytes = 0
    public var bulkPieces = 0

    public init() {}
}
