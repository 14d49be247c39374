import Distributed
import Foundation
import Logging
import NIOCore
import Testing
import Transport
@testable import ActorSystem

@Suite("Cluster actor system: identity, security, events, bulk", .timeLimit(.minutes(1)))
struct ClusterSystemTests {
    @Test("resolve: local ids give the registered instance, remote ids give proxies, unknown or mistyped ids throw")
    func resolveLocalAndRemote() async throws {
        let a = try await startSystem("node-a")
        let b = try await startSystem("node-b")
        try await withSystems([a, b]) {
            let greeter = try a.makeActor(named: "greeter") { Greeter(actorSystem: a) }
            #expect(try a.resolve(id: greeter.id, as: Greeter.self) === greeter)
            #expect(try Greeter.resolve(id: greeter.id, using: a) === greeter)
            #expect(try b.resolve(id: greeter.id, as: Greeter.self) == nil)  // remote: a proxy will be made
            #expect(!b.isLocal(greeter.id) && a.isLocal(greeter.id))
            #expect { try a.resolve(id: .wellKnown("missing", at: a.endpoint), as: Greeter.self) } throws: { error in
                error as? ClusterActorSystemError == .actorNotFound(.wellKnown("missing", at: a.endpoint))
            }
            #expect { try a.resolve(id: greeter.id, as: Counter.self) } throws: { error in
                guard case .actorTypeMismatch = error as? ClusterActorSystemError else { return false }
                return true
            }
        }
    }

    @Test("names: unique names by default, well-known names once, invalid names refused; released on deinit")
    func naming() async throws {
        let a = try await startSystem("node-a")
        try await withSystems([a]) {
            let first = Counter(actorSystem: a)
            let second = Counter(actorSystem: a)
            #expect(first.id != second.id && first.id.name.contains("#") && second.id.name.contains("#"))
            let worker = try a.makeActor(named: "worker") { Greeter(actorSystem: a) }
            #expect(throws: ClusterActorSystemError.nameTaken("worker")) { try a.makeActor(named: "worker") { Counter(actorSystem: a) } }
            #expect(throws: ClusterActorSystemError.invalidActorName("bad#name")) {
                try a.makeActor(named: "bad#name") { Counter(actorSystem: a) }
            }
            #expect(throws: ClusterActorSystemError.invalidActorName("")) { try a.makeActor(named: "") { Counter(actorSystem: a) } }
            _ = worker
            // Held weakly: once the last reference goes, the id resigns and the name is free again.
            do {
                let temporary = try a.makeActor(named: "temporary") { Counter(actorSystem: a) }
                #expect(try a.resolve(id: temporary.id, as: Counter.self) === temporary)
            }
            #expect(throws: ClusterActorSystemError.actorNotFound(.wellKnown("temporary", at: a.endpoint))) {
                try a.resolve(id: .wellKnown("temporary", at: a.endpoint), as: Counter.self)
            }
            let reborn = try a.makeActor(named: "temporary") { Counter(actorSystem: a) }
            #expect(reborn.id.name == "temporary")
        }
    }

    @Test("a node name in the endpoint is checked against the node that answers")
    func wrongNode() async throws {
        let a = try await startSystem("node-a")
        let b = try await startSystem("node-b")
        try await withSystems([a, b]) {
            let held = try a.makeActor(named: "greeter") { Greeter(actorSystem: a) }
            defer { withExtendedLifetime(held) {} }  // the registry holds actors weakly
            let port = try #require(a.boundPort)
            let id = ClusterActorID.wellKnown("greeter", at: ClusterEndpoint(host: "127.0.0.1", port: port, node: "node-z"))
            let remote = try Greeter.resolve(id: id, using: b)
            await #expect(throws: ClusterActorSystemError.wrongNode(endpoint: "127.0.0.1:\(port)", expected: "node-z", found: "node-a")) {
                _ = try await remote.greet("x")
            }
        }
    }

    @Test("wrong token: refused with a typed error, reported as a peer event, no actor runs; a good peer is served after")
    func wrongTokenRefused() async throws {
        let a = try await startSystem("node-a")
        let intruder = try await startSystem("intruder", token: badToken)
        let b = try await startSystem("node-b")
        try await withSystems([a, intruder, b]) {
            let greeter = try a.makeActor(named: "greeter") { Greeter(actorSystem: a) }
            let viaIntruder = try Greeter.resolve(id: greeter.id, using: intruder)
            await #expect { try await viaIntruder.record(666) } throws: { error in
                guard case .authenticationFailed(let endpoint, _) = error as? ClusterActorSystemError else { return false }
                return endpoint.contains("node-a")
            }
            let event = await firstEvent(in: a.peerEvents) { event in
                if case .authenticationFailed = event { return true }
                return false
            }
            guard case .authenticationFailed(let address, let reason) = event else {
                Issue.record("no authenticationFailed event: \(String(describing: event))")
                return
            }
            #expect(address.contains("127.0.0.1") && !reason.contains("correct-horse") && !reason.contains("wrong-horse"))
            let viaB = try Greeter.resolve(id: greeter.id, using: b)
            try await viaB.record(1)
            #expect(try await greeter.recordedValues() == [1])
        }
    }

    @Test("without a token only loopback may be listened on; token-less loopback nodes talk to each other")
    func noTokenLoopbackOnly() async throws {
        await #expect(throws: ClusterActorSystemError.insecureListenAddress(host: "0.0.0.0")) {
            _ = try await ClusterActorSystem.start(identity: NodeIdentity(name: "open", role: .coordinator),
                                                   listen: (host: "0.0.0.0", port: 0), token: nil, logger: quiet)
        }
        let a = try await startSystem("node-a", token: nil)
        let client = try await ClusterActorSystem.start(identity: NodeIdentity(name: "coordctl", role: .client), listen: nil,
                                                        token: nil, configuration: testConfiguration(), logger: quiet)
        try await withSystems([a, client]) {
            #expect(client.boundPort == nil)
            let held = try a.makeActor(named: "coordinator") { Greeter(actorSystem: a) }
            defer { withExtendedLifetime(held) {} }  // the registry holds actors weakly
            let remote = try Greeter.resolve(
                id: .wellKnown("coordinator", at: ClusterEndpoint(host: "127.0.0.1", port: try #require(a.boundPort))), using: client)
            #expect(try await remote.greet("ctl") == "hello ctl from node-a")
        }
    }

    @Test("peer events: an inbound peer is reported connected, then disconnected when it goes away")
    func peerEvents() async throws {
        let coordinator = try await startSystem("coordd", role: .coordinator)
        let worker = try await startSystem("workerd-1")
        try await withSystems([coordinator]) {
            let held = try coordinator.makeActor(named: "coordinator") { Greeter(actorSystem: coordinator) }
            defer { withExtendedLifetime(held) {} }  // the registry holds actors weakly
            let remote = try Greeter.resolve(id: .wellKnown("coordinator", at: coordinator.endpoint), using: worker)
            try await remote.record(1)
            let connected = await firstEvent(in: coordinator.peerEvents) { event in
                if case .connected(let peer) = event { return peer.identity.name == "workerd-1" && peer.direction == .inbound }
                return false
            }
            #expect(connected != nil)
            await worker.shutdown()
            let disconnected = await firstEvent(in: coordinator.peerEvents) { event in
                if case .disconnected(let peer, _) = event { return peer.identity.name == "workerd-1" }
                return false
            }
            #expect(disconnected != nil)
        }
    }

    @Test("bulk: a dedicated authenticated connection carries tensors both ways; the receiver learns the sender's identity")
    func bulkConnection() async throws {
        let a = try await startSystem("worker-a")
        let b = try await startSystem("worker-b")
        try await withSystems([a, b]) {
            let outbound = try await a.openBulkTransport(to: b.endpoint)
            #expect(outbound.connection.purpose == .bulk)
            let chunks = (0..<8).map { index in ByteBuffer(bytes: [UInt8](repeating: UInt8(index), count: 100_000)) }
            try await outbound.sendTensor(id: 11, chunks: chunks)
            var streams = b.incomingBulkStreams.makeAsyncIterator()
            let incoming = try #require(await streams.next())
            #expect(incoming.peer.name == "worker-a")
            var tensors = incoming.tensors.makeAsyncIterator()
            let tensor = try #require(try await tensors.next())
            #expect(tensor.id == 11)
            let bytes = try await tensor.chunks.collect(maxBytes: 1 << 20)
            #expect(Array(bytes.readableBytesView) == chunks.flatMap { Array($0.readableBytesView) })
            // Back the other way on the same connection.
            try await incoming.transport.sendTensor(id: 12, chunks: [ByteBuffer(bytes: [1, 2, 3])])
            var back = outbound.incomingTensors.makeAsyncIterator()
            let reply = try #require(try await back.next())
            #expect(reply.id == 12)
            #expect(Array(try await reply.chunks.collect(maxBytes: 16).readableBytesView) == [1, 2, 3])
        }
    }

    @Test("bulk: a peer with the wrong token cannot open a bulk connection")
    func bulkWrongToken() async throws {
        let a = try await startSystem("worker-a", token: badToken)
        let b = try await startSystem("worker-b")
        try await withSystems([a, b]) {
            await #expect { _ = try await a.openBulkTransport(to: b.endpoint) } throws: { error in
                guard case .authenticationFailed = error as? ClusterActorSystemError else { return false }
                return true
            }
        }
    }
}
