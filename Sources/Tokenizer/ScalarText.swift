/// Character classes the pre-tokenizer regexes test, as bit flags. A scalar with none of the first three bits is
/// what the regexes spell `[^\s\p{L}\p{N}]`.
enum ScalarClass {
    /// General category L (Lu, Ll, Lt, Lm, Lo): `\p{L}`.
    static let letter: UInt8 = 1
    /// General category N (Nd, Nl, No): `\p{N}`, and Rust's `char::is_numeric`.
    static let number: UInt8 = 2
    /// The White_Space property: `\s` in Oniguruma's Unicode mode, and Rust's `char::is_whitespace`.
    static let whitespace: UInt8 = 4
    /// CR or LF.
    static let lineBreak: UInt8 = 8

    static func compute(_ value: UInt32) -> UInt8 {
        guard let scalar = Unicode.Scalar(value) else { return 0 }
        var result: UInt8 = 0
        switch scalar.properties.generalCategory {
        case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter:
            result |= letter
        case .decimalNumber, .letterNumber, .otherNumber:
            result |= number
        default:
            break
        }
        if scalar.properties.isWhitespace { result |= whitespace }
        if value == 0x0A || value == 0x0D { result |= lineBreak }
        return result
    }

    /// Classes of the Basic Multilingual Plane, computed once; other planes are classified on demand.
    static let basicPlane: [UInt8] = (0..<0x10000).map { compute(UInt32($0)) }

    @inline(__always)
    static func of(_ value: UInt32) -> UInt8 {
        value < 0x10000 ? basicPlane[Int(value)] : compute(value)
    }
}

/// A text decoded once into scalars: UTF-8 bytes, each scalar's byte offset (plus an end sentinel), value and
/// class. Pre-tokenizers work on scalar index ranges; the model works on the byte ranges they cover.
struct ScalarText {
    var bytes: [UInt8]
    var starts: [Int32]
    var values: [UInt32]
    var classes: [UInt8]

    init(utf8 bytes: [UInt8]) {
        self.bytes = bytes
        starts = []
        values = []
        classes = []
        starts.reserveCapacity(bytes.count + 1)
        values.reserveCapacity(bytes.count)
        classes.reserveCapacity(bytes.count)
        let basicPlane = ScalarClass.basicPlane
        var i = 0
        let n = bytes.count
        while i < n {
            let lead = bytes[i]
            var value: UInt32
            var length: Int
            // The input comes from a Swift String, so it is valid UTF-8.
            if lead < 0x80 {
                value = UInt32(lead); length = 1
            } else if lead < 0xE0 {
                value = UInt32(lead & 0x1F); length = 2
            } else if lead < 0xF0 {
                value = UInt32(lead & 0x0F); length = 3
            } else {
                value = UInt32(lead & 0x07); length = 4
            }
            for k in 1..<length { value = value << 6 | UInt32(bytes[i + k] & 0x3F) }
            starts.append(Int32(i))
            values.append(value)
            classes.append(value < 0x10000 ? basicPlane[Int(value)] : ScalarClass.compute(value))
            i += length
        }
        starts.append(Int32(n))
    }

    var scalarCount: Int { values.count }
}
