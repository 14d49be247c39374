import Foundation
import Logging
import NIOCore
import NIOPosix
import Testing
@testable import Transport

struct QuotaExceeded: RemoteErrorConvertible {
    var remoteErrorEnvelope: RemoteErrorEnvelope { RemoteErrorEnvelope(code: "quota_exceeded", message: "layer 7 needs 3 GiB") }
}

struct PlainFailure: Error, CustomStringConvertible {
    var description: String { "disk on fire" }
}

@Suite("Remote calls", .timeLimit(.minutes(1)))
struct RemoteCallTests {
    @Test("round trip: type and payload reach the handler, the response comes back")
    func roundTrip() async throws {
        let handler = ClosureHandler(onRequest: { type, payload, connection in
            var response = ByteBuffer(string: "type=\(type) from=\(connection.peer.name) body=")
            response.writeImmutableBuffer(payload)
            return response
        })
        try await withServer(handler: handler) { server in
            let connection = try await connect(to: server)
            let response = try await connection.call(type: 42, payload: ByteBuffer(string: "ping"), deadline: .now() + .seconds(2))
            #expect(String(buffer: response) == "type=42 from=\(worker.name) body=ping")
            let empty = try await connection.call(type: 0, payload: ByteBuffer())
            #expect(String(buffer: empty) == "type=0 from=\(worker.name) body=")
            await connection.close()
        }
    }

    @Test("concurrent calls answered out of order are matched by correlation id")
    func concurrentOutOfOrder() async throws {
        let finishOrder = Mailbox<Int>()
        let handler = ClosureHandler(onRequest: { _, payload, _ in
            let index = Int(String(buffer: payload))!
            try await Task.sleep(for: .milliseconds(20 * (10 - index)))  // later calls finish first
            finishOrder.put(index)
            return ByteBuffer(string: "answer-\(index)")
        })
        try await withServer(handler: handler) { server in
            let connection = try await connect(to: server)
            let answers = try await withThrowingTaskGroup(of: (Int, String).self) { group in
                for index in 0..<10 {
                    group.addTask {
                        (index, String(buffer: try await connection.call(type: 1, payload: ByteBuffer(string: "\(index)"))))
                    }
                }
                return try await group.reduce(into: [Int: String]()) { $0[$1.0] = $1.1 }
            }
            #expect(answers.count == 10)
            for index in 0..<10 { #expect(answers[index] == "answer-\(index)") }
            var order: [Int] = []
            for _ in 0..<10 { order.append(await finishOrder.take()) }
            #expect(order != Array(0..<10), "the server must have answered out of order for this test to mean anything")
            await connection.close()
        }
    }

    @Test("a call past its deadline fails with timedOut; the connection stays usable")
    func deadlineExpiry() async throws {
        let handler = ClosureHandler(onRequest: { type, payload, _ in
            if type == 9 { try await Task.sleep(for: .seconds(3)) }
            return payload
        })
        try await withServer(handler: handler) { server in
            let connection = try await connect(to: server)
            let start = ContinuousClock.now
            await #expect(throws: TransportError.timedOut) {
                _ = try await connection.call(type: 9, payload: ByteBuffer(string: "slow"), deadline: .now() + .milliseconds(150))
            }
            let elapsed = ContinuousClock.now - start
            #expect(elapsed >= .milliseconds(140) && elapsed < .seconds(2))
            #expect(try await connection.call(type: 1, payload: ByteBuffer(string: "fast")) == ByteBuffer(string: "fast"))
            await connection.close()
        }
    }

    @Test("handler errors come back as remoteError with the envelope's code and message")
    func handlerErrors() async throws {
        let handler = ClosureHandler(onRequest: { type, _, _ in
            if type == 1 { throw QuotaExceeded() }
            throw PlainFailure()
        })
        try await withServer(handler: handler) { server in
            let connection = try await connect(to: server)
            await #expect(throws: TransportError.remoteError(code: "quota_exceeded", message: "layer 7 needs 3 GiB")) {
                _ = try await connection.call(type: 1, payload: ByteBuffer())
            }
            await #expect(throws: TransportError.remoteError(code: "internal", message: "disk on fire")) {
                _ = try await connection.call(type: 2, payload: ByteBuffer())
            }
            await connection.close()
        }
    }

    @Test("error envelopes are JSON {code, message} and never empty")
    func envelopeShape() throws {
        let json = try JSONEncoder().encode(RemoteErrorEnvelope(code: "", message: ""))
        let decoded = try JSONSerialization.jsonObject(with: json) as? [String: String]
        #expect(decoded == ["code": "unspecified", "message": "(no message)"])
    }

    @Test("connection drop mid-call fails every pending call with connectionClosed")
    func dropFailsPendingCalls() async throws {
        let arrived = Mailbox<PeerConnection>()
        let handler = ClosureHandler(onRequest: { _, payload, connection in
            arrived.put(connection)
            try await Task.sleep(for: .seconds(30))
            return payload
        })
        try await withServer(handler: handler) { server in
            let connection = try await connect(to: server)
            try await withThrowingTaskGroup(of: Void.self) { group in
                for index in 0..<5 {
                    group.addTask {
                        await #expect(throws: TransportError.connectionClosed(peer: coordinator.name)) {
                            _ = try await connection.call(type: 1, payload: ByteBuffer(string: "\(index)"), timeout: .seconds(20))
                        }
                    }
                }
                var serverSide: PeerConnection?
                for _ in 0..<5 { serverSide = await arrived.take() }
                await serverSide?.close()  // the server drops the connection while five calls wait
                try await group.waitForAll()
            }
            await #expect(throws: TransportError.connectionClosed(peer: coordinator.name)) {
                _ = try await connection.call(type: 1, payload: ByteBuffer())
            }
        }
    }

    @Test("cancelling the calling task ends the call with CancellationError and frees its slot")
    func cancellation() async throws {
        let handler = ClosureHandler(onRequest: { type, payload, _ in
            if type == 9 { try await Task.sleep(for: .seconds(10)) }
            return payload
        })
        try await withServer(handler: handler) { server in
            let connection = try await connect(to: server)
            let call = Task { try await connection.call(type: 9, payload: ByteBuffer(string: "slow"), timeout: .seconds(10)) }
            try await Task.sleep(for: .milliseconds(100))
            let start = ContinuousClock.now
            call.cancel()
            await #expect(throws: CancellationError.self) { _ = try await call.value }
            #expect(ContinuousClock.now - start < .seconds(2))
            let calls = connection.calls
            let pendingCount = try await connection.channel.eventLoop.submit { calls.value.pendingCallCount }.get()
            #expect(pendingCount == 0)
            #expect(try await connection.call(type: 1, payload: ByteBuffer(string: "next")) == ByteBuffer(string: "next"))
            await connection.close()
        }
    }

    @Test("one-way messages reach the handler; the server can call the client back on the same connection")
    func messagesAndCallsFromServer() async throws {
        let messages = Mailbox<String>()
        let opened = Mailbox<PeerConnection>()
        let handler = ClosureHandler(onMessage: { type, payload, _ in messages.put("\(type):\(String(buffer: payload))") },
                                     onOpen: { opened.put($0) })
        try await withServer(handler: handler) { server in
            let connection = try await connect(to: server)
            try await connection.send(type: 5, payload: ByteBuffer(string: "progress 50%"))
            #expect(await messages.take() == "5:progress 50%")
            let serving = Task {
                await connection.serveRequests(with: ClosureHandler(onRequest: { _, _, _ in ByteBuffer(string: "worker ok") }))
            }
            let serverSide = await opened.take()
            #expect(serverSide.peer == worker)
            #expect(try await serverSide.call(type: 3, payload: ByteBuffer()) == ByteBuffer(string: "worker ok"))
            await connection.close()
            await serving.value
        }
    }

    @Test("closing the server closes its connections; the client notices")
    func serverCloseIsGraceful() async throws {
        let server = try await TransportServer.bind(host: "127.0.0.1", port: 0, identity: coordinator, token: token(correctToken),
                                                    configuration: fastConfiguration(), logger: Logger(label: "t"))
        let serving = Task { await server.serve(with: ClosureHandler()) }
        let connection = try await connect(to: server)
        #expect(try await connection.call(type: 1, payload: ByteBuffer(string: "a")) == ByteBuffer(string: "a"))
        await server.close()
        await connection.waitUntilClosed()
        await serving.value
        await #expect {
            _ = try await connect(to: server)
        } throws: { error in
            guard case .connectFailed(let address, _) = error as? TransportError else { return false }
            return address == "127.0.0.1:\(server.port)"
        }
    }

    @Test("garbage, oversized, wrong-version and pre-auth frames close only that connection; others are served")
    func badPeersDoNotHurtTheServer() async throws {
        let logs = LogRecorder()
        var configuration = fastConfiguration()
        configuration.frameLimits.maxControlPayload = 4096
        try await withServer(configuration: configuration, logger: logs.logger("server")) { server in
            let good = try await connect(to: server, configuration: configuration)

            #expect(try await serverClosesAfterReceiving(ByteBuffer(string: "GET / HTTP/1.1\r\n\r\n"), port: server.port))
            // Before authentication, a HELLO over 4 KiB is refused on its header (maxHandshakePayload), as is a 64 MiB
            // bulk header; neither payload is ever buffered.
            var oversized = frameBytes(Frame(type: .hello, correlationID: 0))
            oversized.setInteger(UInt32(4097), at: 16)
            var bulkHeader = frameBytes(Frame(type: .bulkChunk, flags: [.firstChunk], correlationID: 1))
            bulkHeader.setInteger(UInt32(64 << 20), at: 16)
            #expect(try await serverClosesAfterReceiving(bulkHeader, port: server.port))
            #expect(try await serverClosesAfterReceiving(oversized, port: server.port))
            var wrongVersion = frameBytes(Frame(type: .hello, correlationID: 0))
            wrongVersion.setInteger(UInt16(7), at: 4)
            #expect(try await serverClosesAfterReceiving(wrongVersion, port: server.port))
            let early = frameBytes(Frame(type: .request, correlationID: 1, payload: ByteBuffer(bytes: [0, 1])))
            #expect(try await serverClosesAfterReceiving(early, port: server.port))

            // The connection made before, and a new one, still work.
            #expect(try await good.call(type: 1, payload: ByteBuffer(string: "ok")) == ByteBuffer(string: "ok"))
            let late = try await connect(to: server, configuration: configuration)
            #expect(try await late.call(type: 1, payload: ByteBuffer(string: "ok")) == ByteBuffer(string: "ok"))
            await good.close()
            await late.close()
        }
        #expect(logs.contains("bad magic 0x47455420"))
        #expect(logs.contains("HELLO frame payload of 4097 bytes exceeds the limit of 4096"))
        #expect(logs.contains("protocol version 7"))
        #expect(logs.contains("REQUEST frame not allowed while awaiting authentication"))
        #expect(logs.contains("BULK_CHUNK frame not allowed while awaiting authentication"))
    }

    @Test("a client that never finishes the handshake is dropped after the handshake timeout")
    func handshakeTimeout() async throws {
        var configuration = fastConfiguration()
        configuration.handshakeTimeout = .milliseconds(200)
        try await withServer(configuration: configuration) { server in
            let closed = try await serverClosesAfterReceiving(ByteBuffer(), port: server.port, within: .seconds(3))
            #expect(closed)
        }
    }
}
