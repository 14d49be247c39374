import Foundation
import Logging
import NIOCore

/// `coordctl doctor rdma`'s loopback: two queue pairs on one device, connected to each other through the port, the
/// same ``RDMAActivationTransport`` workers use. It measures the time of one small tensor there and back (latency)
/// and of a stream of large tensors (bandwidth), and checks every byte that arrived.
public struct RDMALoopbackTest: Sendable {
    public var tensorBytes: Int
    public var tensorCount: Int
    public var latencyRounds: Int
    public var ring: RDMARingParameters

    public init(tensorBytes: Int = 64 << 20, tensorCount: Int = 16, latencyRounds: Int = 100, ring: RDMARingParameters = .standard) {
        self.tensorBytes = tensorBytes
        self.tensorCount = tensorCount
        self.latencyRounds = latencyRounds
        self.ring = ring
    }

    public struct Result: Sendable, Equatable {
        public var device: String
        public var port: Int
        public var bytesMoved: Int
        public var seconds: Double
        /// Median time of a 64-byte tensor from one queue pair to the other and its acknowledgement back.
        public var roundTripMicroseconds: Double
        /// The port's line rate, when the port reports it.
        public var lineRateGigabitsPerSecond: Double?

        public var gigabitsPerSecond: Double { seconds > 0 ? Double(bytesMoved) * 8 / seconds / 1e9 : 0 }

        public var text: String {
            var line = String(format: "loopback RDMA WRITE on %@ port %d: %.1f Gb/s (%d MiB in %.3f s), round trip %.1f µs",
                              device, port, gigabitsPerSecond, bytesMoved >> 20, seconds, roundTripMicroseconds)
            if let rate = lineRateGigabitsPerSecond, rate > 0 {
                line += String(format: "; %.0f%% of the port's %.0f Gb/s line rate", gigabitsPerSecond / rate * 100, rate)
            }
            return line
        }
    }

    /// Why the loopback failed, naming the device.
    public enum Failure: Error, CustomStringConvertible, Equatable, Sendable {
        case link(RDMALinkError)
        case corrupted(device: String, tensor: UInt64, reason: String)
        case stopped(device: String, reason: String)

        public var description: String {
            switch self {
            case let .link(error): return "loopback failed: \(error)"
            case let .corrupted(device, tensor, reason): return "loopback on \(device): tensor \(tensor) arrived wrong: \(reason)"
            case let .stopped(device, reason): return "loopback on \(device) stopped: \(reason)"
            }
        }
    }

    public func run(device: any VerbsDataPlaneDevice, endpoint: RDMALinkEndpoint, lineRateGigabitsPerSecond: Double?,
                    logger: Logger) async throws(Failure) -> Result {
        guard tensorBytes > 0, tensorCount > 0, latencyRounds > 0 else {
            throw .stopped(device: device.name, reason: "the test needs at least one tensor of one byte and one round trip")
        }
        let sender: RDMAActivationTransport
        let receiver: RDMAActivationTransport
        do throws(RDMALinkError) {
            sender = try RDMAActivationTransport(device: device, endpoint: endpoint, peerName: "loopback receiver", ring: ring,
                                                 logger: logger)
            do throws(RDMALinkError) {
                receiver = try RDMAActivationTransport(device: device, endpoint: endpoint, peerName: "loopback sender",
                                                       ring: ring, logger: logger)
            } catch {
                await sender.close()
                throw error
            }
        } catch {
            throw .link(error)
        }
        do {
            try sender.connect(to: receiver.localInfo)
            try receiver.connect(to: sender.localInfo)
            let result = try await measure(sender: sender, receiver: receiver, device: device.name, port: endpoint.port,
                                           lineRate: lineRateGigabitsPerSecond)
            await sender.close()
            await receiver.close()
            return result
        } catch {
            await sender.close()
            await receiver.close()
            if let error = error as? Failure { throw error }
            if let error = error as? RDMALinkError { throw .link(error) }
            throw .stopped(device: device.name, reason: "\(error)")
        }
    }

    private func measure(sender: RDMAActivationTransport, receiver: RDMAActivationTransport, device: String, port: Int,
                         lineRate: Double?) async throws -> Result {
        // The receiver checks each tensor against the pattern and acknowledges it, which is also the latency echo.
        let expected = Self.pattern(tensorBytes)
        let small = Self.pattern(64)
        let echo = Task {
            for try await tensor in receiver.incomingTensors {
                let bytes = try await tensor.chunks.collectData()
                let want = tensor.id < UInt64(latencyRounds) ? small : expected
                guard bytes == want else {
                    throw Failure.corrupted(device: device, tensor: tensor.id,
                                            reason: "\(bytes.count) bytes, expected \(want.count) of the test pattern")
                }
                try await receiver.acknowledge(id: tensor.id, byteCount: bytes.count)
            }
        }
        defer { echo.cancel() }
        var acknowledgements = sender.acknowledgements().makeAsyncIterator()
        var roundTrips: [Duration] = []
        let clock = ContinuousClock()
        for round in 0..<latencyRounds {
            let start = clock.now
            try await sender.sendTensor(id: UInt64(round), data: small)
            guard let ack = try await acknowledgements.next(), ack.id == UInt64(round) else {
                throw Failure.stopped(device: device, reason: "no acknowledgement for round \(round)")
            }
            roundTrips.append(clock.now - start)
        }
        let start = clock.now
        for index in 0..<tensorCount {
            try await sender.sendTensor(id: UInt64(latencyRounds + index), data: expected)
        }
        for index in 0..<tensorCount {
            guard let ack = try await acknowledgements.next(), ack.id == UInt64(latencyRounds + index),
                  ack.byteCount == tensorBytes else {
                throw Failure.stopped(device: device, reason: "tensor \(latencyRounds + index) was not acknowledged whole")
            }
        }
        let elapsed = clock.now - start
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        let median = roundTrips.sorted()[roundTrips.count / 2]
        let microseconds = Double(median.components.seconds) * 1e6 + Double(median.components.attoseconds) / 1e12
        return Result(device: device, port: port, bytesMoved: tensorBytes * tensorCount, seconds: seconds,
                      roundTripMicroseconds: microseconds, lineRateGigabitsPerSecond: lineRate)
    }

    static func pattern(_ count: Int) -> Data {
        Data((0..<count).map { UInt8(truncatingIfNeeded: ($0 &* 2_654_435_761) >> 13) })
    }
}
