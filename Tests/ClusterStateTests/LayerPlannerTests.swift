import Testing
@testable import ClusterState

private let gigabyte: Int64 = 1 << 30

private func counts(_ plan: [LayerAssignment]) -> [Int] { plan.map(\.range.count) }

@Suite("LayerPlanner")
struct LayerPlannerTests {
    @Test func proportionalSplitFollowsMemory() throws {
        let plan = try LayerPlanner.plan(layerCount: 80, workers: [
            WorkerCapacity(name: "big", memoryBytes: 128 * gigabyte),
            WorkerCapacity(name: "small", memoryBytes: 64 * gigabyte),
        ])
        #expect(plan == [
            LayerAssignment(worker: "big", range: 0 ..< 53, embeddings: true),
            LayerAssignment(worker: "small", range: 53 ..< 80, embeddings: false),
        ])
    }

    @Test func equalMemorySplitsEvenlyAndTiesGoToEarlierWorkers() throws {
        let four = (0 ..< 4).map { WorkerCapacity(name: "w\($0)", memoryBytes: 80 * gigabyte) }
        #expect(counts(try LayerPlanner.plan(layerCount: 32, workers: four)) == [8, 8, 8, 8])
        let three = Array(four.prefix(3))
        #expect(counts(try LayerPlanner.plan(layerCount: 10, workers: three)) == [4, 3, 3])
        #expect(counts(try LayerPlanner.plan(layerCount: 11, workers: three)) == [4, 4, 3])
    }

    @Test func everyWorkerGetsAtLeastOneLayerEvenWithTinyMemory() throws {
        let workers = [WorkerCapacity(name: "a", memoryBytes: 1), WorkerCapacity(name: "b", memoryBytes: 1),
                       WorkerCapacity(name: "c", memoryBytes: 98)]
        #expect(counts(try LayerPlanner.plan(layerCount: 10, workers: workers)) == [1, 1, 8])
        #expect(counts(try LayerPlanner.plan(layerCount: 3, workers: workers)) == [1, 1, 1])
    }

    @Test func moreWorkersThanLayersIsAnError() {
        let workers = (0 ..< 3).map { WorkerCapacity(name: "w\($0)", memoryBytes: gigabyte) }
        #expect(throws: PlanningError.moreWorkersThanLayers(workers: 3, layers: 2)) {
            try LayerPlanner.plan(layerCount: 2, workers: workers)
        }
    }

    @Test func plansAreContiguousExactAndWithinOneLayerOfProportional() throws {
        let memories: [[Int64]] = [[7], [3, 5], [128, 64], [1, 2, 3, 4], [80, 80, 141, 24, 24], [1 << 40, 1, 1 << 35]]
        for memory in memories {
            let workers = memory.enumerated().map { WorkerCapacity(name: "w\($0.offset)", memoryBytes: $0.element) }
            for layerCount in memory.count ... 130 {
                let plan = try LayerPlanner.plan(layerCount: layerCount, workers: workers)
                try LayerPlanner.validate(plan: plan)
                #expect(plan.map(\.worker) == workers.map(\.name))
                #expect(plan.last?.range.upperBound == layerCount)
                let total = Double(memory.reduce(0, +))
                for (entry, bytes) in zip(plan, memory) {
                    let ideal = 1 + Double(layerCount - memory.count) * Double(bytes) / total
                    #expect(entry.range.count >= 1)
                    #expect(abs(Double(entry.range.count) - ideal) < 1.0, "\(memory) \(layerCount) \(entry)")
                }
                #expect(try LayerPlanner.plan(layerCount: layerCount, workers: workers) == plan)
            }
        }
    }

    @Test func embeddingsOnlyOnFirstWorker() throws {
        let workers = (0 ..< 4).map { WorkerCapacity(name: "w\($0)", memoryBytes: gigabyte) }
        let plan = try LayerPlanner.plan(layerCount: 16, workers: workers, split: [1, 5, 5, 5])
        #expect(plan.map(\.embeddings) == [true, false, false, false])
    }

    @Test func explicitSplitIsUsedAsGiven() throws {
        let workers = [WorkerCapacity(name: "a", memoryBytes: 128 * gigabyte),
                       WorkerCapacity(name: "b", memoryBytes: 64 * gigabyte)]
        let plan = try LayerPlanner.plan(layerCount: 80, workers: workers, split: [30, 50])
        #expect(plan.map(\.range) == [0 ..< 30, 30 ..< 80])
    }

    @Test func invalidSplitsAreRefusedWithClearErrors() throws {
        let workers = [WorkerCapacity(name: "a", memoryBytes: gigabyte), WorkerCapacity(name: "b", memoryBytes: gigabyte)]
        let wrongSum = #expect(throws: PlanningError.splitSumMismatch(sum: 70, layerCount: 80)) {
            try LayerPlanner.plan(layerCount: 80, workers: workers, split: [30, 40])
        }
        #expect(wrongSum?.description == "--split sums to 70 but the model has 80 layers")
        let wrongCount = #expect(throws: PlanningError.splitCountMismatch(entries: 1, workers: 2)) {
            try LayerPlanner.plan(layerCount: 80, workers: workers, split: [80])
        }
        #expect(wrongCount?.description.contains("one entry per worker") == true)
        let zero = #expect(throws: PlanningError.splitEntryNotPositive(index: 0, worker: "a", value: 0)) {
            try LayerPlanner.plan(layerCount: 80, workers: workers, split: [0, 80])
        }
        #expect(zero?.description.contains("worker 'a'") == true)
        #expect(throws: PlanningError.splitEntryNotPositive(index: 1, worker: "b", value: -5)) {
            try LayerPlanner.plan(layerCount: 80, workers: workers, split: [85, -5])
        }
        #expect(throws: PlanningError.splitSumMismatch(sum: Int.max, layerCount: 80)) {
            try LayerPlanner.plan(layerCount: 80, workers: workers, split: [Int.max, Int.max])
        }
    }

    @Test func badWorkerListsAreRefused() {
        #expect(throws: PlanningError.noWorkers) { try LayerPlanner.plan(layerCount: 4, workers: []) }
        let one = [WorkerCapacity(name: "a", memoryBytes: gigabyte)]
        #expect(throws: PlanningError.invalidLayerCount(0)) { try LayerPlanner.plan(layerCount: 0, workers: one) }
        #expect(throws: PlanningError.duplicateWorkerName("a")) {
            try LayerPlanner.plan(layerCount: 4, workers: one + one)
        }
        #expect(throws: PlanningError.nonPositiveMemory(worker: "z", memoryBytes: 0)) {
            try LayerPlanner.plan(layerCount: 4, workers: one + [WorkerCapacity(name: "z", memoryBytes: 0)])
        }
    }

    // a: 0..<30, b: 30..<60, c: 60..<80
    private let threeWay = [
        LayerAssignment(worker: "a", range: 0 ..< 30, embeddings: true),
        LayerAssignment(worker: "b", range: 30 ..< 60, embeddings: false),
        LayerAssignment(worker: "c", range: 60 ..< 80, embeddings: false),
    ]

    @Test func replanGivesTheDeadRangeToTheNeighbourWithMoreSpareMemory() throws {
        // b died with layers 0..<40 completed: 20 of its layers remain. a needs (30+20)×2 = 100 of 100 (spare 0),
        // c needs (20+20)×2 = 80 of 200 (spare 120): c takes 30..<60.
        let plan = try LayerPlanner.replan(plan: threeWay, deadWorker: "b", completedLayers: 40,
                                           survivors: [WorkerCapacity(name: "a", memoryBytes: 100),
                                                       WorkerCapacity(name: "c", memoryBytes: 200)],
                                           bytesPerLayer: 2)
        #expect(plan == [LayerAssignment(worker: "a", range: 0 ..< 30, embeddings: true),
                         LayerAssignment(worker: "c", range: 30 ..< 80, embeddings: false)])
    }

    @Test func replanFallsBackToTheOnlyNeighbourThatFits() throws {
        // c needs (20+20)×2 = 80 but has 79; a fits exactly.
        let plan = try LayerPlanner.replan(plan: threeWay, deadWorker: "b", completedLayers: 40,
                                           survivors: [WorkerCapacity(name: "a", memoryBytes: 100),
                                                       WorkerCapacity(name: "c", memoryBytes: 79)],
                                           bytesPerLayer: 2)
        #expect(plan.map(\.range) == [0 ..< 60, 60 ..< 80])
        #expect(plan.map(\.worker) == ["a", "c"])
    }

    @Test func replanCountsOnlyUncompletedLayersOfTheDeadRange() throws {
        // All of b's layers are completed, so a only needs its own 30 layers.
        let plan = try LayerPlanner.replan(plan: threeWay, deadWorker: "b", completedLayers: 60,
                                           survivors: [WorkerCapacity(name: "a", memoryBytes: 60),
                                                       WorkerCapacity(name: "c", memoryBytes: 40)],
                                           bytesPerLayer: 2)
        #expect(plan.map(\.range) == [0 ..< 60, 60 ..< 80])
    }

    @Test func replanAfterLosingTheFirstWorkerMovesTheEmbeddings() throws {
        let plan = try LayerPlanner.replan(plan: threeWay, deadWorker: "a", completedLayers: 10,
                                           survivors: [WorkerCapacity(name: "b", memoryBytes: 1000),
                                                       WorkerCapacity(name: "c", memoryBytes: 1000)],
                                           bytesPerLayer: 1, embeddingBytes: 500)
        #expect(plan == [LayerAssignment(worker: "b", range: 0 ..< 60, embeddings: true),
                         LayerAssignment(worker: "c", range: 60 ..< 80, embeddings: false)])
        // With 549 bytes b cannot hold 30 + 20 layers and the embeddings (550).
        #expect(throws: PlanningError.self) {
            try LayerPlanner.replan(plan: threeWay, deadWorker: "a", completedLayers: 10,
                                    survivors: [WorkerCapacity(name: "b", memoryBytes: 549),
                                                WorkerCapacity(name: "c", memoryBytes: 1000)],
                                    bytesPerLayer: 1, embeddingBytes: 500)
        }
    }

    @Test func replanWithoutASurvivorThatFitsThrowsWithTheReason() throws {
        let single = [LayerAssignment(worker: "only", range: 0 ..< 16, embeddings: true)]
        #expect(throws: PlanningError.noWorkerCanTakeRange(deadWorker: "only", range: 0 ..< 16,
                                                           reason: "no other worker survives")) {
            try LayerPlanner.replan(plan: single, deadWorker: "only", completedLayers: 3, survivors: [],
                                    bytesPerLayer: 1)
        }
        let error = #expect(throws: PlanningError.self) {
            try LayerPlanner.replan(plan: threeWay, deadWorker: "b", completedLayers: 0,
                                    survivors: [WorkerCapacity(name: "a", memoryBytes: 59),
                                                WorkerCapacity(name: "c", memoryBytes: 49)],
                                    bytesPerLayer: 1)
        }
        guard case .noWorkerCanTakeRange(let dead, let range, let reason)? = error else {
            Issue.record("expected noWorkerCanTakeRange, got \(String(describing: error))")
            return
        }
        #expect(dead == "b" && range == 30 ..< 60)
        #expect(reason.contains("'a' would need 60 bytes for 60 layers") && reason.contains("'c' would need 50 bytes"))
        #expect(error!.description.hasPrefix("no worker can take layers 30..<60 of dead worker 'b'"))
    }

    @Test func replanRefusesBadInput() {
        let survivors = [WorkerCapacity(name: "a", memoryBytes: 100), WorkerCapacity(name: "c", memoryBytes: 100)]
        #expect(throws: PlanningError.workerNotInPlan("zed")) {
            try LayerPlanner.replan(plan: threeWay, deadWorker: "zed", completedLayers: 0, survivors: survivors,
                                    bytesPerLayer: 1)
        }
        #expect(throws: PlanningError.missingCapacity(worker: "c")) {
            try LayerPlanner.replan(plan: threeWay, deadWorker: "b", completedLayers: 0,
                                    survivors: [survivors[0]], bytesPerLayer: 1)
        }
        #expect(throws: PlanningError.invalidCompletedLayers(completed: 81, layerCount: 80)) {
            try LayerPlanner.replan(plan: threeWay, deadWorker: "b", completedLayers: 81, survivors: survivors,
                                    bytesPerLayer: 1)
        }
    }

    @Test func validateRejectsGapsOverlapsAndMisplacedEmbeddings() {
        #expect(throws: PlanningError.self) { try LayerPlanner.validate(plan: []) }
        #expect(throws: PlanningError.self) {
            try LayerPlanner.validate(plan: [LayerAssignment(worker: "a", range: 0 ..< 4, embeddings: true),
                                             LayerAssignment(worker: "b", range: 5 ..< 8, embeddings: false)])
        }
        #expect(throws: PlanningError.self) {
            try LayerPlanner.validate(plan: [LayerAssignment(worker: "a", range: 0 ..< 4, embeddings: false)])
        }
        #expect(throws: PlanningError.self) {
            try LayerPlanner.validate(plan: [LayerAssignment(worker: "a", range: 0 ..< 4, embeddings: true),
                                             LayerAssignment(worker: "a", range: 4 ..< 8, embeddings: false)])
        }
    }
}
