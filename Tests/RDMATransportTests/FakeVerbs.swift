import Foundation
@testable import RDMATransport

/// A verbs provider made of plain values: devices with ports and GID tables, and errors where asked.
struct FakeVerbsProvider: VerbsProvider {
    struct Device: Sendable {
        var entry: VerbsDeviceEntry
        var attributes: VerbsDeviceAttributes
        var ports: [Int: VerbsPortAttributes]
        /// Port → GID index → GID; an index absent from the table reads as empty.
        var gids: [Int: [Int: VerbsGID]] = [:]
        /// Port → GID indices whose query fails (as some kernels answer for unpopulated RoCE entries).
        var failingGIDs: [Int: Set<Int>] = [:]
        var openError: VerbsError?
        var portErrors: [Int: VerbsError] = [:]
    }

    var origin = "fake"
    var devicesList: [Device]
    var listError: VerbsError?

    func devices() throws(VerbsError) -> [VerbsDeviceEntry] {
        if let listError { throw listError }
        return devicesList.map(\.entry)
    }

    func openDevice(named name: String) throws(VerbsError) -> any VerbsDeviceHandle {
        guard let device = devicesList.first(where: { $0.entry.name == name }) else {
            throw VerbsError.deviceNotFound(name: name, available: devicesList.map(\.entry.name))
        }
        if let error = device.openError { throw error }
        return Handle(device: device)
    }

    struct Handle: VerbsDeviceHandle {
        let device: Device
        var name: String { device.entry.name }
        func attributes() throws(VerbsError) -> VerbsDeviceAttributes { device.attributes }
        func port(_ number: Int) throws(VerbsError) -> VerbsPortAttributes {
            if let error = device.portErrors[number] { throw error }
            guard let port = device.ports[number] else {
                throw VerbsError.callFailed(call: "ibv_query_port", device: name, port: number, code: EINVAL)
            }
            return port
        }
        func gid(port: Int, index: Int) throws(VerbsError) -> VerbsGID? {
            if device.failingGIDs[port]?.contains(index) == true {
                throw VerbsError.callFailed(call: "ibv_query_gid index \(index)", device: name, port: port, code: EINVAL)
            }
            return device.gids[port]?[index]
        }
    }
}

/// GID types and interfaces from a dictionary keyed by "device/port/index".
struct FakeGIDAttributes: GIDAttributeSource {
    var types: [String: VerbsGIDType] = [:]
    var interfaces: [String: String] = [:]
    func type(device: String, port: Int, index: Int, linkLayer: VerbsLinkLayer?) -> VerbsGIDType? { types["\(device)/\(port)/\(index)"] }
    func networkInterface(device: String, port: Int, index: Int) -> String? { interfaces["\(device)/\(port)/\(index)"] }
}

enum FakeNode {
    static func gid(_ text: String) -> VerbsGID {
        let groups = text.split(separator: ":").map { UInt16($0, radix: 16)! }
        precondition(groups.count == 8)
        return VerbsGID(bytes: groups.flatMap { [UInt8($0 >> 8), UInt8($0 & 0xff)] })!
    }

    static let linkLocal = gid("fe80:0000:0000:0000:5a81:d8ff:fe12:3456")
    static let ipv4Mapped = gid("0000:0000:0000:0000:0000:ffff:c0a8:6401")  // 192.168.100.1

    static func attributes(ports: Int) -> VerbsDeviceAttributes {
        VerbsDeviceAttributes(firmwareVersion: "28.41.1000", vendorID: 0x02c9, vendorPartID: 4129, physicalPortCount: ports,
                              maxQueuePairs: 131072, maxQueuePairWorkRequests: 32768, maxCompletionQueueEntries: 4194303,
                              maxMemoryRegionBytes: UInt64.max)
    }

    /// An ACTIVE 200 Gb/s RoCE port (4 lanes of 50 Gb/s, MTU 4096) with a GID table of `tableLength`.
    static func roCEPort(state: VerbsPortState = .active, tableLength: Int = 8) -> VerbsPortAttributes {
        VerbsPortAttributes(stateCode: state.rawValue, maxMTUCode: 5, activeMTUCode: 5, gidTableLength: tableLength,
                            linkLayerCode: VerbsLinkLayer.ethernet.rawValue, activeWidthCode: 2, activeSpeedCode: 64,
                            physicalStateCode: state == .active ? 5 : 3)
    }

    /// A ConnectX-like device `mlx5_0` with one RoCE port whose GIDs 0..3 are the usual four: link-local and
    /// IPv4-mapped, each as RoCE v1 and v2. Entry 5 fails to read, the rest are empty.
    static func connectX(name: String = "mlx5_0", state: VerbsPortState = .active) -> (FakeVerbsProvider.Device, FakeGIDAttributes) {
        let device = FakeVerbsProvider.Device(
            entry: VerbsDeviceEntry(name: name, nodeGUID: 0x5a81_d8ff_fe12_3456), attributes: attributes(ports: 1),
            ports: [1: roCEPort(state: state)],
            gids: [1: [0: linkLocal, 1: linkLocal, 2: ipv4Mapped, 3: ipv4Mapped]], failingGIDs: [1: [5]])
        let gidAttributes = FakeGIDAttributes(
            types: ["\(name)/1/0": .roceV1, "\(name)/1/1": .roceV2, "\(name)/1/2": .roceV1, "\(name)/1/3": .roceV2],
            interfaces: ["\(name)/1/0": "enp1s0f0np0", "\(name)/1/1": "enp1s0f0np0", "\(name)/1/2": "enp1s0f0np0",
                         "\(name)/1/3": "enp1s0f0np0"])
        return (device, gidAttributes)
    }
}
