import Foundation
import SafeTensors

/// Identifies a written checkpoint directory cheaply: SHA-256 over every file's name and size and the bytes of its
/// `config.json`. Another machine that sees the same path proves with it that it reads the same checkpoint (shared
/// storage) before it measures that checkpoint's quality.
public enum CheckpointFingerprint {
    public static func of(directory: URL) throws -> String {
        let manager = FileManager.default
        let names = try manager.contentsOfDirectory(atPath: directory.path).sorted()
        var hasher = SHA256Hasher()
        for name in names {
            let size = (try manager.attributesOfItem(atPath: directory.appendingPathComponent(name).path)[.size] as? Int) ?? -1
            hasher.update(Array("\(name)\t\(size)\n".utf8))
        }
        hasher.update(try Data(contentsOf: directory.appendingPathComponent("config.json")))
        return SHA256Hasher.hex(hasher.finalize())
    }
}
