/// Events for every waiter: each ``subscribe()`` returns its own `AsyncStream`, and ``send(_:)`` yields to all of
/// them. A waiter subscribes, checks the state it waits for, and re-checks after each event, so no event between
/// the check and the wait is lost; a cancelled waiter's stream ends, so no wait outlives its task. Kept inside an
/// actor, which serializes every call.
struct EventBroadcast<Event: Sendable> {
    private var subscribers: [AsyncStream<Event>.Continuation] = []

    mutating func subscribe() -> AsyncStream<Event> {
        // Only the newest matters: a waiter re-reads the state rather than replaying events.
        let (stream, continuation) = AsyncStream.makeStream(of: Event.self, bufferingPolicy: .bufferingNewest(1))
        subscribers.append(continuation)
        return stream
    }

    /// Wakes every waiter; streams whose waiters are gone are dropped here.
    mutating func send(_ event: Event) {
        subscribers.removeAll { subscriber in
            if case .terminated = subscriber.yield(event) { return true }
            return false
        }
    }

    /// Ends every stream (after delivering what was sent); later waiters get a stream that ends at once.
    mutating func finish() {
        for subscriber in subscribers { subscriber.finish() }
        subscribers = []
    }
}
