import Foundation
import Testing

/// `submit --exclude` through coordd and two workerd: the cluster writes the same bytes as the embedded run with the
/// same patterns (the excluded Linears as the source's weights, listed in `ignore`), and coordd refuses a pattern set
/// that splits a fused group.
@Suite(.serialized) struct ClusterExcludeTests {
    @Test func twoWorkersKeepExcludedLinearsLikeTheEmbeddedRun() throws {
        try withTemporaryDirectory("cluster-exclude") { directory in
            let patterns = ["--exclude", "model.layers.0.*", "--exclude", "*.down_proj"]
            let reference = try embeddedReference(in: directory, extra: patterns)
            let cluster = LocalCluster(directory: directory, token: try writeToken("exclude-token-0123456789abcdef", in: directory))
            defer { cluster.stopAll() }
            try cluster.startCoordinator()
            try cluster.startWorker("w1")
            try cluster.startWorker("w2")
            try cluster.waitForWorkers(["w1", "w2"])

            let refused = try cluster.coordctl(tinySubmitArguments(output: directory.appendingPathComponent("bad"),
                                                                   extra: ["--exclude", "*.gate_proj"]))
            #expect(refused.status == 64, "stderr: \(refused.stderr)")
            #expect(refused.stderr.contains("'*.gate_proj'") && refused.stderr.contains("model.layers.0.mlp.up_proj"),
                    "stderr: \(refused.stderr)")

            let output = directory.appendingPathComponent("cluster-out")
            let submitted = try cluster.coordctl(tinySubmitArguments(output: output, extra: ["--split", "1,1"] + patterns))
            #expect(submitted.status == 0, "submit: \(submitted.stderr)")
            let job = try #require(submitted.stdout.split(separator: "\n").last.map(String.init), "\(submitted.stderr)")
            let status = try cluster.waitForEnd(job)
            #expect(status["state"] as? String == "succeeded", "status: \(status)\n\(cluster.coordd?.output ?? "")")
            try expectIdenticalDirectories(reference, output)

            let config = try JSONSerialization.jsonObject(with: Data(contentsOf: output.appendingPathComponent("config.json")))
            let ignore = ((config as? [String: Any])?["quantization_config"] as? [String: Any])?["ignore"] as? [String]
            #expect(ignore?.count == 9 && ignore?.first == "lm_head" && ignore?.last == "model.layers.1.mlp.down_proj",
                    "\(String(describing: ignore))")
        }
    }
}
