import Distributed
import Foundation
import Logging
import NIOCore
import Testing
import Transport
@testable import ActorSystem

@Suite("Cluster actor system: calls", .timeLimit(.minutes(1)))
struct ClusterCallTests {
    @Test("remote call and void call between two systems, with struct and enum arguments")
    func remoteAndVoidCalls() async throws {
        let a = try await startSystem("node-a")
        let b = try await startSystem("node-b")
        try await withSystems([a, b]) {
            let greeter = try a.makeActor(named: "greeter") { Greeter(actorSystem: a) }
            #expect(greeter.id == ClusterActorID(endpoint: a.endpoint, name: "greeter"))
            let id = ClusterActorID.wellKnown("greeter", at: ClusterEndpoint(host: "127.0.0.1", port: try #require(a.boundPort)))
            let remote = try Greeter.resolve(id: id, using: b)
            #expect(try await remote.greet("bob") == "hello bob from node-a")
            try await remote.record(7)
            try await remote.record(-3)
            #expect(try await greeter.recordedValues() == [7, -3])
            let assignment = Assignment(layers: 3...9, kind: .export(path: nil), note: nil, scales: ["q": 0.5])
            var expected = assignment
            expected.note = "attempt 2"
            #expect(try await remote.assign(assignment, attempt: 2) == expected)
        }
    }

    @Test("calls go both ways: each node dials the other's listen address")
    func bothWays() async throws {
        let coordinator = try await startSystem("coordd", role: .coordinator)
        let worker = try await startSystem("workerd-1")
        try await withSystems([coordinator, worker]) {
            let held = try worker.makeActor(named: "worker") { Greeter(actorSystem: worker) }
            defer { withExtendedLifetime(held) {} }  // the registry holds actors weakly
            let local = try coordinator.makeActor(named: "coordinator") { Greeter(actorSystem: coordinator) }
            let remoteWorker = try Greeter.resolve(id: .wellKnown("worker", at: worker.endpoint), using: coordinator)
            // The worker receives the coordinator's actor as an argument and calls it back.
            #expect(try await remoteWorker.greetBack(local) == "hello workerd-1 from coordd")
        }
    }

    @Test("a remote Codable throw arrives as RemoteCallError with its payload; a plain error keeps type and message")
    func typedRemoteErrors() async throws {
        let a = try await startSystem("node-a")
        let b = try await startSystem("node-b")
        try await withSystems([a, b]) {
            let held = try a.makeActor(named: "greeter") { Greeter(actorSystem: a) }
            defer { withExtendedLifetime(held) {} }  // the registry holds actors weakly
            let remote = try Greeter.resolve(id: .wellKnown("greeter", at: a.endpoint), using: b)
            do {
                try await remote.fail(layer: 7)
                Issue.record("the call did not throw")
            } catch let error as RemoteCallError {
                #expect(try error.decode(as: WorkerError.self) == .outOfMemory(layer: 7, neededBytes: 3 << 30))
                #expect(error.isError(ofType: WorkerError.self))
                #expect(error.description.contains("layer 7 needs 3221225472 bytes"))
                #expect(error.actor == remote.id)
                #expect { try error.decode(as: ClusterActorSystemError.self) } throws: { mismatch in
                    mismatch as? ClusterActorSystemError == .errorTypeMismatch(
                        expected: String(reflecting: ClusterActorSystemError.self), found: String(reflecting: WorkerError.self))
                }
            }
            do {
                _ = try await remote.failPlain()
                Issue.record("the call did not throw")
            } catch let error as RemoteCallError {
                #expect(error.typeName == String(reflecting: PlainError.self))
                #expect(error.message == "plain failure with no payload")
                #expect { try error.decode(as: WorkerError.self) } throws: { _ in true }
            }
        }
    }

    @Test("an unknown actor on the remote node comes back as a decodable actorNotFound")
    func unknownRemoteActor() async throws {
        let a = try await startSystem("node-a")
        let b = try await startSystem("node-b")
        try await withSystems([a, b]) {
            let id = ClusterActorID.wellKnown("nobody", at: a.endpoint)
            let remote = try Greeter.resolve(id: id, using: b)
            do {
                _ = try await remote.greet("x")
                Issue.record("the call did not throw")
            } catch let error as RemoteCallError {
                #expect(try error.decode(as: ClusterActorSystemError.self) == .actorNotFound(id))
            }
        }
    }

    @Test("per-call timeout: the task-local override and the system default both fire; the connection stays usable")
    func callTimeouts() async throws {
        let a = try await startSystem("node-a")
        let b = try await startSystem("node-b", configuration: testConfiguration(defaultCallTimeout: .milliseconds(300)))
        try await withSystems([a, b]) {
            let held = try a.makeActor(named: "greeter") { Greeter(actorSystem: a) }
            defer { withExtendedLifetime(held) {} }  // the registry holds actors weakly
            let remote = try Greeter.resolve(id: .wellKnown("greeter", at: a.endpoint), using: b)
            let started = ContinuousClock.now
            await #expect { try await remote.sleep(milliseconds: 10_000) } throws: { error in
                guard case .callTimedOut(let actor, _, let ms) = error as? ClusterActorSystemError else { return false }
                return actor == remote.id && ms == 300
            }
            // Well before the 10 s the call would take (generous: connection setup on a loaded 2-core machine).
            #expect(ContinuousClock.now - started < .seconds(8))
            await ClusterActorSystem.withCallTimeout(.milliseconds(100)) {
                #expect(b.currentCallTimeout == .milliseconds(100))
                await #expect { try await remote.sleep(milliseconds: 10_000) } throws: { error in
                    guard case .callTimedOut(_, _, let ms) = error as? ClusterActorSystemError else { return false }
                    return ms == 100
                }
            }
            // A longer override lets a slower call finish.
            let slept = try await ClusterActorSystem.withCallTimeout(.seconds(10)) { try await remote.sleep(milliseconds: 500) }
            #expect(slept == 500)
            #expect(try await remote.greet("again") == "hello again from node-a")
        }
    }

    @Test("a dropped connection fails calls in flight with peerDisconnected naming the peer; the next call reconnects")
    func droppedConnection() async throws {
        let a = try await startSystem("node-a")
        let port = try #require(a.boundPort)
        let b = try await startSystem("node-b")
        try await withSystems([b]) {
            let held = try a.makeActor(named: "greeter") { Greeter(actorSystem: a) }
            defer { withExtendedLifetime(held) {} }  // the registry holds actors weakly
            let remote = try Greeter.resolve(id: .wellKnown("greeter", at: a.endpoint), using: b)
            #expect(try await remote.greet("first") == "hello first from node-a")
            let inFlight = Task { try await remote.sleep(milliseconds: 20_000) }
            try await Task.sleep(for: .milliseconds(200))
            await a.shutdown()
            await #expect { try await inFlight.value } throws: { error in
                guard case .peerDisconnected(let peer, let endpoint, _) = error as? ClusterActorSystemError else { return false }
                return peer == "node-a" && endpoint == "127.0.0.1:\(port)"
            }
            // A new node on the same address: the cached connection is gone, the next call dials again.
            let again = try await startSystem("node-a", port: port)
            try await withSystems([again]) {
                let held = try again.makeActor(named: "greeter") { Greeter(actorSystem: again) }
                defer { withExtendedLifetime(held) {} }  // the registry holds actors weakly
                var answer: String?
                for _ in 0..<20 where answer == nil {
                    answer = try? await remote.greet("second")
                    if answer == nil { try await Task.sleep(for: .milliseconds(100)) }
                }
                #expect(answer == "hello second from node-a")
            }
        }
    }

    @Test("an argument near the frame limit goes through; one above it fails before sending with a clear error")
    func frameLimit() async throws {
        let limit = 1 << 20
        let a = try await startSystem("node-a", configuration: testConfiguration(maxControlPayload: limit))
        let b = try await startSystem("node-b", configuration: testConfiguration(maxControlPayload: limit))
        try await withSystems([a, b]) {
            let held = try a.makeActor(named: "greeter") { Greeter(actorSystem: a) }
            defer { withExtendedLifetime(held) {} }  // the registry holds actors weakly
            let remote = try Greeter.resolve(id: .wellKnown("greeter", at: a.endpoint), using: b)
            let nearLimit = limit - 512
            #expect(try await remote.count([UInt8](repeating: 1, count: nearLimit)) == nearLimit)
            await #expect { try await remote.count([UInt8](repeating: 1, count: limit)) } throws: { error in
                guard case .messageTooLarge(_, let bytes, let max) = error as? ClusterActorSystemError else { return false }
                return bytes > max && max == limit - 2 && "\(error)".contains("exceeds the frame limit")
            }
            // A reply over the limit comes back as an error, and the connection survives.
            await #expect { _ = try await remote.blob(size: limit) } throws: { error in
                guard let remoteError = error as? RemoteCallError,
                      case .messageTooLarge = try? remoteError.decode(as: ClusterActorSystemError.self) else { return false }
                return true
            }
            #expect(try await remote.greet("still") == "hello still from node-a")
        }
    }
}
