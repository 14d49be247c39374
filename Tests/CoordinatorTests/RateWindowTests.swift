@testable import Coordinator
import Testing

/// Rates over the last minute: bursts are averaged, pauses forgotten, and nothing is claimed before a second passed.
@Suite struct RateWindowTests {
    @Test func rateOverTheLastMinute() {
        let start = ContinuousClock.now
        var window = RateWindow()
        window.start(now: start)
        #expect(window.perSecond(now: start + .milliseconds(500)) == nil, "too early to say")
        // 100 units a second for two minutes, in bursts of 1000 every ten seconds.
        for tick in 1...12 { window.add(1000, now: start + .seconds(10 * tick)) }
        let rate = window.perSecond(now: start + .seconds(120))
        #expect(rate == 100)
        // Two idle minutes later, the rate is 0, not the whole-run average of 50.
        #expect(window.perSecond(now: start + .seconds(240)) == 0)
        #expect(window.total == 12_000)
    }

    @Test func aBurstSoonAfterTheStartIsAveragedFromTheStart() {
        let start = ContinuousClock.now
        var window = RateWindow()
        window.start(now: start)
        window.add(500, now: start + .seconds(5))
        #expect(window.perSecond(now: start + .seconds(10)) == 50)
    }
}
