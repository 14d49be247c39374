import Foundation
import Testing

/// workerd's `--transport`: `rdma` refuses to start where RDMA cannot be used, `auto` falls back to TCP and joins.
@Suite struct TransportChoiceTests {
    static let hiddenLibrary = ["NVFP4_LIBIBVERBS": "/nonexistent/nvfp4-test/libibverbs.so.1"]

    /// Runs workerd until it exits (it must, here); returns its status and log.
    static func runWorkerd(_ arguments: [String], environment: [String: String], in directory: URL) throws -> (Int32, String) {
        let daemon = try Daemon(name: "workerd", executable: try Binaries.url("workerd"),
                                arguments: arguments + ["--scratch", directory.appendingPathComponent("scratch").path],
                                directory: directory, environment: environment)
        let deadline = Date().addingTimeInterval(20)
        while daemon.isRunning && Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
        guard !daemon.isRunning else {
            daemon.kill()
            throw HarnessError("workerd \(arguments) did not exit; log:\n\(daemon.output)")
        }
        return (daemon.process.terminationStatus, daemon.output)
    }

    /// The shim opens libibverbs at run time: no binary names it as a needed library, so each starts where it is absent.
    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/readelf"), "needs readelf (binutils)"))
    func noBinaryNeedsLibibverbsToStart() throws {
        try withTemporaryDirectory("needed-libraries") { directory in
            for binary in ["coordd", "workerd", "coordctl"] {
                let result = try run(URL(fileURLWithPath: "/usr/bin/readelf"), ["-d", try Binaries.url(binary).path], in: directory)
                #expect(result.status == 0, "\(result.stderr)")
                #expect(result.stdout.contains("(NEEDED)"), "readelf listed no needed library for \(binary)")
                #expect(!result.stdout.contains("libibverbs"), "\(binary) needs libibverbs: \(result.stdout)")
            }
        }
    }

    @Test func transportRDMAWithoutLibibverbsRefusesToStartNamingTheLibrary() throws {
        try withTemporaryDirectory("transport-rdma") { directory in
            let (status, log) = try Self.runWorkerd(["--transport", "rdma"], environment: Self.hiddenLibrary, in: directory)
            #expect(status != 0)
            #expect(log.contains("Error: --transport rdma: RDMA is unavailable: libibverbs is not installed (or not found); tried: /nonexistent/nvfp4-test/libibverbs.so.1"),
                    "\(log)")
            #expect(!log.contains("listening"), "it must fail before it listens: \(log)")
        }
    }

    @Test(.enabled(if: DoctorConditions.libraryInstalled && DoctorConditions.kernelListsNoDevice,
                   "needs libibverbs and a node without RDMA devices"))
    func transportRDMAOnANodeWithoutDevicesRefusesToStartSayingSo() throws {
        try withTemporaryDirectory("transport-rdma") { directory in
            let (status, log) = try Self.runWorkerd(["--transport", "rdma"], environment: [:], in: directory)
            #expect(status != 0)
            #expect(log.contains("Error: --transport rdma: RDMA is unavailable: libibverbs is installed (libibverbs.so.1) but "), "\(log)")
        }
    }

    @Test func rdmaOptionsWithTransportTCPAreRefused() throws {
        try withTemporaryDirectory("transport-tcp") { directory in
            let (status, log) = try Self.runWorkerd(["--transport", "tcp", "--rdma-gid-index", "3"], environment: [:], in: directory)
            #expect(status == 64, "\(log)")
            #expect(log.contains("--rdma-device and --rdma-gid-index choose an RDMA port; they do nothing with --transport tcp"), "\(log)")
        }
    }

    /// `--rdma-device` twice or as a comma list names the lanes of each link; a device named twice is refused at start.
    @Test func rdmaDeviceListsAreParsedAndADeviceNamedTwiceIsRefused() throws {
        try withTemporaryDirectory("transport-lanes") { directory in
            let (status, log) = try Self.runWorkerd(["--transport", "rdma", "--rdma-device", "mlx5_1,mlx5_0", "--rdma-device", "mlx5_1"],
                                                    environment: Self.hiddenLibrary, in: directory)
            #expect(status != 0)
            #expect(log.contains("Error: --transport rdma: --rdma-device mlx5_1 is given twice; name each device (port half) once"), "\(log)")
            let (emptyStatus, emptyLog) = try Self.runWorkerd(["--transport", "rdma", "--rdma-device", "mlx5_0,"],
                                                              environment: Self.hiddenLibrary, in: directory)
            #expect(emptyStatus == 64, "\(emptyLog)")
            #expect(emptyLog.contains("--rdma-device mlx5_0,: a device name is empty"), "\(emptyLog)")
        }
    }

    @Test func transportAutoWithoutLibibverbsLogsWhyAndJoinsOverTCP() throws {
        try withTemporaryDirectory("transport-auto") { directory in
            let cluster = LocalCluster(directory: directory, token: nil)
            defer { cluster.stopAll() }
            try cluster.startCoordinator()
            let worker = try cluster.startWorker("w1", extra: ["--transport", "auto"], environment: Self.hiddenLibrary)
            try worker.waitForLog("activation transport: tcp")
            #expect(worker.output.contains("reason=RDMA is unavailable: libibverbs is not installed"), "\(worker.output)")
            try cluster.waitForWorkers(["w1"])
        }
    }
}

enum DoctorConditions {
    static let libraryInstalled: Bool = {
        guard let handle = dlopen("libibverbs.so.1", RTLD_NOW | RTLD_LOCAL) else { return false }
        dlclose(handle)
        return true
    }()

    static let kernelListsNoDevice = ((try? FileManager.default.contentsOfDirectory(atPath: "/sys/class/infiniband")) ?? []).isEmpty
}
