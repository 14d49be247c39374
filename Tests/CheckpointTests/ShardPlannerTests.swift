import Checkpoint
import Foundation
import LlamaModel
import SafeTensors
import Testing

@Suite struct ShardPlannerTests {
    static func tinyGroups(layout: CheckpointLayout = .compressedTensors, scheme: QuantizationScheme = .nvfp4a16)
        throws -> [TensorGroup]
    {
        let config = try Fixtures.tinyConfig()
        return checkpointTensorGroups(config: config, layout: LinearTensorLayout(layout: layout, scheme: scheme),
                                      sourceDTypes: [:])
    }

    @Test func groupsFollowTheWriteOrder() throws {
        let config = try Fixtures.tinyConfig()
        let groups = try Self.tinyGroups()
        // embed, 2 × (2 norms + 7 Linears), final norm, lm_head
        #expect(groups.count == 1 + 2 * 9 + 2)
        #expect(groups.first?.tensors.map(\.name) == [LlamaConfig.embedTokensName])
        #expect(groups.last?.tensors.map(\.name) == [LlamaConfig.lmHeadName])
        #expect(groups[1].tensors.map(\.name) == [LlamaConfig.inputLayerNormName(layer: 0)])
        #expect(groups[3].tensors.map(\.name) == [
            "model.layers.0.self_attn.q_proj.weight_packed", "model.layers.0.self_attn.q_proj.weight_scale",
            "model.layers.0.self_attn.q_proj.weight_global_scale",
        ])
        #expect(groups.flatMap(\.tensors).count == config.nonQuantizedTensors.count + 3 * config.allLinears.count)
    }

    @Test func tiedEmbeddingsHaveNoLMHeadGroup() throws {
        var text = try String(contentsOf: Fixtures.tinyLlama.appendingPathComponent("config.json"), encoding: .utf8)
        text = text.replacingOccurrences(of: "\"tie_word_embeddings\": false", with: "\"tie_word_embeddings\": true")
        let config = try LlamaConfig(json: Data(text.utf8), source: "tied")
        #expect(config.tieWordEmbeddings)
        let groups = checkpointTensorGroups(config: config, layout: LinearTensorLayout(layout: .modelopt, scheme: .nvfp4),
                                            sourceDTypes: [:])
        #expect(!groups.flatMap(\.tensors).contains { $0.name == LlamaConfig.lmHeadName })
    }

    @Test func smallLimitGivesSeveralShardsWithLinearsKeptTogether() throws {
        let groups = try Self.tinyGroups(scheme: .nvfp4)
        let plan = ShardPlanner.plan(groups: groups, maxShardSize: 50_000)
        let count = plan.shards.count
        #expect(count > 2)
        #expect(plan.needsIndex)
        #expect(plan.shards.enumerated().allSatisfy { index, shard in
            shard.fileName == String(format: "model-%05d-of-%05d.safetensors", index + 1, count)
        })
        // Each tensor in exactly one shard, and every planned tensor present.
        let all = plan.shards.flatMap(\.tensors)
        #expect(all == groups.flatMap(\.tensors))
        #expect(Set(all.map(\.name)).count == all.count)
        #expect(plan.totalSize == all.reduce(0) { $0 + $1.byteCount })
        // A group never spans shards; a shard over the limit holds one group only.
        for group in groups {
            let files = Set(group.tensors.map { plan.weightMap[$0.name]! })
            #expect(files.count == 1, "\(group.tensors[0].name) is split over \(files)")
        }
        for shard in plan.shards where shard.byteCount > 50_000 {
            #expect(groups.contains { $0.tensors == shard.tensors }, "\(shard.fileName) is over the limit with several groups")
        }
    }

    @Test func greedyPackingAtTheLimit() {
        func group(_ name: String, bytes: Int) -> TensorGroup {
            TensorGroup([PlannedTensor(name: name, dtype: .u8, shape: [bytes])])
        }
        func names(_ plan: ShardPlan) -> [[String]] { plan.shards.map { $0.tensors.map(\.name) } }
        // A shard may reach the limit exactly; the next byte starts a new one.
        #expect(names(ShardPlanner.plan(groups: [group("a", bytes: 4), group("b", bytes: 4), group("c", bytes: 4)],
                                        maxShardSize: 8)) == [["a", "b"], ["c"]])
        #expect(names(ShardPlanner.plan(groups: [group("a", bytes: 4), group("b", bytes: 5)], maxShardSize: 8))
            == [["a"], ["b"]])
        // A group over the limit gets a shard of its own and is never split.
        #expect(names(ShardPlanner.plan(groups: [group("a", bytes: 1), group("big", bytes: 10), group("c", bytes: 1)],
                                        maxShardSize: 8)) == [["a"], ["big"], ["c"]])
        let twoTensorGroup = TensorGroup([PlannedTensor(name: "x.weight_packed", dtype: .u8, shape: [6]),
                                          PlannedTensor(name: "x.weight_scale", dtype: .f8e4m3, shape: [6])])
        #expect(names(ShardPlanner.plan(groups: [group("a", bytes: 2), twoTensorGroup], maxShardSize: 8))
            == [["a"], ["x.weight_packed", "x.weight_scale"]])
    }

    @Test func largeLimitGivesOneModelSafetensors() throws {
        let plan = ShardPlanner.plan(groups: try Self.tinyGroups(), maxShardSize: 5_000_000_000)
        #expect(plan.shards.map(\.fileName) == [SafeTensorsModel.singleFileName])
        #expect(!plan.needsIndex)
    }

    @Test func shardFileNames() {
        #expect(ShardPlanner.shardFileName(index: 0, count: 1) == "model.safetensors")
        #expect(ShardPlanner.shardFileName(index: 0, count: 3) == "model-00001-of-00003.safetensors")
        #expect(ShardPlanner.shardFileName(index: 11, count: 12) == "model-00012-of-00012.safetensors")
    }

    @Test(arguments: [
        ("5GB", 5_000_000_000), ("500MB", 500_000_000), ("2GiB", 2_147_483_648), ("123", 123),
        ("10kb", 10_000), ("4 MiB", 4_194_304), ("1.5GB", 1_500_000_000),
    ])
    func parseSize(text: String, bytes: Int) throws {
        #expect(try ShardPlanner.parseSize(text) == bytes)
    }

    @Test(arguments: ["abc", "0", "-5GB", "", "GB", "0MB", "5XB"])
    func parseSizeRejects(text: String) {
        let error = expectCheckpointError { _ = try ShardPlanner.parseSize(text) }
        #expect(error?.subject == "--max-shard-size")
        #expect(error?.message.contains("'\(text)'") == true)
    }

    @Test(arguments: ["1e12GB", "infGB", "1e300B"])
    func parseSizeRejectsValuesTooLargeForInt(text: String) {
        let error = expectCheckpointError { _ = try ShardPlanner.parseSize(text) }
        #expect(error?.subject == "--max-shard-size")
    }

    @Test func tinyModelWrittenInSmallShardsReadsBackAndVerifies() throws {
        try withTemporaryDirectory { directory in
            let checkpoint = ReferenceCheckpoint(layout: .compressedTensors, scheme: .nvfp4, maxShardSize: 100_000)
            let plan = try checkpoint.write(to: directory)
            #expect(plan.shards.count > 2)
            let written = try SafeTensorsModel(directory: directory.path)
            #expect(written.files.count == plan.shards.count)
            let onDisk = try FileManager.default.contentsOfDirectory(atPath: directory.path)
                .filter { $0.hasSuffix(".safetensors") }.sorted()
            #expect(onDisk == plan.shards.map(\.fileName))

            let index = try jsonObject(directory.appendingPathComponent(SafeTensorsModel.indexFileName))
            let total = try #require((index["metadata"] as? [String: Any])?["total_size"] as? Int)
            let tensorBytes = try written.tensorNames.reduce(0) { $0 + (try written.info($1).byteCount) }
            #expect(total == tensorBytes)
            #expect(written.weightMap == plan.weightMap)
            for linear in try Fixtures.tinyConfig().allLinears {
                let files = Set(try ["weight_packed", "weight_scale", "weight_global_scale", "input_global_scale"]
                    .map { try written.file(containing: "\(linear.name).\($0)").path })
                #expect(files.count == 1, "\(linear.name)")
            }
            let report = try checkpoint.verifier().verify(directory: directory)
            #expect(report.files == plan.shards.count)
            #expect(report.quantizedLinears == 14)
            #expect(report.tensors == plan.tensorCount)
        }
    }
}

@Suite struct CheckpointWriterTests {
    @Test func outOfOrderTensorIsRefused() throws {
        try withTemporaryDirectory { directory in
            let plan = ShardPlanner.plan(groups: [TensorGroup([PlannedTensor(name: "a", dtype: .f32, shape: [1]),
                                                              PlannedTensor(name: "b", dtype: .f32, shape: [])])],
                                         maxShardSize: 1000)
            let writer = CheckpointWriter(directory: directory, plan: plan)
            #expect(writer.nextTensorName == "a")
            let error = expectCheckpointError { try writer.write("b", data: float32Data(1)) }
            #expect(error?.subject == "b")
            #expect(error?.message.contains("'a'") == true)
        }
    }

    @Test func finishWithAMissingTensorIsRefused() throws {
        try withTemporaryDirectory { directory in
            let plan = ShardPlanner.plan(groups: [TensorGroup([PlannedTensor(name: "a", dtype: .f32, shape: [1])]),
                                                  TensorGroup([PlannedTensor(name: "b", dtype: .f32, shape: [1])])],
                                         maxShardSize: 4)
            #expect(plan.shards.count == 2)
            let writer = CheckpointWriter(directory: directory, plan: plan)
            try writer.write("a", data: float32Data(1))
            #expect(writer.nextTensorName == "b")
            let error = expectCheckpointError { try writer.finish() }
            #expect(error?.subject == "b")
        }
    }

    @Test func extraTensorAfterThePlanIsRefused() throws {
        try withTemporaryDirectory { directory in
            let plan = ShardPlanner.plan(groups: [TensorGroup([PlannedTensor(name: "a", dtype: .f32, shape: [1])])],
                                         maxShardSize: 4)
            let writer = CheckpointWriter(directory: directory, plan: plan)
            try writer.write("a", data: float32Data(1))
            #expect(writer.nextTensorName == nil)
            let error = expectCheckpointError { try writer.write("z", data: float32Data(1)) }
            #expect(error?.subject == "z")
            try writer.finish()
            #expect(try SafeTensorsModel(directory: directory.path).tensorNames == ["a"])
        }
    }
}
