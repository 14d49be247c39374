import CUDABackend
import Calibration
import Checkpoint
import Foundation
import GPTQ
import LlamaModel
import NVFP4
import SafeTensors

/// Quantizes one decoder layer into exactly the tensors `coordctl quantize` writes for it: the two norms verbatim,
/// then each Linear in the job's layout (q/k/v and gate/up sharing one global weight scale; input scales from the
/// calibrated activation amax for W4A4; `--exclude`d Linears as their source weight, unchanged, with no scale).
/// Names use global layer indices, so the output needs no renaming.
/// Stateless between calls: layers may be exported in any order and on another thread than calibration.
/// Seconds one layer's export spent per step, for the logs (export speed decides a GPU job's wall time).
public struct ExportTimings: Sendable, Equatable {
    /// max |W| of each Linear (its fused group's S2 needs every member's).
    public var weightAmax = 0.0
    /// NVFP4 quantization (GPU or CPU).
    public var quantize = 0.0
    /// Laying out the tensors' bytes and hashing them.
    public var packAndHash = 0.0
    /// Measuring each weight's quantization error against its source.
    public var qualityMeasure = 0.0

    public init() {}
}

/// Quantizes a BF16 `[rows, cols]` weight against its S2, bit-identical to ``NVFP4Quantizer``: the GPU quantizer
/// plugs in here. Arguments: values, rows, cols, weightScale2, tensor name.
public typealias BF16WeightQuantizer = @Sendable (UnsafeBufferPointer<UInt16>, Int, Int, Float, String) throws -> NVFP4Weight

public final class LayerExporter: Sendable {
    public let spec: JobSpec
    public let config: LlamaConfig
    private let source: SafeTensorsModel
    private let layout: LinearTensorLayout
    private let weightAmax: [String: Float]
    private let bf16Quantizer: BF16WeightQuantizer?

    /// - Parameter weightAmax: `max |W|` per Linear weight name when already known (the one-machine job scans
    ///   every weight first); missing ones are computed from `source` (rejecting NaN, Inf and all-zero weights).
    /// - Parameter bf16Quantizer: quantizes BF16 weights instead of the CPU quantizer (e.g. on the GPU).
    /// Throws when the job's `--exclude` patterns do not fit the model.
    public init(spec: JobSpec, config: LlamaConfig, source: SafeTensorsModel, weightAmax: [String: Float] = [:],
                bf16Quantizer: BF16WeightQuantizer? = nil) throws {
        self.spec = spec
        self.config = config
        self.source = source
        self.layout = try spec.tensorLayout(config: config, source: source)
        self.weightAmax = weightAmax
        self.bf16Quantizer = bf16Quantizer
    }

    /// The tensors of `layer`, in write order. `activationAmax` (W4A4 only) holds the calibrated amax of each fused
    /// group's input; each member's input scale is derived from it here, where the tensors are laid out.
    public func export(layer: Int, activationAmax: [FusedGroup: ActivationAmax]?) throws -> [ExportedTensor] {
        var timings = ExportTimings()
        return try export(layer: layer, activationAmax: activationAmax, timings: &timings)
    }

    /// ``export(layer:activationAmax:)``, adding the time of each step to `timings`.
    public func export(layer: Int, activationAmax: [FusedGroup: ActivationAmax]?,
                       timings: inout ExportTimings) throws -> [ExportedTensor] {
        var quality: [LinearQuality] = []
        return try export(layer: layer, activationAmax: activationAmax, timings: &timings, quality: &quality)
    }

    /// ``export(layer:activationAmax:timings:)``, appending each Linear's weight amax and relative quantization error
    /// (‖W − Q(W)‖ / ‖W‖ of the NVFP4 weight as written) to `quality`. With `hessians` (the job's `--algorithm gptq`:
    /// the layer's complete Hessians from ``LayerHessians``) the E2M1 codes come from GPTQ under the same block and
    /// global scales.
    /// `gptqWeights` are the layer's GPTQ weights when calibration already computed them (``gptqWeights(layer:hessians:)``,
    /// for `--propagate quantized`); they are then written as they are.
    /// `digests`: give each tensor its SHA-256, for bytes that will cross a network; a tensor handed over in process
    /// needs none, and hashing a 70B layer's 481 MB costs more than quantizing it.
    /// `loaded`: the layer as the GPU quantized it during calibration: with round to nearest (no GPTQ, no scale
    /// search) its weights and amax are used instead of reading and quantizing the source again.
    public func export(layer: Int, activationAmax: [FusedGroup: ActivationAmax]?, timings: inout ExportTimings,
                       quality: inout [LinearQuality], hessians: [FusedGroup: HessianAccumulator]? = nil,
                       gptqWeights: [String: NVFP4Weight]? = nil, loaded: LoadedLayerQuantization? = nil,
                       digests: Bool = true) throws -> [ExportedTensor] {
        let loaded = spec.gptq == nil && spec.scaleSearch != .mse ? loaded : nil
        if spec.gptq != nil && hessians == nil && gptqWeights == nil {
            throw QuantizeJobError.missingHessians(layer: layer)
        }
        guard (0..<config.numHiddenLayers).contains(layer) else {
            throw QuantizeJobError.layerOutOfRange(layer: layer, layerCount: config.numHiddenLayers)
        }
        var tensors: [ExportedTensor] = []
        for norm in config.layerNorms(layer: layer) {
            let info = try source.info(norm.name)
            tensors.append(ExportedTensor(name: norm.name, dtype: info.dtype, shape: info.shape, data: try source.data(norm.name),
                                          sha256: nil))
            try source.releasePages(norm.name)
        }
        let linears = config.linears(layer: layer).filter { !layout.isExcluded($0) }
        // Fused groups are excluded whole, so the shared scales below never mix kept and quantized members.
        for linear in config.linears(layer: layer) where layout.isExcluded(linear) {
            quality.append(LinearQuality(name: linear.name, layer: layer, weightAmax: try amax(of: linear), weightRelativeError: 0,
                                         activationAmax: spec.scheme.quantizesActivations ? activationAmax?[linear.kind.group]?.value : nil,
                                         keptUnquantized: true))
            let info = try source.info(linear.weightName)
            tensors.append(ExportedTensor(name: linear.weightName, dtype: info.dtype, shape: info.shape,
                                          data: try source.data(linear.weightName), sha256: nil))
            try source.releasePages(linear.weightName)
        }
        var started = ContinuousClock.now
        let (memberWeightAmax, sharedScale) = try sharedScales(linears, known: loaded?.weightAmax ?? [:])
        timings.weightAmax += secondsSince(started)
        var factorizations = ShareableFactorizations(hessians: hessians ?? [:])
        for (index, linear) in linears.enumerated() {
            var inputScale: InputScale?
            if spec.scheme.quantizesActivations {
                guard let amax = activationAmax?[linear.kind.group], amax.isUsable else {
                    throw QuantizeJobError.unusableActivationAmax(linear: linear.name,
                                                                  amax: activationAmax?[linear.kind.group]?.value)
                }
                inputScale = InputScale(amax)
            }
            started = .now
            let weight: NVFP4Weight
            if let computed = gptqWeights?[linear.name] ?? loaded?.weights[linear.name] {
                weight = computed
            } else if spec.gptq != nil {
                weight = try gptqQuantize(linear, weightScale2: sharedScale[linear.kind.group]!,
                                          factorizations: &factorizations, layer: layer)
            } else if spec.scaleSearch == .mse {
                weight = try searchedScalesQuantize(linear, weightScale2: sharedScale[linear.kind.group]!)
            } else {
                weight = try quantize(linear, weightScale2: sharedScale[linear.kind.group]!)
            }
            timings.quantize += secondsSince(started)
            started = .now
            let error = try quantizationError(of: weight, linear, checkingRows: loaded?.weights[linear.name] != nil)
            quality.append(LinearQuality(name: linear.name, layer: layer, weightAmax: memberWeightAmax[index],
                                         weightRelativeError: error.relative,
                                         activationAmax: spec.scheme.quantizesActivations ? activationAmax?[linear.kind.group]?.value : nil))
            try source.releasePages(linear.weightName)
            timings.qualityMeasure += secondsSince(started)
            started = .now
            let planned = layout.plannedTensors(for: linear)
            let bytes = try layout.tensorBytes(QuantizedLinear(spec: linear, weight: weight, inputScale: inputScale))
            for (plan, tensor) in zip(planned, bytes) {
                tensors.append(ExportedTensor(name: tensor.name, dtype: plan.dtype, shape: plan.shape, data: tensor.bytes, sha256: nil))
            }
            timings.packAndHash += secondsSince(started)
        }
        if digests {
            started = .now
            let hashes = try concurrentMap(tensors) { SHA256Hasher.hexDigest(of: $0.data) }
            for index in tensors.indices { tensors[index].sha256 = hashes[index] }
            timings.packAndHash += secondsSince(started)
        }
        return tensors
    }

    /// Source bytes of the layer's Linear weights (for progress).
    public func sourceLinearBytes(layer: Int) throws -> Int {
        try config.linears(layer: layer).reduce(0) { $0 + (try source.info($1.weightName).byteCount) }
    }

    private func amax(of linear: LinearSpec) throws -> Float {
        if let known = weightAmax[linear.weightName] { return known }
        return try QuantizeJob.weightAmax(source: source, name: linear.weightName, cols: linear.inFeatures)
    }

    /// The quantized weight against its source values (read again: they are still mapped). With `checkingRows` (a
    /// weight quantized elsewhere, on the GPU) its first, middle and last rows are also quantized here from the
    /// source under the same S2 and must be the same bytes: a cheap guard against a wrong offset or scale there.
    private func quantizationError(of weight: NVFP4Weight, _ linear: LinearSpec, checkingRows: Bool = false) throws
        -> WeightQuantizationError
    {
        let rows = checkingRows ? Array(Set([0, linear.outFeatures / 2, linear.outFeatures - 1])).sorted() : []
        let cols = linear.inFeatures
        if try source.info(linear.weightName).dtype == .bf16 {
            return try source.withBytes(linear.weightName) { bytes in
                try withBF16(bytes) { values in
                    try checkRows(rows, of: weight, linear: linear) { row in
                        try NVFP4Quantizer.quantize(bf16: UnsafeBufferPointer(rebasing: values[(row * cols)..<((row + 1) * cols)]),
                                                    rows: 1, cols: cols, weightScale2: weight.weightScale2,
                                                    tensor: linear.weightName, parallelism: 1)
                    }
                    return NVFP4Quantizer.quantizationError(of: weight, bf16: values)
                }
            }
        }
        return try source.floats(linear.weightName).withUnsafeBufferPointer { values in
            try checkRows(rows, of: weight, linear: linear) { row in
                try NVFP4Quantizer.quantize(f32: UnsafeBufferPointer(rebasing: values[(row * cols)..<((row + 1) * cols)]),
                                            rows: 1, cols: cols, weightScale2: weight.weightScale2, tensor: linear.weightName)
            }
            return NVFP4Quantizer.quantizationError(of: weight, f32: values)
        }
    }

    /// Each of `rows` of `weight` against `quantizeRow(row)`, the CPU quantizer's bytes for that source row.
    private func checkRows(_ rows: [Int], of weight: NVFP4Weight, linear: LinearSpec,
                           quantizeRow: (Int) throws -> NVFP4Weight) throws {
        for row in rows {
            let expected = try quantizeRow(row)
            let packed = (row * linear.inFeatures / 2)..<((row + 1) * linear.inFeatures / 2)
            let scales = (row * linear.inFeatures / 16)..<((row + 1) * linear.inFeatures / 16)
            guard weight.packed.count == linear.outFeatures * linear.inFeatures / 2,
                  weight.blockScales.count == linear.outFeatures * linear.inFeatures / 16,
                  weight.packed[packed].elementsEqual(expected.packed), weight.blockScales[scales].elementsEqual(expected.blockScales)
            else { throw QuantizeJobError.deviceQuantizationMismatch(tensor: linear.weightName, row: row) }
        }
    }

    /// Each Linear's max |W| and each fused group's shared `S2`.
    /// `known`: amax by weight name already measured (on the GPU); the others are read from the source.
    private func sharedScales(_ linears: [LinearSpec], known: [String: Float] = [:]) throws
        -> (memberAmax: [Float], shared: [FusedGroup: Float])
    {
        // One core reads a few GB/s; the Linears of a 70B layer are 1.7 GB.
        let memberAmax = try concurrentMap(linears) { try known[$0.weightName] ?? self.amax(of: $0) }
        var shared: [FusedGroup: Float] = [:]
        for group in FusedGroup.allCases {
            let members = linears.indices.filter { linears[$0].kind.group == group }
            guard !members.isEmpty else { continue }
            shared[group] = FusedScales.sharedWeightScale2(memberAmax: members.map { memberAmax[$0] })
        }
        return (memberAmax, shared)
    }

    /// The GPTQ weights of `layer`'s quantized Linears (module name → weight), what ``export(layer:activationAmax:timings:quality:hessians:gptqWeights:)``
    /// would write from the same Hessians.
    public func gptqWeights(layer: Int, hessians: [FusedGroup: HessianAccumulator]) throws -> [String: NVFP4Weight] {
        guard spec.gptq != nil else { throw QuantizeJobError.missingHessians(layer: layer) }
        let linears = config.linears(layer: layer).filter { !layout.isExcluded($0) }
        let shared = try sharedScales(linears).shared
        var shareable = ShareableFactorizations(hessians: hessians)
        var weights: [String: NVFP4Weight] = [:]
        for linear in linears {
            weights[linear.name] = try gptqQuantize(linear, weightScale2: shared[linear.kind.group]!,
                                                    factorizations: &shareable, layer: layer)
        }
        return weights
    }

    /// ``gptqWeights(layer:hessians:)`` from Hessians summed on the GPU, quantized there by `gptq` (factorized once
    /// per shared input). The weights are read from the model as on the CPU; the Hessian-weighted scale search, when
    /// asked for, runs on the host with the factorization's diagonal.
    public func gptqWeights(layer: Int, deviceHessians hessians: LayerDeviceHessians, gptq: CUDAGPTQ) throws -> [String: NVFP4Weight] {
        guard let settings = spec.gptq else { throw QuantizeJobError.missingHessians(layer: layer) }
        let linears = config.linears(layer: layer).filter { !layout.isExcluded($0) }
        let shared = try sharedScales(linears).shared
        let parameters = GPTQParameters(blockSize: settings.blockSize, dampening: settings.dampening,
                                        activationOrder: settings.activationOrder)
        var factorizations: [FusedGroup: DeviceGPTQFactorization] = [:]
        var weights: [String: NVFP4Weight] = [:]
        for linear in linears {
            let group = linear.kind.group
            let factorization = try factorizations[group]
                ?? gptq.factorize(hessians[group], parameters: parameters, tensor: linear.weightName)
            factorizations[group] = factorization
            let columns = linear.inFeatures
            let values = try source.floats(linear.weightName, expectedShape: [linear.outFeatures, columns])
            weights[linear.name] = try values.withUnsafeBufferPointer { weight in
                let blockScales = spec.scaleSearch == .mse
                    ? try BlockScaleSearch.blockScales(f32: weight, rows: linear.outFeatures, cols: columns,
                                                       weightScale2: shared[group]!, columnWeights: factorization.diagonal,
                                                       tensor: linear.weightName)
                    : nil
                return try gptq.quantize(.hostF32(weight), rows: linear.outFeatures, cols: columns, factorization: factorization,
                                         weightScale2: shared[group]!, blockScales: blockScales, tensor: linear.weightName)
            }
        }
        return weights
    }

    /// Each fused group's Hessian, and its GPTQ factorization once a member asked for it (q/k/v and gate/up share it).
    struct ShareableFactorizations {
        let hessians: [FusedGroup: HessianAccumulator]
        var factorized: [FusedGroup: (factorization: GPTQFactorization, diagonal: [Double])] = [:]
    }

    /// GPTQ over the weight widened to f32 (exact from BF16, so the block scales are round-to-nearest's).
    private func gptqQuantize(_ linear: LinearSpec, weightScale2: Float, factorizations: inout ShareableFactorizations,
                              layer: Int) throws -> NVFP4Weight {
        guard let settings = spec.gptq, let hessian = factorizations.hessians[linear.kind.group] else {
            throw QuantizeJobError.missingHessians(layer: layer)
        }
        let columns = linear.inFeatures
        if factorizations.factorized[linear.kind.group] == nil {
            let matrix = hessian.matrix
            let parameters = GPTQParameters(blockSize: settings.blockSize, dampening: settings.dampening,
                                            activationOrder: settings.activationOrder)
            let factorization = try matrix.withUnsafeBufferPointer {
                try GPTQQuantizer.factorize(hessian: $0, cols: columns, parameters: parameters, tensor: linear.weightName)
            }
            factorizations.factorized[linear.kind.group] = (factorization, (0..<columns).map { matrix[$0 * columns + $0] })
        }
        let (factorization, diagonal) = factorizations.factorized[linear.kind.group]!
        let values = try source.floats(linear.weightName, expectedShape: [linear.outFeatures, columns])
        return try values.withUnsafeBufferPointer { weight in
            // Scale search weighs each column's error by its input's energy, the Hessian's diagonal.
            let blockScales = spec.scaleSearch == .mse
                ? try BlockScaleSearch.blockScales(f32: weight, rows: linear.outFeatures, cols: columns, weightScale2: weightScale2,
                                                   columnWeights: diagonal, tensor: linear.weightName)
                : nil
            return try GPTQQuantizer.quantize(f32: weight, rows: linear.outFeatures, cols: columns, factorization: factorization,
                                              weightScale2: weightScale2, blockScales: blockScales, tensor: linear.weightName)
        }
    }

    /// Round-to-nearest under ``BlockScaleSearch``'s block scales (unweighted: no Hessian without GPTQ).
    private func searchedScalesQuantize(_ linear: LinearSpec, weightScale2: Float) throws -> NVFP4Weight {
        let values = try source.floats(linear.weightName, expectedShape: [linear.outFeatures, linear.inFeatures])
        return try values.withUnsafeBufferPointer { weight in
            let scales = try BlockScaleSearch.blockScales(f32: weight, rows: linear.outFeatures, cols: linear.inFeatures,
                                                          weightScale2: weightScale2, tensor: linear.weightName)
            return try NVFP4Quantizer.quantize(f32: weight, rows: linear.outFeatures, cols: linear.inFeatures,
                                               weightScale2: weightScale2, blockScales: scales, tensor: linear.weightName)
        }
    }

    private func quantize(_ linear: LinearSpec, weightScale2: Float) throws -> NVFP4Weight {
        let info = try source.info(linear.weightName)
        if info.dtype == .bf16 {
            return try source.withBytes(linear.weightName) { bytes in
                try withBF16(bytes) {
                    if let bf16Quantizer {
                        return try bf16Quantizer($0, linear.outFeatures, linear.inFeatures, weightScale2, linear.weightName)
                    }
                    return try NVFP4Quantizer.quantize(bf16: $0, rows: linear.outFeatures, cols: linear.inFeatures,
                                                       weightScale2: weightScale2, tensor: linear.weightName)
                }
            }
        }
        let values = try source.floats(linear.weightName)
        return try values.withUnsafeBufferPointer {
            try NVFP4Quantizer.quantize(f32: $0, rows: linear.outFeatures, cols: linear.inFeatures,
                                        weightScale2: weightScale2, tensor: linear.weightName)
        }
    }
}

