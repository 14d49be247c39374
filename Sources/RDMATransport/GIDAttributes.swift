import Foundation

/// A GID's type. RoCE v2 (routable, over UDP) is what two nodes joined by Ethernet use.
public enum VerbsGIDType: String, Sendable, Equatable {
    case infiniBand = "IB"
    case roceV1 = "RoCE v1"
    case roceV2 = "RoCE v2"
}

/// What the kernel says of a GID table entry beyond its bytes: its type and the network interface it belongs to.
public protocol GIDAttributeSource: Sendable {
    /// Nil when the type cannot be determined (no sysfs entry, or an unknown text).
    func type(device: String, port: Int, index: Int, linkLayer: VerbsLinkLayer?) -> VerbsGIDType?
    /// The network interface (e.g. `enp1s0f0np0`) of a RoCE GID; nil when none or unknown.
    func networkInterface(device: String, port: Int, index: Int) -> String?
}

/// Reads `<root>/<device>/ports/<port>/gid_attrs/{types,ndevs}/<index>`, which the kernel's RDMA core publishes for
/// every populated GID entry (reading an empty entry fails, which reads here as unknown).
public struct SysfsGIDAttributes: GIDAttributeSource {
    public static let defaultRoot = URL(fileURLWithPath: "/sys/class/infiniband")
    public let root: URL

    public init(root: URL = SysfsGIDAttributes.defaultRoot) {
        self.root = root
    }

    public func type(device: String, port: Int, index: Int, linkLayer: VerbsLinkLayer?) -> VerbsGIDType? {
        guard let text = read(device: device, port: port, kind: "types", index: index) else { return nil }
        return Self.parseType(text, linkLayer: linkLayer)
    }

    public func networkInterface(device: String, port: Int, index: Int) -> String? {
        read(device: device, port: port, kind: "ndevs", index: index)
    }

    /// The kernel writes `RoCE v2`, or `IB/RoCE v1`: the latter is InfiniBand on an InfiniBand port, RoCE v1 on Ethernet.
    static func parseType(_ text: String, linkLayer: VerbsLinkLayer?) -> VerbsGIDType? {
        let lowered = text.lowercased()
        if lowered.contains("roce v2") { return .roceV2 }
        guard lowered.contains("ib/roce v1") || lowered.contains("roce v1") else { return nil }
        return linkLayer == .ethernet ? .roceV1 : .infiniBand
    }

    func read(device: String, port: Int, kind: String, index: Int) -> String? {
        let url = root.appendingPathComponent(device).appendingPathComponent("ports").appendingPathComponent(String(port))
            .appendingPathComponent("gid_attrs").appendingPathComponent(kind).appendingPathComponent(String(index))
        guard let text = try? String(contentsOf: url, encoding: .utf8) else { return nil }
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        return trimmed.isEmpty ? nil : trimmed
    }
}
