import Foundation
import Testing

/// Jobs submitted back to back, as a new user would: coordd queues them and runs them one at a time, in order.
@Suite(.serialized) struct ClusterQueueTests {
    @Test func threeJobsSubmittedBackToBackAllSucceedInOrderWithCorrectOutputs() throws {
        try withTemporaryDirectory("cluster-queue") { directory in
            let reference = try embeddedReference(in: directory, extra: ClusterFaultTests.chunking)
            let cluster = LocalCluster(directory: directory, token: try writeToken("queue-token-0123456789abcdef", in: directory))
            defer { cluster.stopAll() }
            try cluster.startCoordinator()
            // Slowed down (a chunk per sample, 0.8 s each), so that the first job still runs while the others are
            // submitted and looked at.
            let slow = ["--debug-chunk-delay-ms", "800"]
            try cluster.startWorker("w1", extra: slow)
            try cluster.startWorker("w2", extra: slow)
            try cluster.waitForWorkers(["w1", "w2"])

            let outputs = (1...3).map { directory.appendingPathComponent("out\($0)") }
            var jobs: [String] = []
            for output in outputs {
                let submitted = try cluster.coordctl(tinySubmitArguments(output: output, extra: ["--split", "1,1"] + ClusterFaultTests.chunking))
                #expect(submitted.status == 0, "submit: \(submitted.stderr)")
                jobs.append(try #require(submitted.stdout.split(separator: "\n").last.map(String.init), "\(submitted.stderr)"))
            }

            // The later two wait in line, and say for whom.
            let second = try cluster.status(jobs[1])
            let third = try cluster.status(jobs[2])
            #expect(second["state"] as? String == "queued" && second["queue_position"] as? Int == 1, "\(second)")
            #expect(second["waiting_for"] as? String == jobs[0], "\(second)")
            #expect(third["state"] as? String == "queued" && third["queue_position"] as? Int == 2, "\(third)")
            let human = try cluster.coordctl(["status", jobs[2]])
            #expect(human.stdout.contains("position 2 in the queue (job \(jobs[0]) is running)"), "\(human.stdout)")

            // A fourth job onto a queued job's output is refused at submit, naming that job.
            let clash = try cluster.coordctl(tinySubmitArguments(output: outputs[2], extra: ["--split", "1,1"] + ClusterFaultTests.chunking))
            #expect(clash.status != 0)
            #expect(clash.stderr.contains("is the output of job \(jobs[2])"), "\(clash.stderr)")

            for (job, output) in zip(jobs, outputs) {
                let status = try cluster.waitForEnd(job, timeout: 180)
                #expect(status["state"] as? String == "succeeded", "\(job): \(status)")
                try expectIdenticalDirectories(reference, output)
            }
            // One at a time, in submission order: each job plans only after the one before it has succeeded.
            let log = cluster.coordd!.output
            func offset(of message: String, job: String) throws -> String.Index {
                let line = try #require(log.split(separator: "\n").first { $0.contains("job=\(job)") && $0.contains(message) },
                                        "no '\(message)' for \(job)")
                return log.range(of: line)!.lowerBound
            }
            for (earlier, later) in zip(jobs, jobs.dropFirst()) {
                #expect(try offset(of: "job succeeded", job: earlier) < offset(of: "planned:", job: later))
            }
        }
    }
}
