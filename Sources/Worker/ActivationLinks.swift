import ActorSystem
import ClusterProtocol
import Foundation
import Logging
import RDMATransport
import Transport

/// Worker links over RDMA: the dialing side offers RDMA on each new bulk connection to the next range while the
/// link's ``ActivationLinkChoice`` says RDMA, and the receiving side answers offers from the node's
/// ``ActivationLinkSetup``. The bulk connection stays open beside an RDMA link as its liveness: either closing
/// closes the other.
enum ActivationLinks {
    /// The successor link's connection over `control`: RDMA when the choice says so and the peer accepts, else the
    /// bulk connection itself. A refusal under `--transport rdma` throws ``WorkerError/rdmaLinkRefused(worker:peer:reason:)``;
    /// under `auto` the link turns to TCP for good, logged once by the choice. When the exchange itself fails under
    /// `auto`, the bulk connection cannot carry data (the peer may have moved its side to RDMA), so this dial goes on
    /// over a fresh one from `redial`: the caller sees a TCP link, not an error it would retry.
    static func connection(over control: TCPActivationTransport, setup: ActivationLinkSetup, choice: ActivationLinkChoice,
                           worker: String, logger: Logger,
                           redial: () async throws -> TCPActivationTransport) async throws -> SuccessorLink.Connection {
        guard choice.current.transport == .rdma else { return tcp(control) }
        let peer = choice.peer
        func refused(_ reason: String) async throws -> SuccessorLink.Connection {
            if setup.preference == .rdma {
                await control.connection.close()
                throw WorkerError.rdmaLinkRefused(worker: worker, peer: peer, reason: reason)
            }
            choice.fallBack(reason: reason)
            return tcp(control)
        }
        let local: [RDMAActivationTransport]
        switch await setup.makeLanes(peer: peer, logger: logger) {
        case let .failure(error):
            return try await refused("no usable RDMA endpoint here: \(error)")
        case let .success(made):
            local = made
        }
        let outcome: RDMALinkHandshake.LanesOutcome
        do {
            outcome = try await RDMALinkHandshake.offer(lanes: local, over: control, peer: peer)
        } catch {
            // The peer may have connected its side, so this bulk connection cannot carry data either.
            await control.connection.close()
            if setup.preference == .rdma { throw WorkerError.rdmaLinkRefused(worker: worker, peer: peer, reason: "\(error)") }
            choice.fallBack(reason: "RDMA exchange failed: \(error)")
            return tcp(try await redial())
        }
        switch outcome {
        case let .refused(reason):
            return try await refused("\(peer) refused RDMA: \(reason)")
        case let .rdma(lanes) where lanes.count == 1:
            return rdma(lanes[0], control: control)
        case let .rdma(lanes):
            return rdma(StripedActivationTransport(lanes: lanes), control: control)
        }

        func rdma(_ transport: some RDMALinkTransport, control: TCPActivationTransport) -> SuccessorLink.Connection {
            logger.info("activation link runs over RDMA", metadata: ["peer": "\(peer)", "devices": "\(transport.deviceNames)"])
            watch(control, closing: { await transport.close() })
            return SuccessorLink.Connection(
                send: { id, bytes in try await transport.sendTensor(id: id, data: bytes) },
                acknowledgements: transport.acknowledgements(),
                close: {
                    // A link that failed under the data turns the next dial to TCP; the resend is SuccessorLink's.
                    choice.connectionEnded(transport)
                    await transport.close()
                    await control.connection.close()
                })
        }
    }

    static func tcp(_ transport: TCPActivationTransport) -> SuccessorLink.Connection {
        SuccessorLink.Connection(send: { id, bytes in try await transport.sendTensor(id: id, data: bytes) },
                                 acknowledgements: transport.acknowledgements(),
                                 close: { await transport.connection.close() })
    }

    /// The receiving side: answers a predecessor's RDMA offer with this node's setup.
    static func upgrade(setup: ActivationLinkSetup, logger: Logger) -> BulkLinkUpgrade {
        BulkLinkUpgrade(offerTensorID: RDMALinkHandshake.offerTensorID, maxOfferBytes: 4096) { peer, offer, control in
            let answered = try await RDMALinkHandshake.answer(lanesOffer: [UInt8](offer), over: control, peer: peer) { count in
                await setup.makeLanes(peer: peer, count: count, logger: logger)
            }
            guard let lanes = answered else {
                // The refusal's reason went to the dialer, which logs it; this node's own transport is said here.
                logger.info("refused an RDMA offer; the link stays on TCP",
                            metadata: ["peer": "\(peer)", "transport_here": "\(setup.decision.transport.rawValue)"])
                return nil
            }
            if lanes.count == 1 {
                let transport = lanes[0]
                logger.info("activation link runs over RDMA", metadata: ["peer": "\(peer)", "device": "\(transport.deviceName)"])
                return UpgradedBulkLink(transport: transport, close: { await transport.close() })
            }
            let transport = StripedActivationTransport(lanes: lanes)
            logger.info("activation link runs over RDMA", metadata: ["peer": "\(peer)", "devices": "\(transport.deviceNames)"])
            return UpgradedBulkLink(transport: transport, close: { await transport.close() })
        }
    }

    /// Runs `close` when the bulk connection beside an RDMA link closes (the peer went away, or gave up on the link).
    private static func watch(_ control: TCPActivationTransport, closing close: @escaping @Sendable () async -> Void) {
        let connection = control.connection
        Task {
            _ = await connection.closeReason()
            await close()
        }
    }
}
