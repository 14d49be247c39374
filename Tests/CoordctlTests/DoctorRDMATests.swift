import Foundation
import Testing

/// `coordctl doctor rdma` as a user runs it on a node.
@Suite struct DoctorRDMATests {
    static let libraryInstalled: Bool = {
        guard let handle = dlopen("libibverbs.so.1", RTLD_NOW | RTLD_LOCAL) else { return false }
        dlclose(handle)
        return true
    }()

    static let kernelListsNoDevice = ((try? FileManager.default.contentsOfDirectory(atPath: "/sys/class/infiniband")) ?? []).isEmpty

    @Test func withoutLibibverbsTheDoctorSaysItIsNotInstalledAndExitsNonZero() throws {
        try withTemporaryDirectory("doctor-rdma") { scratch in
            let result = try Coordctl.run(["doctor", "rdma"], in: scratch,
                                          environment: ["NVFP4_LIBIBVERBS": "/nonexistent/nvfp4-test/libibverbs.so.1"])
            #expect(result.status == 1, "stdout: \(result.stdout) stderr: \(result.stderr)")
            let lines = result.stdout.split(separator: "\n").map(String.init)
            #expect(lines.first == "libibverbs: not loaded", "\(result.stdout)")
            #expect(lines.dropFirst().first?.hasPrefix("  libibverbs is not installed (or not found); tried: /nonexistent/nvfp4-test/libibverbs.so.1") == true,
                    "\(result.stdout)")
            #expect(result.stdout.contains("workerd --transport auto uses TCP here; --transport rdma fails."))
        }
    }

    /// Debian's libibverbs on a node without an RDMA device: loaded, and no device, said as such.
    @Test(.enabled(if: libraryInstalled && kernelListsNoDevice, "needs libibverbs and a node without RDMA devices"))
    func withLibibverbsAndNoDeviceTheDoctorSaysNoVerbsDeviceExists() throws {
        try withTemporaryDirectory("doctor-rdma") { scratch in
            let result = try Coordctl.run(["doctor", "rdma"], in: scratch)
            #expect(result.status == 1, "stdout: \(result.stdout) stderr: \(result.stderr)")
            let lines = result.stdout.split(separator: "\n").map(String.init)
            #expect(lines.first == "libibverbs: loaded (libibverbs.so.1)", "\(result.stdout)")
            #expect(lines.dropFirst().first?.hasPrefix("devices: none — ") == true, "\(result.stdout)")
            #expect(result.stdout.contains("no verbs device"), "\(result.stdout)")
            // The loopback test says plainly that it could not run, rather than pretending to measure.
            #expect(lines.last == "loopback RDMA WRITE test: not run (no usable device)", "\(result.stdout)")
        }
    }

    @Test func helpExplainsWhatTheDoctorChecksAndItsExitStatus() throws {
        try withTemporaryDirectory("doctor-rdma") { scratch in
            let result = try Coordctl.run(["doctor", "rdma", "--help"], in: scratch)
            #expect(result.status == 0, "\(result.stderr)")
            for text in ["RoCE v2", "--rdma-device", "--rdma-gid-index", "Exit status: 0 when a usable port and GID exist", "NVFP4_LIBIBVERBS",
                         "--peer <HOST:PORT>", "--peer-name", "--token-file", "workerd checks every byte"] {
                #expect(result.stdout.contains(text), "missing \(text): \(result.stdout)")
            }
            #expect(!result.stdout.contains("Not built yet"), "\(result.stdout)")
        }
    }

    /// --peer on a node without a device: said before anyone is contacted (the token file is not even read). The
    /// connection options may come first, as for the other client commands.
    @Test(arguments: [["doctor", "rdma", "--peer", "127.0.0.1:9", "--token-file", "/nonexistent/nvfp4-test/token"],
                      ["--token-file", "/nonexistent/nvfp4-test/token", "doctor", "rdma", "--peer", "127.0.0.1:9"]])
    func peerWithoutADeviceHereContactsNoOneAndExitsNonZero(arguments: [String]) throws {
        try withTemporaryDirectory("doctor-rdma") { scratch in
            let result = try Coordctl.run(arguments, in: scratch,
                                          environment: ["NVFP4_LIBIBVERBS": "/nonexistent/nvfp4-test/libibverbs.so.1"])
            #expect(result.status == 1, "stdout: \(result.stdout) stderr: \(result.stderr)")
            let lines = result.stdout.split(separator: "\n").map(String.init)
            #expect(lines.last == "peer RDMA WRITE test with 127.0.0.1:9: not run: this node has no usable verbs device (see above); "
                    + "workerd at 127.0.0.1:9 was not contacted", "\(result.stdout)")
            #expect(!result.stderr.contains("token"), "\(result.stderr)")
        }
    }
}
