/// The BPE model over raw bytes: a vocabulary keyed by the bytes each token spells (the byte-level strings of
/// `tokenizer.json` decoded through ``ByteLevelAlphabet``), and a merge table keyed by token-id pairs.
struct BytePairModel: Sendable {
    /// Raw bytes -> token id.
    let vocabulary: ByteStringTable
    /// (left id, right id) -> rank and merged id.
    let merges: MergeTable
    /// Id of each single byte, or -1 when the vocabulary lacks it.
    let byteIDs: [Int32]
    /// Llama-3's `ignore_merges`: a pre-token that is itself a token is emitted whole.
    let ignoreMerges: Bool
    /// `unk_token`'s id, used for bytes without a token.
    let unknownID: Int32?
    /// `fuse_unk`: consecutive unknown bytes give one unknown token.
    let fuseUnknown: Bool

    /// Appends the tokens of one pre-token, consulting and filling `scratch`'s cache.
    @inline(__always)
    func encode(_ piece: UnsafeRawBufferPointer, into output: inout [Int], scratch: inout EncodeScratch) {
        if piece.count == 0 { return }
        if ignoreMerges || piece.count == 1 {
            let id = vocabulary.lookup(piece)
            if id >= 0 {
                output.append(Int(id))
                return
            }
        }
        let cached = scratch.cache.lookup(piece)
        if cached >= 0 {
            let start = Int(scratch.cachedStarts[Int(cached)])
            let end = Int(scratch.cachedStarts[Int(cached) + 1])
            for k in start..<end { output.append(Int(scratch.cachedIDs[k])) }
            return
        }
        let before = output.count
        merge(piece, into: &output, scratch: &scratch)
        // Remember the result for later occurrences of the same pre-token in this call.
        scratch.cache.insert(piece, value: Int32(scratch.cachedStarts.count - 1))
        for k in before..<output.count { scratch.cachedIDs.append(Int32(output[k])) }
        scratch.cachedStarts.append(Int32(scratch.cachedIDs.count))
    }

    /// Greedy BPE: repeatedly applies the lowest-ranked merge among adjacent symbols, the leftmost one on ties,
    /// taking candidates from a min-heap of (rank, position) and skipping entries made stale by earlier merges.
    private func merge(_ piece: UnsafeRawBufferPointer, into output: inout [Int], scratch: inout EncodeScratch) {
        scratch.ids.removeAll(keepingCapacity: true)
        var previousWasUnknown = false
        for byte in piece {
            let id = byteIDs[Int(byte)]
            if id >= 0 {
                scratch.ids.append(id)
                previousWasUnknown = false
            } else if let unknownID {
                if !(fuseUnknown && previousWasUnknown) { scratch.ids.append(unknownID) }
                previousWasUnknown = true
            }
            // Without an unknown token, a byte missing from the vocabulary is dropped, as Hugging Face does.
        }
        let count = scratch.ids.count
        if count == 0 { return }
        scratch.next.removeAll(keepingCapacity: true)
        scratch.previous.removeAll(keepingCapacity: true)
        scratch.alive.removeAll(keepingCapacity: true)
        for p in 0..<count {
            scratch.next.append(p + 1 < count ? Int32(p + 1) : -1)
            scratch.previous.append(Int32(p - 1))
            scratch.alive.append(true)
        }
        var heap = MinHeap(storage: scratch.heap)
        heap.removeAll()
        for p in 0..<(count - 1) {
            let entry = merges.lookup(left: scratch.ids[p], right: scratch.ids[p + 1])
            if entry != UInt64.max { heap.push(entry & 0xFFFF_FFFF_0000_0000 | UInt64(p)) }
        }
        while let top = heap.pop() {
            let rank = top >> 32
            let position = Int(top & 0xFFFF_FFFF)
            guard scratch.alive[position] else { continue }
            let right = Int(scratch.next[position])
            guard right >= 0 else { continue }
            let entry = merges.lookup(left: scratch.ids[position], right: scratch.ids[right])
            guard entry != UInt64.max, entry >> 32 == rank else { continue }
            scratch.ids[position] = Int32(truncatingIfNeeded: entry & 0xFFFF_FFFF)
            scratch.alive[right] = false
            let afterRight = scratch.next[right]
            scratch.next[position] = afterRight
            if afterRight >= 0 { scratch.previous[Int(afterRight)] = Int32(position) }
            let left = scratch.previous[position]
            if left >= 0 {
                let candidate = merges.lookup(left: scratch.ids[Int(left)], right: scratch.ids[position])
                if candidate != UInt64.max { heap.push(candidate & 0xFFFF_FFFF_0000_0000 | UInt64(left)) }
            }
            if afterRight >= 0 {
                let candidate = merges.lookup(left: scratch.ids[position], right: scratch.ids[Int(afterRight)])
                if candidate != UInt64.max { heap.push(candidate & 0xFFFF_FFFF_0000_0000 | UInt64(position)) }
            }
        }
        scratch.heap = heap.storage
        var p = 0
        while p >= 0 {
            output.append(Int(scratch.ids[p]))
            p = Int(scratch.next[p])
        }
    }
}

/// Buffers reused across the pre-tokens of one `encode` call, and that call's cache of BPE results.
struct EncodeScratch {
    var cache = ByteStringTable(minimumCapacity: 256)
    var cachedIDs: [Int32] = []
    var cachedStarts: [Int32] = [0]
    var ids: [Int32] = []
    var next: [Int32] = []
    var previous: [Int32] = []
    var alive: [Bool] = []
    var heap: [UInt64] = []
}

/// A binary min-heap of packed (rank << 32 | position) keys; smaller rank first, then smaller position.
struct MinHeap {
    var storage: [UInt64]

    mutating func removeAll() { storage.removeAll(keepingCapacity: true) }

    mutating func push(_ value: UInt64) {
        storage.append(value)
        var child = storage.count - 1
        while child > 0 {
            let parent = (child - 1) / 2
            if storage[parent] <= storage[child] { break }
            storage.swapAt(parent, child)
            child = parent
        }
    }

    mutating func pop() -> UInt64? {
        guard let last = storage.popLast() else { return nil }
        if storage.isEmpty { return last }
        let top = storage[0]
        storage[0] = last
        var parent = 0
        let count = storage.count
        while true {
            let left = 2 * parent + 1
            if left >= count { break }
            var smallest = left
            if left + 1 < count && storage[left + 1] < storage[left] { smallest = left + 1 }
            if storage[parent] <= storage[smallest] { break }
            storage.swapAt(parent, smallest)
            parent = smallest
        }
        return top
    }
}
