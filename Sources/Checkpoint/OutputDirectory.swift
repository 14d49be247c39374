import Foundation

/// An output directory that appears atomically: work happens in `OUTPUT.partial-<id>/`, which is renamed to
/// `OUTPUT` only after the checkpoint has been verified. A failed job leaves no directory named `OUTPUT`.
public struct OutputDirectory: Sendable {
    public let final: URL
    public let partial: URL
    public let force: Bool
    /// Written (durably) just before the rename and removed once the job is recorded as succeeded: a crash between
    /// the two leaves it beside the output, which tells a resumed job that its output is already in place.
    public let commitIntent: URL

    /// Fails at once if `final` exists, is not empty and `force` is false, or exists and is not a directory.
    public init(final: URL, jobID: String, force: Bool) throws {
        self.final = final.standardizedFileURL
        self.partial = Self.partial(final: self.final, jobID: jobID)
        self.force = force
        self.commitIntent = Self.commitIntent(final: self.final, jobID: jobID)
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: self.final.path, isDirectory: &isDirectory) {
            guard isDirectory.boolValue else {
                throw CheckpointError(self.final.path, "exists and is not a directory")
            }
            let contents = (try? FileManager.default.contentsOfDirectory(atPath: self.final.path)) ?? []
            if !contents.isEmpty && !force {
                throw CheckpointError(self.final.path, "exists and is not empty; pass --force to replace it")
            }
            if !contents.isEmpty && !Self.looksLikeCheckpoint(contents) {
                throw CheckpointError(self.final.path, "exists and does not look like a checkpoint (no config.json beside "
                                      + "safetensors files); --force replaces checkpoints only, so remove it yourself if it must go")
            }
        }
    }

    /// Where job `jobID` stages its output.
    public static func partial(final: URL, jobID: String) -> URL {
        URL(fileURLWithPath: final.standardizedFileURL.path + ".partial-\(jobID)")
    }

    static func commitIntent(final: URL, jobID: String) -> URL {
        URL(fileURLWithPath: final.standardizedFileURL.path + ".committing-\(jobID)")
    }

    /// Whether job `jobID` renamed its verified output into place before it stopped (its intent is there, its partial
    /// directory is gone and the output exists): a resumed job then only has to record that it succeeded.
    public static func wasCommitted(final: URL, jobID: String) -> Bool {
        let final = final.standardizedFileURL
        let fileManager = FileManager.default
        return fileManager.fileExists(atPath: commitIntent(final: final, jobID: jobID).path)
            && !fileManager.fileExists(atPath: final.path + ".partial-\(jobID)")
            && fileManager.fileExists(atPath: final.path)
    }

    /// Removes the commit intent (and an output replaced with `--force`, if a crash left it aside) once the job's
    /// success is recorded.
    public static func finishCommit(final: URL, jobID: String) {
        let final = final.standardizedFileURL
        try? FileManager.default.removeItem(atPath: final.path + ".replaced-" + URL(fileURLWithPath: final.path + ".partial-\(jobID)").lastPathComponent)
        try? FileManager.default.removeItem(at: commitIntent(final: final, jobID: jobID))
        try? DurableFile.syncDirectory(final.deletingLastPathComponent())
    }

    /// A Hugging Face checkpoint directory: `config.json` and safetensors weights (or their index).
    static func looksLikeCheckpoint(_ contents: [String]) -> Bool {
        contents.contains("config.json")
            && contents.contains { $0.hasSuffix(".safetensors") || $0 == "model.safetensors.index.json" }
    }

    /// Creates a fresh partial directory (removing a leftover one of the same job id).
    public func create() throws {
        let fileManager = FileManager.default
        try? fileManager.removeItem(at: partial)
        try fileManager.createDirectory(at: final.deletingLastPathComponent(), withIntermediateDirectories: true)
        try fileManager.createDirectory(at: partial, withIntermediateDirectories: false)
    }

    /// Moves the verified partial directory into place. With `force`, an existing output is moved aside first
    /// and deleted only after the rename succeeded.
    public func commit() throws {
        let fileManager = FileManager.default
        var replaced: URL?
        if fileManager.fileExists(atPath: final.path) {
            // Something may have appeared there while the job ran: replace it only as `init` would have.
            let contents = (try? fileManager.contentsOfDirectory(atPath: final.path)) ?? []
            if !contents.isEmpty && (!force || !Self.looksLikeCheckpoint(contents)) {
                throw CheckpointError(final.path, force
                    ? "appeared while the job ran and does not look like a checkpoint; it was left as it is"
                    : "appeared while the job ran and is not empty; it was left as it is (--force replaces a checkpoint)")
            }
            let aside = URL(fileURLWithPath: final.path + ".replaced-\(partial.lastPathComponent)")
            try fileManager.moveItem(at: final, to: aside)
            replaced = aside
        }
        // Every file was fsynced as written; the directory's entries too, before it takes the final name.
        try DurableFile.syncDirectory(partial)
        do {
            try DurableFile.write(Data(partial.lastPathComponent.utf8), to: commitIntent)
        } catch {
            throw CheckpointError(commitIntent.path, "could not record the commit: \(error)")
        }
        do {
            try fileManager.moveItem(at: partial, to: final)
        } catch {
            if let replaced { try? fileManager.moveItem(at: replaced, to: final) }
            try? fileManager.removeItem(at: commitIntent)
            throw CheckpointError(final.path, "could not rename \(partial.lastPathComponent) into place: \(error)")
        }
        try DurableFile.syncDirectory(final.deletingLastPathComponent())
        if let replaced { try? fileManager.removeItem(at: replaced) }
    }

    /// Removes the partial directory after a failure.
    public func discard() {
        try? FileManager.default.removeItem(at: partial)
    }
}
