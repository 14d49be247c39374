import Foundation
import Logging
import NIOConcurrencyHelpers
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
        case corrupted(device: String, reason: String)
        case stopped(device: String, reason: String)

        public var description: String {
            switch self {
            case let .link(error): return "loopback failed: \(error)"
            case let .corrupted(device, reason): return "loopback on \(device): \(reason)"
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
        let traffic = RDMATestTraffic(tensorBytes: tensorBytes, tensorCount: tensorCount, latencyRounds: latencyRounds)
        let mismatch = NIOLockedValueBox<RDMATestTraffic.Mismatch?>(nil)
        let echo = Task {
            do {
                _ = try await traffic.check(receiver)
            } catch let found as RDMATestTraffic.Mismatch {
                // The sender then waits for an acknowledgement that never comes: closing ends its wait.
                mismatch.withLockedValue { $0 = found }
                await receiver.close()
            } catch {}
        }
        defer { echo.cancel() }
        let measured: RDMATestTraffic.Measurement
        do {
            measured = try await traffic.send(over: sender)
        } catch {
            if let found = mismatch.withLockedValue({ $0 }) { throw Failure.corrupted(device: device, reason: found.description) }
            if let stop = error as? RDMATestTraffic.Mismatch { throw Failure.stopped(device: device, reason: stop.description) }
            throw error
        }
        return Result(device: device, port: port, bytesMoved: measured.bytesMoved, seconds: measured.seconds,
                      roundTripMicroseconds: measured.roundTripMicroseconds, lineRateGigabitsPerSecond: lineRate)
    }
}
