import Foundation
import StrictJSON
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A file opened read-only and read with `pread`. Nothing is mapped, so a file truncated while in use makes a read
/// fail with an error naming it, never a SIGBUS; and every read first checks that the file is still the one opened
/// (same size, modification time and inode, by descriptor and by path), so a model rewritten mid-job is refused.
final class ReadOnlyFile: @unchecked Sendable {
    // @unchecked: the descriptor and the identity are set once in init; pread and fstat are thread-safe.
    let path: String
    let length: Int
    private let descriptor: Int32
    private let identity: FileIdentity

    struct FileIdentity: Equatable {
        var size: Int
        var modifiedSeconds: Int
        var modifiedNanoseconds: Int
        var inode: UInt64
        var device: UInt64

        init(_ status: stat) {
            size = Int(status.st_size)
            modifiedSeconds = Int(status.st_mtim.tv_sec)
            modifiedNanoseconds = Int(status.st_mtim.tv_nsec)
            inode = UInt64(status.st_ino)
            device = UInt64(status.st_dev)
        }
    }

    /// Opens `path`. Files shorter than 8 bytes are rejected.
    init(path: String) throws {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else {
            throw SafeTensorsError(path: path, message: "cannot open: \(String(cString: strerror(errno)))", kind: .io)
        }
        var status = stat()
        guard fstat(descriptor, &status) == 0 else {
            let reason = String(cString: strerror(errno))
            close(descriptor)
            throw SafeTensorsError(path: path, message: "cannot stat: \(reason)", kind: .io)
        }
        guard (status.st_mode & S_IFMT) == S_IFREG else {
            close(descriptor)
            throw SafeTensorsError(path: path, message: "not a regular file", kind: .io)
        }
        let size = Int(status.st_size)
        guard size >= 8 else {
            close(descriptor)
            throw SafeTensorsError(
                path: path, message: "file is \(size) bytes, shorter than the 8-byte header length", kind: .fileTooShort)
        }
        self.path = path
        self.descriptor = descriptor
        self.length = size
        self.identity = FileIdentity(status)
    }

    deinit { close(descriptor) }

    /// Throws ``SafeTensorsError/Kind/changedOnDisk`` when the file (the open one, or whatever its path names now) is
    /// not the file that was opened.
    func checkUnchanged() throws {
        var status = stat()
        guard fstat(descriptor, &status) == 0 else {
            throw SafeTensorsError(path: path, message: "cannot stat: \(String(cString: strerror(errno)))", kind: .io)
        }
        try compare(FileIdentity(status), what: "the open file")
        guard stat(path, &status) == 0 else {
            throw SafeTensorsError(path: path, message: "is gone while in use (\(String(cString: strerror(errno))))",
                                   kind: .changedOnDisk)
        }
        try compare(FileIdentity(status), what: "the path")
    }

    private func compare(_ now: FileIdentity, what: String) throws {
        guard now != identity else { return }
        let change = now.size != identity.size ? "its size went from \(identity.size) to \(now.size) bytes"
            : now.inode != identity.inode || now.device != identity.device ? "\(what) is another file now (replaced)"
            : "it was modified"
        throw SafeTensorsError(path: path, message: "changed while in use: \(change)", kind: .changedOnDisk)
    }

    /// Reads `buffer.count` bytes at `offset`, after checking that the file is unchanged.
    func read(at offset: Int, into buffer: UnsafeMutableRawBufferPointer) throws {
        try checkUnchanged()
        var done = 0
        while done < buffer.count {
            let result = pread(descriptor, buffer.baseAddress! + done, buffer.count - done, off_t(offset + done))
            if result < 0 {
                if errno == EINTR { continue }
                throw SafeTensorsError(path: path, message: "cannot read: \(String(cString: strerror(errno)))", kind: .io)
            }
            if result == 0 {
                throw SafeTensorsError(
                    path: path, message: "ends at byte \(offset + done), before byte \(offset + buffer.count) (truncated while in use)",
                    kind: .changedOnDisk)
            }
            done += result
        }
    }

    /// Reads `count` bytes at `offset` into a temporary buffer and calls `body` with it.
    func withBytes<R>(at offset: Int, count: Int, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: max(count, 1), alignment: 64)
        defer { buffer.deallocate() }
        let region = UnsafeMutableRawBufferPointer(rebasing: buffer[0..<count])
        if count > 0 { try read(at: offset, into: region) }
        return try body(UnsafeRawBufferPointer(region))
    }

    /// Tells the kernel the page cache of `count` bytes at `offset` will not be needed again.
    func dropCache(at offset: Int, count: Int) {
        _ = posix_fadvise(descriptor, off_t(offset), off_t(count), Int32(POSIX_FADV_DONTNEED))
    }
}

/// A read-only safetensors file whose header has been fully validated at init; tensors are read with `pread` when
/// asked for (see ``ReadOnlyFile``).
///
/// Reading is lenient about gaps between tensors (other writers may leave them) but strict about
/// anything that would make a read wrong: out-of-range or overlapping offsets, sizes that disagree with
/// shapes. ``validateTiling()`` adds the exact-tiling rule that files we write obey.
// @unchecked: every stored property is set once in init.
public final class SafeTensorsFile: @unchecked Sendable {
    public let path: String
    /// `__metadata__`, empty when absent.
    public let metadata: [String: String]
    /// Tensor names sorted by data offset (then name, for zero-size tensors sharing an offset).
    public let tensorNames: [String]
    /// Header entries in the order of ``tensorNames``.
    public let tensors: [TensorInfo]
    /// `N`, the JSON header's length in bytes (padding included).
    public let headerLength: Int
    /// Total file size in bytes.
    public let fileSize: Int

    private let file: ReadOnlyFile
    private let infoByName: [String: TensorInfo]

    /// Byte offset of the data section in the file: `8 + N`.
    public var dataSectionOffset: Int { 8 + headerLength }
    /// Bytes in the data section.
    public var dataSectionSize: Int { fileSize - dataSectionOffset }

    /// Opens the file and validates its header; throws a ``SafeTensorsError`` naming the file (and tensor) at fault.
    public init(path: String) throws {
        let file = try ReadOnlyFile(path: path)
        let fileSize = file.length
        var lengthBytes: UInt64 = 0
        try withUnsafeMutableBytes(of: &lengthBytes) { try file.read(at: 0, into: $0) }
        let headerLength = try withUnsafeBytes(of: lengthBytes) {
            try Self.readHeaderLength(base: $0.baseAddress!, fileSize: fileSize, path: path)
        }
        let parsed = try file.withBytes(at: 8, count: headerLength) { header in
            try HeaderParser(path: path, dataSectionSize: fileSize - 8 - headerLength).parse(header)
        }

        self.path = path
        self.file = file
        self.fileSize = fileSize
        self.headerLength = headerLength
        self.metadata = parsed.metadata
        self.tensors = parsed.tensors
        self.tensorNames = parsed.tensors.map(\.name)
        self.infoByName = Dictionary(uniqueKeysWithValues: parsed.tensors.map { ($0.name, $0) })
    }

    /// Throws ``SafeTensorsError/Kind/changedOnDisk`` when the file changed since it was opened.
    public func checkUnchanged() throws {
        try file.checkUnchanged()
    }

    /// Validates the header of a whole safetensors file image held in memory exactly as ``init(path:)`` validates a
    /// mapped file (the fuzz target's entry point): the 8-byte length, then the JSON header against the data section.
    package static func parseHeader(fileImage: UnsafeRawBufferPointer, path: String = "<memory>") throws
        -> (headerLength: Int, metadata: [String: String], tensors: [TensorInfo])
    {
        guard fileImage.count >= 8, let base = fileImage.baseAddress else {
            throw SafeTensorsError(
                path: path, message: "file is \(fileImage.count) bytes, shorter than the 8-byte header length",
                kind: .fileTooShort)
        }
        let headerLength = try readHeaderLength(base: base, fileSize: fileImage.count, path: path)
        let header = UnsafeRawBufferPointer(start: base + 8, count: headerLength)
        let parsed = try HeaderParser(path: path, dataSectionSize: fileImage.count - 8 - headerLength).parse(header)
        return (headerLength, parsed.metadata, parsed.tensors)
    }

    private static func readHeaderLength(base: UnsafeRawPointer, fileSize: Int, path: String) throws -> Int {
        let length = UInt64(littleEndian: base.loadUnaligned(as: UInt64.self))
        guard length <= UInt64(maximumHeaderLength) else {
            throw SafeTensorsError(
                path: path, message: "header length \(length) exceeds the \(maximumHeaderLength)-byte limit",
                kind: .headerLength)
        }
        guard Int(length) <= fileSize - 8 else {
            throw SafeTensorsError(
                path: path,
                message: "header length \(length) runs past the end of the file (\(fileSize) bytes)",
                kind: .headerLength)
        }
        return Int(length)
    }

    public func contains(_ name: String) -> Bool {
        infoByName[name] != nil
    }

    /// The header entry for `name`; an unknown name is an error naming this file and the tensor.
    public func info(_ name: String) throws -> TensorInfo {
        guard let info = infoByName[name] else {
            throw SafeTensorsError(path: path, tensor: name, message: "no such tensor in this file", kind: .unknownTensor)
        }
        return info
    }

    /// Calls `body` with the tensor's bytes, read into a temporary buffer. The buffer must not escape `body`.
    public func withBytes<R>(_ name: String, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        let info = try info(name)
        return try file.withBytes(at: dataSectionOffset + info.dataOffsets.lowerBound, count: info.dataOffsets.count, body)
    }

    /// The tensor's bytes.
    public func data(_ name: String) throws -> Data {
        let info = try info(name)
        var data = Data(count: info.dataOffsets.count)
        if info.dataOffsets.count > 0 {
            try data.withUnsafeMutableBytes { try file.read(at: dataSectionOffset + info.dataOffsets.lowerBound, into: $0) }
        }
        return data
    }

    /// The tensor widened exactly to `Float`: BF16, F16 and F32 only; other dtypes are an error.
    public func floats(_ name: String) throws -> [Float] {
        let info = try info(name)
        guard [.f32, .bf16, .f16].contains(info.dtype) else {
            throw SafeTensorsError(
                path: path, tensor: name, message: "floats() needs BF16, F16 or F32, not \(info.dtype.rawValue)",
                kind: .unsupportedDType)
        }
        let count = info.elementCount
        let start = dataSectionOffset + info.dataOffsets.lowerBound
        return try [Float](unsafeUninitializedCapacity: count) { output, initialized in
            guard count > 0 else { initialized = 0; return }
            if info.dtype == .f32 {
                try file.read(at: start, into: UnsafeMutableRawBufferPointer(start: output.baseAddress!, count: count * 4))
            } else {
                // Read and widen a cache-sized piece at a time: the bytes are still in L2 when they are widened.
                let pieceElements = 128 << 10
                let piece = UnsafeMutableRawBufferPointer.allocate(byteCount: pieceElements * 2, alignment: 64)
                defer { piece.deallocate() }
                var done = 0
                while done < count {
                    let elements = min(pieceElements, count - done)
                    let bytes = UnsafeMutableRawBufferPointer(rebasing: piece[0..<(elements * 2)])
                    try file.read(at: start + done * 2, into: bytes)
                    let target = UnsafeMutableBufferPointer(rebasing: output[done..<(done + elements)])
                    if info.dtype == .bf16 {
                        FloatWidening.widen16(UnsafeRawBufferPointer(bytes), into: target) { Float(bitPattern: UInt32($0) &<< 16) }
                    } else {
                        FloatWidening.widen16(UnsafeRawBufferPointer(bytes), into: target, FloatWidening.float(fromHalfBits:))
                    }
                    done += elements
                }
            }
            initialized = count
        }
    }

    /// The tensor's values for I64 tensors (e.g. token ids); other dtypes are an error.
    public func int64s(_ name: String) throws -> [Int64] {
        let info = try info(name)
        guard info.dtype == .i64 else {
            throw SafeTensorsError(
                path: path, tensor: name, message: "int64s() needs I64, not \(info.dtype.rawValue)",
                kind: .unsupportedDType)
        }
        let count = info.elementCount
        return try [Int64](unsafeUninitializedCapacity: count) { buffer, initialized in
            if count > 0 {
                try file.read(at: dataSectionOffset + info.dataOffsets.lowerBound,
                              into: UnsafeMutableRawBufferPointer(start: buffer.baseAddress!, count: count * 8))
            }
            initialized = count
        }
    }

    /// Checks the stricter layout that files we write obey: sorted by offset, the tensors start at 0,
    /// leave no gap, and `8 + N + last_end` equals the file size. (Overlaps were already rejected at init.)
    public func validateTiling() throws {
        var expectedBegin = 0
        var previous: String?
        for info in tensors {
            if info.dataOffsets.lowerBound != expectedBegin {
                let after = previous.map { "the end of tensor '\($0)'" } ?? "the start of the data section"
                throw SafeTensorsError(
                    path: path, tensor: info.name,
                    message: "data_offsets [\(info.dataOffsets.lowerBound), \(info.dataOffsets.upperBound)] "
                        + "leave a gap: expected to begin at \(expectedBegin), \(after)",
                    kind: .tiling)
            }
            expectedBegin = info.dataOffsets.upperBound
            previous = info.name
        }
        if dataSectionOffset + expectedBegin != fileSize {
            throw SafeTensorsError(
                path: path,
                message: "tensors end at file offset \(dataSectionOffset + expectedBegin) (8 + \(headerLength) + "
                    + "\(expectedBegin)) but the file is \(fileSize) bytes",
                kind: .tiling)
        }
    }

    /// Tells the kernel the tensor's page cache is not needed any more, so a streaming pass over a model larger than
    /// memory does not crowd out everything else. Reading it again reads the disk.
    public func releasePages(_ name: String) throws {
        let info = try info(name)
        file.dropCache(at: dataSectionOffset + info.dataOffsets.lowerBound, count: info.dataOffsets.count)
    }
}

/// Validates a header and turns it into tensor entries sorted by offset.
struct HeaderParser {
    let path: String
    let dataSectionSize: Int

    struct Result {
        var metadata: [String: String]
        var tensors: [TensorInfo]
    }

    func parse(_ header: UnsafeRawBufferPointer) throws -> Result {
        guard isValidUTF8(header) else {
            throw SafeTensorsError(path: path, message: "header is not valid UTF-8", kind: .headerEncoding)
        }
        let root: JSONNode
        do {
            root = try StrictJSONParser.parse(header)
        } catch {
            throw SafeTensorsError(path: path, message: "header is not valid JSON: \(error.description)", kind: .headerJSON)
        }
        guard case .object(let members) = root else {
            throw SafeTensorsError(path: path, message: "header is \(root.kindName), not a JSON object", kind: .headerJSON)
        }

        var metadata: [String: String] = [:]
        var tensors: [TensorInfo] = []
        tensors.reserveCapacity(members.count)
        var seen = Set<String>()
        seen.reserveCapacity(members.count)
        for member in members {
            let (name, value) = (member.key, member.value)
            guard seen.insert(name).inserted else {
                let what = name == "__metadata__" ? "'__metadata__' appears twice" : "tensor name appears twice"
                throw SafeTensorsError(
                    path: path, tensor: name == "__metadata__" ? nil : name, message: what, kind: .duplicateName)
            }
            if name == "__metadata__" {
                metadata = try parseMetadata(value)
            } else {
                tensors.append(try parseEntry(name: name, value: value))
            }
        }

        tensors.sort {
            ($0.dataOffsets.lowerBound, $0.dataOffsets.upperBound, $0.name)
                < ($1.dataOffsets.lowerBound, $1.dataOffsets.upperBound, $1.name)
        }
        // Empty tensors overlap nothing; among the rest, each must begin at or after the furthest end so far.
        var furthest: TensorInfo?
        for info in tensors where !info.dataOffsets.isEmpty {
            if let furthest, info.dataOffsets.lowerBound < furthest.dataOffsets.upperBound {
                throw SafeTensorsError(
                    path: path, tensor: info.name,
                    message: "data_offsets \(describe(info.dataOffsets)) overlap tensor '\(furthest.name)' at "
                        + describe(furthest.dataOffsets),
                    kind: .overlap)
            }
            if furthest == nil || info.dataOffsets.upperBound > furthest!.dataOffsets.upperBound {
                furthest = info
            }
        }
        return Result(metadata: metadata, tensors: tensors)
    }

    private func describe(_ range: Range<Int>) -> String {
        "[\(range.lowerBound), \(range.upperBound)]"
    }

    private func parseMetadata(_ value: JSONNode) throws -> [String: String] {
        guard case .object(let members) = value else {
            throw SafeTensorsError(
                path: path, message: "'__metadata__' is \(value.kindName), not an object of strings", kind: .metadata)
        }
        var metadata: [String: String] = [:]
        for member in members {
            let (key, entry) = (member.key, member.value)
            guard case .string(let text) = entry else {
                throw SafeTensorsError(
                    path: path, message: "'__metadata__' value for '\(key)' is \(entry.kindName), not a string",
                    kind: .metadata)
            }
            guard metadata.updateValue(text, forKey: key) == nil else {
                throw SafeTensorsError(path: path, message: "'__metadata__' key '\(key)' appears twice", kind: .metadata)
            }
        }
        return metadata
    }

    private func parseEntry(name: String, value: JSONNode) throws -> TensorInfo {
        func failure(_ message: String, _ kind: SafeTensorsError.Kind) -> SafeTensorsError {
            SafeTensorsError(path: path, tensor: name, message: message, kind: kind)
        }
        guard case .object(let members) = value else {
            throw failure("entry is \(value.kindName), not an object with dtype, shape and data_offsets", .malformedEntry)
        }
        var fields: [String: JSONNode] = [:]
        for member in members {
            let (key, field) = (member.key, member.value)
            guard fields.updateValue(field, forKey: key) == nil else {
                throw failure("field '\(key)' appears twice", .malformedEntry)
            }
        }

        guard let dtypeValue = fields["dtype"] else { throw failure("missing 'dtype'", .malformedEntry) }
        guard case .string(let dtypeText) = dtypeValue else {
            throw failure("'dtype' is \(dtypeValue.kindName), not a string", .malformedEntry)
        }
        guard let dtype = SafeTensorsDType(rawValue: dtypeText) else {
            let known = SafeTensorsDType.allCases.map(\.rawValue).joined(separator: ", ")
            throw failure("unknown dtype '\(dtypeText)' (known: \(known))", .unknownDType)
        }

        guard let shapeValue = fields["shape"] else { throw failure("missing 'shape'", .malformedEntry) }
        guard case .array(let shapeElements) = shapeValue else {
            throw failure("'shape' is \(shapeValue.kindName), not an array of integers", .malformedEntry)
        }
        var shape: [Int] = []
        shape.reserveCapacity(shapeElements.count)
        for (axis, element) in shapeElements.enumerated() {
            guard case .integer(let dimension) = element else {
                throw failure("'shape' element \(axis) must be an integer, found \(element.kindName)", .malformedEntry)
            }
            guard dimension >= 0 else {
                throw failure("'shape' has negative dimension \(dimension) at index \(axis)", .invalidShape)
            }
            shape.append(dimension)
        }
        guard let byteCount = checkedByteCount(shape: shape, byteSize: dtype.byteSize) else {
            throw failure("shape \(shape) of \(dtype.rawValue) overflows the addressable size", .invalidShape)
        }

        guard let offsetsValue = fields["data_offsets"] else { throw failure("missing 'data_offsets'", .malformedEntry) }
        guard case .array(let offsetElements) = offsetsValue, offsetElements.count == 2 else {
            throw failure("'data_offsets' must be an array of two integers [begin, end]", .malformedEntry)
        }
        guard case .integer(let begin) = offsetElements[0], case .integer(let end) = offsetElements[1] else {
            throw failure("'data_offsets' must be an array of two integers [begin, end]", .malformedEntry)
        }
        guard begin >= 0, end >= 0 else {
            throw failure("data_offsets [\(begin), \(end)] are negative", .invalidOffsets)
        }
        guard begin <= end else {
            throw failure("data_offsets [\(begin), \(end)] begin after they end", .invalidOffsets)
        }
        guard end <= dataSectionSize else {
            throw failure(
                "data_offsets [\(begin), \(end)] run past the data section (\(dataSectionSize) bytes)", .outOfBounds)
        }
        guard end - begin == byteCount else {
            throw failure(
                "data_offsets [\(begin), \(end)] span \(end - begin) bytes but \(dtype.rawValue) \(shape) needs "
                    + "\(byteCount)",
                .sizeMismatch)
        }
        return TensorInfo(name: name, dtype: dtype, shape: shape, dataOffsets: begin..<end)
    }
}
