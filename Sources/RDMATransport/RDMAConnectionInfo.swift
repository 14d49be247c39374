import Foundation

/// What one end of an RDMA activation link tells the other over the authenticated control connection before any
/// RDMA traffic: its queue pair, its address (GID, LID, port), and where the peer may write (the receive ring).
///
/// Encoded as 56 bytes, big-endian (Docs/wire-protocol.md, "RDMA activation links"):
///
///     0  magic "NVRD"            24 GID (16 bytes)
///     4  version (1)              40 ring address (8)
///     6  slot count (2)           48 ring rkey (4)
///     8  QP number (4)            52 slot size in bytes, header included (4)
///    12  initial PSN (4)
///    16  MTU code (4)
///    20  LID (2), 22 port (1), 23 flags (bit 0: address by GID)
public struct RDMAConnectionInfo: Sendable, Equatable {
    public static let magic: [UInt8] = Array("NVRD".utf8)
    public static let version: UInt16 = 1
    public static let encodedLength = 56
    /// The immediate carries the slot index in 16 bits.
    public static let maxSlotCount = 1 << 16
    /// A slot holds at least its header and one byte, and at most 64 MiB.
    public static let slotBytesRange = (RDMARing.headerBytes + 1)...(64 << 20)

    public var queuePairNumber: UInt32
    public var packetSequenceNumber: UInt32
    public var mtuCode: UInt32
    public var lid: UInt16
    public var port: UInt8
    public var addressByGID: Bool
    public var gid: VerbsGID
    public var ringAddress: UInt64
    public var ringKey: UInt32
    public var slotBytes: UInt32
    public var slotCount: UInt16

    public init(queuePairNumber: UInt32, packetSequenceNumber: UInt32, mtuCode: UInt32, lid: UInt16, port: UInt8,
                addressByGID: Bool, gid: VerbsGID, ringAddress: UInt64, ringKey: UInt32, slotBytes: UInt32, slotCount: UInt16) {
        self.queuePairNumber = queuePairNumber
        self.packetSequenceNumber = packetSequenceNumber
        self.mtuCode = mtuCode
        self.lid = lid
        self.port = port
        self.addressByGID = addressByGID
        self.gid = gid
        self.ringAddress = ringAddress
        self.ringKey = ringKey
        self.slotBytes = slotBytes
        self.slotCount = slotCount
    }

    public func encoded() -> [UInt8] {
        var bytes = Self.magic
        func append<T: FixedWidthInteger>(_ value: T) { withUnsafeBytes(of: value.bigEndian) { bytes.append(contentsOf: $0) } }
        append(Self.version)
        append(slotCount)
        append(queuePairNumber)
        append(packetSequenceNumber)
        append(mtuCode)
        append(lid)
        append(port)
        append(UInt8(addressByGID ? 1 : 0))
        bytes.append(contentsOf: gid.bytes)
        append(ringAddress)
        append(ringKey)
        append(slotBytes)
        return bytes
    }

    /// Decodes and validates what a peer sent; `peer` names it in the error.
    public static func decode(_ bytes: [UInt8], peer: String) throws(RDMAConnectionInfoError) -> RDMAConnectionInfo {
        guard bytes.count == encodedLength else {
            throw .malformed(peer: peer, reason: "\(bytes.count) bytes, expected \(encodedLength)")
        }
        guard Array(bytes[0..<4]) == magic else { throw .malformed(peer: peer, reason: "bad magic") }
        func read<T: FixedWidthInteger>(_ offset: Int, as: T.Type) -> T {
            bytes[offset..<(offset + MemoryLayout<T>.size)].reduce(T.zero) { ($0 << 8) | T($1) }
        }
        let version = read(4, as: UInt16.self)
        guard version == Self.version else { throw .unsupportedVersion(peer: peer, version: version) }
        let info = RDMAConnectionInfo(
            queuePairNumber: read(8, as: UInt32.self), packetSequenceNumber: read(12, as: UInt32.self),
            mtuCode: read(16, as: UInt32.self), lid: read(20, as: UInt16.self), port: bytes[22],
            addressByGID: bytes[23] & 1 != 0, gid: VerbsGID(bytes: Array(bytes[24..<40]))!,
            ringAddress: read(40, as: UInt64.self), ringKey: read(48, as: UInt32.self), slotBytes: read(52, as: UInt32.self),
            slotCount: read(6, as: UInt16.self))
        guard bytes[23] & ~1 == 0 else { throw .malformed(peer: peer, reason: "unknown flags \(bytes[23])") }
        guard info.queuePairNumber <= 0xff_ffff, info.queuePairNumber != 0 else {
            throw .malformed(peer: peer, reason: "QP number \(info.queuePairNumber) is not a 24-bit non-zero number")
        }
        guard info.packetSequenceNumber <= 0xff_ffff else {
            throw .malformed(peer: peer, reason: "PSN \(info.packetSequenceNumber) exceeds 24 bits")
        }
        guard (1...5).contains(info.mtuCode) else { throw .malformed(peer: peer, reason: "MTU code \(info.mtuCode) is not 1...5") }
        guard info.port > 0 else { throw .malformed(peer: peer, reason: "port 0") }
        guard !info.addressByGID || !info.gid.isZero else { throw .malformed(peer: peer, reason: "addressed by GID but the GID is zero") }
        guard info.slotCount > 0 else { throw .malformed(peer: peer, reason: "a ring of 0 slots") }
        guard slotBytesRange.contains(Int(info.slotBytes)) else {
            throw .malformed(peer: peer, reason: "slot size \(info.slotBytes) outside \(slotBytesRange)")
        }
        guard info.ringAddress != 0,
              info.ringAddress.addingReportingOverflow(UInt64(info.slotBytes) * UInt64(info.slotCount)).overflow == false else {
            throw .malformed(peer: peer, reason: "ring address \(info.ringAddress) cannot hold the ring")
        }
        return info
    }
}

/// Connection information from a peer that cannot be used.
public enum RDMAConnectionInfoError: Error, CustomStringConvertible, Equatable, Sendable {
    case malformed(peer: String, reason: String)
    case unsupportedVersion(peer: String, version: UInt16)

    public var description: String {
        switch self {
        case let .malformed(peer, reason): return "RDMA connection information from \(peer) is malformed: \(reason)"
        case let .unsupportedVersion(peer, version):
            return "RDMA connection information from \(peer) has version \(version); this build speaks \(RDMAConnectionInfo.version)"
        }
    }
}
