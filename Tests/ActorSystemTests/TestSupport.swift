import Distributed
import Foundation
import Logging
import NIOCore
import Testing
import Transport
@testable import ActorSystem

let goodToken = try! ClusterToken("correct-horse-battery-staple-0042")
let badToken = try! ClusterToken("wrong-horse-battery-staple-9999")
let quiet = Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() })

func testConfiguration(maxControlPayload: Int = 16 << 20, defaultCallTimeout: TimeAmount = .seconds(5)) -> TransportConfiguration {
    var configuration = TransportConfiguration()
    configuration.handshakeTimeout = .seconds(2)
    configuration.heartbeatInterval = .milliseconds(200)
    configuration.peerDeadTimeout = .seconds(5)
    configuration.defaultCallTimeout = defaultCallTimeout
    configuration.frameLimits.maxControlPayload = maxControlPayload
    return configuration
}

/// A system listening on 127.0.0.1 with an ephemeral port.
func startSystem(_ name: String, role: NodeRole = .worker, token: ClusterToken? = goodToken, port: Int = 0,
                 configuration: TransportConfiguration = testConfiguration(), logger: Logger = quiet) async throws -> ClusterActorSystem {
    try await ClusterActorSystem.start(identity: NodeIdentity(name: name, role: role), listen: (host: "127.0.0.1", port: port),
                                       token: token, configuration: configuration, logger: logger)
}

/// Starts systems, runs `body`, shuts them all down whatever happens.
@discardableResult
func withSystems<T>(_ systems: [ClusterActorSystem], _ body: () async throws -> T) async throws -> T {
    do {
        let result = try await body()
        for system in systems { await system.shutdown() }
        return result
    } catch {
        for system in systems { await system.shutdown() }
        throw error
    }
}

/// A Codable error a worker might throw.
enum WorkerError: Error, Codable, Equatable, CustomStringConvertible {
    case outOfMemory(layer: Int, neededBytes: Int64)
    case notReady

    var description: String {
        switch self {
        case .outOfMemory(let layer, let needed): "layer \(layer) needs \(needed) bytes"
        case .notReady: "worker not ready"
        }
    }
}

/// An error that cannot travel as a payload.
struct PlainError: Error, CustomStringConvertible {
    var description: String { "plain failure with no payload" }
}

struct Assignment: Codable, Equatable, Sendable {
    enum Kind: Codable, Equatable, Sendable { case calibrate(samples: Int), quantize, export(path: String?) }
    var layers: ClosedRange<Int>
    var kind: Kind
    var note: String?
    var scales: [String: Float]
}

distributed actor Greeter {
    typealias ActorSystem = ClusterActorSystem

    private var recorded: [Int] = []

    distributed func greet(_ name: String) -> String { "hello \(name) from \(actorSystem.identity.name)" }

    distributed func record(_ value: Int) { recorded.append(value) }

    distributed func recordedValues() -> [Int] { recorded }

    distributed func assign(_ assignment: Assignment, attempt: Int) -> Assignment {
        var copy = assignment
        copy.note = "attempt \(attempt)"
        return copy
    }

    distributed func fail(layer: Int) throws { throw WorkerError.outOfMemory(layer: layer, neededBytes: 3 << 30) }

    distributed func failPlain() throws -> Int { throw PlainError() }

    distributed func sleep(milliseconds: Int) async throws -> Int {
        try await Task.sleep(for: .milliseconds(milliseconds))
        return milliseconds
    }

    distributed func count(_ bytes: [UInt8]) -> Int { bytes.count }

    distributed func blob(size: Int) -> [UInt8] { [UInt8](repeating: 7, count: size) }

    /// Calls back into an actor on the caller's node: calls go both ways.
    distributed func greetBack(_ other: Greeter) async throws -> String { try await other.greet(actorSystem.identity.name) }
}

distributed actor Counter {
    typealias ActorSystem = ClusterActorSystem
    distributed func value() -> Int { 42 }
}

/// The first element of `stream` matching `predicate`, or nil after `timeout`.
func firstEvent<Element: Sendable>(in stream: AsyncStream<Element>, within timeout: Duration = .seconds(5),
                                   where predicate: @escaping @Sendable (Element) -> Bool) async -> Element? {
    await withTaskGroup(of: Element?.self) { group in
        group.addTask {
            for await element in stream where predicate(element) { return element }
            return nil
        }
        group.addTask {
            try? await Task.sleep(for: timeout)
            return nil
        }
        let first = await group.next() ?? nil
        group.cancelAll()
        return first
    }
}
