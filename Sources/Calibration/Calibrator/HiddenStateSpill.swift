import Foundation

/// Hidden states that do not fit the activation memory budget, kept as one raw little-endian f32 file per chunk
/// in a directory of their own. A file is rewritten each layer through a temporary name and a rename, so a
/// crash never leaves a half-written chunk under its final name.
final class HiddenStateSpill {
    let directory: URL
    private var created = false

    init(parent: URL) {
        directory = parent.appendingPathComponent("nvfp4-calibration-\(UUID().uuidString)", isDirectory: true)
    }

    deinit { removeAll() }

    func path(ofChunk chunk: Int) -> String {
        directory.appendingPathComponent(String(format: "chunk-%06d.f32", chunk)).path
    }

    func write(_ values: [Float], chunk: Int) throws {
        if !created {
            do {
                try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            } catch {
                throw CalibrationError.scratchFile(path: directory.path, message: "cannot create directory: \(error.localizedDescription)")
            }
            created = true
        }
        let finalPath = path(ofChunk: chunk)
        let temporaryPath = finalPath + ".tmp"
        let data = littleEndianFloatBytes(values)
        do {
            try data.write(to: URL(fileURLWithPath: temporaryPath))
        } catch {
            try? FileManager.default.removeItem(atPath: temporaryPath)
            throw CalibrationError.scratchFile(path: temporaryPath, message: "cannot write: \(error.localizedDescription)")
        }
        guard rename(temporaryPath, finalPath) == 0 else {
            let reason = String(cString: strerror(errno))
            try? FileManager.default.removeItem(atPath: temporaryPath)
            throw CalibrationError.scratchFile(path: finalPath, message: "cannot rename \(temporaryPath) into place: \(reason)")
        }
    }

    func read(chunk: Int, count: Int) throws -> [Float] {
        let path = path(ofChunk: chunk)
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw CalibrationError.scratchFile(path: path, message: "cannot read: \(error.localizedDescription)")
        }
        guard data.count == count * MemoryLayout<Float>.size else {
            throw CalibrationError.scratchFile(path: path, message: "holds \(data.count) bytes, expected \(count * 4)")
        }
        return floatsFromLittleEndian(data)
    }

    /// Deletes every file and the directory; safe to call more than once.
    func removeAll() {
        guard created else { return }
        try? FileManager.default.removeItem(at: directory)
        created = false
    }
}
