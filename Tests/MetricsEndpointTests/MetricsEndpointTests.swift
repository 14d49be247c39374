import ClusterMetrics
import CoreMetrics
import Foundation
import Logging
import MetricsEndpoint
import NetworkTestSupport
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
        let ok = try await Task.detached { try rawHTTPExchange(address: address, requestLine: "GET /metrics HTTP/1.1") }.value
        #expect(ok.hasPrefix("HTTP/1.1 200 OK"))
        #expect(ok.contains("nvfp4_layers_calibrated_total 2"))
        #expect(ok.lowercased().contains("content-type: text/plain; version=0.0.4"))
        let missing = try await Task.detached { try rawHTTPExchange(address: address, requestLine: "GET /nope HTTP/1.1") }.value
        #expect(missing.hasPrefix("HTTP/1.1 404"))
        let post = try await Task.detached { try rawHTTPExchange(address: address, requestLine: "POST /metrics HTTP/1.1") }.value
        #expect(post.hasPrefix("HTTP/1.1 405") && post.contains("Allow: GET, HEAD"))
        await server.close()
        await #expect(throws: MetricsEndpointError.self) {
            // The port is free again, but a host that is no address of this machine cannot be bound.
            _ = try await MetricsServer.bind(host: "203.0.113.1", port: 0, registry: registry, logger: Logger(label: "test"))
        }
    }
}
