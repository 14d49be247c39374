import Foundation
import Logging
import NIOConcurrencyHelpers

/// workerd's side of `coordctl doctor rdma --peer`: one test at a time, on the device its links use, with its own
/// queue pair and rings (a running job's links are not touched). Every failure is a ``RDMAPeerTestRefusal`` thrown
/// to the caller; a test the doctor never finishes is torn down at its time limit.
public final class RDMAPeerTestResponder: Sendable {
    /// What a request may ask for: enough for the doctor's default test, bounded so a caller cannot make workerd
    /// pin or buffer much memory.
    public struct Limits: Sendable {
        public var maxTensorBytes = 64 << 20
        public var maxTensors = 1 << 16
        public var maxLatencyRounds = 10_000
        public var maxRingBytes = 64 << 20
        public var maxTimeLimitSeconds = 3600
        public init() {}
    }

    private struct Session {
        let id: UInt64
        let transport: RDMAActivationTransport
        let checking: Task<RDMAPeerTestVerdict, Never>
        let watchdog: Task<Void, Never>
    }

    private struct State {
        var session: Session?
        var opening = false
        var nextID: UInt64 = 1
        var opened = 0
    }

    public let node: String
    private let setup: ActivationLinkSetup
    private let limits: Limits
    private let logger: Logger
    private let state = NIOLockedValueBox(State())

    /// `node` names this workerd in refusals.
    public init(setup: ActivationLinkSetup, node: String, limits: Limits = Limits(), logger: Logger) {
        self.setup = setup
        self.node = node
        self.limits = limits
        self.logger = logger
    }

    /// Tests set up so far (for tests: a refused caller never got this far).
    public var openedCount: Int { state.withLockedValue { $0.opened } }
    /// Whether a test is running.
    public var isBusy: Bool { state.withLockedValue { $0.session != nil || $0.opening } }

    /// Sets up this side, connects it to the caller's and starts checking what arrives.
    public func open(_ request: RDMAPeerTestRequest, caller: String) async throws(RDMAPeerTestRefusal) -> RDMAPeerTestAccepted {
        guard let device = setup.device, let endpoint = setup.endpoint else {
            throw .noDevice(peer: node, reason: setup.decision.reason)
        }
        try validate(request)
        let remote: RDMAConnectionInfo
        do throws(RDMAConnectionInfoError) {
            remote = try RDMAConnectionInfo.decode(request.connectionInfo, peer: caller)
        } catch {
            throw .badRequest(peer: node, field: "connection information", reason: error.description)
        }
        let claimed = state.withLockedValue { state -> Bool in
            guard state.session == nil, !state.opening else { return false }
            state.opening = true
            return true
        }
        guard claimed else { throw .busy(peer: node) }
        let transport: RDMAActivationTransport
        do throws(RDMALinkError) {
            transport = try RDMAActivationTransport(device: device, endpoint: endpoint, peerName: "doctor \(caller)",
                                                    ring: request.ring, logger: logger)
            do throws(RDMALinkError) {
                try transport.connect(to: remote)
            } catch {
                await transport.close()
                throw error
            }
        } catch {
            state.withLockedValue { $0.opening = false }
            throw .link(peer: node, reason: error.description)
        }
        let traffic = request.traffic
        let progress = NIOLockedValueBox(RDMATestTraffic.Checked())
        let checking = Task { () -> RDMAPeerTestVerdict in
            do {
                let totals = try await traffic.check(transport) { totals in progress.withLockedValue { $0 = totals } }
                return RDMAPeerTestVerdict(tensorsChecked: totals.tensors, bytesChecked: totals.bytes, failure: nil)
            } catch {
                // Closing stops the sender, which would otherwise wait for an acknowledgement that never comes.
                await transport.close()
                let totals = progress.withLockedValue { $0 }
                return RDMAPeerTestVerdict(tensorsChecked: totals.tensors, bytesChecked: totals.bytes, failure: "\(error)")
            }
        }
        let id = state.withLockedValue { state -> UInt64 in
            defer { state.nextID += 1 }
            return state.nextID
        }
        let limit = Duration.seconds(request.timeLimitSeconds)
        let watchdog = Task { [weak self] in
            guard (try? await Task.sleep(for: limit)) != nil, let self else { return }
            if let abandoned = self.take(id) {
                self.logger.warning("RDMA peer test torn down at its time limit",
                                    metadata: ["caller": "\(caller)", "seconds": "\(request.timeLimitSeconds)"])
                await abandoned.transport.close()
                _ = await abandoned.checking.value
            }
        }
        state.withLockedValue { state in
            state.session = Session(id: id, transport: transport, checking: checking, watchdog: watchdog)
            state.opening = false
            state.opened += 1
        }
        logger.info("RDMA peer test started", metadata: ["caller": "\(caller)", "device": "\(device.name)",
                                                         "tensors": "\(traffic.totalTensors)", "bytes": "\(traffic.totalBytes)"])
        return RDMAPeerTestAccepted(session: id, connectionInfo: transport.localInfo.encoded(), device: device.name,
                                    port: endpoint.port)
    }

    /// Ends the test: closes this side (the caller has closed its own, so everything it sent has been read) and
    /// says what was checked.
    public func finish(session: UInt64) async throws(RDMAPeerTestRefusal) -> RDMAPeerTestVerdict {
        guard let ended = take(session) else { throw .unknownSession(peer: node, session: session) }
        ended.watchdog.cancel()
        await ended.transport.close()
        let verdict = await ended.checking.value
        logger.info("RDMA peer test ended", metadata: ["tensors": "\(verdict.tensorsChecked)",
                                                       "failure": "\(verdict.failure ?? "none")"])
        return verdict
    }

    private func take(_ id: UInt64) -> Session? {
        state.withLockedValue { state in
            guard let session = state.session, session.id == id else { return nil }
            state.session = nil
            return session
        }
    }

    private func validate(_ request: RDMAPeerTestRequest) throws(RDMAPeerTestRefusal) {
        let traffic = request.traffic
        func check(_ ok: Bool, _ field: String, _ reason: String) throws(RDMAPeerTestRefusal) {
            if !ok { throw .badRequest(peer: node, field: field, reason: reason) }
        }
        try check((1...limits.maxTensorBytes).contains(traffic.tensorBytes), "tensor size",
                  "\(traffic.tensorBytes) bytes; 1 to \(limits.maxTensorBytes) are accepted")
        try check((1...limits.maxTensors).contains(traffic.tensorCount), "tensor count",
                  "\(traffic.tensorCount); 1 to \(limits.maxTensors) are accepted")
        try check((1...limits.maxLatencyRounds).contains(traffic.latencyRounds), "latency rounds",
                  "\(traffic.latencyRounds); 1 to \(limits.maxLatencyRounds) are accepted")
        try check((1...limits.maxTimeLimitSeconds).contains(request.timeLimitSeconds), "time limit",
                  "\(request.timeLimitSeconds) s; 1 to \(limits.maxTimeLimitSeconds) are accepted")
        let ring = request.ring
        try check(RDMAConnectionInfo.slotBytesRange.contains(ring.slotBytes)
                    && (1..<RDMAConnectionInfo.maxSlotCount).contains(ring.slotCount)
                    && ring.slotBytes.multipliedReportingOverflow(by: ring.slotCount).partialValue <= limits.maxRingBytes
                    && !ring.slotBytes.multipliedReportingOverflow(by: ring.slotCount).overflow,
                  "ring", "\(ring.slotCount) slots of \(ring.slotBytes) bytes; at most \(limits.maxRingBytes) bytes are accepted")
    }
}
