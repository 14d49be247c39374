import CUDARuntime
import ComputeBackend
import Foundation
import LlamaModel
import NVFP4

/// A model shape or call the GPU backend does not handle, named with the reason.
public enum CUDABackendError: Error, CustomStringConvertible, Equatable, Sendable {
    case unsupportedHeadDim(Int)
    case unsupportedShape(field: String, value: Int, reason: String)
    case inputTransformUnsupported

    public var description: String {
        switch self {
        case .unsupportedHeadDim(let headDim):
            "head_dim \(headDim) is not supported by the CUDA attention kernel (32, 64 or 128)"
        case .unsupportedShape(let field, let value, let reason):
            "\(field) = \(value): \(reason)"
        case .inputTransformUnsupported:
            "the CUDA backend has no kernels for Linear input transforms other than GPTQ's Hessians (W4A4 emulation); use the CPU backend for evaluation"
        }
    }
}

/// The ``ComputeBackend`` on a CUDA GPU. See ``CUDADevice`` for the overview.
public struct CUDABackend: ComputeBackend {
    public let config: LlamaConfig
    public let device: CUDADevice
    /// RoPE `inv_freq` from LlamaModel, the same table the CPU backend uses.
    public let inverseFrequencies: [Float]
    /// Most tokens one kernel pass takes; larger batches are split by samples (amax is a max, so merging is exact).
    public let maxTokensPerPass: Int

    var width: Int { config.hiddenSize }
    var queryWidth: Int { config.numAttentionHeads * config.headDim }
    var qkvWidth: Int { queryWidth + 2 * config.numKeyValueHeads * config.headDim }
    var intermediate: Int { config.intermediateSize }

    /// Checks that the kernels handle `config`, and sizes the token passes to `memoryFraction` of the free memory.
    public init(config: LlamaConfig, device: CUDADevice, memoryFraction: Double = 0.5) throws {
        try Self.validate(config)
        self.config = config
        self.device = device
        inverseFrequencies = config.rope.inverseFrequencies(headDim: config.headDim)
        let free = try device.exclusive { try device.context.usableMemory() }
        maxTokensPerPass = Self.tokensPerPass(config: config, freeBytes: Int(Double(free) * memoryFraction))
    }

    /// Rejects shapes the kernels cannot run: head_dim other than 64/128, widths that break 16-byte rows.
    public static func validate(_ config: LlamaConfig) throws {
        guard [32, 64, 128].contains(config.headDim) else { throw CUDABackendError.unsupportedHeadDim(config.headDim) }
        guard config.numAttentionHeads % config.numKeyValueHeads == 0 else {
            throw CUDABackendError.unsupportedShape(field: "num_key_value_heads", value: config.numKeyValueHeads,
                                                    reason: "must divide num_attention_heads \(config.numAttentionHeads)")
        }
        for (field, value) in [("hidden_size", config.hiddenSize), ("intermediate_size", config.intermediateSize)] where value % 16 != 0 {
            throw CUDABackendError.unsupportedShape(field: field, value: value, reason: "must be a multiple of 16")
        }
    }

    /// Device bytes one token needs during a layer pass (activations and scratch), and the tokens that fit in `freeBytes`.
    public static func tokensPerPass(config: LlamaConfig, freeBytes: Int) -> Int {
        let queryWidth = config.numAttentionHeads * config.headDim
        let qkvWidth = queryWidth + 2 * config.numKeyValueHeads * config.headDim
        let bf16Elements = 3 * config.hiddenSize + qkvWidth + queryWidth + 3 * config.intermediateSize
        let perToken = 2 * bf16Elements + 4 * config.hiddenSize + 8
        return max(1, freeBytes / perToken)
    }

    // MARK: - Weights

    /// A decoder layer's BF16 weights in device memory, q/k/v and gate/up stacked by rows. `ready` fires when the
    /// uploads (on the copy stream) are done; the forward waits on it, so loading can overlap earlier compute.
    // @unchecked: device buffers and an event (C handles), immutable after the upload is enqueued.
    public final class LoadedLayer: @unchecked Sendable {
        public let index: Int
        public let qkvWeight: DeviceBuffer
        public let oWeight: DeviceBuffer
        public let gateUpWeight: DeviceBuffer
        public let downWeight: DeviceBuffer
        public let inputNorm: DeviceBuffer
        public let postAttentionNorm: DeviceBuffer
        let ready: CUDAEvent

        init(index: Int, qkvWeight: DeviceBuffer, oWeight: DeviceBuffer, gateUpWeight: DeviceBuffer, downWeight: DeviceBuffer,
             inputNorm: DeviceBuffer, postAttentionNorm: DeviceBuffer, ready: CUDAEvent) {
            self.index = index
            self.qkvWeight = qkvWeight
            self.oWeight = oWeight
            self.gateUpWeight = gateUpWeight
            self.downWeight = downWeight
            self.inputNorm = inputNorm
            self.postAttentionNorm = postAttentionNorm
            self.ready = ready
        }
    }

    // @unchecked: device buffers (C handles), immutable after upload.
    public final class LoadedOutputHead: @unchecked Sendable {
        let finalNorm: DeviceBuffer
        let weight: DeviceBuffer
        let ready: CUDAEvent

        init(finalNorm: DeviceBuffer, weight: DeviceBuffer, ready: CUDAEvent) {
            self.finalNorm = finalNorm
            self.weight = weight
            self.ready = ready
        }
    }

    public func loadLayer(_ index: Int, from source: some WeightSource) throws -> LoadedLayer {
        guard (0..<config.numHiddenLayers).contains(index) else {
            throw ComputeBackendError.layerOutOfRange(layer: index, layerCount: config.numHiddenLayers)
        }
        let linears = Dictionary(uniqueKeysWithValues: config.linears(layer: index).map { ($0.kind, $0) })
        let norms = config.layerNorms(layer: index)
        return try device.exclusive {
            func load(_ specs: [(name: String, shape: [Int])]) throws -> DeviceBuffer {
                let total = specs.reduce(0) { $0 + $1.shape.reduce(1, *) }
                let buffer = try DeviceBuffer(context: device.context, byteCount: total * 2)
                var offset = 0
                for spec in specs {
                    offset += try uploadBF16(spec.name, shape: spec.shape, from: source, into: buffer, atByteOffset: offset)
                }
                return buffer
            }
            func linear(_ kind: LinearKind) -> (name: String, shape: [Int]) { (linears[kind]!.weightName, linears[kind]!.shape) }
            let layer = LoadedLayer(
                index: index,
                qkvWeight: try load([linear(.q), linear(.k), linear(.v)]),
                oWeight: try load([linear(.o)]),
                gateUpWeight: try load([linear(.gate), linear(.up)]),
                downWeight: try load([linear(.down)]),
                inputNorm: try load([(norms[0].name, norms[0].shape)]),
                postAttentionNorm: try load([(norms[1].name, norms[1].shape)]),
                ready: try CUDAEvent(context: device.context, timing: false))
            try layer.ready.record(on: device.copyStream)
            return layer
        }
    }

    public func loadOutputHead(from source: some WeightSource) throws -> LoadedOutputHead {
        try device.exclusive {
            let norm = try DeviceBuffer(context: device.context, byteCount: width * 2)
            _ = try uploadBF16(LlamaConfig.finalNormName, shape: [width], from: source, into: norm, atByteOffset: 0)
            let weight = try DeviceBuffer(context: device.context, byteCount: config.vocabSize * width * 2)
            _ = try uploadBF16(config.outputEmbeddingName, shape: [config.vocabSize, width], from: source, into: weight, atByteOffset: 0)
            let head = LoadedOutputHead(finalNorm: norm, weight: weight, ready: try CUDAEvent(context: device.context, timing: false))
            try head.ready.record(on: device.copyStream)
            return head
        }
    }

    /// Uploads one tensor as BF16 (converting F16/F32 on the host) after checking its shape and size; returns its bytes.
    func uploadBF16(_ name: String, shape: [Int], from source: some WeightSource, into buffer: DeviceBuffer,
                    atByteOffset offset: Int) throws -> Int {
        guard let description = source.describeTensor(name) else { throw LlamaWeightError.missingTensor(name: name) }
        guard description.shape == shape else { throw LlamaWeightError.shapeMismatch(name: name, expected: shape, actual: description.shape) }
        guard let type = WeightElementType(rawValue: description.dtype) else {
            throw LlamaWeightError.unsupportedDType(name: name, dtype: description.dtype)
        }
        let count = description.elementCount
        try source.withTensorBytes(name) { bytes in
            guard bytes.count == count * type.byteWidth else {
                throw LlamaWeightError.byteCountMismatch(name: name, expected: count * type.byteWidth, actual: bytes.count)
            }
            if type == .bf16 {
                try device.upload(bytes, to: buffer, atByteOffset: offset, stream: device.copyStream)
            } else {
                let converted = widenToFloat(bytes, type: type, count: count).map { BFloat16.fromFloat($0) }
                try converted.withUnsafeBytes { try device.upload($0, to: buffer, atByteOffset: offset, stream: device.copyStream) }
            }
        }
        return count * 2
    }

    // MARK: - Forward

    /// The only input transform taken is a ``DeviceHessianObserver`` (GPTQ's Hessians, summed on the GPU).
    public func forward(layer: LoadedLayer, hidden: inout HiddenStates, batch: SequenceBatch,
                        inputTransform: (any LinearInputTransform)?) throws -> ObservedAmax {
        var hessians: LayerDeviceHessians?
        if let inputTransform {
            guard let observer = inputTransform as? any DeviceHessianObserver else { throw CUDABackendError.inputTransformUnsupported }
            hessians = try observer.deviceHessians(layer: layer.index)
        }
        try hidden.check(matches: batch, hiddenSize: width)
        var observed = ObservedAmax.zero
        for pass in Self.passes(batch, maxTokens: maxTokensPerPass) {
            let sub = try SequenceBatch(tokenCounts: Array(batch.tokenCounts[pass]))
            let rows = batch.sampleOffsets[pass.lowerBound]..<(batch.sampleOffsets[pass.lowerBound] + sub.totalTokens)
            let amax = try device.exclusive {
                let stream = device.computeStream
                let count = sub.totalTokens * width
                let floats = try device.workspace.device("hidden.f32", bytes: count * 4)
                let states = try device.workspace.device("hidden", bytes: count * 2)
                try hidden.values.withUnsafeBytes { all in
                    let bytes = UnsafeRawBufferPointer(rebasing: all[(rows.lowerBound * width * 4)..<(rows.upperBound * width * 4)])
                    try device.upload(bytes, to: floats, stream: stream)
                }
                try device.kernels.f32ToBF16.launch(grid: gridStride(count), block: (256, 1, 1), stream: stream,
                                                    arguments: [.pointer(floats.address), .pointer(states.address), .int64(Int64(count))])
                let amax = try forwardOnDevice(layer: layer, hidden: states, batch: sub, hessians: hessians)
                try device.kernels.bf16ToF32.launch(grid: gridStride(count), block: (256, 1, 1), stream: stream,
                                                    arguments: [.pointer(states.address), .pointer(floats.address), .int64(Int64(count))])
                try hidden.values.withUnsafeMutableBytes { all in
                    let bytes = UnsafeMutableRawBufferPointer(rebasing: all[(rows.lowerBound * width * 4)..<(rows.upperBound * width * 4)])
                    try device.download(floats, byteCount: count * 4, into: bytes, stream: stream)
                }
                return amax
            }
            observed = observed.merging(amax)
        }
        return observed
    }

    // MARK: - Resident hidden states

    /// Share of the free device memory that calibration may fill with resident hidden states.
    public static let residentStateFraction = 0.4

    public func residentStateCapacity() throws -> Int {
        let free = try device.exclusive { try device.context.usableMemory() }
        return Int(Double(free) * Self.residentStateFraction)
    }

    public func residentStateBytes(tokens: Int) -> Int { tokens * width * 2 }

    /// BF16 states in device memory, split into the passes ``maxTokensPerPass`` allows, each with its metadata
    /// already on the device, so a forward enqueues kernels only.
    public func makeResident(_ hidden: HiddenStates, batch: SequenceBatch) throws -> DeviceHiddenStates {
        try hidden.check(matches: batch, hiddenSize: width)
        return try device.exclusive {
            let stream = device.computeStream
            let count = batch.totalTokens * width
            let buffer = try DeviceBuffer(context: device.context, byteCount: count * 2)
            let floats = try device.workspace.device("hidden.f32", bytes: count * 4)
            try hidden.values.withUnsafeBytes { try device.upload($0, to: floats, stream: stream) }
            try device.kernels.f32ToBF16.launch(grid: gridStride(count), block: (256, 1, 1), stream: stream,
                                                arguments: [.pointer(floats.address), .pointer(buffer.address), .int64(Int64(count))])
            return try residentStates(buffer: buffer, batch: batch)
        }
    }

    /// Share of the free device memory the embedding table may take for ``residentEmbedder(from:)``.
    public static let embeddingTableFraction = 0.1

    /// Uploads a BF16 `embed_tokens` once and gathers each chunk's rows on the GPU (16 bytes per thread), instead of
    /// widening them to f32 on the host, uploading and rounding back: the BF16 values are the same bit for bit. nil
    /// (host gather) for F16/F32 tables and for a table over ``embeddingTableFraction`` of the free memory.
    public func residentEmbedder(from source: some WeightSource) throws -> ResidentEmbedder<DeviceHiddenStates>? {
        let name = LlamaConfig.embedTokensName
        let shape = [config.vocabSize, width]
        guard let description = source.describeTensor(name) else { throw LlamaWeightError.missingTensor(name: name) }
        guard description.shape == shape else { throw LlamaWeightError.shapeMismatch(name: name, expected: shape, actual: description.shape) }
        guard description.dtype == WeightElementType.bf16.rawValue else { return nil }
        let tableBytes = config.vocabSize * width * 2
        let free = try device.exclusive { try device.context.usableMemory() }
        guard Double(tableBytes) <= Double(free) * Self.embeddingTableFraction else { return nil }
        let table = try device.exclusive { () -> DeviceBuffer in
            let table = try DeviceBuffer(context: device.context, byteCount: tableBytes)
            _ = try uploadBF16(name, shape: shape, from: source, into: table, atByteOffset: 0)
            let ready = try CUDAEvent(context: device.context, timing: false)
            try ready.record(on: device.copyStream)
            try device.computeStream.wait(for: ready)
            return table
        }
        let vocabSize = config.vocabSize
        return ResidentEmbedder { [self] tokenIDs, batch in
            guard tokenIDs.count == batch.totalTokens else {
                throw ComputeBackendError.tokenCountMismatch(expected: batch.totalTokens, actual: tokenIDs.count)
            }
            for (position, tokenID) in tokenIDs.enumerated() where !(0..<vocabSize).contains(tokenID) {
                throw ComputeBackendError.tokenIDOutOfRange(position: position, tokenID: tokenID, vocabSize: vocabSize)
            }
            let ids = tokenIDs.map { Int32($0) }
            return try device.exclusive {
                let stream = device.computeStream
                let count = batch.totalTokens * width
                let buffer = try DeviceBuffer(context: device.context, byteCount: count * 2)
                let idBuffer = try device.workspace.device("embed.ids", bytes: ids.count * 4)
                try ids.withUnsafeBytes { try device.upload($0, to: idBuffer, stream: stream) }
                try device.kernels.embedGather.launch(
                    grid: gridStride(count / 8), block: (256, 1, 1), stream: stream,
                    arguments: [.pointer(table.address), .pointer(idBuffer.address), .pointer(buffer.address),
                                .int64(Int64(batch.totalTokens)), .int32(Int32(width))])
                let flag = try device.workspace.device("embed.flag", bytes: 4)
                try flag.fill(byte: 0, byteCount: 4, stream: stream)
                try device.kernels.bf16FirstNonFiniteRow.launch(
                    grid: gridStride(count / 8), block: (256, 1, 1), stream: stream,
                    arguments: [.pointer(buffer.address), .int64(Int64(count)), .int32(Int32(width)), .pointer(flag.address)])
                var bits: UInt32 = 0
                try withUnsafeMutableBytes(of: &bits) { try device.download(flag, byteCount: 4, into: $0, stream: stream) }
                let states = try residentStates(buffer: buffer, batch: batch)
                return (states, bits == 0 ? nil : Int(UInt32.max - bits))
            }
        }
    }

    /// `buffer` (the batch's BF16 states) with each pass's metadata on the device. Callers hold the device.
    func residentStates(buffer: DeviceBuffer, batch: SequenceBatch) throws -> DeviceHiddenStates {
        var passes: [DeviceHiddenStates.Pass] = []
        for samples in Self.passes(batch, maxTokens: maxTokensPerPass) {
            let sub = try SequenceBatch(tokenCounts: Array(batch.tokenCounts[samples]))
            let metadata = try uploadMetadata(sub, into: DeviceBuffer(context: device.context, byteCount: Self.metadataBytes(sub)))
            passes.append(.init(firstRow: batch.sampleOffsets[samples.lowerBound], batch: sub, metadata: metadata))
        }
        return DeviceHiddenStates(buffer: buffer, batch: batch, passes: passes)
    }

    public func hostStates(_ states: DeviceHiddenStates) throws -> HiddenStates {
        let count = states.batch.totalTokens * width
        var values = [Float](repeating: 0, count: count)
        try device.exclusive {
            let stream = device.computeStream
            let floats = try device.workspace.device("hidden.f32", bytes: count * 4)
            try device.kernels.bf16ToF32.launch(grid: gridStride(count), block: (256, 1, 1), stream: stream,
                                                arguments: [.pointer(states.buffer.address), .pointer(floats.address), .int64(Int64(count))])
            try values.withUnsafeMutableBytes { try device.download(floats, byteCount: count * 4, into: $0, stream: stream) }
        }
        return HiddenStates(hiddenSize: width, values: values)
    }

    /// Enqueues the layer over every pass of `states` and the scan for non-finite outputs; returns at once.
    public func enqueueForward(layer: LoadedLayer, states: inout DeviceHiddenStates, batch: SequenceBatch) throws -> PendingDeviceForward {
        try enqueueForward(layer: layer, states: &states, batch: batch, hessians: nil)
    }

    /// ``enqueueForward(layer:states:batch:)`` that also adds each Linear input to its GPTQ Hessian in `hessians`.
    public func enqueueForward(layer: LoadedLayer, states: inout DeviceHiddenStates, batch: SequenceBatch,
                               hessians: LayerDeviceHessians?) throws -> PendingDeviceForward {
        guard batch == states.batch else {
            throw ComputeBackendError.hiddenStatesMismatch(expectedTokens: batch.totalTokens, expectedHiddenSize: width,
                                                           actualTokens: states.batch.totalTokens, actualHiddenSize: width)
        }
        return try device.exclusive {
            let stream = device.computeStream
            let result = try DeviceBuffer(context: device.context, byteCount: 32)
            try result.fill(byte: 0, byteCount: 32, stream: stream)
            for pass in states.passes {
                try enqueueLayer(layer, hidden: states.buffer.address(atByteOffset: pass.firstRow * width * 2), batch: pass.batch,
                                 metadata: pass.metadata.address, amax: result.address, hessians: hessians)
            }
            let count = batch.totalTokens * width
            try device.kernels.bf16FirstNonFiniteRow.launch(
                grid: gridStride(count / 8), block: (256, 1, 1), stream: stream,
                arguments: [.pointer(states.buffer.address), .int64(Int64(count)), .int32(Int32(width)), .pointer(result.address + 16)])
            return PendingDeviceForward(result: result)
        }
    }

    /// Waits for the forward (and everything enqueued before it) and reads its 20 bytes of results.
    public func completeForward(_ pending: PendingDeviceForward) throws -> ResidentForwardResult {
        var bits = [UInt32](repeating: 0, count: 5)
        try device.exclusive {
            try bits.withUnsafeMutableBytes { try device.download(pending.result, byteCount: 20, into: $0, stream: device.computeStream) }
        }
        let amax = ObservedAmax(qkv: Float(bitPattern: bits[0]), o: Float(bitPattern: bits[1]), gateUp: Float(bitPattern: bits[2]),
                                down: Float(bitPattern: bits[3]))
        return ResidentForwardResult(amax: amax, firstNonFiniteRow: bits[4] == 0 ? nil : Int(UInt32.max - bits[4]))
    }

    /// Sample ranges whose tokens fit in `maxTokens` (a longer sample goes alone).
    public static func passes(_ batch: SequenceBatch, maxTokens: Int) -> [Range<Int>] {
        var passes: [Range<Int>] = []
        var start = 0
        var tokens = 0
        for (sample, count) in batch.tokenCounts.enumerated() {
            if sample > start && tokens + count > maxTokens {
                passes.append(start..<sample)
                start = sample
                tokens = 0
            }
            tokens += count
        }
        passes.append(start..<batch.sampleCount)
        return passes
    }

    /// The layer over device-resident BF16 hidden states `[batch.totalTokens, hidden]`, in place, on the compute stream.
    /// Returns the four observed amax values (one 16-byte read back). Callers hold ``CUDADevice/exclusive(_:)``; the
    /// benchmarks call this directly to time the layer without host transfers.
    public func forwardOnDevice(layer: LoadedLayer, hidden: DeviceBuffer, batch: SequenceBatch,
                                hessians: LayerDeviceHessians? = nil) throws -> ObservedAmax {
        guard hidden.byteCount >= batch.totalTokens * width * 2 else {
            throw CUDAError.invalidArgument(call: "CUDABackend.forwardOnDevice", reason: "hidden buffer holds fewer than \(batch.totalTokens) rows")
        }
        let stream = device.computeStream
        let amax = try device.workspace.device("amax", bytes: 16)
        try amax.fill(byte: 0, byteCount: 16, stream: stream)
        let metadata = try uploadMetadata(batch, into: device.workspace.device("metadata", bytes: Self.metadataBytes(batch)))
        try enqueueLayer(layer, hidden: hidden.address, batch: batch, metadata: metadata.address, amax: amax.address, hessians: hessians)
        var bits = [UInt32](repeating: 0, count: 4)
        try bits.withUnsafeMutableBytes { try device.download(amax, byteCount: 16, into: $0, stream: stream) }
        return ObservedAmax(qkv: Float(bitPattern: bits[0]), o: Float(bitPattern: bits[1]), gateUp: Float(bitPattern: bits[2]),
                            down: Float(bitPattern: bits[3]))
    }

    /// Bytes of a batch's metadata: each token's position, then each sample's first row and length (Int32).
    static func metadataBytes(_ batch: SequenceBatch) -> Int { (batch.totalTokens + 2 * batch.sampleCount) * 4 }

    /// Enqueues the upload of `batch`'s metadata into `buffer` on the compute stream.
    func uploadMetadata(_ batch: SequenceBatch, into buffer: DeviceBuffer) throws -> DeviceBuffer {
        var integers = [Int32]()
        integers.reserveCapacity(batch.totalTokens + 2 * batch.sampleCount)
        for count in batch.tokenCounts { integers += (0..<Int32(count)) }
        integers += batch.sampleOffsets.map { Int32($0) }
        integers += batch.tokenCounts.map { Int32($0) }
        try integers.withUnsafeBytes { try device.upload($0, to: buffer, stream: device.computeStream) }
        return buffer
    }

    /// The BF16-rounded RoPE table for at least `positions` positions on the device, built once per model and grown
    /// when a longer sample comes (see ``ropeTable(positions:)``); returns it with the positions it holds.
    func deviceRopeTable(positions: Int) throws -> (buffer: DeviceBuffer, positions: Int) {
        if let cached = device.ropeTable, cached.frequencies == inverseFrequencies, cached.positions >= positions {
            return (cached.buffer, cached.positions)
        }
        let count = max(positions, 2048)
        let table = ropeTable(positions: count)
        let buffer = try DeviceBuffer(context: device.context, byteCount: table.count * 4)
        try table.withUnsafeBytes { try device.upload($0, to: buffer, stream: device.computeStream) }
        device.ropeTable = (inverseFrequencies, count, buffer)
        return (buffer, count)
    }

    /// Enqueues one decoder layer over `batch.totalTokens` BF16 rows at `hidden`, in place, on the compute stream;
    /// the four observed amax values are max-ed (as float bits) into the 16 bytes at `amax`. `metadata` is the
    /// batch's (``uploadMetadata(_:into:)``). Nothing waits for the device. Callers hold ``CUDADevice/exclusive(_:)``.
    func enqueueLayer(_ layer: LoadedLayer, hidden: CUdeviceptr, batch: SequenceBatch, metadata: CUdeviceptr,
                      amax: CUdeviceptr, hessians: LayerDeviceHessians? = nil) throws {
        let stream = device.computeStream
        let kernels = device.kernels
        let workspace = device.workspace
        let tokens = batch.totalTokens
        let headDim = config.headDim
        let maxLength = batch.tokenCounts.max()!
        let (rope, ropePositions) = try deviceRopeTable(positions: maxLength)
        let half = headDim / 2

        let normed = try workspace.device("normed", bytes: tokens * width * 2)
        let qkv = try workspace.device("qkv", bytes: tokens * qkvWidth * 2)
        let attention = try workspace.device("attention", bytes: tokens * queryWidth * 2)
        let projected = try workspace.device("projected", bytes: tokens * width * 2)
        let gateUp = try workspace.device("gateUp", bytes: tokens * 2 * intermediate * 2)
        let activated = try workspace.device("activated", bytes: tokens * intermediate * 2)
        let positions = metadata
        let offsets = metadata + CUdeviceptr(tokens * 4)
        let lengths = metadata + CUdeviceptr((tokens + batch.sampleCount) * 4)

        try stream.wait(for: layer.ready)
        let epsilon = Float(config.rmsNormEps)
        let normThreads = 256

        // Attention block.
        try kernels.rmsNorm.launch(grid: (tokens, 1, 1), block: (normThreads, 1, 1), stream: stream,
                                   arguments: [.pointer(hidden), .pointer(layer.inputNorm.address), .pointer(normed.address),
                                               .pointer(amax), .int32(Int32(width)), .float(epsilon)])
        try hessians?.qkv.add(bf16: normed.address, count: tokens, blas: device.blas, stream: stream)
        try device.blas.matmul(GEMMShape(rows: tokens, inner: width, outputs: qkvWidth), input: normed.address,
                               weight: layer.qkvWeight.address, output: qkv.address, stream: stream)
        try kernels.rope.launch(grid: (tokens, 1, 1), block: (256, 1, 1), stream: stream,
                                arguments: [.pointer(qkv.address), .pointer(positions), .pointer(rope.address),
                                            .pointer(rope.address(atByteOffset: ropePositions * half * 4)), .int32(Int32(qkvWidth)),
                                            .int32(Int32(config.numAttentionHeads + config.numKeyValueHeads)), .int32(Int32(headDim))])
        let scaleLog2 = Float(1 / Double(headDim).squareRoot() * 1.4426950408889634)
        try (headDim == 32 ? kernels.attention32 : headDim == 64 ? kernels.attention64 : kernels.attention128).launch(
            grid: ((maxLength + 63) / 64, batch.sampleCount, config.numAttentionHeads), block: (128, 1, 1), stream: stream,
            arguments: [.pointer(qkv.address), .pointer(attention.address), .pointer(offsets), .pointer(lengths),
                        .int32(Int32(qkvWidth)), .int32(Int32(config.numAttentionHeads)), .int32(Int32(config.numKeyValueHeads)),
                        .float(scaleLog2)])
        try kernels.bf16Amax.launch(grid: gridStride(tokens * queryWidth / 8), block: (256, 1, 1), stream: stream,
                                    arguments: [.pointer(attention.address), .int64(Int64(tokens * queryWidth)),
                                                .pointer(amax + 4)])
        try hessians?.o.add(bf16: attention.address, count: tokens, blas: device.blas, stream: stream)
        try device.blas.matmul(GEMMShape(rows: tokens, inner: queryWidth, outputs: width), input: attention.address,
                               weight: layer.oWeight.address, output: projected.address, stream: stream)
        try kernels.residualAdd.launch(grid: gridStride(tokens * width / 2), block: (256, 1, 1), stream: stream,
                                       arguments: [.pointer(hidden), .pointer(projected.address), .int64(Int64(tokens * width))])

        // MLP block.
        try kernels.rmsNorm.launch(grid: (tokens, 1, 1), block: (normThreads, 1, 1), stream: stream,
                                   arguments: [.pointer(hidden), .pointer(layer.postAttentionNorm.address),
                                               .pointer(normed.address), .pointer(amax + 8),
                                               .int32(Int32(width)), .float(epsilon)])
        try hessians?.gateUp.add(bf16: normed.address, count: tokens, blas: device.blas, stream: stream)
        try device.blas.matmul(GEMMShape(rows: tokens, inner: width, outputs: 2 * intermediate), input: normed.address,
                               weight: layer.gateUpWeight.address, output: gateUp.address, stream: stream)
        try kernels.swiGLU.launch(grid: gridStride(tokens * intermediate / 2), block: (256, 1, 1), stream: stream,
                                  arguments: [.pointer(gateUp.address), .pointer(activated.address), .pointer(amax + 12),
                                              .int32(Int32(tokens)), .int32(Int32(intermediate))])
        try hessians?.down.add(bf16: activated.address, count: tokens, blas: device.blas, stream: stream)
        try device.blas.matmul(GEMMShape(rows: tokens, inner: intermediate, outputs: width), input: activated.address,
                               weight: layer.downWeight.address, output: projected.address, stream: stream)
        try kernels.residualAdd.launch(grid: gridStride(tokens * width / 2), block: (256, 1, 1), stream: stream,
                                       arguments: [.pointer(hidden), .pointer(projected.address), .int64(Int64(tokens * width))])
    }

    /// cos then sin of `f32(p) · inv_freq[i]` for p < `positions`, rounded to BF16 (as transformers' BF16 forward and the
    /// CPU backend's bf16 mode use them), `[2][positions][headDim/2]`.
    func ropeTable(positions: Int) -> [Float] {
        let table = RopeTable(inverseFrequencies: inverseFrequencies, positions: positions)
        return (table.cosines + table.sines).map { BFloat16.toFloat(BFloat16.fromFloat($0)) }
    }

    // MARK: - Output head

    public func logits(_ hidden: HiddenStates, head: LoadedOutputHead) throws -> [Float] {
        guard hidden.hiddenSize == width else {
            throw ComputeBackendError.hiddenStatesMismatch(expectedTokens: hidden.tokenCount, expectedHiddenSize: width,
                                                           actualTokens: hidden.tokenCount, actualHiddenSize: hidden.hiddenSize)
        }
        let tokens = hidden.tokenCount
        let vocab = config.vocabSize
        var result = [Float](repeating: 0, count: tokens * vocab)
        try device.exclusive {
            let stream = device.computeStream
            let count = tokens * width
            let floats = try device.workspace.device("head.f32", bytes: count * 4)
            let states = try device.workspace.device("head.states", bytes: count * 2)
            let normed = try device.workspace.device("head.normed", bytes: count * 2)
            let output = try device.workspace.device("head.logits", bytes: tokens * vocab * 4)
            try hidden.values.withUnsafeBytes { try device.upload($0, to: floats, stream: stream) }
            try device.kernels.f32ToBF16.launch(grid: gridStride(count), block: (256, 1, 1), stream: stream,
                                                arguments: [.pointer(floats.address), .pointer(states.address), .int64(Int64(count))])
            try stream.wait(for: head.ready)
            try device.kernels.rmsNorm.launch(grid: (tokens, 1, 1), block: (256, 1, 1), stream: stream,
                                              arguments: [.pointer(states.address), .pointer(head.finalNorm.address), .pointer(normed.address),
                                                          .pointer(0), .int32(Int32(width)), .float(Float(config.rmsNormEps))])
            try device.blas.matmul(GEMMShape(rows: tokens, inner: width, outputs: vocab, floatOutput: true), input: normed.address,
                                   weight: head.weight.address, output: output.address, stream: stream)
            try result.withUnsafeMutableBytes { try device.download(output, byteCount: $0.count, into: $0, stream: stream) }
        }
        return result
    }

    public func negativeLogLikelihood(_ hidden: HiddenStates, batch: SequenceBatch, tokenIDs: [Int],
                                      head: LoadedOutputHead) throws -> NegativeLogLikelihood {
        try nextTokenNegativeLogLikelihood(hidden, batch: batch, tokenIDs: tokenIDs, head: head, chunkElements: 1 << 24)
    }
}

/// Hidden states of one calibration chunk in device memory (BF16 `[tokens, hidden]`), with each pass's metadata.
// @unchecked: device buffers (C handles); the calibrator uses one chunk's states from one task at a time, in
// stream order.
public final class DeviceHiddenStates: @unchecked Sendable {
    struct Pass {
        let firstRow: Int
        let batch: SequenceBatch
        let metadata: DeviceBuffer
    }

    let buffer: DeviceBuffer
    public let batch: SequenceBatch
    let passes: [Pass]

    init(buffer: DeviceBuffer, batch: SequenceBatch, passes: [Pass]) {
        self.buffer = buffer
        self.batch = batch
        self.passes = passes
    }
}

/// An enqueued layer forward: its 32-byte result slot (four amax bit patterns, then the non-finite row flag).
// @unchecked: a device result slot and an event (C handles), read once after the event fires.
public struct PendingDeviceForward: @unchecked Sendable {
    let result: DeviceBuffer
}
