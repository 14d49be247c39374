import Logging
import NIOCore
import NIOEmbedded
import Testing
@testable import Transport

private let quiet = Logger(label: "t", factory: { _ in SwiftLogNoOpLogHandler() })

/// The outcome of a future on an EmbeddedEventLoop, if it has completed.
private func outcome<Value>(_ future: EventLoopFuture<Value>) -> Result<Value, any Error>? {
    var result: Result<Value, any Error>?
    future.assumeIsolated().whenComplete { result = $0 }
    return result
}

private func authenticatedPeer(_ promise: EventLoopPromise<AuthenticatedPeer>) throws -> AuthenticatedPeer {
    try #require(outcome(promise.futureResult)).get()
}

/// Every frame a channel has written so far.
private func writtenFrames(_ channel: EmbeddedChannel) throws -> [Frame] {
    var frames: [Frame] = []
    while var bytes = try channel.readOutbound(as: ByteBuffer.self) {
        while let frame = try FrameDecoder.decodeFrame(from: &bytes, limits: FrameLimits()) { frames.append(frame) }
    }
    return frames
}

/// Counts the reads that reach the front of the pipeline, i.e. the socket.
private final class ReadCounter: ChannelOutboundHandler {
    typealias OutboundIn = Frame
    var reads = 0
    func read(context: ChannelHandlerContext) {
        reads += 1
        context.read()
    }
}

/// Stands in for the pipeline's last handler: records the errors that reach it.
private final class ErrorRecorder: ChannelInboundHandler {
    typealias InboundIn = Frame
    var errors: [any Error] = []
    func errorCaught(context: ChannelHandlerContext, error: any Error) { errors.append(error) }
}

@Suite("Connection pipeline", .timeLimit(.minutes(1)))
struct PipelineTests {
    @Test("once authenticated, the handshake handler leaves the pipeline to the liveness, bulk and request handlers")
    func handshakeHandlerRemovesItself() throws {
        let pair = try EmbeddedPair(clientToken: token(correctToken), serverToken: token(correctToken), logger: quiet)
        defer { pair.finish() }
        for channel in [pair.client, pair.server] {
            #expect(throws: Never.self) { try channel.pipeline.syncOperations.handler(type: HandshakeHandler.self) }
            #expect(throws: ChannelPipelineError.notFound) {
                try channel.pipeline.syncOperations.handler(type: RequestResponseHandler.self)
            }
        }
        try pair.pump()
        for channel in [pair.client, pair.server] {
            #expect(channel.isActive)
            #expect(throws: ChannelPipelineError.notFound) { try channel.pipeline.syncOperations.handler(type: HandshakeHandler.self) }
            #expect(throws: Never.self) {
                _ = try channel.pipeline.syncOperations.handler(type: LivenessHandler.self)
                _ = try channel.pipeline.syncOperations.handler(type: BulkReceiveHandler.self)
                _ = try channel.pipeline.syncOperations.handler(type: RequestResponseHandler.self)
            }
        }
        // What the connection is handed is what serves it.
        let client = try authenticatedPeer(pair.clientAuth)
        let calls = try pair.client.pipeline.syncOperations.handler(type: RequestResponseHandler.self)
        let bulk = try pair.client.pipeline.syncOperations.handler(type: BulkReceiveHandler.self)
        #expect(client.calls.value === calls)
        #expect(client.bulk.value === bulk)
    }

    @Test("frames that arrive in the same read as ACCEPT are served by the authenticated connection's handlers")
    func framesAfterAcceptInTheSameRead() throws {
        let pair = try EmbeddedPair(clientToken: token(correctToken), serverToken: token(correctToken), logger: quiet)
        defer { pair.finish() }
        func move(from: EmbeddedChannel, to: EmbeddedChannel) throws {
            while let bytes = try from.readOutbound(as: ByteBuffer.self) { try to.writeInbound(bytes) }
        }
        try move(from: pair.client, to: pair.server)  // HELLO
        try move(from: pair.server, to: pair.client)  // CHALLENGE
        try move(from: pair.client, to: pair.server)  // PROOF
        var read = ByteBuffer()
        for frame in try writtenFrames(pair.server) { read.writeImmutableBuffer(frameBytes(frame)) }  // ACCEPT
        read.writeImmutableBuffer(frameBytes(Frame(type: .ping, correlationID: 77)))
        try pair.client.writeInbound(read)

        #expect(try authenticatedPeer(pair.clientAuth).identity == coordinator)
        #expect(pair.client.isActive)
        #expect(try writtenFrames(pair.client) == [Frame(type: .pong, correlationID: 77)])
    }

    @Test("a handshake frame after authentication closes the connection with unexpectedFrame")
    func handshakeFrameAfterAuthentication() throws {
        let pair = try EmbeddedPair(clientToken: token(correctToken), serverToken: token(correctToken), logger: quiet)
        defer { pair.finish() }
        try pair.pump()
        let calls = try authenticatedPeer(pair.serverAuth).calls.value
        try pair.server.writeInbound(frameBytes(Frame(type: .hello, correlationID: 0)))
        #expect(!pair.server.isActive)
        #expect(calls.closeReason == .protocolViolation(.unexpectedFrame(type: .hello, state: "on an authenticated control connection")))
    }

    @Test("a pending call fails with connectionClosed when the connection closes; the close reason is kept")
    func pendingCallFailsOnClose() throws {
        let pair = try EmbeddedPair(clientToken: token(correctToken), serverToken: token(correctToken), logger: quiet)
        defer { pair.finish() }
        try pair.pump()
        let calls = try authenticatedPeer(pair.clientAuth).calls.value
        let (id, response) = calls.startCall(messageType: 3, payload: ByteBuffer(string: "x"), deadline: .now() + .seconds(30))
        #expect(id != 0)
        #expect(calls.pendingCallCount == 1)
        #expect(try writtenFrames(pair.client).map(\.type) == [.request])
        #expect(outcome(response) == nil)

        // The peer breaks the protocol: an ERROR frame that is not an envelope.
        try pair.client.writeInbound(frameBytes(Frame(type: .errorResponse, correlationID: id, payload: ByteBuffer(string: "?"))))
        #expect(!pair.client.isActive)
        #expect(throws: TransportError.connectionClosed(peer: coordinator.name)) { try outcome(response)?.get() }
        #expect(calls.pendingCallCount == 0)
        #expect(calls.closeReason == .protocolViolation(.malformedPayload(type: .errorResponse, field: "error envelope JSON {code, message}")))
    }

    @Test("a call on a request handler outside an open pipeline fails with connectionClosed instead of crashing")
    func callOutsideAPipeline() throws {
        func expectClosed(_ handler: RequestResponseHandler, _ loop: EmbeddedEventLoop) {
            let (id, response) = handler.startCall(messageType: 1, payload: ByteBuffer(), deadline: .now() + .seconds(5))
            loop.run()
            #expect(id == 0)
            #expect(handler.pendingCallCount == 0)
            #expect(throws: TransportError.connectionClosed(peer: coordinator.name)) { try outcome(response)?.get() }
            #expect(throws: TransportError.connectionClosed(peer: coordinator.name)) {
                try outcome(handler.write(Frame(type: .message, correlationID: 0)))?.get()
            }
        }

        // Never added (the state a handler is in before the handshake completes): used to trap on `context!`.
        let detachedLoop = EmbeddedEventLoop()
        expectClosed(RequestResponseHandler(peer: coordinator, eventLoop: detachedLoop, logger: quiet), detachedLoop)

        // Removed from the pipeline, with a call pending.
        let channel = EmbeddedChannel()
        let handler = RequestResponseHandler(peer: coordinator, eventLoop: channel.embeddedEventLoop, logger: quiet)
        try channel.pipeline.syncOperations.addHandler(handler)
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        let (_, pending) = handler.startCall(messageType: 1, payload: ByteBuffer(), deadline: .now() + .seconds(5))
        try channel.pipeline.syncOperations.removeHandler(handler).wait()
        #expect(throws: TransportError.connectionClosed(peer: coordinator.name)) { try outcome(pending)?.get() }
        expectClosed(handler, channel.embeddedEventLoop)
        _ = try channel.finish(acceptAlreadyClosed: true)

        // Closed.
        let closing = EmbeddedChannel()
        let closed = RequestResponseHandler(peer: coordinator, eventLoop: closing.embeddedEventLoop, logger: quiet)
        try closing.pipeline.syncOperations.addHandler(closed)
        try closing.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        closed.close()
        #expect(!closing.isActive)
        #expect(closed.closeReason == .connectionClosed(peer: coordinator.name))
        expectClosed(closed, closing.embeddedEventLoop)
        _ = try closing.finish(acceptAlreadyClosed: true)
    }

    @Test("bulk: reads stop reaching the socket while the queue is full and resume once it is drained below half")
    func bulkReadsPauseAndResume() throws {
        var configuration = fastConfiguration()
        configuration.bulkReceiveBufferBytes = 4096
        let channel = EmbeddedChannel()
        defer { _ = try? channel.finish(acceptAlreadyClosed: true) }
        let counter = ReadCounter()
        let bulk = BulkReceiveHandler(configuration: configuration, eventLoop: channel.embeddedEventLoop)
        let errors = ErrorRecorder()
        try channel.pipeline.syncOperations.addHandlers([counter, bulk, errors])
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()

        func chunk(_ flags: FrameFlags, _ index: Int) -> Frame {
            Frame(type: .bulkChunk, flags: flags, correlationID: 9, payload: patternChunk(index: index, size: 2048))
        }
        try channel.writeInbound(chunk(.firstChunk, 0))
        channel.read()
        #expect(counter.reads == 1)  // 2 KiB queued: below the bound
        try channel.writeInbound(chunk([], 1))
        channel.read()
        channel.read()
        #expect(counter.reads == 1, "4 KiB queued: reads are held back")

        // Draining to half the bound passes one held read on.
        guard case .chunk(9, .firstChunk, let first)? = outcome(bulk.nextItems().map { $0?.first }).flatMap({ try? $0.get() }) else {
            Issue.record("expected the first chunk")
            return
        }
        #expect(first == patternChunk(index: 0, size: 2048))
        #expect(counter.reads == 2)
        channel.read()
        #expect(counter.reads == 3)

        // A waiting consumer gets the next item directly; an abort ends the tensor.
        _ = outcome(bulk.nextItems().map { $0?.first })
        let waiting = bulk.nextItems().map { $0?.first }
        #expect(outcome(waiting) == nil)
        try channel.writeInbound(Frame(type: .bulkAbort, correlationID: 9,
                                       payload: RemoteErrorEnvelope(code: "aborted", message: "gave up").payload))
        guard case .abort(9, let envelope)? = outcome(waiting).flatMap({ try? $0.get() }) else {
            Issue.record("expected the abort")
            return
        }
        #expect(envelope == RemoteErrorEnvelope(code: "aborted", message: "gave up"))

        // Other frames pass through; a chunk out of sequence is an error for the last handler.
        try channel.writeInbound(Frame(type: .request, correlationID: 1, payload: ByteBuffer(bytes: [0, 1])))
        #expect(try channel.readInbound(as: Frame.self)?.type == .request)
        try channel.writeInbound(chunk(.lastChunk, 2))
        #expect(errors.errors.map { $0 as? TransportError }
            == [.protocolViolation(.bulkSequence(tensorID: 9, reason: "chunk without a first chunk"))])
        guard case .some(.success(nil)) = outcome(bulk.nextItems().map { $0?.first }) else {
            Issue.record("the queue should end after a violation")
            return
        }
    }

    @Test("liveness: silence ends the connection, but not while reads are held back for bulk back-pressure")
    func silenceIsNotCountedWhileReadsAreHeld() throws {
        var configuration = fastConfiguration()
        configuration.heartbeatInterval = nil
        configuration.peerDeadTimeout = .milliseconds(400)
        configuration.bulkReceiveBufferBytes = 1024
        let channel = EmbeddedChannel()
        defer { _ = try? channel.finish(acceptAlreadyClosed: true) }
        let bulk = BulkReceiveHandler(configuration: configuration, eventLoop: channel.embeddedEventLoop)
        let errors = ErrorRecorder()
        try channel.pipeline.syncOperations.addHandlers([LivenessHandler(configuration: configuration), bulk, errors])
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()

        // A full queue: the read asked for after this read (as autoRead would) is held by the bulk handler.
        try channel.writeInbound(Frame(type: .bulkChunk, flags: .firstChunk, correlationID: 1, payload: patternChunk(index: 0, size: 2048)))
        channel.read()
        channel.embeddedEventLoop.advanceTime(by: .seconds(2))
        #expect(errors.errors.isEmpty, "the peer waits on us: no silence")

        // Drained: the held read goes out and silence counts again.
        _ = bulk.nextItems().map { $0?.first }
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(300))
        #expect(errors.errors.isEmpty)
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(300))
        guard case .protocolViolation(.peerUnresponsive)? = errors.errors.first as? TransportError, errors.errors.count == 1 else {
            Issue.record("expected one peerUnresponsive, got \(errors.errors)")
            return
        }
    }
}
