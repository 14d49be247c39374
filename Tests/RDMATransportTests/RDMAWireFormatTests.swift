import Testing
@testable import RDMATransport

@Suite("RDMA ring immediates and connection information")
struct RDMAWireFormatTests {
    @Test("immediates round-trip", arguments: [
        RDMARing.Message.data(slot: 0, first: true, last: true, abort: false),
        .data(slot: 65535, first: false, last: true, abort: true),
        .data(slot: 17, first: false, last: false, abort: false),
        .credit(count: 1), .credit(count: 65535), .close,
    ])
    func immediates(message: RDMARing.Message) {
        #expect(RDMARing.message(RDMARing.immediate(message)) == message)
    }

    @Test("immediates with reserved bits or an unknown kind are rejected",
          arguments: [UInt32(1) << 19, UInt32(1) << 29, UInt32(3) << 30, UInt32(1) << 30, UInt32(1) << 30 | UInt32(1) << 16,
                      UInt32(2) << 30 | 1])
    func badImmediates(immediate: UInt32) {
        #expect(RDMARing.message(immediate) == nil)
    }

    static let info = RDMAConnectionInfo(
        queuePairNumber: 0x1234, packetSequenceNumber: 0xabcdef, mtuCode: 5, lid: 0, port: 1, addressByGID: true,
        gid: FakeLink.endpoint(1).gid, ringAddress: 0x7f00_0000_1000, ringKey: 0xdead_beef, slotBytes: 1 << 20, slotCount: 16)

    @Test("connection information round-trips through its 56 bytes")
    func roundTrip() throws {
        let bytes = Self.info.encoded()
        #expect(bytes.count == RDMAConnectionInfo.encodedLength)
        #expect(try RDMAConnectionInfo.decode(bytes, peer: "p") == Self.info)
    }

    static func mutated(_ change: (inout [UInt8]) -> Void) -> [UInt8] {
        var bytes = info.encoded()
        change(&bytes)
        return bytes
    }

    static func withInfo(_ change: (inout RDMAConnectionInfo) -> Void) -> [UInt8] {
        var copy = info
        change(&copy)
        return copy.encoded()
    }

    struct Malformed: Sendable, CustomTestStringConvertible {
        let bytes: [UInt8]
        let reason: String
        var testDescription: String { reason }
    }

    static let malformedCases: [Malformed] = [
        Malformed(bytes: mutated { $0.removeLast() }, reason: "55 bytes"),
        Malformed(bytes: mutated { $0[0] = 0x41 }, reason: "bad magic"),
        Malformed(bytes: withInfo { $0.queuePairNumber = 0 }, reason: "QP number"),
        Malformed(bytes: withInfo { $0.queuePairNumber = 1 << 24 }, reason: "QP number"),
        Malformed(bytes: withInfo { $0.packetSequenceNumber = 1 << 24 }, reason: "PSN"),
        Malformed(bytes: withInfo { $0.mtuCode = 6 }, reason: "MTU code"),
        Malformed(bytes: withInfo { $0.port = 0 }, reason: "port 0"),
        Malformed(bytes: withInfo { $0.slotCount = 0 }, reason: "0 slots"),
        Malformed(bytes: withInfo { $0.slotBytes = 16 }, reason: "slot size"),
        Malformed(bytes: withInfo { $0.slotBytes = 128 << 20 }, reason: "slot size"),
        Malformed(bytes: withInfo { $0.ringAddress = 0 }, reason: "ring address"),
        Malformed(bytes: withInfo { $0.ringAddress = UInt64.max - 100 }, reason: "ring address"),
        Malformed(bytes: withInfo { $0.gid = VerbsGID(bytes: Array(repeating: 0, count: 16))! }, reason: "GID is zero"),
        Malformed(bytes: mutated { $0[23] = 0x81 }, reason: "unknown flags"),
    ]

    @Test("malformed connection information is refused with the reason and the peer", arguments: malformedCases)
    func malformed(case malformed: Malformed) {
        do {
            _ = try RDMAConnectionInfo.decode(malformed.bytes, peer: "worker-7")
            Issue.record("accepted")
        } catch {
            #expect(error.description.contains("worker-7"))
            #expect(error.description.contains(malformed.reason), "\(error.description)")
        }
    }

    @Test("another version is named")
    func version() {
        #expect(throws: RDMAConnectionInfoError.unsupportedVersion(peer: "p", version: 2)) {
            _ = try RDMAConnectionInfo.decode(Self.mutated { $0[5] = 2 }, peer: "p")
        }
    }
}
