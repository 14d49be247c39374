import ClusterProtocol
import Foundation
import Logging
import Transport

/// The data path from a range to the next one, with acknowledged delivery. A send returns once its tensor is handed
/// to the network, which is not delivery: each tensor is kept until the receiver acknowledges it whole. When the link
/// breaks (dropped, or closed by TLS on a tampered record), the link dials again with exponential backoff and resends
/// every unacknowledged tensor in order. If it stays down past `reconnectDeadline`, the link fails for good with
/// ``WorkerError/successorUnreachable(worker:successor:seconds:reason:)``, reported once through `onLinkDown`.
///
/// Resending is safe: the receiver discards a tensor that did not arrive whole and drops a chunk it already has.
actor SuccessorLink {
    /// One dialed connection, free of socket details.
    struct Connection: Sendable {
        let send: @Sendable (_ id: UInt64, _ bytes: Data) async throws -> Void
        /// Ends (or throws) when the connection closes.
        let acknowledgements: AsyncThrowingStream<TensorAcknowledgement, any Error>
        let close: @Sendable () async -> Void
    }

    struct RetryPolicy: Sendable {
        /// How long a link may stay down before it fails and the coordinator decides.
        var reconnectDeadline: Duration = .seconds(60)
        var firstBackoff: Duration = .milliseconds(200)
        var maxBackoff: Duration = .seconds(5)
        /// Bytes sent but not yet acknowledged; the next tensor waits beyond this (at least one is always in flight).
        var maxUnacknowledgedBytes = 1 << 30
    }

    private struct Entry {
        let sequence: Int
        let id: UInt64
        let bytes: Data
        var sent = false
        /// The caller of `send`, resumed once the tensor is first handed to the network.
        var waiter: CheckedContinuation<Void, any Error>?
    }

    let worker: String
    let successor: String
    let policy: RetryPolicy
    let metrics: WorkerMetrics?
    let logger: Logger
    private let dial: @Sendable () async throws -> Connection
    private let onLinkDown: @Sendable (WorkerError) async -> Void

    /// Tensors not yet acknowledged, in send order.
    private var pending: [Entry] = []
    private var nextSequence = 0
    private var current: (connection: Connection, generation: Int)?
    private var generation = 0
    private var failure: (any Error)?
    private var closed = false
    private var wakeUp: CheckedContinuation<Void, Never>?
    private var wakeRequested = false
    /// When the current outage began; nil while the link is up.
    private var downSince: ContinuousClock.Instant?

    init(worker: String, successor: String, policy: RetryPolicy, metrics: WorkerMetrics? = nil, logger: Logger,
         dial: @escaping @Sendable () async throws -> Connection,
         onLinkDown: @escaping @Sendable (WorkerError) async -> Void) {
        self.worker = worker
        self.successor = successor
        self.policy = policy
        self.metrics = metrics
        self.logger = logger
        self.dial = dial
        self.onLinkDown = onLinkDown
    }

    /// Dials once, without retrying (at load time an unreachable successor is the coordinator's to handle at once),
    /// and starts the pump.
    func connect() async throws {
        try await open()
        Task { await self.runPump() }
    }

    /// Queues `bytes` as tensor `id`; returns once it is handed to the network. Throws the link's failure.
    func send(id: UInt64, bytes: Data) async throws {
        if let failure { throw failure }
        if closed { throw TransportError.connectionClosed(peer: successor) }
        let sequence = nextSequence
        nextSequence += 1
        let start = ContinuousClock.now
        try await withCheckedThrowingContinuation { (waiter: CheckedContinuation<Void, any Error>) in
            pending.append(Entry(sequence: sequence, id: id, bytes: bytes, waiter: waiter))
            wake()
        }
        let waited = ContinuousClock.now - start
        metrics?.linkSent(bytes: bytes.count,
                          seconds: Double(waited.components.seconds) + Double(waited.components.attoseconds) / 1e18)
    }

    /// Closes the link; queued sends fail, and nothing is resent.
    func close() async {
        guard !closed else { return }
        closed = true
        fail(with: TransportError.connectionClosed(peer: successor))
        wake()
        if let current {
            self.current = nil
            await current.connection.close()
        }
    }

    // MARK: The pump

    /// The one task that dials, sends and resends, so that tensors leave in order.
    private func runPump() async {
        var backoff = policy.firstBackoff
        while !closed && failure == nil {
            if current == nil {
                if pending.isEmpty {
                    await waitForWork()
                    continue
                }
                do {
                    try await open()
                    if let downSince {
                        logger.info("data path to \(successor) is back after \(formatSeconds(ContinuousClock.now - downSince)) s; resending \(pending.count) unacknowledged chunk(s)")
                    }
                    downSince = nil
                    backoff = policy.firstBackoff
                } catch {
                    let since = downSince ?? .now
                    downSince = since
                    if ContinuousClock.now - since + backoff > policy.reconnectDeadline {
                        await giveUp(reason: "\(error)")
                        return
                    }
                    logger.warning("data path to \(successor) is down: \(error); dialing again in \(backoff)")
                    try? await Task.sleep(for: backoff)
                    backoff = min(backoff * 2, policy.maxBackoff)
                }
                continue
            }
            guard let (connection, connectionGeneration) = current, let index = nextSendable() else {
                await waitForWork()
                continue
            }
            let entry = pending[index]
            do {
                try await connection.send(entry.id, entry.bytes)
                markSent(sequence: entry.sequence)
            } catch {
                logger.warning("data path to \(successor) failed on chunk \(entry.id): \(error)")
                await connectionLost(generation: connectionGeneration)
            }
        }
    }

    private func open() async throws {
        let connection = try await dial()
        guard !closed else {
            await connection.close()
            throw TransportError.connectionClosed(peer: successor)
        }
        generation += 1
        let opened = generation
        current = (connection, opened)
        // Every tensor not yet acknowledged goes again on the new connection.
        for index in pending.indices { pending[index].sent = false }
        Task { await self.readAcknowledgements(connection.acknowledgements, generation: opened) }
    }

    private func readAcknowledgements(_ acknowledgements: AsyncThrowingStream<TensorAcknowledgement, any Error>,
                                      generation opened: Int) async {
        do {
            for try await acknowledgement in acknowledgements {
                acknowledge(acknowledgement)
            }
        } catch {
            if !closed { logger.warning("data path to \(successor) closed: \(error)") }
        }
        await connectionLost(generation: opened)
    }

    private func acknowledge(_ acknowledgement: TensorAcknowledgement) {
        guard let index = pending.firstIndex(where: { $0.sent && $0.id == acknowledgement.id }) else { return }
        guard pending[index].bytes.count == acknowledgement.byteCount else {
            logger.error("\(successor) acknowledged chunk \(acknowledgement.id) with \(acknowledgement.byteCount) bytes, not \(pending[index].bytes.count); resending")
            pending[index].sent = false
            wake()
            return
        }
        pending.remove(at: index)
        wake()
    }

    /// The first tensor not yet on the current connection, if the unacknowledged window has room for it.
    private func nextSendable() -> Int? {
        guard let index = pending.firstIndex(where: { !$0.sent }) else { return nil }
        let inFlight = pending.lazy.filter(\.sent).reduce(0) { $0 + $1.bytes.count }
        guard inFlight == 0 || inFlight + pending[index].bytes.count <= policy.maxUnacknowledgedBytes else { return nil }
        return index
    }

    private func markSent(sequence: Int) {
        guard let index = pending.firstIndex(where: { $0.sequence == sequence }) else { return }
        pending[index].sent = true
        pending[index].waiter?.resume()
        pending[index].waiter = nil
    }

    private func connectionLost(generation lost: Int) async {
        guard let (connection, connectionGeneration) = current, connectionGeneration == lost else { return }
        current = nil
        if !closed {
            if downSince == nil { downSince = .now }
            if !pending.isEmpty { logger.warning("data path to \(successor) lost with \(pending.count) unacknowledged chunk(s); dialing again") }
        }
        wake()
        await connection.close()
    }

    private func giveUp(reason: String) async {
        let error = WorkerError.successorUnreachable(worker: worker, successor: successor,
                                                     seconds: Int(policy.reconnectDeadline.components.seconds),
                                                     reason: reason)
        logger.error("\(error)")
        fail(with: error)
        await onLinkDown(error)
    }

    /// Fails every queued send and forgets what was pending.
    private func fail(with error: any Error) {
        if failure == nil { failure = error }
        for entry in pending { entry.waiter?.resume(throwing: error) }
        pending.removeAll()
    }

    private func wake() {
        if let wakeUp {
            self.wakeUp = nil
            wakeUp.resume()
        } else {
            wakeRequested = true
        }
    }

    private func waitForWork() async {
        if wakeRequested {
            wakeRequested = false
            return
        }
        await withCheckedContinuation { wakeUp = $0 }
    }
}

private func formatSeconds(_ duration: Duration) -> String {
    let seconds = Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18
    return String(format: "%.1f", seconds)
}
