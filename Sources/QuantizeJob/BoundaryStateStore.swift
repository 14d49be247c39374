import ComputeBackend
import Crypto
import Foundation

/// A boundary state file that cannot be used, naming the file.
public enum BoundaryStateError: Error, CustomStringConvertible, Equatable, Sendable {
    case invalidJobID(String)
    case io(path: String, reason: String)
    case corrupt(path: String, reason: String)
    /// Hidden states kept for other inputs (another fingerprint, or none recorded) sit where this job keeps its own.
    case keptForOtherInputs(path: String, kept: String?, expected: String)

    public var description: String {
        switch self {
        case .invalidJobID(let id):
            return "job id '\(id)' cannot name a scratch directory; use letters, digits, '.', '_' and '-'"
        case .io(let path, let reason):
            return "boundary state \(path): \(reason)"
        case .corrupt(let path, let reason):
            return "boundary state \(path) is damaged: \(reason); recompute it from the previous range"
        case .keptForOtherInputs(let path, let kept, let expected):
            return "the hidden states kept in \(path) were computed from other inputs (fingerprint "
                + "\(kept.map { String($0.prefix(16)) } ?? "not recorded"), this job's is \(expected.prefix(16))); they are not reused: "
                + "remove the directory (or run `coordctl gc`) and submit the job again"
        }
    }
}

/// The hidden states entering a worker's range, one file per chunk, kept so that a restarted worker (or
/// coordinator) can run the range again from its start without the previous ranges.
///
/// Files live in `<scratch>/nvfp4-boundary-<jobID>/layer-<first layer>/chunk-<chunk>.hs`: a 64-byte header (magic
/// `NVFP4HS1`, then little-endian UInt64 chunk, token count and hidden size, then the SHA-256 of the payload) and
/// the raw little-endian f32 payload. A file is written under a temporary name and renamed into place, so a crash
/// never leaves a half-written file under a final name; the checksum is verified on every read.
public struct BoundaryStateStore: Sendable {
    /// Every range of the job on this machine lives under here.
    public let jobDirectory: URL
    /// This range's files.
    public let directory: URL
    public let hiddenSize: Int

    static let magic = Data("NVFP4HS1".utf8)
    /// A job's directory under the scratch directory is this prefix and the job id.
    public static let jobDirectoryPrefix = "nvfp4-boundary-"
    static let headerSize = 64

    /// - Parameter firstLayer: the first layer of the range whose input is stored.
    public init(scratchDirectory: URL, jobID: String, firstLayer: Int, hiddenSize: Int) throws {
        let allowed = Set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
        guard !jobID.isEmpty, jobID != ".", jobID != "..", jobID.allSatisfy(allowed.contains) else {
            throw BoundaryStateError.invalidJobID(jobID)
        }
        jobDirectory = scratchDirectory.appendingPathComponent(Self.jobDirectoryPrefix + jobID, isDirectory: true)
        directory = jobDirectory.appendingPathComponent("layer-\(firstLayer)", isDirectory: true)
        self.hiddenSize = hiddenSize
    }

    /// Ties the kept states to the job's input fingerprint: records it in an empty store, and refuses a store whose
    /// states were kept under another one (or before fingerprints were recorded).
    public func bind(toFingerprint digest: String) throws {
        let file = directory.appendingPathComponent("fingerprint")
        if let kept = try? String(contentsOf: file, encoding: .utf8) {
            guard kept == digest else {
                throw BoundaryStateError.keptForOtherInputs(path: directory.path, kept: kept, expected: digest)
            }
            return
        }
        if !(try storedChunks()).isEmpty {
            throw BoundaryStateError.keptForOtherInputs(path: directory.path, kept: nil, expected: digest)
        }
        do {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            try Data(digest.utf8).write(to: file, options: .atomic)
        } catch {
            throw BoundaryStateError.io(path: file.path, reason: "cannot record the fingerprint: \(error.localizedDescription)")
        }
    }

    public func url(ofChunk chunk: Int) -> URL {
        directory.appendingPathComponent(String(format: "chunk-%06d.hs", chunk))
    }

    /// Stores the input of `chunk`, replacing an earlier copy atomically.
    public func save(_ hidden: HiddenStates, chunk: Int) throws {
        precondition(hidden.hiddenSize == hiddenSize, "hidden states of width \(hidden.hiddenSize) in a store of \(hiddenSize)")
        do {
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        } catch {
            throw BoundaryStateError.io(path: directory.path, reason: "cannot create directory: \(error.localizedDescription)")
        }
        let payload = hidden.littleEndianBytes()
        var file = Self.magic
        for field in [UInt64(chunk), UInt64(hidden.tokenCount), UInt64(hiddenSize)] {
            withUnsafeBytes(of: field.littleEndian) { file.append(contentsOf: $0) }
        }
        file.append(contentsOf: SHA256.hash(data: payload))
        file.append(payload)
        let final = url(ofChunk: chunk)
        let temporary = directory.appendingPathComponent(".\(final.lastPathComponent).\(UUID().uuidString).tmp")
        do {
            try file.write(to: temporary)
        } catch {
            try? FileManager.default.removeItem(at: temporary)
            throw BoundaryStateError.io(path: temporary.path, reason: "cannot write: \(error.localizedDescription)")
        }
        guard rename(temporary.path, final.path) == 0 else {
            let reason = String(cString: strerror(errno))
            try? FileManager.default.removeItem(at: temporary)
            throw BoundaryStateError.io(path: final.path, reason: "cannot rename \(temporary.lastPathComponent) into place: \(reason)")
        }
    }

    /// The stored input of `chunk`, verified against its header and checksum (and `expectedTokens` when given).
    public func load(chunk: Int, expectedTokens: Int? = nil) throws -> HiddenStates {
        let path = url(ofChunk: chunk).path
        let file: Data
        do {
            file = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            throw BoundaryStateError.io(path: path, reason: "cannot read: \(error.localizedDescription)")
        }
        guard file.count >= Self.headerSize, file.prefix(8) == Self.magic else {
            throw BoundaryStateError.corrupt(path: path, reason: "no boundary state header")
        }
        func field(_ index: Int) -> UInt64 {
            file.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: 8 + 8 * index, as: UInt64.self)) }
        }
        let (storedChunk, tokens, width) = (field(0), field(1), field(2))
        guard storedChunk == UInt64(chunk) else {
            throw BoundaryStateError.corrupt(path: path, reason: "it holds chunk \(storedChunk)")
        }
        guard width == UInt64(hiddenSize) else {
            throw BoundaryStateError.corrupt(path: path, reason: "hidden size \(width), expected \(hiddenSize)")
        }
        if let expectedTokens, tokens != UInt64(expectedTokens) {
            throw BoundaryStateError.corrupt(path: path, reason: "\(tokens) tokens, expected \(expectedTokens)")
        }
        let payload = file.dropFirst(Self.headerSize)
        guard UInt64(payload.count) == tokens &* width &* 4 else {
            throw BoundaryStateError.corrupt(path: path, reason: "\(payload.count) payload bytes for \(tokens) × \(width) f32 values")
        }
        let stored = Data(file[(Self.headerSize - 32)..<Self.headerSize])
        guard Data(SHA256.hash(data: payload)) == stored else {
            throw BoundaryStateError.corrupt(path: path, reason: "SHA-256 of the payload does not match its header")
        }
        return try HiddenStates(hiddenSize: hiddenSize, littleEndianBytes: Data(payload))
    }

    /// Chunks with a stored file, ascending (files are only ever complete, thanks to the rename).
    public func storedChunks() throws -> [Int] {
        guard FileManager.default.fileExists(atPath: directory.path) else { return [] }
        let names: [String]
        do {
            names = try FileManager.default.contentsOfDirectory(atPath: directory.path)
        } catch {
            throw BoundaryStateError.io(path: directory.path, reason: "cannot list: \(error.localizedDescription)")
        }
        return names.compactMap { name -> Int? in
            guard name.hasPrefix("chunk-"), name.hasSuffix(".hs") else { return nil }
            return Int(name.dropFirst("chunk-".count).dropLast(".hs".count))
        }.sorted()
    }

    /// Deletes every stored range of the job on this machine (at the job's end).
    public func removeAll() throws {
        guard FileManager.default.fileExists(atPath: jobDirectory.path) else { return }
        do {
            try FileManager.default.removeItem(at: jobDirectory)
        } catch {
            throw BoundaryStateError.io(path: jobDirectory.path, reason: "cannot remove: \(error.localizedDescription)")
        }
    }
}
