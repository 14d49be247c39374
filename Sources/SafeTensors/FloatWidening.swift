#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Exact widening of 16- and 32-bit float bytes to `[Float]`. Sources may be unaligned (other writers do
/// not always pad headers), so elements are loaded with `loadUnaligned`, which is a plain load on x86/ARM.
public enum FloatWidening {
    /// Little-endian F32 bytes copied to `[Float]`.
    public static func copyFloat32(_ source: UnsafeRawBufferPointer) -> [Float] {
        let count = source.count / 4
        return [Float](unsafeUninitializedCapacity: count) { buffer, initialized in
            if count > 0 { memcpy(buffer.baseAddress!, source.baseAddress!, count * 4) }
            initialized = count
        }
    }

    /// Little-endian BF16 bytes widened to `[Float]`: the 16 bits become the top half of the F32 bits.
    public static func widenBFloat16(_ source: UnsafeRawBufferPointer) -> [Float] {
        widen16(source) { Float(bitPattern: UInt32($0) &<< 16) }
    }

    /// Little-endian IEEE binary16 bytes widened to `[Float]`.
    public static func widenFloat16(_ source: UnsafeRawBufferPointer) -> [Float] {
        widen16(source, float(fromHalfBits:))
    }

    /// Every little-endian 16-bit element of `source`, converted by `widen`.
    @inline(__always)
    static func widen16(_ source: UnsafeRawBufferPointer, _ widen: (UInt16) -> Float) -> [Float] {
        let count = source.count / 2
        return [Float](unsafeUninitializedCapacity: count) { buffer, initialized in
            if count > 0 {
                let input = source.baseAddress!
                let output = buffer.baseAddress!
                for index in 0..<count {
                    output[index] = widen(input.loadUnaligned(fromByteOffset: 2 &* index, as: UInt16.self))
                }
            }
            initialized = count
        }
    }

    /// Every little-endian 16-bit element of `source`, converted by `widen` into `output` (as long as `source`).
    @inline(__always)
    static func widen16(_ source: UnsafeRawBufferPointer, into output: UnsafeMutableBufferPointer<Float>,
                        _ widen: (UInt16) -> Float) {
        let input = source.baseAddress!
        let target = output.baseAddress!
        for index in 0..<(source.count / 2) {
            target[index] = widen(input.loadUnaligned(fromByteOffset: 2 &* index, as: UInt16.self))
        }
    }

    /// One binary16 value as `Float`, exactly. Written out rather than using `Float16`, which macOS on
    /// Intel lacks.
    @inline(__always)
    public static func float(fromHalfBits bits: UInt16) -> Float {
        let sign = UInt32(bits & 0x8000) << 16
        let exponent = UInt32(bits >> 10) & 0x1F
        let mantissa = UInt32(bits) & 0x3FF
        if exponent == 0x1F {
            // Infinity or NaN; the NaN payload moves to the top of the F32 mantissa.
            return Float(bitPattern: sign | 0x7F80_0000 | (mantissa << 13))
        }
        if exponent != 0 {
            // Normal: rebias the exponent from 15 to 127.
            return Float(bitPattern: sign | ((exponent + 112) << 23) | (mantissa << 13))
        }
        // Zero or subnormal: mantissa * 2^-24, exact in F32.
        let magnitude = Float(mantissa) * 0x1p-24
        return Float(bitPattern: sign | magnitude.bitPattern)
    }
}
