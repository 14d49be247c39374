/// A rate over the last minute, from a running total: (total now − total a minute ago) / the time between. Rates from
/// whole-job averages drift after a pause and jump when work arrives in bursts (a layer-at-a-time pass reports every
/// chunk of a layer at once); a minute of history smooths the bursts and forgets the pauses.
struct RateWindow: Sendable {
    let span: Duration
    /// (when, running total) in time order; the oldest is at or before `now - span` once a minute has passed.
    private var samples: [(at: ContinuousClock.Instant, total: Double)] = []

    init(span: Duration = .seconds(60)) {
        self.span = span
    }

    var total: Double { samples.last?.total ?? 0 }

    /// Starts the window at `total` (0 for fresh work, or what an earlier attempt already did).
    mutating func start(at total: Double = 0, now: ContinuousClock.Instant = .now) {
        samples = [(now, total)]
    }

    mutating func add(_ amount: Double, now: ContinuousClock.Instant = .now) {
        let total = (samples.last?.total ?? 0) + amount
        if samples.isEmpty { samples.append((now, 0)) }
        samples.append((now, total))
        // Keep one sample at or before the window's start, and everything after it.
        let cutoff = now - span
        if let keep = samples.lastIndex(where: { $0.at <= cutoff }), keep > 0 {
            samples.removeFirst(keep)
        }
    }

    /// Per second over the last `span` (or since the start, when that is shorter); nil before a second has passed or
    /// when nothing has been recorded.
    func perSecond(now: ContinuousClock.Instant = .now) -> Double? {
        guard let last = samples.last else { return nil }
        let cutoff = now - span
        let base = samples.last(where: { $0.at <= cutoff }) ?? samples[0]
        let elapsed = now - base.at
        guard elapsed >= .seconds(1), last.total > base.total || elapsed >= span else { return nil }
        return (last.total - base.total) / (Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) * 1e-18)
    }
}
