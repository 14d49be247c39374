import CUDARuntime
import Foundation
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
        try device.kernels.bf16Amax.launch(grid: gridStride(count / 8), block: (256, 1, 1), stream: stream,
                                           arguments: [.pointer(weight), .int64(Int64(count)), .pointer(result.address)])
    }
}
