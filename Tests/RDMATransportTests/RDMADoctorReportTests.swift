import Foundation
import Logging
import Testing
@testable import RDMATransport

/// What `coordctl doctor rdma` prints.
@Suite struct RDMADoctorReportTests {
    @Test func aMissingLibraryIsNamedAndTheNodeIsNotUsable() {
        let report = RDMADoctorReport(survey: ActivationTransportSelectorTests.absent)
        #expect(!report.isUsable)
        let text = report.text
        #expect(text.hasPrefix("libibverbs: not loaded\n  libibverbs is not installed"), "\(text)")
        #expect(text.contains("no verbs device is usable: RDMA is unavailable: libibverbs is not installed"), "\(text)")
        #expect(text.contains("workerd --transport auto uses TCP here; --transport rdma fails."))
    }

    @Test func aKernelWithoutRDMAAndAnEmptyDeviceListAreToldApart() {
        let noKernel = RDMADoctorReport(survey: ActivationTransportSelectorTests.noKernel).text
        #expect(noKernel.contains("libibverbs: loaded (libibverbs.so.1)\ndevices: none — the kernel has no RDMA support"), "\(noKernel)")

        let none = RDMADoctorReport(survey: RDMASurvey(outcome: .noDevices(library: "libibverbs.so.1"))).text
        #expect(none.contains("libibverbs: loaded (libibverbs.so.1)\ndevices: none — the kernel's RDMA core lists no verbs device"), "\(none)")
    }

    @Test func aDeviceIsListedWithPortsMTURateAndGIDsRoCEv2Marked() {
        let (device, gidAttributes) = FakeNode.connectX()
        let survey = ActivationTransportSelectorTests.survey([device], gidAttributes: gidAttributes)
        let report = RDMADoctorReport(survey: survey)
        #expect(report.isUsable)
        let lines = report.text.split(separator: "\n").map(String.init)
        #expect(lines.contains("device mlx5_0  node GUID 5a81:d8ff:fe12:3456"), "\(lines)")
        #expect(lines.contains("  firmware 28.41.1000  vendor 0x2c9 part 4129  ports 1"), "\(lines)")
        #expect(lines.contains("  port 1: ACTIVE (LINK_UP)  Ethernet  MTU 4096 (max 4096)  200 Gb/s (4x 50 Gb/s)"), "\(lines)")
        #expect(lines.contains("    GID 0  fe80:0000:0000:0000:5a81:d8ff:fe12:3456  RoCE v1  enp1s0f0np0"), "\(lines)")
        #expect(lines.contains("    GID 3  0000:0000:0000:0000:0000:ffff:c0a8:6401 (192.168.100.1)  RoCE v2  enp1s0f0np0  <- RoCE v2"), "\(lines)")
        #expect(lines.contains("usable: mlx5_0 port 1 GID 3 (0000:0000:0000:0000:0000:ffff:c0a8:6401, RoCE v2), MTU 4096"), "\(lines)")
    }

    @Test func theDeviceAndGIDOptionsAreCheckedAsWorkerdWould() {
        let (device, gidAttributes) = FakeNode.connectX()
        let survey = ActivationTransportSelectorTests.survey([device], gidAttributes: gidAttributes)
        let report = RDMADoctorReport(survey: survey, device: "mlx5_0", gidIndex: 2)
        #expect(!report.isUsable)
        #expect(report.text.contains("no verbs device is usable: --rdma-gid-index 2: GID 2 of mlx5_0 port 1 is RoCE v1, not RoCE v2"),
                "\(report.text)")
    }

    @Test func aPortWithoutGIDsOnEthernetAsksForAnAddress() {
        var (device, _) = FakeNode.connectX()
        device.gids = [:]
        device.failingGIDs = [:]
        let text = RDMADoctorReport(survey: ActivationTransportSelectorTests.survey([device])).text
        #expect(text.contains("    no populated GID (does the interface have an IP address?)"), "\(text)")
        #expect(text.contains("no verbs device is usable: mlx5_0 port 1 is Ethernet but has no RoCE v2 GID"), "\(text)")
    }
}
