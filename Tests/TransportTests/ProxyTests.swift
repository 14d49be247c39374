import ClusterCertificates
import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import Testing
@testable import Transport

/// An on-path attacker: a TCP proxy between a client and a server that records every byte and may rewrite them.
final class TamperingProxy: @unchecked Sendable {
    // @unchecked: the recorded bytes and the tamper switch are guarded by `lock`; the channels are NIO's.
    private let lock = NIOLock()
    private var recorded: [UInt8] = []
    private var clientToServerBytes = 0
    /// Flip one byte of the client→server stream at this offset (nil: pass everything unchanged).
    var flipClientByteAt: Int? {
        get { lock.withLock { flipOffset } }
        set { lock.withLock { flipOffset = newValue } }
    }
    private var flipOffset: Int?
    private var channel: (any Channel)?

    var port: Int { channel?.localAddress?.port ?? 0 }
    var bytesSeen: [UInt8] { lock.withLock { recorded } }
    var clientBytesSoFar: Int { lock.withLock { clientToServerBytes } }

    func start(upstreamPort: Int) async throws {
        channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { inbound in
                ClientBootstrap(group: inbound.eventLoop)
                    .channelInitializer { outbound in
                        outbound.pipeline.addHandler(Relay(peer: inbound, proxy: self, fromClient: false))
                    }
                    .connect(host: "127.0.0.1", port: upstreamPort)
                    .flatMap { outbound in inbound.pipeline.addHandler(Relay(peer: outbound, proxy: self, fromClient: true)) }
            }
            .bind(host: "127.0.0.1", port: 0).get()
    }

    func stop() async { try? await channel?.close() }

    fileprivate func pass(_ buffer: ByteBuffer, fromClient: Bool) -> ByteBuffer {
        lock.withLock {
            var bytes = Array(buffer.readableBytesView)
            recorded += bytes
            if fromClient {
                if let offset = flipOffset, offset >= clientToServerBytes, offset < clientToServerBytes + bytes.count {
                    bytes[offset - clientToServerBytes] ^= 0x01
                }
                clientToServerBytes += bytes.count
            }
            return ByteBuffer(bytes: bytes)
        }
    }

    private final class Relay: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        let peer: any Channel
        let proxy: TamperingProxy
        let fromClient: Bool
        init(peer: any Channel, proxy: TamperingProxy, fromClient: Bool) {
            self.peer = peer
            self.proxy = proxy
            self.fromClient = fromClient
        }
        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            peer.writeAndFlush(proxy.pass(unwrapInboundIn(data), fromClient: fromClient), promise: nil)
        }
        func channelInactive(context: ChannelHandlerContext) { peer.close(promise: nil) }
    }
}

/// With TLS, what an attacker on the path sees is ciphertext, and what it changes is detected.
@Suite("On-path attacker") struct ProxyTests {
    static let quiet = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

    func withTLSServer(_ body: (TransportServer, TransportConfiguration) async throws -> Void) async throws {
        try await TLSTests.withCluster(["coord", "w1"]) { directory in
            var server = fastConfiguration()
            server.tls = try TLSTests.tls(directory, "coord")
            var client = fastConfiguration()
            client.tls = try TLSTests.tls(directory, "w1")
            let transportServer = try await TransportServer.bind(
                host: "127.0.0.1", port: 0, identity: NodeIdentity(name: "coord", role: .coordinator), token: nil,
                configuration: server, logger: Self.quiet)
            let serving = Task { await transportServer.serve(with: ClosureHandler()) }
            try await body(transportServer, client)
            await transportServer.close()
            serving.cancel()
        }
    }

    @Test("the bytes on the path hold none of the payload that crossed it")
    func noPlaintextOnThePath() async throws {
        try await withTLSServer { server, client in
            let proxy = TamperingProxy()
            try await proxy.start(upstreamPort: server.port)
            let connection = try await PeerConnection.connect(
                host: "127.0.0.1", port: proxy.port, identity: NodeIdentity(name: "w1", role: .worker), token: nil,
                configuration: client, logger: Self.quiet)
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
        try await withTLSServer { server, client in
            let proxy = TamperingProxy()
            try await proxy.start(upstreamPort: server.port)
            let connection = try await PeerConnection.connect(
                host: "127.0.0.1", port: proxy.port, identity: NodeIdentity(name: "w1", role: .worker), token: nil,
                configuration: client, logger: Self.quiet)
            #expect(try await connection.call(type: 1, payload: ByteBuffer(string: "before")) == ByteBuffer(string: "before"))
            // Flip a byte inside the next record the client sends (a REQUEST), past everything sent so far.
            proxy.flipClientByteAt = proxy.clientBytesSoFar + 40
            await #expect(throws: (any Error).self) {
                _ = try await connection.call(type: 1, payload: ByteBuffer(string: String(repeating: "x", count: 512)))
            }
            await proxy.stop()
            let direct = try await PeerConnection.connect(
                host: "127.0.0.1", port: server.port, identity: NodeIdentity(name: "w1", role: .worker), token: nil,
                configuration: client, logger: Self.quiet)
            #expect(try await direct.call(type: 1, payload: ByteBuffer(string: "after")) == ByteBuffer(string: "after"))
            await direct.close()
        }
    }
}
