import Foundation

/// The forward's large intermediate arrays (a chunk's q/k/v, gate/up, … up to tens of MB each), kept between calls.
/// Arrays that big are mmap'ed and unmapped by malloc on every allocation, and the page faults of touching fresh
/// pages cost about as much as the element-wise passes over them; reusing the memory removes that.
final class ScratchBuffers: @unchecked Sendable {
    private let lock = NSLock()
    private var free: [[Float]] = []
    /// At most this many arrays are kept (one forward uses six at once).
    private let capacity = 8

    /// `count` zeros, in the memory of a kept array that is large enough when there is one. When none is, the
    /// largest kept array is dropped first: chunks of different sizes would otherwise leave one array of each size
    /// behind (on SmolLM2 four gate/up arrays of ~48 MB each), which is memory no forward uses again.
    func zeros(_ count: Int) -> [Float] {
        lock.lock()
        let fitting = free.indices.filter { free[$0].capacity >= count }.min { free[$0].capacity < free[$1].capacity }
        if fitting == nil, let largest = free.indices.max(by: { free[$0].capacity < free[$1].capacity }) {
            free.remove(at: largest)
        }
        var array = fitting.map { free.remove(at: $0) } ?? []
        lock.unlock()
        array.removeAll(keepingCapacity: true)
        array.append(contentsOf: repeatElement(0, count: count))
        return array
    }

    /// Floats of capacity kept for later calls.
    var keptCapacity: Int { lock.withLock { free.reduce(0) { $0 + $1.capacity } } }

    /// Takes `array`'s memory back for later calls (`array` is left empty).
    func recycle(_ array: inout [Float]) {
        var taken: [Float] = []
        swap(&taken, &array)
        lock.lock()
        defer { lock.unlock() }
        free.append(taken)
        if free.count > capacity, let smallest = free.indices.min(by: { free[$0].capacity < free[$1].capacity }) {
            free.remove(at: smallest)
        }
    }
}
