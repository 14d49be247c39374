import CPUBackend
import ComputeBackend
import Foundation
import LlamaModel
import SafeTensors
import Testing
@testable import Calibration

/// The layer-streaming calibrator over the tiny model against the f32 transformers reference.
@Suite struct CalibratorFixtureTests {
    /// chunkTokens 1 puts every sample in a chunk of its own; 1_000_000 puts all 8 in one chunk.
    @Test(arguments: [(1, 8), (1_000_000, 1), (200, 3)])
    func amaxMatchesReference(chunkTokens: Int, expectedChunks: Int) throws {
        let samples = try TinyLlama.samples()
        let calibrator = try LayerStreamingCalibrator(backend: try TinyLlama.backend(), weights: try TinyLlama.model(),
                                                      samples: samples, chunkTokens: chunkTokens)
        #expect(calibrator.chunkCount == expectedChunks)
        #expect(calibrator.sampleCount == 8)
        #expect(calibrator.tokenTotal == samples.reduce(0) { $0 + $1.tokens.count })
        let layers = try calibrateAllLayers(calibrator)
        #expect(calibrator.spilledChunkCount == 0)

        let reference = try TinyLlama.referenceAmax()
        #expect(Set(calibrator.perLinearAmax.keys) == Set(reference.keys))
        for (name, expected) in reference {
            let value = try #require(calibrator.perLinearAmax[name], "\(name) missing")
            let error = abs(Double(value) - expected) / expected
            #expect(error < 1e-4, "\(name): \(value) vs \(expected), relative error \(error)")
        }
        for (layer, amax) in layers.enumerated() {
            #expect(Set(amax.keys) == Set(FusedGroup.allCases))
            for linear in try TinyLlama.config().linears(layer: layer) {
                #expect(calibrator.perLinearAmax[linear.name] == amax[linear.kind.group])
            }
        }
    }

    /// The chunk sizes give the same amax up to f32 summation order inside batched GEMMs.
    @Test func chunkingDoesNotChangeAmaxBeyondRounding() throws {
        func run(_ chunkTokens: Int) throws -> [String: Float] {
            let calibrator = try LayerStreamingCalibrator(backend: try TinyLlama.backend(), weights: try TinyLlama.model(),
                                                          samples: try TinyLlama.samples(), chunkTokens: chunkTokens)
            _ = try calibrateAllLayers(calibrator)
            return calibrator.perLinearAmax
        }
        let alone = try run(1), together = try run(1_000_000)
        for (name, value) in alone {
            let other = try #require(together[name])
            #expect(abs(value - other) <= 1e-5 * value, "\(name): \(value) alone, \(other) batched")
        }
    }

    /// A budget too small for every chunk spills some of them; the results are bit-identical, the files
    /// exist while layers run and are gone at the end.
    @Test(arguments: [0, 30_000])
    func spillingIsBitIdenticalAndCleansUp(budget: Int) throws {
        let scratch = try TemporaryDirectory()
        let scratchURL = URL(fileURLWithPath: scratch.path)
        let unlimited = try LayerStreamingCalibrator(backend: try TinyLlama.backend(), weights: try TinyLlama.model(),
                                                     samples: try TinyLlama.samples(), chunkTokens: 100,
                                                     scratchDirectory: scratchURL)
        let expected = try calibrateAllLayers(unlimited)
        #expect(unlimited.spilledChunkCount == 0)
        #expect(!FileManager.default.fileExists(atPath: unlimited.scratchDirectory.path))

        var filesSeen: [[String]] = []
        var spilledDirectory: URL?
        let spilling = try LayerStreamingCalibrator(
            backend: try TinyLlama.backend(), weights: try TinyLlama.model(), samples: try TinyLlama.samples(),
            chunkTokens: 100, activationMemoryBudget: budget, scratchDirectory: scratchURL,
            progress: { _ in
                let names = (try? FileManager.default.contentsOfDirectory(atPath: spilledDirectory!.path)) ?? []
                filesSeen.append(names.sorted())
            })
        spilledDirectory = spilling.scratchDirectory
        #expect(spilling.scratchDirectory.path.hasPrefix(scratch.path))
        let actual = try calibrateAllLayers(spilling)

        #expect(spilling.spilledChunkCount > 0)
        if budget > 0 { #expect(spilling.spilledChunkCount < spilling.chunkCount) } else {
            #expect(spilling.spilledChunkCount == spilling.chunkCount)
        }
        for (layer, (left, right)) in zip(expected, actual).enumerated() {
            for group in FusedGroup.allCases {
                #expect(left[group]!.bitPattern == right[group]!.bitPattern, "layer \(layer) \(group)")
            }
        }
        #expect(unlimited.perLinearAmax == spilling.perLinearAmax)
        // Every progress report saw one finished file per spilled chunk and no temporary file.
        #expect(filesSeen.count == 2 * spilling.chunkCount)
        for names in filesSeen {
            #expect(names.count == spilling.spilledChunkCount, "\(names)")
            #expect(names.allSatisfy { $0.hasSuffix(".f32") }, "\(names)")
        }
        // The last layer finished the calibration, which removes the files.
        #expect(!FileManager.default.fileExists(atPath: spilling.scratchDirectory.path))
        #expect(throws: CalibrationError.finished) { try spilling.activationAmax(layer: 2) }
    }

    /// Files of a calibration stopped part-way go away with `finish()` or when the calibrator is released.
    @Test func scratchFilesAreRemovedByFinishAndDeinit() throws {
        let scratch = try TemporaryDirectory()
        let scratchURL = URL(fileURLWithPath: scratch.path)
        func startSpilling() throws -> LayerStreamingCalibrator<CPUBackend> {
            let calibrator = try LayerStreamingCalibrator(
                backend: try TinyLlama.backend(), weights: try TinyLlama.model(), samples: try TinyLlama.samples(),
                chunkTokens: 1, activationMemoryBudget: 0, scratchDirectory: scratchURL)
            _ = try calibrator.activationAmax(layer: 0)
            let files = try FileManager.default.contentsOfDirectory(atPath: calibrator.scratchDirectory.path)
            #expect(files.count == 8)
            return calibrator
        }
        let finished = try startSpilling()
        finished.finish()
        #expect(!FileManager.default.fileExists(atPath: finished.scratchDirectory.path))
        #expect(throws: CalibrationError.finished) { try finished.activationAmax(layer: 1) }

        var released: LayerStreamingCalibrator<CPUBackend>? = try startSpilling()
        let directory = released!.scratchDirectory
        #expect(FileManager.default.fileExists(atPath: directory.path))
        released = nil
        #expect(!FileManager.default.fileExists(atPath: directory.path))
        #expect(try FileManager.default.contentsOfDirectory(atPath: scratch.path).isEmpty)
    }

    /// The release hook gets the embedding table once, then each layer's nine tensors after that layer.
    @Test func releaseHookNamesEachLayersTensors() throws {
        let config = try TinyLlama.config()
        var released: [[String]] = []
        let calibrator = try LayerStreamingCalibrator(backend: try TinyLlama.backend(), weights: try TinyLlama.model(),
                                                      samples: try TinyLlama.samples(),
                                                      releaseWeights: { released.append($0) })
        _ = try calibrator.activationAmax(layer: 0)
        #expect(released.count == 2)
        #expect(released.first == [LlamaConfig.embedTokensName])
        let layer0 = Set(config.linears(layer: 0).map(\.weightName) + config.layerNorms(layer: 0).map(\.name))
        #expect(Set(released.last ?? []) == layer0)
        #expect(released.last?.count == 9)
        _ = try calibrator.activationAmax(layer: 1)
        #expect(released.count == 3)
        #expect(Set(released.last ?? []).allSatisfy { $0.hasPrefix("model.layers.1.") })
    }
}
