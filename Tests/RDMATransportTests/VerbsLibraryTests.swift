import Foundation
import Logging
import Testing
@testable import RDMATransport

/// The real libibverbs through the shim, and the paths where it is missing.
@Suite struct VerbsLibraryTests {
    /// Whether the dynamic linker finds libibverbs here (checked without the code under test).
    static let libraryInstalled: Bool = {
        guard let handle = dlopen("libibverbs.so.1", RTLD_NOW | RTLD_LOCAL) else { return false }
        dlclose(handle)
        return true
    }()

    /// Whether the kernel lists any RDMA device (no /sys/class/infiniband, or an empty one, means none).
    static let kernelListsNoDevice: Bool = {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/sys/class/infiniband")) ?? []
        return entries.isEmpty
    }()

    static let missingLibrary = "/nonexistent/nvfp4-test/libibverbs.so.1"

    @Test func aMissingLibraryIsReportedAsNotInstalledNamingWhatWasTried() throws {
        let locator = VerbsLibraryLocator(environment: [VerbsLibraryLocator.overrideVariable: Self.missingLibrary])
        #expect(locator.candidates == [Self.missingLibrary])
        #expect {
            _ = try locator.open()
        } throws: { error in
            guard case let .libraryNotFound(tried) = error as? VerbsError else { return false }
            return tried.count == 1 && tried[0].hasPrefix(Self.missingLibrary) && tried[0].contains("No such file")
        }
        let survey = RDMASurvey.take(locator: locator, logger: Logger(label: "test"))
        guard case .libraryUnavailable = survey.outcome else {
            Issue.record("expected the library to be unavailable, got \(survey.outcome)")
            return
        }
        #expect(survey.absenceReason?.contains("libibverbs is not installed") == true, "\(survey.absenceReason ?? "")")
    }

    @Test func withoutAnOverrideTheSonameIsTriedAndTheHintSaysWhatToInstall() {
        let locator = VerbsLibraryLocator(environment: [:])
        #expect(locator.candidates == ["libibverbs.so.1"])
        let error = VerbsError.libraryNotFound(tried: ["libibverbs.so.1 (cannot open)"])
        #expect(error.description.hasPrefix("libibverbs is not installed"))
    }

    /// A library that loads but is not libibverbs: the first missing entry point is named.
    @Test(.enabled(if: VerbsLibraryLocator.buildHasVerbsHeaders, "this build has no verbs.h"))
    func aLibraryWithoutTheVerbsEntryPointsNamesTheMissingSymbol() {
        let locator = VerbsLibraryLocator(environment: [VerbsLibraryLocator.overrideVariable: "libc.so.6"])
        #expect(throws: VerbsError.symbolNotFound(library: "libc.so.6", symbol: "ibv_get_device_list")) {
            _ = try locator.open()
        }
    }

    @Test(.enabled(if: !VerbsLibraryLocator.buildHasVerbsHeaders, "this build has verbs.h"))
    func aBuildWithoutVerbsHeadersSaysSoWhenTheLibraryIsPresent() {
        let locator = VerbsLibraryLocator(environment: [VerbsLibraryLocator.overrideVariable: "libc.so.6"])
        #expect(throws: VerbsError.builtWithoutVerbsHeaders) { _ = try locator.open() }
    }

    /// Debian's libibverbs on a node whose kernel lists no RDMA device: it loads, and enumerates none (a kernel
    /// without the RDMA core answers ENOSYS, one with it an empty list).
    @Test(.enabled(if: libraryInstalled && kernelListsNoDevice && VerbsLibraryLocator.buildHasVerbsHeaders,
                   "needs libibverbs, verbs.h at build time, and no RDMA device"))
    func theRealLibraryLoadsAndEnumeratesNoDevice() throws {
        let library = try VerbsLibraryLocator(environment: [:]).open()
        #expect(library.path == "libibverbs.so.1")
        do throws(VerbsError) {
            let devices = try library.devices()
            #expect(devices.isEmpty, "\(devices)")
        } catch {
            #expect(error.meansKernelWithoutRDMA, "\(error)")
        }
        #expect(throws: VerbsError.self) { _ = try library.open(device: "mlx5_0") }

        let survey = RDMASurvey.take(locator: VerbsLibraryLocator(environment: [:]), logger: Logger(label: "test"))
        switch survey.outcome {
        case let .noDevices(path), let .deviceListFailed(path, _):
            #expect(path == "libibverbs.so.1")
        default:
            Issue.record("expected no device, got \(survey.outcome)")
        }
        #expect(survey.absenceReason?.contains("libibverbs is installed (libibverbs.so.1)") == true, "\(survey.absenceReason ?? "")")
        #expect(!survey.hasActivePort)
    }
}

@Suite struct VerbsValueTests {
    @Test func portAttributesDecodeMTUWidthSpeedAndState() {
        let port = FakeNode.roCEPort()
        #expect(port.state == .active)
        #expect(port.isActive)
        #expect(port.linkLayer == .ethernet)
        #expect(port.activeMTUBytes == 4096)
        #expect(port.activeLanes == 4)
        #expect(port.laneGigabitsPerSecond == 50)
        #expect(port.lineRateGigabitsPerSecond == 200)
        #expect(port.physicalStateName == "LINK_UP")
        #expect(VerbsPortAttributes.mtuBytes(1) == 256)
        #expect(VerbsPortAttributes.mtuBytes(0) == nil)
        #expect(VerbsPortAttributes.mtuBytes(6) == nil)

        var down = FakeNode.roCEPort(state: .down)
        down.activeSpeedCode = 0
        #expect(!down.isActive)
        #expect(down.lineRateGigabitsPerSecond == nil)
        down.stateCode = 9
        #expect(down.state == nil)
    }

    @Test func gidsPrintAsEightGroupsAndIPv4MappedOnesNameTheirAddress() {
        #expect(FakeNode.ipv4Mapped.description == "0000:0000:0000:0000:0000:ffff:c0a8:6401")
        #expect(FakeNode.ipv4Mapped.ipv4Address == "192.168.100.1")
        #expect(FakeNode.linkLocal.ipv4Address == nil)
        #expect(VerbsGID(bytes: [UInt8](repeating: 0, count: 16))?.isZero == true)
        #expect(VerbsGID(bytes: [1, 2, 3]) == nil)
        #expect(VerbsDeviceEntry(name: "mlx5_0", nodeGUID: 0x5a81_d8ff_fe12_3456).nodeGUIDText == "5a81:d8ff:fe12:3456")
    }

    @Test func kernelWithoutRDMAIsToldApartFromOtherListFailures() {
        #expect(VerbsError.deviceListFailed(code: ENOSYS).meansKernelWithoutRDMA)
        #expect(VerbsError.deviceListFailed(code: ENOSYS).description.contains("the kernel has no RDMA support"))
        #expect(!VerbsError.deviceListFailed(code: EACCES).meansKernelWithoutRDMA)
        #expect(VerbsError.callFailed(call: "ibv_query_port", device: "mlx5_0", port: 2, code: EINVAL).description
                    .hasPrefix("ibv_query_port failed on mlx5_0 port 2: "))
    }
}
