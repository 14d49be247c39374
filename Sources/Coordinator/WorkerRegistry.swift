import ClusterProtocol
import ClusterState
import Foundation

/// The workers coordd knows, with liveness, and waiters for "worker X is (back) up".
/// Durable facts live in ``ClusterStateStore``; this keeps the live ones (connected endpoints).
actor WorkerRegistry {
    private(set) var live: [String: WorkerInfo] = [:]
    /// Bumped on every registration and loss, so runners can tell that the set changed.
    private(set) var generation = 0
    private var waiters: [CheckedContinuation<Void, Never>] = []

    func register(_ info: WorkerInfo) {
        live[info.name] = info
        changed()
    }

    /// Returns true when the worker was live.
    @discardableResult
    func lose(_ name: String) -> Bool {
        let wasLive = live.removeValue(forKey: name) != nil
        if wasLive { changed() }
        return wasLive
    }

    func info(_ name: String) -> WorkerInfo? { live[name] }

    func liveWorkers() -> [WorkerInfo] { live.values.sorted { $0.name < $1.name } }

    /// Waits until the registry changes or `timeout` passes.
    func waitForChange(after seenGeneration: Int, timeout: Duration) async {
        if generation != seenGeneration { return }
        // Unstructured: the timer must wake the continuation below, which a child task of this call could not
        // outlive; it is cancelled as soon as the wait ends.
        let timer = Task { [weak self] in
            try? await Task.sleep(for: timeout)
            await self?.wakeAll()
        }
        await withCheckedContinuation { waiters.append($0) }
        timer.cancel()
    }

    private func changed() {
        generation += 1
        wakeAll()
    }

    private func wakeAll() {
        let all = waiters
        waiters = []
        for waiter in all { waiter.resume() }
    }
}

/// Exported tensors arriving on the data path, held until the export call that announced them collects them.
actor BulkMailbox {
    private struct Key: Hashable {
        let peer: String
        let id: UInt64
    }
    private var arrived: [Key: Data] = [:]
    private var waiting: [Key: CheckedContinuation<Data, Error>] = [:]
    /// Peers whose connection went away, with the error their collectors get, until they register again. Without it
    /// a collector that came after the loss would wait forever for tensors that were dropped (or never sent).
    private var lost: [String: any Error] = [:]

    func deliver(peer: String, id: UInt64, bytes: Data) {
        let key = Key(peer: peer, id: id)
        if let waiter = waiting.removeValue(forKey: key) {
            waiter.resume(returning: bytes)
        } else {
            arrived[key] = bytes
        }
    }

    /// The bytes of tensor `id` from `peer`, waiting for them if needed. Fails when `failAll(peer:)` is called, and at
    /// once while the peer is lost.
    func take(peer: String, id: UInt64) async throws -> Data {
        let key = Key(peer: peer, id: id)
        if let bytes = arrived.removeValue(forKey: key) { return bytes }
        if let error = lost[peer] { throw error }
        return try await withCheckedThrowingContinuation { waiting[key] = $0 }
    }

    /// Fails the waiters of a peer whose connection went away, drops what it sent, and fails later collectors until
    /// the peer is back (``peerReturned(_:)``).
    func failAll(peer: String, error: Error) {
        lost[peer] = error
        for key in waiting.keys where key.peer == peer { waiting.removeValue(forKey: key)?.resume(throwing: error) }
        for key in arrived.keys where key.peer == peer { arrived.removeValue(forKey: key) }
    }

    /// The peer registered again: its exports may be collected again.
    func peerReturned(_ peer: String) {
        lost[peer] = nil
    }
}
