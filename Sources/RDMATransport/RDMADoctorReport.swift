import Foundation
import Logging

/// What `coordctl doctor rdma` prints for a survey, and whether the node can use RDMA.
public struct RDMADoctorReport: Sendable {
    public let survey: RDMASurvey
    /// The endpoint `--transport rdma` would pick with the same `--rdma-device` and `--rdma-gid-index`, or why none.
    public let endpoint: Result<RDMAEndpoint, RDMASelectionError>
    /// The loopback test's line once ``runLoopback(provider:test:logger:)`` ran; nil before.
    public private(set) var loopback: String?
    /// True when the loopback ran and failed (a usable-looking port that cannot carry data).
    public private(set) var loopbackFailed = false
    /// The peer test's line once ``runPeerTest(peer:provider:test:control:logger:)`` ran; nil before.
    public private(set) var peerTest: String?
    /// True when the peer test was asked for and did not pass (no device here included).
    public private(set) var peerTestFailed = false

    public init(survey: RDMASurvey, device: String? = nil, gidIndex: Int? = nil) {
        self.survey = survey
        do throws(RDMASelectionError) {
            endpoint = .success(try ActivationTransportSelector.usableEndpoint(in: survey, device: device, gidIndex: gidIndex))
        } catch {
            endpoint = .failure(error)
        }
    }

    /// True when a port and GID were found for RDMA.
    public var isUsable: Bool {
        if case .success = endpoint { return true }
        return false
    }

    public var text: String {
        var lines: [String] = []
        switch survey.outcome {
        case let .libraryUnavailable(error):
            lines.append("libibverbs: not loaded")
            lines.append("  \(error)")
            lines.append("devices: unknown without libibverbs")
        case let .deviceListFailed(library, error):
            lines.append("libibverbs: loaded (\(library))")
            lines.append("devices: none — " + (error.meansKernelWithoutRDMA
                ? "the kernel has no RDMA support (libibverbs reports ENOSYS), so there is no verbs device"
                : "\(error)"))
        case let .noDevices(library):
            lines.append("libibverbs: loaded (\(library))")
            lines.append("devices: none — the kernel's RDMA core lists no verbs device (no ConnectX or other RDMA NIC with its driver loaded)")
        case let .devices(library, devices):
            lines.append("libibverbs: loaded (\(library))")
            lines.append("devices: \(devices.count)")
            for device in devices { lines.append(contentsOf: Self.lines(for: device)) }
        }
        switch endpoint {
        case let .success(endpoint):
            lines.append("usable: \(endpoint)" + (endpoint.activeMTUBytes.map { ", MTU \($0)" } ?? ""))
        case let .failure(error):
            lines.append("no verbs device is usable: \(error)")
            lines.append("workerd --transport auto uses TCP here; --transport rdma fails.")
        }
        lines.append(loopback ?? "loopback RDMA WRITE test: not run" + (isUsable ? "" : " (no usable device)"))
        if let peerTest { lines.append(peerTest) }
        return lines.joined(separator: "\n")
    }

    /// Runs the loopback RDMA WRITE test on the usable endpoint, opened through `provider`, and records its line.
    /// Without a usable endpoint it records why nothing ran.
    public mutating func runLoopback(provider: any VerbsProvider, test: RDMALoopbackTest = RDMALoopbackTest(),
                                     logger: Logger) async {
        guard case let .success(usable) = endpoint else {
            loopback = "loopback RDMA WRITE test: not run (no usable device)"
            return
        }
        let handle: any VerbsDeviceHandle
        do throws(VerbsError) {
            handle = try provider.openDevice(named: usable.device)
        } catch {
            loopback = "loopback RDMA WRITE test: FAILED: \(error)"
            loopbackFailed = true
            return
        }
        guard let device = handle as? any VerbsDataPlaneDevice else {
            loopback = "loopback RDMA WRITE test: not run (\(provider.origin) offers no data plane)"
            return
        }
        do throws(RDMALoopbackTest.Failure) {
            let result = try await test.run(device: device, endpoint: RDMALinkEndpoint(usable),
                                            lineRateGigabitsPerSecond: lineRate(of: usable), logger: logger)
            loopback = result.text
        } catch {
            loopback = "loopback RDMA WRITE test: FAILED: \(error)"
            loopbackFailed = true
        }
    }

    /// Runs the peer test with the workerd behind `control` on the usable endpoint. Without one, it records that
    /// this node has no device and contacts no one.
    /// `control` is made only then, so credentials are not even read on a node that cannot run the test.
    public mutating func runPeerTest(peer: String, provider: () throws(VerbsError) -> any VerbsProvider, test: RDMAPeerTest,
                                     control makeControl: () throws -> any RDMAPeerTestControl, logger: Logger) async {
        let prefix = "peer RDMA WRITE test with \(peer): "
        peerTestFailed = true
        guard case let .success(usable) = endpoint else {
            peerTest = prefix + "not run: this node has no usable verbs device (see above); workerd at \(peer) was not contacted"
            return
        }
        let control: any RDMAPeerTestControl
        do {
            control = try makeControl()
        } catch {
            peerTest = prefix + "not run: \(error)"
            return
        }
        let device: any VerbsDataPlaneDevice
        do throws(VerbsError) {
            let provider = try provider()
            guard let opened = try provider.openDevice(named: usable.device) as? any VerbsDataPlaneDevice else {
                peerTest = prefix + "not run: \(provider.origin) offers no data plane on \(usable.device)"
                return
            }
            device = opened
        } catch {
            peerTest = prefix + "FAILED: \(error)"
            return
        }
        do throws(RDMAPeerTest.Failure) {
            let result = try await test.run(device: device, endpoint: RDMALinkEndpoint(usable), control: control,
                                            lineRateGigabitsPerSecond: lineRate(of: usable), logger: logger)
            peerTest = result.text
            peerTestFailed = false
        } catch {
            peerTest = prefix + "FAILED: \(error)"
        }
    }

    func lineRate(of usable: RDMAEndpoint) -> Double? {
        guard case let .devices(_, devices) = survey.outcome else { return nil }
        return devices.first { $0.entry.name == usable.device }?.ports.first { $0.number == usable.port }?
            .attributes?.lineRateGigabitsPerSecond
    }

    static func lines(for device: RDMASurvey.Device) -> [String] {
        var lines = ["device \(device.entry.name)  node GUID \(device.entry.nodeGUIDText)"]
        if let error = device.error {
            lines.append("  unreadable: \(error)")
            return lines
        }
        if let attributes = device.attributes {
            lines.append("  firmware \(attributes.firmwareVersion)  vendor 0x\(String(attributes.vendorID, radix: 16)) part \(attributes.vendorPartID)  ports \(attributes.physicalPortCount)")
        }
        for port in device.ports {
            guard let attributes = port.attributes else {
                lines.append("  port \(port.number): unreadable: \(port.error.map(String.init(describing:)) ?? "unknown error")")
                continue
            }
            let state = attributes.state.map(String.init(describing:)) ?? "state \(attributes.stateCode)"
            let link = attributes.linkLayer.map(String.init(describing:)) ?? "link layer \(attributes.linkLayerCode)"
            let mtu = attributes.activeMTUBytes.map(String.init) ?? "?"
            let maxMTU = attributes.maxMTUBytes.map(String.init) ?? "?"
            var rate = "rate unknown"
            if let total = attributes.lineRateGigabitsPerSecond, let lanes = attributes.activeLanes,
               let lane = attributes.laneGigabitsPerSecond {
                rate = "\(Self.gigabits(total)) Gb/s (\(lanes)x \(Self.gigabits(lane)) Gb/s)"
            }
            lines.append("  port \(port.number): \(state) (\(attributes.physicalStateName))  \(link)  MTU \(mtu) (max \(maxMTU))  \(rate)")
            if port.gids.isEmpty {
                lines.append("    no populated GID" + (attributes.linkLayer == .ethernet ? " (does the interface have an IP address?)" : ""))
            }
            for entry in port.gids {
                var line = "    GID \(entry.index)  \(entry.gid)"
                if let ipv4 = entry.gid.ipv4Address { line += " (\(ipv4))" }
                line += "  " + (entry.type?.rawValue ?? "type unknown")
                if let interface = entry.networkInterface { line += "  \(interface)" }
                if entry.type == .roceV2 { line += "  <- RoCE v2" }
                lines.append(line)
            }
        }
        return lines
    }

    static func gigabits(_ value: Double) -> String {
        value == value.rounded() ? String(Int(value)) : String(value)
    }
}
