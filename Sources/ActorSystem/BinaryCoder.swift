import Foundation

// The binary Codable format used for distributed-call arguments, return values and error payloads.
//
// Every value is one node, tagged by its first byte (integers little-endian):
//   0x00 nil
//   0x01 value      u32 length ‖ bytes   (fixed-width integers, Bool as one 0/1 byte, Float/Double bit patterns,
//                                         String UTF-8, [UInt8] and Data raw)
//   0x02 keyed      u32 count ‖ count × (u32 key length ‖ key UTF-8 ‖ node)
//   0x03 unkeyed    u32 count ‖ count × node
// Keys are kept (not just positions) so enums with associated values, optional fields and out-of-order decoding work
// exactly as with JSON; byte arrays stay one node so a large tensor argument costs no per-element overhead.

/// Why bytes could not be decoded (or a value encoded). Descriptions name the byte offset or the coding path.
public enum BinaryCodingError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The input ended `needed` bytes into a field at `offset` with only `available` left.
    case truncated(offset: Int, needed: Int, available: Int)
    /// A tag, count or length at `offset` that can never be valid.
    case malformed(offset: Int, reason: String)
    /// A complete value was read but `count` bytes follow it.
    case trailingBytes(offset: Int, count: Int)
    /// Containers nested deeper than the decoder's limit.
    case nestingTooDeep(limit: Int)
    /// The node at `path` is not what the type asked for.
    case typeMismatch(path: String, expected: String, found: String)
    case keyNotFound(path: String, key: String)
    /// An unkeyed container at `path` has no more elements.
    case endOfContainer(path: String)
    /// A value at `path` does not fit the type (e.g. a Bool byte other than 0/1, invalid UTF-8, a wrong width).
    case invalidValue(path: String, reason: String)
    /// A value the format cannot hold (e.g. a container over 4 GiB).
    case unencodable(path: String, reason: String)

    public var description: String {
        switch self {
        case .truncated(let offset, let needed, let available):
            "binary value truncated at byte \(offset): needs \(needed) more bytes, \(available) left"
        case .malformed(let offset, let reason): "malformed binary value at byte \(offset): \(reason)"
        case .trailingBytes(let offset, let count): "\(count) unexpected bytes after the value, from byte \(offset)"
        case .nestingTooDeep(let limit): "binary value nests containers deeper than \(limit)"
        case .typeMismatch(let path, let expected, let found): "at \(path): expected \(expected), found \(found)"
        case .keyNotFound(let path, let key): "at \(path): missing key \"\(key)\""
        case .endOfContainer(let path): "at \(path): no more elements"
        case .invalidValue(let path, let reason): "at \(path): \(reason)"
        case .unencodable(let path, let reason): "cannot encode \(path): \(reason)"
        }
    }
}

/// Encodes `Encodable` values into the compact binary format above.
public struct BinaryEncoder: Sendable {
    public init() {}

    public func encode<T: Encodable>(_ value: T) throws -> [UInt8] {
        let root = EncodingSlot()
        try encodeValue(value, into: root, codingPath: [])
        var out: [UInt8] = []
        try root.write(into: &out, path: [])
        return out
    }
}

/// Decodes values written by ``BinaryEncoder``. The whole input is validated (lengths, counts, tags, nesting,
/// no trailing bytes) before any value is built, so malformed bytes fail with a ``BinaryCodingError``, never a trap.
public struct BinaryDecoder: Sendable {
    /// Deepest container nesting accepted.
    public var maxDepth: Int = 128
    /// Handed to `init(from:)` implementations (the actor system sets `.actorSystemKey` so actor references decode).
    public var userInfo: [CodingUserInfoKey: any Sendable] = [:]

    public init() {}

    public func decode<T: Decodable>(_ type: T.Type, from bytes: [UInt8]) throws -> T {
        try decode(type, fromSlice: bytes[...])
    }

    func decode<T: Decodable>(_ type: T.Type, fromSlice bytes: ArraySlice<UInt8>) throws -> T {
        var parser = NodeParser(bytes: bytes, maxDepth: maxDepth)
        let root = try parser.parseNode(depth: 0)
        guard parser.offset == bytes.count else {
            throw BinaryCodingError.trailingBytes(offset: parser.offset, count: bytes.count - parser.offset)
        }
        return try decodeValue(type, from: root, codingPath: [], userInfo: userInfo)
    }
}

// MARK: - Node tree

enum BinaryTag: UInt8 {
    case null = 0x00, value = 0x01, keyed = 0x02, unkeyed = 0x03
}

/// A parsed value. `value` slices share the input's storage.
indirect enum BinaryNode {
    case null
    case value(ArraySlice<UInt8>)
    case keyed([(String, BinaryNode)])
    case unkeyed([BinaryNode])

    var kind: String {
        switch self {
        case .null: "nil"
        case .value(let bytes): "a \(bytes.count)-byte value"
        case .keyed: "a keyed container"
        case .unkeyed: "an unkeyed container"
        }
    }
}

struct NodeParser {
    let bytes: ArraySlice<UInt8>
    let maxDepth: Int
    private(set) var offset = 0

    init(bytes: ArraySlice<UInt8>, maxDepth: Int) {
        self.bytes = bytes
        self.maxDepth = maxDepth
    }

    private var remaining: Int { bytes.count - offset }

    private mutating func take(_ count: Int) throws -> ArraySlice<UInt8> {
        guard count <= remaining else { throw BinaryCodingError.truncated(offset: offset, needed: count, available: remaining) }
        let start = bytes.startIndex + offset
        offset += count
        return bytes[start..<(start + count)]
    }

    private mutating func readU32() throws -> Int {
        let raw = try take(4)
        var value: UInt32 = 0
        for (shift, byte) in raw.enumerated() { value |= UInt32(byte) << (8 * UInt32(shift)) }
        return Int(value)
    }

    /// A count of items each at least `minimumItemSize` bytes long must fit in what is left.
    private mutating func readCount(minimumItemSize: Int) throws -> Int {
        let at = offset
        let count = try readU32()
        guard count <= remaining / minimumItemSize else {
            throw BinaryCodingError.malformed(offset: at, reason: "count \(count) cannot fit in the \(remaining) bytes left")
        }
        return count
    }

    mutating func parseNode(depth: Int) throws -> BinaryNode {
        guard depth <= maxDepth else { throw BinaryCodingError.nestingTooDeep(limit: maxDepth) }
        let at = offset
        let rawTag = try take(1).first!
        guard let tag = BinaryTag(rawValue: rawTag) else {
            throw BinaryCodingError.malformed(offset: at, reason: "unknown tag 0x\(String(rawTag, radix: 16))")
        }
        switch tag {
        case .null:
            return .null
        case .value:
            let length = try readU32()
            return .value(try take(length))
        case .keyed:
            let count = try readCount(minimumItemSize: 5)
            var entries: [(String, BinaryNode)] = []
            entries.reserveCapacity(count)
            for _ in 0..<count {
                let keyAt = offset
                let keyBytes = try take(try readU32())
                guard let key = String(validating: keyBytes, as: UTF8.self) else {
                    throw BinaryCodingError.malformed(offset: keyAt, reason: "key is not valid UTF-8")
                }
                entries.append((key, try parseNode(depth: depth + 1)))
            }
            return .keyed(entries)
        case .unkeyed:
            let count = try readCount(minimumItemSize: 1)
            var nodes: [BinaryNode] = []
            nodes.reserveCapacity(count)
            for _ in 0..<count { nodes.append(try parseNode(depth: depth + 1)) }
            return .unkeyed(nodes)
        }
    }
}

func pathText(_ path: [any CodingKey]) -> String {
    path.isEmpty ? "<root>" : path.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }.joined(separator: ".")
}

struct IndexKey: CodingKey {
    var stringValue: String { "\(index)" }
    var intValue: Int? { index }
    let index: Int
    init(_ index: Int) { self.index = index }
    init?(stringValue: String) { guard let index = Int(stringValue) else { return nil }; self.index = index }
    init?(intValue: Int) { self.index = intValue }
}

// MARK: - Encoding

/// A node being built; containers share it by reference so nested containers fill their parent in place.
final class EncodingSlot {
    enum Content {
        case empty
        case null
        case value([UInt8])
        case keyed([(String, EncodingSlot)])
        case unkeyed([EncodingSlot])
    }
    var content: Content = .empty

    func write(into out: inout [UInt8], path: [any CodingKey]) throws {
        switch content {
        case .empty, .null:
            out.append(BinaryTag.null.rawValue)
        case .value(let bytes):
            out.append(BinaryTag.value.rawValue)
            try writeU32(bytes.count, into: &out, path: path)
            out.append(contentsOf: bytes)
        case .keyed(let entries):
            out.append(BinaryTag.keyed.rawValue)
            try writeU32(entries.count, into: &out, path: path)
            for (key, slot) in entries {
                let keyBytes = Array(key.utf8)
                try writeU32(keyBytes.count, into: &out, path: path)
                out.append(contentsOf: keyBytes)
                try slot.write(into: &out, path: path + [AnyKey(key)])
            }
        case .unkeyed(let slots):
            out.append(BinaryTag.unkeyed.rawValue)
            try writeU32(slots.count, into: &out, path: path)
            for (index, slot) in slots.enumerated() { try slot.write(into: &out, path: path + [IndexKey(index)]) }
        }
    }

    private func writeU32(_ value: Int, into out: inout [UInt8], path: [any CodingKey]) throws {
        guard value <= Int(UInt32.max) else {
            throw BinaryCodingError.unencodable(path: pathText(path), reason: "\(value) bytes or items exceed the 4 GiB field limit")
        }
        let v = UInt32(value)
        out.append(contentsOf: [UInt8(v & 0xFF), UInt8((v >> 8) & 0xFF), UInt8((v >> 16) & 0xFF), UInt8(v >> 24)])
    }
}

struct AnyKey: CodingKey {
    var stringValue: String
    var intValue: Int? { nil }
    init(_ string: String) { stringValue = string }
    init?(stringValue: String) { self.stringValue = stringValue }
    init?(intValue: Int) { return nil }
}

func encodeValue<T: Encodable>(_ value: T, into slot: EncodingSlot, codingPath: [any CodingKey]) throws {
    // Compare types, not casts: an empty [Double] casts to [UInt8] successfully.
    if T.self == [UInt8].self, let bytes = value as? [UInt8] {
        slot.content = .value(bytes)
    } else if T.self == Data.self, let data = value as? Data {
        slot.content = .value([UInt8](data))
    } else {
        try value.encode(to: SlotEncoder(slot: slot, codingPath: codingPath))
    }
}

func littleEndianBytes<I: FixedWidthInteger>(_ value: I) -> [UInt8] {
    withUnsafeBytes(of: value.littleEndian) { Array($0) }
}

struct SlotEncoder: Encoder {
    let slot: EncodingSlot
    let codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        if case .keyed = slot.content {} else { slot.content = .keyed([]) }
        return KeyedEncodingContainer(KeyedSlotEncoder<Key>(slot: slot, codingPath: codingPath))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        if case .unkeyed = slot.content {} else { slot.content = .unkeyed([]) }
        return UnkeyedSlotEncoder(slot: slot, codingPath: codingPath)
    }

    func singleValueContainer() -> any SingleValueEncodingContainer {
        SingleValueSlotEncoder(slot: slot, codingPath: codingPath)
    }
}

struct KeyedSlotEncoder<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let slot: EncodingSlot
    let codingPath: [any CodingKey]

    private func child(for key: Key) -> EncodingSlot {
        let child = EncodingSlot()
        guard case .keyed(var entries) = slot.content else { preconditionFailure("keyed container over a non-keyed slot") }
        entries.append((key.stringValue, child))
        slot.content = .keyed(entries)
        return child
    }

    mutating func encodeNil(forKey key: Key) throws { child(for: key).content = .null }
    mutating func encode<T: Encodable>(_ value: T, forKey key: Key) throws {
        try encodeValue(value, into: child(for: key), codingPath: codingPath + [key])
    }
    mutating func encode(_ value: Bool, forKey key: Key) throws { try encode(Box(value), forKey: key) }
    mutating func encode(_ value: String, forKey key: Key) throws { try encode(Box(value), forKey: key) }
    mutating func encode(_ value: Double, forKey key: Key) throws { try encode(Box(value), forKey: key) }
    mutating func encode(_ value: Float, forKey key: Key) throws { try encode(Box(value), forKey: key) }
    mutating func encode(_ value: Int, forKey key: Key) throws { try encode(Box(value), forKey: key) }
    mutating func encode(_ value: Int8, forKey key: Key) throws { try encode(Box(value), forKey: key) }
    mutating func encode(_ value: Int16, forKey key: Key) throws { try encode(Box(value), forKey: key) }
    mutating func encode(_ value: Int32, forKey key: Key) throws { try encode(Box(value), forKey: key) }
    mutating func encode(_ value: Int64, forKey key: Key) throws { try encode(Box(value), forKey: key) }
    mutating func encode(_ value: UInt, forKey key: Key) throws { try encode(Box(value), forKey: key) }
    mutating func encode(_ value: UInt8, forKey key: Key) throws { try encode(Box(value), forKey: key) }
    mutating func encode(_ value: UInt16, forKey key: Key) throws { try encode(Box(value), forKey: key) }
    mutating func encode(_ value: UInt32, forKey key: Key) throws { try encode(Box(value), forKey: key) }
    mutating func encode(_ value: UInt64, forKey key: Key) throws { try encode(Box(value), forKey: key) }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key)
        -> KeyedEncodingContainer<NestedKey> {
        SlotEncoder(slot: child(for: key), codingPath: codingPath + [key]).container(keyedBy: keyType)
    }
    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
        SlotEncoder(slot: child(for: key), codingPath: codingPath + [key]).unkeyedContainer()
    }
    mutating func superEncoder() -> any Encoder {
        SlotEncoder(slot: child(for: Key(stringValue: "super")!), codingPath: codingPath)
    }
    mutating func superEncoder(forKey key: Key) -> any Encoder {
        SlotEncoder(slot: child(for: key), codingPath: codingPath + [key])
    }
}

/// Routes a primitive through the single-value container (the generic path would otherwise recurse into it).
private struct Box<Value: Encodable>: Encodable {
    let value: Value
    init(_ value: Value) { self.value = value }
    func encode(to encoder: any Encoder) throws { try value.encode(to: encoder) }
}

struct UnkeyedSlotEncoder: UnkeyedEncodingContainer {
    let slot: EncodingSlot
    let codingPath: [any CodingKey]

    var count: Int {
        if case .unkeyed(let slots) = slot.content { return slots.count }
        return 0
    }

    private func next() -> EncodingSlot {
        let child = EncodingSlot()
        guard case .unkeyed(var slots) = slot.content else { preconditionFailure("unkeyed container over a non-unkeyed slot") }
        slots.append(child)
        slot.content = .unkeyed(slots)
        return child
    }

    mutating func encodeNil() throws { next().content = .null }
    mutating func encode<T: Encodable>(_ value: T) throws {
        let path = codingPath + [IndexKey(count)]
        try encodeValue(value, into: next(), codingPath: path)
    }
    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type) -> KeyedEncodingContainer<NestedKey> {
        let path = codingPath + [IndexKey(count)]
        return SlotEncoder(slot: next(), codingPath: path).container(keyedBy: keyType)
    }
    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        let path = codingPath + [IndexKey(count)]
        return SlotEncoder(slot: next(), codingPath: path).unkeyedContainer()
    }
    mutating func superEncoder() -> any Encoder {
        let path = codingPath + [IndexKey(count)]
        return SlotEncoder(slot: next(), codingPath: path)
    }
}

struct SingleValueSlotEncoder: SingleValueEncodingContainer {
    let slot: EncodingSlot
    let codingPath: [any CodingKey]

    mutating func encodeNil() throws { slot.content = .null }
    mutating func encode(_ value: Bool) throws { slot.content = .value([value ? 1 : 0]) }
    mutating func encode(_ value: String) throws { slot.content = .value(Array(value.utf8)) }
    mutating func encode(_ value: Double) throws { slot.content = .value(littleEndianBytes(value.bitPattern)) }
    mutating func encode(_ value: Float) throws { slot.content = .value(littleEndianBytes(value.bitPattern)) }
    mutating func encode(_ value: Int) throws { slot.content = .value(littleEndianBytes(Int64(value))) }
    mutating func encode(_ value: Int8) throws { slot.content = .value(littleEndianBytes(value)) }
    mutating func encode(_ value: Int16) throws { slot.content = .value(littleEndianBytes(value)) }
    mutating func encode(_ value: Int32) throws { slot.content = .value(littleEndianBytes(value)) }
    mutating func encode(_ value: Int64) throws { slot.content = .value(littleEndianBytes(value)) }
    mutating func encode(_ value: UInt) throws { slot.content = .value(littleEndianBytes(UInt64(value))) }
    mutating func encode(_ value: UInt8) throws { slot.content = .value(littleEndianBytes(value)) }
    mutating func encode(_ value: UInt16) throws { slot.content = .value(littleEndianBytes(value)) }
    mutating func encode(_ value: UInt32) throws { slot.content = .value(littleEndianBytes(value)) }
    mutating func encode(_ value: UInt64) throws { slot.content = .value(littleEndianBytes(value)) }
    mutating func encode<T: Encodable>(_ value: T) throws { try encodeValue(value, into: slot, codingPath: codingPath) }
}

// MARK: - Decoding

func decodeValue<T: Decodable>(_ type: T.Type, from node: BinaryNode, codingPath: [any CodingKey],
                                userInfo: [CodingUserInfoKey: Any]) throws -> T {
    if T.self == [UInt8].self || T.self == Data.self {
        guard case .value(let bytes) = node else {
            throw BinaryCodingError.typeMismatch(path: pathText(codingPath), expected: "a byte array", found: node.kind)
        }
        return (T.self == Data.self ? Data(bytes) as! T : Array(bytes) as! T)
    }
    return try T(from: NodeDecoder(node: node, codingPath: codingPath, userInfo: userInfo))
}

struct NodeDecoder: Decoder {
    let node: BinaryNode
    let codingPath: [any CodingKey]
    let userInfo: [CodingUserInfoKey: Any]

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        guard case .keyed(let entries) = node else {
            throw BinaryCodingError.typeMismatch(path: pathText(codingPath), expected: "a keyed container", found: node.kind)
        }
        return KeyedDecodingContainer(KeyedNodeDecoder<Key>(entries: entries, codingPath: codingPath, userInfo: userInfo))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        guard case .unkeyed(let nodes) = node else {
            throw BinaryCodingError.typeMismatch(path: pathText(codingPath), expected: "an unkeyed container", found: node.kind)
        }
        return UnkeyedNodeDecoder(nodes: nodes, codingPath: codingPath, userInfo: userInfo)
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer {
        SingleValueNodeDecoder(node: node, codingPath: codingPath, userInfo: userInfo)
    }
}

struct KeyedNodeDecoder<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let codingPath: [any CodingKey]
    private let entries: [String: BinaryNode]
    let allKeys: [Key]

    let userInfo: [CodingUserInfoKey: Any]

    init(entries: [(String, BinaryNode)], codingPath: [any CodingKey], userInfo: [CodingUserInfoKey: Any]) {
        self.codingPath = codingPath
        self.userInfo = userInfo
        var table: [String: BinaryNode] = [:]
        for (key, node) in entries where table[key] == nil { table[key] = node }
        self.entries = table
        self.allKeys = entries.compactMap { Key(stringValue: $0.0) }
    }

    private func node(for key: Key) throws -> BinaryNode {
        guard let node = entries[key.stringValue] else {
            throw BinaryCodingError.keyNotFound(path: pathText(codingPath), key: key.stringValue)
        }
        return node
    }

    func contains(_ key: Key) -> Bool { entries[key.stringValue] != nil }
    func decodeNil(forKey key: Key) throws -> Bool {
        if case .null = try node(for: key) { return true }
        return false
    }
    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
        try decodeValue(type, from: node(for: key), codingPath: codingPath + [key], userInfo: userInfo)
    }
    func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) throws
        -> KeyedDecodingContainer<NestedKey> {
        try NodeDecoder(node: node(for: key), codingPath: codingPath + [key], userInfo: userInfo).container(keyedBy: type)
    }
    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        try NodeDecoder(node: node(for: key), codingPath: codingPath + [key], userInfo: userInfo).unkeyedContainer()
    }
    func superDecoder() throws -> any Decoder {
        NodeDecoder(node: entries["super"] ?? .null, codingPath: codingPath, userInfo: userInfo)
    }
    func superDecoder(forKey key: Key) throws -> any Decoder {
        NodeDecoder(node: entries[key.stringValue] ?? .null, codingPath: codingPath + [key], userInfo: userInfo)
    }
}

struct UnkeyedNodeDecoder: UnkeyedDecodingContainer {
    let nodes: [BinaryNode]
    let codingPath: [any CodingKey]
    private(set) var currentIndex = 0

    let userInfo: [CodingUserInfoKey: Any]

    init(nodes: [BinaryNode], codingPath: [any CodingKey], userInfo: [CodingUserInfoKey: Any]) {
        self.nodes = nodes
        self.userInfo = userInfo
        self.codingPath = codingPath
    }

    var count: Int? { nodes.count }
    var isAtEnd: Bool { currentIndex >= nodes.count }

    private mutating func next() throws -> (BinaryNode, [any CodingKey]) {
        guard !isAtEnd else { throw BinaryCodingError.endOfContainer(path: pathText(codingPath)) }
        defer { currentIndex += 1 }
        return (nodes[currentIndex], codingPath + [IndexKey(currentIndex)])
    }

    mutating func decodeNil() throws -> Bool {
        guard !isAtEnd else { throw BinaryCodingError.endOfContainer(path: pathText(codingPath)) }
        if case .null = nodes[currentIndex] {
            currentIndex += 1
            return true
        }
        return false
    }
    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T {
        let (node, path) = try next()
        return try decodeValue(type, from: node, codingPath: path, userInfo: userInfo)
    }
    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws -> KeyedDecodingContainer<NestedKey> {
        let (node, path) = try next()
        return try NodeDecoder(node: node, codingPath: path, userInfo: userInfo).container(keyedBy: type)
    }
    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer {
        let (node, path) = try next()
        return try NodeDecoder(node: node, codingPath: path, userInfo: userInfo).unkeyedContainer()
    }
    mutating func superDecoder() throws -> any Decoder {
        let (node, path) = try next()
        return NodeDecoder(node: node, codingPath: path, userInfo: userInfo)
    }
}

struct SingleValueNodeDecoder: SingleValueDecodingContainer {
    let node: BinaryNode
    let codingPath: [any CodingKey]
    let userInfo: [CodingUserInfoKey: Any]

    func decodeNil() -> Bool {
        if case .null = node { return true }
        return false
    }

    private func bytes(_ expected: String) throws -> ArraySlice<UInt8> {
        guard case .value(let bytes) = node else {
            throw BinaryCodingError.typeMismatch(path: pathText(codingPath), expected: expected, found: node.kind)
        }
        return bytes
    }

    private func integer<I: FixedWidthInteger>(_ type: I.Type) throws -> I {
        let raw = try bytes("\(I.self)")
        let width = I.bitWidth / 8
        guard raw.count == width else {
            throw BinaryCodingError.invalidValue(path: pathText(codingPath),
                                                 reason: "\(I.self) needs \(width) bytes, found \(raw.count)")
        }
        var value = I.zero
        for (index, byte) in raw.enumerated() { value |= I(truncatingIfNeeded: byte) << (8 * index) }
        return value
    }

    private func narrowed<Wide: FixedWidthInteger, Narrow: FixedWidthInteger>(_ wide: Wide, to type: Narrow.Type) throws -> Narrow {
        guard let value = Narrow(exactly: wide) else {
            throw BinaryCodingError.invalidValue(path: pathText(codingPath), reason: "\(wide) does not fit \(Narrow.self)")
        }
        return value
    }

    func decode(_ type: Bool.Type) throws -> Bool {
        let raw = try bytes("Bool")
        guard raw.count == 1, let byte = raw.first, byte <= 1 else {
            throw BinaryCodingError.invalidValue(path: pathText(codingPath), reason: "Bool must be one byte 0 or 1")
        }
        return byte == 1
    }
    func decode(_ type: String.Type) throws -> String {
        guard let string = String(validating: try bytes("String"), as: UTF8.self) else {
            throw BinaryCodingError.invalidValue(path: pathText(codingPath), reason: "string is not valid UTF-8")
        }
        return string
    }
    func decode(_ type: Double.Type) throws -> Double { Double(bitPattern: try integer(UInt64.self)) }
    func decode(_ type: Float.Type) throws -> Float { Float(bitPattern: try integer(UInt32.self)) }
    func decode(_ type: Int.Type) throws -> Int { try narrowed(try integer(Int64.self), to: Int.self) }
    func decode(_ type: Int8.Type) throws -> Int8 { try integer(Int8.self) }
    func decode(_ type: Int16.Type) throws -> Int16 { try integer(Int16.self) }
    func decode(_ type: Int32.Type) throws -> Int32 { try integer(Int32.self) }
    func decode(_ type: Int64.Type) throws -> Int64 { try integer(Int64.self) }
    func decode(_ type: UInt.Type) throws -> UInt { try narrowed(try integer(UInt64.self), to: UInt.self) }
    func decode(_ type: UInt8.Type) throws -> UInt8 { try integer(UInt8.self) }
    func decode(_ type: UInt16.Type) throws -> UInt16 { try integer(UInt16.self) }
    func decode(_ type: UInt32.Type) throws -> UInt32 { try integer(UInt32.self) }
    func decode(_ type: UInt64.Type) throws -> UInt64 { try integer(UInt64.self) }
    func decode<T: Decodable>(_ type: T.Type) throws -> T { try decodeValue(type, from: node, codingPath: codingPath, userInfo: userInfo) }
}
