import Foundation
import NetworkTestSupport
import Testing

/// The data path between two workers, with a proxy on it: w2 advertises the proxy's address, so w1's hidden states
/// (and coordd's calls to w2) cross it. The proxy tampers with the stream, or cuts it for a while.
@Suite(.serialized) struct ClusterLinkTests {
    /// Starts coordd and w1, then w2 behind `proxy`; returns the cluster, ready for a job.
    static func clusterWithProxiedW2(_ directory: URL, proxy: TamperingProxy, tls: Bool,
                                     w1Extra: [String] = []) async throws -> LocalCluster {
        let cluster = LocalCluster(directory: directory,
                                   token: tls ? nil : try writeToken("link-test-token-0123456789abcdef", in: directory))
        if tls { try cluster.makeCertificates(for: ["w1", "w2"]) }
        try cluster.startCoordinator()
        let w2Port = try freeLoopbackPort()
        try await proxy.start(upstreamPort: w2Port)
        try cluster.startWorker("w1", extra: ClusterFaultTests.slow + w1Extra)
        try cluster.startWorker("w2", listen: "127.0.0.1:\(w2Port)",
                                extra: ClusterFaultTests.slow + ["--advertise", "127.0.0.1:\(proxy.port)"])
        try cluster.waitForWorkers(["w1", "w2"])
        return cluster
    }

    /// Submits the tiny model, one layer per worker, a chunk per sample; returns the job id.
    static func submit(_ cluster: LocalCluster, output: URL) throws -> String {
        let submitted = try cluster.coordctl(tinySubmitArguments(output: output, extra: ["--split", "1,1"] + ClusterFaultTests.chunking))
        return try #require(submitted.stdout.split(separator: "\n").last.map(String.init), "\(submitted.stderr)")
    }

    static func waitForSamplesThroughW2(_ cluster: LocalCluster, job: String, count: Int) throws {
        try waitUntil(timeout: 60) {
            let through = try cluster.status(job)["samples_through"] as? [String: Int]
            return (through?["1-1"] ?? 0) >= count
        }
    }

    /// An attacker flips one bit of w1's hidden states in flight. TLS refuses the record, w2 closes the data path
    /// naming an integrity failure, w1 dials again and resends the chunk, and the output is that of an undisturbed run.
    @Test func aBitFlippedInTheHiddenStatesBetweenWorkersIsRefusedAndTheOutputIsUnaffected() async throws {
        try await withTemporaryDirectory("link-tamper") { directory in
            let reference = try embeddedReference(in: directory, extra: ClusterFaultTests.chunking)
            let proxy = TamperingProxy()
            // Past the TLS handshake and anything coordd sends w2 (a few KiB of calls): inside w1's hidden states.
            proxy.flipClientByte(atConnectionOffset: 60_000)
            let cluster = try await Self.clusterWithProxiedW2(directory, proxy: proxy, tls: true)
            defer { cluster.stopAll() }
            let output = directory.appendingPathComponent("out")
            let job = try Self.submit(cluster, output: output)

            let status = try cluster.waitForEnd(job, timeout: 180)
            #expect(status["state"] as? String == "succeeded", "status: \(status)")
            try expectIdenticalDirectories(reference, output)
            #expect(proxy.flipped, "the tampered offset was never reached; the test proves nothing")
            let w2Log = cluster.workers["w2"]!.output
            let w1Log = cluster.workers["w1"]!.output
            #expect(w2Log.contains("integrity check failed"), "\(w2Log.suffix(3000))")
            #expect(w1Log.contains("dialing again") && w1Log.contains("is back"), "\(w1Log.suffix(3000))")
            // The proxy's log of the run: coordd's calls to w2 name the model's path, and none of it is in the clear.
            #expect(proxy.bytesSeen.count > 100_000)
            #expect(!contains(proxy.bytesSeen, Array(Fixtures.tinyLlama.path.utf8)))
            await proxy.stop()
        }
    }

    /// The link between the workers drops for 3 s in mid-calibration: w1 dials again with backoff, resends, and the
    /// job completes with the bytes of an uninterrupted run, with both workers keeping their ranges.
    @Test func aPartitionBetweenWorkersThatHealsWithinTheLinkTimeoutLeavesTheOutputUnchanged() async throws {
        try await withTemporaryDirectory("link-heal") { directory in
            let reference = try embeddedReference(in: directory, extra: ClusterFaultTests.chunking)
            let proxy = TamperingProxy()
            let cluster = try await Self.clusterWithProxiedW2(directory, proxy: proxy, tls: false)
            defer { cluster.stopAll() }
            let output = directory.appendingPathComponent("out")
            let job = try Self.submit(cluster, output: output)
            try Self.waitForSamplesThroughW2(cluster, job: job, count: 2)
            proxy.partition(for: .seconds(3))

            let status = try cluster.waitForEnd(job, timeout: 180)
            #expect(status["state"] as? String == "succeeded", "status: \(status)")
            try expectIdenticalDirectories(reference, output)
            let w1Log = cluster.workers["w1"]!.output
            #expect(w1Log.contains("dialing again") && w1Log.contains("is back"), "\(w1Log.suffix(3000))")
            #expect(!cluster.coordd!.output.contains("re-plan"), "a healed link needs no re-plan")
            // Token-only mode is plaintext: the same check as in the TLS test finds the model's path on the path.
            #expect(contains(proxy.bytesSeen, Array(Fixtures.tinyLlama.path.utf8)))
            await proxy.stop()
        }
    }

    /// The link stays down past w1's `--link-timeout`: coordd re-plans w2's layer onto w1 at once (w2 is alive,
    /// so there is nothing to wait for), and the job completes with the same bytes.
    @Test func aPartitionThatOutlastsTheLinkTimeoutIsReplannedAroundWithTheSameBytes() async throws {
        try await withTemporaryDirectory("link-down") { directory in
            let reference = try embeddedReference(in: directory, extra: ClusterFaultTests.chunking)
            let proxy = TamperingProxy()
            let cluster = try await Self.clusterWithProxiedW2(directory, proxy: proxy, tls: false,
                                                              w1Extra: ["--link-timeout", "2"])
            defer { cluster.stopAll() }
            let output = directory.appendingPathComponent("out")
            let job = try Self.submit(cluster, output: output)
            try Self.waitForSamplesThroughW2(cluster, job: job, count: 2)
            proxy.partition(for: .seconds(600))

            let status = try cluster.waitForEnd(job, timeout: 180)
            #expect(status["state"] as? String == "succeeded", "status: \(status)\n\(cluster.coordd!.output.suffix(3000))")
            try expectIdenticalDirectories(reference, output)
            let coorddLog = cluster.coordd!.output
            #expect(coorddLog.contains("w2 cannot be reached from w1, the previous range: re-planning without w2"),
                    "\(coorddLog.suffix(3000))")
            #expect(coorddLog.contains("re-planned: w1 0..<2"), "\(coorddLog.suffix(3000))")
            await proxy.stop()
        }
    }
}

/// Whether `needle` occurs in `haystack`.
func contains(_ haystack: [UInt8], _ needle: [UInt8]) -> Bool {
    guard !needle.isEmpty, haystack.count >= needle.count else { return false }
    return (0...(haystack.count - needle.count)).contains { start in
        haystack[start] == needle[0] && Array(haystack[start..<(start + needle.count)]) == needle
    }
}
