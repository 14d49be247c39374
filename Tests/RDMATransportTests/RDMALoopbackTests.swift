import Foundation
import Logging
import Testing
@testable import RDMATransport

/// A provider whose devices are listed like ``FakeVerbsProvider``'s and carry data on a ``FakeFabric``.
struct FabricVerbsProvider: VerbsProvider {
    let listing: FakeVerbsProvider
    let fabric: FakeFabric
    var origin: String { "fake fabric" }

    func devices() throws(VerbsError) -> [VerbsDeviceEntry] { try listing.devices() }

    func openDevice(named name: String) throws(VerbsError) -> any VerbsDeviceHandle {
        Handle(listed: try listing.openDevice(named: name), data: fabric.device(name))
    }

    struct Handle: VerbsDeviceHandle, VerbsDataPlaneDevice {
        let listed: any VerbsDeviceHandle
        let data: FakeDataPlaneDevice
        var name: String { listed.name }
        func attributes() throws(VerbsError) -> VerbsDeviceAttributes { try listed.attributes() }
        func port(_ number: Int) throws(VerbsError) -> VerbsPortAttributes { try listed.port(number) }
        func gid(port: Int, index: Int) throws(VerbsError) -> VerbsGID? { try listed.gid(port: port, index: index) }
        func allocateProtectionDomain() throws(VerbsError) -> any VerbsProtectionDomain { try data.allocateProtectionDomain() }
        func createCompletionQueue(entries: Int) throws(VerbsError) -> any VerbsCompletionQueue {
            try data.createCompletionQueue(entries: entries)
        }
    }
}

@Suite("coordctl doctor rdma's loopback test")
struct RDMALoopbackTests {
    static let smallTest = RDMALoopbackTest(tensorBytes: 200_000, tensorCount: 4, latencyRounds: 5,
                                            ring: RDMARingParameters(slotBytes: 16 << 10, slotCount: 8))

    static func usableReport() -> (RDMADoctorReport, FakeVerbsProvider) {
        let (device, gidAttributes) = FakeNode.connectX()
        let provider = FakeVerbsProvider(devicesList: [device])
        let survey = RDMASurvey.take(open: { provider }, gidAttributes: gidAttributes, logger: Logger(label: "t"))
        return (RDMADoctorReport(survey: survey), provider)
    }

    @Test("on a usable port it moves and checks every byte and reports bandwidth against the line rate")
    func passes() async throws {
        var (report, listing) = Self.usableReport()
        let fabric = FakeFabric()
        await report.runLoopback(provider: FabricVerbsProvider(listing: listing, fabric: fabric), test: Self.smallTest,
                                 logger: Logger(label: "t"))
        #expect(!report.loopbackFailed)
        let line = try #require(report.loopback)
        #expect(line.hasPrefix("loopback RDMA WRITE on mlx5_0 port 1: "), "\(line)")
        #expect(line.contains("of the port's 200 Gb/s line rate"), "\(line)")
        #expect(line.contains("round trip"), "\(line)")
        #expect(report.text.contains(line))
        // Both queue pairs and all four rings were released.
        #expect(fabric.liveRegions(on: "mlx5_0") == 0)
        #expect(fabric.liveQueuePairs(on: "mlx5_0") == 0)
        #expect(fabric.landed(on: "mlx5_0") > 0)
    }

    @Test("a failing completion makes the loopback fail, naming the device")
    func fails() async throws {
        var (report, listing) = Self.usableReport()
        let fabric = FakeFabric()
        fabric.injectCompletionError(on: "mlx5_0", status: VerbsCompletion.statusLocalProtectionError)
        await report.runLoopback(provider: FabricVerbsProvider(listing: listing, fabric: fabric), test: Self.smallTest,
                                 logger: Logger(label: "t"))
        #expect(report.loopbackFailed)
        let line = try #require(report.loopback)
        #expect(line.hasPrefix("loopback RDMA WRITE test: FAILED: "), "\(line)")
        #expect(line.contains("mlx5_0") && line.contains("local protection error"), "\(line)")
        #expect(fabric.liveRegions(on: "mlx5_0") == 0)
    }

    @Test("with no usable device nothing runs, and the report says why")
    func noDevice() async {
        var report = RDMADoctorReport(survey: RDMASurvey(outcome: .noDevices(library: "libibverbs.so.1")))
        await report.runLoopback(provider: FakeVerbsProvider(devicesList: []), logger: Logger(label: "t"))
        #expect(!report.loopbackFailed)
        #expect(report.text.hasSuffix("loopback RDMA WRITE test: not run (no usable device)"), "\(report.text)")
    }

    @Test("a provider without a data plane is said to be one")
    func discoveryOnlyProvider() async {
        var (report, listing) = Self.usableReport()
        await report.runLoopback(provider: listing, logger: Logger(label: "t"))
        #expect(report.loopback == "loopback RDMA WRITE test: not run (fake offers no data plane)")
    }
}
