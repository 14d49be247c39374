/// # SafeTensors
///
/// Reading and writing the Hugging Face safetensors format: an 8-byte little-endian header length `N`,
/// `N` bytes of UTF-8 JSON describing each tensor (`dtype`, `shape`, `data_offsets` relative to the data
/// section), then the raw little-endian row-major tensor bytes.
///
/// - ``SafeTensorsFile`` opens one file read-only and validates its whole header at init; each later access reads
///   the tensor's bytes with `pread`, after checking that the file has not changed since it was opened, so a model
///   truncated or rewritten under a running job is a ``SafeTensorsError`` naming the file, never a SIGBUS.
/// - ``SafeTensorsModel`` opens a model directory: one `model.safetensors`, or shards listed by
///   `model.safetensors.index.json`.
/// - ``SafeTensorsWriter`` streams a file: the header is planned from shapes and written first, then each
///   tensor's bytes in plan order, so a whole checkpoint never has to sit in memory.
///
/// Every failure is a ``SafeTensorsError`` naming the file and, where relevant, the tensor at fault.
/// The module assumes a little-endian host, as every platform Swift supports today is.
import Foundation

#if !_endian(little)
#error("SafeTensors reads and writes little-endian bytes directly and needs a little-endian host")
#endif

/// The element types this project reads and writes, spelled as in the safetensors header.
public enum SafeTensorsDType: String, Sendable, CaseIterable, Codable {
    case bf16 = "BF16"
    case f16 = "F16"
    case f32 = "F32"
    /// torch `float8_e4m3fn`.
    case f8e4m3 = "F8_E4M3"
    case u8 = "U8"
    case i64 = "I64"
    case i32 = "I32"
    case bool = "BOOL"

    /// Bytes per element.
    public var byteSize: Int {
        switch self {
        case .u8, .bool, .f8e4m3: return 1
        case .bf16, .f16: return 2
        case .f32, .i32: return 4
        case .i64: return 8
        }
    }
}

/// One tensor's header entry.
public struct TensorInfo: Sendable, Equatable {
    public let name: String
    public let dtype: SafeTensorsDType
    public let shape: [Int]
    /// Byte range relative to the start of the data section, as in the header.
    public let dataOffsets: Range<Int>

    public init(name: String, dtype: SafeTensorsDType, shape: [Int], dataOffsets: Range<Int>) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.dataOffsets = dataOffsets
    }

    /// Product of the shape; 1 for a 0-d tensor.
    public var elementCount: Int { shape.reduce(1, *) }

    public var byteCount: Int { elementCount * dtype.byteSize }
}

/// A failure reading or writing safetensors data, naming the file and (where relevant) the tensor at fault.
public struct SafeTensorsError: Error, CustomStringConvertible, Equatable {
    /// What went wrong, so callers and tests can tell failures apart without parsing messages.
    public enum Kind: String, Sendable, Equatable {
        /// Opening, mapping, reading or writing the file failed at the OS level.
        case io
        /// The file changed on disk while in use (its size, modification time or inode differs from when it was
        /// opened, or it ends early): a job must not mix two versions of a model.
        case changedOnDisk
        /// The file is shorter than the 8-byte header length.
        case fileTooShort
        /// The header length runs past the end of the file or is absurdly large.
        case headerLength
        /// The header is not valid UTF-8.
        case headerEncoding
        /// The header is not a JSON object.
        case headerJSON
        /// `__metadata__` is not an object of strings.
        case metadata
        /// A tensor name appears twice (in a header or in a writer's plan).
        case duplicateName
        /// A tensor entry is not an object, or lacks or mistypes `dtype`, `shape` or `data_offsets`.
        case malformedEntry
        /// The dtype string is not one of ``SafeTensorsDType``.
        case unknownDType
        /// A negative dimension, or a shape whose size overflows.
        case invalidShape
        /// `data_offsets` is negative or has begin > end.
        case invalidOffsets
        /// `data_offsets` ends past the data section.
        case outOfBounds
        /// Two tensors' bytes overlap.
        case overlap
        /// A byte count differs from `elementCount * byteSize`.
        case sizeMismatch
        /// The tensors do not tile the data section exactly (``SafeTensorsFile/validateTiling()``).
        case tiling
        /// No tensor of that name.
        case unknownTensor
        /// The operation does not support the tensor's dtype.
        case unsupportedDType
        /// `model.safetensors.index.json` is malformed.
        case index
        /// The index names a shard file that does not exist.
        case missingShard
        /// The index maps a tensor to a shard that does not contain it.
        case shardMissingTensor
        /// A directory has neither `model.safetensors` nor `model.safetensors.index.json`.
        case noModel
        /// A writer's plan is invalid (reserved name, header too large).
        case invalidPlan
        /// A writer received a tensor out of plan order.
        case writeOrder
        /// A writer finished before every planned tensor was written.
        case incomplete
        /// A writer was used after `finish()` or after an I/O failure.
        case writerClosed
        /// Raised by code outside this module that reports a safetensors problem of its own.
        case other
    }

    /// The file at fault.
    public let path: String
    /// The tensor at fault, if any.
    public let tensor: String?
    public let message: String
    public let kind: Kind

    public init(path: String, tensor: String? = nil, message: String, kind: Kind = .other) {
        self.path = path
        self.tensor = tensor
        self.message = message
        self.kind = kind
    }

    public var description: String {
        if let tensor {
            return "\(path): tensor '\(tensor)': \(message)"
        }
        return "\(path): \(message)"
    }
}

/// The largest header accepted, as in the reference implementation.
let maximumHeaderLength = 100_000_000

/// Product of `shape` times `byteSize`, or nil if a dimension is negative or the product overflows.
func checkedByteCount(shape: [Int], byteSize: Int) -> Int? {
    var count = byteSize
    for dimension in shape {
        guard dimension >= 0 else { return nil }
        let (product, overflow) = count.multipliedReportingOverflow(by: dimension)
        if overflow { return nil }
        count = product
    }
    return count
}
