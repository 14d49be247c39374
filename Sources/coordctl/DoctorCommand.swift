import ArgumentParser
import ClusterProtocol
import CommandLineOptions
import Foundation
import Logging
import RDMATransport
import Worker

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
        abstract: "List this node's RDMA verbs devices, ports, link states, MTUs and GIDs (RoCE v2 marked), and test them.",
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

            With --peer HOST:PORT it then runs the same test between this node and the workerd listening there: \
            over the cluster's authenticated control connection (--token-file, and --tls-cert/--tls-key/--tls-ca \
            where the cluster uses TLS, as for the other commands; --peer-name makes workerd prove its name) \
            workerd sets up a queue pair and receive ring on the device its links use, the two sides exchange \
            their connection information, --peer-mib MiB of tensors cross by RDMA WRITE with immediate, workerd \
            checks every byte and acknowledges each tensor, and both sides tear down. It prints the bandwidth \
            against this port's line rate and the median round trip. Without a usable device here nothing is \
            contacted. workerd refuses, saying why, when its links run on TCP (--transport tcp, or no usable port \
            under auto), and runs one such test at a time.

            Exit status: 0 when a usable port and GID exist and the loopback (and with --peer, the peer test) \
            passed, 1 otherwise (no library, no device, no ACTIVE port, no RoCE v2 GID, a test failed or was \
            refused).

            The RDMA data plane, loopback and peer tests included, has been tested only against an in-process \
            fake of the verbs interface, never on RDMA hardware.
            """)

    @Option(name: .long, help: ArgumentHelp("Check this device, as workerd --rdma-device would (default: the first with an ACTIVE port).", valueName: "NAME"))
    var rdmaDevice: String?

    @Option(name: .long, help: ArgumentHelp("Check this GID index, as workerd --rdma-gid-index would.", valueName: "N"))
    var rdmaGidIndex: Int?

    @Option(name: .long, help: ArgumentHelp("Bytes for the loopback bandwidth test, in MiB (0 skips the loopback).", valueName: "MiB"))
    var loopbackMib: Int = 1024

    @Option(name: .long, help: ArgumentHelp("Also run the test with the workerd listening at this address (its --listen or --advertise).", valueName: "HOST:PORT"))
    var peer: String?

    @Option(name: .long, help: ArgumentHelp("The node name workerd at --peer must prove (its certificate's name with TLS; default: any).", valueName: "NAME"))
    var peerName: String?

    @Option(name: .long, help: ArgumentHelp("Bytes for the peer test, in MiB.", valueName: "MiB"))
    var peerMib: Int = 1024

    @Option(name: .long, help: "Seconds to wait for each of workerd's answers (--peer).")
    var timeout: Double = 60

    @OptionGroup var token: TokenOptions

    @OptionGroup var tls: TLSOptions

    @OptionGroup var logging: LoggingOptions

    func validate() throws {
        if let peer {
            do { _ = try NodeAddress(parsing: peer) } catch { throw ValidationError("--peer \(peer): \(error)") }
        }
        guard (1...(1 << 16)).contains(peerMib) else {
            throw ValidationError("--peer-mib \(peerMib): give 1 to 65536 MiB")
        }
        guard timeout > 0 else { throw ValidationError("--timeout \(timeout): must be more than 0 seconds") }
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
        if let peer {
            let address = try NodeAddress(parsing: peer)
            let tensorBytes = min(64, peerMib) << 20
            let test = RDMAPeerTest(traffic: RDMATestTraffic(tensorBytes: tensorBytes,
                                                             tensorCount: max(1, (peerMib << 20) / tensorBytes),
                                                             latencyRounds: 100),
                                    timeLimitSeconds: 600)
            var client: RDMAPeerTestClient?
            await report.runPeerTest(peer: address.description, provider: { () throws(VerbsError) in try VerbsLibraryLocator().open() },
                                     test: test, control: {
                let made = RDMAPeerTestClient(address: address, nodeName: peerName, token: try token.loadToken(),
                                              tls: try tls.loadTLS(), callTimeout: .milliseconds(Int64(timeout * 1000)))
                client = made
                return made
            }, logger: logger)
            await client?.shutdown()
        }
        print(report.text)
        if !report.isUsable || report.loopbackFailed || report.peerTestFailed { throw ExitCode(1) }
    }
}
