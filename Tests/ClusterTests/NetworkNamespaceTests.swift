import Foundation
import Testing

/// coordd and each worker in its own network namespace, joined by veth pairs to a bridge in a fourth one: the
/// cluster works over real interfaces with non-loopback addresses, so nothing depends on loopback.
/// Needs root and iproute2 (`ip netns`); skipped elsewhere.
@Suite(.serialized) struct NetworkNamespaceTests {
    static let namespaces = ["nvfc-hub", "nvfc-c", "nvfc-w1", "nvfc-w2"]

    static var available: Bool {
        guard getuid() == 0, FileManager.default.isExecutableFile(atPath: "/usr/sbin/ip") else { return false }
        let probe = "nvfc-probe-\(getpid())"
        guard (try? ip(["netns", "add", probe])) == true else { return false }
        _ = try? ip(["netns", "del", probe])
        return true
    }

    @discardableResult
    static func ip(_ arguments: [String]) throws -> Bool {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/sbin/ip")
        process.arguments = arguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        return process.terminationStatus == 0
    }

    static func require(_ arguments: [String]) throws {
        guard try ip(arguments) else { throw HarnessError("ip \(arguments.joined(separator: " ")) failed") }
    }

    /// hub holds bridge nvfcbr; each node namespace gets 10.231.77.N/24 on a veth whose peer joins the bridge.
    static func setUp() throws -> [String: String] {
        tearDown()
        for namespace in namespaces { try require(["netns", "add", namespace]) }
        try require(["-n", "nvfc-hub", "link", "add", "nvfcbr", "type", "bridge"])
        try require(["-n", "nvfc-hub", "link", "set", "nvfcbr", "up"])
        var addresses: [String: String] = [:]
        for (index, namespace) in namespaces.dropFirst().enumerated() {
            let address = "10.231.77.\(index + 1)"
            let inside = "nvfcv\(index)", outside = "nvfcp\(index)"
            try require(["link", "add", inside, "type", "veth", "peer", "name", outside])
            try require(["link", "set", inside, "netns", namespace])
            try require(["link", "set", outside, "netns", "nvfc-hub"])
            try require(["-n", namespace, "addr", "add", "\(address)/24", "dev", inside])
            try require(["-n", namespace, "link", "set", inside, "up"])
            try require(["-n", namespace, "link", "set", "lo", "up"])
            try require(["-n", "nvfc-hub", "link", "set", outside, "master", "nvfcbr"])
            try require(["-n", "nvfc-hub", "link", "set", outside, "up"])
            addresses[namespace] = address
        }
        return addresses
    }

    static func tearDown() {
        for namespace in namespaces { _ = try? ip(["netns", "del", namespace]) }
    }

    @Test(.enabled(if: NetworkNamespaceTests.available, "needs root and `ip netns` (iproute2); run the suite as root to include it"))
    func clusterAcrossNamespacesMatchesTheEmbeddedRun() throws {
        let addresses = try Self.setUp()
        defer { Self.tearDown() }
        try withTemporaryDirectory("cluster-netns") { directory in
            let reference = try embeddedReference(in: directory)
            // As the two-node guide sets it up: mutual TLS with certificates from `coordctl certs`, plus the token.
            let cluster = LocalCluster(directory: directory, token: try writeToken("netns-token-0123456789abcdef", in: directory))
            defer { cluster.stopAll() }
            try cluster.makeCertificates(for: ["w1", "w2"])
            cluster.prefix = { name in
                let namespace = name == "coordd" || name == "coordctl" ? "nvfc-c" : "nvfc-\(name)"
                return ["/usr/sbin/ip", "netns", "exec", namespace]
            }
            try cluster.startCoordinator(listen: "\(addresses["nvfc-c"]!):7070")
            #expect(cluster.coordinatorAddress == "\(addresses["nvfc-c"]!):7070")
            try cluster.startWorker("w1", listen: "\(addresses["nvfc-w1"]!):7071")
            try cluster.startWorker("w2", listen: "\(addresses["nvfc-w2"]!):7071")
            try cluster.waitForWorkers(["w1", "w2"])

            try cluster.runTinyTwoWorkerJob(output: directory.appendingPathComponent("out"), reference: reference)
            // The workers registered with their namespace addresses, not loopback.
            let workers = try cluster.coordctl(["workers", "--json"]).stdout
            #expect(workers.contains(addresses["nvfc-w1"]!) && workers.contains(addresses["nvfc-w2"]!))
        }
    }

    /// The route between w1 and w2 is blackholed for 8 s in mid-calibration (longer than the connection's liveness
    /// timeout, so the data path is declared dead), while both still reach coordd. w1 dials again until the route is
    /// back, resends what w2 had not acknowledged, and the job ends with the bytes of an uninterrupted run.
    @Test(.enabled(if: NetworkNamespaceTests.available, "needs root and `ip netns` (iproute2); run the suite as root to include it"))
    func aPartitionBetweenWorkersThatHealsLeavesTheOutputUnchanged() throws {
        let addresses = try Self.setUp()
        defer { Self.tearDown() }
        try withTemporaryDirectory("netns-partition") { directory in
            let reference = try embeddedReference(in: directory, extra: ClusterFaultTests.chunking)
            let cluster = LocalCluster(directory: directory, token: try writeToken("netns-token-0123456789abcdef", in: directory))
            defer { cluster.stopAll() }
            cluster.prefix = { name in
                let namespace = name == "coordd" || name == "coordctl" ? "nvfc-c" : "nvfc-\(name)"
                return ["/usr/sbin/ip", "netns", "exec", namespace]
            }
            try cluster.startCoordinator(listen: "\(addresses["nvfc-c"]!):7070", extra: ["--insecure-token-only"])
            for name in ["w1", "w2"] {
                try cluster.startWorker(name, listen: "\(addresses["nvfc-\(name)"]!):7071",
                                        extra: ["--insecure-token-only"] + ClusterFaultTests.slow)
            }
            try cluster.waitForWorkers(["w1", "w2"])
            let output = directory.appendingPathComponent("out")
            let submitted = try cluster.coordctl(tinySubmitArguments(output: output, extra: ["--split", "1,1"] + ClusterFaultTests.chunking))
            let job = try #require(submitted.stdout.split(separator: "\n").last.map(String.init), "\(submitted.stderr)")
            try waitUntil(timeout: 60) {
                ((try cluster.status(job)["samples_through"] as? [String: Int])?["1-1"] ?? 0) >= 2
            }
            let cut = [("nvfc-w1", addresses["nvfc-w2"]!), ("nvfc-w2", addresses["nvfc-w1"]!)]
            for (namespace, peer) in cut { try Self.require(["-n", namespace, "route", "add", "blackhole", "\(peer)/32"]) }
            Thread.sleep(forTimeInterval: 8)
            for (namespace, peer) in cut { try Self.require(["-n", namespace, "route", "del", "blackhole", "\(peer)/32"]) }

            let status = try cluster.waitForEnd(job, timeout: 180)
            #expect(status["state"] as? String == "succeeded", "\(status)")
            try expectIdenticalDirectories(reference, output)
            let w1Log = cluster.workers["w1"]!.output
            #expect(w1Log.contains("dialing again") && w1Log.contains("is back"), "\(w1Log.suffix(3000))")
        }
    }
}
