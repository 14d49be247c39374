import CPUBackend
import Calibration
import Checkpoint
import ComputeBackend
import Foundation
import JobModel
import LlamaModel
import Logging
import NVFP4
import QuantizeJob
import SafeTensors
import Testing

/// Relative path → contents of every file under `directory`.
func directoryContents(_ directory: URL) throws -> [String: Data] {
    var result: [String: Data] = [:]
    let enumerator = try #require(FileManager.default.enumerator(atPath: directory.path))
    while let path = enumerator.nextObject() as? String {
        var isDirectory: ObjCBool = false
        let url = directory.appendingPathComponent(path)
        if FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory), !isDirectory.boolValue {
            result[path] = try Data(contentsOf: url)
        }
    }
    return result
}

func expectIdenticalDirectories(_ left: URL, _ right: URL, sourceLocation: SourceLocation = #_sourceLocation) throws {
    let a = try directoryContents(left), b = try directoryContents(right)
    #expect(a.keys.sorted() == b.keys.sorted(), sourceLocation: sourceLocation)
    for (name, data) in a { #expect(b[name] == data, "\(name) differs", sourceLocation: sourceLocation) }
    #expect(!a.isEmpty, sourceLocation: sourceLocation)
}

@Suite struct ClusterEngineTests {
    @Test func pipelinedAndStreamingSchedulesAgreeBitForBit() throws {
        let options = fixtureW4A4Options(output: URL(fileURLWithPath: "/nonexistent/out"), layout: .compressedTensors)
        let spec = try JobSpec(options: options)
        let config = try Fixtures.tinyConfig()
        let plan = try spec.makeCalibrationPlan(config: config, logger: quietLogger())
        func runner() throws -> LayerRangeRunner<CPUBackend> {
            try LayerRangeRunner(spec: spec, config: config, weights: try SafeTensorsModel(directory: spec.modelPath),
                                 backend: CPUBackend(config: config, activationPrecision: spec.calibration.activationPrecision),
                                 range: 0..<2, embeds: true, logger: quietLogger())
        }
        let pipelined = try runner()
        let perChunk = try plan.chunks.map { try pipelined.run(chunk: $0) }
        let streamed = try runner().runStreaming(plan: plan)
        #expect(perChunk == streamed)
        #expect(perChunk.allSatisfy { $0.layerAmax.map(\.layer) == [0, 1] })
        // One amax per observed input (fused group), each usable for a scale.
        #expect(perChunk.allSatisfy { $0.layerAmax.allSatisfy { entry in
            FusedGroup.allCases.allSatisfy { entry.amax[$0].isFinite && entry.amax[$0] > 0 }
        } })
    }

    @Test func restartedWorkerResumesFromItsBoundaryStore() throws {
        try withTemporaryDirectory("cluster-resume") { parent throws in
            let options = fixtureW4A4Options(output: parent.appendingPathComponent("out"), layout: .compressedTensors)
            let spec = try JobSpec(options: options)
            let config = try Fixtures.tinyConfig()
            let plan = try spec.makeCalibrationPlan(config: config, logger: quietLogger())
            func runner(_ range: Range<Int>) throws -> LayerRangeRunner<CPUBackend> {
                try LayerRangeRunner(spec: spec, config: config, weights: try SafeTensorsModel(directory: spec.modelPath),
                                     backend: CPUBackend(config: config, activationPrecision: spec.calibration.activationPrecision),
                                     range: range, embeds: range.lowerBound == 0, logger: quietLogger())
            }
            let first = try runner(0..<1)
            let store = try BoundaryStateStore(scratchDirectory: parent, jobID: spec.jobID, firstLayer: 1,
                                               hiddenSize: config.hiddenSize)
            let uninterrupted = try runner(1..<2)
            var expected: [ChunkResult] = []
            for chunk in plan.chunks {
                let boundary = try first.run(chunk: chunk).output
                try store.save(boundary, chunk: chunk.index)
                expected.append(try uninterrupted.run(chunk: chunk, hidden: boundary))
            }
            #expect(try store.storedChunks() == Array(plan.chunks.indices))
            // A new process: only the store survives.
            let restarted = try runner(1..<2)
            let resumed = try plan.chunks.map { try restarted.run(chunk: $0, hidden: try store.load(chunk: $0.index)) }
            #expect(resumed == expected)
            try store.removeAll()
            #expect(try store.storedChunks() == [])
            #expect(!FileManager.default.fileExists(atPath: store.jobDirectory.path))
        }
    }
}

@Suite struct BoundaryStateStoreTests {
    static func states(tokens: Int, width: Int, seed: UInt64) -> HiddenStates {
        var generator = SplitMix64(seed: seed)
        var values = (0..<(tokens * width)).map { _ in Float(bitPattern: UInt32(truncatingIfNeeded: generator.next())) }
        values = values.map { $0.isNaN ? -0.0 : $0 }  // HiddenStates compares values; NaN never equals itself
        values[0] = .leastNonzeroMagnitude
        return HiddenStates(hiddenSize: width, values: values)
    }

    @Test func roundTripIsBitExactAndListsChunks() throws {
        try withTemporaryDirectory("boundary") { parent throws in
            let store = try BoundaryStateStore(scratchDirectory: parent, jobID: "job-1", firstLayer: 3, hiddenSize: 16)
            #expect(try store.storedChunks() == [])
            let a = Self.states(tokens: 5, width: 16, seed: 1), b = Self.states(tokens: 2, width: 16, seed: 2)
            try store.save(a, chunk: 4)
            try store.save(b, chunk: 0)
            #expect(try store.storedChunks() == [0, 4])
            let loaded = try store.load(chunk: 4, expectedTokens: 5)
            #expect(loaded.values.map(\.bitPattern) == a.values.map(\.bitPattern))
            #expect(try store.load(chunk: 0) == b)
            // Overwriting is atomic and leaves no temporary file behind.
            try store.save(a, chunk: 0)
            #expect(try store.load(chunk: 0) == a)
            #expect(try FileManager.default.contentsOfDirectory(atPath: store.directory.path).sorted()
                == ["chunk-000000.hs", "chunk-000004.hs"])
            // Raw bytes are the little-endian f32 values, nothing else.
            #expect(a.littleEndianBytes().count == 5 * 16 * 4)
            #expect(try HiddenStates(hiddenSize: 16, littleEndianBytes: a.littleEndianBytes()) == a)
        }
    }

    /// Kept states are tied to the job's input fingerprint: the same digest reuses them, another one (or states kept
    /// before any digest was recorded) is refused, naming the directory.
    @Test func keptStatesAreReusedOnlyUnderTheFingerprintTheyWereKeptFor() throws {
        try withTemporaryDirectory("boundary") { parent throws in
            let store = try BoundaryStateStore(scratchDirectory: parent, jobID: "job-3", firstLayer: 1, hiddenSize: 16)
            let digest = String(repeating: "a", count: 64), other = String(repeating: "b", count: 64)
            try store.bind(toFingerprint: digest)
            try store.save(Self.states(tokens: 3, width: 16, seed: 4), chunk: 0)
            try store.bind(toFingerprint: digest)
            #expect(throws: BoundaryStateError.keptForOtherInputs(path: store.directory.path, kept: digest, expected: other)) {
                try store.bind(toFingerprint: other)
            }
            #expect(try store.storedChunks() == [0], "a refused bind leaves the kept states alone")
            // States from before fingerprints: refused too.
            try FileManager.default.removeItem(at: store.directory.appendingPathComponent("fingerprint"))
            #expect(throws: BoundaryStateError.keptForOtherInputs(path: store.directory.path, kept: nil, expected: digest)) {
                try store.bind(toFingerprint: digest)
            }
        }
    }

    @Test func corruptionIsDetectedAndNamesTheFile() throws {
        try withTemporaryDirectory("boundary") { parent throws in
            let store = try BoundaryStateStore(scratchDirectory: parent, jobID: "job-2", firstLayer: 1, hiddenSize: 16)
            try store.save(Self.states(tokens: 3, width: 16, seed: 3), chunk: 2)
            let url = store.url(ofChunk: 2)
            var bytes = try Data(contentsOf: url)
            bytes[bytes.count - 5] ^= 0x01
            try bytes.write(to: url)
            let flipped = expectFailure { _ = try store.load(chunk: 2) }
            guard case .corrupt(let path, let reason)? = flipped as? BoundaryStateError else {
                Issue.record("expected corrupt, got \(String(describing: flipped))")
                return
            }
            #expect(path == url.path && reason.contains("SHA-256"))

            try bytes.prefix(100).write(to: url)
            #expect((expectFailure { _ = try store.load(chunk: 2) } as? BoundaryStateError).map { "\($0)" }?
                .contains("payload bytes") == true)
            try store.save(Self.states(tokens: 3, width: 16, seed: 3), chunk: 2)
            #expect((expectFailure { _ = try store.load(chunk: 2, expectedTokens: 4) } as? BoundaryStateError).map { "\($0)" }?
                .contains("3 tokens, expected 4") == true)
            #expect(expectFailure { _ = try store.load(chunk: 7) } is BoundaryStateError)
            #expect(expectFailure { _ = try BoundaryStateStore(scratchDirectory: parent, jobID: "../x", firstLayer: 0, hiddenSize: 16) }
                as? BoundaryStateError == .invalidJobID("../x"))
        }
    }

    @Test func hiddenStateBytesOfTheWrongSizeAreRefused() {
        #expect(expectFailure { _ = try HiddenStates(hiddenSize: 4, littleEndianBytes: Data(count: 20)) } is HiddenStateBytesError)
        #expect(expectFailure { _ = try HiddenStates(hiddenSize: 4, littleEndianBytes: Data(count: 32), expectedTokens: 3) }
            is HiddenStateBytesError)
    }
}

@Suite struct JobSpecTests {
    @Test func specTravelsAsJSONAndGivesBackTheOptions() throws {
        var options = fixtureW4A4Options(output: URL(fileURLWithPath: "/tmp/out"), layout: .modelopt)
        options.calibration.selection.seed = 42
        options.calibration.activationPrecision = .float32
        options.calibration.scratchDirectory = URL(fileURLWithPath: "/tmp/scratch")
        let spec = try JobSpec(options: options)
        let decoded = try JSONDecoder().decode(JobSpec.self, from: JSONEncoder().encode(spec))
        #expect(decoded == spec)
        #expect(try JobSpec(options: decoded.quantizeOptions) == spec)
        #expect(spec.configSHA256.count == 64)
        #expect(String(decoding: try JSONEncoder().encode(spec), as: UTF8.self).contains("\"modelopt\""))
    }

    @Test func modelCheckNamesThePathAndBothHashes() throws {
        try withTemporaryDirectory("modelcheck") { parent throws in
            let model = try TinyModelBuilder().write(to: parent.appendingPathComponent("model"))
            let spec = try JobSpec(options: QuantizeOptions(modelDirectory: model, outputDirectory: parent.appendingPathComponent("out")))
            try ModelCheck.verify(spec)
            let config = model.appendingPathComponent("config.json")
            try (try Data(contentsOf: config) + Data(" ".utf8)).write(to: config)
            let thrown = expectFailure { try ModelCheck.verify(spec) }
            guard case .configMismatch(let path, let expected, let actual)? = thrown as? ModelCheckError else {
                Issue.record("expected configMismatch, got \(String(describing: thrown))")
                return
            }
            #expect(path == config.path && expected == spec.configSHA256 && actual != expected)
            let text = "\(thrown!)"
            #expect(text.contains(config.path) && text.contains(expected) && text.contains(actual))
        }
    }
}

@Suite struct CheckpointAssemblerTests {
    static let amax: [FusedGroup: ActivationAmax] = [.qkv: ActivationAmax(3), .o: ActivationAmax(1.5),
                                                     .gateUp: ActivationAmax(2.25), .down: ActivationAmax(7)]

    /// An assembler for a W4A4 job on the fixture, its embeddings written, and layer 0's and 1's exported tensors.
    func prepared(_ parent: URL) throws -> (CheckpointAssembler, [[ExportedTensor]]) {
        var options = QuantizeOptions(modelDirectory: Fixtures.tinyLlama, outputDirectory: parent.appendingPathComponent("OUT"))
        options.scheme = .nvfp4
        options.jobID = "assembler"
        let spec = try JobSpec(options: options)
        let config = try Fixtures.tinyConfig()
        let source = try SafeTensorsModel(directory: Fixtures.tinyLlama.path)
        let exporter = try LayerExporter(spec: spec, config: config, source: source)
        let layers = try (0..<2).map { try exporter.export(layer: $0, activationAmax: Self.amax) }
        let assembler = try CheckpointAssembler(spec: spec, config: config, source: source, logger: quietLogger())
        try assembler.writeEmbeddings()
        return (assembler, layers)
    }

    @Test func wrongChecksumIsRejectedNamingLayerAndTensor() throws {
        try withTemporaryDirectory("assembler") { parent throws in
            let (assembler, layers) = try prepared(parent)
            var tensors = layers[0]
            let index = try #require(tensors.firstIndex { $0.name.hasSuffix("mlp.up_proj.weight_packed") })
            tensors[index].data[0] ^= 0x10
            let thrown = expectFailure { try assembler.add(layer: 0, tensors: tensors) }
            guard case .checksumMismatch(let layer, let tensor, _, _)? = thrown as? CheckpointAssemblyError else {
                Issue.record("expected checksumMismatch, got \(String(describing: thrown))")
                return
            }
            #expect(layer == 0 && tensor == "model.layers.0.mlp.up_proj.weight_packed")
            #expect("\(thrown!)".contains("layer 0") && "\(thrown!)".contains(tensor))
            assembler.discard()
            #expect(!FileManager.default.fileExists(atPath: assembler.partialDirectory.path))
        }
    }

    @Test func missingOrForeignTensorsAreRejected() throws {
        try withTemporaryDirectory("assembler") { parent throws in
            let (assembler, layers) = try prepared(parent)
            let missing = layers[0].filter { $0.name != "model.layers.0.self_attn.k_proj.input_global_scale" }
            #expect(expectFailure { try assembler.add(layer: 0, tensors: missing) } as? CheckpointAssemblyError
                == .missingTensors(layer: 0, tensors: ["model.layers.0.self_attn.k_proj.input_global_scale"]))
            var renamed = layers[0]
            renamed[0].name = "model.layers.1.input_layernorm.weight"
            #expect(expectFailure { try assembler.add(layer: 0, tensors: renamed) } as? CheckpointAssemblyError
                == .unexpectedTensors(layer: 0, tensors: ["model.layers.1.input_layernorm.weight"]))
            assembler.discard()
        }
    }

    @Test func layersMustArriveInOrder() throws {
        try withTemporaryDirectory("assembler") { parent throws in
            let (assembler, layers) = try prepared(parent)
            #expect(expectFailure { try assembler.add(layer: 1, tensors: layers[1]) } as? CheckpointAssemblyError
                == .layerOutOfOrder(received: 1, expected: 0))
            #expect(expectFailure { try assembler.finish(calibration: nil) } is CheckpointAssemblyError)
            // Shuffled tensors of the right layer are fine; then the whole checkpoint verifies and appears.
            try assembler.add(layer: 0, tensors: layers[0].reversed())
            #expect(expectFailure { try assembler.add(layer: 0, tensors: layers[0]) } as? CheckpointAssemblyError
                == .layerOutOfOrder(received: 0, expected: 1))
            try assembler.add(layer: 1, tensors: layers[1])
            let report = try assembler.finish(calibration: CalibrationRecord(
                source: "test", samples: 1, tokens: 1, contentHash: "", device: "none",
                activationAmax: [0: Self.amax, 1: Self.amax]))
            #expect(report.quantizedLinears == 14)
            try assembler.commit()
            #expect(FileManager.default.fileExists(atPath: parent.appendingPathComponent("OUT/model.safetensors").path))
        }
    }
}

@Suite struct LayerRangeRunnerErrorTests {
    let spec: JobSpec
    let config: LlamaConfig
    let plan: CalibrationPlan

    init() throws {
        var options = fixtureW4A4Options(output: URL(fileURLWithPath: "/nonexistent/out"), layout: .compressedTensors)
        options.calibration.chunkTokens = 1  // one sample per chunk, so chunk i is sample i
        spec = try JobSpec(options: options)
        config = try Fixtures.tinyConfig()
        plan = try spec.makeCalibrationPlan(config: config, logger: quietLogger())
    }

    func runner(_ range: Range<Int>, weights: any WeightSource) throws -> LayerRangeRunner<CPUBackend> {
        try LayerRangeRunner(spec: spec, config: config, weights: weights, backend: CPUBackend(config: config),
                             range: range, embeds: range.lowerBound == 0, logger: quietLogger())
    }

    /// An infinite down_proj weight in layer 1 poisons that layer's output; the second range names layer and sample,
    /// in both schedules, as LayerStreamingCalibrator does.
    @Test func nonFiniteOutputNamesLayerAndSample() throws {
        let model = try SafeTensorsModel(directory: Fixtures.tinyLlama.path)
        let name = "model.layers.1.mlp.down_proj.weight"
        let description = try #require(model.describeTensor(name))
        var floats = try model.floats(name, expectedShape: description.shape)
        floats[0] = .infinity
        var overrides = InMemoryWeightSource()
        overrides.set(name, shape: description.shape, floats: floats)
        let poisoned = OverlayWeightSource(base: model, overrides: overrides)

        let chunk = plan.chunks[3]
        let boundary = try runner(0..<1, weights: model).run(chunk: chunk).output
        let expected = CalibrationError.nonFiniteHiddenState(layer: 1, sample: 3, source: chunk.sources[0])
        let pipelined = expectFailure { _ = try runner(1..<2, weights: poisoned).run(chunk: chunk, hidden: boundary) }
        #expect(pipelined as? CalibrationError == expected)
        #expect("\(pipelined!)".contains("output of layer 1 for sample 3"))

        let first = try runner(0..<1, weights: model)
        let boundaries = try plan.chunks.map { try first.run(chunk: $0).output }
        let pass = try runner(1..<2, weights: poisoned).streamingPass(plan: plan, input: { boundaries[$0.index] })
        let streamed = expectFailure { _ = try pass.calibrateNextLayer() }
        // Layer-streaming runs chunk 0 (sample 0) through layer 1 first.
        #expect(streamed as? CalibrationError == .nonFiniteHiddenState(layer: 1, sample: 0, source: plan.chunks[0].sources[0]))
    }

    @Test func inputMustMatchTheRange() throws {
        let model = try SafeTensorsModel(directory: Fixtures.tinyLlama.path)
        let chunk = plan.chunks[0]
        let states = HiddenStates(hiddenSize: config.hiddenSize, values: [Float](repeating: 0.5, count: chunk.tokenCount * config.hiddenSize))
        #expect(expectFailure { _ = try runner(1..<2, weights: model).run(chunk: chunk) } is CalibrationError)
        #expect(expectFailure { _ = try runner(0..<1, weights: model).run(chunk: chunk, hidden: states) } is CalibrationError)
        let short = HiddenStates(hiddenSize: config.hiddenSize, values: Array(states.values.dropLast(config.hiddenSize)))
        #expect(expectFailure { _ = try runner(1..<2, weights: model).run(chunk: chunk, hidden: short) } is ComputeBackendError)
        var nan = states
        nan.values[0] = .nan
        #expect(expectFailure { _ = try runner(1..<2, weights: model).run(chunk: chunk, hidden: nan) } as? CalibrationError
            == .nonFiniteHiddenState(layer: 0, sample: 0, source: chunk.sources[0]))
        #expect(expectFailure {
            _ = try LayerRangeRunner(spec: spec, config: config, weights: model, backend: CPUBackend(config: config),
                                     range: 1..<3, embeds: false, logger: quietLogger())
        } is CalibrationError)
    }

    @Test func chunkingIsTheSharedGreedyGrouping() throws {
        #expect(try calibrationChunkRanges(tokenCounts: [3, 4, 10, 2, 2, 2], chunkTokens: 7) == [0..<2, 2..<3, 3..<6])
        #expect(try calibrationChunkRanges(tokenCounts: [9], chunkTokens: 4) == [0..<1])
        let plan = try CalibrationPlan(set: CalibrationSet(samples: (1...4).map {
            CalibrationSample(source: "s\($0)", tokens: [Int32](repeating: Int32($0), count: $0))
        }), source: "test", chunkTokens: 5)
        #expect(plan.chunks.map(\.sampleRange) == [0..<2, 2..<3, 3..<4])
        #expect(plan.chunks[0].tokenIDs == [1, 2, 2] && plan.chunks[0].sources == ["s1", "s2"])
        #expect(plan.tokenCount == 10 && plan.sampleCount == 4)
        #expect(try JSONDecoder().decode(CalibrationPlan.self, from: JSONEncoder().encode(plan)) == plan)
    }
}

/// The up-front output checks that `quantize` and `submit` run before any work.
@Suite struct OutputSpaceTests {
    /// Too little free space for the planned checkpoint is refused before calibration, saying how much is needed and
    /// how much is free; enough passes.
    @Test func tooLittleFreeSpaceIsRefusedUpFrontNamingNeededAndFree() throws {
        try withTemporaryDirectory("space") { parent in
            let options = fixtureW4A4Options(output: parent.appendingPathComponent("out"), layout: .compressedTensors)
            let spec = try JobSpec(options: options)
            let config = try Fixtures.tinyConfig()
            let source = try SafeTensorsModel(directory: spec.modelPath)
            let needed = try CheckpointAssembler.plan(spec: spec, config: config, source: source).totalSize
            do {
                try CheckpointAssembler.checkOutput(spec: spec, config: config, source: source, freeBytes: { _ in 4096 })
                Issue.record("a 4 kB disk was accepted for a \(needed)-byte checkpoint")
            } catch let error as CheckpointError {
                #expect(error.message.contains("needs \(formatBytes(needed)), \(formatBytes(4096)) free"), "\(error)")
            }
            try CheckpointAssembler.checkOutput(spec: spec, config: config, source: source,
                                                freeBytes: { _ in Int64(needed) })
        }
    }
}
