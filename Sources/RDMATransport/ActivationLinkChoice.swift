import Logging
import NIOConcurrencyHelpers
import Transport

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
    private let initialTransport: ActivationTransportKind
    private let onChange: @Sendable (_ summary: String) -> Void

    /// `onChange` hears ``summary`` each time the link falls back (once at most).
    public init(initial: ActivationTransportDecision, peer: String, logger: Logger,
                onChange: @escaping @Sendable (_ summary: String) -> Void = { _ in }) {
        self.peer = peer
        self.logger = logger
        self.state = NIOLockedValueBox(initial)
        self.initialTransport = initial.transport
        self.onChange = onChange
    }

    /// What the next dial uses, and why.
    public var current: ActivationTransportDecision { state.withLockedValue { $0 } }

    /// What an operator is shown: `tcp`, `rdma`, or `rdma→tcp: REASON` once an RDMA link fell back.
    public var summary: String {
        let current = self.current
        if initialTransport == .rdma && current.transport == .tcp { return "rdma→tcp: \(current.reason)" }
        return current.transport.rawValue
    }

    /// The link cannot use RDMA (the peer refused it, or the exchange failed): later dials use TCP. Logged once.
    public func fallBack(reason: String) {
        let changed: Bool = state.withLockedValue { decision in
            guard decision.transport == .rdma else { return false }
            decision = ActivationTransportDecision(transport: .tcp, reason: reason)
            return true
        }
        if changed {
            logger.warning("activation link falls back to TCP", metadata: ["peer": "\(peer)", "reason": "\(reason)"])
            onChange(summary)
        }
    }

    /// An RDMA connection of this link ended. If it failed under the data (on any lane of a striped link), later
    /// dials use TCP; a clean close (or a link that never failed) changes nothing.
    public func connectionEnded(_ transport: some RDMALinkTransport) {
        guard let failure = transport.failure, failure.isLinkFailure else { return }
        fallBack(reason: "RDMA link failed mid-job: \(failure)")
    }
}

/// What an activation link needs of its RDMA transport, one queue pair or several striped.
public protocol RDMALinkTransport: ActivationTransport {
    /// The devices carrying the link, for the logs.
    var deviceNames: [String] { get }
    /// Why the transport stopped, once it has.
    var failure: RDMALinkError? { get }
    func close() async
}

extension RDMAActivationTransport: RDMALinkTransport {
    public var deviceNames: [String] { [deviceName] }
}

extension StripedActivationTransport: RDMALinkTransport {}
