import Foundation
import StrictJSON
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A whole file mapped read-only; unmapped when the last owner goes away.
// @unchecked: holds a read-only memory map (a raw pointer, not Sendable) that no Swift code mutates after init.
final class ReadOnlyMapping: @unchecked Sendable {
    let base: UnsafeRawPointer
    let length: Int

    /// Maps `path` (PROT_READ, MAP_PRIVATE). Files shorter than 8 bytes are rejected before mapping.
    init(path: String) throws {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else {
            throw SafeTensorsError(path: path, message: "cannot open: \(String(cString: strerror(errno)))", kind: .io)
        }
        defer { close(descriptor) }
        var status = stat()
        guard fstat(descriptor, &status) == 0 else {
            throw SafeTensorsError(path: path, message: "cannot stat: \(String(cString: strerror(errno)))", kind: .io)
        }
        guard (status.st_mode & S_IFMT) == S_IFREG else {
            throw SafeTensorsError(path: path, message: "not a regular file", kind: .io)
        }
        let size = Int(status.st_size)
        guard size >= 8 else {
            throw SafeTensorsError(
                path: path, message: "file is \(size) bytes, shorter than the 8-byte header length", kind: .fileTooShort)
        }
        guard let mapped = mmap(nil, size, PROT_READ, MAP_PRIVATE, descriptor, 0),
              mapped != UnsafeMutableRawPointer(bitPattern: -1) else {
            throw SafeTensorsError(path: path, message: "cannot mmap: \(String(cString: strerror(errno)))", kind: .io)
        }
        base = UnsafeRawPointer(mapped)
        length = size
    }

    deinit {
        munmap(UnsafeMutableRawPointer(mutating: base), length)
    }
}

/// A read-only, memory-mapped safetensors file whose header has been fully validated at init.
///
/// Reading is lenient about gaps between tensors (other writers may leave them) but strict about
/// anything that would make a read wrong: out-of-range or overlapping offsets, sizes that disagree with
/// shapes. ``validateTiling()`` adds the exact-tiling rule that files we write obey.
// @unchecked: holds a read-only memory map (a raw pointer, not Sendable) that no Swift code mutates after init.
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

    private let mapping: ReadOnlyMapping
    private let infoByName: [String: TensorInfo]

    /// Byte offset of the data section in the file: `8 + N`.
    public var dataSectionOffset: Int { 8 + headerLength }
    /// Bytes in the data section.
    public var dataSectionSize: Int { fileSize - dataSectionOffset }

    /// Maps the whole file and validates its header; throws a ``SafeTensorsError`` naming the file (and
    /// tensor) at fault.
    public init(path: String) throws {
        let mapping = try ReadOnlyMapping(path: path)
        let fileSize = mapping.length
        let headerLength = try Self.readHeaderLength(base: mapping.base, fileSize: fileSize, path: path)
        let header = UnsafeRawBufferPointer(start: mapping.base + 8, count: headerLength)
        let parsed = try HeaderParser(path: path, dataSectionSize: fileSize - 8 - headerLength).parse(header)

        self.path = path
        self.mapping = mapping
        self.fileSize = fileSize
        self.headerLength = headerLength
        self.metadata = parsed.metadata
        self.tensors = parsed.tensors
        self.tensorNames = parsed.tensors.map(\.name)
        self.infoByName = Dictionary(uniqueKeysWithValues: parsed.tensors.map { ($0.name, $0) })
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

    /// Calls `body` with the tensor's bytes inside the mapping (no copy). The buffer must not escape `body`.
    public func withBytes<R>(_ name: String, _ body: (UnsafeRawBufferPointer) throws -> R) throws -> R {
        let info = try info(name)
        return try body(bytes(of: info))
    }

    /// The tensor's bytes, copied.
    public func data(_ name: String) throws -> Data {
        let info = try info(name)
        return Data(bytes(of: info))
    }

    /// The tensor widened exactly to `Float`: BF16, F16 and F32 only; other dtypes are an error.
    public func floats(_ name: String) throws -> [Float] {
        let info = try info(name)
        let source = bytes(of: info)
        switch info.dtype {
        case .f32: return FloatWidening.copyFloat32(source)
        case .bf16: return FloatWidening.widenBFloat16(source)
        case .f16: return FloatWidening.widenFloat16(source)
        default:
            throw SafeTensorsError(
                path: path, tensor: name, message: "floats() needs BF16, F16 or F32, not \(info.dtype.rawValue)",
                kind: .unsupportedDType)
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
        let source = bytes(of: info)
        let count = info.elementCount
        return [Int64](unsafeUninitializedCapacity: count) { buffer, initialized in
            if count > 0 { memcpy(buffer.baseAddress!, source.baseAddress!, count * 8) }
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

    /// Tells the kernel the tensor's pages are not needed any more, so a streaming pass over a model larger
    /// than memory keeps its resident set small. The data stays readable; touching it again faults it back in.
    public func releasePages(_ name: String) throws {
        let info = try info(name)
        let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
        let start = Int(bitPattern: mapping.base) + dataSectionOffset + info.dataOffsets.lowerBound
        let end = start + info.dataOffsets.count
        // Only whole pages inside the tensor; neighbours sharing a boundary page keep theirs.
        let alignedStart = (start + pageSize - 1) / pageSize * pageSize
        let alignedEnd = end / pageSize * pageSize
        guard alignedEnd > alignedStart else { return }
        _ = madvise(UnsafeMutableRawPointer(bitPattern: alignedStart), alignedEnd - alignedStart, MADV_DONTNEED)
    }

    private func bytes(of info: TensorInfo) -> UnsafeRawBufferPointer {
        UnsafeRawBufferPointer(
            start: mapping.base + dataSectionOffset + info.dataOffsets.lowerBound, count: info.dataOffsets.count)
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
