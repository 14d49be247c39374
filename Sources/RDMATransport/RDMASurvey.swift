import Foundation
import Logging

/// Everything a node offers for RDMA: whether libibverbs loads, its devices, their ports and populated GIDs. A device
/// or port that cannot be read is kept with its error, so the report shows it rather than hiding it.
public struct RDMASurvey: Sendable {
    public enum Outcome: Sendable {
        /// libibverbs could not be opened (or this build cannot use it).
        case libraryUnavailable(VerbsError)
        /// The library loaded but could not list devices; `error.meansKernelWithoutRDMA` tells a kernel without RDMA.
        case deviceListFailed(library: String, error: VerbsError)
        /// The library loaded and lists no device.
        case noDevices(library: String)
        case devices(library: String, [Device])
    }

    public struct Device: Sendable {
        public let entry: VerbsDeviceEntry
        public let attributes: VerbsDeviceAttributes?
        public let ports: [Port]
        /// Why the device (or its attributes) could not be read.
        public let error: VerbsError?
    }

    public struct Port: Sendable {
        public let number: Int
        public let attributes: VerbsPortAttributes?
        public let gids: [GIDEntry]
        public let error: VerbsError?
    }

    public struct GIDEntry: Sendable, Equatable {
        public let index: Int
        public let gid: VerbsGID
        /// Nil when the type could not be determined.
        public let type: VerbsGIDType?
        public let networkInterface: String?
    }

    public let outcome: Outcome

    public init(outcome: Outcome) {
        self.outcome = outcome
    }

    /// Opens the provider with `open` and reads every device, port and GID.
    public static func take(open: () throws(VerbsError) -> any VerbsProvider,
                            gidAttributes: any GIDAttributeSource = SysfsGIDAttributes(), logger: Logger) -> RDMASurvey {
        let provider: any VerbsProvider
        do throws(VerbsError) {
            provider = try open()
        } catch {
            logger.debug("libibverbs unavailable", metadata: ["reason": "\(error)"])
            return RDMASurvey(outcome: .libraryUnavailable(error))
        }
        let entries: [VerbsDeviceEntry]
        do throws(VerbsError) {
            entries = try provider.devices()
        } catch {
            return RDMASurvey(outcome: .deviceListFailed(library: provider.origin, error: error))
        }
        guard !entries.isEmpty else { return RDMASurvey(outcome: .noDevices(library: provider.origin)) }
        let devices = entries.map { entry in
            survey(device: entry, provider: provider, gidAttributes: gidAttributes, logger: logger)
        }
        return RDMASurvey(outcome: .devices(library: provider.origin, devices))
    }

    /// Takes a survey of the real libibverbs.
    public static func take(locator: VerbsLibraryLocator = VerbsLibraryLocator(), logger: Logger) -> RDMASurvey {
        take(open: { () throws(VerbsError) in try locator.open() }, logger: logger)
    }

    static func survey(device entry: VerbsDeviceEntry, provider: any VerbsProvider, gidAttributes: any GIDAttributeSource,
                       logger: Logger) -> Device {
        let handle: any VerbsDeviceHandle
        let attributes: VerbsDeviceAttributes
        do throws(VerbsError) {
            handle = try provider.openDevice(named: entry.name)
            attributes = try handle.attributes()
        } catch {
            logger.debug("RDMA device unreadable", metadata: ["device": "\(entry.name)", "reason": "\(error)"])
            return Device(entry: entry, attributes: nil, ports: [], error: error)
        }
        let ports = attributes.physicalPortCount > 0 ? (1...attributes.physicalPortCount).map { number -> Port in
            let port: VerbsPortAttributes
            do throws(VerbsError) {
                port = try handle.port(number)
            } catch {
                return Port(number: number, attributes: nil, gids: [], error: error)
            }
            var gids: [GIDEntry] = []
            for index in 0..<max(0, port.gidTableLength) {
                // Unpopulated RoCE entries either read as zeros or fail, depending on the kernel; neither is a GID.
                guard let gid = try? handle.gid(port: number, index: index) else { continue }
                gids.append(GIDEntry(index: index, gid: gid,
                                     type: gidAttributes.type(device: entry.name, port: number, index: index, linkLayer: port.linkLayer),
                                     networkInterface: gidAttributes.networkInterface(device: entry.name, port: number, index: index)))
            }
            return Port(number: number, attributes: port, gids: gids, error: nil)
        } : []
        return Device(entry: entry, attributes: attributes, ports: ports, error: nil)
    }

    /// Whether any device has an active port.
    public var hasActivePort: Bool {
        guard case let .devices(_, devices) = outcome else { return false }
        return devices.contains { $0.ports.contains { $0.attributes?.isActive == true } }
    }

    /// One sentence saying why RDMA cannot be used at all, or nil when at least one device exists.
    public var absenceReason: String? {
        switch outcome {
        case let .libraryUnavailable(error):
            return "\(error)"
        case let .deviceListFailed(library, error):
            return error.meansKernelWithoutRDMA
                ? "libibverbs is installed (\(library)) but the kernel has no RDMA support, so there is no verbs device"
                : "libibverbs is installed (\(library)) but \(error)"
        case let .noDevices(library):
            return "libibverbs is installed (\(library)) but this node has no RDMA device (no ConnectX or other verbs NIC with its driver loaded)"
        case .devices:
            return nil
        }
    }
}
