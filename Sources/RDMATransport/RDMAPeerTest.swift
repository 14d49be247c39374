import Foundation
import Logging

// `coordctl doctor rdma --peer`: the loopback's traffic between this node and a running workerd. The two sides
// exchange their connection information in remote calls over the authenticated control connection (the calls
// themselves are workerd's, in the Worker module); the tensors cross on RDMA; workerd checks every byte.

/// What the doctor asks of workerd: its connection information, the traffic it will send and the ring both sides use.
public struct RDMAPeerTestRequest: Codable, Sendable, Equatable {
    /// The doctor's ``RDMAConnectionInfo``, encoded.
    public var connectionInfo: [UInt8]
    public var traffic: RDMATestTraffic
    public var slotBytes: Int
    public var slotCount: Int
    /// workerd tears the test down after this long even if the doctor never finishes it (it may have vanished).
    public var timeLimitSeconds: Int

    public init(connectionInfo: [UInt8], traffic: RDMATestTraffic, ring: RDMARingParameters, timeLimitSeconds: Int) {
        self.connectionInfo = connectionInfo
        self.traffic = traffic
        self.slotBytes = ring.slotBytes
        self.slotCount = ring.slotCount
        self.timeLimitSeconds = timeLimitSeconds
    }

    public var ring: RDMARingParameters { RDMARingParameters(slotBytes: slotBytes, slotCount: slotCount) }
}

/// workerd's side, connected and receiving.
public struct RDMAPeerTestAccepted: Codable, Sendable, Equatable {
    public var session: UInt64
    /// workerd's ``RDMAConnectionInfo``, encoded.
    public var connectionInfo: [UInt8]
    public var device: String
    public var port: Int

    public init(session: UInt64, connectionInfo: [UInt8], device: String, port: Int) {
        self.session = session
        self.connectionInfo = connectionInfo
        self.device = device
        self.port = port
    }
}

/// What workerd found once the doctor finished: every tensor it checked, or the first thing that was wrong.
public struct RDMAPeerTestVerdict: Codable, Sendable, Equatable {
    public var tensorsChecked: Int
    public var bytesChecked: Int
    public var failure: String?

    public init(tensorsChecked: Int, bytesChecked: Int, failure: String?) {
        self.tensorsChecked = tensorsChecked
        self.bytesChecked = bytesChecked
        self.failure = failure
    }
}

/// Why workerd would not run the test. Codable: it travels back as the remote call's error.
public enum RDMAPeerTestRefusal: Error, Codable, CustomStringConvertible, Equatable, Sendable {
    /// workerd has no verbs device open for its links (`--transport tcp`, or no usable port under `auto`).
    case noDevice(peer: String, reason: String)
    /// Another doctor's test is running there.
    case busy(peer: String)
    /// A request outside the limits workerd accepts.
    case badRequest(peer: String, field: String, reason: String)
    /// workerd's queue pair could not be set up or connected.
    case link(peer: String, reason: String)
    /// `finish` for a session workerd does not hold (finished, or torn down at its time limit).
    case unknownSession(peer: String, session: UInt64)

    public var description: String {
        switch self {
        case let .noDevice(peer, reason): return "workerd \(peer) has no verbs device open for RDMA: \(reason)"
        case let .busy(peer): return "workerd \(peer) is running another RDMA peer test; try again when it ends"
        case let .badRequest(peer, field, reason): return "workerd \(peer) refused the test's \(field): \(reason)"
        case let .link(peer, reason): return "workerd \(peer) could not set up its RDMA side: \(reason)"
        case let .unknownSession(peer, session):
            return "workerd \(peer) holds no RDMA peer test \(session) (finished, or torn down at its time limit)"
        }
    }
}

/// The control connection to workerd, as the peer test needs it. The Worker module implements it with remote calls
/// over the cluster's authenticated connection; tests may implement it in process.
public protocol RDMAPeerTestControl: Sendable {
    /// workerd's address, as the user gave it.
    var peer: String { get }
    func open(_ request: RDMAPeerTestRequest) async throws(RDMAPeerTest.Failure) -> RDMAPeerTestAccepted
    func finish(session: UInt64) async throws(RDMAPeerTest.Failure) -> RDMAPeerTestVerdict
}

/// The doctor's side of the peer test.
public struct RDMAPeerTest: Sendable {
    public var traffic: RDMATestTraffic
    public var ring: RDMARingParameters
    public var timeLimitSeconds: Int

    public init(traffic: RDMATestTraffic, ring: RDMARingParameters = .standard, timeLimitSeconds: Int = 120) {
        self.traffic = traffic
        self.ring = ring
        self.timeLimitSeconds = timeLimitSeconds
    }

    public struct Result: Sendable, Equatable {
        public var peer: String
        public var device: String
        public var port: Int
        public var peerDevice: String
        public var peerPort: Int
        public var measurement: RDMATestTraffic.Measurement
        public var verdict: RDMAPeerTestVerdict
        public var lineRateGigabitsPerSecond: Double?

        public var gigabitsPerSecond: Double {
            measurement.seconds > 0 ? Double(measurement.bytesMoved) * 8 / measurement.seconds / 1e9 : 0
        }

        public var text: String {
            var line = String(format: "peer RDMA WRITE %@ port %d -> %@ %@ port %d: %.1f Gb/s (%d MiB in %.3f s), round trip %.1f µs",
                              device, port, peer, peerDevice, peerPort, gigabitsPerSecond, measurement.bytesMoved >> 20,
                              measurement.seconds, measurement.roundTripMicroseconds)
            if let rate = lineRateGigabitsPerSecond, rate > 0 {
                line += String(format: "; %.0f%% of this port's %.0f Gb/s line rate", gigabitsPerSecond / rate * 100, rate)
            }
            line += "; workerd checked \(verdict.tensorsChecked) tensors, \(verdict.bytesChecked) bytes"
            return line
        }
    }

    /// Why the peer test failed, naming workerd's address (and the device where it was the link's).
    public enum Failure: Error, CustomStringConvertible, Equatable, Sendable {
        case unreachable(peer: String, reason: String)
        /// workerd refused this node's credentials (token or certificate) in the handshake: no call ran.
        case credentialsRefused(peer: String, reason: String)
        case wrongNode(peer: String, expected: String, found: String)
        /// workerd answered without serving the test (an older workerd, say).
        case notServed(peer: String, reason: String)
        case refused(RDMAPeerTestRefusal)
        case control(peer: String, reason: String)
        case link(peer: String, RDMALinkError)
        /// workerd found a tensor wrong.
        case corrupted(peer: String, reason: String)
        case stopped(peer: String, reason: String)

        public var description: String {
            switch self {
            case let .unreachable(peer, reason):
                return "cannot reach workerd at \(peer): \(reason) (is workerd running, and listening on that address?)"
            case let .credentialsRefused(peer, reason):
                return "workerd at \(peer) refused this node's credentials before any call ran: \(reason) "
                    + "(pass the cluster's --token-file, and with TLS --tls-cert/--tls-key/--tls-ca)"
            case let .wrongNode(peer, expected, found):
                return "the node at \(peer) is '\(found)', not '\(expected)' (--peer-name)"
            case let .notServed(peer, reason): return "workerd at \(peer) does not serve the RDMA peer test: \(reason)"
            case let .refused(refusal): return refusal.description
            case let .control(peer, reason): return "the control connection to workerd at \(peer) failed: \(reason)"
            case let .link(peer, error): return "RDMA link to workerd at \(peer): \(error)"
            case let .corrupted(peer, reason): return "workerd at \(peer) received a wrong tensor: \(reason)"
            case let .stopped(peer, reason): return "peer test with workerd at \(peer) stopped: \(reason)"
            }
        }
    }

    /// Sets up a queue pair on `device`, has workerd set up its side through `control`, sends the traffic and asks
    /// workerd what it checked. This side's verbs objects are released before it returns, whatever happened.
    public func run(device: any VerbsDataPlaneDevice, endpoint: RDMALinkEndpoint, control: any RDMAPeerTestControl,
                    lineRateGigabitsPerSecond: Double?, logger: Logger) async throws(Failure) -> Result {
        let peer = control.peer
        let local: RDMAActivationTransport
        do throws(RDMALinkError) {
            local = try RDMAActivationTransport(device: device, endpoint: endpoint, peerName: "workerd at \(peer)", ring: ring,
                                                logger: logger)
        } catch {
            throw .link(peer: peer, error)
        }
        let accepted: RDMAPeerTestAccepted
        do throws(Failure) {
            accepted = try await control.open(RDMAPeerTestRequest(connectionInfo: local.localInfo.encoded(), traffic: traffic,
                                                                  ring: ring, timeLimitSeconds: timeLimitSeconds))
        } catch {
            await local.close()
            throw error
        }
        var sendFailure: Failure?
        var measurement: RDMATestTraffic.Measurement?
        do {
            try local.connect(to: RDMAConnectionInfo.decode(accepted.connectionInfo, peer: "workerd at \(peer)"))
            measurement = try await traffic.send(over: local)
        } catch let error as RDMALinkError {
            sendFailure = .link(peer: peer, error)
        } catch let error as RDMAConnectionInfoError {
            sendFailure = .control(peer: peer, reason: error.description)
        } catch {
            sendFailure = .stopped(peer: peer, reason: "\(error)")
        }
        // Closing first ends workerd's reader cleanly; its verdict then covers everything that arrived.
        await local.close()
        let verdict: RDMAPeerTestVerdict
        do throws(Failure) {
            verdict = try await control.finish(session: accepted.session)
        } catch {
            throw sendFailure ?? error
        }
        if let failure = verdict.failure { throw .corrupted(peer: peer, reason: failure) }
        if let sendFailure { throw sendFailure }
        guard let measurement, verdict.tensorsChecked == traffic.totalTensors, verdict.bytesChecked == traffic.totalBytes else {
            throw .stopped(peer: peer, reason: "workerd checked \(verdict.tensorsChecked) of \(traffic.totalTensors) tensors "
                + "(\(verdict.bytesChecked) of \(traffic.totalBytes) bytes)")
        }
        return Result(peer: peer, device: device.name, port: endpoint.port, peerDevice: accepted.device,
                      peerPort: accepted.port, measurement: measurement, verdict: verdict,
                      lineRateGigabitsPerSecond: lineRateGigabitsPerSecond)
    }
}
