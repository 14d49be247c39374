/// # NetworkTestSupport
///
/// An on-path attacker and a flaky link for tests: a loopback TCP proxy that records every byte it relays, and can
/// flip one, inject bytes, or cut every connection for a while (a partition).
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix

public final class TamperingProxy: @unchecked Sendable {
    // @unchecked: all mutable state is guarded by `lock`; the channels are NIO's.
    private let lock = NIOLock()
    private var recorded: [UInt8] = []
    private var flip: (offset: Int, done: Bool)?
    private var partitionedUntil: NIOCore.NIODeadline?
    private var relays: [RelayPair] = []
    private var accepted = 0
    private var channel: (any Channel)?

    public init() {}

    public var port: Int { channel?.localAddress?.port ?? 0 }
    /// Every byte relayed, both directions, in arrival order.
    public var bytesSeen: [UInt8] { lock.withLock { recorded } }
    /// Connections accepted so far (refused ones during a partition included).
    public var connectionsAccepted: Int { lock.withLock { accepted } }
    /// Client→server bytes of the newest connection so far.
    public var clientBytesOfNewestConnection: Int { lock.withLock { relays.last?.clientBytes ?? 0 } }
    /// Whether the armed flip has happened.
    public var flipped: Bool { lock.withLock { flip?.done ?? false } }

    /// Flips one bit at client→server offset `offset` of the first connection whose stream gets that far, once.
    public func flipClientByte(atConnectionOffset offset: Int) {
        lock.withLock { flip = (offset, false) }
    }

    /// Cuts every relayed connection now and closes new ones at once until `duration` has passed.
    public func partition(for duration: TimeAmount) {
        let cut = lock.withLock {
            partitionedUntil = .now() + duration
            let cut = relays
            relays.removeAll()
            return cut
        }
        for pair in cut { pair.closeBoth() }
    }

    /// Writes `bytes` to the server on the newest connection, as if the client had sent them.
    public func injectTowardServer(_ bytes: [UInt8]) async throws {
        guard let pair = lock.withLock({ relays.last }), let upstream = pair.upstream else { return }
        try await upstream.writeAndFlush(ByteBuffer(bytes: bytes))
    }

    public func start(upstreamHost: String = "127.0.0.1", upstreamPort: Int) async throws {
        channel = try await ServerBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .childChannelInitializer { [self] inbound in
                let refused = lock.withLock {
                    accepted += 1
                    if let until = partitionedUntil, until > .now() { return true }
                    return false
                }
                if refused { return inbound.close() }
                let pair = RelayPair(proxy: self, downstream: inbound)
                lock.withLock { relays.append(pair) }
                return ClientBootstrap(group: inbound.eventLoop)
                    .channelInitializer { outbound in
                        outbound.pipeline.addHandler(Relay(pair: pair, fromClient: false))
                    }
                    .connect(host: upstreamHost, port: upstreamPort)
                    .flatMap { outbound in
                        pair.upstream = outbound
                        return inbound.pipeline.addHandler(Relay(pair: pair, fromClient: true))
                    }
            }
            .bind(host: "127.0.0.1", port: 0).get()
    }

    public func stop() async {
        try? await channel?.close()
        let all = lock.withLock { relays }
        for pair in all { pair.closeBoth() }
    }

    fileprivate func pass(_ buffer: ByteBuffer, pair: RelayPair, fromClient: Bool) -> ByteBuffer {
        lock.withLock {
            var bytes = Array(buffer.readableBytesView)
            recorded += bytes
            if fromClient {
                let start = pair.clientBytes
                if let armed = flip, !armed.done, armed.offset >= start, armed.offset < start + bytes.count {
                    bytes[armed.offset - start] ^= 0x01
                    flip = (armed.offset, true)
                }
                pair.clientBytes += bytes.count
            }
            return ByteBuffer(bytes: bytes)
        }
    }

    /// One relayed connection: the client's channel and the one to the server.
    fileprivate final class RelayPair: @unchecked Sendable {
        // @unchecked: `clientBytes` is touched under the proxy's lock; `upstream` is set once before relaying starts.
        unowned let proxy: TamperingProxy
        let downstream: any Channel
        var upstream: (any Channel)?
        var clientBytes = 0

        init(proxy: TamperingProxy, downstream: any Channel) {
            self.proxy = proxy
            self.downstream = downstream
        }

        func closeBoth() {
            downstream.close(promise: nil)
            upstream?.close(promise: nil)
        }
    }

    private final class Relay: ChannelInboundHandler, @unchecked Sendable {
        typealias InboundIn = ByteBuffer
        let pair: RelayPair
        let fromClient: Bool

        init(pair: RelayPair, fromClient: Bool) {
            self.pair = pair
            self.fromClient = fromClient
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            let peer = fromClient ? pair.upstream : pair.downstream
            peer?.writeAndFlush(pair.proxy.pass(unwrapInboundIn(data), pair: pair, fromClient: fromClient), promise: nil)
        }

        func channelInactive(context: ChannelHandlerContext) { pair.closeBoth() }
    }
}
