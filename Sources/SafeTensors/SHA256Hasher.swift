import Crypto

/// Streaming SHA-256 (swift-crypto's), with the lower-case hex form that calibration.json, job specs and exported
/// tensors' manifests use. Feed bytes with `update`, then call `finalize` once.
public struct SHA256Hasher {
    private var hash = SHA256()

    public init() {}

    public mutating func update<Bytes: Sequence>(_ bytes: Bytes) where Bytes.Element == UInt8 {
        let handled: Void? = bytes.withContiguousStorageIfAvailable { buffer in
            hash.update(bufferPointer: UnsafeRawBufferPointer(buffer))
        }
        if handled == nil { hash.update(data: Array(bytes)) }
    }

    /// The 32-byte digest.
    public mutating func finalize() -> [UInt8] { Array(hash.finalize()) }

    /// Lower-case hex SHA-256 of `bytes`.
    public static func hexDigest<Bytes: Sequence>(of bytes: Bytes) -> String where Bytes.Element == UInt8 {
        var hasher = SHA256Hasher()
        hasher.update(bytes)
        return hex(hasher.finalize())
    }

    public static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var text = [UInt8]()
        text.reserveCapacity(bytes.count * 2)
        for byte in bytes {
            text.append(digits[Int(byte >> 4)])
            text.append(digits[Int(byte & 0x0F)])
        }
        return String(decoding: text, as: UTF8.self)
    }
}
