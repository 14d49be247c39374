import Foundation

/// Writes that survive a power loss once they return: the file's data is fsynced, and a directory is fsynced
/// after entries are created or renamed in it. A checkpoint is called committed only after both.
public enum DurableFile {
    /// Writes `data` to a new or truncated file at `url` and fsyncs it; errors name the file.
    public static func write(_ data: Data, to url: URL) throws {
        let descriptor = open(url.path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else { throw CheckpointError(url.path, "cannot create: \(String(cString: strerror(errno)))") }
        defer { close(descriptor) }
        var written = 0
        try data.withUnsafeBytes { bytes in
            while written < bytes.count {
                let result = Foundation.write(descriptor, bytes.baseAddress! + written, bytes.count - written)
                guard result > 0 else {
                    if result < 0 && errno == EINTR { continue }
                    throw CheckpointError(url.path, "write failed: \(String(cString: strerror(errno)))")
                }
                written += result
            }
        }
        guard fsync(descriptor) == 0 else { throw CheckpointError(url.path, "fsync failed: \(String(cString: strerror(errno)))") }
    }

    /// Fsyncs the directory itself, so the names created, removed or renamed in it are durable.
    public static func syncDirectory(_ url: URL) throws {
        let descriptor = open(url.path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard descriptor >= 0 else { throw CheckpointError(url.path, "cannot open the directory: \(String(cString: strerror(errno)))") }
        defer { close(descriptor) }
        guard fsync(descriptor) == 0 else {
            throw CheckpointError(url.path, "fsync of the directory failed: \(String(cString: strerror(errno)))")
        }
    }
}
