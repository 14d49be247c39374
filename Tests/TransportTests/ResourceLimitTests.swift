import Foundation
import Logging
import NIOCore
import NIOPosix
import Testing
@testable import Transport

/// What a peer, authenticated or not, can make a server hold: connections and requests in flight are capped.
@Suite("Resource limits") struct ResourceLimitTests {
    @Test("connections beyond maxConnections are closed on accept; a slot freed is usable again")
    func connectionCap() async throws {
        var configuration = fastConfiguration()
        configuration.maxConnections = 3
        configuration.handshakeTimeout = .seconds(10)
        let logs = LogRecorder()
        try await withServer(configuration: configuration, logger: logs.logger("server")) { server in
            // Three idle strangers take every slot.
            var idle: [any Channel] = []
            for _ in 0..<3 {
                idle.append(try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                    .connect(host: "127.0.0.1", port: server.port).get())
            }
            try await Task.sleep(for: .milliseconds(100))
            #expect(try await serverClosesAfterReceiving(ByteBuffer(string: "x"), port: server.port, within: .seconds(2)))
            #expect(logs.contains("connections are open (maxConnections)"))
            try await idle.removeFirst().close()
            try await Task.sleep(for: .milliseconds(100))
            let good = try await connect(to: server, configuration: configuration)
            #expect(try await good.call(type: 1, payload: ByteBuffer(string: "ok")) == ByteBuffer(string: "ok"))
            await good.close()
            for channel in idle { try? await channel.close() }
        }
    }

    /// Resident memory of this process, from /proc (Linux).
    static func residentBytes() -> Int {
        guard let text = try? String(contentsOfFile: "/proc/self/statm", encoding: .utf8),
              let pages = text.split(separator: " ").dropFirst().first.flatMap({ Int($0) }) else { return 0 }
        return pages * Int(sysconf(Int32(_SC_PAGESIZE)))
    }

    @Test("1,000 idle unauthenticated sockets: the server holds at most maxConnections, within a memory bound, and serves")
    func thousandIdleSockets() async throws {
        var configuration = fastConfiguration()
        configuration.handshakeTimeout = .seconds(30)
        try await withServer(configuration: configuration) { server in
            let before = Self.residentBytes()
            var idle: [any Channel] = []
            for _ in 0..<1000 {
                if let channel = try? await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
                    .connect(host: "127.0.0.1", port: server.port).get() {
                    idle.append(channel)
                }
            }
            try await Task.sleep(for: .milliseconds(300))
            let grown = Self.residentBytes() - before
            // Both ends of every socket live in this process; without a per-connection buffer of any size, 1,000 of
            // them stay far below 64 MiB.
            #expect(grown < 64 << 20, "resident memory grew by \(grown >> 20) MiB")
            let open = idle.filter(\.isActive).count
            #expect(open <= configuration.maxConnections + 8, "\(open) of 1000 stayed open; the cap is \(configuration.maxConnections)")
            for channel in idle { try? await channel.close() }
            try await Task.sleep(for: .milliseconds(200))
            let good = try await connect(to: server, configuration: configuration)
            #expect(try await good.call(type: 1, payload: ByteBuffer(string: "ok")) == ByteBuffer(string: "ok"))
            await good.close()
        }
    }

    @Test("a peer's requests beyond maxInboundRequestsInFlight are answered busy at once; answered ones free slots")
    func inFlightCap() async throws {
        var configuration = fastConfiguration()
        configuration.maxInboundRequestsInFlight = 2
        let gate = Gate()
        let handler = ClosureHandler(onRequest: { type, payload, _ in
            if type == 9 { await gate.wait() }
            return payload
        })
        try await withServer(configuration: configuration, handler: handler) { server in
            let connection = try await connect(to: server, configuration: configuration)
            let slow = (0..<2).map { _ in Task { try await connection.call(type: 9, payload: ByteBuffer(string: "slow")) } }
            try await Task.sleep(for: .milliseconds(200))
            await #expect(throws: TransportError.self) {
                do {
                    _ = try await connection.call(type: 1, payload: ByteBuffer(string: "third"))
                } catch let error as TransportError {
                    guard case .remoteError(let code, _) = error, code == "busy" else { throw CancellationError() }
                    throw error
                }
            }
            await gate.open()
            for task in slow { _ = try await task.value }
            #expect(try await connection.call(type: 1, payload: ByteBuffer(string: "later")) == ByteBuffer(string: "later"))
            await connection.close()
        }
    }
}

/// Holds requests until opened.
actor Gate {
    private var isOpen = false
    func open() { isOpen = true }
    func wait() async {
        while !isOpen { try? await Task.sleep(for: .milliseconds(10)) }
    }
}
