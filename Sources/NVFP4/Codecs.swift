/// Bit-exact scalar codecs for the number formats of an NVFP4 checkpoint.
///
/// Every conversion follows `nvfp4-checkpoint-spec.md` §1–§2 to the bit: BF16 and FP8-E4M3 round to nearest-even,
/// E2M1 uses modelopt's tie rules and sign handling.
public enum BFloat16 {
    /// Widens a BF16 bit pattern to Float. Exact.
    @inlinable
    public static func toFloat(_ bits: UInt16) -> Float {
        Float(bitPattern: UInt32(bits) << 16)
    }

    /// Rounds a Float to BF16 with round-to-nearest-even. Infinity stays infinity and a finite overflow becomes
    /// infinity; NaN becomes the canonical quiet NaN 0x7FC0 (PyTorch's scalar path).
    @inlinable
    public static func fromFloat(_ value: Float) -> UInt16 {
        if value.isNaN { return 0x7FC0 }
        let u = value.bitPattern
        return UInt16(truncatingIfNeeded: (u &+ 0x7FFF &+ ((u >> 16) & 1)) >> 16)
    }
}

/// FP8 E4M3 ("e4m3fn"): bias 7, no infinities, 0x7F/0xFF are NaN, largest finite value 448.
public enum FP8E4M3 {
    public static let maxFinite: Float = 448
    /// The smallest positive subnormal, 2^-9.
    public static let minPositive: Float = 0x1p-9

    /// Decoded value of every byte, for table lookups in hot loops.
    public static let decodeTable: [Float] = (0..<256).map { decodeSlow(UInt8($0)) }

    @inlinable
    public static func decode(_ code: UInt8) -> Float {
        decodeTable[Int(code)]
    }

    @usableFromInline
    static func decodeSlow(_ code: UInt8) -> Float {
        let sign: Float = code & 0x80 != 0 ? -1 : 1
        let e = Int((code >> 3) & 0xF)
        let m = Float(code & 0x7)
        if e == 15 && code & 0x7 == 7 { return .nan }
        if e == 0 { return sign * m * 0x1p-9 }
        return sign * (1 + m / 8) * Float(sign: .plus, exponent: e - 7, significand: 1)
    }

    /// Rounds a Float to E4M3 with round-to-nearest-even, subnormals included. NaN gives 0x7F; magnitudes above
    /// 448 saturate to ±448 (the behaviour of current PyTorch). The quantizer clamps before calling this, so the
    /// overflow policy never matters for checkpoint bytes.
    @inlinable
    public static func encode(_ value: Float) -> UInt8 {
        if value.isNaN { return 0x7F }
        let signBit: UInt8 = value.sign == .minus ? 0x80 : 0
        let a = Swift.min(abs(value), maxFinite)
        return signBit | encodeMagnitude(a)
    }

    /// Encodes a magnitude already inside [0, 448]. This is the spec's exact integer recipe.
    @inlinable
    public static func encodeMagnitude(_ a: Float) -> UInt8 {
        if a < 0x1p-6 {
            // Subnormal range: multiples of 2^-9; the product is exact, so one rounding suffices.
            return UInt8((a * 512).rounded(.toNearestOrEven))
        }
        var u = a.bitPattern
        u = u &+ 0x7FFFF &+ ((u >> 20) & 1)
        return UInt8(truncatingIfNeeded: (((u >> 23) &- 120) << 3) | ((u >> 20) & 7))
    }
}

/// E2M1 (FP4): 1 sign bit, 2 exponent bits, 1 mantissa bit. Magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6.
public enum E2M1 {
    public static let magnitudes: [Float] = [0, 0.5, 1, 1.5, 2, 3, 4, 6]

    /// Value of a 4-bit code. 0x8 is −0 and decodes to +0, as modelopt's dequantize does.
    @inlinable
    public static func value(_ code: UInt8) -> Float {
        let m = magnitudes[Int(code & 7)]
        return code & 8 != 0 && m != 0 ? -m : m
    }

    /// Rounds to the nearest E2M1 code, ties to the even code, saturating above 5 to ±6. The sign bit is set only
    /// when `y < 0` strictly, so −0.0 gives 0x0 (modelopt's convention).
    @inlinable
    public static func encode(_ y: Float) -> UInt8 {
        let a = abs(y)
        var m: UInt8 = 0
        if a > 0.25 { m += 1 }
        if a >= 0.75 { m += 1 }
        if a > 1.25 { m += 1 }
        if a >= 1.75 { m += 1 }
        if a > 2.5 { m += 1 }
        if a >= 3.5 { m += 1 }
        if a > 5 { m += 1 }
        return y < 0 ? m | 8 : m
    }
}
