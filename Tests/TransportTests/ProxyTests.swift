import ClusterCertificates
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import NetworkTestSupport
import Testing
@testable import Transport

/// With TLS, what an attacker on the path sees is ciphertext, and what it changes is detected.
@Suite("On-path attacker") struct ProxyTests {
    static let quiet = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

    /// The server-side connections and the calls they ran, as the server saw them.
    final class ServerSide: @unchecked Sendable {
        private let lock = NSLock()
        private var connections: [PeerConnection] = []
        private var calls: [UInt16] = []
        func opened(_ connection: PeerConnection) { lock.withLock { connections.append(connection) } }
        func ran(_ type: UInt16) { lock.withLock { calls.append(type) } }
        var newest: PeerConnection? { lock.withLock { connections.last } }
        var callTypes: [UInt16] { lock.withLock { calls } }
    }

    func withTLSServer(_ body: (TransportServer, TransportConfiguration, ServerSide) async throws -> Void) async throws {
        try await TLSTests.withCluster(["coord", "w1"]) { directory in
            var server = fastConfiguration()
            server.tls = try TLSTests.tls(directory, "coord")
            var client = fastConfiguration()
            client.tls = try TLSTests.tls(directory, "w1")
            let transportServer = try await TransportServer.bind(
                host: "127.0.0.1", port: 0, identity: NodeIdentity(name: "coord", role: .coordinator), token: nil,
                configuration: server, logger: Self.quiet)
            let side = ServerSide()
            let handler = ClosureHandler(onRequest: { type, payload, _ in
                side.ran(type)
                return payload
            }, onOpen: { side.opened($0) })
            let serving = Task { await transportServer.serve(with: handler) }
            try await body(transportServer, client, side)
            await transportServer.close()
            serving.cancel()
        }
    }

    /// A proxy in front of `server`, and w1's connection through it.
    func connectThroughProxy(to server: TransportServer, _ client: TransportConfiguration) async throws
        -> (TamperingProxy, PeerConnection)
    {
        let proxy = TamperingProxy()
        try await proxy.start(upstreamPort: server.port)
        let connection = try await PeerConnection.connect(
            host: "127.0.0.1", port: proxy.port, identity: NodeIdentity(name: "w1", role: .worker), token: nil,
            configuration: client, logger: Self.quiet)
        return (proxy, connection)
    }

    /// Waits until the server has seen the connection close, and returns why.
    func serverCloseReason(_ side: ServerSide) async throws -> TransportError {
        let connection = try #require(side.newest)
        return try await withThrowingTaskGroup(of: TransportError?.self) { group in
            group.addTask { await connection.waitUntilClosed(); return await connection.closeReason() }
            group.addTask { try await Task.sleep(for: .seconds(5)); return nil }
            let first = try await group.next()!
            group.cancelAll()
            return try #require(first, "the server kept the tampered connection open")
        }
    }

    @Test("the bytes on the path hold none of the payload that crossed it")
    func noPlaintextOnThePath() async throws {
        try await withTLSServer { server, client, side in
            let (proxy, connection) = try await connectThroughProxy(to: server, client)
            let secret = ByteBuffer(bytes: (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 13) })
            #expect(try await connection.call(type: 1, payload: secret) == secret)
            await connection.close()
            await proxy.stop()
            let seen = proxy.bytesSeen
            let probe = Array(secret.readableBytesView.prefix(64))
            #expect(seen.count > 8192, "the call crossed the proxy both ways")
            let found = seen.count >= probe.count && (0...(seen.count - probe.count)).contains { Array(seen[$0..<($0 + probe.count)]) == probe }
            #expect(!found, "64 bytes of the payload appear in the clear on the path")
        }
    }

    @Test("a byte flipped on the path after the handshake closes the connection; the server keeps serving")
    func tamperingIsDetected() async throws {
        try await withTLSServer { server, client, side in
            let (proxy, connection) = try await connectThroughProxy(to: server, client)
            #expect(try await connection.call(type: 1, payload: ByteBuffer(string: "before")) == ByteBuffer(string: "before"))
            // Flip a byte inside the next record the client sends (a REQUEST), past everything sent so far.
            proxy.flipClientByte(atConnectionOffset: proxy.clientBytesOfNewestConnection + 40)
            await #expect(throws: (any Error).self) {
                _ = try await connection.call(type: 1, payload: ByteBuffer(string: String(repeating: "x", count: 512)))
            }
            let reason = try await serverCloseReason(side)
            guard case .integrityCheckFailed(let peer, _) = reason else {
                Issue.record("closed with \(reason), not an integrity error"); return
            }
            #expect(peer == "w1")
            #expect(side.callTypes == [1], "the tampered call must not run")
            await proxy.stop()
            let direct = try await PeerConnection.connect(
                host: "127.0.0.1", port: server.port, identity: NodeIdentity(name: "w1", role: .worker), token: nil,
                configuration: client, logger: Self.quiet)
            #expect(try await direct.call(type: 1, payload: ByteBuffer(string: "after")) == ByteBuffer(string: "after"))
            await direct.close()
        }
    }

    @Test("a REQUEST injected on the path after the handshake closes the connection with an integrity error and never runs")
    func injectedRequestIsRefused() async throws {
        try await withTLSServer { server, client, side in
            let (proxy, connection) = try await connectThroughProxy(to: server, client)
            #expect(try await connection.call(type: 1, payload: ByteBuffer(string: "before")) == ByteBuffer(string: "before"))
            // A well-formed REQUEST frame of type 0x0BAD, as a token-only peer would accept it.
            var injected = ByteBuffer()
            FrameEncoder.encode(Frame(type: .request, correlationID: 99,
                                      payload: ByteBuffer(bytes: [0x0B, 0xAD] + Array("cancel everything".utf8))),
                                into: &injected)
            try await proxy.injectTowardServer(Array(injected.readableBytesView))
            let reason = try await serverCloseReason(side)
            guard case .integrityCheckFailed = reason else {
                Issue.record("closed with \(reason), not an integrity error"); return
            }
            #expect(!side.callTypes.contains(0x0BAD), "the injected REQUEST ran")
            await #expect(throws: (any Error).self) {
                _ = try await connection.call(type: 1, payload: ByteBuffer(string: "after"))
            }
            await connection.close()
            await proxy.stop()
        }
    }
}
