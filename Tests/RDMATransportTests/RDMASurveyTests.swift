import Foundation
import Logging
import Testing
@testable import RDMATransport

@Suite struct RDMASurveyTests {
    static let logger = Logger(label: "test")

    @Test func aDeviceIsSurveyedPortByPortKeepingOnlyPopulatedGIDsWithTheirTypes() {
        let (device, gidAttributes) = FakeNode.connectX()
        let survey = RDMASurvey.take(open: { FakeVerbsProvider(devicesList: [device]) }, gidAttributes: gidAttributes,
                                     logger: Self.logger)
        guard case let .devices(origin, devices) = survey.outcome, let surveyed = devices.first else {
            Issue.record("expected devices, got \(survey.outcome)")
            return
        }
        #expect(origin == "fake")
        #expect(devices.count == 1)
        #expect(surveyed.entry.name == "mlx5_0")
        #expect(surveyed.attributes?.physicalPortCount == 1)
        #expect(surveyed.ports.map(\.number) == [1])
        let gids = surveyed.ports[0].gids
        // Entries 4..7 are empty and 5 fails to read: none is listed.
        #expect(gids.map(\.index) == [0, 1, 2, 3])
        #expect(gids.map(\.type) == [.roceV1, .roceV2, .roceV1, .roceV2])
        #expect(gids[3].networkInterface == "enp1s0f0np0")
        #expect(survey.hasActivePort)
        #expect(survey.absenceReason == nil)
    }

    @Test func unreadableDevicesAndPortsAreKeptWithTheirErrors() {
        var (broken, _) = FakeNode.connectX(name: "mlx5_1")
        broken.openError = .callFailed(call: "ibv_open_device", device: "mlx5_1", port: nil, code: EACCES)
        var (halfBroken, gidAttributes) = FakeNode.connectX()
        halfBroken.attributes = FakeNode.attributes(ports: 2)
        halfBroken.portErrors = [2: .callFailed(call: "ibv_query_port", device: "mlx5_0", port: 2, code: EIO)]
        let survey = RDMASurvey.take(open: { FakeVerbsProvider(devicesList: [broken, halfBroken]) },
                                     gidAttributes: gidAttributes, logger: Self.logger)
        guard case let .devices(_, devices) = survey.outcome else {
            Issue.record("expected devices, got \(survey.outcome)")
            return
        }
        #expect(devices[0].error == .callFailed(call: "ibv_open_device", device: "mlx5_1", port: nil, code: EACCES))
        #expect(devices[0].ports.isEmpty)
        #expect(devices[1].ports.count == 2)
        #expect(devices[1].ports[1].attributes == nil)
        #expect(devices[1].ports[1].error == .callFailed(call: "ibv_query_port", device: "mlx5_0", port: 2, code: EIO))
    }

    @Test func theThreeWaysOfHavingNoDeviceAreToldApart() {
        let absent = RDMASurvey.take(open: { () throws(VerbsError) in throw .libraryNotFound(tried: ["x"]) }, logger: Self.logger)
        #expect(absent.absenceReason?.hasPrefix("libibverbs is not installed") == true)

        let noKernel = RDMASurvey.take(open: { FakeVerbsProvider(devicesList: [], listError: .deviceListFailed(code: ENOSYS)) },
                                       logger: Self.logger)
        #expect(noKernel.absenceReason == "libibverbs is installed (fake) but the kernel has no RDMA support, so there is no verbs device")

        let none = RDMASurvey.take(open: { FakeVerbsProvider(devicesList: []) }, logger: Self.logger)
        #expect(none.absenceReason?.hasPrefix("libibverbs is installed (fake) but this node has no RDMA device") == true)
        #expect(!none.hasActivePort)
    }

    @Test func sysfsGIDTypesAndInterfacesAreRead() throws {
        let root = FileManager.default.temporaryDirectory.appendingPathComponent("sysfs-ib-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: root) }
        let attributes = root.appendingPathComponent("mlx5_0/ports/1/gid_attrs")
        for kind in ["types", "ndevs"] {
            try FileManager.default.createDirectory(at: attributes.appendingPathComponent(kind), withIntermediateDirectories: true)
        }
        try "IB/RoCE v1\n".write(to: attributes.appendingPathComponent("types/0"), atomically: true, encoding: .utf8)
        try "RoCE v2\n".write(to: attributes.appendingPathComponent("types/1"), atomically: true, encoding: .utf8)
        try "enp1s0f0np0\n".write(to: attributes.appendingPathComponent("ndevs/1"), atomically: true, encoding: .utf8)
        let sysfs = SysfsGIDAttributes(root: root)
        #expect(sysfs.type(device: "mlx5_0", port: 1, index: 0, linkLayer: .ethernet) == .roceV1)
        #expect(sysfs.type(device: "mlx5_0", port: 1, index: 0, linkLayer: .infiniBand) == .infiniBand)
        #expect(sysfs.type(device: "mlx5_0", port: 1, index: 1, linkLayer: .ethernet) == .roceV2)
        #expect(sysfs.type(device: "mlx5_0", port: 1, index: 2, linkLayer: .ethernet) == nil)
        #expect(sysfs.networkInterface(device: "mlx5_0", port: 1, index: 1) == "enp1s0f0np0")
        #expect(sysfs.networkInterface(device: "mlx5_0", port: 1, index: 0) == nil)
        #expect(SysfsGIDAttributes.parseType("something else", linkLayer: .ethernet) == nil)
    }
}
