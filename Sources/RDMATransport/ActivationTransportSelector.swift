import Foundation
import Logging

/// `--transport`: how hidden states travel to the next worker.
public enum ActivationTransportPreference: String, CaseIterable, Sendable {
    /// RDMA when this node has a usable port, TCP otherwise, logging why.
    case auto
    case tcp
    /// RDMA or nothing: the start fails, naming what is missing.
    case rdma
}

/// The transport a link will use.
public enum ActivationTransportKind: String, Sendable, Equatable {
    case tcp
    case rdma
}

/// A port and GID that RDMA could use: an active port and, on Ethernet, a RoCE v2 GID.
public struct RDMAEndpoint: Sendable, Equatable, CustomStringConvertible {
    public let device: String
    public let port: Int
    public let gidIndex: Int
    public let gid: VerbsGID
    public let gidType: VerbsGIDType?
    public let activeMTUBytes: Int?
    public let linkLayer: VerbsLinkLayer?

    public var description: String {
        "\(device) port \(port) GID \(gidIndex) (\(gid)" + (gidType.map { ", \($0.rawValue)" } ?? "") + ")"
    }
}

/// Why RDMA cannot be used, naming the device, port or GID that is missing.
public enum RDMASelectionError: Error, CustomStringConvertible, Equatable, Sendable {
    /// The survey found no device at all; `reason` says whether the library, the kernel or the hardware is missing.
    case unavailable(reason: String)
    case deviceNotFound(name: String, available: [String])
    /// `--rdma-device` named the same device twice (one queue pair per device and port).
    case deviceRepeated(name: String)
    case deviceUnreadable(device: String, reason: String)
    /// No port of `device` (or of any device, when nil) is ACTIVE; `ports` gives each port's state.
    case noActivePort(device: String?, ports: [String])
    case gidIndexOutOfRange(device: String, port: Int, index: Int, tableLength: Int)
    case gidIndexEmpty(device: String, port: Int, index: Int)
    /// The GID at `index` is not RoCE v2 on an Ethernet port (it may not route between the nodes).
    case gidNotRoCEv2(device: String, port: Int, index: Int, type: String)
    /// An Ethernet port with no RoCE v2 GID: the interface has no IP address, or RoCE v2 is off.
    case noRoCEv2GID(device: String, port: Int)
    /// The chosen device was found by the survey but offers no data plane (it could not be opened for queue pairs).
    case noDataPlane(device: String, reason: String)

    public var description: String {
        switch self {
        case let .unavailable(reason):
            return "RDMA is unavailable: \(reason)"
        case let .deviceRepeated(name):
            return "--rdma-device \(name) is given twice; name each device (port half) once"
        case let .deviceNotFound(name, available):
            return "--rdma-device \(name): no such RDMA device; "
                + (available.isEmpty ? "this node has none" : "this node has \(available.joined(separator: ", "))")
        case let .deviceUnreadable(device, reason):
            return "RDMA device \(device) cannot be read: \(reason)"
        case let .noActivePort(device, ports):
            return (device.map { "RDMA device \($0) has no ACTIVE port" } ?? "no RDMA device has an ACTIVE port")
                + (ports.isEmpty ? "" : " (" + ports.joined(separator: ", ") + ")")
                + "; check the cable and the link (`coordctl doctor rdma`)"
        case let .gidIndexOutOfRange(device, port, index, tableLength):
            return "--rdma-gid-index \(index): \(device) port \(port) has a GID table of \(tableLength) entries (0..<\(tableLength))"
        case let .gidIndexEmpty(device, port, index):
            return "--rdma-gid-index \(index): GID \(index) of \(device) port \(port) is empty; `coordctl doctor rdma` lists the populated ones"
        case let .gidNotRoCEv2(device, port, index, type):
            return "--rdma-gid-index \(index): GID \(index) of \(device) port \(port) is \(type), not RoCE v2; pick a RoCE v2 GID (`coordctl doctor rdma` marks them)"
        case let .noRoCEv2GID(device, port):
            return "\(device) port \(port) is Ethernet but has no RoCE v2 GID: give its network interface an IP address"
        case let .noDataPlane(device, reason):
            return "RDMA device \(device) cannot carry data: \(reason)"
        }
    }
}

/// What a link will use and why.
public struct ActivationTransportDecision: Sendable, Equatable {
    public let transport: ActivationTransportKind
    public let reason: String
    /// The ports and GIDs RDMA links open on, one queue pair each (a link stripes over them); empty for TCP.
    public let endpoints: [RDMAEndpoint]
    /// The first of ``endpoints``.
    public var endpoint: RDMAEndpoint? { endpoints.first }

    public init(transport: ActivationTransportKind, reason: String, endpoint: RDMAEndpoint? = nil) {
        self.init(transport: transport, reason: reason, endpoints: endpoint.map { [$0] } ?? [])
    }

    public init(transport: ActivationTransportKind, reason: String, endpoints: [RDMAEndpoint]) {
        self.transport = transport
        self.reason = reason
        self.endpoints = endpoints
    }
}

/// Resolves `--transport`, `--rdma-device` and `--rdma-gid-index` against what the node has.
public enum ActivationTransportSelector {
    /// `survey` is taken only when RDMA is asked for or possible (not for `tcp`). Throws for `rdma` when RDMA cannot be
    /// used; `auto` never throws and says in the decision's reason why it chose TCP.
    public static func decide(preference: ActivationTransportPreference, device: String?, gidIndex: Int?,
                              survey: () -> RDMASurvey) throws(RDMASelectionError) -> ActivationTransportDecision {
        switch preference {
        case .tcp:
            return ActivationTransportDecision(transport: .tcp, reason: "--transport tcp")
        case .rdma:
            let endpoint = try usableEndpoint(in: survey(), device: device, gidIndex: gidIndex)
            return ActivationTransportDecision(transport: .rdma, reason: "--transport rdma: \(endpoint)", endpoint: endpoint)
        case .auto:
            do throws(RDMASelectionError) {
                let endpoint = try usableEndpoint(in: survey(), device: device, gidIndex: gidIndex)
                // Each link still offers RDMA to its peer and stays on TCP where the peer refuses.
                return ActivationTransportDecision(transport: .rdma, reason: "\(endpoint) is usable", endpoint: endpoint)
            } catch {
                return ActivationTransportDecision(transport: .tcp, reason: error.description)
            }
        }
    }

    /// ``decide(preference:device:gidIndex:survey:)`` for `--rdma-device` given more than once: every named device
    /// must be usable (with the same `gidIndex`, when given), and links stripe over one queue pair on each, in the
    /// order given. A device named twice is refused.
    public static func decide(preference: ActivationTransportPreference, devices: [String], gidIndex: Int?,
                              survey: () -> RDMASurvey) throws(RDMASelectionError) -> ActivationTransportDecision {
        guard devices.count > 1, preference != .tcp else {
            return try decide(preference: preference, device: devices.first, gidIndex: gidIndex, survey: survey)
        }
        do throws(RDMASelectionError) {
            if let repeated = devices.first(where: { name in devices.filter { $0 == name }.count > 1 }) {
                throw RDMASelectionError.deviceRepeated(name: repeated)
            }
            let taken = survey()
            var endpoints: [RDMAEndpoint] = []
            for device in devices {
                endpoints.append(try usableEndpoint(in: taken, device: device, gidIndex: gidIndex))
            }
            let lanes = endpoints.map(\.description).joined(separator: " + ")
            return ActivationTransportDecision(transport: .rdma, reason: preference == .rdma ? "--transport rdma: \(lanes)" : "\(lanes) are usable",
                                               endpoints: endpoints)
        } catch {
            if preference == .rdma { throw error }
            return ActivationTransportDecision(transport: .tcp, reason: error.description)
        }
    }

    /// Logs the decision as one line, with the reason.
    public static func log(_ decision: ActivationTransportDecision, preference: ActivationTransportPreference, logger: Logger) {
        logger.info("activation transport: \(decision.transport.rawValue)",
                    metadata: ["transport": "\(preference.rawValue)", "reason": "\(decision.reason)"])
    }

    /// The port and GID RDMA would use: `device` (else the first device with an active port), its first ACTIVE port,
    /// and `gidIndex` (else the first RoCE v2 GID on Ethernet, preferring an IPv4-mapped one, or GID 0 on InfiniBand).
    public static func usableEndpoint(in survey: RDMASurvey, device: String?, gidIndex: Int?) throws(RDMASelectionError) -> RDMAEndpoint {
        guard case let .devices(_, devices) = survey.outcome else {
            throw RDMASelectionError.unavailable(reason: survey.absenceReason ?? "no RDMA device")
        }
        let candidates: [RDMASurvey.Device]
        if let device {
            guard let named = devices.first(where: { $0.entry.name == device }) else {
                throw RDMASelectionError.deviceNotFound(name: device, available: devices.map(\.entry.name))
            }
            if let error = named.error { throw RDMASelectionError.deviceUnreadable(device: device, reason: error.description) }
            candidates = [named]
        } else {
            candidates = devices.filter { $0.error == nil }
        }
        for candidate in candidates {
            guard let port = candidate.ports.first(where: { $0.attributes?.isActive == true }),
                  let attributes = port.attributes else { continue }
            let gid = try chooseGID(device: candidate.entry.name, port: port, attributes: attributes, gidIndex: gidIndex)
            return RDMAEndpoint(device: candidate.entry.name, port: port.number, gidIndex: gid.index, gid: gid.gid,
                                gidType: gid.type, activeMTUBytes: attributes.activeMTUBytes, linkLayer: attributes.linkLayer)
        }
        let states = candidates.flatMap { device in
            device.ports.map { port in
                "\(device.entry.name) port \(port.number) " + (port.attributes?.state.map(String.init(describing:)) ?? "unreadable")
            }
        }
        throw RDMASelectionError.noActivePort(device: device, ports: states)
    }

    static func chooseGID(device: String, port: RDMASurvey.Port, attributes: VerbsPortAttributes,
                          gidIndex: Int?) throws(RDMASelectionError) -> RDMASurvey.GIDEntry {
        let ethernet = attributes.linkLayer == .ethernet
        if let gidIndex {
            guard (0..<attributes.gidTableLength).contains(gidIndex) else {
                throw RDMASelectionError.gidIndexOutOfRange(device: device, port: port.number, index: gidIndex,
                                                            tableLength: attributes.gidTableLength)
            }
            guard let entry = port.gids.first(where: { $0.index == gidIndex }) else {
                throw RDMASelectionError.gidIndexEmpty(device: device, port: port.number, index: gidIndex)
            }
            // An unknown type is allowed: where sysfs cannot say, the user's explicit index is trusted.
            if ethernet, let type = entry.type, type != .roceV2 {
                throw RDMASelectionError.gidNotRoCEv2(device: device, port: port.number, index: gidIndex, type: type.rawValue)
            }
            return entry
        }
        if ethernet {
            let roceV2 = port.gids.filter { $0.type == .roceV2 }
            guard let chosen = roceV2.first(where: { $0.gid.ipv4Address != nil }) ?? roceV2.first else {
                throw RDMASelectionError.noRoCEv2GID(device: device, port: port.number)
            }
            return chosen
        }
        guard let first = port.gids.first else {
            throw RDMASelectionError.gidIndexEmpty(device: device, port: port.number, index: 0)
        }
        return first
    }
}
