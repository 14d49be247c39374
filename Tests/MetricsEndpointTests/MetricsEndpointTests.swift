import ClusterMetrics
import CoreMetrics
import Foundation
import Logging
import MetricsEndpoint
import Prometheus
import Testing

/// The catalogue factory and the HTTP listener, in-process on a registry of their own (no `MetricsSystem.bootstrap`,
/// which a process may call only once).
@Suite struct MetricsEndpointTests {
    @Test func theCatalogueGivesHelpTypesAndSecondBuckets() {
        let registry = PrometheusCollectorRegistry()
        let factory = CatalogueMetricsFactory(registry: registry)
        MetricName.workerTokens.counter("w1", factory: factory).increment(by: 490)
        MetricName.jobs.gauge("succeeded", factory: factory).record(1)
        MetricName.workerChunkSeconds.timer("w1", factory: factory).record(seconds: 0.2)
        MetricName.workerChunkSeconds.timer("w1", factory: factory).record(seconds: 45)
        let text = registry.emitToString()
        #expect(text.contains("# HELP nvfp4_worker_tokens_total \(MetricName.workerTokens.help)"))
        #expect(text.contains("# TYPE nvfp4_worker_tokens_total counter"))
        #expect(text.contains(#"nvfp4_worker_tokens_total{worker="w1"} 490"#))
        #expect(text.contains("# TYPE nvfp4_jobs gauge"))
        #expect(text.contains(#"nvfp4_jobs{state="succeeded"} 1"#))
        #expect(text.contains("# TYPE nvfp4_worker_chunk_seconds histogram"))
        // Seconds, in the catalogue's buckets: 0.2 s falls in le=0.25, 45 s only from le=60 on.
        #expect(text.contains(#"nvfp4_worker_chunk_seconds_bucket{worker="w1",le="0.1"} 0"#), "\(text)")
        #expect(text.contains(#"nvfp4_worker_chunk_seconds_bucket{worker="w1",le="0.25"} 1"#), "\(text)")
        #expect(text.contains(#"nvfp4_worker_chunk_seconds_bucket{worker="w1",le="30.0"} 1"#), "\(text)")
        #expect(text.contains(#"nvfp4_worker_chunk_seconds_bucket{worker="w1",le="60.0"} 2"#), "\(text)")
        #expect(text.contains(#"nvfp4_worker_chunk_seconds_count{worker="w1"} 2"#))
    }

    @Test func everySeriesFollowsThePrometheusNamingRules() {
        for name in MetricName.allCases {
            #expect(name.rawValue.hasPrefix("nvfp4_"), "\(name.rawValue)")
            switch name.kind {
            case .counter: #expect(name.rawValue.hasSuffix("_total"), "\(name.rawValue)")
            case .histogram: #expect(name.rawValue.hasSuffix("_seconds"), "\(name.rawValue)")
            case .gauge: #expect(!name.rawValue.hasSuffix("_total"), "\(name.rawValue)")
            }
            #expect(!name.help.isEmpty)
        }
        #expect(MetricName.allCases.filter { $0.rawValue.hasSuffix("_bytes") }.allSatisfy { $0.kind == .gauge })
    }

    @Test func theListenerAnswersGetMetricsOnly() async throws {
        let registry = PrometheusCollectorRegistry()
        MetricName.layersCalibrated.counter(factory: CatalogueMetricsFactory(registry: registry)).increment(by: 2)
        let server = try await MetricsServer.bind(host: "127.0.0.1", port: 0, registry: registry,
                                                  logger: Logger(label: "test"))
        let address = server.addressText
        #expect(address.hasPrefix("127.0.0.1:") && !address.hasSuffix(":0"))
        let ok = try await Task.detached { try rawHTTP(address: address, request: "GET /metrics HTTP/1.1") }.value
        #expect(ok.hasPrefix("HTTP/1.1 200 OK"))
        #expect(ok.contains("nvfp4_layers_calibrated_total 2"))
        #expect(ok.lowercased().contains("content-type: text/plain; version=0.0.4"))
        let missing = try await Task.detached { try rawHTTP(address: address, request: "GET /nope HTTP/1.1") }.value
        #expect(missing.hasPrefix("HTTP/1.1 404"))
        let post = try await Task.detached { try rawHTTP(address: address, request: "POST /metrics HTTP/1.1") }.value
        #expect(post.hasPrefix("HTTP/1.1 405") && post.contains("Allow: GET, HEAD"))
        await server.close()
        await #expect(throws: MetricsEndpointError.self) {
            // The port is free again, but a host that is no address of this machine cannot be bound.
            _ = try await MetricsServer.bind(host: "203.0.113.1", port: 0, registry: registry, logger: Logger(label: "test"))
        }
    }
}

/// Sends one request line (plus Host and an empty body) and returns everything the server wrote before closing.
func rawHTTP(address: String, request: String) throws -> String {
    let colon = address.lastIndex(of: ":")!
    let port = UInt16(address[address.index(after: colon)...])!
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    guard fd >= 0 else { throw POSIXError(.EIO) }
    defer { close(fd) }
    var timeout = timeval(tv_sec: 10, tv_usec: 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    var socketAddress = sockaddr_in()
    socketAddress.sin_family = sa_family_t(AF_INET)
    socketAddress.sin_port = port.bigEndian
    socketAddress.sin_addr.s_addr = inet_addr(String(address[..<colon]))
    let connected = withUnsafePointer(to: &socketAddress) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    guard connected == 0 else { throw POSIXError(.ECONNREFUSED) }
    let bytes = Array("\(request)\r\nHost: \(address)\r\nContent-Length: 0\r\n\r\n".utf8)
    _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
    var response: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    while true {
        let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if count <= 0 { break }
        response.append(contentsOf: buffer[0..<count])
    }
    return String(decoding: response, as: UTF8.self)
}
