import Foundation
import NVFP4
import SafeTensors

/// One tensor of the output checkpoint, ready to be written, with the SHA-256 of its bytes when it crosses a network
/// and must be checked on arrival (none when it is handed over in process).
public struct ExportedTensor: Codable, Sendable, Equatable {
    public var name: String
    public var dtype: SafeTensorsDType
    public var shape: [Int]
    public var data: Data
    /// Lower-case hex SHA-256 of `data`; nil for a tensor that never left the process that made it.
    public var sha256: String?

    /// Hashes `data`.
    public init(name: String, dtype: SafeTensorsDType, shape: [Int], data: Data) {
        self.init(name: name, dtype: dtype, shape: shape, data: data, sha256: SHA256Hasher.hexDigest(of: data))
    }

    public init(name: String, dtype: SafeTensorsDType, shape: [Int], data: Data, sha256: String?) {
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.data = data
        self.sha256 = sha256
    }
}

/// `transform` of every item on all cores, in order; rethrows the first item's error.
package func concurrentMap<Item, Output>(_ items: [Item], _ transform: (Item) throws -> Output) throws -> [Output] {
    var results = [Result<Output, any Error>?](repeating: nil, count: items.count)
    withoutActuallyEscaping(transform) { transform in
        results.withUnsafeMutableBufferPointer { buffer in
            let slots = UncheckedSendable(buffer)
            let work = UncheckedSendable(transform)
            let inputs = UncheckedSendable(items)
            DispatchQueue.concurrentPerform(iterations: items.count) { index in
                slots.value[index] = Result { try work.value(inputs.value[index]) }
            }
        }
    }
    return try results.map { try $0!.get() }
}
