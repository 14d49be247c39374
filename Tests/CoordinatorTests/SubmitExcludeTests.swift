import ActorSystem
import ClusterProtocol
import ClusterState
import Coordinator
import Distributed
import Foundation
import JobModel
import Logging
import Testing
import Transport

/// coordd checks `--exclude` at submit, as `coordctl` does at parsing: a client that skipped its own check (or
/// could not read the model) gets the same refusal, naming the pattern, before any job exists.
@Suite struct SubmitExcludeTests {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fixtures")

    func submit(excluding patterns: [String]) async throws -> (error: CoordinatorError?, jobs: Int) {
        let parent = FileManager.default.temporaryDirectory.appendingPathComponent("submit-exclude-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: parent, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: parent) }
        let logger = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })
        let store = try ClusterStateStore(stateDirectory: parent.appendingPathComponent("state").path)
        let system = try await ClusterActorSystem.start(identity: NodeIdentity(name: "coordd-test", role: .coordinator),
                                                        listen: nil as NodeAddress?, token: nil,
                                                        configuration: TransportConfiguration(), logger: logger)
        let coordinator = Coordinator(actorSystem: system, store: store, settings: CoordinatorSettings(), logger: logger)
        let spec = JobSpec(jobID: "excl", modelPath: Self.fixtures.appendingPathComponent("tiny-llama").path,
                           outputPath: parent.appendingPathComponent("OUT").path, scheme: .nvfp4a16,
                           layout: .compressedTensors, maxShardSize: 1 << 30, omitScaleDTypeKeys: false, force: false,
                           calibration: .init(dataPath: nil, samples: 8, seed: nil, minTokens: 1, maxTokens: 64,
                                              chunkTokens: 64, activationPrecision: .bfloat16,
                                              activationMemoryBudget: 1 << 30, scratchDirectory: nil, device: "cpu"),
                           evaluationSamples: 0, evaluationMaxTokens: 64, maxPerplexityRatio: nil, configSHA256: "",
                           excludePatterns: patterns)
        var refusal: CoordinatorError?
        do {
            _ = try await coordinator.submit(JobSubmission(spec: spec, workerCount: 1))
        } catch let error as CoordinatorError {
            refusal = error
        }
        let jobs = try store.listJobs().count
        await system.shutdown()
        return (refusal, jobs)
    }

    @Test func partOfAFusedGroupIsRefused() async throws {
        let (error, jobs) = try await submit(excluding: ["model.layers.0.*", "*.q_proj"])
        guard case .invalidSubmission(let field, let reason)? = error else {
            Issue.record("expected an invalid submission, got \(String(describing: error))")
            return
        }
        #expect(field == "--exclude")
        #expect(reason.contains("'*.q_proj'"), "\(reason)")
        #expect(reason.contains("model.layers.1.self_attn.k_proj, model.layers.1.self_attn.v_proj"), "\(reason)")
        #expect(jobs == 0)
    }

    @Test func aPatternMatchingNothingIsRefused() async throws {
        let (error, jobs) = try await submit(excluding: ["*.down_proj", "model.layers.2.*"])
        guard case .invalidSubmission(let field, let reason)? = error else {
            Issue.record("expected an invalid submission, got \(String(describing: error))")
            return
        }
        #expect(field == "--exclude")
        #expect(reason.contains("'model.layers.2.*' matches no Linear"), "\(reason)")
        #expect(jobs == 0)
    }
}
