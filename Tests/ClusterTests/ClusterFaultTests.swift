import Foundation
import Testing

/// Failures in mid-job: the job still ends with the bytes of an uninterrupted run.
/// Workers are slowed down (`--debug-chunk-delay-ms`) and every sample is its own chunk, so there is a "middle".
@Suite(.serialized) struct ClusterFaultTests {
    static let slow = ["--debug-chunk-delay-ms", "300"]
    static let chunking = ["--chunk-tokens", "1"]

    /// A two-worker job (layer 0 on w1, layer 1 on w2) stopped in mid-calibration, with what it needs to finish.
    struct InterruptedJob {
        let cluster: LocalCluster
        let job: String
        let output: URL
        let reference: URL
    }

    /// Starts coordd (on `listen`) and two slow workers, submits the tiny model, and returns once two samples have
    /// passed the second range. `body` interrupts the job and checks the result.
    static func withJobInMidCalibration(_ label: String, coordinatorListen: String = "127.0.0.1:0",
                                        coordinatorExtra: [String] = [],
                                        model: URL = Fixtures.tinyLlama, calibration: URL = Fixtures.tinyCalibration,
                                        coordinatorEnvironment: [String: String] = [:],
                                        w2Environment: [String: String] = [:], jobExtra: [String] = [],
                                        _ body: (InterruptedJob) throws -> Void) throws {
        try withTemporaryDirectory(label) { directory in
            let reference = try embeddedReference(in: directory, extra: chunking + jobExtra)
            let cluster = LocalCluster(directory: directory,
                                       token: try writeToken("\(label)-token-0123456789abcdef", in: directory))
            defer { cluster.stopAll() }
            try cluster.startCoordinator(listen: coordinatorListen, extra: coordinatorExtra, environment: coordinatorEnvironment)
            try cluster.startWorker("w1", extra: slow)
            try cluster.startWorker("w2", extra: slow, environment: w2Environment)
            try cluster.waitForWorkers(["w1", "w2"])

            let output = directory.appendingPathComponent("out")
            let submitted = try cluster.coordctl(tinySubmitArguments(output: output, extra: ["--split", "1,1"] + chunking + jobExtra,
                                                                     model: model, calibration: calibration))
            let job = try #require(submitted.stdout.split(separator: "\n").last.map(String.init), "\(submitted.stderr)")
            try waitUntil {
                let through = try cluster.status(job)["samples_through"] as? [String: Int]
                return (through?["1-1"] ?? 0) >= 2
            }
            try body(InterruptedJob(cluster: cluster, job: job, output: output, reference: reference))
        }
    }

    /// Waits for the job to end and checks it succeeded with the bytes of the uninterrupted embedded run.
    static func expectCompletesIdentically(_ interrupted: InterruptedJob,
                                           sourceLocation: SourceLocation = #_sourceLocation) throws -> [String: Any] {
        let status = try interrupted.cluster.waitForEnd(interrupted.job, timeout: 180)
        let workerLogs = interrupted.cluster.workers.map { "\($0.key) log:\n\($0.value.output)" }.joined(separator: "\n")
        #expect(status["state"] as? String == "succeeded",
                "status: \(status)\n\(interrupted.cluster.coordd!.output)\n\(workerLogs)", sourceLocation: sourceLocation)
        try expectIdenticalDirectories(interrupted.reference, interrupted.output, sourceLocation: sourceLocation)
        return status
    }

    @Test func killedWorkerRestartsAndTheJobCompletesIdentically() throws {
        try Self.withJobInMidCalibration("kill", coordinatorExtra: ["--worker-grace", "60"]) { interrupted in
            let cluster = interrupted.cluster
            // Mid-calibration, status says how far each part is, in layer-tokens.
            let running = try cluster.status(interrupted.job)
            let progress = try #require(running["progress"] as? [String: Any], "\(running)")
            #expect(progress["layers_total"] as? Int == 2)
            #expect((progress["calibration_layer_tokens_done"] as? Int ?? 0) > 0)
            #expect(progress["calibration_layer_tokens_total"] as? Int == 2 * 490)
            let workers = try #require(running["workers"] as? [[String: Any]])
            #expect(workers.allSatisfy { ($0["device"] as? String)?.hasPrefix("cpu") == true }, "the device in use, not --device: \(workers)")

            cluster.workers["w2"]!.kill()  // SIGKILL, mid-calibration
            try waitUntil { (try? cluster.status(interrupted.job)["workers"] as? [[String: Any]])?
                .contains { $0["name"] as? String == "w2" && $0["health"] as? String == "dead" } ?? false }
            // The job says what it waits for, in JSON and on screen.
            try waitUntil { ((try? cluster.status(interrupted.job)["progress"] as? [String: Any])?["waiting"] as? String)?
                .contains("lost worker(s) w2 to come back") ?? false }
            let human = try cluster.coordctl(["status", interrupted.job])
            #expect(human.stdout.contains("waiting for lost worker(s) w2 to come back"), "\(human.stdout)")
            try cluster.startWorker("w2", extra: Self.slow)  // same name and scratch, a new port
            _ = try Self.expectCompletesIdentically(interrupted)
            #expect(cluster.coordd!.output.contains("worker connection lost"))
        }
    }

    /// GPTQ's Hessians live in the worker's memory only: a worker killed in mid-job and restarted runs its range's
    /// chunks again, so its Hessians see every chunk once, and the job still writes the uninterrupted run's bytes.
    @Test(arguments: ["quantized", "original"])
    func killedGPTQWorkerRestartsAndTheJobCompletesIdentically(propagation: String) throws {
        try Self.withJobInMidCalibration("kill-gptq", coordinatorExtra: ["--worker-grace", "60"],
                                         jobExtra: ["--algorithm", "gptq", "--propagate", propagation]) { interrupted in
            let cluster = interrupted.cluster
            cluster.workers["w2"]!.kill()
            try waitUntil { (try? cluster.status(interrupted.job)["workers"] as? [[String: Any]])?
                .contains { $0["name"] as? String == "w2" && $0["health"] as? String == "dead" } ?? false }
            try cluster.startWorker("w2", extra: Self.slow)
            _ = try Self.expectCompletesIdentically(interrupted)
        }
    }

    @Test func aWorkerThatStaysDeadHasItsRangeReplannedOntoTheOther() throws {
        try Self.withJobInMidCalibration("replan", coordinatorExtra: ["--worker-grace", "2"]) { interrupted in
            interrupted.cluster.workers["w2"]!.kill()  // and it never comes back
            let status = try Self.expectCompletesIdentically(interrupted)
            #expect(interrupted.cluster.coordd!.output.contains("re-planned: w1 0..<2"))
            let workers = try #require(status["workers"] as? [[String: Any]])
            #expect(workers.map { $0["name"] as? String } == ["w1"])
        }
    }

    @Test func restartedCoordinatorResumesAndTheJobCompletesIdentically() throws {
        let listen = "127.0.0.1:\(try freeLoopbackPort())"
        try Self.withJobInMidCalibration("restart", coordinatorListen: listen) { interrupted in
            let cluster = interrupted.cluster
            cluster.coordd!.kill()  // SIGKILL: no chance to persist anything more
            try cluster.startCoordinator(listen: listen)
            // The job is still known, and resumes once the workers have registered again on their own.
            #expect(try cluster.status(interrupted.job)["job_id"] as? String == interrupted.job)
            _ = try Self.expectCompletesIdentically(interrupted)
            #expect(cluster.coordd!.output.contains("resuming job after a restart"))
        }
    }

    /// coordd is killed in mid-calibration and its inputs change before it restarts: the calibration file loses a
    /// sample, or a weight file grows. The resumed job fails at once, naming what changed, instead of mixing
    /// statistics of the old inputs with the new.
    @Test(arguments: ["calibration", "weights"])
    func aResumeOnChangedInputsFailsNamingWhatChanged(_ changed: String) throws {
        let listen = "127.0.0.1:\(try freeLoopbackPort())"
        try withTemporaryDirectory("fingerprint-inputs") { inputs in
            let calibration = inputs.appendingPathComponent("calib.jsonl")
            try FileManager.default.copyItem(at: Fixtures.tinyCalibration, to: calibration)
            let model = inputs.appendingPathComponent("model")
            try FileManager.default.copyItem(at: Fixtures.tinyLlama, to: model)
            try Self.withJobInMidCalibration("fingerprint", coordinatorListen: listen, model: model,
                                             calibration: calibration) { interrupted in
                let cluster = interrupted.cluster
                let recorded = try #require(try cluster.status(interrupted.job)["fingerprint"] as? String)
                #expect(recorded.count == 64)
                cluster.coordd!.kill()
                let expected: String
                if changed == "calibration" {
                    let lines = try String(contentsOf: calibration, encoding: .utf8).split(separator: "\n")
                    try (lines.dropLast().joined(separator: "\n") + "\n").write(to: calibration, atomically: true, encoding: .utf8)
                    expected = "the calibration samples changed"
                } else {
                    let shard = try FileHandle(forWritingTo: model.appendingPathComponent("model-00002-of-00002.safetensors"))
                    try shard.seekToEnd()
                    try shard.write(contentsOf: Data([0]))
                    try shard.close()
                    expected = "weight file model-00002-of-00002.safetensors changed size"
                }
                try cluster.startCoordinator(listen: listen)
                let status = try cluster.waitForEnd(interrupted.job, timeout: 120)
                #expect(status["state"] as? String == "failed", "\(status)")
                let reason = status["failure_reason"] as? String ?? ""
                #expect(reason.contains("changed since it was submitted") && reason.contains(expected), "\(reason)")
                #expect(status["fingerprint"] as? String == recorded)
            }
        }
    }

    /// A shard of the model is truncated in mid-calibration (someone copies a new version over it). Weights are read
    /// with pread after a check that the file is unchanged, so no process dies of SIGBUS: the job fails naming the
    /// file, and the daemons stay up.
    @Test func aShardTruncatedMidJobFailsTheJobNamingItAndEveryDaemonStaysUp() throws {
        try withTemporaryDirectory("truncated-shard") { inputs in
            let model = inputs.appendingPathComponent("model")
            try FileManager.default.copyItem(at: Fixtures.tinyLlama, to: model)
            try Self.withJobInMidCalibration("truncated", model: model) { interrupted in
                let cluster = interrupted.cluster
                let shard = model.appendingPathComponent("model-00002-of-00002.safetensors")
                let size = try #require(try FileManager.default.attributesOfItem(atPath: shard.path)[.size] as? Int)
                #expect(truncate(shard.path, off_t(size / 2)) == 0)
                let status = try cluster.waitForEnd(interrupted.job, timeout: 120)
                #expect(status["state"] as? String == "failed", "\(status)")
                let reason = status["failure_reason"] as? String ?? ""
                #expect(reason.contains("model-00002-of-00002.safetensors") && reason.contains("changed"), "\(reason)")
                #expect(cluster.coordd!.isRunning)
                for (name, worker) in cluster.workers { #expect(worker.isRunning, "\(name) died:\n\(worker.output.suffix(2000))") }
                #expect(!FileManager.default.fileExists(atPath: interrupted.output.path), "nothing renamed into place")
                // A failed job never resumes: the hidden states w2 kept for it are gone.
                let kept = interrupted.output.deletingLastPathComponent().appendingPathComponent("scratch-w2/kept-w2")
                #expect(((try? FileManager.default.contentsOfDirectory(atPath: kept.path)) ?? []).isEmpty)
            }
        }
    }

    /// kill -9 of coordd during export, during merge and right after the output's rename, and of a worker during
    /// export: each daemon is held at that moment by a debug fault point (`NVFP4CLUSTER_DEBUG_PAUSE_AT`), killed, and
    /// started again without it. The job ends `succeeded` with the bytes of an uninterrupted run.
    @Test(arguments: ["coordd-export", "coordd-merge", "coordd-after-rename", "workerd-export"])
    func killedInEveryPhaseTheJobStillCompletesIdentically(_ point: String) throws {
        let listen = "127.0.0.1:\(try freeLoopbackPort())"
        let pause = ["NVFP4CLUSTER_DEBUG_PAUSE_AT": point]
        let inCoordinator = point.hasPrefix("coordd")
        let grace = ["--worker-grace", "60"]
        try Self.withJobInMidCalibration("phase-\(point)", coordinatorListen: listen, coordinatorExtra: grace,
                                         coordinatorEnvironment: inCoordinator ? pause : [:],
                                         w2Environment: inCoordinator ? [:] : pause) { interrupted in
            let cluster = interrupted.cluster
            let victim = inCoordinator ? cluster.coordd! : cluster.workers["w2"]!
            try victim.waitForLog("debug fault point \(point) reached", timeout: 120)
            victim.kill()  // SIGKILL
            if inCoordinator {
                try cluster.startCoordinator(listen: listen, extra: grace)
            } else {
                try waitUntil { (try? cluster.status(interrupted.job)["workers"] as? [[String: Any]])?
                    .contains { $0["name"] as? String == "w2" && $0["health"] as? String == "dead" } ?? false }
                try cluster.startWorker("w2", extra: Self.slow)
            }
            _ = try Self.expectCompletesIdentically(interrupted)
            let leftovers = try FileManager.default.contentsOfDirectory(atPath: interrupted.output.deletingLastPathComponent().path)
                .filter { $0.hasPrefix(interrupted.output.lastPathComponent + ".") }
            #expect(leftovers.isEmpty, "left beside the output: \(leftovers)")
            if point == "coordd-after-rename" {
                #expect(cluster.coordd!.output.contains("the output was renamed into place before coordd stopped"))
            }
        }
    }

    /// Hidden states a worker kept for jobs that ended while it was away go when it registers again, and
    /// `coordctl gc` removes whatever is left on the live workers.
    @Test func keptStatesOfEndedJobsAreCollectedAtRegistrationAndByGC() throws {
        try withTemporaryDirectory("cluster-gc") { directory in
            let cluster = LocalCluster(directory: directory, token: try writeToken("gc-token-0123456789abcdef", in: directory))
            defer { cluster.stopAll() }
            let kept = directory.appendingPathComponent("scratch-w1/kept-w1")
            func leave(_ job: String) throws {
                let layer = kept.appendingPathComponent("nvfp4-boundary-\(job)/layer-1")
                try FileManager.default.createDirectory(at: layer, withIntermediateDirectories: true)
                try Data(count: 64).write(to: layer.appendingPathComponent("chunk-000000.hs"))
            }
            func keptJobs() -> [String] { ((try? FileManager.default.contentsOfDirectory(atPath: kept.path)) ?? []).sorted() }
            try leave("ended-while-away")
            try cluster.startCoordinator()
            try cluster.startWorker("w1")
            try cluster.waitForWorkers(["w1"])
            try waitUntil(timeout: 10) { keptJobs().isEmpty }

            try leave("left-over")
            let first = try cluster.coordctl(["gc"])
            #expect(first.status == 0, "\(first.stderr)")
            #expect(first.stdout.contains("w1: removed the kept hidden states of left-over"), "\(first.stdout)")
            #expect(keptJobs().isEmpty)
            let second = try cluster.coordctl(["gc"])
            #expect(second.stdout.contains("w1: nothing to remove"), "\(second.stdout)")
        }
    }

    /// A worker that stops working after two chunks while its heartbeats go on (a debug hang): coordd's watchdog
    /// notices within `--progress-timeout`, names the worker and what it was doing, and re-plans its layer onto the
    /// other worker; the job ends with the bytes of an uninterrupted run. The first range hanging (coordd waits on its
    /// calibrate call) and the second (coordd waits for its reports) both.
    @Test(arguments: ["w1", "w2"])
    func aHungWorkerIsDetectedAndItsLayersReplanned(_ hung: String) throws {
        try withTemporaryDirectory("hung-\(hung)") { directory in
            let reference = try embeddedReference(in: directory, extra: Self.chunking)
            let cluster = LocalCluster(directory: directory, token: try writeToken("hung-token-0123456789abcdef", in: directory))
            defer { cluster.stopAll() }
            try cluster.startCoordinator(extra: ["--progress-timeout", "2"])
            for name in ["w1", "w2"] {
                try cluster.startWorker(name, extra: Self.slow,
                                        environment: name == hung ? ["NVFP4CLUSTER_DEBUG_HANG_AFTER_CHUNKS": "2"] : [:])
            }
            try cluster.waitForWorkers(["w1", "w2"])
            let output = directory.appendingPathComponent("out")
            let submitted = try cluster.coordctl(tinySubmitArguments(output: output, extra: ["--split", "1,1"] + Self.chunking))
            let job = try #require(submitted.stdout.split(separator: "\n").last.map(String.init), "\(submitted.stderr)")
            let status = try cluster.waitForEnd(job, timeout: 120)
            let log = cluster.coordd!.output
            #expect(status["state"] as? String == "succeeded", "\(status)\n\(log.suffix(4000))")
            try expectIdenticalDirectories(reference, output)
            let layer = hung == "w1" ? "0..<1" : "1..<2"
            #expect(log.contains("worker \(hung) made no progress for") && log.contains("while calibrating layers \(layer)"),
                    "\(log.suffix(4000))")
            let survivor = hung == "w1" ? "w2" : "w1"
            #expect(log.contains("re-planned: \(survivor) 0..<2"), "\(log.suffix(4000))")
            #expect(cluster.workers[hung]!.output.contains("debug hang after 2 chunk(s)"))
        }
    }

    /// A worker that is slow (1 s a chunk) but within its deadline is not taken for a hung one.
    @Test func aSlowWorkerWithinItsDeadlineIsLeftAlone() throws {
        try withTemporaryDirectory("slow-worker") { directory in
            let reference = try embeddedReference(in: directory, extra: Self.chunking)
            let cluster = LocalCluster(directory: directory, token: try writeToken("slow-token-0123456789abcdef", in: directory))
            defer { cluster.stopAll() }
            try cluster.startCoordinator(extra: ["--progress-timeout", "4"])
            try cluster.startWorker("w1")
            try cluster.startWorker("w2", extra: ["--debug-chunk-delay-ms", "1000"])
            try cluster.waitForWorkers(["w1", "w2"])
            let output = directory.appendingPathComponent("out")
            let submitted = try cluster.coordctl(tinySubmitArguments(output: output, extra: ["--split", "1,1"] + Self.chunking))
            let job = try #require(submitted.stdout.split(separator: "\n").last.map(String.init), "\(submitted.stderr)")
            let status = try cluster.waitForEnd(job, timeout: 120)
            #expect(status["state"] as? String == "succeeded", "\(status)")
            try expectIdenticalDirectories(reference, output)
            #expect(!cluster.coordd!.output.contains("made no progress"))
            #expect(!cluster.coordd!.output.contains("re-planned"))
        }
    }

    /// A worker whose heartbeats stop while its connection stays up (answering pings from its event loop) is marked
    /// dead after `--heartbeat-timeout`, with the reason.
    @Test func aWorkerWhoseHeartbeatsStopIsMarkedDead() throws {
        try withTemporaryDirectory("stale-heartbeat") { directory in
            let cluster = LocalCluster(directory: directory, token: try writeToken("beat-token-0123456789abcdef", in: directory))
            defer { cluster.stopAll() }
            try cluster.startCoordinator(extra: ["--heartbeat-timeout", "3"])
            let silent = try cluster.startWorker("w1", environment: ["NVFP4CLUSTER_DEBUG_NO_HEARTBEATS": "1"])
            try cluster.waitForWorkers(["w1"])
            try waitUntil(timeout: 20) {
                let listed = try cluster.coordctl(["workers", "--json"]).stdout
                return listed.contains("\"dead\"") && listed.contains("no heartbeat for")
            }
            #expect(silent.isRunning, "the worker process itself is up; only its heartbeats stopped")
        }
    }

    /// Whether this process may mount a small tmpfs (root, as on CI): the full-scratch test needs one.
    static var canMountTmpfs: Bool {
        guard getuid() == 0 else { return false }
        let probe = FileManager.default.temporaryDirectory.appendingPathComponent("nvfc-mount-probe-\(getpid())")
        try? FileManager.default.createDirectory(at: probe, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: probe) }
        // `run` keeps its output files in the directory it is given: not the one being mounted over.
        let parent = FileManager.default.temporaryDirectory
        guard (try? run(URL(fileURLWithPath: "/bin/mount"), ["-t", "tmpfs", "-o", "size=64k", "tmpfs", probe.path], in: parent))?.status == 0
        else { return false }
        _ = try? run(URL(fileURLWithPath: "/bin/umount"), [probe.path], in: parent)
        return true
    }

    /// w2's scratch is a 64 KiB filesystem, too small for the hidden states entering its range: the job is refused
    /// before calibration, saying how much is needed and how much is free.
    @Test(.enabled(if: ClusterFaultTests.canMountTmpfs, "needs root to mount a small tmpfs"))
    func aScratchTooSmallForTheKeptStatesIsRefusedBeforeCalibration() throws {
        try withTemporaryDirectory("small-scratch") { directory in
            let small = directory.appendingPathComponent("small")
            try FileManager.default.createDirectory(at: small, withIntermediateDirectories: true)
            let mounted = try run(URL(fileURLWithPath: "/bin/mount"), ["-t", "tmpfs", "-o", "size=64k", "tmpfs", small.path], in: directory)
            try #require(mounted.status == 0, "\(mounted.stderr)")
            defer { _ = try? run(URL(fileURLWithPath: "/bin/umount"), [small.path], in: directory) }
            let cluster = LocalCluster(directory: directory, token: try writeToken("space-token-0123456789abcdef", in: directory))
            defer { cluster.stopAll() }
            try cluster.startCoordinator()
            try cluster.startWorker("w1")
            try cluster.startWorker("w2", extra: ["--scratch", small.path])
            try cluster.waitForWorkers(["w1", "w2"])
            let submitted = try cluster.coordctl(tinySubmitArguments(output: directory.appendingPathComponent("out"),
                                                                     extra: ["--split", "1,1"]))
            let job = try #require(submitted.stdout.split(separator: "\n").last.map(String.init), "\(submitted.stderr)")
            let status = try cluster.waitForEnd(job, timeout: 60)
            #expect(status["state"] as? String == "failed")
            let reason = status["failure_reason"] as? String ?? ""
            #expect(reason.contains("worker w2's --scratch needs 251 kB for the hidden states entering its range, 66 kB free") && reason.contains("free"), "\(reason)")
            #expect((status["samples_through"] as? [String: Int])?.values.allSatisfy { $0 == 0 } ?? false)
        }
    }

    /// kill -9 of a worker while coordd merges the checkpoint, and right after it renamed the output into place
    /// (coordd holds there for 4 s by a debug fault point, then goes on): the workers have nothing left to do, and the
    /// job ends `succeeded` with the bytes of an uninterrupted run, whether it needed the worker again or not.
    @Test(arguments: ["coordd-merge", "coordd-after-rename"])
    func aWorkerKilledDuringMergeOrAfterTheRenameLeavesTheOutputIntact(_ point: String) throws {
        try Self.withJobInMidCalibration("worker-\(point)", coordinatorExtra: ["--worker-grace", "60"],
                                         coordinatorEnvironment: ["NVFP4CLUSTER_DEBUG_PAUSE_AT": "\(point):4"]) { interrupted in
            let cluster = interrupted.cluster
            try cluster.coordd!.waitForLog("debug fault point \(point) reached", timeout: 120)
            cluster.workers["w2"]!.kill()  // SIGKILL, while coordd holds
            try cluster.startWorker("w2", extra: Self.slow)
            _ = try Self.expectCompletesIdentically(interrupted)
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
