import Testing
import Checkpoint

/// The all-cores map that hashes exported tensors and reads weight amax keeps order and reports failures.
@Suite struct ConcurrentMapTests {
    struct Failure: Error, Equatable { let item: Int }

    @Test func resultsKeepTheItemsOrder() throws {
        let items = Array(0..<1000)
        #expect(try concurrentMap(items) { $0 * $0 } == items.map { $0 * $0 })
        #expect(try concurrentMap([Int]()) { $0 }.isEmpty)
    }

    @Test func theFirstFailingItemsErrorIsRethrown() {
        #expect(throws: Failure(item: 3)) {
            _ = try concurrentMap(Array(0..<64)) { item -> Int in
                if item == 3 || item == 40 { throw Failure(item: item) }
                return item
            }
        }
    }
}
