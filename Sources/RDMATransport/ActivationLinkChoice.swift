import Logging
import NIOConcurrencyHelpers

/// The transport of one worker-to-worker link across its reconnections: what the start-up decision chose, until an
/// RDMA connection of this link goes down under the data (a completion with an error status, a QP in ERR); from
/// then on TCP, for the rest of the link's life, with the reason logged once. The link's dialer asks ``current``
/// before each dial and reports each RDMA connection it replaces through ``connectionEnded(_:)``. The resend of
/// unacknowledged tensors after a reconnection is the dialer's (the worker's `SuccessorLink`), so the receiver gets
/// the same bytes whichever transport carried them.
public final class ActivationLinkChoice: Sendable {
    public let peer: String
    private let logger: Logger
    private let state: NIOLockedValueBox<ActivationTransportDecision>

    public init(initial: ActivationTransportDecision, peer: String, logger: Logger) {
        self.peer = peer
        self.logger = logger
        self.state = NIOLockedValueBox(initial)
    }

    /// What the next dial uses, and why.
    public var current: ActivationTransportDecision { state.withLockedValue { $0 } }

    /// The link cannot use RDMA (the peer refused it, or the exchange failed): later dials use TCP. Logged once.
    public func fallBack(reason: String) {
        let changed: Bool = state.withLockedValue { decision in
            guard decision.transport == .rdma else { return false }
            decision = ActivationTransportDecision(transport: .tcp, reason: reason)
            return true
        }
        if changed {
            logger.warning("activation link falls back to TCP", metadata: ["peer": "\(peer)", "reason": "\(reason)"])
        }
    }

    /// An RDMA connection of this link ended. If it failed under the data, later dials use TCP; a clean close
    /// (or a link that never failed) changes nothing.
    public func connectionEnded(_ transport: RDMAActivationTransport) {
        guard let failure = transport.failure, failure.isLinkFailure else { return }
        fallBack(reason: "RDMA link failed mid-job: \(failure)")
    }
}
