import Logging
import NIOCore
import NIOPosix
import Testing
@testable import Transport

@Suite("Connection purpose and close reasons", .timeLimit(.minutes(1)))
struct ConnectionPurposeTests {
    @Test("HELLO carries the purpose: the server sees bulk or control; a HELLO without the byte means control")
    func purposeInHello() async throws {
        let purposes = Mailbox<ConnectionPurpose>()
        try await withServer(handler: ClosureHandler(onOpen: { purposes.put($0.purpose) })) { server in
            let bulk = try await connect(to: server, purpose: .bulk)
            #expect(bulk.purpose == .bulk)
            #expect(await purposes.take() == .bulk)
            let control = try await connect(to: server)
            #expect(await purposes.take() == .control)
            await bulk.close()
            await control.close()
        }
        let legacy = Handshake.Greeting(identity: worker, nonce: Handshake.makeNonce())
        #expect(try Handshake.Greeting.decode(legacy.encoded(), type: .hello).purpose == .control)
        var bad = Handshake.Greeting(identity: worker, nonce: Handshake.makeNonce(), purpose: .bulk).encoded()
        bad.setInteger(UInt8(9), at: bad.writerIndex - 1)
        #expect(throws: TransportError.protocolViolation(.malformedPayload(type: .hello, field: "connection purpose 9"))) {
            try Handshake.Greeting.decode(bad, type: .hello)
        }
        // CHALLENGE never carries one.
        let withTrailer = Handshake.Greeting(identity: worker, nonce: Handshake.makeNonce(), purpose: .bulk).encoded()
        #expect(throws: TransportError.self) { try Handshake.Greeting.decode(withTrailer, type: .challenge) }
    }

    @Test("closeReason says why: the peer closed, or the local side closed")
    func closeReasons() async throws {
        let serverSide = Mailbox<PeerConnection>()
        try await withServer(handler: ClosureHandler(onOpen: { serverSide.put($0) })) { server in
            let client = try await connect(to: server)
            let accepted = await serverSide.take()
            await client.close()
            #expect(await client.closeReason() == .connectionClosed(peer: coordinator.name))
            #expect(await accepted.closeReason() == .connectionClosed(peer: worker.name))
        }
    }

    @Test("the server reports refused handshakes on authenticationFailures, without the token")
    func authenticationFailureStream() async throws {
        try await withServer { server in
            await #expect(throws: TransportError.self) { _ = try await connect(to: server, token: token(wrongToken)) }
            var failures = server.authenticationFailures.makeAsyncIterator()
            let failure = try #require(await failures.next())
            #expect(failure.address.contains("127.0.0.1"))
            #expect(failure.claimedName == worker.name)
            #expect(!failure.description.contains(correctToken) && !failure.description.contains(wrongToken))
        }
    }
}
