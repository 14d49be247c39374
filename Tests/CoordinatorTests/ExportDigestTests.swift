import ClusterProtocol
import Testing
@testable import Coordinator

/// Exported tensors cross a plaintext network with their SHA-256; an in-process worker, or one whose data path is
/// mutual TLS, may leave it out.
@Suite struct ExportDigestTests {
    private func manifest(digests: [String?]) -> ExportManifest {
        ExportManifest(layer: 3, entries: digests.enumerated().map { index, digest in
            ExportManifest.Entry(name: "model.layers.3.tensor\(index)", dtype: "U8", shape: [4], byteCount: 4, sha256: digest,
                                 bulkID: UInt64(index))
        })
    }

    @Test func aRemoteWorkersTensorWithoutItsDigestIsRefusedNamingWorkerAndTensor() throws {
        let digest = String(repeating: "a", count: 64)
        let error = #expect(throws: JobFailure.self) {
            try manifest(digests: [digest, nil, nil]).requireDigests(from: "spark-2", arriveIntact: false)
        }
        guard case .missingTensorDigest(let worker, let tensor) = try #require(error) else {
            Issue.record("unexpected \(String(describing: error))")
            return
        }
        #expect(worker == "spark-2" && tensor == "model.layers.3.tensor1")
        #expect("\(error!)".contains("spark-2") && "\(error!)".contains("model.layers.3.tensor1"))
    }

    @Test func digestsAreOptionalOnlyWhereTheBytesArriveIntact() throws {
        try manifest(digests: [nil, nil]).requireDigests(from: "local", arriveIntact: true)
        try manifest(digests: [String(repeating: "b", count: 64)]).requireDigests(from: "spark-2", arriveIntact: false)
    }
}
