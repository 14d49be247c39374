import Distributed
import Foundation

/// Records a distributed call's arguments, each binary-encoded on its own (see ``BinaryEncoder``).
public struct ClusterInvocationEncoder: DistributedTargetInvocationEncoder {
    public typealias SerializationRequirement = Codable

    var arguments: [[UInt8]] = []
    /// Mangled type names. Our distributed functions are monomorphic; the one substitution that occurs is the actor
    /// system type of a `@Resolvable` protocol's stub, which the receiver checks (``ClusterInvocationDecoder``).
    var genericSubstitutions: [String] = []

    public mutating func recordGenericSubstitution<T>(_ type: T.Type) throws {
        guard let name = _mangledTypeName(type) else {
            throw ClusterActorSystemError.genericSubstitutionsUnsupported(target: String(reflecting: type))
        }
        genericSubstitutions.append(name)
    }

    public mutating func recordArgument<Value: Codable>(_ argument: RemoteCallArgument<Value>) throws {
        arguments.append(try BinaryEncoder().encode(argument.value))
    }

    public mutating func recordReturnType<R: Codable>(_ type: R.Type) throws {}
    public mutating func recordErrorType<E: Error>(_ type: E.Type) throws {}
    public mutating func doneRecording() throws {}
}

/// Hands the received arguments to the distributed thunk, in order.
public struct ClusterInvocationDecoder: DistributedTargetInvocationDecoder {
    public typealias SerializationRequirement = Codable

    let envelope: CallEnvelope
    private let decoder: BinaryDecoder
    private var next = 0

    init(envelope: CallEnvelope, system: ClusterActorSystem?) {
        self.envelope = envelope
        var decoder = BinaryDecoder()
        if let system { decoder.userInfo[.actorSystemKey] = system }
        self.decoder = decoder
    }

    /// Only actor and actor-system types are accepted: they come from `@Resolvable` stubs (the distributed actor a
    /// protocol requirement is called on). Anything else would be a generic distributed function, which the cluster
    /// does not have.
    public mutating func decodeGenericSubstitutions() throws -> [Any.Type] {
        try envelope.substitutions.map { name in
            guard let type = _typeByName(name),
                  type is any DistributedActorSystem.Type || type is any DistributedActor.Type else {
                throw ClusterActorSystemError.genericSubstitutionsUnsupported(target: envelope.target)
            }
            return type
        }
    }

    public mutating func decodeNextArgument<Argument: Codable>() throws -> Argument {
        guard next < envelope.arguments.count else {
            throw ClusterActorSystemError.argumentDecodingFailed(
                target: envelope.target, index: next, reason: "the call carries only \(envelope.arguments.count) argument(s)")
        }
        defer { next += 1 }
        do {
            return try decoder.decode(Argument.self, fromSlice: envelope.arguments[next])
        } catch {
            throw ClusterActorSystemError.argumentDecodingFailed(target: envelope.target, index: next, reason: "\(error)")
        }
    }

    public mutating func decodeErrorType() throws -> Any.Type? { nil }
    public mutating func decodeReturnType() throws -> Any.Type? { nil }
}

/// The body of an actor-call REQUEST (little-endian; Docs/wire-protocol.md, "Actor calls"):
/// `u8 version ‖ u32 len ‖ recipient name ‖ u32 len ‖ target identifier ‖ u32 generic substitution count
///  ‖ count × (u32 len ‖ mangled type name) ‖ u32 argument count ‖ count × (u32 len ‖ binary-encoded argument)`.
struct CallEnvelope: Equatable {
    static let version: UInt8 = 1

    var recipient: String
    var target: String
    var substitutions: [String] = []
    var arguments: [ArraySlice<UInt8>]

    init(recipient: String, target: String, substitutions: [String] = [], arguments: [ArraySlice<UInt8>]) {
        self.recipient = recipient
        self.target = target
        self.substitutions = substitutions
        self.arguments = arguments
    }

    func encoded() -> [UInt8] {
        var out: [UInt8] = [Self.version]
        let recipientBytes = Array(recipient.utf8), targetBytes = Array(target.utf8)
        out.reserveCapacity(1 + 16 + recipientBytes.count + targetBytes.count + arguments.reduce(0) { $0 + 4 + $1.count })
        appendU32(recipientBytes.count, to: &out)
        out += recipientBytes
        appendU32(targetBytes.count, to: &out)
        out += targetBytes
        appendU32(substitutions.count, to: &out)
        for name in substitutions {
            let nameBytes = Array(name.utf8)
            appendU32(nameBytes.count, to: &out)
            out += nameBytes
        }
        appendU32(arguments.count, to: &out)
        for argument in arguments {
            appendU32(argument.count, to: &out)
            out += argument
        }
        return out
    }

    static func decode(_ bytes: [UInt8]) throws -> CallEnvelope {
        var reader = EnvelopeReader(bytes: bytes)
        let version = try reader.u8("version")
        guard version == Self.version else {
            throw ClusterActorSystemError.malformedInvocation(reason: "envelope version \(version) (this node speaks \(Self.version))")
        }
        let recipient = try reader.string("recipient name")
        let target = try reader.string("target identifier")
        let generic = try reader.u32("generic substitution count")
        guard generic <= 8 else { throw ClusterActorSystemError.genericSubstitutionsUnsupported(target: target) }
        var substitutions: [String] = []
        for index in 0..<generic { substitutions.append(try reader.string("generic substitution \(index)")) }
        let count = try reader.u32("argument count")
        guard count <= reader.remaining / 4 else {
            throw ClusterActorSystemError.malformedInvocation(reason: "argument count \(count) cannot fit in \(reader.remaining) bytes")
        }
        var arguments: [ArraySlice<UInt8>] = []
        for index in 0..<count { arguments.append(try reader.bytes(try reader.u32("argument \(index) length"), "argument \(index)")) }
        guard reader.remaining == 0 else {
            throw ClusterActorSystemError.malformedInvocation(reason: "\(reader.remaining) bytes after the last argument")
        }
        return CallEnvelope(recipient: recipient, target: target, substitutions: substitutions, arguments: arguments)
    }
}

/// The body of a RESPONSE to an actor call: `u8 status ‖ body`; status 0: body is the binary-encoded return value
/// (empty for Void); status 1: body is the binary-encoded ``RemoteErrorDetails``.
enum CallReply {
    static let returned: UInt8 = 0
    static let threw: UInt8 = 1

    static func value(_ encoded: [UInt8]) -> [UInt8] { [returned] + encoded }
    static func error(_ details: RemoteErrorDetails) -> [UInt8] {
        // RemoteErrorDetails holds strings and bytes only, so encoding cannot fail; the fallback keeps it never-empty.
        let body = (try? BinaryEncoder().encode(details))
            ?? (try! BinaryEncoder().encode(RemoteErrorDetails(typeName: "unencodable", message: "unencodable error", payload: nil)))
        return [threw] + body
    }
}

/// The call envelope's codec for the fuzz target: the decoded envelope, re-encoded, or the decoder's error.
package enum CallEnvelopeFuzzing {
    /// Decodes `bytes` as a REQUEST body; on success returns its re-encoding and its arguments.
    package static func decodeAndReencode(_ bytes: [UInt8]) throws -> (reencoded: [UInt8], arguments: [ArraySlice<UInt8>]) {
        let envelope = try CallEnvelope.decode(bytes)
        return (envelope.encoded(), envelope.arguments)
    }
}

func appendU32(_ value: Int, to out: inout [UInt8]) {
    let v = UInt32(value)
    out += [UInt8(v & 0xFF), UInt8((v >> 8) & 0xFF), UInt8((v >> 16) & 0xFF), UInt8(v >> 24)]
}

struct EnvelopeReader {
    let bytes: [UInt8]
    var offset = 0
    var remaining: Int { bytes.count - offset }

    mutating func bytes(_ count: Int, _ field: String) throws -> ArraySlice<UInt8> {
        guard count <= remaining else {
            throw ClusterActorSystemError.malformedInvocation(
                reason: "\(field) truncated at byte \(offset): needs \(count) bytes, \(remaining) left")
        }
        defer { offset += count }
        return bytes[offset..<(offset + count)]
    }

    mutating func u8(_ field: String) throws -> UInt8 { try bytes(1, field).first! }

    mutating func u32(_ field: String) throws -> Int {
        let raw = try bytes(4, field)
        return raw.enumerated().reduce(0) { $0 | Int($1.element) << (8 * $1.offset) }
    }

    mutating func string(_ field: String) throws -> String {
        let raw = try bytes(try u32("\(field) length"), field)
        guard let text = String(validating: raw, as: UTF8.self) else {
            throw ClusterActorSystemError.malformedInvocation(reason: "\(field) is not valid UTF-8")
        }
        return text
    }
}

/// Captures what the distributed target returned or threw, as the reply bytes.
// @unchecked: the runtime hands one handler to one invocation, which completes it exactly once, on one task.
public final class ClusterResultHandler: DistributedTargetInvocationResultHandler, @unchecked Sendable {
    public typealias SerializationRequirement = Codable

    /// Written once by the invocation's task, read by the same task after `executeDistributedTarget` returns.
    var reply: [UInt8]?

    public func onReturn<Success: Codable>(value: Success) async throws {
        reply = CallReply.value(try BinaryEncoder().encode(value))
    }

    public func onReturnVoid() async throws {
        reply = CallReply.value([])
    }

    public func onThrow<Err: Error>(error: Err) async throws {
        reply = CallReply.error(RemoteErrorDetails(error: error))
    }
}
