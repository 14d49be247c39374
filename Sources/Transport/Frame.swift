import NIOCore

/// The kind of a frame, carried in header byte 6.
public enum FrameType: UInt8, Sendable, Hashable, CaseIterable, CustomStringConvertible {
    // Handshake (only these are accepted before authentication completes).
    case hello = 0x01
    case challenge = 0x02
    case proof = 0x03
    case accept = 0x04
    case reject = 0x05
    // Request/response.
    case request = 0x10
    case response = 0x11
    case errorResponse = 0x12
    case message = 0x13
    // Liveness.
    case ping = 0x20
    case pong = 0x21
    // Bulk data path.
    case bulkChunk = 0x30
    case bulkAbort = 0x31

    var isHandshake: Bool { rawValue < 0x10 }

    public var description: String {
        switch self {
        case .hello: "HELLO"
        case .challenge: "CHALLENGE"
        case .proof: "PROOF"
        case .accept: "ACCEPT"
        case .reject: "REJECT"
        case .request: "REQUEST"
        case .response: "RESPONSE"
        case .errorResponse: "ERROR"
        case .message: "MESSAGE"
        case .ping: "PING"
        case .pong: "PONG"
        case .bulkChunk: "BULK_CHUNK"
        case .bulkAbort: "BULK_ABORT"
        }
    }
}

/// Per-frame flag bits (header byte 7). Only bulk chunks use flags in version 1.
public struct FrameFlags: OptionSet, Sendable, Hashable {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    /// First chunk of a tensor.
    public static let firstChunk = FrameFlags(rawValue: 0x01)
    /// Last chunk of a tensor.
    public static let lastChunk = FrameFlags(rawValue: 0x02)
}

/// One unit on the wire: a 20-byte header and `payload`.
public struct Frame: Sendable, Equatable {
    /// "NVFC".
    public static let magic: UInt32 = 0x4E56_4643
    /// Wire-format version this build speaks.
    public static let protocolVersion: UInt16 = 1
    public static let headerSize = 20

    public var type: FrameType
    public var flags: FrameFlags
    public var correlationID: UInt64
    public var payload: ByteBuffer

    public init(type: FrameType, flags: FrameFlags = [], correlationID: UInt64, payload: ByteBuffer = ByteBuffer()) {
        self.type = type
        self.flags = flags
        self.correlationID = correlationID
        self.payload = payload
    }
}

/// Payload caps the decoder enforces from the header alone, before buffering a payload.
public struct FrameLimits: Sendable, Hashable {
    /// Largest payload of any non-bulk frame.
    public var maxControlPayload: Int
    /// Largest payload of one bulk chunk frame (a tensor is many of these).
    public var maxBulkChunkPayload: Int

    /// Largest payload of a handshake frame, the only kind accepted before authentication: a stranger makes the
    /// server buffer no more than this.
    public var maxHandshakePayload: Int

    public init(maxControlPayload: Int = 16 << 20, maxBulkChunkPayload: Int = 64 << 20, maxHandshakePayload: Int = 4096) {
        self.maxControlPayload = maxControlPayload
        self.maxBulkChunkPayload = maxBulkChunkPayload
        self.maxHandshakePayload = maxHandshakePayload
    }

    func limit(for type: FrameType) -> Int {
        type == .bulkChunk ? maxBulkChunkPayload : maxControlPayload
    }
}

/// Which frames a connection accepts now, judged on the header before any payload is buffered: handshake frames
/// of at most ``FrameLimits/maxHandshakePayload`` until the handshake succeeds, then the frames of the connection's
/// purpose (calls, messages and heartbeats on a control connection; bulk chunks and heartbeats on a bulk one).
/// Shared by the decoder and the handshake handler, on the channel's event loop.
final class FrameAdmission {
    enum Phase: Equatable {
        case handshake
        case authenticated(ConnectionPurpose)
    }

    var phase: Phase = .handshake

    func check(type: FrameType, length: Int, limits: FrameLimits) throws {
        switch phase {
        case .handshake:
            guard type.isHandshake else {
                throw TransportError.protocolViolation(.unexpectedFrame(type: type, state: "awaiting authentication"))
            }
            guard length <= limits.maxHandshakePayload else {
                throw TransportError.protocolViolation(.frameTooLarge(type: type, length: length, limit: limits.maxHandshakePayload))
            }
        case .authenticated(let purpose):
            let allowed: Bool
            switch type {
            case .ping, .pong: allowed = true
            case .bulkChunk, .bulkAbort: allowed = purpose == .bulk
            case .request, .response, .errorResponse, .message: allowed = purpose == .control
            case .hello, .challenge, .proof, .accept, .reject: allowed = false
            }
            guard allowed else {
                throw TransportError.protocolViolation(.unexpectedFrame(type: type, state: "on an authenticated \(purpose) connection"))
            }
        }
    }
}

/// Splits a byte stream into frames. Rejects bad magic, a foreign version, an unknown type, a type the connection
/// does not accept now, or an oversized length as soon as the header is complete, so a hostile length never causes
/// a large allocation.
public struct FrameDecoder: ByteToMessageDecoder {
    public typealias InboundOut = Frame
    public let limits: FrameLimits
    /// Nil: every frame type, up to `limits` (the codec on its own).
    let admission: FrameAdmission?

    public init(limits: FrameLimits = FrameLimits()) {
        self.limits = limits
        admission = nil
    }

    init(limits: FrameLimits, admission: FrameAdmission) {
        self.limits = limits
        self.admission = admission
    }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let frame = try Self.decodeFrame(from: &buffer, limits: limits, admission: admission) else { return .needMoreData }
        context.fireChannelRead(Self.wrapInboundOut(frame))
        return .continue
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        try decode(context: context, buffer: &buffer)
    }

    /// Reads one frame if `buffer` holds a whole one; throws on a header that can never become valid.
    static func decodeFrame(from buffer: inout ByteBuffer, limits: FrameLimits, admission: FrameAdmission? = nil) throws -> Frame? {
        guard let header = try FrameHeader.read(from: buffer, limits: limits, admission: admission),
              buffer.readableBytes >= Frame.headerSize + header.length
        else { return nil }
        buffer.moveReaderIndex(forwardBy: Frame.headerSize)
        let payload = buffer.readSlice(length: header.length)!
        return Frame(type: header.type, flags: header.flags, correlationID: header.correlationID, payload: payload)
    }
}

/// A frame's 20-byte header, read and judged before any of its payload is buffered.
struct FrameHeader: Equatable {
    var type: FrameType
    var flags: FrameFlags
    var correlationID: UInt64
    /// Payload bytes that follow the header.
    var length: Int

    /// The header at the front of `buffer`, or nil while fewer than 20 bytes are there. Throws as soon as the bytes
    /// present can never start a valid frame: bad magic or version (checked as soon as their bytes arrive, so
    /// garbage is refused early), an unknown type, a type the connection does not admit now, or a length over the
    /// limit, so a hostile length never causes a large allocation.
    static func read(from buffer: ByteBuffer, limits: FrameLimits, admission: FrameAdmission?) throws -> FrameHeader? {
        let start = buffer.readerIndex
        if let magic = buffer.getInteger(at: start, as: UInt32.self), magic != Frame.magic {
            throw TransportError.protocolViolation(.badMagic(found: magic))
        }
        if let version = buffer.getInteger(at: start + 4, as: UInt16.self), version != Frame.protocolVersion {
            throw TransportError.protocolViolation(.unsupportedVersion(found: version, supported: Frame.protocolVersion))
        }
        guard buffer.readableBytes >= Frame.headerSize,
              let rawType = buffer.getInteger(at: start + 6, as: UInt8.self),
              let rawFlags = buffer.getInteger(at: start + 7, as: UInt8.self),
              let correlationID = buffer.getInteger(at: start + 8, as: UInt64.self),
              let length = buffer.getInteger(at: start + 16, as: UInt32.self)
        else { return nil }
        guard let type = FrameType(rawValue: rawType) else {
            throw TransportError.protocolViolation(.unknownFrameType(rawType))
        }
        try admission?.check(type: type, length: Int(length), limits: limits)
        let limit = limits.limit(for: type)
        guard Int(length) <= limit else {
            throw TransportError.protocolViolation(.frameTooLarge(type: type, length: Int(length), limit: limit))
        }
        return FrameHeader(type: type, flags: FrameFlags(rawValue: rawFlags), correlationID: correlationID, length: Int(length))
    }
}

/// Writes frames as header + payload.
public struct FrameEncoder: MessageToByteEncoder {
    public typealias OutboundIn = Frame
    public init() {}

    public func encode(data frame: Frame, out: inout ByteBuffer) throws {
        Self.encode(frame, into: &out)
    }

    static func encode(_ frame: Frame, into out: inout ByteBuffer) {
        out.reserveCapacity(minimumWritableBytes: Frame.headerSize + frame.payload.readableBytes)
        encodeHeader(frame, into: &out)
        var payload = frame.payload
        out.writeBuffer(&payload)
    }

    static func encodeHeader(_ frame: Frame, into out: inout ByteBuffer) {
        out.writeInteger(Frame.magic)
        out.writeInteger(Frame.protocolVersion)
        out.writeInteger(frame.type.rawValue)
        out.writeInteger(frame.flags.rawValue)
        out.writeInteger(frame.correlationID)
        out.writeInteger(UInt32(frame.payload.readableBytes))
    }
}

/// Writes frames like ``FrameEncoder``, but sends a large payload as its own buffer after the header, so bulk
/// chunks reach the socket in one vectored write without being copied.
final class FrameWriter: ChannelOutboundHandler {
    typealias OutboundIn = Frame
    typealias OutboundOut = ByteBuffer

    /// Below this, copying the payload next to its header is cheaper than a second buffer.
    static let copyThreshold = 64 << 10

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        let frame = unwrapOutboundIn(data)
        if frame.payload.readableBytes < Self.copyThreshold {
            var out = context.channel.allocator.buffer(capacity: Frame.headerSize + frame.payload.readableBytes)
            FrameEncoder.encode(frame, into: &out)
            context.write(wrapOutboundOut(out), promise: promise)
        } else {
            var header = context.channel.allocator.buffer(capacity: Frame.headerSize)
            FrameEncoder.encodeHeader(frame, into: &header)
            context.write(wrapOutboundOut(header), promise: nil)
            context.write(wrapOutboundOut(frame.payload), promise: promise)
        }
    }
}
