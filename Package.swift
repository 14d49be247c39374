// swift-tools-version:6.0
import PackageDescription

/// Swift 6.3.1 crashes optimizing coordctl and LocalCluster in release builds (SIL deserialization of the witness
/// table of the `Coordinator` actor's conformance to its `@Resolvable` protocol, which the embedded mode uses
/// in-process). Neither holds hot code (the work runs in the library modules, optimized as usual), so both are built
/// unoptimized.
let thinClientSettings: [SwiftSetting] = [.unsafeFlags(["-Onone"], .when(configuration: .release))]

/// The numeric kernels (quantizer, CPU forward, calibration loop, evaluation) are optimized in debug builds too: the
/// tests run whole models through them (SmolLM2 end to end), which unoptimized Swift loops make 20-50× slower.
let numericSettings: [SwiftSetting] = [.unsafeFlags(["-O"], .when(configuration: .debug))]

let package = Package(
    name: "NVFP4Cluster",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "coordctl", targets: ["coordctl"]),
        .executable(name: "coordd", targets: ["coordd"]),
        .executable(name: "workerd", targets: ["workerd"]),
        .library(name: "NVFP4", targets: ["NVFP4"]),
        .library(name: "SafeTensors", targets: ["SafeTensors"]),
        .library(name: "Checkpoint", targets: ["Checkpoint"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.0.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.0"),
        .package(url: "https://github.com/apple/swift-certificates", from: "1.21.0"),
        .package(url: "https://github.com/apple/swift-asn1", from: "1.7.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.5.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
    ],
    targets: [
        // Plain data every role shares (JobSpec, CalibrationPlan, JobStatus, QualityReport); no dependencies.
        .target(name: "JobModel"),
        // Pure numerics: codecs and the block quantizer. No I/O.
        .target(name: "NVFP4", swiftSettings: numericSettings),
        // The strict RFC 8259 JSON reader and string encoder (exact integers, duplicate keys, members in order).
        .target(name: "StrictJSON"),
        // safetensors reading (mmap, validated) and streaming writing.
        .target(name: "SafeTensors", dependencies: ["StrictJSON", .product(name: "Crypto", package: "swift-crypto")]),
        // Llama-family config parsing and weight naming.
        .target(name: "LlamaModel", dependencies: ["SafeTensors", "StrictJSON", "JobModel"]),
        // Byte-level BPE tokenizer (tokenizer.json).
        .target(name: "Tokenizer", dependencies: ["StrictJSON"]),
        // OpenBLAS, from Debian's libopenblas-dev.
        .systemLibrary(name: "COpenBLAS", pkgConfig: "openblas", providers: [.apt(["libopenblas-dev"])]),
        // GPTQ for NVFP4 weights on the CPU: the input Hessian and the error-compensating column loop. No I/O.
        .target(name: "GPTQ", dependencies: ["NVFP4", "COpenBLAS", "OpenBLASThreads"], swiftSettings: numericSettings),
        // OpenBLAS's process-wide thread count, shared by every BLAS caller (one thread sums GEMMs in another order).
        .target(name: "OpenBLASThreads", dependencies: ["COpenBLAS"]),
        // The compute-backend protocol that calibration drives.
        .target(name: "ComputeBackend", dependencies: ["LlamaModel", "JobModel"]),
        // The CPU backend's BF16 element-wise passes (rounding, RMSNorm, RoPE, SwiGLU, softmax, exp) in C, so that they
        // vectorize with the same f32 results as scalar code: no FMA contraction, optimized in debug builds too.
        .target(name: "CPUKernels", cSettings: [.unsafeFlags(["-O3", "-ffp-contract=off"])]),
        // F32 CPU backend over BLAS.
        .target(name: "CPUBackend", dependencies: ["ComputeBackend", "LlamaModel", "SafeTensors", "NVFP4", "COpenBLAS", "CPUKernels",
                                                   "OpenBLASThreads"],
                swiftSettings: numericSettings),
        // Calibration data, observers and the layer-streaming calibration loop.
        .target(name: "Calibration", dependencies: ["JobModel", "ComputeBackend", "LlamaModel", "Tokenizer", "SafeTensors", "NVFP4", "StrictJSON",
                                                      .product(name: "Logging", package: "swift-log"),
                                                      .product(name: "Crypto", package: "swift-crypto")],
                resources: [.copy("Resources")], swiftSettings: numericSettings),
        // Perplexity of the original model against the W4A4-emulated checkpoint.
        .target(name: "Evaluation", dependencies: ["ComputeBackend", "CPUBackend", "COpenBLAS", "OpenBLASThreads", "LlamaModel", "NVFP4", "SafeTensors",
                                                     "Checkpoint", "JobModel", .product(name: "Logging", package: "swift-log")],
                swiftSettings: numericSettings),
        // Export layouts, sharding, verification, calibration.json, the coordinator's assembler and atomic output.
        .target(name: "Checkpoint", dependencies: ["JobModel", "NVFP4", "SafeTensors", "LlamaModel",
                                                     .product(name: "Logging", package: "swift-log")]),
        // The engine of a job, no networking: input checks, devices and backends, the layer-range runner, the
        // boundary store, the exporter and the quality evaluation.
        .target(name: "QuantizeJob", dependencies: ["Checkpoint", "LlamaModel", "NVFP4", "GPTQ", "SafeTensors", "Calibration",
                                                      "ComputeBackend", "CPUBackend", "Tokenizer", "Evaluation", "CUDARuntime", "CUDABackend",
                                                      .product(name: "Logging", package: "swift-log"),
                                                      .product(name: "Crypto", package: "swift-crypto")]),
        // The names, labels and help of every metric series (swift-metrics CoreMetrics only; no backend).
        .target(name: "ClusterMetrics", dependencies: [.product(name: "CoreMetrics", package: "swift-metrics")]),
        // coordd's and workerd's /metrics: the Prometheus bootstrap and a NIO HTTP/1.1 listener run as a Service.
        .target(name: "MetricsEndpoint", dependencies: [
            "ClusterMetrics",
            .product(name: "CoreMetrics", package: "swift-metrics"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOHTTP1", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),
        // Length-prefixed TCP framing over mutual TLS 1.3, authenticated handshake and the bulk activation data path
        // (SwiftNIO, swift-nio-ssl). Knows nothing of Llama.
        .target(name: "Transport", dependencies: [
            "ClusterMetrics",
            .product(name: "CoreMetrics", package: "swift-metrics"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "X509", package: "swift-certificates"),
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // A C seam over libibverbs, opened at run time with dlopen (no link-time dependency). Compiled against
        // infiniband/verbs.h from libibverbs-dev when present; without it, the shim says so at run time.
        .target(name: "CVerbs"),
        // RDMA verbs for the activation data path: device discovery (`coordctl doctor rdma`) and `--transport`
        // selection over CVerbs, and RDMAActivationTransport (RC queue pairs, registered rings, credits) behind
        // Transport's ActivationTransport. Knows nothing of Llama.
        .target(name: "RDMATransport", dependencies: [
            "CVerbs", "Transport",
            .product(name: "Logging", package: "swift-log"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
        ]),
        // Distributed actors over Transport: ClusterActorSystem, the binary Codable coder, call/error envelopes.
        .target(name: "ActorSystem", dependencies: [
            "Transport",
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // Loads the CUDA driver, NVRTC and cuBLASLt at run time (dlopen); builds with no CUDA SDK.
        .target(name: "CUDARuntime", dependencies: [.product(name: "Crypto", package: "swift-crypto")]),
        // The GPU compute backend and NVFP4 quantizer over CUDARuntime; kernels are CUDA C++ resources compiled by NVRTC.
        .target(name: "CUDABackend", dependencies: ["CUDARuntime", "ComputeBackend", "GPTQ", "LlamaModel", "NVFP4",
                                                      .product(name: "Logging", package: "swift-log")],
                resources: [.copy("Resources")]),
        // Job state (SQLite through GRDB) and layer-range planning for coordd. Knows layers, not Llama math.
        .target(name: "ClusterState", dependencies: [
            "NVFP4", "JobModel",
            .product(name: "GRDB", package: "GRDB.swift"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // What coordd, workerd and coordctl say to each other: @Resolvable actor protocols and Codable messages.
        // Depends on the actor system, the transport and plain data only.
        .target(name: "ClusterProtocol", dependencies: ["ActorSystem", "Transport", "JobModel", "NVFP4",
                                                        .product(name: "Logging", package: "swift-log")]),
        // The Coordinator distributed actor, job runners and coordd's service. Links no compute backend: workers
        // compute, and one of them measures the checkpoint's quality.
        .target(name: "Coordinator", dependencies: [
            "ClusterProtocol", "ClusterState", "ActorSystem", "Transport", "JobModel", "Checkpoint", "LlamaModel",
            "Calibration", "SafeTensors", "NVFP4", "ClusterMetrics",
            .product(name: "CoreMetrics", package: "swift-metrics"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),
        // The Worker distributed actor (a layer range: calibrate, forward, export) and workerd's service.
        .target(name: "Worker", dependencies: [
            "ClusterProtocol", "ActorSystem", "Transport", "RDMATransport", "QuantizeJob", "LlamaModel", "ComputeBackend", "CPUBackend",
            "Calibration", "Checkpoint", "Evaluation", "SafeTensors", "NVFP4", "JobModel", "ClusterMetrics",
            .product(name: "CoreMetrics", package: "swift-metrics"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),
        // The embedded mode: coordd's Coordinator and one Worker in one process (`coordctl quantize`, and the tests).
        .target(name: "LocalCluster", dependencies: [
            "Coordinator", "Worker", "ClusterProtocol", "ClusterState", "ActorSystem", "Transport", "QuantizeJob",
            "Evaluation", "Calibration", "LlamaModel", "Checkpoint",
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: thinClientSettings),
        // The cluster's certificate authority (`coordctl certs`): a P-256 CA and node certificates named by node.
        .target(name: "ClusterCertificates", dependencies: [
            .product(name: "X509", package: "swift-certificates"),
            .product(name: "SwiftASN1", package: "swift-asn1"),
            .product(name: "Crypto", package: "swift-crypto"),
        ]),
        // `coordctl report`: a checkpoint's per-Linear quality as text and a self-contained HTML page (files only).
        .target(name: "CheckpointReport", dependencies: ["JobModel"]),
        // coordctl's client verbs and the job options: the wire contract only, no engine and no compute backend.
        .target(name: "ClusterClient", dependencies: [
            "ClusterProtocol", "CommandLineOptions", "JobModel", "Checkpoint", "LlamaModel", "ActorSystem", "Transport",
            "ClusterCertificates",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // The options coordd, workerd and coordctl share (--log-level, --token-file, --device, --metrics-listen).
        .target(name: "CommandLineOptions", dependencies: [
            "ClusterProtocol", "JobModel", "Transport", "RDMATransport",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .executableTarget(name: "coordd", dependencies: [
            "Coordinator", "CommandLineOptions", "ActorSystem", "ClusterProtocol", "Transport", "MetricsEndpoint",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),
        .executableTarget(name: "workerd", dependencies: [
            "Worker", "ClusterProtocol", "Transport", "Checkpoint", "ComputeBackend", "CommandLineOptions", "ActorSystem",
            "MetricsEndpoint",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
        ]),
        // The client verbs (ClusterClient), plus `quantize` (LocalCluster) and `eval`, which compute here.
        .executableTarget(name: "coordctl", dependencies: [
            "ClusterClient", "CheckpointReport", "ClusterProtocol", "LocalCluster", "CommandLineOptions", "JobModel",
            "QuantizeJob", "Checkpoint", "LlamaModel", "Calibration", "Evaluation", "Tokenizer", "CPUBackend", "SafeTensors",
            // Worker: the RDMA peer test's client (`doctor rdma --peer`); LocalCluster links it already.
            "ComputeBackend", "RDMATransport", "Worker",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Logging", package: "swift-log"),
        ], swiftSettings: thinClientSettings),
        .executableTarget(name: "NVFP4Benchmarks", dependencies: ["NVFP4", "SafeTensors"],
                          path: "Benchmarks/NVFP4Benchmarks"),
        .executableTarget(name: "ModelReadBenchmarks", dependencies: ["SafeTensors"],
                          path: "Benchmarks/ModelReadBenchmarks"),

        .executableTarget(name: "CalibrationBenchmarks",
                          dependencies: ["Calibration", "CPUBackend", "ComputeBackend", "LlamaModel", "SafeTensors",
                                         "Tokenizer", "COpenBLAS", .product(name: "Logging", package: "swift-log")],
                          path: "Benchmarks/CalibrationBenchmarks"),
        .executableTarget(name: "TransportBenchmarks",
                          dependencies: ["Transport", "ClusterCertificates", .product(name: "NIOCore", package: "swift-nio"),
                                         .product(name: "NIOPosix", package: "swift-nio"),
                                         .product(name: "Logging", package: "swift-log")],
                          path: "Benchmarks/TransportBenchmarks"),
        .executableTarget(name: "CUDABenchmarks",
                          dependencies: ["CUDABackend", "CUDARuntime", "CPUBackend", "COpenBLAS", "ComputeBackend", "GPTQ", "LlamaModel", "NVFP4", "SafeTensors",
                                         .product(name: "Logging", package: "swift-log")],
                          path: "Benchmarks/CUDABenchmarks"),
        .executableTarget(name: "TokenizerBenchmarks", dependencies: ["Tokenizer"],
                          path: "Benchmarks/TokenizerBenchmarks"),

        // Reads a written W4A4 checkpoint's scales from its bytes and compares them with references (test support).
        .target(name: "W4A4Probes", dependencies: ["SafeTensors"], path: "Tests/W4A4Probes"),
        // A tampering, partitioning loopback proxy for the transport and cluster tests.
        .target(name: "NetworkTestSupport", dependencies: [
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
        ], path: "Tests/NetworkTestSupport"),
        .testTarget(name: "CUDARuntimeTests", dependencies: ["CUDARuntime"]),
        .testTarget(name: "MetricsEndpointTests", dependencies: [
            "MetricsEndpoint", "ClusterMetrics", "NetworkTestSupport",
            .product(name: "CoreMetrics", package: "swift-metrics"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        // coordd, workerd and coordctl as separate processes (loopback, network namespaces, faults).
        .testTarget(name: "ClusterTests", dependencies: [
            "coordd", "workerd", "coordctl", "W4A4Probes", "Transport", "NetworkTestSupport",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .testTarget(name: "CoordinatorTests", dependencies: [
            "Coordinator", "ClusterProtocol", "ClusterState", "ActorSystem", "Transport", "QuantizeJob", "LlamaModel", "JobModel",
            "Checkpoint", "NVFP4", "SafeTensors", .product(name: "Logging", package: "swift-log"),
        ]),
        .testTarget(name: "ClusterStateTests", dependencies: ["ClusterState", "JobModel", "NVFP4", .product(name: "GRDB", package: "GRDB.swift")]),
        .testTarget(name: "CUDABackendTests", dependencies: ["CUDABackend", "CUDARuntime", "ComputeBackend", "LlamaModel", "NVFP4"]),
        .testTarget(name: "TransportTests", dependencies: [
            "Transport", "ClusterCertificates", "NetworkTestSupport",
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOPosix", package: "swift-nio"),
            .product(name: "NIOEmbedded", package: "swift-nio"),
            .product(name: "NIOTestUtils", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .testTarget(name: "RDMATransportTests", dependencies: [
            // Worker: its SuccessorLink carries the mid-job fallback from RDMA to TCP in the tests. Coordinator and
            // LocalCluster: an in-process cluster whose workers' links run on the fake fabric.
            "RDMATransport", "Transport", "Worker", "ActorSystem", "ClusterProtocol", "Coordinator", "LocalCluster",
            "QuantizeJob", "JobModel",
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            .product(name: "Logging", package: "swift-log"),
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
        ]),
        .testTarget(name: "ActorSystemTests", dependencies: [
            "ActorSystem", "Transport",
            .product(name: "NIOCore", package: "swift-nio"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
            .product(name: "Logging", package: "swift-log"),
        ]),
        .testTarget(name: "NVFP4Tests", dependencies: ["NVFP4", "SafeTensors"]),
        .testTarget(name: "GPTQTests", dependencies: ["GPTQ", "NVFP4", "SafeTensors"]),
        .testTarget(name: "OpenBLASThreadsTests", dependencies: ["OpenBLASThreads", "COpenBLAS"]),
        .testTarget(name: "SafeTensorsTests", dependencies: ["SafeTensors"]),
        .testTarget(name: "LlamaModelTests", dependencies: ["LlamaModel", "SafeTensors"]),
        .testTarget(name: "TokenizerTests", dependencies: ["Tokenizer"]),
        .testTarget(name: "CPUBackendTests", dependencies: ["CPUBackend", "CPUKernels", "COpenBLAS", "OpenBLASThreads", "ComputeBackend", "LlamaModel",
                                                              "SafeTensors"]),
        .testTarget(name: "CalibrationTests", dependencies: ["Calibration", "Tokenizer", "LlamaModel", "ComputeBackend",
                                                              "CPUBackend", "SafeTensors"]),
        .testTarget(name: "EvaluationTests", dependencies: ["Evaluation", "ComputeBackend", "CPUBackend", "LlamaModel",
                                                             "SafeTensors", "NVFP4", "Checkpoint", "QuantizeJob", "Calibration",
                                                             .product(name: "Logging", package: "swift-log")]),
        .testTarget(name: "CheckpointTests", dependencies: ["Checkpoint", "NVFP4", "SafeTensors", "LlamaModel"]),
        .testTarget(name: "CoordctlTests", dependencies: [
            "LocalCluster", "ClusterClient", "CheckpointReport", "QuantizeJob", "W4A4Probes", "Checkpoint", "SafeTensors", "NVFP4", "LlamaModel", "Calibration", "CPUBackend", "ComputeBackend", "JobModel", "CUDABackend",
            .product(name: "Logging", package: "swift-log"),
        ]),
    ]
)

// libFuzzer targets (Fuzz/<Name>/, built and run by Scripts/fuzz.sh with `-sanitize=fuzzer,address`). Declared only
// when NVFP4CLUSTER_FUZZ is set, so `swift build` and `swift test` never build them. They reach internal decoders
// through `package` entry points.
if Context.environment["NVFP4CLUSTER_FUZZ"] != nil {
    let fuzzTargets: [(name: String, dependencies: [Target.Dependency])] = [
        ("FrameDecoder", ["Transport", .product(name: "NIOCore", package: "swift-nio")]),
        ("Handshake", ["Transport", .product(name: "NIOCore", package: "swift-nio")]),
        ("CallEnvelope", ["ActorSystem"]),
        ("BinaryCoder", ["ActorSystem"]),
        ("SafeTensorsHeader", ["SafeTensors"]),
        ("StrictJSON", ["StrictJSON"]),
        ("TokenizerJSON", ["Tokenizer"]),
        ("CalibrationLine", ["Calibration"]),
    ]
    package.targets.append(.target(name: "FuzzSupport", path: "Fuzz/Support"))
    package.targets.append(.target(name: "FuzzDriver", dependencies: ["FuzzSupport"], path: "Fuzz/Driver"))
    for target in fuzzTargets {
        package.targets.append(.executableTarget(name: "Fuzz\(target.name)", dependencies: ["FuzzDriver"] + target.dependencies,
                                                 path: "Fuzz/\(target.name)"))
    }
}
