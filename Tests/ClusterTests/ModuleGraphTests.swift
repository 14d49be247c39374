import Foundation
import Testing

/// The one-way module flow of Docs/architecture.md, read from the package itself (`swift package dump-package`):
/// coordd and coordctl's client verbs link no compute backend, the wire contract depends on plain data only, and
/// the engine on no networking module.
@Suite struct ModuleGraphTests {
    static let packageRoot = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent()

    /// Target → the targets and products it depends on directly.
    static func directDependencies() throws -> [String: [String]] {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        // Its own scratch path: the `swift test` running this holds the lock of the package's .build.
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("module-graph-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: scratch) }
        process.arguments = ["swift", "package", "--package-path", packageRoot.path, "--scratch-path", scratch.path,
                             "dump-package"]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)
        let package = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        var graph: [String: [String]] = [:]
        for target in try #require(package["targets"] as? [[String: Any]]) {
            let name = try #require(target["name"] as? String)
            graph[name] = (target["dependencies"] as? [[String: Any]] ?? []).compactMap { dependency in
                for key in ["byName", "target"] {
                    if let values = dependency[key] as? [Any], let first = values.first as? String { return first }
                }
                if let values = dependency["product"] as? [Any], let product = values.first as? String { return product }
                return nil
            }
        }
        return graph
    }

    static func closure(of target: String, in graph: [String: [String]]) -> Set<String> {
        var seen: Set<String> = []
        var stack = [target]
        while let next = stack.popLast() {
            for dependency in graph[next] ?? [] where seen.insert(dependency).inserted { stack.append(dependency) }
        }
        return seen
    }

    static let computeBackends: Set<String> = ["CPUBackend", "CUDABackend", "CUDARuntime", "COpenBLAS", "Evaluation", "QuantizeJob"]
    static let networking: Set<String> = ["Transport", "ActorSystem", "ClusterProtocol", "NIOCore", "NIOPosix"]

    @Test func coorddAndTheClientVerbsLinkNoComputeBackend() throws {
        let graph = try Self.directDependencies()
        for target in ["coordd", "Coordinator", "ClusterClient", "ClusterProtocol", "ClusterState", "CommandLineOptions"] {
            let linked = Self.closure(of: target, in: graph).intersection(Self.computeBackends)
            #expect(linked.isEmpty, "\(target) links \(linked.sorted())")
        }
    }

    @Test func theWireContractDependsOnTheActorSystemTransportAndPlainDataOnly() throws {
        let graph = try Self.directDependencies()
        let local = Set(graph.keys)
        let modules = Self.closure(of: "ClusterProtocol", in: graph).intersection(local)
        // ClusterMetrics: the metric names the transport records under (swift-metrics only, no backend).
        #expect(modules == ["ActorSystem", "Transport", "JobModel", "NVFP4", "ClusterMetrics"], "\(modules.sorted())")
        #expect(graph["JobModel"] == [], "JobModel is plain data with no dependency")
    }

    /// Libraries record metrics through swift-metrics alone; only the daemons reach Prometheus and the HTTP listener.
    @Test func onlyTheDaemonsReachPrometheus() throws {
        let graph = try Self.directDependencies()
        #expect(graph["ClusterMetrics"] == ["CoreMetrics"], "\(graph["ClusterMetrics"] ?? [])")
        for target in graph.keys where !target.hasSuffix("Tests") && !["coordd", "workerd", "MetricsEndpoint"].contains(target) {
            let reached = Self.closure(of: target, in: graph).intersection(["Prometheus", "MetricsEndpoint", "NIOHTTP1"])
            #expect(reached.isEmpty, "\(target) reaches \(reached.sorted())")
        }
        for daemon in ["coordd", "workerd"] {
            #expect(graph[daemon]?.contains("MetricsEndpoint") == true, "\(daemon)")
        }
    }

    /// The RDMA transport knows nothing of Llama or the cluster: its shim, logging, and the `ActivationTransport`
    /// protocol it implements (Transport, with the NIO buffers that protocol speaks).
    @Test func theRDMATransportDependsOnItsShimLoggingAndTheTransportProtocolOnly() throws {
        let graph = try Self.directDependencies()
        #expect(Set(graph["RDMATransport"] ?? []) == ["CVerbs", "Logging", "Transport", "NIOCore", "NIOConcurrencyHelpers"],
                "\(graph["RDMATransport"] ?? [])")
        #expect(graph["CVerbs"] == [], "\(graph["CVerbs"] ?? [])")
        let local = Set(graph.keys)
        let modules = Self.closure(of: "RDMATransport", in: graph).intersection(local)
        #expect(modules == ["CVerbs", "Transport", "ClusterMetrics"], "\(modules.sorted())")
    }

    @Test func theEngineDependsOnNoNetworkingModule() throws {
        let graph = try Self.directDependencies()
        for target in ["QuantizeJob", "Calibration", "Checkpoint", "Evaluation", "CPUBackend", "CUDABackend", "NVFP4", "JobModel"] {
            let linked = Self.closure(of: target, in: graph).intersection(Self.networking)
            #expect(linked.isEmpty, "\(target) depends on \(linked.sorted())")
        }
    }
}
