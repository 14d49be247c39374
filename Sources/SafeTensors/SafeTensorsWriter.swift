import Foundation
import StrictJSON
#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// One tensor of a writer's plan: enough to place it in the header before any data exists.
public struct PlannedTensor: Sendable, Equatable {
    public let name: String
    public let dtype: SafeTensorsDType
    public let shape: [Int]

    public init(name: String, dtype: SafeTensorsDType, shape: [Int]) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
    }

    /// Product of the shape (1 for 0-d) times the dtype size. Plans are validated before this is used.
    public var byteCount: Int { shape.reduce(1, *) * dtype.byteSize }
}

/// Streams one safetensors file: the header, planned from shapes, is written at init; then each tensor's
/// bytes in plan order, so no more than a small buffer of the file is ever held in memory.
///
/// A tensor is given whole with `write`, or in chunks with `append`. Every misuse (wrong name, wrong byte
/// count, missing tensors at `finish`) throws a ``SafeTensorsError`` naming the file and tensor and writes
/// nothing. The file is complete only after ``finish()`` returns.
public final class SafeTensorsWriter {
    public let path: String
    public let tensors: [PlannedTensor]
    /// Byte counts of `tensors`, computed once.
    private let byteCounts: [Int]
    private let indexByName: [String: Int]

    private var descriptor: Int32
    /// Index in `tensors` of the tensor being written (or next to be written).
    private var current = 0
    /// Bytes of `tensors[current]` written so far.
    private var writtenOfCurrent = 0
    private var closedReason: String?

    /// Small writes (scalars, norms) gather here so they cost one syscall together.
    private var buffer: [UInt8] = []
    private static let bufferCapacity = 1 << 20

    /// Creates/truncates `path`, writes the 8-byte length + compact JSON header (padded with spaces to a
    /// multiple of 8, `__metadata__` first), with data offsets assigned in the order of `tensors`.
    public init(path: String, tensors: [PlannedTensor], metadata: [String: String] = ["format": "pt"]) throws {
        let header = try Self.encodeHeader(tensors: tensors, metadata: metadata, path: path)
        self.path = path
        self.tensors = tensors
        self.byteCounts = tensors.map(\.byteCount)
        self.indexByName = Dictionary(uniqueKeysWithValues: tensors.enumerated().map { ($1.name, $0) })
        let descriptor = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else {
            throw SafeTensorsError(
                path: path, message: "cannot create: \(String(cString: strerror(errno)))", kind: .io)
        }
        self.descriptor = descriptor
        buffer.reserveCapacity(Self.bufferCapacity)
        try header.withUnsafeBytes { try bufferedWrite($0) }
    }

    deinit {
        // An unfinished writer leaves an incomplete file behind; callers write to a temporary path.
        if descriptor >= 0 { close(descriptor) }
    }

    /// Writes all of the next planned tensor's bytes; `name` must be that tensor and the count must match.
    public func write(_ name: String, bytes: UnsafeRawBufferPointer) throws {
        try checkOpen(name)
        try checkNext(name)
        if writtenOfCurrent != 0 {
            throw failure(
                name, "is partly written (\(writtenOfCurrent) of \(byteCounts[current]) bytes); continue it with append",
                .writeOrder)
        }
        guard bytes.count == byteCounts[current] else {
            throw failure(
                name, "got \(bytes.count) bytes but \(describe(tensors[current])) needs \(byteCounts[current])",
                .sizeMismatch)
        }
        try bufferedWrite(bytes)
        advance()
    }

    public func write(_ name: String, data: Data) throws {
        try data.withUnsafeBytes { try write(name, bytes: $0) }
    }

    /// Writes a chunk of the next planned tensor's bytes; chunks of one tensor must add up to exactly its
    /// byte count before the next tensor starts.
    public func append(_ name: String, bytes: UnsafeRawBufferPointer) throws {
        try checkOpen(name)
        try checkNext(name)
        let remaining = byteCounts[current] - writtenOfCurrent
        guard bytes.count <= remaining else {
            throw failure(
                name, "chunk of \(bytes.count) bytes overruns \(describe(tensors[current])): only \(remaining) of "
                    + "\(byteCounts[current]) bytes remain",
                .sizeMismatch)
        }
        try bufferedWrite(bytes)
        writtenOfCurrent += bytes.count
        if writtenOfCurrent == byteCounts[current] { advance() }
    }

    public func append(_ name: String, data: Data) throws {
        try data.withUnsafeBytes { try append(name, bytes: $0) }
    }

    /// Checks every planned tensor was written, then flushes, fsyncs and closes the file.
    public func finish() throws {
        try checkOpen(nil)
        if current < tensors.count {
            let missing = tensors.count - current
            throw failure(
                tensors[current].name,
                "not written (\(writtenOfCurrent) of \(byteCounts[current]) bytes); \(missing) of \(tensors.count) "
                    + "planned tensors are incomplete",
                .incomplete)
        }
        try flush()
        if fsync(descriptor) != 0 {
            let reason = String(cString: strerror(errno))
            closeAfterFailure(reason)
            throw SafeTensorsError(path: path, message: "fsync failed: \(reason)", kind: .io)
        }
        let result = close(descriptor)
        descriptor = -1
        closedReason = "finish() was already called"
        if result != 0 {
            throw SafeTensorsError(path: path, message: "close failed: \(String(cString: strerror(errno)))", kind: .io)
        }
    }

    /// The header bytes (length prefix included) a writer with this plan writes first.
    public static func headerData(tensors: [PlannedTensor], metadata: [String: String]) throws -> Data {
        Data(try encodeHeader(tensors: tensors, metadata: metadata, path: "(safetensors header)"))
    }

    /// The size of the file a writer with this plan produces.
    public static func fileSize(tensors: [PlannedTensor], metadata: [String: String]) throws -> Int {
        let header = try encodeHeader(tensors: tensors, metadata: metadata, path: "(safetensors header)")
        return header.count + tensors.reduce(0) { $0 + $1.byteCount }
    }

    // MARK: - Header

    /// Validates the plan and encodes `8-byte length + JSON + space padding`.
    static func encodeHeader(tensors: [PlannedTensor], metadata: [String: String], path: String) throws -> [UInt8] {
        var names = Set<String>()
        var offset = 0
        var json: [UInt8] = []
        json.reserveCapacity(64 + tensors.count * 96)
        json.append(UInt8(ascii: "{"))
        if !metadata.isEmpty {
            json.append(contentsOf: Array(#""__metadata__":{"#.utf8))
            for (position, key) in metadata.keys.sorted().enumerated() {
                if position > 0 { json.append(UInt8(ascii: ",")) }
                appendJSONString(key, to: &json)
                json.append(UInt8(ascii: ":"))
                appendJSONString(metadata[key]!, to: &json)
            }
            json.append(UInt8(ascii: "}"))
        }
        for tensor in tensors {
            func failure(_ message: String, _ kind: SafeTensorsError.Kind) -> SafeTensorsError {
                SafeTensorsError(path: path, tensor: tensor.name, message: message, kind: kind)
            }
            guard tensor.name != "__metadata__" else {
                throw failure("'__metadata__' is reserved and cannot name a tensor", .invalidPlan)
            }
            guard names.insert(tensor.name).inserted else {
                throw failure("planned twice", .duplicateName)
            }
            if let axis = tensor.shape.firstIndex(where: { $0 < 0 }) {
                throw failure("shape \(tensor.shape) has negative dimension at index \(axis)", .invalidShape)
            }
            guard let byteCount = checkedByteCount(shape: tensor.shape, byteSize: tensor.dtype.byteSize),
                  case (let end, false) = offset.addingReportingOverflow(byteCount) else {
                throw failure("shape \(tensor.shape) of \(tensor.dtype.rawValue) overflows the addressable size",
                              .invalidShape)
            }
            if json.count > 1 { json.append(UInt8(ascii: ",")) }
            appendJSONString(tensor.name, to: &json)
            json.append(contentsOf: Array(#":{"dtype":""#.utf8))
            json.append(contentsOf: Array(tensor.dtype.rawValue.utf8))
            json.append(contentsOf: Array(#"","shape":["#.utf8))
            json.append(contentsOf: Array(tensor.shape.map(String.init).joined(separator: ",").utf8))
            json.append(contentsOf: Array(#"],"data_offsets":["#.utf8))
            json.append(contentsOf: Array("\(offset),\(end)".utf8))
            json.append(contentsOf: Array("]}".utf8))
            offset = end
        }
        json.append(UInt8(ascii: "}"))
        // Pad so the data section starts 8-aligned (8 + N is a multiple of 8).
        let padded = (json.count + 7) / 8 * 8
        json.append(contentsOf: repeatElement(UInt8(ascii: " "), count: padded - json.count))
        guard json.count <= maximumHeaderLength else {
            throw SafeTensorsError(
                path: path,
                message: "header would be \(json.count) bytes, over the \(maximumHeaderLength)-byte limit readers accept",
                kind: .invalidPlan)
        }
        var header: [UInt8] = []
        header.reserveCapacity(8 + json.count)
        withUnsafeBytes(of: UInt64(json.count).littleEndian) { header.append(contentsOf: $0) }
        header.append(contentsOf: json)
        return header
    }

    // MARK: - State and I/O

    private func describe(_ tensor: PlannedTensor) -> String {
        "\(tensor.dtype.rawValue) \(tensor.shape)"
    }

    private func failure(_ name: String?, _ message: String, _ kind: SafeTensorsError.Kind) -> SafeTensorsError {
        SafeTensorsError(path: path, tensor: name, message: message, kind: kind)
    }

    private func checkOpen(_ name: String?) throws {
        if let closedReason {
            throw failure(name, "writer is closed: \(closedReason)", .writerClosed)
        }
    }

    /// `name` must be the tensor in progress, or the next one in the plan.
    private func checkNext(_ name: String) throws {
        guard current < tensors.count else {
            throw failure(name, "every planned tensor has already been written", .writeOrder)
        }
        let expected = tensors[current].name
        guard name != expected else { return }
        if writtenOfCurrent > 0 {
            throw failure(
                expected,
                "is partly written (\(writtenOfCurrent) of \(byteCounts[current]) bytes) but '\(name)' was given next",
                .writeOrder)
        }
        guard let index = indexByName[name] else {
            throw failure(name, "not in the plan (expected '\(expected)' next)", .writeOrder)
        }
        if index < current {
            throw failure(name, "already written (expected '\(expected)' next)", .writeOrder)
        }
        throw failure(name, "out of plan order: expected '\(expected)' next", .writeOrder)
    }

    private func advance() {
        current += 1
        writtenOfCurrent = 0
    }

    private func bufferedWrite(_ bytes: UnsafeRawBufferPointer) throws {
        if bytes.count <= Self.bufferCapacity - buffer.count {
            buffer.append(contentsOf: bytes)
            return
        }
        try flush()
        if bytes.count >= Self.bufferCapacity {
            try writeFully(bytes)
        } else {
            buffer.append(contentsOf: bytes)
        }
    }

    private func flush() throws {
        guard !buffer.isEmpty else { return }
        try buffer.withUnsafeBytes { try writeFully($0) }
        buffer.removeAll(keepingCapacity: true)
    }

    private func writeFully(_ bytes: UnsafeRawBufferPointer) throws {
        guard var next = bytes.baseAddress else { return }
        var remaining = bytes.count
        while remaining > 0 {
            // Linux writes at most ~2 GiB per call; ask for no more than 1 GiB at a time.
            let result = systemWrite(descriptor, next, min(remaining, 1 << 30))
            if result < 0 {
                if errno == EINTR { continue }
                let reason = String(cString: strerror(errno))
                closeAfterFailure(reason)
                throw SafeTensorsError(path: path, message: "write failed: \(reason)", kind: .io)
            }
            next += result
            remaining -= result
        }
    }

    private func closeAfterFailure(_ reason: String) {
        if descriptor >= 0 { close(descriptor) }
        descriptor = -1
        closedReason = "an earlier I/O failure (\(reason))"
    }
}

@inline(__always)
private func systemWrite(_ descriptor: Int32, _ bytes: UnsafeRawPointer, _ count: Int) -> Int {
    write(descriptor, bytes, count)
}
