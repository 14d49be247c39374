import Foundation
import Logging

/// What a node's activation links run on: the start-up decision and, where it is RDMA, the opened device and
/// endpoint that each link's queue pair is made on. The same setup answers peers' offers: a node on TCP refuses
/// them with its reason, so both ends of a link agree on one transport.
public struct ActivationLinkSetup: Sendable {
    public let preference: ActivationTransportPreference
    public let decision: ActivationTransportDecision
    /// The devices RDMA links open a queue pair on each, in order (one lane per configured device); empty for TCP.
    public let lanes: [Lane]
    public let ring: RDMARingParameters

    public struct Lane: Sendable {
        public let device: any VerbsDataPlaneDevice
        public let endpoint: RDMALinkEndpoint

        public init(device: any VerbsDataPlaneDevice, endpoint: RDMALinkEndpoint) {
            self.device = device
            self.endpoint = endpoint
        }
    }

    /// The first lane's device: the one the doctor's peer test uses. Nil when the decision is TCP.
    public var device: (any VerbsDataPlaneDevice)? { lanes.first?.device }
    public var endpoint: RDMALinkEndpoint? { lanes.first?.endpoint }

    /// TCP for every link, for `reason`.
    public static func tcp(preference: ActivationTransportPreference = .tcp, reason: String = "--transport tcp") -> Self {
        Self(preference: preference, decision: ActivationTransportDecision(transport: .tcp, reason: reason), lanes: [],
             ring: .standard)
    }

    /// RDMA on `device` at `endpoint`; `device` is libibverbs' in workerd and a fake fabric's in tests.
    public init(preference: ActivationTransportPreference, decision: ActivationTransportDecision,
                device: any VerbsDataPlaneDevice, endpoint: RDMALinkEndpoint, ring: RDMARingParameters = .standard) {
        self.init(preference: preference, decision: decision, lanes: [Lane(device: device, endpoint: endpoint)], ring: ring)
    }

    /// RDMA striped over `lanes`, one queue pair on each.
    public init(preference: ActivationTransportPreference, decision: ActivationTransportDecision, lanes: [Lane],
                ring: RDMARingParameters = .standard) {
        self.preference = preference
        self.decision = decision
        self.lanes = lanes
        self.ring = ring
    }

    /// Turns a decision into a setup, opening the chosen device through `provider`. A device that cannot be opened
    /// for data fails `--transport rdma` (``RDMASelectionError/noDataPlane(device:reason:)``) and turns `auto` to TCP.
    public static func open(_ decision: ActivationTransportDecision, preference: ActivationTransportPreference,
                            provider: () throws(VerbsError) -> any VerbsProvider,
                            logger: Logger) throws(RDMASelectionError) -> Self {
        guard decision.transport == .rdma, !decision.endpoints.isEmpty else {
            return Self(preference: preference, decision: decision, lanes: [], ring: .standard)
        }
        let failure: RDMASelectionError
        var current = decision.endpoints[0].device
        do throws(VerbsError) {
            let provider = try provider()
            var lanes: [Lane] = []
            var withoutDataPlane: String?
            for chosen in decision.endpoints {
                current = chosen.device
                guard let device = try provider.openDevice(named: chosen.device) as? any VerbsDataPlaneDevice else {
                    withoutDataPlane = chosen.device
                    break
                }
                lanes.append(Lane(device: device, endpoint: RDMALinkEndpoint(chosen)))
            }
            if let withoutDataPlane {
                failure = .noDataPlane(device: withoutDataPlane, reason: "\(provider.origin) offers no data plane")
            } else {
                return Self(preference: preference, decision: decision, lanes: lanes)
            }
        } catch {
            failure = .noDataPlane(device: current, reason: error.description)
        }
        if preference == .rdma { throw failure }
        logger.warning("activation transport: tcp", metadata: ["reason": "\(failure)"])
        return .tcp(preference: preference, reason: failure.description)
    }

    /// This side of a new link to `peer` on the first lane, set up (queue pair in INIT, rings registered), or why it
    /// cannot be.
    public func makeTransport(peer: String, logger: Logger) -> Result<RDMAActivationTransport, RDMASelectionError> {
        let (made, failure) = makeLanes(peer: peer, count: 1, logger: logger)
        if let failure { return .failure(failure) }
        return .success(made[0])
    }

    /// This side of a new link on the first `count` lanes (all when nil), one queue pair each, or why they cannot
    /// be (the lanes already made are then closed).
    public func makeLanes(peer: String, count: Int? = nil, logger: Logger) async -> Result<[RDMAActivationTransport], RDMASelectionError> {
        let (made, failure) = makeLanes(peer: peer, count: count, logger: logger)
        guard let failure else { return .success(made) }
        for lane in made { await lane.close() }
        return .failure(failure)
    }

    private func makeLanes(peer: String, count: Int?, logger: Logger) -> ([RDMAActivationTransport], RDMASelectionError?) {
        guard !lanes.isEmpty else { return ([], .unavailable(reason: decision.reason)) }
        var made: [RDMAActivationTransport] = []
        for lane in lanes.prefix(count ?? lanes.count) {
            do throws(RDMALinkError) {
                made.append(try RDMAActivationTransport(device: lane.device, endpoint: lane.endpoint, peerName: peer, ring: ring,
                                                        logger: logger))
            } catch {
                return (made, .noDataPlane(device: lane.device.name, reason: error.description))
            }
        }
        return (made, nil)
    }
}
