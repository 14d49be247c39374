import Foundation
import NetworkTestSupport
import Testing

/// `/metrics` of coordd and two workerd (separate processes, `--metrics-listen`), scraped over HTTP before and after
/// a job on the tiny model: the series are there, and their values are the job's (layers, tokens, bytes on the
/// worker-to-worker path and on export, a refused client counted by reason).
@Suite(.serialized) struct ClusterMetricsTests {
    @Test func daemonsServeTheJobsFiguresInThePrometheusFormat() throws {
        try withTemporaryDirectory("cluster-metrics") { directory in
            let cluster = LocalCluster(directory: directory, token: try writeToken("metrics-token-0123456789abcdef", in: directory))
            defer { cluster.stopAll() }
            try cluster.startCoordinator(extra: ["--metrics-listen", "127.0.0.1:0"])
            let coorddMetrics = try cluster.coordd!.listenAddress(marker: "metrics listening")
            // A bare port listens on loopback.
            let w1 = try cluster.startWorker("w1", extra: ["--metrics-listen", "0"])
            let w2 = try cluster.startWorker("w2", extra: ["--metrics-listen", "127.0.0.1:0"])
            let w1Metrics = try w1.listenAddress(marker: "metrics listening")
            let w2Metrics = try w2.listenAddress(marker: "metrics listening")
            #expect(w1Metrics.hasPrefix("127.0.0.1:") && w2Metrics.hasPrefix("127.0.0.1:") && coorddMetrics.hasPrefix("127.0.0.1:"))
            try cluster.waitForWorkers(["w1", "w2"])

            // Before any job: the job gauges exist and are 0.
            let before = try Scrape(address: coorddMetrics)
            #expect(before.value("nvfp4_jobs", ["state": "succeeded"]) == 0)
            #expect(before.value("nvfp4_jobs", ["state": "queued"]) == 0)
            #expect(before.types["nvfp4_jobs"] == "gauge")
            #expect(before.value("nvfp4_layers_calibrated_total") == 0)
            #expect(before.value("nvfp4_export_layer_seconds_count") == 0)
            #expect(before.value("nvfp4_transport_authentication_failures_total", ["reason": "token_mismatch"]) == 0)
            #expect(before.value("nvfp4_transport_connection_failures_total", ["reason": "handshake_timeout"]) == 0)

            // A client holding another token is refused, and coordd counts it by reason.
            let wrongToken = try writeToken("some-other-token-0123456789abcdef", in: directory, name: "wrong.token")
            let refused = try run(try Binaries.url("coordctl"),
                                  ["list", "--coordinator", cluster.coordinatorAddress, "--token-file", wrongToken.path],
                                  in: directory)
            #expect(refused.status != 0, "\(refused.stdout)")

            let output = directory.appendingPathComponent("out")
            let submitted = try cluster.coordctl(tinySubmitArguments(output: output, extra: ["--split", "1,1"]))
            let job = try #require(submitted.stdout.split(separator: "\n").last.map(String.init), "\(submitted.stderr)")
            let status = try cluster.waitForEnd(job)
            try #require(status["state"] as? String == "succeeded", "status: \(status)\n\(cluster.coordd!.output)")

            let config = try #require(try JSONSerialization.jsonObject(
                with: Data(contentsOf: Fixtures.tinyLlama.appendingPathComponent("config.json"))) as? [String: Any])
            let layers = Double(try #require(config["num_hidden_layers"] as? Int))
            let hiddenSize = Double(try #require(config["hidden_size"] as? Int))
            // The calibration tokens, as the job's calibration.json records them (490 for the tiny set).
            let record = try #require(try JSONSerialization.jsonObject(
                with: Data(contentsOf: output.appendingPathComponent("calibration.json"))) as? [String: Any])
            let tokens = Double(try #require(record["tokens"] as? Int))
            #expect(tokens > 0)

            // The gauge follows the store right after the state is written, so a status read may see it a moment first.
            let coordd = try Scrape(address: coorddMetrics, until: { $0.value("nvfp4_jobs", ["state": "succeeded"]) == 1 })
            #expect(coordd.value("nvfp4_jobs", ["state": "succeeded"]) == 1)
            for state in ["queued", "loading", "calibrating", "exporting", "merging", "evaluating", "failed", "cancelled"] {
                #expect(coordd.value("nvfp4_jobs", ["state": state]) == 0, "\(state)")
            }
            #expect(coordd.value("nvfp4_jobs_submitted_total") == 1)
            #expect(coordd.types["nvfp4_jobs_submitted_total"] == "counter")
            #expect(coordd.value("nvfp4_layers_calibrated_total") == layers)
            #expect(coordd.value("nvfp4_layers_exported_total") == layers)
            #expect(coordd.value("nvfp4_export_layer_seconds_count") == layers)
            #expect(coordd.types["nvfp4_export_layer_seconds"] == "histogram")
            #expect(coordd.value("nvfp4_transport_authentication_failures_total", ["reason": "token_mismatch"]) == 1)
            #expect(coordd.help["nvfp4_transport_authentication_failures_total"]?.isEmpty == false)

            let first = try Scrape(address: w1Metrics)
            let second = try Scrape(address: w2Metrics)
            for (name, scrape) in [("w1", first), ("w2", second)] {
                // One layer each: every token once through the range, and once through its one layer.
                #expect(scrape.value("nvfp4_worker_tokens_total", ["worker": name]) == tokens, "\(name)")
                #expect(scrape.value("nvfp4_worker_layer_tokens_total", ["worker": name]) == tokens, "\(name)")
                let chunks = try #require(scrape.value("nvfp4_worker_chunk_seconds_count", ["worker": name]), "\(name)")
                #expect(chunks >= 1)
                #expect(scrape.value("nvfp4_worker_chunk_seconds_bucket", ["worker": name, "le": "+Inf"]) == chunks)
                #expect((scrape.value("nvfp4_worker_chunk_seconds_sum", ["worker": name]) ?? 0) > 0)
                // Each worker exported its one layer, and coordd took exactly those bytes from it.
                #expect(scrape.value("nvfp4_worker_export_layer_seconds_count", ["worker": name]) == 1)
                let sent = try #require(scrape.value("nvfp4_worker_export_sent_bytes_total", ["worker": name]))
                #expect(sent > 0 && coordd.value("nvfp4_export_received_bytes_total", ["worker": name]) == sent)
                // On the CPU: nothing on a GPU.
                #expect(scrape.value("nvfp4_gpu_memory_used_bytes", ["worker": name]) == 0)
                #expect(scrape.value("nvfp4_hidden_state_bytes", ["worker": name, "location": "gpu"]) == 0)
                #expect(scrape.value("nvfp4_kept_hidden_state_bytes", ["worker": name]) != nil)
            }
            // The hidden states of every token crossed from w1 to w2 once, as f32.
            let stateBytes = tokens * hiddenSize * 4
            #expect(first.value("nvfp4_link_sent_bytes_total", ["worker": "w1"]) == stateBytes)
            #expect(first.value("nvfp4_link_send_seconds_count", ["worker": "w1"])
                    == first.value("nvfp4_worker_chunk_seconds_count", ["worker": "w1"]))
            #expect(second.value("nvfp4_link_received_bytes_total", ["worker": "w2"]) == stateBytes)
            #expect(second.value("nvfp4_link_sent_bytes_total", ["worker": "w2"]) == nil, "the last range sends nothing")

            // Only GET (and HEAD) /metrics.
            #expect(try httpRequest(address: coorddMetrics, method: "GET", path: "/other").status == 404)
            #expect(try httpRequest(address: w1Metrics, method: "POST", path: "/metrics").status == 405)
            let head = try httpRequest(address: coorddMetrics, method: "GET", path: "/metrics?x=1")
            #expect(head.status == 200 && head.headers["content-type"]?.hasPrefix("text/plain; version=0.0.4") == true)
        }
    }

    /// One worker holding every layer calibrates layer by layer; with `--activation-memory 1B` every hidden state
    /// spills, and the worker's gauges say so while the pass runs (each layer's report held back 400 ms), then 0.
    @Test func aLayerAtATimePassShowsItsSpilledHiddenStates() throws {
        try withTemporaryDirectory("cluster-metrics-spill") { directory in
            let cluster = LocalCluster(directory: directory, token: try writeToken("spill-token-0123456789abcdef", in: directory))
            defer { cluster.stopAll() }
            try cluster.startCoordinator()
            let worker = try cluster.startWorker("w1", extra: ["--metrics-listen", "127.0.0.1:0", "--debug-chunk-delay-ms", "400"])
            let metrics = try worker.listenAddress(marker: "metrics listening")
            try cluster.waitForWorkers(["w1"])
            let output = directory.appendingPathComponent("out")
            let submitted = try cluster.coordctl(tinySubmitArguments(output: output, extra: ["--activation-memory", "1B"]))
            let job = try #require(submitted.stdout.split(separator: "\n").last.map(String.init), "\(submitted.stderr)")
            let during = try Scrape(address: metrics, until: {
                ($0.value("nvfp4_hidden_state_bytes", ["worker": "w1", "location": "spilled"]) ?? 0) > 0
            })
            let status = try cluster.waitForEnd(job)
            try #require(status["state"] as? String == "succeeded", "status: \(status)\n\(worker.output.suffix(3000))")

            let record = try #require(try JSONSerialization.jsonObject(
                with: Data(contentsOf: output.appendingPathComponent("calibration.json"))) as? [String: Any])
            let tokens = Double(try #require(record["tokens"] as? Int))
            let config = try #require(try JSONSerialization.jsonObject(
                with: Data(contentsOf: Fixtures.tinyLlama.appendingPathComponent("config.json"))) as? [String: Any])
            let hiddenSize = Double(try #require(config["hidden_size"] as? Int))
            let layers = Double(try #require(config["num_hidden_layers"] as? Int))
            // Every token's f32 hidden state in a spill file, none in memory (and no GPU here).
            #expect(during.value("nvfp4_hidden_state_bytes", ["worker": "w1", "location": "spilled"]) == tokens * hiddenSize * 4)
            #expect(during.value("nvfp4_hidden_state_bytes", ["worker": "w1", "location": "host"]) == 0)
            #expect(during.value("nvfp4_hidden_state_bytes", ["worker": "w1", "location": "gpu"]) == 0)

            let after = try Scrape(address: metrics, until: {
                $0.value("nvfp4_hidden_state_bytes", ["worker": "w1", "location": "spilled"]) == 0
            })
            #expect(after.value("nvfp4_hidden_state_bytes", ["worker": "w1", "location": "spilled"]) == 0)
            // Every token through both layers of the one range.
            #expect(after.value("nvfp4_worker_tokens_total", ["worker": "w1"]) == tokens)
            #expect(after.value("nvfp4_worker_layer_tokens_total", ["worker": "w1"]) == tokens * layers)
            #expect(after.value("nvfp4_link_sent_bytes_total", ["worker": "w1"]) == nil, "one range: no successor")
        }
    }

    @Test func daemonsExplainMetricsListenAndRefuseABadAddress() throws {
        try withTemporaryDirectory("metrics-help") { directory in
            for daemon in ["coordd", "workerd"] {
                let help = try run(try Binaries.url(daemon), ["--help"], in: directory)
                #expect(help.stdout.contains("--metrics-listen") && help.stdout.contains("loopback"), "\(daemon): \(help.stdout)")
                let required = daemon == "coordd" ? ["--state-dir", directory.path] : []
                let bad = try run(try Binaries.url(daemon), ["--metrics-listen", "nowhere"] + required, in: directory)
                #expect(bad.status == 64 && bad.stderr.contains("nowhere"), "\(daemon): \(bad.status) \(bad.stderr)")
            }
            // A metrics address in use fails the start, naming it, before coordd listens for the cluster.
            let holder = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(holder) }
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_addr.s_addr = inet_addr("127.0.0.1")
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let bound = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(holder, $0, length) }
            }
            try #require(bound == 0 && listen(holder, 1) == 0)
            _ = withUnsafeMutablePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(holder, $0, &length) }
            }
            let port = Int(UInt16(bigEndian: address.sin_port))
            let taken = try run(try Binaries.url("coordd"),
                                ["--listen", "127.0.0.1:0", "--state-dir", directory.appendingPathComponent("state").path,
                                 "--metrics-listen", "127.0.0.1:\(port)"], in: directory)
            #expect(taken.status != 0 && taken.stderr.contains("cannot serve metrics on 127.0.0.1:\(port)"), "\(taken.stderr)")
            #expect(!taken.stderr.contains("coordd listening"))
        }
    }
}

/// One scrape of `/metrics`, parsed: samples by name and labels, and the `# TYPE` and `# HELP` lines.
struct Scrape {
    var samples: [(name: String, labels: [String: String], value: Double)] = []
    var types: [String: String] = [:]
    var help: [String: String] = [:]

    /// Scrapes again (every 50 ms, for up to 5 s) until `condition` holds; the last scrape otherwise.
    init(address: String, until condition: (Scrape) -> Bool) throws {
        var scrape = try Scrape(address: address)
        let deadline = Date().addingTimeInterval(5)
        while !condition(scrape) && Date() < deadline {
            Thread.sleep(forTimeInterval: 0.05)
            scrape = try Scrape(address: address)
        }
        self = scrape
    }

    init(address: String) throws {
        let response = try httpRequest(address: address, method: "GET", path: "/metrics")
        guard response.status == 200 else { throw HarnessError("GET /metrics from \(address): \(response.status)") }
        for line in response.body.split(separator: "\n").map(String.init) {
            if line.hasPrefix("# TYPE ") || line.hasPrefix("# HELP ") {
                let parts = line.dropFirst(7).split(separator: " ", maxSplits: 1).map(String.init)
                if parts.count == 2 {
                    if line.hasPrefix("# TYPE ") { types[parts[0]] = parts[1] } else { help[parts[0]] = parts[1] }
                }
                continue
            }
            guard !line.hasPrefix("#"), let space = line.lastIndex(of: " "),
                  let value = Double(line[line.index(after: space)...]) else { continue }
            let series = line[..<space]
            var labels: [String: String] = [:]
            let name: String
            if let open = series.firstIndex(of: "{") {
                name = String(series[..<open])
                let inner = series[series.index(after: open)..<series.index(before: series.endIndex)]
                for pair in inner.split(separator: ",") {
                    let keyValue = pair.split(separator: "=", maxSplits: 1).map(String.init)
                    guard keyValue.count == 2 else { continue }
                    labels[keyValue[0]] = String(keyValue[1].dropFirst().dropLast())
                }
            } else {
                name = String(series)
            }
            samples.append((name, labels, value))
        }
    }

    /// The value of the sample `name` with exactly these labels, or nil when there is none.
    func value(_ name: String, _ labels: [String: String] = [:]) -> Double? {
        samples.first { $0.name == name && $0.labels == labels }?.value
    }
}

/// A plain HTTP/1.1 request over a blocking socket; the server closes the connection after its answer.
func httpRequest(address: String, method: String, path: String) throws
    -> (status: Int, headers: [String: String], body: String) {
    let text = try rawHTTPExchange(address: address, requestLine: "\(method) \(path) HTTP/1.1")
    guard let end = text.range(of: "\r\n\r\n") else { throw HarnessError("no HTTP answer from \(address): \(text)") }
    let headLines = text[..<end.lowerBound].split(separator: "\r\n").map(String.init)
    guard let statusLine = headLines.first, statusLine.split(separator: " ").count >= 2,
          let status = Int(statusLine.split(separator: " ")[1]) else {
        throw HarnessError("bad status line from \(address): \(text.prefix(200))")
    }
    var headers: [String: String] = [:]
    for line in headLines.dropFirst() {
        guard let separator = line.firstIndex(of: ":") else { continue }
        headers[line[..<separator].lowercased()] = line[line.index(after: separator)...].trimmingCharacters(in: .whitespaces)
    }
    return (status, headers, String(text[end.upperBound...]))
}
