import ActorSystem
import ClusterProtocol
import Distributed
import Foundation
import Logging
import NIOCore
import RDMATransport
import Transport

/// The actor workerd hosts for `coordctl doctor rdma --peer`, under a well-known name. Its calls arrive on the
/// cluster's authenticated control connection, so only a holder of the cluster's credentials reaches them; the
/// work is ``RDMAPeerTestResponder``'s, on the device the node's links use.
public distributed actor RDMAPeerTestService {
    public typealias ActorSystem = ClusterActorSystem

    public static let wellKnownName = "rdma-peer-test"

    let responder: RDMAPeerTestResponder

    public init(actorSystem: ClusterActorSystem, responder: RDMAPeerTestResponder) {
        self.actorSystem = actorSystem
        self.responder = responder
    }

    /// Sets up workerd's queue pair and receive ring for the caller's, connects them and starts checking.
    public distributed func open(_ request: RDMAPeerTestRequest) async throws -> RDMAPeerTestAccepted {
        let caller = ClusterActorSystem.callingPeer?.identity.name ?? "a caller in this process"
        return try await responder.open(request, caller: caller)
    }

    /// Ends the test and says what workerd checked.
    public distributed func finish(session: UInt64) async throws -> RDMAPeerTestVerdict {
        try await responder.finish(session: session)
    }
}

/// The doctor's end of the control connection: a client actor system with the cluster's credentials, dialed only
/// when the test opens (so a node without a device contacts no one), and shut down by ``shutdown()``.
// @unchecked: the one mutable field, `started`, is guarded by `lock`.
public final class RDMAPeerTestClient: RDMAPeerTestControl, @unchecked Sendable {
    public let peer: String
    private let address: NodeAddress
    private let nodeName: String
    private let token: ClusterToken?
    private let configuration: TransportConfiguration
    private let lock = NSLock()
    private var started: ClusterActorSystem?

    /// `nodeName`, when given, is the name workerd must prove (its certificate's, with TLS).
    public init(address: NodeAddress, nodeName: String? = nil, token: ClusterToken?, tls: TransportTLS?,
                callTimeout: Duration = .seconds(60)) {
        self.peer = address.description
        self.address = address
        self.nodeName = nodeName ?? ""
        self.token = token
        var configuration = TransportConfiguration()
        configuration.tls = tls
        let (seconds, attoseconds) = callTimeout.components
        configuration.defaultCallTimeout = .milliseconds(seconds * 1000 + attoseconds / 1_000_000_000_000_000)
        self.configuration = configuration
    }

    public func open(_ request: RDMAPeerTestRequest) async throws(RDMAPeerTest.Failure) -> RDMAPeerTestAccepted {
        do {
            return try await service().open(request)
        } catch {
            throw failure(error)
        }
    }

    public func finish(session: UInt64) async throws(RDMAPeerTest.Failure) -> RDMAPeerTestVerdict {
        do {
            return try await service().finish(session: session)
        } catch {
            throw failure(error)
        }
    }

    public func shutdown() async {
        let system: ClusterActorSystem? = lock.withLock {
            defer { started = nil }
            return started
        }
        await system?.shutdown()
    }

    private func service() async throws -> RDMAPeerTestService {
        let system: ClusterActorSystem
        if let existing = lock.withLock({ started }) {
            system = existing
        } else {
            var logger = Logger(label: "coordctl.doctor.peer")
            // Failures are reported once, as a Failure; the transport's own warnings would repeat them.
            logger.logLevel = .error
            system = try await ClusterActorSystem.start(
                identity: NodeIdentity(name: configuration.tls?.name ?? "coordctl-doctor-\(ProcessInfo.processInfo.processIdentifier)",
                                       role: .client),
                listen: nil as NodeAddress?, token: token, configuration: configuration, logger: logger)
            lock.withLock { started = system }
        }
        return try RDMAPeerTestService.resolve(
            id: system.wellKnownID(RDMAPeerTestService.wellKnownName, at: address, node: nodeName), using: system)
    }

    /// The failure in the words of someone talking to workerd at `peer`.
    private func failure(_ error: any Error) -> RDMAPeerTest.Failure {
        switch error {
        case let remote as RemoteCallError:
            if let refusal = try? remote.decode(as: RDMAPeerTestRefusal.self) { return .refused(refusal) }
            if let systemError = try? remote.decode(as: ClusterActorSystemError.self), case .actorNotFound = systemError {
                return .notServed(peer: peer, reason: "it has no \(RDMAPeerTestService.wellKnownName) actor (a workerd older than this coordctl?)")
            }
            return .control(peer: peer, reason: remote.message)
        case ClusterActorSystemError.connectFailed(_, let reason):
            return .unreachable(peer: peer, reason: TransportError.plainConnectionFailure(reason))
        case ClusterActorSystemError.authenticationFailed(_, let reason):
            return .credentialsRefused(peer: peer, reason: reason)
        case ClusterActorSystemError.wrongNode(_, let expected, let found):
            return .wrongNode(peer: peer, expected: expected, found: found)
        case ClusterActorSystemError.actorNotFound:
            return .notServed(peer: peer, reason: "it has no \(RDMAPeerTestService.wellKnownName) actor (a workerd older than this coordctl?)")
        case ClusterActorSystemError.callTimedOut(_, _, let milliseconds):
            return .control(peer: peer, reason: "no answer within \(milliseconds / 1000) s (--timeout)")
        case ClusterActorSystemError.peerDisconnected(_, _, let reason):
            return .control(peer: peer, reason: "the connection dropped (\(reason))")
        default:
            return .control(peer: peer, reason: "\(error)")
        }
    }

}
