import Foundation
import Logging

/// What a node's activation links run on: the start-up decision and, where it is RDMA, the opened device and
/// endpoint that each link's queue pair is made on. The same setup answers peers' offers: a node on TCP refuses
/// them with its reason, so both ends of a link agree on one transport.
public struct ActivationLinkSetup: Sendable {
    public let preference: ActivationTransportPreference
    public let decision: ActivationTransportDecision
    /// The device RDMA links open on; nil when the decision is TCP.
    public let device: (any VerbsDataPlaneDevice)?
    public let endpoint: RDMALinkEndpoint?
    public let ring: RDMARingParameters

    /// TCP for every link, for `reason`.
    public static func tcp(preference: ActivationTransportPreference = .tcp, reason: String = "--transport tcp") -> Self {
        Self(preference: preference, decision: ActivationTransportDecision(transport: .tcp, reason: reason), device: nil,
             endpoint: nil, ring: .standard)
    }

    /// RDMA on `device` at `endpoint`; `device` is libibverbs' in workerd and a fake fabric's in tests.
    public init(preference: ActivationTransportPreference, decision: ActivationTransportDecision,
                device: any VerbsDataPlaneDevice, endpoint: RDMALinkEndpoint, ring: RDMARingParameters = .standard) {
        self.init(preference: preference, decision: decision, device: device as (any VerbsDataPlaneDevice)?,
                  endpoint: endpoint, ring: ring)
    }

    private init(preference: ActivationTransportPreference, decision: ActivationTransportDecision,
                 device: (any VerbsDataPlaneDevice)?, endpoint: RDMALinkEndpoint?, ring: RDMARingParameters) {
        self.preference = preference
        self.decision = decision
        self.device = device
        self.endpoint = endpoint
        self.ring = ring
    }

    /// Turns a decision into a setup, opening the chosen device through `provider`. A device that cannot be opened
    /// for data fails `--transport rdma` (``RDMASelectionError/noDataPlane(device:reason:)``) and turns `auto` to TCP.
    public static func open(_ decision: ActivationTransportDecision, preference: ActivationTransportPreference,
                            provider: () throws(VerbsError) -> any VerbsProvider,
                            logger: Logger) throws(RDMASelectionError) -> Self {
        guard decision.transport == .rdma, let chosen = decision.endpoint else {
            return Self(preference: preference, decision: decision, device: nil, endpoint: nil, ring: .standard)
        }
        let failure: RDMASelectionError
        do throws(VerbsError) {
            let provider = try provider()
            let handle = try provider.openDevice(named: chosen.device)
            if let device = handle as? any VerbsDataPlaneDevice {
                return Self(preference: preference, decision: decision, device: device, endpoint: RDMALinkEndpoint(chosen))
            }
            failure = .noDataPlane(device: chosen.device, reason: "\(provider.origin) offers no data plane")
        } catch {
            failure = .noDataPlane(device: chosen.device, reason: error.description)
        }
        if preference == .rdma { throw failure }
        logger.warning("activation transport: tcp", metadata: ["reason": "\(failure)"])
        return .tcp(preference: preference, reason: failure.description)
    }

    /// This side of a new link to `peer`, set up (queue pair in INIT, rings registered), or why it cannot be.
    public func makeTransport(peer: String, logger: Logger) -> Result<RDMAActivationTransport, RDMASelectionError> {
        guard let device, let endpoint else {
            return .failure(.unavailable(reason: decision.reason))
        }
        do throws(RDMALinkError) {
            return .success(try RDMAActivationTransport(device: device, endpoint: endpoint, peerName: peer, ring: ring,
                                                        logger: logger))
        } catch {
            return .failure(.noDataPlane(device: device.name, reason: error.description))
        }
    }
}
