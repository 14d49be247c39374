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
struct DoctorRDMA: ParsableCommand {
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
            --rdma-gid-index, or the reason none is usable.

            Exit status: 0 when a usable port and GID exist, 1 otherwise (no library, no device, no ACTIVE port, \
            no RoCE v2 GID).

            Not built yet: the loopback RDMA WRITE bandwidth and latency test, and --peer. This build has no RDMA \
            data plane; worker-to-worker links run over TCP.
            """)

    @Option(name: .long, help: ArgumentHelp("Check this device, as workerd --rdma-device would (default: the first with an ACTIVE port).", valueName: "NAME"))
    var rdmaDevice: String?

    @Option(name: .long, help: ArgumentHelp("Check this GID index, as workerd --rdma-gid-index would.", valueName: "N"))
    var rdmaGidIndex: Int?

    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        if let rdmaGidIndex, rdmaGidIndex < 0 {
            throw ValidationError("--rdma-gid-index \(rdmaGidIndex): a GID index is 0 or more")
        }
    }

    func run() throws {
        logging.bootstrap(defaultLevel: .warning)
        let survey = RDMASurvey.take(logger: Logger(label: "coordctl.doctor.rdma"))
        let report = RDMADoctorReport(survey: survey, device: rdmaDevice, gidIndex: rdmaGidIndex)
        print(report.text)
        if !report.isUsable { throw ExitCode(1) }
    }
}
