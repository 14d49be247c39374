import ClusterProtocol
import ClusterState
import Foundation

/// The workers coordd knows, with liveness, and waits for "the set changed" (worker X is back up, or lost).
/// Durable facts live in ``ClusterStateStore``; this keeps the live ones (connected endpoints).
actor WorkerRegistry {
    private(set) var live: [String: WorkerInfo] = [:]
    /// Bumped on every registration and loss, so runners can tell that the set changed.
    private(set) var generation = 0
    private var changes = EventBroadcast<Int>()

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

    /// Waits until the registry changes, `timeout` passes or the task is cancelled.
    func waitForChange(after seenGeneration: Int, timeout: Duration) async {
        if generation != seenGeneration { return }
        let stream = changes.subscribe()
        await withTaskGroup(of: Void.self) { group in
            group.addTask { for await _ in stream { return } }
            group.addTask { try? await Task.sleep(for: timeout) }
            await group.next()
            group.cancelAll()
        }
    }

    private func changed() {
        generation += 1
        changes.send(generation)
    }
}

/// Exported tensors arriving on the data path, held until the export call that announced them collects them.
actor BulkMailbox {
    private struct Key: Hashable {
        let peer: String
        let id: UInt64
    }
    private var arrived: [Key: Data] = [:]
    private var heldBytes = 0
    /// Most bytes held for collectors at once: a 70B layer is about 0.5 GB and two are asked for ahead, so a peer
    /// that sends beyond this is sending what nobody asked for.
    let maxHeldBytes: Int
    /// Wakes collectors on every arrival and loss.
    private var changes = EventBroadcast<Void>()
    /// Peers whose connection went away, with the error their collectors get, until they register again. Without it
    /// a collector that came after the loss would wait forever for tensors that were dropped (or never sent).
    private var lost: [String: any Error] = [:]
    /// Every loss of a peer, counted, with its error: a collector that waited across a loss fails even when the peer
    /// registered again before it woke.
    private var losses: [String: (count: Int, error: any Error)] = [:]

    init(maxHeldBytes: Int = 4 << 30) {
        self.maxHeldBytes = maxHeldBytes
    }

    /// Holds `bytes` for its collector. Over ``maxHeldBytes`` the peer's tensors are dropped and its collectors fail.
    func deliver(peer: String, id: UInt64, bytes: Data) {
        let key = Key(peer: peer, id: id)
        heldBytes -= arrived[key]?.count ?? 0
        guard heldBytes + bytes.count <= maxHeldBytes else {
            failAll(peer: peer, error: BulkMailboxFull(peer: peer, limit: maxHeldBytes))
            return
        }
        arrived[key] = bytes
        heldBytes += bytes.count
        changes.send(())
    }

    /// The bytes of tensor `id` from `peer`, waiting for them if needed. Fails when `failAll(peer:)` is called while
    /// it waits, at once while the peer is lost, and with `CancellationError` when its task is cancelled.
    func take(peer: String, id: UInt64) async throws -> Data {
        let key = Key(peer: peer, id: id)
        let lossesBefore = losses[peer]?.count ?? 0
        func collect() throws -> Data? {
            if let bytes = arrived.removeValue(forKey: key) {
                heldBytes -= bytes.count
                return bytes
            }
            if let error = lost[peer] { throw error }
            if let loss = losses[peer], loss.count != lossesBefore { throw loss.error }
            return nil
        }
        if let bytes = try collect() { return bytes }
        for await _ in changes.subscribe() {
            if let bytes = try collect() { return bytes }
        }
        throw CancellationError()
    }

    /// Fails the collectors of a peer whose connection went away, drops what it sent, and fails later collectors
    /// until the peer is back (``peerReturned(_:)``).
    func failAll(peer: String, error: Error) {
        lost[peer] = error
        losses[peer] = ((losses[peer]?.count ?? 0) + 1, error)
        for key in arrived.keys where key.peer == peer { heldBytes -= arrived.removeValue(forKey: key)?.count ?? 0 }
        changes.send(())
    }

    /// The peer registered again: its exports may be collected again.
    func peerReturned(_ peer: String) {
        lost[peer] = nil
    }
}

/// A peer sent more exported bytes than anyone collects.
struct BulkMailboxFull: Error, CustomStringConvertible {
    let peer: String
    let limit: Int
    var description: String { "\(peer) sent more exported tensor bytes than were asked for (over \(limit) bytes held)" }
}
