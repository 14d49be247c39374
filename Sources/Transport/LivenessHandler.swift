import NIOCore

/// Heartbeats and dead-peer detection on an authenticated connection: sends PING every `heartbeatInterval`, answers
/// the peer's PINGs, and declares the peer dead after `peerDeadTimeout` without a frame from it. It sits in front of
/// the other post-handshake handlers so that every frame counts as a sign of life; the dead-peer verdict travels
/// down the pipeline as an error, and the connection's last handler closes with it.
final class LivenessHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = Frame
    typealias InboundOut = Frame
    typealias OutboundIn = Frame
    typealias OutboundOut = Frame

    private let configuration: TransportConfiguration
    /// On the event loop's clock (`eventLoop.now`), so that tests on an EmbeddedEventLoop control it.
    private var lastHeard = NIODeadline.uptimeNanoseconds(0)
    private var nextPingID: UInt64 = 0
    private var heartbeat: Scheduled<Void>?
    private var deadPeerCheck: Scheduled<Void>?
    private var isStarted = false
    private var isClosed = false
    /// Whether a read has been asked of the socket since the last one completed. It stays false while a handler
    /// behind this one holds reads back (bulk back-pressure): the peer's frames then wait in the socket, which is
    /// not silence on its part.
    private var readRequested = true

    init(configuration: TransportConfiguration) {
        self.configuration = configuration
    }

    func handlerAdded(context: ChannelHandlerContext) {
        // Added once the handshake is done, so the channel is usually active already.
        if context.channel.isActive { start(context: context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        start(context: context)
        context.fireChannelActive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        stop()
    }

    func channelInactive(context: ChannelHandlerContext) {
        stop()
        context.fireChannelInactive()
    }

    private func start(context: ChannelHandlerContext) {
        guard !isStarted, !isClosed else { return }
        isStarted = true
        lastHeard = context.eventLoop.now
        scheduleHeartbeat(context: context)
        scheduleDeadPeerCheck(context: context)
    }

    private func stop() {
        isClosed = true
        heartbeat?.cancel()
        deadPeerCheck?.cancel()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !isClosed else { return }
        lastHeard = context.eventLoop.now
        let frame = unwrapInboundIn(data)
        switch frame.type {
        case .ping:
            context.writeAndFlush(wrapOutboundOut(Frame(type: .pong, correlationID: frame.correlationID)), promise: nil)
        case .pong:
            break
        default:
            context.fireChannelRead(data)
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        readRequested = false
        context.fireChannelReadComplete()
    }

    func read(context: ChannelHandlerContext) {
        readRequested = true
        context.read()
    }

    private func scheduleHeartbeat(context: ChannelHandlerContext) {
        guard let interval = configuration.heartbeatInterval else { return }
        heartbeat = context.eventLoop.assumeIsolated().scheduleTask(in: interval) {
            guard !self.isClosed else { return }
            self.nextPingID &+= 1
            context.writeAndFlush(self.wrapOutboundOut(Frame(type: .ping, correlationID: self.nextPingID)), promise: nil)
            self.scheduleHeartbeat(context: context)
        }
    }

    private func scheduleDeadPeerCheck(context: ChannelHandlerContext) {
        let period = TimeAmount.nanoseconds(max(configuration.peerDeadTimeout.nanoseconds / 4, 1_000_000))
        deadPeerCheck = context.eventLoop.assumeIsolated().scheduleTask(in: period) {
            guard !self.isClosed else { return }
            let now = context.eventLoop.now
            if !self.readRequested { self.lastHeard = now }
            let silent = now - self.lastHeard
            if silent > self.configuration.peerDeadTimeout {
                self.stop()  // the connection's last handler closes it
                context.fireErrorCaught(
                    TransportError.protocolViolation(.peerUnresponsive(silentForMilliseconds: silent.nanoseconds / 1_000_000)))
                return
            }
            self.scheduleDeadPeerCheck(context: context)
        }
    }
}
