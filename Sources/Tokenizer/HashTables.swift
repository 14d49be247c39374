import Foundation

/// Open-addressing hash map from byte strings to `Int32`, with keys packed in one arena.
/// Used for the vocabulary (raw bytes -> id) and for the per-call cache of BPE results; it avoids building a
/// `String` or `[UInt8]` per lookup, which dominates the cost of a `Dictionary` on this hot path.
struct ByteStringTable: Sendable {
    private struct Slot {
        var offset: Int32 = -1
        var length: Int32 = 0
        var value: Int32 = 0
        var hash: UInt32 = 0
    }

    private var arena: [UInt8] = []
    private var slots: [Slot]
    private var mask: Int
    private(set) var count = 0

    init(minimumCapacity: Int = 16) {
        var capacity = 16
        while capacity < minimumCapacity * 2 { capacity <<= 1 }
        slots = [Slot](repeating: Slot(), count: capacity)
        mask = capacity - 1
    }

    @inline(__always)
    static func hash(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        var h: UInt64 = 0x9E37_79B9_7F4A_7C15 ^ UInt64(bytes.count)
        var i = 0
        let n = bytes.count
        while i + 8 <= n {
            let word = bytes.loadUnaligned(fromByteOffset: i, as: UInt64.self)
            h = (h ^ word) &* 0xFF51_AFD7_ED55_8CCD
            h ^= h >> 32
            i += 8
        }
        if i < n {
            var word: UInt64 = 0
            var shift: UInt64 = 0
            while i < n {
                word |= UInt64(bytes[i]) << shift
                shift += 8
                i += 1
            }
            h = (h ^ word) &* 0xC4CE_B9FE_1A85_EC53
        }
        h ^= h >> 29
        h = h &* 0x94D0_49BB_1331_11EB
        return h ^ (h >> 31)
    }

    /// The value stored for `key`, or -1.
    @inline(__always)
    func lookup(_ key: UnsafeRawBufferPointer) -> Int32 {
        let h = Self.hash(key)
        let shortHash = UInt32(truncatingIfNeeded: h >> 32)
        var index = Int(truncatingIfNeeded: h) & mask
        return arena.withUnsafeBytes { arenaBytes in
            slots.withUnsafeBufferPointer { slots in
                while true {
                    let slot = slots[index]
                    if slot.offset < 0 { return -1 }
                    if slot.hash == shortHash, Int(slot.length) == key.count,
                       key.count == 0
                        || memcmp(arenaBytes.baseAddress! + Int(slot.offset), key.baseAddress!, key.count) == 0 {
                        return slot.value
                    }
                    index = (index + 1) & mask
                }
            }
        }
    }

    func lookup(_ key: [UInt8]) -> Int32 {
        key.withUnsafeBytes { lookup($0) }
    }

    /// Stores `value` for `key`, replacing an earlier value.
    mutating func insert(_ key: UnsafeRawBufferPointer, value: Int32) {
        if (count + 1) * 2 > slots.count { grow() }
        let h = Self.hash(key)
        let shortHash = UInt32(truncatingIfNeeded: h >> 32)
        var index = Int(truncatingIfNeeded: h) & mask
        while true {
            let slot = slots[index]
            if slot.offset < 0 { break }
            if slot.hash == shortHash, Int(slot.length) == key.count,
               arena[Int(slot.offset)..<Int(slot.offset) + key.count].elementsEqual(key) {
                slots[index].value = value
                return
            }
            index = (index + 1) & mask
        }
        slots[index] = Slot(offset: Int32(arena.count), length: Int32(key.count), value: value, hash: shortHash)
        arena.append(contentsOf: key)
        count += 1
    }

    mutating func insert(_ key: [UInt8], value: Int32) {
        key.withUnsafeBytes { insert($0, value: value) }
    }

    private mutating func grow() {
        let old = slots
        slots = [Slot](repeating: Slot(), count: old.count * 2)
        mask = slots.count - 1
        arena.withUnsafeBytes { arenaBytes in
            for slot in old where slot.offset >= 0 {
                let key = UnsafeRawBufferPointer(rebasing: arenaBytes[Int(slot.offset)..<Int(slot.offset + slot.length)])
                var index = Int(truncatingIfNeeded: Self.hash(key)) & mask
                while slots[index].offset >= 0 { index = (index + 1) & mask }
                slots[index] = slot
            }
        }
    }
}

/// Open-addressing hash map from a pair of token ids to the merge's rank and the merged token's id.
struct MergeTable: Sendable {
    private var keys: [UInt64]
    private var values: [UInt64]
    private let mask: Int
    private static let empty = UInt64.max

    init(capacityFor count: Int) {
        var capacity = 16
        while capacity < count * 2 { capacity <<= 1 }
        keys = [UInt64](repeating: Self.empty, count: capacity)
        values = [UInt64](repeating: 0, count: capacity)
        mask = capacity - 1
    }

    @inline(__always)
    private static func key(_ left: Int32, _ right: Int32) -> UInt64 {
        UInt64(UInt32(bitPattern: left)) << 32 | UInt64(UInt32(bitPattern: right))
    }

    @inline(__always)
    private static func slot(_ key: UInt64, _ mask: Int) -> Int {
        var h = key &* 0x9E37_79B9_7F4A_7C15
        h ^= h >> 29
        return Int(truncatingIfNeeded: h) & mask
    }

    /// Records a merge; a later duplicate replaces an earlier one, as in Hugging Face's map construction.
    mutating func insert(left: Int32, right: Int32, rank: Int32, merged: Int32) {
        let k = Self.key(left, right)
        var index = Self.slot(k, mask)
        while keys[index] != Self.empty && keys[index] != k { index = (index + 1) & mask }
        keys[index] = k
        values[index] = UInt64(UInt32(bitPattern: rank)) << 32 | UInt64(UInt32(bitPattern: merged))
    }

    /// (rank << 32 | merged id) for the pair, or `UInt64.max` when the pair does not merge.
    @inline(__always)
    func lookup(left: Int32, right: Int32) -> UInt64 {
        let k = Self.key(left, right)
        var index = Self.slot(k, mask)
        return keys.withUnsafeBufferPointer { keys in
            while true {
                let stored = keys[index]
                if stored == k { return values[index] }
                if stored == Self.empty { return UInt64.max }
                index = (index + 1) & mask
            }
        }
    }
}
