import Foundation
import Logging
import NIOCore
import Transport

/// The exchange that turns an authenticated bulk connection into an RDMA link, run as the first tensor each way on
/// it. The dialing side offers its ``RDMAConnectionInfo``; the other side either accepts with its own (both then
/// connect their queue pairs) or refuses with its reason, and the link stays on the bulk connection (TCP). So RDMA is
/// used only when both ends have a usable endpoint, and the dialer can log why not otherwise.
///
/// Offer: tensor ``offerTensorID``, the 56 bytes of the dialer's connection information. Answer: the same id, one
/// status byte then either (1) the answerer's 56 bytes, or (0) its reason in UTF-8 (at most 1 KiB).
public enum RDMALinkHandshake {
    /// A tensor id no data path uses (hidden states count from 0, exports set bit 62, token ids are bit 61).
    public static let offerTensorID: UInt64 = 1 << 60 | 0x5244_4d41
    static let maxReasonBytes = 1024

    /// What the dialer learned.
    public enum Outcome: Sendable {
        /// The peer accepted: `transport` is connected and carries the link from now on.
        case rdma(RDMAActivationTransport)
        /// The peer has no usable endpoint (or no RDMA at all): the link stays on the bulk connection.
        case refused(reason: String)
    }

    /// Why the exchange itself failed (not a refusal: a peer that answered nonsense, or a broken connection).
    public enum Failure: Error, CustomStringConvertible, Sendable {
        case malformedAnswer(peer: String, reason: String)
        case link(RDMALinkError)
        case control(peer: String, underlying: String)

        public var description: String {
            switch self {
            case let .malformedAnswer(peer, reason): return "RDMA answer from \(peer) is malformed: \(reason)"
            case let .link(error): return error.description
            case let .control(peer, underlying): return "RDMA exchange with \(peer) over the bulk connection failed: \(underlying)"
            }
        }
    }

    /// Dialer: offers `local` (set up, not connected) over `control`, and connects it if the peer accepts. On a
    /// refusal or a failure `local` is closed here, so its registrations never outlive the exchange.
    public static func offer<Control: ActivationTransport>(_ local: RDMAActivationTransport, over control: Control,
                                                           peer: String) async throws(Failure) -> Outcome {
        do {
            try await control.sendTensor(id: offerTensorID, data: Data(local.localInfo.encoded()))
            var tensors = control.incomingTensors.makeAsyncIterator()
            guard let answer = try await tensors.next() else {
                throw Failure.control(peer: peer, underlying: "closed before answering the RDMA offer")
            }
            guard answer.id == offerTensorID else {
                throw Failure.malformedAnswer(peer: peer, reason: "tensor \(answer.id) instead of the answer")
            }
            let bytes = [UInt8](try await answer.chunks.collectData(maxBytes: 1 + maxReasonBytes))
            guard let status = bytes.first else { throw Failure.malformedAnswer(peer: peer, reason: "empty") }
            switch status {
            case 0:
                await local.close()
                return .refused(reason: String(decoding: bytes.dropFirst(), as: UTF8.self))
            case 1:
                let remote = try RDMAConnectionInfo.decode(Array(bytes.dropFirst()), peer: peer)
                try local.connect(to: remote)
                return .rdma(local)
            default:
                throw Failure.malformedAnswer(peer: peer, reason: "status \(status)")
            }
        } catch {
            await local.close()
            if let failure = error as? Failure { throw failure }
            if let failure = error as? RDMAConnectionInfoError { throw .malformedAnswer(peer: peer, reason: failure.description) }
            if let failure = error as? RDMALinkError { throw .link(failure) }
            throw .control(peer: peer, underlying: "\(error)")
        }
    }

    /// Answerer: given the offer's bytes, sets up and connects its own side with `makeLocal` and accepts, or refuses
    /// with the reason `makeLocal` gives (no usable endpoint here) or the offer's defect. Returns the connected
    /// transport, or nil after a refusal.
    public static func answer<Control: ActivationTransport>(
        offer: [UInt8], over control: Control, peer: String,
        makeLocal: () -> Result<RDMAActivationTransport, RDMASelectionError>
    ) async throws(Failure) -> RDMAActivationTransport? {
        func refuse(_ reason: String) async throws(Failure) {
            var bytes: [UInt8] = [0]
            bytes.append(contentsOf: reason.utf8.prefix(maxReasonBytes))
            do {
                try await control.sendTensor(id: offerTensorID, data: Data(bytes))
            } catch {
                throw .control(peer: peer, underlying: "\(error)")
            }
        }
        let remote: RDMAConnectionInfo
        do throws(RDMAConnectionInfoError) {
            remote = try RDMAConnectionInfo.decode(offer, peer: peer)
        } catch {
            try await refuse(error.description)
            return nil
        }
        let local: RDMAActivationTransport
        switch makeLocal() {
        case let .failure(error):
            try await refuse("no usable RDMA endpoint here: \(error)")
            return nil
        case let .success(made):
            local = made
        }
        do {
            try local.connect(to: remote)
            try await control.sendTensor(id: offerTensorID, data: Data([1] + local.localInfo.encoded()))
            return local
        } catch let error as RDMALinkError {
            await local.close()
            try await refuse(error.description)
            return nil
        } catch {
            await local.close()
            throw .control(peer: peer, underlying: "\(error)")
        }
    }
}
