import ClusterCertificates
import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import Testing
@testable import Transport

/// Mutual TLS 1.3 on every connection: certificates from `coordctl certs`, identities bound to certificate names,
/// and the rules for listening beyond loopback.
@Suite("Mutual TLS") struct TLSTests {
    /// A cluster CA in a fresh directory with certificates for `names`; removed afterwards.
    static func withCluster<T>(_ names: [String], _ body: (URL) async throws -> T) async throws -> T {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tls-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: directory) }
        try ClusterCertificateAuthority.initialize(directory: directory)
        for name in names { try ClusterCertificateAuthority.issue(directory: directory, name: name) }
        return try await body(directory)
    }

    static func tls(_ directory: URL, _ name: String, ca: URL? = nil) throws -> TransportTLS {
        try TransportTLS(certificateFile: directory.appendingPathComponent("\(name).pem").path,
                         keyFile: directory.appendingPathComponent("\(name)-key.pem").path,
                         caFile: (ca ?? directory).appendingPathComponent("ca.pem").path)
    }

    static func configuration(_ tls: TransportTLS) -> TransportConfiguration {
        var configuration = fastConfiguration()
        configuration.tls = tls
        return configuration
    }

    static let quiet = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

    @Test func certsInitAndIssueWriteNamedCertificatesAndPrivateKeysNeverOverwriting() async throws {
        try await Self.withCluster(["spark-a"]) { directory in
            for file in ["ca-key.pem", "spark-a-key.pem"] {
                let mode = try FileManager.default.attributesOfItem(atPath: directory.appendingPathComponent(file).path)[.posixPermissions] as? Int
                #expect(mode == 0o600, "\(file) has mode \(String(mode ?? 0, radix: 8))")
            }
            #expect(try Self.tls(directory, "spark-a").name == "spark-a")
            #expect(throws: CertificateToolError.fileExists(path: directory.appendingPathComponent("spark-a.pem").path)) {
                try ClusterCertificateAuthority.issue(directory: directory, name: "spark-a")
            }
            #expect(throws: CertificateToolError.self) { try ClusterCertificateAuthority.initialize(directory: directory) }
            #expect(throws: CertificateToolError.self) { try ClusterCertificateAuthority.issue(directory: directory, name: "a b") }
        }
    }

    @Test func peersWithCertificatesOfTheClusterCAConnectAndCallThroughTLS13() async throws {
        try await Self.withCluster(["coord", "w1"]) { directory in
            let server = try await TransportServer.bind(
                host: "127.0.0.1", port: 0, identity: NodeIdentity(name: "coord", role: .coordinator), token: nil,
                configuration: Self.configuration(try Self.tls(directory, "coord")), logger: Self.quiet)
            let serving = Task { await server.serve(with: ClosureHandler()) }
            defer { serving.cancel() }
            let connection = try await PeerConnection.connect(
                host: "127.0.0.1", port: server.port, identity: NodeIdentity(name: "w1", role: .worker), token: nil,
                expectedPeer: "coord", configuration: Self.configuration(try Self.tls(directory, "w1")), logger: Self.quiet)
            #expect(connection.peer.name == "coord")
            #expect(try await connection.call(type: 1, payload: ByteBuffer(string: "over TLS")) == ByteBuffer(string: "over TLS"))
            let version = try await connection.channel.eventLoop.submit {
                try connection.channel.pipeline.syncOperations.handler(type: NIOSSLHandler.self).tlsVersion
            }.get()
            #expect(version == .tlsv13)
            await connection.close()
            await server.close()
        }
    }

    @Test func aCertificateOfAnotherCAIsRefusedAndTheServerKeepsServing() async throws {
        try await Self.withCluster(["coord", "w1"]) { directory in
            try await Self.withCluster(["w1"]) { stranger in
                let server = try await TransportServer.bind(
                    host: "127.0.0.1", port: 0, identity: NodeIdentity(name: "coord", role: .coordinator), token: nil,
                    configuration: Self.configuration(try Self.tls(directory, "coord")), logger: Self.quiet)
                let serving = Task { await server.serve(with: ClosureHandler()) }
                defer { serving.cancel() }
                // The stranger's own CA does not know coord's certificate either; use the cluster CA to dial, so the
                // refusal shown is the server's.
                await #expect(throws: (any Error).self) {
                    _ = try await PeerConnection.connect(
                        host: "127.0.0.1", port: server.port, identity: NodeIdentity(name: "w1", role: .worker), token: nil,
                        configuration: Self.configuration(try Self.tls(stranger, "w1", ca: directory)), logger: Self.quiet)
                }
                let good = try await PeerConnection.connect(
                    host: "127.0.0.1", port: server.port, identity: NodeIdentity(name: "w1", role: .worker), token: nil,
                    configuration: Self.configuration(try Self.tls(directory, "w1")), logger: Self.quiet)
                #expect(try await good.call(type: 1, payload: ByteBuffer(string: "x")) == ByteBuffer(string: "x"))
                await good.close()
                await server.close()
            }
        }
    }

    @Test func aNodeCannotClaimANameItsCertificateDoesNotCarry() async throws {
        try await Self.withCluster(["coord", "w1", "w2"]) { directory in
            // Locally: a node named w1 with w2's certificate does not start.
            #expect(throws: TransportError.self) {
                try Self.configuration(try Self.tls(directory, "w2")).checkLocalIdentity(NodeIdentity(name: "w1", role: .worker))
            }
            let logs = LogRecorder()
            let server = try await TransportServer.bind(
                host: "127.0.0.1", port: 0, identity: NodeIdentity(name: "coord", role: .coordinator), token: nil,
                configuration: Self.configuration(try Self.tls(directory, "coord")), logger: logs.logger("server"))
            let serving = Task { await server.serve(with: ClosureHandler()) }
            defer { serving.cancel() }
            // On the wire: a client holding w2's certificate whose handshake says "w1" gets REJECT naming both.
            let authPromise = MultiThreadedEventLoopGroup.singleton.next().makePromise(of: AuthenticatedPeer.self)
            let liar = Self.configuration(try Self.tls(directory, "w2"))
            let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                .channelInitializer { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try installPipeline(on: channel, side: .client, identity: NodeIdentity(name: "w1", role: .worker),
                                            token: nil, configuration: liar, logger: Self.quiet, authPromise: authPromise)
                    }
                }
                .connect(host: "127.0.0.1", port: server.port).get()
            await #expect(throws: TransportError.self) { _ = try await authPromise.futureResult.get() }
            try? await channel.closeFuture.get()
            #expect(logs.contains("its certificate is for 'w2' but it calls itself 'w1'"), "\(logs.all)")
            await server.close()
        }
    }

    @Test func aDialerThatExpectsAnotherNodeRefusesTheAnswer() async throws {
        try await Self.withCluster(["coord", "w1"]) { directory in
            let server = try await TransportServer.bind(
                host: "127.0.0.1", port: 0, identity: NodeIdentity(name: "coord", role: .coordinator), token: nil,
                configuration: Self.configuration(try Self.tls(directory, "coord")), logger: Self.quiet)
            let serving = Task { await server.serve(with: ClosureHandler()) }
            defer { serving.cancel() }
            await #expect(throws: TransportError.unexpectedPeer(address: "127.0.0.1:\(server.port)", expected: "w9", found: "coord")) {
                _ = try await PeerConnection.connect(
                    host: "127.0.0.1", port: server.port, identity: NodeIdentity(name: "w1", role: .worker), token: nil,
                    expectedPeer: "w9", configuration: Self.configuration(try Self.tls(directory, "w1")), logger: Self.quiet)
            }
            await server.close()
        }
    }

    @Test func beyondLoopbackATokenAloneNeedsInsecureTokenOnlyAndNothingAtAllIsNeverDialed() async throws {
        let logs = LogRecorder()
        await #expect(throws: TransportError.self) {
            _ = try await TransportServer.bind(host: "0.0.0.0", port: 0, identity: coordinator, token: token(correctToken),
                                               configuration: fastConfiguration(), logger: logs.logger("server"))
        }
        #expect(logs.contains("refusing to listen on"))
        var insecure = fastConfiguration()
        insecure.allowTokenOnlyBeyondLoopback = true
        let server = try await TransportServer.bind(host: "0.0.0.0", port: 0, identity: coordinator, token: token(correctToken),
                                                    configuration: insecure, logger: logs.logger("server"))
        #expect(logs.contains("--insecure-token-only"))
        await server.close()
        // A node with neither TLS nor a token dials loopback only.
        await #expect(throws: TransportError.self) {
            _ = try await PeerConnection.connect(host: "192.0.2.1", port: 7070, identity: worker, token: nil,
                                                 configuration: fastConfiguration(), logger: Self.quiet)
        }
    }
}
