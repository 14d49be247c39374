import Logging
import NIOCore
import NIOPosix
import Testing
@testable import Transport

@Suite("Heartbeats", .timeLimit(.minutes(1)))
struct LivenessTests {
    @Test("an idle but healthy connection is kept alive by heartbeats")
    func heartbeatsKeepIdleConnectionAlive() async throws {
        var configuration = fastConfiguration()
        configuration.heartbeatInterval = .milliseconds(50)
        configuration.peerDeadTimeout = .milliseconds(600)
        try await withServer(configuration: configuration) { server in
            let connection = try await connect(to: server, configuration: configuration)
            try await Task.sleep(for: .milliseconds(1500))  // 2.5 dead-timeouts without application traffic
            #expect(try await connection.call(type: 1, payload: ByteBuffer(string: "alive")) == ByteBuffer(string: "alive"))
            await connection.close()
        }
    }

    @Test("a peer that stops responding is declared dead after the timeout; pending calls fail")
    func silentPeerDeclaredDead() async throws {
        var serverConfiguration = fastConfiguration()
        serverConfiguration.heartbeatInterval = nil  // the server itself sends nothing unprompted
        serverConfiguration.peerDeadTimeout = .seconds(30)
        let logs = LogRecorder()
        let handler = ClosureHandler(onRequest: { _, payload, connection in
            if String(buffer: payload) == "freeze" {
                // Stop reading: pings go unanswered from now on, like a hung process.
                try await connection.channel.setOption(ChannelOptions.autoRead, value: false).get()
                try await Task.sleep(for: .seconds(30))
            }
            return payload
        })
        try await withServer(configuration: serverConfiguration, handler: handler) { server in
            var clientConfiguration = fastConfiguration()
            clientConfiguration.heartbeatInterval = .milliseconds(50)
            clientConfiguration.peerDeadTimeout = .milliseconds(400)
            let connection = try await connect(to: server, configuration: clientConfiguration, logger: logs.logger("client"))
            let start = ContinuousClock.now
            await #expect(throws: TransportError.connectionClosed(peer: coordinator.name)) {
                _ = try await connection.call(type: 1, payload: ByteBuffer(string: "freeze"), timeout: .seconds(20))
            }
            let elapsed = ContinuousClock.now - start
            // The 400 ms dead timeout runs from the last frame the client received, which can precede `start` by up
            // to a few heartbeat intervals on a loaded machine; 200 ms still tells a timeout from an immediate close.
            #expect(elapsed >= .milliseconds(200) && elapsed < .seconds(5), "elapsed \(elapsed)")
            await connection.waitUntilClosed()
        }
        #expect(logs.contains("declared dead"))
    }
}
