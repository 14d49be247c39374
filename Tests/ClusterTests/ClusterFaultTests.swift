import Foundation
import Testing

/// Failures in mid-job: the job still ends with the bytes of an uninterrupted run.
/// Workers are slowed down (`--debug-chunk-delay-ms`) and every sample is its own chunk, so there is a "middle".
@Suite(.serialized) struct ClusterFaultTests {
    static let slow = ["--debug-chunk-delay-ms", "300"]
    static let chunking = ["--chunk-tokens", "1"]

    @Test func killedWorkerRestartsAndTheJobCompletesIdentically() throws {
        try withTemporaryDirectory("cluster-kill") { directory in
            let reference = try embeddedReference(in: directory, extra: Self.chunking)
            let cluster = LocalCluster(directory: directory, token: try writeToken("kill-token-0123456789abcdef", in: directory))
            defer { cluster.stopAll() }
            try cluster.startCoordinator(extra: ["--worker-grace", "60"])
            try cluster.startWorker("w1", extra: Self.slow)
            try cluster.startWorker("w2", extra: Self.slow)
            try cluster.waitForWorkers(["w1", "w2"])

            let output = directory.appendingPathComponent("out")
            let submitted = try cluster.coordctl(tinySubmitArguments(output: output, extra: ["--split", "1,1"] + Self.chunking))
            let job = try #require(submitted.stdout.split(separator: "\n").last.map(String.init))
            try waitUntil {
                let through = try cluster.status(job)["samples_through"] as? [String: Int]
                return (through?["1-1"] ?? 0) >= 2
            }
            cluster.workers["w2"]!.kill()  // SIGKILL, mid-calibration
            try waitUntil { (try? cluster.status(job)["workers"] as? [[String: Any]])?
                .contains { $0["name"] as? String == "w2" && $0["health"] as? String == "dead" } ?? false }
            try cluster.startWorker("w2", extra: Self.slow)  // same name and scratch, a new port

            let status = try cluster.waitForEnd(job, timeout: 180)
            #expect(status["state"] as? String == "succeeded", "status: \(status)\n\(cluster.coordd!.output)")
            try expectIdenticalDirectories(reference, output)
            #expect(cluster.coordd!.output.contains("worker connection lost"))
        }
    }

    @Test func aWorkerThatStaysDeadHasItsRangeReplannedOntoTheOther() throws {
        try withTemporaryDirectory("cluster-replan") { directory in
            let reference = try embeddedReference(in: directory, extra: Self.chunking)
            let cluster = LocalCluster(directory: directory, token: try writeToken("replan-token-0123456789abcdef", in: directory))
            defer { cluster.stopAll() }
            try cluster.startCoordinator(extra: ["--worker-grace", "2"])
            try cluster.startWorker("w1", extra: Self.slow)
            try cluster.startWorker("w2", extra: Self.slow)
            try cluster.waitForWorkers(["w1", "w2"])

            let output = directory.appendingPathComponent("out")
            let submitted = try cluster.coordctl(tinySubmitArguments(output: output, extra: ["--split", "1,1"] + Self.chunking))
            let job = try #require(submitted.stdout.split(separator: "\n").last.map(String.init))
            try waitUntil {
                let through = try cluster.status(job)["samples_through"] as? [String: Int]
                return (through?["1-1"] ?? 0) >= 2
            }
            cluster.workers["w2"]!.kill()  // and it never comes back

            let status = try cluster.waitForEnd(job, timeout: 180)
            #expect(status["state"] as? String == "succeeded", "status: \(status)\n\(cluster.coordd!.output)")
            try expectIdenticalDirectories(reference, output)
            #expect(cluster.coordd!.output.contains("re-planned: w1 0..<2"))
            let workers = try #require(status["workers"] as? [[String: Any]])
            #expect(workers.map { $0["name"] as? String } == ["w1"])
        }
    }

    @Test func restartedCoordinatorResumesAndTheJobCompletesIdentically() throws {
        try withTemporaryDirectory("cluster-restart") { directory in
            let reference = try embeddedReference(in: directory, extra: Self.chunking)
            let cluster = LocalCluster(directory: directory, token: try writeToken("restart-token-0123456789abcd", in: directory))
            defer { cluster.stopAll() }
            let listen = "127.0.0.1:\(try freeLoopbackPort())"
            try cluster.startCoordinator(listen: listen)
            try cluster.startWorker("w1", extra: Self.slow)
            try cluster.startWorker("w2", extra: Self.slow)
            try cluster.waitForWorkers(["w1", "w2"])

            let output = directory.appendingPathComponent("out")
            let submitted = try cluster.coordctl(tinySubmitArguments(output: output, extra: ["--split", "1,1"] + Self.chunking))
            let job = try #require(submitted.stdout.split(separator: "\n").last.map(String.init))
            try waitUntil {
                let through = try cluster.status(job)["samples_through"] as? [String: Int]
                return (through?["1-1"] ?? 0) >= 2
            }
            cluster.coordd!.kill()  // SIGKILL: no chance to persist anything more
            try cluster.startCoordinator(listen: listen)
            // The job is still known, and resumes once the workers have registered again on their own.
            let resumed = try cluster.status(job)
            #expect(resumed["job_id"] as? String == job)
            let status = try cluster.waitForEnd(job, timeout: 180)
            #expect(status["state"] as? String == "succeeded", "status: \(status)\n\(cluster.coordd!.output)")
            try expectIdenticalDirectories(reference, output)
            #expect(cluster.coordd!.output.contains("resuming job after a restart"))
        }
    }

    @Test func sigtermStopsTheCoordinatorGracefully() throws {
        try withTemporaryDirectory("cluster-sigterm") { directory in
            let cluster = LocalCluster(directory: directory, token: try writeToken("term-token-0123456789abcdef", in: directory))
            try cluster.startCoordinator()
            try cluster.startWorker("w1")
            try cluster.waitForWorkers(["w1"])
            cluster.workers["w1"]!.kill(signal: SIGTERM)
            #expect(cluster.workers["w1"]!.process.terminationStatus == 0, "workerd: \(cluster.workers["w1"]!.output)")
            cluster.coordd!.kill(signal: SIGTERM)
            #expect(cluster.coordd!.process.terminationStatus == 0, "coordd: \(cluster.coordd!.output)")
            #expect(cluster.coordd!.output.contains("coordd stopped"))
        }
    }
}
