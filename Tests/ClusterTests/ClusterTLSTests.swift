import Foundation
import Logging
import NIOCore
import Testing
import Transport

/// The cluster over mutual TLS on loopback, set up as the two-node guide says: `coordctl certs`, then every daemon
/// and coordctl with `--tls-cert/--tls-key/--tls-ca`.
@Suite(.serialized) struct ClusterTLSTests {
    @Test func aClusterOverMutualTLSWritesTheSameBytesAndRefusesWhoeverLacksTheRightCertificate() throws {
        try withTemporaryDirectory("cluster-tls") { directory in
            let reference = try embeddedReference(in: directory)
            let cluster = LocalCluster(directory: directory, token: nil)
            defer { cluster.stopAll() }
            try cluster.makeCertificates(for: ["w1", "w2", "w3"])
            try cluster.startCoordinator(extra: ["--metrics-listen", "127.0.0.1:0"])
            let metrics = try cluster.coordd!.listenAddress(marker: "metrics listening")
            try cluster.startWorker("w1")
            try cluster.startWorker("w2")
            try cluster.waitForWorkers(["w1", "w2"])

            try cluster.runTinyTwoWorkerJob(output: directory.appendingPathComponent("tls-out"), reference: reference)
            // The exported tensors crossed TLS without a SHA-256 of their own (and the bytes above are the reference's).
            for name in ["w1", "w2"] {
                let log = cluster.workers[name]?.output ?? ""
                #expect(log.contains("exported layer") && log.contains("(no SHA-256: TLS)") && !log.contains("pack and hash"), "\(log)")
            }

            // coordctl without a certificate cannot reach coordd.
            let plain = try run(try Binaries.url("coordctl"), ["list", "--coordinator", cluster.coordinatorAddress, "--timeout", "5"],
                                in: directory)
            #expect(plain.status != 0)
            // A workerd whose --name is not its certificate's does not start, and says why.
            let liar = try run(try Binaries.url("workerd"),
                               ["--coordinator", cluster.coordinatorAddress, "--name", "w9"] + cluster.tlsArguments("w3"),
                               in: directory)
            #expect(liar.status != 0)
            #expect(liar.stderr.contains("certificate") && liar.stderr.contains("w3"), "\(liar.stderr)")
            // A dialer checks who answers: coordd is "coordinator", not "w1".
            let wrongName = try run(try Binaries.url("coordctl"),
                                    ["list", "--coordinator", cluster.coordinatorAddress, "--coordinator-name", "w1"]
                                        + cluster.tlsArguments("admin"), in: directory)
            #expect(wrongName.status != 0)
            #expect(wrongName.stderr.contains("is 'coordinator', not coordd ('w1')"), "\(wrongName.stderr)")
            // The cluster carries on.
            #expect(try cluster.coordctl(["workers", "--json"]).status == 0)
            // coordd counted the client without a certificate as a failed TLS handshake, and the dialer that hung up
            // on it (wrong name) as a connection closed mid-handshake.
            let scrape = try Scrape(address: metrics)
            #expect(scrape.value("nvfp4_transport_authentication_failures_total", ["reason": "tls_handshake"]) == 1,
                    "\(scrape.samples.filter { $0.name.hasPrefix("nvfp4_transport") })")
            #expect(scrape.value("nvfp4_transport_authentication_failures_total", ["reason": "token_mismatch"]) == 0)
            #expect((scrape.value("nvfp4_transport_connection_failures_total", ["reason": "closed_during_handshake"]) ?? 0) >= 1)
        }
    }

    /// Names are identities: a second workerd under a live worker's name is refused and cannot mark it dead, and
    /// neither can a coordctl holding that worker's certificate.
    @Test func aSecondNodeUnderALiveWorkersNameIsRefusedAndCannotMarkItDead() throws {
        try withTemporaryDirectory("cluster-names") { directory in
            let cluster = LocalCluster(directory: directory, token: nil)
            defer { cluster.stopAll() }
            try cluster.makeCertificates(for: ["w1"])
            try cluster.startCoordinator()
            let original = try cluster.startWorker("w1")
            try cluster.waitForWorkers(["w1"])

            let impostor = try Daemon(name: "w1-again", executable: try Binaries.url("workerd"),
                                      arguments: ["--coordinator", cluster.coordinatorAddress, "--listen", "127.0.0.1:0",
                                                  "--scratch", directory.appendingPathComponent("scratch-again").path]
                                                  + cluster.tlsArguments("w1"),
                                      directory: directory)
            try impostor.waitForLog("already registered and alive")
            impostor.kill()
            // A client-role connection made with w1's certificate comes and goes.
            let asClient = try run(try Binaries.url("coordctl"),
                                   ["list", "--coordinator", cluster.coordinatorAddress] + cluster.tlsArguments("w1"),
                                   in: directory)
            #expect(asClient.status == 0, "\(asClient.stderr)")
            Thread.sleep(forTimeInterval: 1)
            try cluster.waitForWorkers(["w1"], timeout: 5)
            #expect(original.isRunning)
            #expect(cluster.coordd!.output.contains("refused a second live registration"))
        }
    }

    /// A node with a valid certificate that is not the planned predecessor streams "hidden states" at w2 mid-job,
    /// among them an id with bit 63 set (which once trapped): w2 refuses them before collecting a byte, stays up, and
    /// the job ends with the bytes of an undisturbed run.
    @Test func hiddenStatesFromANodeThatIsNotThePredecessorAreRefusedAndTheJobIsUnaffected() async throws {
        try await withTemporaryDirectory("cluster-intruder") { directory in
            let reference = try embeddedReference(in: directory, extra: ClusterFaultTests.chunking)
            let cluster = LocalCluster(directory: directory, token: nil)
            defer { cluster.stopAll() }
            try cluster.makeCertificates(for: ["w1", "w2", "w3"])
            try cluster.startCoordinator()
            try cluster.startWorker("w1", extra: ClusterFaultTests.slow)
            let w2 = try cluster.startWorker("w2", extra: ClusterFaultTests.slow)
            try cluster.waitForWorkers(["w1", "w2"])
            let w2Address = try w2.listenAddress(marker: "workerd listening")
            let output = directory.appendingPathComponent("out")
            let submitted = try cluster.coordctl(tinySubmitArguments(output: output,
                                                                     extra: ["--split", "1,1"] + ClusterFaultTests.chunking))
            let job = try #require(submitted.stdout.split(separator: "\n").last.map(String.init), "\(submitted.stderr)")
            try waitUntil { (try cluster.status(job)["phase"] as? String) == "calibrating" }

            var configuration = TransportConfiguration()
            let tls = try #require(cluster.tlsDirectory)
            configuration.tls = try TransportTLS(certificateFile: tls.appendingPathComponent("w3.pem").path,
                                                 keyFile: tls.appendingPathComponent("w3-key.pem").path,
                                                 caFile: tls.appendingPathComponent("ca.pem").path)
            let colon = try #require(w2Address.lastIndex(of: ":"))
            for id in [UInt64(1) << 63 | 1, 0] {
                let connection = try await PeerConnection.connect(
                    host: String(w2Address[..<colon]), port: Int(w2Address[w2Address.index(after: colon)...])!,
                    identity: NodeIdentity(name: "w3", role: .worker), token: nil, purpose: .bulk,
                    configuration: configuration, logger: Logger(label: "intruder", factory: { _ in SwiftLogNoOpLogHandler() }))
                let forged = ByteBuffer(repeating: 0x41, count: 64 << 10)
                try? await TCPActivationTransport(connection: connection).sendTensor(id: id, chunks: [forged])
                await connection.waitUntilClosed()
            }
            let status = try cluster.waitForEnd(job, timeout: 180)
            #expect(status["state"] as? String == "succeeded", "status: \(status)")
            try expectIdenticalDirectories(reference, output)
            #expect(w2.isRunning)
            #expect(w2.output.contains("w3 is not due to send this tensor here"), "\(w2.output.suffix(2000))")
        }
    }
}
