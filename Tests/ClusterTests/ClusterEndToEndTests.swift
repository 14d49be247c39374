import Foundation
import Testing
import W4A4Probes

/// coordd and two workerd as separate processes on loopback, driven through coordctl.
@Suite(.serialized) struct ClusterEndToEndTests {
    @Test func twoWorkersWriteTheSameBytesAsTheEmbeddedRun() throws {
        try withTemporaryDirectory("cluster-e2e") { directory in
            let reference = try embeddedReference(in: directory)
            let cluster = LocalCluster(directory: directory, token: try writeToken("e2e-token-0123456789abcdef", in: directory))
            defer { cluster.stopAll() }
            try cluster.startCoordinator()
            try cluster.startWorker("w1")
            try cluster.startWorker("w2")
            try cluster.waitForWorkers(["w1", "w2"])

            let (job, status) = try cluster.runTinyTwoWorkerJob(output: directory.appendingPathComponent("cluster-out"),
                                                                reference: reference)

            // Over plaintext TCP every exported tensor carried its SHA-256, which coordd checked before writing.
            for name in ["w1", "w2"] {
                let log = cluster.workers[name]?.output ?? ""
                #expect(log.contains("pack and hash") && !log.contains("no SHA-256"), "\(log)")
            }
            // The status schema: both ranges, every sample through each, the output size.
            let workers = try #require(status["workers"] as? [[String: Any]])
            #expect(workers.map { $0["name"] as? String } == ["w1", "w2"])
            #expect(workers.map { $0["range"] as? String } == ["0-0", "1-1"])
            #expect(workers.first?["embeddings"] as? Bool == true)
            let through = try #require(status["samples_through"] as? [String: Int])
            #expect(through == ["0-0": 8, "1-1": 8])
            #expect((status["output_bytes"] as? Int ?? 0) > 0)
            #expect(status["schema_version"] as? Int == 1)
            #expect(status["phase"] as? String == "succeeded")
            // The token ids went to w1 on the data path, not inside loadLayers (which carries only the plan's shape).
            #expect(cluster.workers["w1"]!.output.contains("took the calibration token ids (490 tokens) from the data path"))

            // Progress, frozen once the job ended: every layer calibrated and exported, no ETA, a rate that no longer
            // changes, the elapsed time, and the device the workers computed on rather than their --device choice.
            let progress = try #require(status["progress"] as? [String: Any], "\(status)")
            #expect(progress["layers_total"] as? Int == 2 && progress["layers_calibrated"] as? Int == 2
                    && progress["layers_exported"] as? Int == 2, "\(progress)")
            #expect(progress["calibration_layer_tokens_done"] as? Int == progress["calibration_layer_tokens_total"] as? Int)
            #expect(status["eta_seconds"] is NSNull, "\(status)")
            #expect((status["elapsed_seconds"] as? Double ?? 0) > 0)
            #expect(workers.allSatisfy { ($0["device"] as? String)?.hasPrefix("cpu") == true }, "\(workers)")
            let rate = try #require(status["tokens_per_second"] as? Double)
            Thread.sleep(forTimeInterval: 1.5)
            let later = try cluster.status(job)
            #expect(later["tokens_per_second"] as? Double == rate, "a finished job's rate stays put")
            #expect(later["elapsed_seconds"] as? Double == status["elapsed_seconds"] as? Double)
            // The fixture holds 8 records and the default --samples is 256: the job says it went on with 8.
            let warnings = try #require(status["warnings"] as? [String])
            #expect(warnings.contains { $0.contains("--samples 256 asked for more samples than") && $0.hasSuffix("calibrating on 8") }, "\(warnings)")

            // Every Linear's figures, in layer order, as calibration.json has them.
            let linears = try #require(status["linears"] as? [[String: Any]], "\(status)")
            #expect(linears.count == 14 && linears.map { $0["layer"] as? Int } == Array(repeating: 0, count: 7) + Array(repeating: 1, count: 7))
            let written = try #require(try JSONSerialization.jsonObject(with: Data(contentsOf: directory
                .appendingPathComponent("cluster-out/calibration.json"))) as? [String: Any])
            let writtenErrors = try #require(written["weight_relative_error"] as? [String: Double])
            for linear in linears {
                let name = try #require(linear["name"] as? String)
                #expect(linear["weight_relative_error"] as? Double == writtenErrors[name], "\(name)")
                #expect((linear["activation_amax"] as? Double ?? 0) > 0, "\(name)")
            }

            // Human status and list show the job too.
            let human = try cluster.coordctl(["status", job])
            #expect(human.status == 0 && human.stdout.contains("succeeded") && human.stdout.contains("w2"))
            let list = try cluster.coordctl(["list"])
            #expect(list.stdout.contains(job))
        }
    }

    /// GPTQ across two workers: each gathers the Hessians of its own layers during the calibration forward and keeps
    /// them (only hidden states cross the network), and the checkpoint is the embedded run's, byte for byte.
    @Test func gptqOnTwoWorkersWritesTheSameBytesAsTheEmbeddedRun() throws {
        try withTemporaryDirectory("cluster-gptq") { directory in
            let extra = ["--algorithm", "gptq", "--gptq-act-order"]
            let reference = try embeddedReference(in: directory, extra: extra)
            let cluster = LocalCluster(directory: directory, token: try writeToken("gptq-token-0123456789abcdef", in: directory))
            defer { cluster.stopAll() }
            try cluster.startCoordinator()
            try cluster.startWorker("w1")
            try cluster.startWorker("w2")
            try cluster.waitForWorkers(["w1", "w2"])
            _ = try cluster.runTinyTwoWorkerJob(output: directory.appendingPathComponent("cluster-out"), reference: reference,
                                                extra: extra)
            #expect(cluster.workers["w1"]!.output.contains("GPTQ: the Hessians of layers 0..<1"))
            #expect(cluster.workers["w2"]!.output.contains("GPTQ: the Hessians of layers 1..<2"))
            let calibration = try JSONSerialization.jsonObject(
                with: Data(contentsOf: reference.appendingPathComponent("calibration.json"))) as? [String: Any]
            #expect((calibration?["algorithm"] as? [String: Any])?["name"] as? String == "gptq")
        }
    }

    /// W4A4 through coordd and two workerd in both layouts, judged on the bytes written, not against our own other
    /// path: every stored activation scale is f32(amax / 2688) of the amax in calibration.json, and within BF16 noise
    /// of modelopt's reference. The job's quality report reaches `status` (text and JSON).
    @Test(arguments: ["compressed-tensors", "modelopt"])
    func w4a4ScalesMatchTheirCalibrationAndModelopt(format: String) throws {
        try withTemporaryDirectory("cluster-w4a4") { directory in
            let cluster = LocalCluster(directory: directory, token: try writeToken("w4a4-token-0123456789abcdef", in: directory))
            defer { cluster.stopAll() }
            try cluster.startCoordinator()
            try cluster.startWorker("w1")
            try cluster.startWorker("w2")
            try cluster.waitForWorkers(["w1", "w2"])

            let output = directory.appendingPathComponent("out")
            var arguments = tinySubmitArguments(output: output, extra: ["--split", "1,1", "--format", format])
            arguments[arguments.firstIndex(of: "--eval-samples")! + 1] = "2"
            let submitted = try cluster.coordctl(arguments)
            let job = try #require(submitted.stdout.split(separator: "\n").last.map(String.init), "\(submitted.stderr)")
            let status = try cluster.waitForEnd(job)
            try #require(status["state"] as? String == "succeeded", "status: \(status)\n\(cluster.coordd!.output)")

            let scales = try StoredActivationScales(directory: output)
            #expect(scales.layout == format)
            #expect(scales.stored.count == 14)
            #expect(scales.mismatchesWithRecordedAmax() == [])
            let agreement = ScaleAgreement(scales.inputScale, reference: try modeloptInputScales(
                Fixtures.directory.appendingPathComponent("tiny-llama-nvfp4-modelopt")))
            #expect(agreement.count == 14 && agreement.withinBF16Noise, "\(agreement)")

            let quality = try #require(status["quality"] as? [String: Any], "status: \(status)")
            #expect(quality["gate"] as? String == "passed")
            #expect(quality["samples"] as? Int == 2)
            #expect(quality["max_perplexity_ratio"] as? Double == 2)
            let original = try #require(quality["original_perplexity"] as? Double)
            let quantized = try #require(quality["quantized_perplexity"] as? Double)
            #expect(original > 1 && quantized > 1 && quantized / original < 2)
            let human = try cluster.coordctl(["status", job])
            #expect(human.stdout.contains("quality: perplexity") && human.stdout.contains("gate passed"), "\(human.stdout)")

            // Each Linear's output error on the calibration inputs (coordd hands them to the worker that measures the
            // quality report), within forward noise of PyTorch's figures for modelopt's checkpoint on the same tokens.
            #expect(quality["output_error_inputs"] as? String == "calibration")
            let linears = try #require(status["linears"] as? [[String: Any]])
            var outputErrors: [String: Float] = [:]
            for linear in linears {
                if let name = linear["name"] as? String, let error = linear["output_relative_error"] as? Double { outputErrors[name] = Float(error) }
            }
            let outputAgreement = ScaleAgreement(outputErrors, reference: try torchOutputErrors())
            #expect(linears.count == 14 && outputAgreement.withinBF16Noise, "\(outputAgreement)")

            // The checkpoint coordd wrote carries its quality report and per-Linear figures: `coordctl report` reads them.
            let report = try run(try Binaries.url("coordctl"), ["report", output.path], in: directory)
            #expect(report.status == 0, "\(report.stderr)")
            #expect(report.stdout.contains("verdict") && report.stdout.contains("gate passed"), "\(report.stdout)")
            #expect(report.stdout.split(separator: "\n").filter { $0.contains("model.layers.") }.count == 10)
            #expect(FileManager.default.fileExists(atPath: output.appendingPathComponent("report.html").path))
        }
    }

    /// What a user reads when a client command fails: a sentence naming coordd's address and what to do, never a
    /// Swift type name or an internal state.
    @Test func clientErrorsNameTheAddressAndWhatToDo() throws {
        try withTemporaryDirectory("cluster-client-errors") { directory in
            let coordctl = try Binaries.url("coordctl")
            let closed = try freeLoopbackPort()
            let refused = try run(coordctl, ["status", "deadbeef", "--coordinator", "127.0.0.1:\(closed)"], in: directory)
            #expect(refused.status == 1)
            #expect(refused.stderr.contains("cannot reach coordd at 127.0.0.1:\(closed): connection refused (is coordd running"),
                    "\(refused.stderr)")

            let cluster = LocalCluster(directory: directory, token: try writeToken("client-token-0123456789abcdef", in: directory))
            defer { cluster.stopAll() }
            try cluster.startCoordinator()
            let address = cluster.coordinatorAddress
            let missing = try cluster.coordctl(["status", "deadbeef"])
            #expect(missing.status == 1)
            #expect(missing.stderr.contains("no job deadbeef on coordd at \(address)"), "\(missing.stderr)")
            let cancel = try cluster.coordctl(["cancel", "deadbeef"])
            #expect(cancel.stderr.contains("no job deadbeef on coordd at \(address)"), "\(cancel.stderr)")

            let anonymous = try run(coordctl, ["list", "--coordinator", address], in: directory)
            #expect(anonymous.status == 1)
            #expect(anonymous.stderr.contains("coordd at \(address) requires a cluster token: pass --token-file"),
                    "\(anonymous.stderr)")
            let wrong = try writeToken("a-different-token-0123456789", in: directory, name: "wrong.token")
            let rejected = try run(coordctl, ["list", "--coordinator", address, "--token-file", wrong.path], in: directory)
            #expect(rejected.stderr.contains("coordd at \(address) rejected the cluster token in \(wrong.path)"),
                    "\(rejected.stderr)")
            for result in [refused, missing, cancel, anonymous, rejected] {
                for leak in ["ClusterProtocol.", "ClusterJobError", "SingleConnectionFailure", "RemoteCallError",
                                 "proof rejected", "errno"] {
                    #expect(!result.stderr.contains(leak), "\(leak) in: \(result.stderr)")
                }
            }
        }
    }

    @Test func workersOverTheirMemoryBudgetCalibrateLayerByLayerWithTheSameBytes() throws {
        try withTemporaryDirectory("cluster-budget") { directory in
            let chunking = ["--chunk-tokens", "100"]
            let reference = try embeddedReference(in: directory, extra: chunking)
            let cluster = LocalCluster(directory: directory, token: try writeToken("budget-token-0123456789abcdef", in: directory))
            defer { cluster.stopAll() }
            try cluster.startCoordinator()
            // One layer of the tiny model holds 0.74 MB of f32 weights: 100 KB forces the layer-at-a-time schedule.
            try cluster.startWorker("w1", extra: ["--memory-budget", "100KB"])
            try cluster.startWorker("w2", extra: ["--memory-budget", "100KB"])
            try cluster.waitForWorkers(["w1", "w2"])

            let output = directory.appendingPathComponent("out")
            let submitted = try cluster.coordctl(tinySubmitArguments(output: output, extra: ["--split", "1,1"] + chunking))
            let job = try #require(submitted.stdout.split(separator: "\n").last.map(String.init), "\(submitted.stderr)")
            let status = try cluster.waitForEnd(job)
            #expect(status["state"] as? String == "succeeded", "status: \(status)\n\(cluster.coordd!.output)")
            try expectIdenticalDirectories(reference, output)
            #expect(cluster.workers["w2"]!.output.contains("calibrating them one layer at a time"))
        }
    }

    @Test func wrongTokenAndGarbageAreRefusedWhileTheClusterCarriesOn() throws {
        try withTemporaryDirectory("cluster-auth") { directory in
            let cluster = LocalCluster(directory: directory, token: try writeToken("auth-token-0123456789abcdef", in: directory))
            defer { cluster.stopAll() }
            try cluster.startCoordinator()
            try cluster.startWorker("good")
            try cluster.waitForWorkers(["good"])

            let wrong = try writeToken("some-other-token-0123456789", in: directory, name: "wrong.token")
            let intruder = try cluster.startWorker("intruder", token: wrong)
            try cluster.coordd!.waitForLog("authentication")
            #expect(!cluster.coordd!.output.contains("some-other-token"), "no secret in the log")
            #expect(!cluster.coordd!.output.contains("auth-token-0123"), "no secret in the log")

            // Garbage, an oversized length and a wrong version each close only their own connection.
            let parts = cluster.coordinatorAddress.split(separator: ":")
            let port = UInt16(parts.last!)!
            try sendRaw(Array("GET / HTTP/1.1\r\nHost: x\r\n\r\n".utf8), port: port)
            try sendRaw([0x4E, 0x56, 0x46, 0x43, 0x00, 0x01, 0x01, 0x00] + [UInt8](repeating: 0, count: 8) + [0xFF, 0xFF, 0xFF, 0xFF],
                        port: port)
            try sendRaw([0x4E, 0x56, 0x46, 0x43, 0x00, 0x63, 0x01, 0x00] + [UInt8](repeating: 0, count: 12), port: port)

            // The cluster carries on: the good worker is listed, the intruder never is, and a job runs.
            try cluster.waitForWorkers(["good"])
            #expect(cluster.coordd!.isRunning)
            let listed = try cluster.coordctl(["workers"])
            #expect(listed.stdout.contains("good") && !listed.stdout.contains("intruder"))
            intruder.kill()

            let output = directory.appendingPathComponent("out")
            let submitted = try cluster.coordctl(tinySubmitArguments(output: output, extra: ["--scheme", "nvfp4a16"]))
            let job = try #require(submitted.stdout.split(separator: "\n").last.map(String.init))
            #expect(try cluster.waitForEnd(job)["state"] as? String == "succeeded")
        }
    }

    @Test func withoutATokenCoorddListensOnLoopbackOnly() throws {
        try withTemporaryDirectory("cluster-notoken") { directory in
            let refused = try run(try Binaries.url("coordd"), ["--listen", "0.0.0.0:0", "--state-dir", directory.path],
                                  in: directory)
            #expect(refused.status != 0)
            #expect(refused.stderr.contains("loopback only"), "stderr: \(refused.stderr)")

            let cluster = LocalCluster(directory: directory, token: nil)
            defer { cluster.stopAll() }
            try cluster.startCoordinator()
            #expect(cluster.coordd!.output.contains("no cluster token: listening on loopback only"))
            try cluster.startWorker("solo")
            try cluster.waitForWorkers(["solo"])
        }
    }

    @Test func cancelStopsTheJobAndRemovesPartialOutput() throws {
        try withTemporaryDirectory("cluster-cancel") { directory in
            let cluster = LocalCluster(directory: directory, token: try writeToken("cancel-token-0123456789abcdef", in: directory))
            defer { cluster.stopAll() }
            try cluster.startCoordinator()
            try cluster.startWorker("w1", extra: ["--debug-chunk-delay-ms", "500"])
            try cluster.waitForWorkers(["w1"])
            let output = directory.appendingPathComponent("out")
            let submitted = try cluster.coordctl(tinySubmitArguments(output: output, extra: ["--chunk-tokens", "1"]))
            let job = try #require(submitted.stdout.split(separator: "\n").last.map(String.init))
            try waitUntil { (try? cluster.status(job)["phase"] as? String) == "calibrating" }
            let cancelled = try cluster.coordctl(["cancel", job])
            #expect(cancelled.status == 0, "cancel: \(cancelled.stderr)")
            let status = try cluster.waitForEnd(job)
            #expect(status["state"] as? String == "cancelled")
            let leftovers = try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.hasPrefix("out") }
            #expect(leftovers.isEmpty, "left behind: \(leftovers)")
            // status exits 2 for a cancelled job.
            #expect(try cluster.coordctl(["status", job]).status == 2)
        }
    }

    @Test func submitRejectsABadSplitWithAClearError() throws {
        try withTemporaryDirectory("cluster-split") { directory in
            let cluster = LocalCluster(directory: directory, token: try writeToken("split-token-0123456789abcdef", in: directory))
            defer { cluster.stopAll() }
            try cluster.startCoordinator()
            try cluster.startWorker("w1")
            try cluster.waitForWorkers(["w1"])
            let output = directory.appendingPathComponent("out")
            let submitted = try cluster.coordctl(tinySubmitArguments(output: output, extra: ["--split", "1,x"]))
            #expect(submitted.status != 0)
            #expect(submitted.stderr.contains("--split"), "stderr: \(submitted.stderr)")
            let unknown = try cluster.coordctl(["status", "no-such-job"])
            #expect(unknown.status != 0 && unknown.stderr.contains("no-such-job"), "stderr: \(unknown.stderr)")
            // An output that exists and is not empty is refused at submit, as `quantize` refuses it, not after calibration.
            let occupied = directory.appendingPathComponent("occupied")
            try FileManager.default.createDirectory(at: occupied, withIntermediateDirectories: true)
            try Data("mine".utf8).write(to: occupied.appendingPathComponent("notes.txt"))
            let early = try cluster.coordctl(tinySubmitArguments(output: occupied))
            #expect(early.status != 0)
            #expect(early.stderr.contains("exists and is not empty") && early.stderr.contains("--force"), "stderr: \(early.stderr)")
            // coordd writes only inside its --output-root, whatever --force says.
            let outside = URL(fileURLWithPath: "/tmp/outside-\(UUID().uuidString)")
            let refused = try cluster.coordctl(tinySubmitArguments(output: outside, extra: ["--force"]))
            #expect(refused.status != 0)
            #expect(refused.stderr.contains("outside coordd's output roots") && refused.stderr.contains(directory.path),
                    "stderr: \(refused.stderr)")
            #expect(!FileManager.default.fileExists(atPath: outside.path))
        }
    }
}

/// Polls `condition` every 50 ms for up to `timeout` seconds.
func waitUntil(timeout: Double = 30, _ condition: () throws -> Bool) throws {
    let deadline = Date().addingTimeInterval(timeout)
    while Date() < deadline {
        if try condition() { return }
        Thread.sleep(forTimeInterval: 0.05)
    }
    throw HarnessError("condition not met within \(timeout) s")
}

/// Connects to 127.0.0.1:port, writes `bytes`, and waits (up to 5 s) for the peer to close the connection.
func sendRaw(_ bytes: [UInt8], port: UInt16) throws {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw HarnessError("socket() failed") }
    defer { close(fd) }
    var address = sockaddr_in()
    address.sin_family = sa_family_t(AF_INET)
    address.sin_port = port.bigEndian
    address.sin_addr.s_addr = inet_addr("127.0.0.1")
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard connected == 0 else { throw HarnessError("connect() to port \(port) failed") }
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    var timeout = timeval(tv_sec: 5, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var buffer = [UInt8](repeating: 0, count: 4096)
    while true {
        let count = read(fd, &buffer, buffer.count)
        if count <= 0 { break }  // closed by the peer (or the timeout)
    }
}

/// Scripts/reference/linear-output-error.py's figures: each Linear's W4A4 output error on the calibration file's 490
/// tokens, from a float32 transformers forward with modelopt's checkpoint.
func torchOutputErrors() throws -> [String: Float] {
    let url = Fixtures.directory.appendingPathComponent("tiny-llama-output-error-modelopt.json")
    let object = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any]
    let figures = object?["linear_output_relative_error"] as? [String: Double] ?? [:]
    return figures.mapValues(Float.init)
}
