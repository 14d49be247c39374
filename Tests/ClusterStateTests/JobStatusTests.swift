import Foundation
import Testing
@testable import ClusterState

@Suite("JobStatus")
struct JobStatusTests {
    @Test func statusJSONHasTheStableSchemaWithNulls() throws {
        let directory = try TemporaryStateDirectory()
        let store = try ClusterStateStore(stateDirectory: directory.path, now: { Date(timeIntervalSince1970: 1_800_000_000) })
        try store.createJob(modelPath: "/models/llama", outputPath: "/out/llama-nvfp4", options: ["scheme": "w4a4"],
                            configHash: "cafe", id: "job-1")
        try store.registerWorker(name: "a", address: "h:1", device: "H200", memoryBytes: 2,
                                 freeDiskBytes: 1, softwareVersion: "1")
        try store.registerWorker(name: "b", address: "h:2", device: "H100", memoryBytes: 1,
                                 freeDiskBytes: 1, softwareVersion: "1")
        try store.savePlan(jobID: "job-1", plan: try LayerPlanner.plan(layerCount: 5, workers: [
            WorkerCapacity(name: "a", memoryBytes: 2), WorkerCapacity(name: "b", memoryBytes: 1)]))
        try store.updateJobState(jobID: "job-1", to: .loading)
        try store.updateJobState(jobID: "job-1", to: .calibrating)
        for chunk in 0 ..< 2 {
            try store.recordChunkAmax(jobID: "job-1", layer: 2, chunk: chunk, sampleCount: 3, amax: ["m": 1])
        }
        try store.recordChunkAmax(jobID: "job-1", layer: 4, chunk: 0, sampleCount: 3, amax: ["n": 1])

        let status = try store.status(jobID: "job-1", tokensPerSecond: 1500.5, etaSeconds: nil, outputBytes: nil)
        let object = try #require(try JSONSerialization.jsonObject(with: status.jsonData()) as? [String: Any])
        #expect(Set(object.keys) == ["schema_version", "state", "job_id", "phase", "model", "output", "workers",
                                     "samples_through", "tokens_per_second", "eta_seconds", "output_bytes",
                                     "failure_reason", "quality", "created_at", "updated_at", "queue_position",
                                     "waiting_for", "fingerprint", "progress", "warnings", "linears", "elapsed_seconds"])
        for key in ["queue_position", "waiting_for", "fingerprint", "progress", "elapsed_seconds"] { #expect(object[key] is NSNull, "\(key)") }
        #expect(object["warnings"] as? [String] == [] && object["linears"] as? [Any] != nil)
        #expect(object["schema_version"] as? Int == 1)
        #expect(object["state"] as? String == "running")
        #expect(object["phase"] as? String == "calibrating")
        #expect(object["job_id"] as? String == "job-1")
        #expect(object["model"] as? String == "/models/llama")
        #expect(object["output"] as? String == "/out/llama-nvfp4")
        #expect(object["tokens_per_second"] as? Double == 1500.5)
        #expect(object["eta_seconds"] is NSNull && object["output_bytes"] is NSNull && object["failure_reason"] is NSNull)
        #expect(object["quality"] is NSNull)
        #expect(object["created_at"] as? String == "2027-01-15T08:00:00Z")
        // 5 layers over memory 2:1 → 0..<3 and 3..<5.
        #expect(object["samples_through"] as? [String: Int] == ["0-2": 6, "3-4": 3])
        let workers = try #require(object["workers"] as? [[String: Any]])
        #expect(workers.map { $0["name"] as? String } == ["a", "b"])
        #expect(workers.map { $0["range"] as? String } == ["0-2", "3-4"])
        #expect(workers.map { $0["device"] as? String } == ["H200", "H100"])
        #expect(workers.map { $0["health"] as? String } == ["alive", "alive"])
        #expect(workers.map { $0["embeddings"] as? Bool } == [true, false])
        // Added within schema version 1, null until the coordinator knows them (memory comes from the registration).
        for key in ["current_layer", "layer_tokens_per_second"] { #expect(workers.allSatisfy { $0[key] is NSNull }, "\(key)") }
        #expect(workers.map { $0["memory_bytes"] as? Int } == [2, 1])

        #expect(try JSONDecoder().decode(JobStatus.self, from: status.jsonData()) == status)
    }

    /// A document written before `progress`, `warnings`, `linears`, `elapsed_seconds` and the workers' new keys existed
    /// still decodes: the keys were added within schema version 1.
    @Test func aDocumentWithoutTheKeysAddedLaterDecodes() throws {
        let status = JobStatus(jobID: "j", phase: .calibrating, model: "/m", output: "/o",
                               workers: [JobStatus.Worker(name: "a", range: "0-1", device: "cpu", health: .alive, embeddings: true)],
                               samplesThrough: ["0-1": 3], tokensPerSecond: 2, etaSeconds: 4, outputBytes: nil, failureReason: nil,
                               createdAt: Date(timeIntervalSince1970: 0), updatedAt: Date(timeIntervalSince1970: 5))
        var object = try #require(try JSONSerialization.jsonObject(with: status.jsonData()) as? [String: Any])
        for key in ["progress", "warnings", "linears", "elapsed_seconds"] { object[key] = nil }
        object["workers"] = (object["workers"] as? [[String: Any]])?.map { worker in
            worker.filter { !["current_layer", "layer_tokens_per_second", "memory_bytes"].contains($0.key) }
        }
        let decoded = try JSONDecoder().decode(JobStatus.self, from: JSONSerialization.data(withJSONObject: object))
        #expect(decoded == status)
    }

    @Test func coarseStateFollowsThePhase() throws {
        #expect(JobStatus.State(.queued) == .queued)
        for phase in [JobState.loading, .calibrating, .exporting, .merging, .evaluating] {
            #expect(JobStatus.State(phase) == .running)
        }
        #expect(JobStatus.State(.succeeded) == .succeeded)
        #expect(JobStatus.State(.failed) == .failed)
        #expect(JobStatus.State(.cancelled) == .cancelled)

        let directory = try TemporaryStateDirectory()
        let store = try ClusterStateStore(stateDirectory: directory.path)
        try store.createJob(modelPath: "/m", outputPath: "/o", options: ["a": 1], configHash: "h", id: "x")
        try store.updateJobState(jobID: "x", to: .failed, reason: "no worker can take layers 30..<60")
        let status = try #require(try store.statuses().first)
        #expect(status.state == .failed && status.phase == .failed)
        #expect(status.failureReason == "no worker can take layers 30..<60")
        #expect(status.workers.isEmpty && status.samplesThrough.isEmpty)
    }

    /// The quality report survives the store and the JSON schema, also when a perplexity is not finite (a broken
    /// checkpoint), which JSON cannot hold as a number.
    @Test(arguments: [(48.04, 67.36, JobQuality.Gate.passed), (48.04, Double.infinity, .failed), (48.04, .nan, .failed)])
    func qualityFiguresRoundTrip(original: Double, quantized: Double, gate: JobQuality.Gate) throws {
        let directory = try TemporaryStateDirectory()
        let store = try ClusterStateStore(stateDirectory: directory.path)
        try store.createJob(modelPath: "/m", outputPath: "/o", options: ["a": 1], configHash: "h", id: "q")
        let quality = JobQuality(samples: 16, tokens: 6017, originalPerplexity: original, quantizedPerplexity: quantized,
                                 maxPerplexityRatio: 2, gate: gate)
        try store.recordQuality(jobID: "q", quality: quality)
        let status = try store.status(jobID: "q")
        let stored = try #require(status.quality)
        #expect(stored.samples == 16 && stored.tokens == 6017 && stored.gate == gate && stored.maxPerplexityRatio == 2)
        #expect(stored.originalPerplexity == original)
        #expect(stored.quantizedPerplexity.bitPattern == quantized.bitPattern || (quantized.isNaN && stored.quantizedPerplexity.isNaN))
        let object = try #require(try JSONSerialization.jsonObject(with: status.jsonData()) as? [String: Any])
        let json = try #require(object["quality"] as? [String: Any])
        #expect(json["gate"] as? String == gate.rawValue)
        #expect(json["original_perplexity"] as? Double == original)
        if quantized.isFinite {
            #expect(json["quantized_perplexity"] as? Double == quantized)
            #expect(abs((json["perplexity_ratio"] as? Double ?? 0) - quantized / original) < 1e-12)
        } else {
            #expect(json["quantized_perplexity"] as? String == "\(quantized)")
        }
        let decoded = try JSONDecoder().decode(JobStatus.self, from: status.jsonData())
        #expect(decoded.quality?.gate == gate)
    }
}
