import CUDARuntime
import ComputeBackend
import Foundation
import LlamaModel
import NVFP4

/// NVFP4 weight quantization on the GPU, bit-identical to ``NVFP4Quantizer``: one thread per 16-element block does the
/// CPU quantizer's operations in its order with IEEE-rounded division and multiplication (no fused multiply-adds).
public struct CUDANVFP4Quantizer: Sendable {
    public let device: CUDADevice

    public init(device: CUDADevice) {
        self.device = device
    }

    /// `max |W|` of a BF16 matrix, or ``NVFP4Error/nonFinite(tensor:row:)`` naming the tensor.
    public func amax(bf16 values: UnsafeBufferPointer<UInt16>, cols: Int, tensor: String) throws -> Float {
        guard cols > 0, values.count % cols == 0, values.count % 8 == 0 else {
            throw NVFP4Error.sizeMismatch(tensor: tensor, expected: (values.count / max(cols, 1)) * cols, actual: values.count)
        }
        let bits: UInt32 = try device.exclusive {
            let stream = device.exportStream
            let weight = try device.workspace.device("quantizer.weight", bytes: values.count * 2)
            try device.upload(UnsafeRawBufferPointer(values), to: weight, stream: stream)
            return try deviceAmaxBits(weight: weight.address, count: values.count, stream: stream)
        }
        if bits >= 0x7F80_0000 {
            _ = try NVFP4Quantizer.amax(bf16: values, cols: cols, tensor: tensor)  // finds and names the row
            throw NVFP4Error.nonFinite(tensor: tensor, row: 0)
        }
        return Float(bitPattern: bits)
    }

    /// Quantizes a BF16 `[rows, cols]` matrix against `weightScale2` (S2), like ``NVFP4Quantizer/quantize(bf16:rows:cols:weightScale2:tensor:parallelism:)``.
    public func quantize(bf16 values: UnsafeBufferPointer<UInt16>, rows: Int, cols: Int, weightScale2 s2: Float,
                         tensor: String = "tensor") throws -> NVFP4Weight {
        try Self.check(rows: rows, cols: cols, count: values.count, weightScale2: s2, tensor: tensor)
        var packed = [UInt8](repeating: 0, count: rows * cols / 2)
        var scales = [UInt8](repeating: 0, count: rows * cols / 16)
        try device.exclusive {
            let stream = device.exportStream
            let weight = try device.workspace.device("quantizer.weight", bytes: values.count * 2)
            let packedBuffer = try device.workspace.device("quantizer.packed", bytes: packed.count)
            let scaleBuffer = try device.workspace.device("quantizer.scales", bytes: scales.count)
            try device.upload(UnsafeRawBufferPointer(values), to: weight, stream: stream)
            try quantizeOnDevice(weight: weight.address, rows: rows, cols: cols, weightScale2: s2, packed: packedBuffer.address,
                                 scales: scaleBuffer.address, stream: stream)
            try packed.withUnsafeMutableBytes { try device.download(packedBuffer, byteCount: $0.count, into: $0, stream: stream) }
            try scales.withUnsafeMutableBytes { try device.download(scaleBuffer, byteCount: $0.count, into: $0, stream: stream) }
        }
        return NVFP4Weight(rows: rows, cols: cols, packed: packed, blockScales: scales, weightScale2: s2)
    }

    /// The same argument checks and errors as the CPU quantizer.
    public static func check(rows: Int, cols: Int, count: Int, weightScale2 s2: Float, tensor: String) throws {
        if cols % NVFP4Quantizer.blockSize != 0 { throw NVFP4Error.columnsNotMultipleOf16(tensor: tensor, cols: cols) }
        if rows * cols != count { throw NVFP4Error.sizeMismatch(tensor: tensor, expected: rows * cols, actual: count) }
        if s2 == 0 { throw NVFP4Error.allZero(tensor: tensor) }
    }

    /// Enqueues the quantization of a device-resident BF16 matrix into device-resident outputs (`rows·cols/2` packed
    /// bytes, `rows·cols/16` scale bytes). Callers hold the device.
    public func quantizeOnDevice(weight: CUdeviceptr, rows: Int, cols: Int, weightScale2 s2: Float, packed: CUdeviceptr,
                                 scales: CUdeviceptr, stream: CUDAStream) throws {
        let blocks = rows * cols / 16
        try device.kernels.nvfp4Quantize.launch(grid: ((blocks + 255) / 256, 1, 1), block: (256, 1, 1), stream: stream,
                                                arguments: [.pointer(weight), .pointer(packed), .pointer(scales), .float(s2),
                                                            .int64(Int64(blocks))])
    }

    /// Max |x| bits of a device-resident BF16 tensor (`count` a multiple of 8), synchronously.
    public func deviceAmaxBits(weight: CUdeviceptr, count: Int, stream: CUDAStream) throws -> UInt32 {
        let result = try device.workspace.device("quantizer.amax", bytes: 4)
        try enqueueAmax(weight: weight, count: count, into: result, stream: stream)
        var bits: UInt32 = 0
        try withUnsafeMutableBytes(of: &bits) { try device.download(result, byteCount: 4, into: $0, stream: stream) }
        return bits
    }

    public func enqueueAmax(weight: CUdeviceptr, count: Int, into result: DeviceBuffer, stream: CUDAStream) throws {
        try result.fill(byte: 0, byteCount: 4, stream: stream)
        try launchAmax(weight: weight, count: count, into: result.address, stream: stream)
    }

    /// Max-merges the max |x| bits of `count` BF16 values into the 4 bytes at `result` (zeroed by the caller).
    func launchAmax(weight: CUdeviceptr, count: Int, into result: CUdeviceptr, stream: CUDAStream) throws {
        try device.kernels.bf16Amax.launch(grid: gridStride(count / 8), block: (256, 1, 1), stream: stream,
                                           arguments: [.pointer(weight), .int64(Int64(count)), .pointer(result)])
    }
}

/// A decoder layer's seven Linears quantized to NVFP4 from the BF16 weights the calibration forward already has on the
/// GPU, and each weight's max |W|, both equal bit for bit to ``NVFP4Quantizer`` on the source.
public struct LoadedLayerQuantization: Sendable {
    public let layer: Int
    /// By module name (``LinearSpec/name``).
    public let weights: [String: NVFP4Weight]
    /// By weight tensor name (``LinearSpec/weightName``).
    public let weightAmax: [String: Float]

    public init(layer: Int, weights: [String: NVFP4Weight], weightAmax: [String: Float]) {
        self.layer = layer
        self.weights = weights
        self.weightAmax = weightAmax
    }
}

extension CUDANVFP4Quantizer {
    /// Quantizes `layer`'s Linears where they are: each weight's amax, then each fused group's shared S2 on the host,
    /// then the quantization kernel and one download of the layer's codes and block scales (about a quarter of the
    /// weights' bytes). Runs on the export stream after the layer's upload, beside the forwards on the compute
    /// stream. nil when a weight is all zero or not finite: the export then reads the source and names the problem.
    public func quantize(loaded layer: CUDABackend.LoadedLayer, linears: [LinearSpec]) throws -> LoadedLayerQuantization? {
        // Where each Linear sits in the stacked buffers (q/k/v and gate/up share one upload each).
        var placed: [(spec: LinearSpec, address: CUdeviceptr)] = []
        var offsets: [ObjectIdentifier: Int] = [:]
        for kind in LinearKind.allCases {
            guard let spec = linears.first(where: { $0.kind == kind }) else {
                throw CUDABackendError.unsupportedShape(field: "layer \(layer.index)", value: linears.count,
                                                        reason: "has no \(kind.rawValue)")
            }
            let buffer = switch kind.group {
            case .qkv: layer.qkvWeight
            case .o: layer.oWeight
            case .gateUp: layer.gateUpWeight
            case .down: layer.downWeight
            }
            let offset = offsets[ObjectIdentifier(buffer), default: 0]
            placed.append((spec, buffer.address(atByteOffset: offset)))
            offsets[ObjectIdentifier(buffer)] = offset + spec.outFeatures * spec.inFeatures * 2
        }
        for (spec, _) in placed {
            try Self.check(rows: spec.outFeatures, cols: spec.inFeatures, count: spec.outFeatures * spec.inFeatures,
                           weightScale2: 1, tensor: spec.weightName)
        }
        let packedBytes = placed.map { $0.spec.outFeatures * $0.spec.inFeatures / 2 }
        let scaleBytes = placed.map { $0.spec.outFeatures * $0.spec.inFeatures / 16 }
        var amaxBits = [UInt32](repeating: 0, count: placed.count)
        return try device.exclusive { () -> LoadedLayerQuantization? in
            let stream = device.exportStream
            try stream.wait(for: layer.ready)
            let amax = try device.workspace.device("layerq.amax", bytes: placed.count * 4)
            try amax.fill(byte: 0, byteCount: placed.count * 4, stream: stream)
            for (index, (spec, address)) in placed.enumerated() {
                try launchAmax(weight: address, count: spec.outFeatures * spec.inFeatures, into: amax.address(atByteOffset: index * 4),
                               stream: stream)
            }
            try amaxBits.withUnsafeMutableBytes { try device.download(amax, byteCount: placed.count * 4, into: $0, stream: stream) }
            let memberAmax = amaxBits.map { Float(bitPattern: $0) }
            guard memberAmax.allSatisfy({ $0.isFinite && $0 > 0 }) else { return nil }
            var shared: [FusedGroup: Float] = [:]
            for group in FusedGroup.allCases {
                shared[group] = FusedScales.sharedWeightScale2(
                    memberAmax: placed.indices.filter { placed[$0].spec.kind.group == group }.map { memberAmax[$0] })
            }
            let packedBuffer = try device.workspace.device("layerq.packed", bytes: packedBytes.reduce(0, +))
            let scaleBuffer = try device.workspace.device("layerq.scales", bytes: scaleBytes.reduce(0, +))
            var packedOffset = 0
            var scaleOffset = 0
            for (index, (spec, address)) in placed.enumerated() {
                try quantizeOnDevice(weight: address, rows: spec.outFeatures, cols: spec.inFeatures,
                                     weightScale2: shared[spec.kind.group]!, packed: packedBuffer.address(atByteOffset: packedOffset),
                                     scales: scaleBuffer.address(atByteOffset: scaleOffset), stream: stream)
                packedOffset += packedBytes[index]
                scaleOffset += scaleBytes[index]
            }
            // Each Linear's bytes straight into its own arrays (no slicing copy of the layer's 0.5 GB afterwards).
            var weights: [String: NVFP4Weight] = [:]
            var weightAmax: [String: Float] = [:]
            packedOffset = 0
            scaleOffset = 0
            for (index, (spec, _)) in placed.enumerated() {
                var packed = [UInt8](repeating: 0, count: packedBytes[index])
                var scales = [UInt8](repeating: 0, count: scaleBytes[index])
                try packed.withUnsafeMutableBytes {
                    try device.download(packedBuffer, fromByteOffset: packedOffset, byteCount: $0.count, into: $0, stream: stream)
                }
                try scales.withUnsafeMutableBytes {
                    try device.download(scaleBuffer, fromByteOffset: scaleOffset, byteCount: $0.count, into: $0, stream: stream)
                }
                weights[spec.name] = NVFP4Weight(rows: spec.outFeatures, cols: spec.inFeatures, packed: packed, blockScales: scales,
                                                 weightScale2: shared[spec.kind.group]!)
                weightAmax[spec.weightName] = memberAmax[index]
                packedOffset += packedBytes[index]
                scaleOffset += scaleBytes[index]
            }
            return LoadedLayerQuantization(layer: layer.index, weights: weights, weightAmax: weightAmax)
        }
    }
}
