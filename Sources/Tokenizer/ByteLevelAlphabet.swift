/// The GPT-2 byte-to-unicode map: every byte gets a printable scalar so that vocab strings can spell any byte
/// sequence. Printable Latin-1 bytes map to themselves; the other 68 bytes map, in order, to U+0100 onward.
enum ByteLevelAlphabet {
    /// Scalar value for each byte.
    static let scalarForByte: [UInt32] = {
        var table = [UInt32](repeating: 0, count: 256)
        var next: UInt32 = 256
        for byte in 0..<256 {
            if isSelfMapped(byte) {
                table[byte] = UInt32(byte)
            } else {
                table[byte] = next
                next += 1
            }
        }
        return table
    }()

    /// Inverse map: scalar value -> byte, for the 324 scalars below U+0144; -1 where no byte maps there.
    static let byteForScalar: [Int16] = {
        var table = [Int16](repeating: -1, count: 0x144)
        for (byte, scalar) in scalarForByte.enumerated() { table[Int(scalar)] = Int16(byte) }
        return table
    }()

    private static func isSelfMapped(_ byte: Int) -> Bool {
        (33...126).contains(byte) || (161...172).contains(byte) || (174...255).contains(byte)
    }

    /// The raw bytes a byte-level vocab string stands for, or nil when it holds a scalar outside the alphabet
    /// (such a token can never come out of byte-level BPE).
    static func bytes(ofByteLevelString string: String) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(string.utf8.count)
        for scalar in string.unicodeScalars {
            let value = Int(scalar.value)
            guard value < byteForScalar.count, byteForScalar[value] >= 0 else { return nil }
            out.append(UInt8(byteForScalar[value]))
        }
        return out
    }

    /// Appends the raw bytes of a byte-level string; false (with `bytes` partly extended) when it holds a scalar
    /// outside the alphabet.
    static func appendBytes(ofByteLevelString string: Substring, to bytes: inout [UInt8]) -> Bool {
        for scalar in string.unicodeScalars {
            let value = Int(scalar.value)
            guard value < byteForScalar.count, byteForScalar[value] >= 0 else { return false }
            bytes.append(UInt8(byteForScalar[value]))
        }
        return true
    }

    /// The byte-level spelling of raw bytes.
    static func string(ofBytes bytes: some Sequence<UInt8>) -> String {
        var scalars = String.UnicodeScalarView()
        for byte in bytes { scalars.append(Unicode.Scalar(scalarForByte[Int(byte)])!) }
        return String(scalars)
    }
}
