import Foundation

/// Sizes as operators write them on the command line.
public enum ByteCount {
    /// `5GB`, `500MB`, `2GiB`, `64KiB` or a plain byte count; nil for anything else, zero, or beyond 2^62 bytes.
    public static func parse(_ text: String) -> Int? {
        let trimmed = text.trimmingCharacters(in: .whitespaces).uppercased()
        let units: [(String, Double)] = [
            ("GIB", 1_073_741_824), ("MIB", 1_048_576), ("KIB", 1024), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3), ("B", 1),
        ]
        for (suffix, factor) in units where trimmed.hasSuffix(suffix) {
            guard let value = Double(trimmed.dropLast(suffix.count).trimmingCharacters(in: .whitespaces)), value > 0 else { return nil }
            let bytes = value * factor
            guard bytes.isFinite, bytes >= 1, bytes < 0x1p62 else { return nil }
            return Int(bytes)
        }
        if let bytes = Int(trimmed), bytes > 0 { return bytes }
        return nil
    }
}
