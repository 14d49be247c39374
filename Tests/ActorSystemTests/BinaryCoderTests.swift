import Foundation
import Testing
@testable import ActorSystem

struct Everything: Codable, Equatable {
    struct Inner: Codable, Equatable { var name: String; var values: [Double] }
    enum Shape: Codable, Equatable { case circle(radius: Double), square(Int), empty }
    var flag: Bool
    var i8: Int8, i16: Int16, i32: Int32, i64: Int64, int: Int
    var u8: UInt8, u16: UInt16, u32: UInt32, u64: UInt64, uint: UInt
    var float: Float, double: Double
    var text: String
    var missing: String?
    var present: Int?
    var nested: [Inner]
    var shapes: [Shape]
    var table: [String: [Int]]
    var bytes: [UInt8]
    var data: Data
    var optionals: [Int?]
}

@Suite("Binary coder")
struct BinaryCoderTests {
    let sample = Everything(
        flag: true, i8: -8, i16: -1600, i32: -320_000, i64: .min, int: -42,
        u8: 255, u16: 65535, u32: 4_000_000_000, u64: .max, uint: 7,
        float: -1.5, double: .pi, text: "naïve 🦙 text", missing: nil, present: 3,
        nested: [.init(name: "a", values: [1, -0.0, .infinity]), .init(name: "", values: [])],
        shapes: [.circle(radius: 2.5), .square(4), .empty],
        table: ["x": [1, 2], "y": []],
        bytes: Array(0...255), data: Data([1, 2, 3]), optionals: [1, nil, 3])

    @Test("round trip of every primitive, optionals, nested containers, enums with payloads, dictionaries and bytes")
    func roundTrip() throws {
        let bytes = try BinaryEncoder().encode(sample)
        #expect(try BinaryDecoder().decode(Everything.self, from: bytes) == sample)
        let nan = try BinaryDecoder().decode(Double.self, from: BinaryEncoder().encode(Double.nan))
        #expect(nan.isNaN)
    }

    @Test("layout: tag, little-endian u32 length, little-endian value; keyed entries keep their keys")
    func layout() throws {
        #expect(try BinaryEncoder().encode(UInt16(0x0102)) == [0x01, 2, 0, 0, 0, 0x02, 0x01])
        #expect(try BinaryEncoder().encode(Int?.none) == [0x00])
        #expect(try BinaryEncoder().encode("hé") == [0x01, 3, 0, 0, 0, 0x68, 0xC3, 0xA9])
        #expect(try BinaryEncoder().encode([true, false]) == [0x03, 2, 0, 0, 0, 0x01, 1, 0, 0, 0, 1, 0x01, 1, 0, 0, 0, 0])
        struct Point: Codable { var x: UInt8 }
        #expect(try BinaryEncoder().encode(Point(x: 9)) == [0x02, 1, 0, 0, 0, 1, 0, 0, 0, 0x78, 0x01, 1, 0, 0, 0, 9])
        // A byte array is one value node, not one node per byte.
        #expect(try BinaryEncoder().encode([UInt8](repeating: 0xAB, count: 1000)).count == 1 + 4 + 1000)
    }

    @Test("every truncation of a valid encoding fails with a typed error, never a crash")
    func truncations() throws {
        let bytes = try BinaryEncoder().encode(sample)
        for length in 0..<bytes.count {
            #expect(throws: BinaryCodingError.self) { try BinaryDecoder().decode(Everything.self, from: Array(bytes[..<length])) }
        }
        #expect { try BinaryDecoder().decode(Int64.self, from: [0x01, 8, 0, 0, 0, 1, 2]) } throws: { error in
            error as? BinaryCodingError == .truncated(offset: 5, needed: 8, available: 2)
        }
    }

    @Test("malformed input: unknown tag, impossible count, trailing bytes, bad Bool, wrong width, bad UTF-8, deep nesting")
    func malformed() throws {
        func failure<T: Decodable>(_ type: T.Type, _ bytes: [UInt8]) -> BinaryCodingError? {
            let result = Result { try BinaryDecoder().decode(type, from: bytes) }
            guard case .failure(let error) = result else { return nil }
            return error as? BinaryCodingError
        }
        #expect(failure(Int.self, [0x07]) == .malformed(offset: 0, reason: "unknown tag 0x7"))
        #expect(failure([Int].self, [0x03, 0xFF, 0xFF, 0xFF, 0x7F]) == .malformed(
            offset: 1, reason: "count 2147483647 cannot fit in the 0 bytes left"))
        #expect(failure(UInt8.self, [0x01, 1, 0, 0, 0, 5, 0xEE]) == .trailingBytes(offset: 6, count: 1))
        #expect(failure(Bool.self, [0x01, 1, 0, 0, 0, 2]) == .invalidValue(path: "<root>", reason: "Bool must be one byte 0 or 1"))
        #expect(failure(Int64.self, try BinaryEncoder().encode(Int32(5))) == .invalidValue(
            path: "<root>", reason: "Int64 needs 8 bytes, found 4"))
        #expect(failure(String.self, [0x01, 2, 0, 0, 0, 0xC3, 0x28]) == .invalidValue(path: "<root>", reason: "string is not valid UTF-8"))
        #expect(failure([Int].self, try BinaryEncoder().encode("x")) == .typeMismatch(
            path: "<root>", expected: "an unkeyed container", found: "a 1-byte value"))
        struct Needs: Decodable { var required: Int }
        struct Has: Encodable { var other: Int }
        #expect(failure(Needs.self, try BinaryEncoder().encode(Has(other: 1))) == .keyNotFound(path: "<root>", key: "required"))
        let deep = [UInt8](repeating: 0x03, count: 0) + Array(repeating: [0x03, 1, 0, 0, 0], count: 200).flatMap { $0 } + [0x00]
        #expect(failure([Int].self, deep) == .nestingTooDeep(limit: 128))
        #expect(failure(Int8.self, try BinaryEncoder().encode(Int.max)) == .invalidValue(path: "<root>", reason: "Int8 needs 1 bytes, found 8"))
    }

    @Test("descriptions name the offset or the coding path")
    func descriptions() throws {
        struct Wrapper: Decodable { var items: [Bool] }
        struct Bad: Encodable { var items: [UInt8] = [1, 9]; func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            var list = container.nestedUnkeyedContainer(forKey: .items)
            for item in items { try list.encode(Int8(bitPattern: item)) }
        }; enum CodingKeys: String, CodingKey { case items } }
        do {
            _ = try BinaryDecoder().decode(Wrapper.self, from: try BinaryEncoder().encode(Bad()))
            Issue.record("decoding 9 as a Bool succeeded")
        } catch let error as BinaryCodingError {
            #expect(error.description == "at items.[1]: Bool must be one byte 0 or 1")
        }
        #expect(BinaryCodingError.truncated(offset: 5, needed: 8, available: 2).description
            == "binary value truncated at byte 5: needs 8 more bytes, 2 left")
    }
}

@Suite("Call envelope")
struct CallEnvelopeTests {
    @Test("round trip; layout starts with version 1 and little-endian lengths")
    func roundTrip() throws {
        let envelope = CallEnvelope(recipient: "worker", target: "$s4Test3FooC3baryyYaKFTE", arguments: [[1, 2, 3], [], [9]])
        let bytes = envelope.encoded()
        #expect(Array(bytes.prefix(11)) == [1, 6, 0, 0, 0] + Array("worker".utf8))
        #expect(try CallEnvelope.decode(bytes) == envelope)
    }

    @Test("truncated, trailing, generic or foreign-version envelopes are refused with a typed error")
    func malformed() throws {
        let bytes = CallEnvelope(recipient: "w", target: "t", arguments: [[1, 2]]).encoded()
        for length in 0..<bytes.count {
            #expect(throws: ClusterActorSystemError.self) { try CallEnvelope.decode(Array(bytes[..<length])) }
        }
        #expect { try CallEnvelope.decode(bytes + [0]) } throws: { error in
            error as? ClusterActorSystemError == .malformedInvocation(reason: "1 bytes after the last argument")
        }
        var tooGeneric = bytes
        tooGeneric[11] = 9  // generic substitution count (after version, two 1-byte strings with u32 lengths)
        #expect { try CallEnvelope.decode(tooGeneric) } throws: { error in
            error as? ClusterActorSystemError == .genericSubstitutionsUnsupported(target: "t")
        }
        // A substitution that is no actor-system type (a generic distributed function) is refused when decoded.
        let generic = CallEnvelope(recipient: "w", target: "t", substitutions: [_mangledTypeName(Int.self)!], arguments: [])
        let decoded = try CallEnvelope.decode(generic.encoded())
        #expect(decoded == generic)
        var decoder = ClusterInvocationDecoder(envelope: decoded, system: nil)
        #expect { try decoder.decodeGenericSubstitutions() } throws: { error in
            error as? ClusterActorSystemError == .genericSubstitutionsUnsupported(target: "t")
        }
        var foreign = bytes
        foreign[0] = 2
        #expect { try CallEnvelope.decode(foreign) } throws: { error in
            error as? ClusterActorSystemError == .malformedInvocation(reason: "envelope version 2 (this node speaks 1)")
        }
    }
}

@Suite("Invocation decoder")
struct InvocationDecoderTests {
    @Test("arguments decode in order; a missing or mistyped argument names the target and its index")
    func argumentErrors() async throws {
        let system = try await startSystem("node-a")
        try await withSystems([system]) {
            let envelope = CallEnvelope(recipient: "w", target: "target-x",
                                        arguments: [try BinaryEncoder().encode("text")[...], try BinaryEncoder().encode(Int32(5))[...]])
            var decoder = ClusterInvocationDecoder(envelope: envelope, system: system)
            #expect(try decoder.decodeNextArgument() as String == "text")
            #expect { _ = try decoder.decodeNextArgument() as Int64 } throws: { error in
                guard case .argumentDecodingFailed(let target, let index, let reason) = error as? ClusterActorSystemError else { return false }
                return target == "target-x" && index == 1 && reason.contains("Int64 needs 8 bytes")
            }
            #expect(throws: ClusterActorSystemError.argumentDecodingFailed(
                target: "target-x", index: 2, reason: "the call carries only 2 argument(s)")) {
                _ = try decoder.decodeNextArgument() as Int
            }
        }
    }
}
