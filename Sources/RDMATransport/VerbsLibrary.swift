import CVerbs
import Foundation

/// Where libibverbs is looked for. The environment is injectable for tests.
public struct VerbsLibraryLocator: Sendable {
    /// Names an exact file to open instead of searching (also how the tests hide the library).
    public static let overrideVariable = "NVFP4_LIBIBVERBS"
    /// The runtime library's soname, resolved by the dynamic linker (`LD_LIBRARY_PATH`, the linker cache).
    public static let defaultNames = ["libibverbs.so.1"]

    /// False when this build was compiled without infiniband/verbs.h: then no libibverbs can be used here.
    public static var buildHasVerbsHeaders: Bool { cverbs_built_with_headers() != 0 }

    public var environment: [String: String]

    public init(environment: [String: String] = ProcessInfo.processInfo.environment) {
        self.environment = environment
    }

    /// The override alone when it is set, otherwise the soname.
    public var candidates: [String] {
        if let path = environment[Self.overrideVariable], !path.isEmpty { return [path] }
        return Self.defaultNames
    }

    /// Opens the first candidate that loads and has every entry point the shim needs.
    public func open() throws(VerbsError) -> VerbsLibrary {
        var tried: [String] = []
        for candidate in candidates {
            var library: OpaquePointer?
            var message = [CChar](repeating: 0, count: 512)
            let status = cverbs_library_open(candidate, &library, &message, message.count)
            let text = String(decoding: message.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            switch status {
            case 0:
                if let library { return VerbsLibrary(path: candidate, library: library) }
            case Int32(CVERBS_SYMBOL_NOT_FOUND):
                throw VerbsError.symbolNotFound(library: candidate, symbol: text)
            case Int32(CVERBS_BUILT_WITHOUT_HEADERS):
                throw VerbsError.builtWithoutVerbsHeaders
            default:
                tried.append("\(candidate) (\(text))")
            }
        }
        if environment[Self.overrideVariable] == nil {
            tried.append("install libibverbs1 (Debian/Ubuntu: apt-get install libibverbs1 ibverbs-providers), or set \(Self.overrideVariable) to its path")
        }
        throw VerbsError.libraryNotFound(tried: tried)
    }
}

/// libibverbs, opened through the shim. Closed when the last reference (including every opened device) goes away.
// @unchecked: holds the shim's library handle, immutable after init; libibverbs' calls used here are thread-safe.
public final class VerbsLibrary: VerbsProvider, @unchecked Sendable {
    /// The name or path that `dlopen` accepted.
    public let path: String
    let library: OpaquePointer

    init(path: String, library: OpaquePointer) {
        self.path = path
        self.library = library
    }

    deinit { cverbs_library_close(library) }

    public var origin: String { path }

    public func devices() throws(VerbsError) -> [VerbsDeviceEntry] {
        var capacity = 16
        while true {
            var entries = [cverbs_device_entry](repeating: cverbs_device_entry(), count: capacity)
            var count: Int32 = 0
            let status = cverbs_list_devices(library, &entries, Int32(capacity), &count)
            guard status == 0 else { throw VerbsError.deviceListFailed(code: status) }
            // More devices than room: ask again with enough (the list may change between the calls).
            if Int(count) > capacity {
                capacity = Int(count)
                continue
            }
            return entries.prefix(Int(count)).map { entry in
                VerbsDeviceEntry(name: withUnsafeBytes(of: entry.name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) },
                                 nodeGUID: entry.node_guid)
            }
        }
    }

    public func openDevice(named name: String) throws(VerbsError) -> any VerbsDeviceHandle {
        try open(device: name)
    }

    /// Opens the device called `name`.
    public func open(device name: String) throws(VerbsError) -> VerbsDevice {
        var context: OpaquePointer?
        let status = cverbs_context_open(library, name, &context)
        if status == Int32(CVERBS_DEVICE_NOT_FOUND) {
            throw VerbsError.deviceNotFound(name: name, available: (try? devices().map(\.name)) ?? [])
        }
        guard status == 0, let context else {
            throw VerbsError.callFailed(call: "ibv_open_device", device: name, port: nil, code: status)
        }
        return VerbsDevice(name: name, library: self, context: context)
    }
}

/// An opened RDMA device (a verbs context).
// @unchecked: the context pointer is immutable after init; the queries used are thread-safe in libibverbs.
public final class VerbsDevice: VerbsDeviceHandle, @unchecked Sendable {
    public let name: String
    /// Kept so the library stays open while the device is.
    let library: VerbsLibrary
    let context: OpaquePointer

    init(name: String, library: VerbsLibrary, context: OpaquePointer) {
        self.name = name
        self.library = library
        self.context = context
    }

    deinit { cverbs_context_close(context) }

    public func attributes() throws(VerbsError) -> VerbsDeviceAttributes {
        var raw = cverbs_device_attributes()
        let status = cverbs_query_device(context, &raw)
        guard status == 0 else { throw VerbsError.callFailed(call: "ibv_query_device", device: name, port: nil, code: status) }
        return VerbsDeviceAttributes(
            firmwareVersion: withUnsafeBytes(of: raw.firmware_version) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) },
            vendorID: raw.vendor_id, vendorPartID: raw.vendor_part_id, physicalPortCount: Int(raw.physical_port_count),
            maxQueuePairs: Int(raw.max_qp), maxQueuePairWorkRequests: Int(raw.max_qp_wr),
            maxCompletionQueueEntries: Int(raw.max_cqe), maxMemoryRegionBytes: raw.max_mr_size)
    }

    public func port(_ number: Int) throws(VerbsError) -> VerbsPortAttributes {
        guard let port = UInt8(exactly: number), port > 0 else {
            throw VerbsError.callFailed(call: "ibv_query_port", device: name, port: number, code: EINVAL)
        }
        var raw = cverbs_port_attributes()
        let status = cverbs_query_port(context, port, &raw)
        guard status == 0 else { throw VerbsError.callFailed(call: "ibv_query_port", device: name, port: number, code: status) }
        return VerbsPortAttributes(stateCode: raw.state, maxMTUCode: raw.max_mtu, activeMTUCode: raw.active_mtu,
                                   gidTableLength: Int(raw.gid_table_length), linkLayerCode: raw.link_layer,
                                   activeWidthCode: raw.active_width, activeSpeedCode: raw.active_speed,
                                   physicalStateCode: raw.physical_state)
    }

    public func gid(port: Int, index: Int) throws(VerbsError) -> VerbsGID? {
        guard let portNumber = UInt8(exactly: port), portNumber > 0, let gidIndex = Int32(exactly: index), gidIndex >= 0 else {
            throw VerbsError.callFailed(call: "ibv_query_gid", device: name, port: port, code: EINVAL)
        }
        var bytes = [UInt8](repeating: 0, count: 16)
        let status = cverbs_query_gid(context, portNumber, gidIndex, &bytes)
        guard status == 0 else { throw VerbsError.callFailed(call: "ibv_query_gid index \(index)", device: name, port: port, code: status) }
        let gid = VerbsGID(bytes: bytes)!
        return gid.isZero ? nil : gid
    }
}
