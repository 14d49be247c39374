import ArgumentParser
import CommandLineOptions
import Foundation
import Logging
import RDMATransport

/// `coordctl doctor`: checks of this node's setup that need no cluster.
struct Doctor: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Check this node's setup (no cluster needed).",
        subcommands: [DoctorRDMA.self])
}

/// `coordctl doctor rdma`: what RDMA verbs this node offers, as workerd's `--transport` would see it.
struct DoctorRDMA: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rdma",
        abstract: "List this node's RDMA verbs devices, ports, link states, MTUs and GIDs (RoCE v2 marked).",
        discussion: """
            Loads libibverbs at run time (libibverbs1 with ibverbs-providers on Debian/Ubuntu; NVFP4_LIBIBVERBS=PATH \
            names another file) and reports, in order: whether the library loads; whether the kernel lists any \
            verbs device; for each device its firmware and ports; for each port its state (ACTIVE is needed), \
            physical state, link layer (Ethernet for RoCE), active and maximum MTU, line rate, and every populated \
            GID with its type and network interface. RoCE v2 GIDs (read from \
            /sys/class/infiniband/DEV/ports/N/gid_attrs/types) are marked: two nodes joined by Ethernet need one, \
            usually the IPv4-mapped GID of the interface's address.

            It ends with the port and GID that `workerd --transport rdma` would pick with the same --rdma-device and \
            --rdma-gid-index, or the reason none is usable, and then runs the loopback test on that port: two RC \
            queue pairs on the device, connected to each other, exchange --loopback-mib MiB of tensors by RDMA WRITE \
            with immediate through the same code workers use, every byte checked; it prints the bandwidth against \
            the port's line rate and the median round trip of a 64-byte tensor and its acknowledgement.

            Exit status: 0 when a usable port and GID exist and the loopback passed, 1 otherwise (no library, no \
            device, no ACTIVE port, no RoCE v2 GID, loopback failed).

            Not built yet: --peer (the same test between two nodes through workerd). The RDMA data plane has been \
            tested only against an in-process fake of the verbs interface, never on RDMA hardware.
            """)

    @Option(name: .long, help: ArgumentHelp("Check this device, as workerd --rdma-device would (default: the first with an ACTIVE port).", valueName: "NAME"))
    var rdmaDevice: String?

    @Option(name: .long, help: ArgumentHelp("Check this GID index, as workerd --rdma-gid-index would.", valueName: "N"))
    var rdmaGidIndex: Int?

    @Option(name: .long, help: ArgumentHelp("Bytes for the loopback bandwidth test, in MiB (0 skips the loopback).", valueName: "MiB"))
    var loopbackMib: Int = 1024

    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        if let rdmaGidIndex, rdmaGidIndex < 0 {
            throw ValidationError("--rdma-gid-index \(rdmaGidIndex): a GID index is 0 or more")
        }
        guard (0...(1 << 20)).contains(loopbackMib) else {
            throw ValidationError("--loopback-mib \(loopbackMib): give 0 (no loopback) to 1048576 MiB")
        }
    }

    func run() async throws {
        logging.bootstrap(defaultLevel: .warning)
        let logger = Logger(label: "coordctl.doctor.rdma")
        let survey = RDMASurvey.take(logger: logger)
        var report = RDMADoctorReport(survey: survey, device: rdmaDevice, gidIndex: rdmaGidIndex)
        if report.isUsable, loopbackMib > 0, let provider = try? VerbsLibraryLocator().open() {
            // 64 MiB tensors, as many as the requested total holds (at least one).
            let tensorBytes = min(64, loopbackMib) << 20
            await report.runLoopback(provider: provider,
                                     test: RDMALoopbackTest(tensorBytes: tensorBytes,
                                                            tensorCount: max(1, (loopbackMib << 20) / tensorBytes)),
                                     logger: logger)
        }
        print(report.text)
        if !report.isUsable || report.loopbackFailed { throw ExitCode(1) }
    }
}
