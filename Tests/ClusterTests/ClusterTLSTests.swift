import Foundation
import Testing

/// The cluster over mutual TLS on loopback, set up as the two-node guide says: `coordctl certs`, then every daemon
/// and coordctl with `--tls-cert/--tls-key/--tls-ca`.
@Suite(.serialized) struct ClusterTLSTests {
    @Test func aClusterOverMutualTLSWritesTheSameBytesAndRefusesWhoeverLacksTheRightCertificate() throws {
        try withTemporaryDirectory("cluster-tls") { directory in
            let reference = try embeddedReference(in: directory)
            let cluster = LocalCluster(directory: directory, token: nil)
            defer { cluster.stopAll() }
            try cluster.makeCertificates(for: ["w1", "w2", "w3"])
            try cluster.startCoordinator()
            try cluster.startWorker("w1")
            try cluster.startWorker("w2")
            try cluster.waitForWorkers(["w1", "w2"])

            let output = directory.appendingPathComponent("tls-out")
            let submitted = try cluster.coordctl(tinySubmitArguments(output: output, extra: ["--split", "1,1"]))
            #expect(submitted.status == 0, "submit: \(submitted.stderr)")
            let job = try #require(submitted.stdout.split(separator: "\n").last.map(String.init))
            let status = try cluster.waitForEnd(job)
            #expect(status["state"] as? String == "succeeded", "status: \(status)\n\(cluster.coordd!.output)")
            try expectIdenticalDirectories(reference, output)

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
}
