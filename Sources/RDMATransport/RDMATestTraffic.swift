import Foundation
import Transport

/// The traffic of `coordctl doctor rdma`'s tests, loopback and peer alike: `latencyRounds` tensors of 64 bytes, each
/// sent only after the previous one was acknowledged (the round trip), then `tensorCount` tensors of `tensorBytes`
/// streamed (the bandwidth). Every tensor is a fixed pattern whose first 8 bytes are its id (little-endian), so a
/// tensor delivered in another's place fails the check as surely as a flipped byte.
public struct RDMATestTraffic: Sendable, Equatable, Codable {
    public static let latencyTensorBytes = 64

    public var tensorBytes: Int
    public var tensorCount: Int
    public var latencyRounds: Int

    public init(tensorBytes: Int, tensorCount: Int, latencyRounds: Int) {
        self.tensorBytes = tensorBytes
        self.tensorCount = tensorCount
        self.latencyRounds = latencyRounds
    }

    public var totalTensors: Int { latencyRounds + tensorCount }
    public var totalBytes: Int { latencyRounds * Self.latencyTensorBytes + tensorCount * tensorBytes }

    /// How many bytes tensor `id` has, or nil when the traffic has no such tensor.
    public func expectedBytes(of id: UInt64) -> Int? {
        guard id < UInt64(totalTensors) else { return nil }
        return id < UInt64(latencyRounds) ? Self.latencyTensorBytes : tensorBytes
    }

    /// The content of tensor `tensor`: a multiplicative hash of the offset, then the id over the first 8 bytes.
    public static func pattern(_ count: Int, tensor: UInt64) -> Data {
        var data = base(count)
        stamp(&data, tensor: tensor)
        return data
    }

    static func base(_ count: Int) -> Data {
        Data((0..<count).map { UInt8(truncatingIfNeeded: ($0 &* 2_654_435_761) >> 13) })
    }

    /// Writes the id over the first bytes in place, so one buffer serves every tensor of a size.
    static func stamp(_ data: inout Data, tensor: UInt64) {
        let id = withUnsafeBytes(of: tensor.littleEndian) { Array($0) }
        let count = min(8, data.count)
        data.replaceSubrange(data.startIndex..<data.startIndex + count, with: id[0..<count])
    }

    /// Why the traffic did not pass.
    public enum Mismatch: Error, CustomStringConvertible, Equatable, Sendable {
        case unexpectedTensor(id: UInt64)
        case wrongLength(tensor: UInt64, bytes: Int, expected: Int)
        case tooLong(tensor: UInt64, expected: Int)
        case wrongByte(tensor: UInt64, offset: Int)
        case notAcknowledged(tensor: UInt64, reason: String)

        public var description: String {
            switch self {
            case let .unexpectedTensor(id): return "tensor \(id) is not part of the test"
            case let .wrongLength(tensor, bytes, expected): return "tensor \(tensor) arrived with \(bytes) bytes, expected \(expected)"
            case let .tooLong(tensor, expected): return "tensor \(tensor) arrived with more than the \(expected) bytes expected"
            case let .wrongByte(tensor, offset): return "tensor \(tensor) differs from the test pattern at byte \(offset)"
            case let .notAcknowledged(tensor, reason): return "tensor \(tensor) was not acknowledged: \(reason)"
            }
        }
    }

    /// What the receiving side saw.
    public struct Checked: Sendable, Equatable {
        public var tensors = 0
        public var bytes = 0
    }

    /// Receiver: checks every byte of each tensor against its pattern and acknowledges it, until the sender closes.
    /// `checked` hears the running totals, so a caller that stops this early still knows what passed.
    public func check<T: ActivationTransport>(_ receiver: T, checked: @Sendable (Checked) -> Void = { _ in }) async throws -> Checked {
        var totals = Checked()
        var bases: [Int: Data] = [:]
        for try await tensor in receiver.incomingTensors {
            guard let expected = expectedBytes(of: tensor.id) else { throw Mismatch.unexpectedTensor(id: tensor.id) }
            let bytes: Data
            do {
                bytes = try await tensor.chunks.collectData(maxBytes: expected)
            } catch TransportError.bulkTransferFailed {
                throw Mismatch.tooLong(tensor: tensor.id, expected: expected)
            }
            guard bytes.count == expected else {
                throw Mismatch.wrongLength(tensor: tensor.id, bytes: bytes.count, expected: expected)
            }
            var want = bases[expected] ?? Self.base(expected)
            bases[expected] = want
            Self.stamp(&want, tensor: tensor.id)
            if bytes != want {
                let offset = zip(bytes, want).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? 0
                throw Mismatch.wrongByte(tensor: tensor.id, offset: offset)
            }
            try await receiver.acknowledge(id: tensor.id, byteCount: bytes.count)
            totals.tensors += 1
            totals.bytes += bytes.count
            checked(totals)
        }
        return totals
    }

    /// What the sending side measured.
    public struct Measurement: Sendable, Equatable {
        public var bytesMoved: Int
        public var seconds: Double
        /// Median time of a 64-byte tensor and its acknowledgement.
        public var roundTripMicroseconds: Double
    }

    /// Sender: the latency rounds, then the stream, waiting for every acknowledgement (the receiver acknowledges a
    /// tensor only after checking it, so the time includes the check).
    public func send(over sender: RDMAActivationTransport) async throws -> Measurement {
        guard tensorBytes > 0, tensorCount > 0, latencyRounds > 0 else {
            throw Mismatch.notAcknowledged(tensor: 0, reason: "the test needs at least one tensor of one byte and one round trip")
        }
        var acknowledgements = sender.acknowledgements().makeAsyncIterator()
        func acknowledged(_ id: UInt64, bytes: Int) async throws {
            guard let ack = try await acknowledgements.next() else {
                throw Mismatch.notAcknowledged(tensor: id, reason: "the receiver closed the link")
            }
            guard ack.id == id, ack.byteCount == bytes else {
                throw Mismatch.notAcknowledged(tensor: id, reason: "got the acknowledgement of tensor \(ack.id) for \(ack.byteCount) bytes")
            }
        }
        var roundTrips: [Duration] = []
        let clock = ContinuousClock()
        for round in 0..<latencyRounds {
            let id = UInt64(round)
            let start = clock.now
            try await sender.sendTensor(id: id, data: Self.pattern(Self.latencyTensorBytes, tensor: id))
            try await acknowledged(id, bytes: Self.latencyTensorBytes)
            roundTrips.append(clock.now - start)
        }
        // One buffer, its id stamped before each send (sendTensor has copied it out when it returns): the figure
        // is the link's, not the pattern's.
        var data = Self.base(tensorBytes)
        let ids = (0..<tensorCount).map { UInt64(latencyRounds + $0) }
        let start = clock.now
        for id in ids {
            Self.stamp(&data, tensor: id)
            try await sender.sendTensor(id: id, data: data)
        }
        for id in ids { try await acknowledged(id, bytes: tensorBytes) }
        let elapsed = clock.now - start
        let median = roundTrips.sorted()[roundTrips.count / 2]
        return Measurement(bytesMoved: tensorBytes * tensorCount, seconds: Self.seconds(elapsed),
                           roundTripMicroseconds: Self.seconds(median) * 1e6)
    }

    static func seconds(_ duration: Duration) -> Double {
        Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    }
}
