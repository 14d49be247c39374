import Logging
import NIOCore
import NIOEmbedded
import NIOPosix
import Testing
@testable import Transport

/// Two EmbeddedChannels wired back to back, with every byte on the wire recorded.
final class EmbeddedPair {
    let client = EmbeddedChannel()
    let server = EmbeddedChannel()
    let clientAuth: EventLoopPromise<AuthenticatedPeer>
    let serverAuth: EventLoopPromise<AuthenticatedPeer>
    var wire: [UInt8] = []
    var framesSeen: [Frame] = []

    init(clientToken: ClusterToken?, serverToken: ClusterToken?, logger: Logger) throws {
        clientAuth = client.eventLoop.makePromise()
        serverAuth = server.eventLoop.makePromise()
        try installPipeline(on: server, side: .server, identity: coordinator, token: serverToken,
                            configuration: fastConfiguration(), logger: logger, authPromise: serverAuth)
        try installPipeline(on: client, side: .client, identity: worker, token: clientToken,
                            configuration: fastConfiguration(), logger: logger, authPromise: clientAuth)
        try server.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        try client.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 2)).wait()
    }

    /// Moves bytes both ways until neither side has anything to send. `tamper` may rewrite a frame in flight.
    func pump(tamper: (inout Frame) -> Void = { _ in }) throws {
        var moved = true
        while moved {
            moved = false
            for (from, to) in [(client, server), (server, client)] {
                while let bytes = try from.readOutbound(as: ByteBuffer.self) {
                    moved = true
                    var buffer = bytes
                    var rewritten = ByteBuffer()
                    while let frame = try FrameDecoder.decodeFrame(from: &buffer, limits: FrameLimits()) {
                        var frame = frame
                        tamper(&frame)
                        framesSeen.append(frame)
                        FrameEncoder.encode(frame, into: &rewritten)
                    }
                    wire += rewritten.readableBytesView
                    if to.isActive { _ = try? to.writeInbound(rewritten) }
                }
            }
        }
    }

    func result(_ promise: EventLoopPromise<AuthenticatedPeer>) -> Result<NodeIdentity, Error>? {
        var outcome: Result<NodeIdentity, Error>?
        promise.futureResult.assumeIsolated().whenComplete { outcome = $0.map(\.identity) }
        return outcome
    }

    func finish() {
        _ = try? client.finish(acceptAlreadyClosed: true)
        _ = try? server.finish(acceptAlreadyClosed: true)
    }
}

extension Array where Element == UInt8 {
    func contains(subsequence needle: [UInt8]) -> Bool {
        guard !needle.isEmpty, needle.count <= count else { return false }
        return (0...(count - needle.count)).contains { Array(self[$0..<($0 + needle.count)]) == needle }
    }
}

@Suite("Handshake", .timeLimit(.minutes(1)))
struct HandshakeTests {
    @Test("a PROOF replayed from an earlier session, and the server's MAC reflected as the client's PROOF, get REJECT")
    func replayedAndReflectedProofs() throws {
        let quietLogger = Logger(label: "t", factory: { _ in SwiftLogNoOpLogHandler() })
        // Session 1, honest: record the client's PROOF.
        let first = try EmbeddedPair(clientToken: token(correctToken), serverToken: token(correctToken), logger: quietLogger)
        try first.pump()
        let recorded = try #require(first.framesSeen.first { $0.type == .proof })
        first.finish()

        // Session 2: an attacker without the token replays it; fresh nonces make it worthless.
        let replay = try EmbeddedPair(clientToken: token(correctToken), serverToken: token(correctToken), logger: quietLogger)
        try replay.pump { frame in if frame.type == .proof { frame.payload = recorded.payload } }
        #expect(replay.framesSeen.contains { $0.type == .reject })
        #expect(throws: (any Error).self) { try replay.result(replay.serverAuth)?.get() }
        replay.finish()

        // Session 3: the server's own MAC over this very transcript, sent back as the client's PROOF; the roles'
        // labels differ, so it does not verify.
        let reflect = try EmbeddedPair(clientToken: token(correctToken), serverToken: token(correctToken), logger: quietLogger)
        var hello: ByteBuffer?
        try reflect.pump { frame in
            switch frame.type {
            case .hello: hello = frame.payload
            case .proof:
                let challenge = reflect.framesSeen.last { $0.type == .challenge }!.payload
                let transcript = Handshake.transcript(hello: hello!, challenge: challenge)
                frame.payload = ByteBuffer(bytes: Handshake.proof(label: Handshake.serverLabel, transcript: transcript,
                                                                  key: Handshake.key(for: token(correctToken))))
            default: break
            }
        }
        #expect(reflect.framesSeen.contains { $0.type == .reject })
        #expect(throws: (any Error).self) { try reflect.result(reflect.serverAuth)?.get() }
        reflect.finish()
    }

    @Test("matching tokens: both sides authenticate and learn each other's identity; the token never crosses the wire")
    func mutualSuccessWithoutTokenOnWire() throws {
        let logs = LogRecorder()
        let pair = try EmbeddedPair(clientToken: token(correctToken), serverToken: token(correctToken), logger: logs.logger("pair"))
        defer { pair.finish() }
        try pair.pump()
        #expect(try pair.result(pair.clientAuth)?.get() == coordinator)
        #expect(try pair.result(pair.serverAuth)?.get() == worker)
        #expect(pair.framesSeen.map(\.type) == [.hello, .challenge, .proof, .accept])
        #expect(!pair.wire.isEmpty)
        #expect(!pair.wire.contains(subsequence: Array(correctToken.utf8)))
        #expect(!pair.wire.contains(subsequence: Array(correctToken.utf8.prefix(8))))
        #expect(!logs.all.joined().contains(correctToken))
    }

    @Test("wrong token: the server refuses, both sides fail with authenticationFailed, no token or MAC in logs")
    func wrongTokenRefusedBothSides() throws {
        let logs = LogRecorder()
        let pair = try EmbeddedPair(clientToken: token(wrongToken), serverToken: token(correctToken), logger: logs.logger("pair"))
        defer { pair.finish() }
        try pair.pump()
        let clientResult = try #require(pair.result(pair.clientAuth))
        let serverResult = try #require(pair.result(pair.serverAuth))
        #expect { try clientResult.get() } throws: { error in
            guard case .authenticationFailed(let peer, _) = error as? TransportError else { return false }
            return peer == coordinator.name
        }
        #expect { try serverResult.get() } throws: { error in
            guard case .authenticationFailed(let peer, _) = error as? TransportError else { return false }
            return peer == worker.name
        }
        #expect(pair.framesSeen.map(\.type) == [.hello, .challenge, .proof, .reject])
        #expect(!pair.server.isActive && !pair.client.isActive)
        #expect(logs.contains("refusing \(worker)"))
        let logText = logs.all.joined()
        #expect(!logText.contains(correctToken) && !logText.contains(wrongToken))
        let proofMAC = try #require(pair.framesSeen.first { $0.type == .proof }).payload
        let macHex = proofMAC.readableBytesView.map { String(format: "%02x", $0) }.joined()
        #expect(!logText.lowercased().contains(macHex))
        #expect(!pair.wire.contains(subsequence: Array(wrongToken.utf8)))
    }

    @Test("a server that cannot prove the token is refused by the client (mutual authentication)")
    func forgedAcceptRefusedByClient() throws {
        let pair = try EmbeddedPair(clientToken: token(correctToken), serverToken: token(correctToken),
                                    logger: Logger(label: "t", factory: { _ in SwiftLogNoOpLogHandler() }))
        defer { pair.finish() }
        try pair.pump { frame in
            if frame.type == .accept { frame.payload = ByteBuffer(bytes: [UInt8](repeating: 0x5A, count: 32)) }
        }
        #expect { try pair.result(pair.clientAuth)?.get() } throws: { error in
            guard case .authenticationFailed = error as? TransportError else { return false }
            return true
        }
        #expect(!pair.client.isActive)
    }

    @Test("frames other than handshake frames before authentication close the connection")
    func requestBeforeHandshakeClosesEmbedded() throws {
        let server = EmbeddedChannel()
        defer { _ = try? server.finish(acceptAlreadyClosed: true) }
        let auth = server.eventLoop.makePromise(of: AuthenticatedPeer.self)
        try installPipeline(on: server, side: .server, identity: coordinator, token: token(correctToken),
                            configuration: fastConfiguration(), logger: Logger(label: "t"), authPromise: auth)
        try server.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        try server.writeInbound(frameBytes(Frame(type: .request, correlationID: 1, payload: ByteBuffer(bytes: [0, 1]))))
        #expect(!server.isActive)
        var outcome: Result<AuthenticatedPeer, Error>?
        auth.futureResult.assumeIsolated().whenComplete { outcome = $0 }
        #expect(throws: TransportError.protocolViolation(.unexpectedFrame(type: .request, state: "awaiting authentication"))) {
            try outcome?.get()
        }
    }

    @Test("over TCP: wrong token refused with a typed error, and the server keeps serving a correct peer")
    func wrongTokenThenCorrectPeer() async throws {
        let logs = LogRecorder()
        try await withServer(logger: logs.logger("server")) { server in
            await #expect(throws: TransportError.authenticationFailed(
                peer: coordinator.name, reason: "refused by peer: cluster token mismatch: proof rejected by \(coordinator.name)")) {
                _ = try await connect(to: server, token: token(wrongToken))
            }
            await #expect(throws: TransportError.self) { _ = try await connect(to: server, token: nil) }
            let good = try await connect(to: server)
            #expect(good.peer == coordinator)
            let answer = try await good.call(type: 1, payload: ByteBuffer(string: "still here"))
            #expect(answer == ByteBuffer(string: "still here"))
            await good.close()
        }
        #expect(logs.contains("did not prove knowledge of the cluster token"))
        #expect(!logs.all.joined().contains(correctToken) && !logs.all.joined().contains(wrongToken))
    }

    @Test("no token: binding a non-loopback address is refused and logged; loopback works and says so")
    func noTokenLoopbackOnly() async throws {
        let logs = LogRecorder()
        await #expect(throws: TransportError.self) {
            _ = try await TransportServer.bind(host: "0.0.0.0", port: 0, identity: coordinator, token: nil,
                                               logger: logs.logger("server"))
        }
        #expect(logs.contains("refusing to listen on"))
        try await withServer(token: nil, logger: logs.logger("server")) { server in
            let connection = try await connect(to: server, token: nil)
            #expect(try await connection.call(type: 2, payload: ByteBuffer(string: "x")) == ByteBuffer(string: "x"))
            await connection.close()
            // A node that has a token never accepts a token-less server.
            await #expect(throws: TransportError.self) { _ = try await connect(to: server, token: token(correctToken)) }
        }
        #expect(logs.contains("no cluster token: listening on loopback"))
    }

    @Test("short tokens and over-long names are refused")
    func configurationChecks() async throws {
        #expect(throws: TransportError.self) { try ClusterToken("short") }
        await #expect(throws: TransportError.self) {
            _ = try await TransportServer.bind(host: "127.0.0.1", port: 0,
                                               identity: NodeIdentity(name: String(repeating: "n", count: 256), role: .worker),
                                               token: token(correctToken), logger: Logger(label: "t"))
        }
    }
}
