/// # MetricsEndpoint
///
/// What coordd and workerd need to serve `/metrics`: the swift-metrics bootstrap onto a Prometheus registry (with the
/// help text and buckets of ``MetricName``), and a small HTTP/1.1 server (SwiftNIO) that answers `GET /metrics` in
/// the Prometheus text format, run as a swift-service-lifecycle `Service` of the daemon's `ServiceGroup`.
///
/// Only executables use this module; libraries record through swift-metrics alone (see `ClusterMetrics`).
import ClusterMetrics
import CoreMetrics
import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Prometheus
import ServiceLifecycle

/// A metrics listener that could not start, naming the address.
public enum MetricsEndpointError: Error, Sendable, Equatable, CustomStringConvertible {
    case invalidAddress(address: String, reason: String)
    case bindFailed(address: String, reason: String)

    public var description: String {
        switch self {
        case .invalidAddress(let address, let reason): "--metrics-listen \(address): \(reason)"
        case .bindFailed(let address, let reason): "cannot serve metrics on \(address): \(reason)"
        }
    }
}

public enum MetricsEndpoint {
    /// Points swift-metrics of this process at a new Prometheus registry and returns it. swift-metrics allows one
    /// bootstrap per process: call this once, from an executable's `main` (never from a library or a test process).
    public static func bootstrap() -> PrometheusCollectorRegistry {
        let registry = PrometheusCollectorRegistry()
        MetricsSystem.bootstrap(CatalogueMetricsFactory(registry: registry))
        return registry
    }
}

/// A swift-metrics factory over a Prometheus registry that gives the series named in ``MetricName`` their help text
/// and histogram buckets; any other label goes through `PrometheusMetricsFactory` as it is.
public struct CatalogueMetricsFactory: MetricsFactory, Sendable {
    public let registry: PrometheusCollectorRegistry
    private let fallback: PrometheusMetricsFactory

    public init(registry: PrometheusCollectorRegistry) {
        self.registry = registry
        self.fallback = PrometheusMetricsFactory(registry: registry)
    }

    private func descriptor(_ name: MetricName) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name.rawValue, unitName: "", helpText: name.help)
    }

    public func makeCounter(label: String, dimensions: [(String, String)]) -> any CounterHandler {
        guard let name = MetricName(rawValue: label) else { return fallback.makeCounter(label: label, dimensions: dimensions) }
        return registry.makeCounter(descriptor: descriptor(name), labels: dimensions)
    }

    public func makeFloatingPointCounter(label: String, dimensions: [(String, String)]) -> any FloatingPointCounterHandler {
        guard let name = MetricName(rawValue: label) else {
            return fallback.makeFloatingPointCounter(label: label, dimensions: dimensions)
        }
        return registry.makeCounter(descriptor: descriptor(name), labels: dimensions)
    }

    public func makeRecorder(label: String, dimensions: [(String, String)], aggregate: Bool) -> any RecorderHandler {
        guard let name = MetricName(rawValue: label) else {
            return fallback.makeRecorder(label: label, dimensions: dimensions, aggregate: aggregate)
        }
        if aggregate {
            return registry.makeValueHistogram(descriptor: descriptor(name), labels: dimensions, buckets: name.buckets)
        }
        return registry.makeGauge(descriptor: descriptor(name), labels: dimensions)
    }

    public func makeMeter(label: String, dimensions: [(String, String)]) -> any MeterHandler {
        guard let name = MetricName(rawValue: label) else { return fallback.makeMeter(label: label, dimensions: dimensions) }
        return registry.makeGauge(descriptor: descriptor(name), labels: dimensions)
    }

    public func makeTimer(label: String, dimensions: [(String, String)]) -> any TimerHandler {
        guard let name = MetricName(rawValue: label) else { return fallback.makeTimer(label: label, dimensions: dimensions) }
        return registry.makeDurationHistogram(descriptor: descriptor(name), labels: dimensions,
                                              buckets: name.buckets.map { .nanoseconds(Int64($0 * 1e9)) })
    }

    public func destroyCounter(_ handler: any CounterHandler) { fallback.destroyCounter(handler) }
    public func destroyFloatingPointCounter(_ handler: any FloatingPointCounterHandler) {
        fallback.destroyFloatingPointCounter(handler)
    }
    public func destroyRecorder(_ handler: any RecorderHandler) { fallback.destroyRecorder(handler) }
    public func destroyMeter(_ handler: any MeterHandler) { fallback.destroyMeter(handler) }
    public func destroyTimer(_ handler: any TimerHandler) { fallback.destroyTimer(handler) }
}

/// An HTTP/1.1 listener answering `GET /metrics` (and `HEAD`) with the registry in the Prometheus text format;
/// any other path is 404, any other method 405. Every response closes its connection.
public final class MetricsServer: Sendable {
    private let channel: any Channel
    /// The bound address (the port is the real one after binding port 0).
    public let localAddress: SocketAddress

    private init(channel: any Channel) {
        self.channel = channel
        self.localAddress = channel.localAddress!
    }

    /// Binds `host:port`. A host other than loopback is allowed (the operator chose it) but logged: the endpoint
    /// has no authentication.
    public static func bind(host: String, port: Int, registry: PrometheusCollectorRegistry, logger: Logger,
                            group: any EventLoopGroup = MultiThreadedEventLoopGroup.singleton) async throws -> MetricsServer {
        let text = host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
        let address: SocketAddress
        do {
            address = try SocketAddress.makeAddressResolvingHost(host, port: port)
        } catch {
            throw MetricsEndpointError.invalidAddress(address: text, reason: "\(error)")
        }
        let channel: any Channel
        do {
            channel = try await ServerBootstrap(group: group)
                .serverChannelOption(.backlog, value: 64)
                .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
                .childChannelInitializer { child in
                    child.eventLoop.makeCompletedFuture {
                        try child.pipeline.syncOperations.configureHTTPServerPipeline(withErrorHandling: true)
                        try child.pipeline.syncOperations.addHandler(MetricsHTTPHandler(registry: registry))
                    }
                }
                .bind(to: address).get()
        } catch {
            throw MetricsEndpointError.bindFailed(address: text, reason: "\(error)")
        }
        let server = MetricsServer(channel: channel)
        if !address.isLoopbackAddress {
            logger.warning("serving /metrics beyond loopback, without authentication, on \(server.localAddress)")
        }
        return server
    }

    /// The bound address as HOST:PORT.
    public var addressText: String {
        let ip = localAddress.ipAddress ?? "?"
        let port = localAddress.port ?? 0
        return ip.contains(":") ? "[\(ip)]:\(port)" : "\(ip):\(port)"
    }

    public func close() async {
        try? await channel.close()
    }
}

extension SocketAddress {
    fileprivate var isLoopbackAddress: Bool {
        switch self {
        case .v4(let address): UInt32(bigEndian: address.address.sin_addr.s_addr) >> 24 == 127
        case .v6: ipAddress == "::1" || (ipAddress?.hasPrefix("::ffff:127.") ?? false)
        default: false
        }
    }
}

/// One connection's requests: the head is remembered, the answer goes out at the end of the request.
final class MetricsHTTPHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let registry: PrometheusCollectorRegistry
    private var head: HTTPRequestHead?

    init(registry: PrometheusCollectorRegistry) {
        self.registry = registry
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head): self.head = head
        case .body: break
        case .end:
            guard let head else { return }
            self.head = nil
            respond(to: head, context: context)
        }
    }

    private func respond(to head: HTTPRequestHead, context: ChannelHandlerContext) {
        let path = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? ""
        var headers = HTTPHeaders()
        headers.add(name: "Connection", value: "close")
        let status: HTTPResponseStatus
        var body: [UInt8]
        if head.method != .GET && head.method != .HEAD {
            status = .methodNotAllowed
            headers.add(name: "Allow", value: "GET, HEAD")
            headers.add(name: "Content-Type", value: "text/plain; charset=utf-8")
            body = Array("method \(head.method) not allowed; GET /metrics\n".utf8)
        } else if path != "/metrics" {
            status = .notFound
            headers.add(name: "Content-Type", value: "text/plain; charset=utf-8")
            body = Array("not found; the metrics are at /metrics\n".utf8)
        } else {
            status = .ok
            headers.add(name: "Content-Type", value: "text/plain; version=0.0.4; charset=utf-8")
            body = registry.emitToBuffer()
        }
        headers.add(name: "Content-Length", value: "\(body.count)")
        if head.method == .HEAD { body = [] }
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))),
                      promise: nil)
        if !body.isEmpty {
            context.write(wrapOutboundOut(.body(.byteBuffer(context.channel.allocator.buffer(bytes: body)))), promise: nil)
        }
        context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
            context.close(promise: nil)
        }
    }
}

/// Serves `/metrics` until the service group shuts down gracefully (or is cancelled), then closes the listener.
public struct MetricsService: Service {
    let server: MetricsServer

    public init(server: MetricsServer) {
        self.server = server
    }

    public func run() async throws {
        // Returns at graceful shutdown; throws CancellationError when the group is cancelled. Either way: close.
        try? await gracefulShutdown()
        await server.close()
    }
}

extension MetricsService {
    /// What a daemon runs for `--metrics-listen`: the listener, bound now (so that an address in use fails the start,
    /// before the node joins the cluster) and serving `registry`; nothing without an address.
    public static func start(host: String, port: Int, registry: PrometheusCollectorRegistry, logger: Logger) async throws -> [any Service] {
        let server = try await MetricsServer.bind(host: host, port: port, registry: registry, logger: logger)
        logger.info("metrics listening", metadata: ["address": "\(server.addressText)", "path": "/metrics"])
        return [MetricsService(server: server)]
    }
}
