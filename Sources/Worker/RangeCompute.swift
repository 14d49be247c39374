import CPUBackend
import Checkpoint
import Calibration
import ClusterProtocol
import ComputeBackend
import Foundation
import LlamaModel
import Logging
import NVFP4
import QuantizeJob
import SafeTensors

/// A worker's compute for one job: its layer range loaded on the CPU backend, the hidden states kept at the range's
/// entry for resume, and the exporter of its layers. Not thread-safe: the worker calls it from its compute queue.
// @unchecked: confined to the worker's serial compute queue (see above); the actor only hands it to that queue.
final class RangeCompute: @unchecked Sendable {
    /// Its plan's token ids arrive later when they travel on the data path (``supplyTokenIDs(_:)``).
    private(set) var assignment: WorkerAssignment
    let workerName: String
    let config: LlamaConfig
    private let source: SafeTensorsModel
    private let runner: any RangeRunning
    /// The device this range computes on, as `calibration.json` names it.
    let deviceLabel: String
    /// The range's weights do not fit the worker's memory budget: it collects every chunk's input first, then runs
    /// them layer by layer (one layer resident), and forwards the outputs at the end. Same results, no pipelining.
    let streams: Bool
    private let boundary: BoundaryStateStore?
    private let exporter: LayerExporter
    private let device: ComputeDevice
    /// GPTQ's Hessians of the range (`--algorithm gptq`), gathered by the calibration forward, taken by each export.
    private let hessians: (any GPTQHessianStore)?
    /// `--propagate quantized`: the GPTQ weights computed during calibration, taken by each export.
    private let propagation: GPTQPropagation?
    /// A GPU job's layers quantized from the weights calibration loaded, taken by each export.
    private let loadedQuantizations: LoadedWeightQuantizations?

    /// Checks the model against the coordinator's config hash, then loads the range (W4A4 only: weight-only jobs
    /// only export).
    init(assignment: WorkerAssignment, workerName: String, device deviceName: String, scratchDirectory: URL,
         memoryBudget: Int, gpuMemoryLimit: Int? = nil, logger: Logger) throws {
        self.workerName = workerName
        let spec = assignment.spec
        try ModelCheck.verify(spec)
        config = try ModelDirectory(spec.modelDirectory).loadConfig()
        let source = try SafeTensorsModel(directory: spec.modelPath)
        self.source = source
        self.assignment = assignment
        let device = try ComputeDevice.select(deviceName, gpuMemoryLimit: gpuMemoryLimit, logger: logger)
        self.device = device
        deviceLabel = spec.deviceLabel(device)
        let config = self.config
        runner = try spec.withBackend(on: device, config: config) { backend in
            func erase<Backend: ComputeBackend>(_ backend: Backend) throws -> any RangeRunning {
                try LayerRangeRunner(spec: spec, config: config, weights: source, backend: backend,
                                     range: assignment.range, embeds: assignment.embeddings, logger: logger,
                                     releaseWeights: { names in for name in names { try? source.releasePages(name) } })
            }
            return try erase(backend)
        }
        exporter = try LayerExporter(spec: spec, config: config, source: source, bf16Quantizer: device.bf16WeightQuantizer)
        loadedQuantizations = LoadedWeightQuantizations.attach(to: runner, spec: spec, config: config, device: device, logger: logger)
        if let gptq = spec.gptq {
            let hessians: any GPTQHessianStore
            switch device {
            case .cpu:
                hessians = LayerHessians(layers: assignment.range, chunkCount: assignment.plan.chunks.count)
                let bytes = LayerHessians.bytes(config: config, layers: assignment.range)
                logger.info("GPTQ: the Hessians of layers \(assignment.firstLayer)..<\(assignment.endLayer) take up to \(bytes >> 20) MiB")
            case .cuda(let cudaDevice):
                hessians = try DeviceHessianStore(layers: assignment.range, chunkCount: assignment.plan.chunks.count,
                                                  device: cudaDevice, config: config)
                logger.info("GPTQ on the GPU: each layer's Hessians take \(DeviceHessianStore.bytes(config: config) >> 20) MiB of device memory while it calibrates")
            }
            runner.setInputObserver(hessians)
            self.hessians = hessians
            if gptq.propagation == .quantized {
                let propagation = GPTQPropagation(hessians: hessians, exporter: exporter, source: source, config: config)
                runner.setPropagation(propagation)
                self.propagation = propagation
            } else {
                propagation = nil
            }
        } else {
            hessians = nil
            propagation = nil
        }
        boundary = assignment.embeddings ? nil
            : try BoundaryStateStore(scratchDirectory: Self.jobScratch(scratchDirectory, workerName: workerName),
                                     jobID: assignment.jobID, firstLayer: assignment.firstLayer,
                                     hiddenSize: config.hiddenSize)
        if let boundary, let digest = assignment.fingerprint {
            try boundary.bind(toFingerprint: digest)
        }
        let holdsEveryLayer = assignment.embeddings && assignment.successor == nil
        let residentBytes = LayerRangeRunner<CPUBackend>.residentWeightBytes(config: config, range: assignment.range)
        // Propagating quantized outputs needs every chunk through layer L before L+1: the layer-at-a-time schedule.
        let propagates = spec.gptq?.propagation == .quantized
        streams = spec.scheme.quantizesActivations && !holdsEveryLayer && (residentBytes > memoryBudget || propagates)
        if streams && propagates {
            logger.info("GPTQ propagates quantized outputs: calibrating layers \(assignment.firstLayer)..<\(assignment.endLayer) one layer at a time over every chunk")
        } else if streams {
            let range = "\(assignment.firstLayer)..<\(assignment.endLayer)"
            logger.info("layers \(range) need \(residentBytes >> 20) MiB, over the memory budget of \(memoryBudget >> 20) MiB: calibrating them one layer at a time")
        }
        // A range holding every layer (calibrateAll) or streaming loads nothing up front.
        if spec.scheme.quantizesActivations && !holdsEveryLayer && !streams {
            try runner.loadLayers()
        }
    }

    static func jobScratch(_ scratch: URL, workerName: String) -> URL {
        scratch.appendingPathComponent("kept-\(workerName)")
    }

    /// Runs chunk `index` through the range. The first range embeds; later ones take `input` (raw little-endian
    /// f32 from the predecessor, kept on disk first) or, with `fromStore`, the copy kept earlier.
    func run(chunk index: Int, input: Data?, fromStore: Bool) throws -> (output: Data, amax: [LayerAmax]) {
        let chunk = assignment.chunks[index]
        var hidden: HiddenStates?
        if let boundary {
            if fromStore {
                hidden = try boundary.load(chunk: index, expectedTokens: chunk.tokenCount)
            } else {
                guard let input else {
                    throw WorkerError.missingHiddenStates(worker: workerName, chunk: index)
                }
                let states = try HiddenStates(hiddenSize: config.hiddenSize, littleEndianBytes: input,
                                              expectedTokens: chunk.tokenCount)
                try boundary.save(states, chunk: index)
                hidden = states
            }
        }
        let result = try runner.run(chunk: chunk, hidden: hidden)
        let amax = result.layerAmax.map { LayerAmax(layer: $0.layer, observed: $0.amax) }
        let output = assignment.successor == nil ? Data() : result.output.littleEndianBytes()
        return (output, amax)
    }

    /// Keeps chunk `index`'s input (a streaming range collects every chunk before it starts).
    func keep(chunk index: Int, input: Data) throws {
        guard let boundary else { return }
        try boundary.save(try HiddenStates(hiddenSize: config.hiddenSize, littleEndianBytes: input,
                                           expectedTokens: assignment.chunks[index].tokenCount), chunk: index)
    }

    /// Starts a layer-at-a-time pass over every chunk: the first range embeds, later ones read the kept inputs; with a
    /// successor the outputs are retained for ``output(of:chunk:)``.
    func startStreamingPass() throws -> StreamingPass {
        runner.releaseLayers()
        let boundary = self.boundary
        let input: ((CalibrationChunk) throws -> HiddenStates)? = boundary.map { store in
            { chunk in try store.load(chunk: chunk.index, expectedTokens: chunk.tokenCount) }
        }
        return StreamingPass(calibrator: try runner.layerPass(plan: assignment.plan, input: input,
                                                              retainsOutputs: assignment.successor != nil))
    }

    /// The output of `chunk` after a finished streaming pass, as raw little-endian f32 for the successor.
    func output(of pass: StreamingPass, chunk: Int) throws -> Data {
        try pass.calibrator.output(chunk: chunk).littleEndianBytes()
    }

    func streamNextLayer(_ pass: StreamingPass) throws -> StreamedLayer {
        let (layer, chunkAmax) = try pass.calibrator.nextLayer()
        return StreamedLayer(layer: layer, chunkAmax: chunkAmax.map { LayerAmax(layer: layer, observed: $0) })
    }

    func finishStreamingPass(_ pass: StreamingPass) { pass.calibrator.finish() }

    func storedChunks() throws -> [Int] { try boundary?.storedChunks() ?? [] }

    /// GPU memory in use on this range's device; 0 on the CPU.
    func deviceMemoryInUse() -> Int { device.memoryInUse() }

    /// Bytes of hidden states a layer-at-a-time pass holds: on the GPU, in host memory, spilled to files.
    func stateBytes(of pass: StreamingPass) -> (gpu: Int, host: Int, spilled: Int) {
        pass.calibrator.stateBytes
    }

    /// `digests`: SHA-256 each tensor (its bytes will cross a network to the coordinator).
    func export(layer: Int, activationAmax: [FusedGroup: ActivationAmax]?, digests: Bool) throws
        -> (tensors: [ExportedTensor], timings: ExportTimings, quality: [LinearQuality]) {
        var timings = ExportTimings()
        var quality: [LinearQuality] = []
        // GPTQ weights: computed during calibration (`--propagate quantized`), or now from the layer's Hessians.
        let started = ContinuousClock.now
        let computed = try propagation?.takeWeights(layer: layer) ?? hessians?.quantizeLayer(layer, exporter: exporter)
        timings.quantize += secondsSince(started)
        let tensors = try exporter.export(layer: layer, activationAmax: activationAmax, timings: &timings, quality: &quality,
                                          gptqWeights: computed, loaded: loadedQuantizations?.take(layer: layer), digests: digests)
        return (tensors, timings, quality)
    }

    func close() {
        runner.releaseLayers()
        hessians?.removeAll()
        propagation?.removeAll()
        loadedQuantizations?.removeAll()
    }

    /// Fills the plan's token ids from the data path's little-endian Int32 bytes, after checking their count and
    /// their SHA-256 against the plan's. Runs on the compute queue, before any chunk.
    func supplyTokenIDs(_ bytes: Data) throws {
        let plan = assignment.plan
        guard bytes.count == plan.tokenCount * 4 else {
            throw WorkerError.tokenIDsDoNotMatchPlan(worker: workerName,
                                                     reason: "\(bytes.count) bytes for the plan's \(plan.tokenCount) tokens")
        }
        let digest = SHA256Hasher.hexDigest(of: bytes)
        guard digest == plan.contentHash else {
            throw WorkerError.tokenIDsDoNotMatchPlan(worker: workerName,
                                                     reason: "SHA-256 \(digest.prefix(16)), the plan's is \(plan.contentHash.prefix(16))")
        }
        let ids = bytes.withUnsafeBytes { raw in
            (0..<plan.tokenCount).map { Int32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: Int32.self)) }
        }
        var offset = 0
        for index in assignment.plan.chunks.indices {
            let count = assignment.plan.chunks[index].tokenCount
            assignment.plan.chunks[index].tokenIDs = Array(ids[offset..<(offset + count)])
            offset += count
        }
    }

    /// The jobs whose hidden states this worker keeps under `scratchDirectory`.
    static func keptJobs(workerName: String, scratchDirectory: URL) -> [String] {
        let directory = jobScratch(scratchDirectory, workerName: workerName)
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory.path)) ?? []
        return names.filter { $0.hasPrefix(BoundaryStateStore.jobDirectoryPrefix) }
            .map { String($0.dropFirst(BoundaryStateStore.jobDirectoryPrefix.count)) }.sorted()
    }

    /// Bytes of every hidden-state file this worker keeps under `scratchDirectory`, all jobs together.
    static func keptBytes(workerName: String, scratchDirectory: URL) -> Int {
        let directory = jobScratch(scratchDirectory, workerName: workerName)
        guard let files = FileManager.default.enumerator(at: directory, includingPropertiesForKeys: [.fileSizeKey]) else {
            return 0
        }
        var total = 0
        for case let url as URL in files {
            total += (try? url.resourceValues(forKeys: [.fileSizeKey]).fileSize) ?? 0
        }
        return total
    }

    /// Removes the hidden states kept for `jobID` (job finished or cancelled).
    static func discardKeptState(jobID: String, workerName: String, scratchDirectory: URL) throws {
        let store = try BoundaryStateStore(scratchDirectory: jobScratch(scratchDirectory, workerName: workerName),
                                           jobID: jobID, firstLayer: 0, hiddenSize: 1)
        if FileManager.default.fileExists(atPath: store.jobDirectory.path) {
            try FileManager.default.removeItem(at: store.jobDirectory)
        }
    }
}

/// A layer-at-a-time calibration in progress; used only from the worker's compute queue.
// @unchecked: confined to the worker's serial compute queue, like RangeCompute.
final class StreamingPass: @unchecked Sendable {
    let calibrator: any LayerPass
    init(calibrator: any LayerPass) { self.calibrator = calibrator }
}

/// A ``LayerRangeRunner`` with its backend type erased, so one worker type serves the CPU and the GPU.
protocol RangeRunning: AnyObject {
    func run(chunk: CalibrationChunk, hidden: HiddenStates?) throws -> ChunkResult
    func loadLayers() throws
    func releaseLayers()
    func setInputObserver(_ observer: any CalibrationInputObserver)
    func setPropagation(_ propagation: any LayerPropagation)
    func layerPass(plan: CalibrationPlan, input: ((CalibrationChunk) throws -> HiddenStates)?, retainsOutputs: Bool) throws
        -> any LayerPass
}

/// A layer-at-a-time pass with its backend type erased.
protocol LayerPass: AnyObject {
    /// Bytes of hidden states held on the GPU, in host memory and in spill files.
    var stateBytes: (gpu: Int, host: Int, spilled: Int) { get }
    func nextLayer() throws -> (layer: Int, chunkAmax: [ObservedAmax])
    func output(chunk: Int) throws -> HiddenStates
    func finish()
}

extension LayerRangeRunner: RangeRunning {
    func setInputObserver(_ observer: any CalibrationInputObserver) { inputObserver = observer }
    func setPropagation(_ propagation: any LayerPropagation) { self.propagation = propagation }

    func layerPass(plan: CalibrationPlan, input: ((CalibrationChunk) throws -> HiddenStates)?, retainsOutputs: Bool) throws
        -> any LayerPass {
        try streamingPass(plan: plan, input: input, retainsOutputs: retainsOutputs)
    }
}

extension LayerStreamingCalibrator: LayerPass {
    var stateBytes: (gpu: Int, host: Int, spilled: Int) { (residentStateBytes, hostStateBytes, spilledStateBytes) }

    func nextLayer() throws -> (layer: Int, chunkAmax: [ObservedAmax]) {
        let result = try calibrateNextLayer()
        return (result.layer, result.chunkAmax)
    }

    func output(chunk: Int) throws -> HiddenStates { try takeOutput(chunk: chunk) }
}

/// One layer of a layer-at-a-time pass: the amax of every chunk.
struct StreamedLayer: Sendable {
    let layer: Int
    let chunkAmax: [LayerAmax]
}

extension LayerAmax {
    /// What the backend observed, as it travels to the coordinator.
    init(layer: Int, observed: ObservedAmax) {
        self.init(layer: layer, qkv: ActivationAmax(observed.qkv), o: ActivationAmax(observed.o),
                  gateUp: ActivationAmax(observed.gateUp), down: ActivationAmax(observed.down))
    }
}
