import ArgumentParser
import ClusterCertificates
import Foundation

/// `coordctl certs`: the cluster's own CA and node certificates for mutual TLS.
public struct Certs: ParsableCommand {
    public init() {}

    public static let configuration = CommandConfiguration(
        abstract: "Make the cluster's CA and node certificates for mutual TLS (--tls-cert/--tls-key/--tls-ca).",
        discussion: """
            Every connection between coordd, workerd and coordctl is mutual TLS 1.3 once they are given a \
            certificate, its key and the cluster CA. A node's identity is the name in its certificate: a worker \
            registers under that name, and a peer claiming another name is refused.

              coordctl certs init  --dir /etc/nvfp4cluster/tls
              coordctl certs issue --dir /etc/nvfp4cluster/tls --name coordinator
              coordctl certs issue --dir /etc/nvfp4cluster/tls --name spark-a
              coordctl certs issue --dir /etc/nvfp4cluster/tls --name spark-b
              coordctl certs issue --dir /etc/nvfp4cluster/tls --name admin      (for coordctl)

            Copy ca.pem and each node's NAME.pem and NAME-key.pem to that node; ca-key.pem stays with whoever \
            issues certificates. Keys are written with mode 600, and no existing file is ever overwritten.
            """,
        subcommands: [Init.self, Issue.self])

    public struct Init: ParsableCommand {
        public init() {}
        public static let configuration = CommandConfiguration(
            abstract: "Make a cluster CA: DIR/ca.pem and DIR/ca-key.pem (mode 600), valid for 10 years.")

        @Option(name: .long, help: "Directory for the CA files (created if missing).")
        var dir: String

        public func run() throws {
            let directory = URL(fileURLWithPath: dir)
            try ClusterCertificateAuthority.initialize(directory: directory)
            print("wrote \(ClusterCertificateAuthority.caCertificatePath(in: directory).path) and "
                  + "\(ClusterCertificateAuthority.caKeyPath(in: directory).path) (keep the key private)")
        }
    }

    public struct Issue: ParsableCommand {
        public init() {}
        public static let configuration = CommandConfiguration(
            abstract: "Issue a node certificate signed by the CA in DIR: DIR/NAME.pem and DIR/NAME-key.pem (mode 600).")

        @Option(name: .long, help: "Directory holding ca.pem and ca-key.pem.")
        var dir: String

        @Option(name: .long, help: "The node's name (a DNS label such as spark-a): its identity in the cluster.")
        var name: String

        public func run() throws {
            let directory = URL(fileURLWithPath: dir)
            try ClusterCertificateAuthority.issue(directory: directory, name: name)
            print("wrote \(ClusterCertificateAuthority.certificatePath(in: directory, name: name).path) and "
                  + "\(ClusterCertificateAuthority.keyPath(in: directory, name: name).path); give them to node \(name) "
                  + "with --tls-cert, --tls-key and --tls-ca \(ClusterCertificateAuthority.caCertificatePath(in: directory).path)")
        }
    }
}
