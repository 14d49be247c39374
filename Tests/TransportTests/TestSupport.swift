import Foundation
import Logging
import NIOCore
import NIOPosix
@testable import Transport

/// Collects log lines so tests can check what was (and was not) logged.
final class LogRecorder: @unchecked Sendable {
    private let lock = NSLock()
    private var lines: [String] = []

    func append(_ line: String) {
        lock.lock(); defer { lock.unlock() }
        lines.append(line)
    }

    var all: [String] {
        lock.lock(); defer { lock.unlock() }
        return lines
    }

    func contains(_ fragment: String) -> Bool { all.contains { $0.contains(fragment) } }

    func logger(_ label: String) -> Logger {
        Logger(label: label) { _ in RecordingLogHandler(recorder: self) }
    }
}

struct RecordingLogHandler: LogHandler {
    let recorder: LogRecorder
    var metadata: Logger.Metadata = [:]
    var logLevel: Logger.Level = .trace

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        let all = metadata.merging(event.metadata ?? [:]) { $1 }
        recorder.append("\(event.level) \(event.message) \(all)")
    }
}

let correctToken = "correct-horse-battery-staple-0042"
let wrongToken = "wrong-horse-battery-staple-9999"

func token(_ secret: String) -> ClusterToken { try! ClusterToken(secret) }

let coordinator = NodeIdentity(name: "coordd-test", role: .coordinator)
let worker = NodeIdentity(name: "workerd-test", role: .worker)

func fastConfiguration() -> TransportConfiguration {
    var configuration = TransportConfiguration()
    configuration.handshakeTimeout = .seconds(2)
    configuration.heartbeatInterval = .milliseconds(200)
    configuration.peerDeadTimeout = .seconds(5)
    configuration.defaultCallTimeout = .seconds(5)
    return configuration
}

/// A handler assembled from closures.
struct ClosureHandler: TransportRequestHandler {
    var onRequest: @Sendable (UInt16, ByteBuffer, PeerConnection) async throws -> ByteBuffer = { _, payload, _ in payload }
    var onMessage: @Sendable (UInt16, ByteBuffer, PeerConnection) async -> Void = { _, _, _ in }
    var onOpen: @Sendable (PeerConnection) async -> Void = { _ in }

    func handleRequest(type: UInt16, payload: ByteBuffer, from connection: PeerConnection) async throws -> ByteBuffer {
        try await onRequest(type, payload, connection)
    }
    func handleMessage(type: UInt16, payload: ByteBuffer, from connection: PeerConnection) async {
        await onMessage(type, payload, connection)
    }
    func connectionOpened(_ connection: PeerConnection) async { await onOpen(connection) }
}

/// Binds a server on 127.0.0.1, serves it in a child task for the duration of `body`, then closes it.
func withServer<T: Sendable>(
    token serverToken: ClusterToken? = token(correctToken),
    configuration: TransportConfiguration = fastConfiguration(),
    logger: Logger = Logger(label: "test.server", factory: { _ in SwiftLogNoOpLogHandler() }),
    handler: some TransportRequestHandler = ClosureHandler(),
    _ body: (TransportServer) async throws -> T
) async throws -> T {
    let server = try await TransportServer.bind(host: "127.0.0.1", port: 0, identity: coordinator, token: serverToken,
                                                configuration: configuration, logger: logger)
    let serving = Task { await server.serve(with: handler) }
    do {
        let result = try await body(server)
        await server.close()
        serving.cancel()
        await serving.value
        return result
    } catch {
        await server.close()
        serving.cancel()
        await serving.value
        throw error
    }
}

func connect(to server: TransportServer, token clientToken: ClusterToken? = token(correctToken),
             identity: NodeIdentity = worker, purpose: ConnectionPurpose = .control, configuration: TransportConfiguration = fastConfiguration(),
             logger: Logger = Logger(label: "test.client", factory: { _ in SwiftLogNoOpLogHandler() })) async throws -> PeerConnection {
    try await PeerConnection.connect(host: "127.0.0.1", port: server.port, identity: identity, token: clientToken,
                                     purpose: purpose, configuration: configuration, logger: logger)
}

/// Sends raw bytes to the server and waits (bounded) for the server to close the socket. Returns true if it closed.
func serverClosesAfterReceiving(_ bytes: ByteBuffer, port: Int, within timeout: TimeAmount = .seconds(3)) async throws -> Bool {
    let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
        .connect(host: "127.0.0.1", port: port).get()
    let closed = channel.eventLoop.makePromise(of: Bool.self)
    channel.closeFuture.whenComplete { _ in closed.succeed(true) }
    let timer = channel.eventLoop.scheduleTask(in: timeout) { closed.succeed(false) }
    // The server may already have closed the connection (a short handshake timeout on a loaded machine); the write
    // then fails, and the close is what is being checked.
    try? await channel.writeAndFlush(bytes)
    let result = try await closed.futureResult.get()
    timer.cancel()
    try? await channel.close()
    return result
}

func frameBytes(_ frame: Frame) -> ByteBuffer {
    var buffer = ByteBuffer()
    FrameEncoder.encode(frame, into: &buffer)
    return buffer
}

/// Deterministic pseudo-random content, word by word (splitmix64 of the global word index).
func patternChunk(index: Int, size: Int) -> ByteBuffer {
    precondition(size % 8 == 0)
    var buffer = ByteBuffer()
    buffer.writeWithUnsafeMutableBytes(minimumWritableBytes: size) { raw in
        let words = size / 8
        let base = UInt64(index * words)
        for word in 0..<words {
            var z = (base &+ UInt64(word)) &+ 0x9E37_79B9_7F4A_7C15
            z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
            z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
            raw.storeBytes(of: z ^ (z >> 31), toByteOffset: word * 8, as: UInt64.self)
        }
        return size
    }
    return buffer
}

/// Order-sensitive 64-bit checksum over whole 8-byte words plus a byte tail; chunk boundaries do not matter.
struct StreamChecksum {
    private(set) var value: UInt64 = 0xCBF2_9CE4_8422_2325
    private(set) var count = 0
    private var carry: [UInt8] = []

    mutating func update(_ buffer: ByteBuffer) {
        buffer.withUnsafeReadableBytes { raw in
            var offset = 0
            while !carry.isEmpty && offset < raw.count {
                carry.append(raw[offset]); offset += 1
                if carry.count == 8 {
                    let word = carry.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
                    mix(word); carry.removeAll()
                }
            }
            while offset + 8 <= raw.count {
                mix(raw.loadUnaligned(fromByteOffset: offset, as: UInt64.self)); offset += 8
            }
            carry.append(contentsOf: raw[offset...])
        }
        count += buffer.readableBytes
    }

    private mutating func mix(_ word: UInt64) {
        value = (value ^ word) &* 0x100_0000_01B3
        value = (value << 13) | (value >> 51)
    }

    var final: UInt64 {
        var copy = self
        for byte in carry { copy.mix(UInt64(byte)) }
        return copy.value ^ UInt64(count)
    }
}

/// A one-shot Sendable mailbox for handing values out of handler closures.
final class Mailbox<Value: Sendable>: @unchecked Sendable {
    private let lock = NSLock()
    private var values: [Value] = []
    private var waiters: [CheckedContinuation<Value, Never>] = []

    func put(_ value: Value) {
        lock.lock()
        if waiters.isEmpty {
            values.append(value)
            lock.unlock()
        } else {
            let waiter = waiters.removeFirst()
            lock.unlock()
            waiter.resume(returning: value)
        }
    }

    func take() async -> Value {
        await withCheckedContinuation { continuation in
            lock.lock()
            if values.isEmpty {
                waiters.append(continuation)
                lock.unlock()
            } else {
                let value = values.removeFirst()
                lock.unlock()
                continuation.resume(returning: value)
            }
        }
    }
}
