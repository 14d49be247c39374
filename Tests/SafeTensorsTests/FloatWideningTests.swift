import Foundation
import Testing
@testable import SafeTensors

@Suite struct FloatWideningTests {
    private func widen(_ dtype: SafeTensorsDType, _ patterns: [UInt16]) throws -> [Float] {
        try withTemporaryDirectory { directory in
            let path = directory.appendingPathComponent("w.safetensors").path
            let writer = try SafeTensorsWriter(
                path: path, tensors: [PlannedTensor(name: "v", dtype: dtype, shape: [patterns.count])])
            try patterns.map(\.littleEndian).withUnsafeBytes { try writer.write("v", bytes: $0) }
            try writer.finish()
            return try SafeTensorsFile(path: path).floats("v")
        }
    }

    @Test func bfloat16SpecialValues() throws {
        let values = try widen(.bf16, [0x3F80, 0xC049, 0x0000, 0x8000, 0x7F80, 0xFF80, 0x7F7F, 0x0001, 0x3EAB, 0x7FC1])
        #expect(Array(values[0..<2]) == [1.0, -3.140625])
        #expect(values[2] == 0 && values[2].sign == .plus)
        #expect(values[3] == 0 && values[3].sign == .minus)
        #expect(values[4] == .infinity && values[5] == -.infinity)
        #expect(values[6] == 0x1.FEp127)  // largest finite BF16
        #expect(values[7] == 0x1p-133)  // smallest BF16 subnormal
        #expect(values[8] == 0x1.56p-2)  // 0.333984375
        #expect(values[9].isNaN && values[9].bitPattern == 0x7FC1_0000)
    }

    @Test func float16SpecialValues() throws {
        let values = try widen(.f16, [0x3C00, 0xC100, 0x7BFF, 0x0001, 0x03FF, 0x0400, 0x3555, 0x8000, 0x7C00, 0xFC00, 0x7E00])
        #expect(Array(values[0..<3]) == [1.0, -2.5, 65504])
        #expect(values[3] == 0x1p-24)  // smallest subnormal
        #expect(values[4] == 1023 * 0x1p-24)  // largest subnormal
        #expect(values[5] == 0x1p-14)  // smallest normal
        #expect(values[6] == 0x1.554p-2)  // 0.333251953125
        #expect(values[7] == 0 && values[7].sign == .minus)
        #expect(values[8] == .infinity && values[9] == -.infinity)
        #expect(values[10].isNaN)
    }

    #if !(os(macOS) && arch(x86_64))
    @Test func float16WideningAgreesWithFloat16OnAllPatterns() {
        let mismatches = (UInt16.min...UInt16.max).filter { bits in
            let ours = FloatWidening.float(fromHalfBits: bits)
            let reference = Float(Float16(bitPattern: bits))
            return reference.isNaN ? !ours.isNaN : ours.bitPattern != reference.bitPattern
        }
        #expect(mismatches.isEmpty, "\(mismatches.count) patterns differ, first: \(mismatches.prefix(4).map { String($0, radix: 16) })")
    }
    #endif

    @Test func wideningReadsUnalignedSources() {
        let bytes: [UInt8] = [0xFF, 0x80, 0x3F, 0x00, 0xC0, 0x00]  // after 1 byte: BF16 1.0, -2.0
        bytes.withUnsafeBytes { raw in
            let unaligned = UnsafeRawBufferPointer(rebasing: raw[1..<5])
            #expect(FloatWidening.widenBFloat16(unaligned) == [1.0, -2.0])
            #expect(FloatWidening.widenFloat16(UnsafeRawBufferPointer(rebasing: raw[1..<3])) == [1.875])  // F16 0x3F80
        }
        var f32 = [UInt8](repeating: 0, count: 9)
        withUnsafeBytes(of: Float(-7.75).bitPattern.littleEndian) { f32.replaceSubrange(1..<5, with: $0) }
        withUnsafeBytes(of: Float(0.1).bitPattern.littleEndian) { f32.replaceSubrange(5..<9, with: $0) }
        f32.withUnsafeBytes { raw in
            #expect(FloatWidening.copyFloat32(UnsafeRawBufferPointer(rebasing: raw[1...])) == [-7.75, 0.1])
        }
        #expect(FloatWidening.widenBFloat16(UnsafeRawBufferPointer(start: nil, count: 0)) == [])
    }
}
