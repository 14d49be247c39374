import Foundation

/// The narrow verbs interface that everything above the shim uses: list devices and open one. ``VerbsLibrary``
/// implements it over libibverbs; tests implement it with fakes.
public protocol VerbsProvider: Sendable {
    /// Where the provider came from (the library file, or a fake's name), for reports.
    var origin: String { get }
    func devices() throws(VerbsError) -> [VerbsDeviceEntry]
    func openDevice(named name: String) throws(VerbsError) -> any VerbsDeviceHandle
}

/// An opened device: its attributes, its ports and their GID tables. Ports are numbered from 1, as verbs does.
public protocol VerbsDeviceHandle: Sendable {
    var name: String { get }
    func attributes() throws(VerbsError) -> VerbsDeviceAttributes
    func port(_ number: Int) throws(VerbsError) -> VerbsPortAttributes
    /// GID table entry `index` of `port`; nil for an empty (all-zero) entry.
    func gid(port: Int, index: Int) throws(VerbsError) -> VerbsGID?
}

/// One entry of the device list.
public struct VerbsDeviceEntry: Sendable, Equatable {
    public let name: String
    public let nodeGUID: UInt64

    public init(name: String, nodeGUID: UInt64) {
        self.name = name
        self.nodeGUID = nodeGUID
    }

    /// The GUID as verbs tools print it: four groups of four hex digits.
    public var nodeGUIDText: String { guidText(nodeGUID) }
}

public struct VerbsDeviceAttributes: Sendable, Equatable {
    public var firmwareVersion: String
    public var vendorID: UInt32
    public var vendorPartID: UInt32
    public var physicalPortCount: Int
    public var maxQueuePairs: Int
    public var maxQueuePairWorkRequests: Int
    public var maxCompletionQueueEntries: Int
    public var maxMemoryRegionBytes: UInt64

    public init(firmwareVersion: String, vendorID: UInt32, vendorPartID: UInt32, physicalPortCount: Int, maxQueuePairs: Int,
                maxQueuePairWorkRequests: Int, maxCompletionQueueEntries: Int, maxMemoryRegionBytes: UInt64) {
        self.firmwareVersion = firmwareVersion
        self.vendorID = vendorID
        self.vendorPartID = vendorPartID
        self.physicalPortCount = physicalPortCount
        self.maxQueuePairs = maxQueuePairs
        self.maxQueuePairWorkRequests = maxQueuePairWorkRequests
        self.maxCompletionQueueEntries = maxCompletionQueueEntries
        self.maxMemoryRegionBytes = maxMemoryRegionBytes
    }
}

/// A port's state (enum ibv_port_state).
public enum VerbsPortState: UInt32, Sendable, CustomStringConvertible {
    case nop = 0, down = 1, initializing = 2, armed = 3, active = 4, activeDefer = 5

    public var description: String {
        switch self {
        case .nop: return "NOP"
        case .down: return "DOWN"
        case .initializing: return "INIT"
        case .armed: return "ARMED"
        case .active: return "ACTIVE"
        case .activeDefer: return "ACTIVE_DEFER"
        }
    }
}

/// What the port runs on: RoCE ports are Ethernet.
public enum VerbsLinkLayer: UInt8, Sendable, CustomStringConvertible {
    /// Old providers leave it unspecified for InfiniBand.
    case unspecified = 0, infiniBand = 1, ethernet = 2

    public var description: String {
        switch self {
        case .unspecified: return "unspecified"
        case .infiniBand: return "InfiniBand"
        case .ethernet: return "Ethernet"
        }
    }
}

/// ibv_port_attr, decoded: raw codes that verbs defines are turned into states, bytes and Gb/s here.
public struct VerbsPortAttributes: Sendable, Equatable {
    /// The raw enum ibv_port_state; ``state`` is nil for a value this code does not know.
    public var stateCode: UInt32
    /// enum ibv_mtu codes (1 = 256 bytes … 5 = 4096 bytes).
    public var maxMTUCode: UInt32
    public var activeMTUCode: UInt32
    public var gidTableLength: Int
    public var linkLayerCode: UInt8
    /// IBV_WIDTH bit code (1: 1x, 2: 4x, 4: 8x, 8: 12x, 16: 2x).
    public var activeWidthCode: UInt8
    /// IBV_SPEED bit code (1: 2.5 Gb/s per lane … 128: 100 Gb/s per lane).
    public var activeSpeedCode: UInt8
    public var physicalStateCode: UInt8

    public init(stateCode: UInt32, maxMTUCode: UInt32, activeMTUCode: UInt32, gidTableLength: Int, linkLayerCode: UInt8,
                activeWidthCode: UInt8, activeSpeedCode: UInt8, physicalStateCode: UInt8) {
        self.stateCode = stateCode
        self.maxMTUCode = maxMTUCode
        self.activeMTUCode = activeMTUCode
        self.gidTableLength = gidTableLength
        self.linkLayerCode = linkLayerCode
        self.activeWidthCode = activeWidthCode
        self.activeSpeedCode = activeSpeedCode
        self.physicalStateCode = physicalStateCode
    }

    public var state: VerbsPortState? { VerbsPortState(rawValue: stateCode) }
    public var isActive: Bool { state == .active }
    public var linkLayer: VerbsLinkLayer? { VerbsLinkLayer(rawValue: linkLayerCode) }
    public var activeMTUBytes: Int? { Self.mtuBytes(activeMTUCode) }
    public var maxMTUBytes: Int? { Self.mtuBytes(maxMTUCode) }

    /// Lanes of the active width.
    public var activeLanes: Int? {
        switch activeWidthCode {
        case 1: return 1
        case 2: return 4
        case 4: return 8
        case 8: return 12
        case 16: return 2
        default: return nil
        }
    }

    /// Signalling rate of one lane in Gb/s.
    public var laneGigabitsPerSecond: Double? {
        switch activeSpeedCode {
        case 1: return 2.5
        case 2: return 5
        case 4, 8: return 10  // QDR, and FDR10 (10 Gb/s lanes with FDR's encoding)
        case 16: return 14
        case 32: return 25
        case 64: return 50
        case 128: return 100
        default: return nil
        }
    }

    /// The port's line rate (lanes × lane rate), nil when either code is unknown or the link is down.
    public var lineRateGigabitsPerSecond: Double? {
        guard let lanes = activeLanes, let lane = laneGigabitsPerSecond else { return nil }
        return Double(lanes) * lane
    }

    /// The physical state's name (the link's training state, under the logical ``state``).
    public var physicalStateName: String {
        switch physicalStateCode {
        case 1: return "SLEEP"
        case 2: return "POLLING"
        case 3: return "DISABLED"
        case 4: return "PORT_CONFIGURATION_TRAINING"
        case 5: return "LINK_UP"
        case 6: return "LINK_ERROR_RECOVERY"
        case 7: return "PHY_TEST"
        default: return "unknown (\(physicalStateCode))"
        }
    }

    static func mtuBytes(_ code: UInt32) -> Int? {
        (1...5).contains(code) ? 128 << Int(code) : nil
    }
}

/// A GID table entry's 16 bytes (network order).
public struct VerbsGID: Sendable, Equatable, CustomStringConvertible {
    public let bytes: [UInt8]

    /// Nil unless exactly 16 bytes.
    public init?(bytes: [UInt8]) {
        guard bytes.count == 16 else { return nil }
        self.bytes = bytes
    }

    public var isZero: Bool { bytes.allSatisfy { $0 == 0 } }

    /// The IPv4 address of an IPv4-mapped GID (::ffff:a.b.c.d), which RoCE v2 uses for an interface's IPv4 address.
    public var ipv4Address: String? {
        guard bytes[0..<10].allSatisfy({ $0 == 0 }), bytes[10] == 0xff, bytes[11] == 0xff else { return nil }
        return bytes[12..<16].map(String.init).joined(separator: ".")
    }

    /// Eight groups of four hex digits, as the kernel writes GIDs in sysfs.
    public var description: String {
        stride(from: 0, to: 16, by: 2).map { String(format: "%02x%02x", bytes[$0], bytes[$0 + 1]) }.joined(separator: ":")
    }
}

func guidText(_ guid: UInt64) -> String {
    stride(from: 48, through: 0, by: -16).map { String(format: "%04x", (guid >> UInt64($0)) & 0xffff) }.joined(separator: ":")
}
