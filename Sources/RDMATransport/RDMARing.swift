import Foundation

/// The layout of a receive ring and the 32-bit immediate that announces each write into it.
///
/// A ring is `slotCount` slots of `slotBytes`, used strictly in turn (slot = message number mod `slotCount`). Each
/// data slot starts with a 16-byte header (tensor id, payload length, both little-endian, 4 bytes reserved) followed
/// by the payload. The immediate says which slot was written and how the payload belongs to its tensor; the header
/// says which tensor, because 32 bits cannot hold a 64-bit id.
public enum RDMARing {
    public static let headerBytes = 16

    /// What an immediate announces.
    public enum Message: Equatable, Sendable {
        /// Slot `slot` holds a piece of a tensor; `abort` pieces carry "code\nmessage" in UTF-8.
        case data(slot: Int, first: Bool, last: Bool, abort: Bool)
        /// The peer drained `count` more of the slots this side wrote: that many more writes may go.
        case credit(count: Int)
        /// The peer closed the link cleanly: nothing more will arrive.
        case close
    }

    // Bits 31-30 are the kind; a data message has the slot in bits 15-0 and its flags in 18-16, a credit its count
    // in bits 15-0.
    private static let kindShift: UInt32 = 30
    private static let firstBit: UInt32 = 1 << 16
    private static let lastBit: UInt32 = 1 << 17
    private static let abortBit: UInt32 = 1 << 18

    public static func immediate(_ message: Message) -> UInt32 {
        switch message {
        case let .data(slot, first, last, abort):
            precondition((0..<RDMAConnectionInfo.maxSlotCount).contains(slot))
            return UInt32(slot) | (first ? firstBit : 0) | (last ? lastBit : 0) | (abort ? abortBit : 0)
        case let .credit(count):
            precondition((1..<RDMAConnectionInfo.maxSlotCount).contains(count))
            return (1 << kindShift) | UInt32(count)
        case .close:
            return 2 << kindShift
        }
    }

    /// Nil for an immediate no peer of this version sends.
    public static func message(_ immediate: UInt32) -> Message? {
        switch immediate >> kindShift {
        case 0:
            guard immediate & 0x3ff8_0000 == 0 else { return nil }  // bits 29-19 are reserved
            return .data(slot: Int(immediate & 0xffff), first: immediate & firstBit != 0, last: immediate & lastBit != 0,
                         abort: immediate & abortBit != 0)
        case 1:
            let count = Int(immediate & 0xffff)
            guard immediate & 0x3fff_0000 == 0, count > 0 else { return nil }
            return .credit(count: count)
        case 2:
            return immediate == 2 << kindShift ? .close : nil
        default:
            return nil
        }
    }

    static func writeHeader(tensorID: UInt64, payloadBytes: Int, into slot: UnsafeMutableRawPointer) {
        slot.storeBytes(of: tensorID.littleEndian, toByteOffset: 0, as: UInt64.self)
        slot.storeBytes(of: UInt32(payloadBytes).littleEndian, toByteOffset: 8, as: UInt32.self)
        slot.storeBytes(of: UInt32(0), toByteOffset: 12, as: UInt32.self)
    }

    static func readHeader(_ slot: UnsafeRawPointer) -> (tensorID: UInt64, payloadBytes: Int) {
        (UInt64(littleEndian: slot.loadUnaligned(fromByteOffset: 0, as: UInt64.self)),
         Int(UInt32(littleEndian: slot.loadUnaligned(fromByteOffset: 8, as: UInt32.self))))
    }
}

/// Sizes of a link's rings. Both ends must use the same.
public struct RDMARingParameters: Sendable, Equatable {
    /// Bytes per slot, header included.
    public var slotBytes: Int
    public var slotCount: Int

    /// 16 slots of 1 MiB: 16 MiB registered per direction and side, enough writes in flight to cover a 200 Gb/s
    /// link's bandwidth-delay product many times over on a direct cable.
    public static let standard = RDMARingParameters(slotBytes: 1 << 20, slotCount: 16)

    public init(slotBytes: Int, slotCount: Int) {
        self.slotBytes = slotBytes
        self.slotCount = slotCount
    }

    public var payloadBytesPerSlot: Int { slotBytes - RDMARing.headerBytes }
    public var ringBytes: Int { slotBytes * slotCount }
}
