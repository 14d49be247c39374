import Foundation
import GRDB
import NVFP4
import Testing
@testable import ClusterState

/// A coordd upgraded in the middle of a job: state written by schema v1 (one amax row per Linear, stored input
/// scales) must open, keep its jobs and plans, and drop the old statistics so the job calibrates again instead of
/// mixing per-Linear rows with per-input ones.
@Suite struct MigrationTests {
    @Test func v1StatisticsAreDroppedAndTheJobRecalibrates() throws {
        let directory = try TemporaryStateDirectory()
        let path = (directory.path as NSString).appendingPathComponent(ClusterStateStore.fileName)
        do {
            let queue = try DatabaseQueue(path: path)
            try ClusterStateStore.migrator.migrate(queue, upTo: "v1")
            try queue.write { db in
                let now = Date()
                try db.execute(sql: """
                    INSERT INTO job (id, state, modelPath, outputPath, optionsJSON, configHash, layerCount, createdAt, updatedAt)
                    VALUES ('old', 'calibrating', '/m', '/o', '{}', 'h', 2, ?, ?)
                    """, arguments: [now, now])
                try db.execute(sql: "INSERT INTO layerChunk (jobId, layer, chunk, sampleCount, recordedAt) VALUES ('old', 0, 0, 4, ?)",
                               arguments: [now])
                try db.execute(sql: """
                    INSERT INTO chunkAmax (jobId, layer, chunk, moduleName, amax)
                    VALUES ('old', 0, 0, 'model.layers.0.self_attn.q_proj', 3.5)
                    """)
                try db.execute(sql: "INSERT INTO layerProgress (jobId, layer, samplesDone, completed, completedAt) VALUES ('old', 0, 4, 1, ?)",
                               arguments: [now])
                try db.execute(sql: """
                    INSERT INTO activationScale (jobId, layer, moduleName, amax, inputScale)
                    VALUES ('old', 0, 'model.layers.0.self_attn.q_proj', 3.5, 0.0013)
                    """)
            }
        }
        let store = try ClusterStateStore(stateDirectory: directory.path)
        #expect(try store.job(id: "old")?.state == .calibrating)
        #expect(try store.recordedChunks(jobID: "old").isEmpty, "v1 chunks are dropped, so they run again")
        #expect(try store.activationAmax(jobID: "old").isEmpty)
        #expect(try store.lastCompletedLayer(jobID: "old") == nil, "no layer counts as calibrated any more")
        #expect(try store.layerAmaxRecords(jobID: "old").isEmpty)
        // The job goes on with per-input statistics.
        try store.recordChunkAmax(jobID: "old", layer: 0, chunk: 0, sampleCount: 4, amax: ["qkv": ActivationAmax(3.5)])
        #expect(try store.completeLayer(jobID: "old", layer: 0, expectedChunkCount: 1) == ["qkv": ActivationAmax(3.5)])
    }

    /// A coordd upgraded past v3 keeps its workers; their link transport is unknown until they report one.
    @Test func v3WorkersGainALinkTransportColumn() throws {
        let directory = try TemporaryStateDirectory()
        let path = (directory.path as NSString).appendingPathComponent(ClusterStateStore.fileName)
        do {
            let queue = try DatabaseQueue(path: path)
            try ClusterStateStore.migrator.migrate(queue, upTo: "v3-job-quality")
            try queue.write { db in
                try db.execute(sql: """
                    INSERT INTO worker (name, address, device, memoryBytes, freeDiskBytes, softwareVersion, lastHeartbeat, health)
                    VALUES ('w1', 'h:1', 'H200', 2, 3, 'v', ?, 'alive')
                    """, arguments: [Date()])
            }
        }
        do {
            let store = try ClusterStateStore(stateDirectory: directory.path)
            let worker = try #require(try store.worker(name: "w1"))
            #expect(worker.device == "H200" && worker.linkTransport == nil)
            try store.recordLinkTransport(workerName: "w1", linkTransport: "rdma→tcp: RDMA link failed mid-job")
            try store.close()
        }
        let reopened = try ClusterStateStore(stateDirectory: directory.path)
        #expect(try reopened.worker(name: "w1")?.linkTransport == "rdma→tcp: RDMA link failed mid-job")
        #expect(throws: ClusterStateError.workerNotFound("w9")) {
            try reopened.recordLinkTransport(workerName: "w9", linkTransport: "tcp")
        }
    }
}
