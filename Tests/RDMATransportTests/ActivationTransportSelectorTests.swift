import Foundation
import Logging
import Testing
@testable import RDMATransport

@Suite struct ActivationTransportSelectorTests {
    static let logger = Logger(label: "test")

    static func survey(_ devices: [FakeVerbsProvider.Device], gidAttributes: FakeGIDAttributes = FakeGIDAttributes()) -> RDMASurvey {
        RDMASurvey.take(open: { FakeVerbsProvider(devicesList: devices) }, gidAttributes: gidAttributes, logger: logger)
    }

    static let absent = RDMASurvey(outcome: .libraryUnavailable(.libraryNotFound(tried: ["libibverbs.so.1 (not found)"])))
    static let noKernel = RDMASurvey(outcome: .deviceListFailed(library: "libibverbs.so.1", error: .deviceListFailed(code: ENOSYS)))

    @Test func tcpTakesNoSurvey() throws {
        var surveyed = false
        let decision = try ActivationTransportSelector.decide(preference: .tcp, device: nil, gidIndex: nil) {
            surveyed = true
            return Self.absent
        }
        #expect(decision == ActivationTransportDecision(transport: .tcp, reason: "--transport tcp"))
        #expect(!surveyed)
    }

    @Test func autoFallsBackToTCPSayingWhatIsMissing() throws {
        let withoutLibrary = try ActivationTransportSelector.decide(preference: .auto, device: nil, gidIndex: nil) { Self.absent }
        #expect(withoutLibrary.transport == .tcp)
        #expect(withoutLibrary.reason.contains("libibverbs is not installed"), "\(withoutLibrary.reason)")

        let withoutKernel = try ActivationTransportSelector.decide(preference: .auto, device: nil, gidIndex: nil) { Self.noKernel }
        #expect(withoutKernel.transport == .tcp)
        #expect(withoutKernel.reason.contains("the kernel has no RDMA support"), "\(withoutKernel.reason)")

        let (device, gidAttributes) = FakeNode.connectX(state: .down)
        let portDown = try ActivationTransportSelector.decide(preference: .auto, device: nil, gidIndex: nil) {
            Self.survey([device], gidAttributes: gidAttributes)
        }
        #expect(portDown.transport == .tcp)
        #expect(portDown.reason.contains("no RDMA device has an ACTIVE port (mlx5_0 port 1 DOWN)"), "\(portDown.reason)")
    }

    @Test func autoWithAUsablePortChoosesRDMAOnThatEndpoint() throws {
        let (device, gidAttributes) = FakeNode.connectX()
        let decision = try ActivationTransportSelector.decide(preference: .auto, device: nil, gidIndex: nil) {
            Self.survey([device], gidAttributes: gidAttributes)
        }
        #expect(decision.transport == .rdma)
        #expect(decision.reason.hasPrefix("mlx5_0 port 1 GID 3 "), "\(decision.reason)")
        #expect(decision.reason.hasSuffix("is usable"), "\(decision.reason)")
        #expect(decision.endpoint?.device == "mlx5_0" && decision.endpoint?.gidIndex == 3)
    }

    @Test func rdmaFailsNamingWhatIsMissing() {
        #expect {
            _ = try ActivationTransportSelector.decide(preference: .rdma, device: nil, gidIndex: nil) { Self.absent }
        } throws: { error in
            guard case let .unavailable(reason) = error as? RDMASelectionError else { return false }
            return reason.hasPrefix("libibverbs is not installed")
        }
        #expect {
            _ = try ActivationTransportSelector.decide(preference: .rdma, device: nil, gidIndex: nil) { Self.noKernel }
        } throws: { error in
            (error as? RDMASelectionError)?.description
                == "RDMA is unavailable: libibverbs is installed (libibverbs.so.1) but the kernel has no RDMA support, so there is no verbs device"
        }
    }

    @Test func rdmaWithAUsablePortChoosesIt() throws {
        let (device, gidAttributes) = FakeNode.connectX()
        let decision = try ActivationTransportSelector.decide(preference: .rdma, device: "mlx5_0", gidIndex: nil) {
            Self.survey([device], gidAttributes: gidAttributes)
        }
        #expect(decision.transport == .rdma)
        let endpoint = try #require(decision.endpoint)
        #expect(endpoint.device == "mlx5_0" && endpoint.port == 1 && endpoint.gidIndex == 3)
    }

    /// On Ethernet the first RoCE v2 GID with an IPv4 address wins, then any RoCE v2 GID.
    @Test func theDefaultGIDIsRoCEv2PreferringIPv4() throws {
        let (device, gidAttributes) = FakeNode.connectX()
        let endpoint = try ActivationTransportSelector.usableEndpoint(in: Self.survey([device], gidAttributes: gidAttributes),
                                                                      device: nil, gidIndex: nil)
        #expect(endpoint.gidIndex == 3)
        #expect(endpoint.gidType == .roceV2)
        #expect(endpoint.gid.ipv4Address == "192.168.100.1")
        #expect(endpoint.activeMTUBytes == 4096)

        var withoutIPv4 = gidAttributes
        withoutIPv4.types["mlx5_0/1/3"] = .roceV1
        let linkLocal = try ActivationTransportSelector.usableEndpoint(in: Self.survey([device], gidAttributes: withoutIPv4),
                                                                       device: nil, gidIndex: nil)
        #expect(linkLocal.gidIndex == 1)

        var noV2 = withoutIPv4
        noV2.types["mlx5_0/1/1"] = .roceV1
        #expect(throws: RDMASelectionError.noRoCEv2GID(device: "mlx5_0", port: 1)) {
            _ = try ActivationTransportSelector.usableEndpoint(in: Self.survey([device], gidAttributes: noV2), device: nil, gidIndex: nil)
        }
    }

    @Test func theFirstDeviceWithAnActivePortIsChosenUnlessOneIsNamed() throws {
        let (down, _) = FakeNode.connectX(name: "mlx5_0", state: .down)
        let (up, upAttributes) = FakeNode.connectX(name: "mlx5_1")
        let survey = Self.survey([down, up], gidAttributes: upAttributes)
        #expect(try ActivationTransportSelector.usableEndpoint(in: survey, device: nil, gidIndex: nil).device == "mlx5_1")
        #expect(throws: RDMASelectionError.noActivePort(device: "mlx5_0", ports: ["mlx5_0 port 1 DOWN"])) {
            _ = try ActivationTransportSelector.usableEndpoint(in: survey, device: "mlx5_0", gidIndex: nil)
        }
        #expect(throws: RDMASelectionError.deviceNotFound(name: "mlx5_7", available: ["mlx5_0", "mlx5_1"])) {
            _ = try ActivationTransportSelector.usableEndpoint(in: survey, device: "mlx5_7", gidIndex: nil)
        }
    }

    @Test func anExplicitGIDIndexIsCheckedAgainstTheTable() throws {
        let (device, gidAttributes) = FakeNode.connectX()
        let survey = Self.survey([device], gidAttributes: gidAttributes)
        #expect(try ActivationTransportSelector.usableEndpoint(in: survey, device: nil, gidIndex: 1).gidIndex == 1)
        #expect(throws: RDMASelectionError.gidIndexOutOfRange(device: "mlx5_0", port: 1, index: 8, tableLength: 8)) {
            _ = try ActivationTransportSelector.usableEndpoint(in: survey, device: nil, gidIndex: 8)
        }
        #expect(throws: RDMASelectionError.gidIndexEmpty(device: "mlx5_0", port: 1, index: 6)) {
            _ = try ActivationTransportSelector.usableEndpoint(in: survey, device: nil, gidIndex: 6)
        }
        #expect(throws: RDMASelectionError.gidNotRoCEv2(device: "mlx5_0", port: 1, index: 2, type: "RoCE v1")) {
            _ = try ActivationTransportSelector.usableEndpoint(in: survey, device: nil, gidIndex: 2)
        }
    }

    @Test func anUnreadableNamedDeviceIsNamedWithItsError() {
        var (device, _) = FakeNode.connectX()
        device.openError = .callFailed(call: "ibv_open_device", device: "mlx5_0", port: nil, code: EACCES)
        #expect {
            _ = try ActivationTransportSelector.usableEndpoint(in: Self.survey([device]), device: "mlx5_0", gidIndex: nil)
        } throws: { error in
            guard case let .deviceUnreadable(name, reason) = error as? RDMASelectionError else { return false }
            return name == "mlx5_0" && reason.hasPrefix("ibv_open_device failed on mlx5_0")
        }
    }
}
