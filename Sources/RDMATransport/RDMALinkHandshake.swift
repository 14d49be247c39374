import Foundation
import Logging
import NIOCore
import Transport

/// The exchange that turns an authenticated bulk connection into an RDMA link, run as the first tensor each way on
/// it. The dialing side offers its ``RDMAConnectionInfo``; the other side either accepts with its own (both then
/// connect their queue pairs) or refuses with its reason, and the link stays on the bulk connection (TCP). So RDMA is
/// used only when both ends have a usable endpoint, and the dialer can log why not otherwise.
///
/// Offer: tensor ``offerTensorID``, the 56 bytes of the dialer's connection information per lane (one lane per
/// configured device, at most 8). Answer: the same id, one status byte then either (1) the answerer's 56 bytes for
/// each lane it takes (as many as it has, at most those offered), or (0) its reason in UTF-8 (at most 1 KiB).
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

    /// Most queue pairs one link stripes over.
    public static let maxLanes = 8

    /// What the dialer learned, for a link offered on several lanes.
    public enum LanesOutcome: Sendable {
        /// The peer accepted on the first `lanes.count` of the offered lanes (the rest are closed): all connected.
        case rdma([RDMAActivationTransport])
        case refused(reason: String)
    }

    /// Dialer: offers `local` (set up, not connected) over `control`, and connects it if the peer accepts. On a
    /// refusal or a failure `local` is closed here, so its registrations never outlive the exchange.
    public static func offer<Control: ActivationTransport>(_ local: RDMAActivationTransport, over control: Control,
                                                           peer: String) async throws(Failure) -> Outcome {
        switch try await offer(lanes: [local], over: control, peer: peer) {
        case let .rdma(lanes): return .rdma(lanes[0])
        case let .refused(reason): return .refused(reason: reason)
        }
    }

    /// Dialer, on several lanes: the offer is every lane's connection information in lane order; the peer accepts
    /// with its own for as many lanes as it has (at most those offered), and the dialer closes the lanes beyond.
    public static func offer<Control: ActivationTransport>(lanes local: [RDMAActivationTransport], over control: Control,
                                                           peer: String) async throws(Failure) -> LanesOutcome {
        func closeAll() async { for lane in local { await lane.close() } }
        do {
            guard (1...maxLanes).contains(local.count) else {
                throw Failure.control(peer: peer, underlying: "\(local.count) lanes offered; 1 to \(maxLanes) are possible")
            }
            try await control.sendTensor(id: offerTensorID, data: Data(local.flatMap { $0.localInfo.encoded() }))
            var tensors = control.incomingTensors.makeAsyncIterator()
            guard let answer = try await tensors.next() else {
                throw Failure.control(peer: peer, underlying: "closed before answering the RDMA offer")
            }
            guard answer.id == offerTensorID else {
                throw Failure.malformedAnswer(peer: peer, reason: "tensor \(answer.id) instead of the answer")
            }
            let bytes = [UInt8](try await answer.chunks.collectData(maxBytes: 1 + max(maxReasonBytes, maxLanes * RDMAConnectionInfo.encodedLength)))
            guard let status = bytes.first else { throw Failure.malformedAnswer(peer: peer, reason: "empty") }
            switch status {
            case 0:
                await closeAll()
                return .refused(reason: String(decoding: bytes.dropFirst(), as: UTF8.self))
            case 1:
                let remote = try decodeLanes(Array(bytes.dropFirst()), peer: peer)
                guard remote.count <= local.count else {
                    throw Failure.malformedAnswer(peer: peer, reason: "\(remote.count) lanes accepted, \(local.count) offered")
                }
                for lane in local.dropFirst(remote.count) { await lane.close() }
                for (lane, info) in zip(local, remote) { try lane.connect(to: info) }
                return .rdma(Array(local.prefix(remote.count)))
            default:
                throw Failure.malformedAnswer(peer: peer, reason: "status \(status)")
            }
        } catch {
            await closeAll()
            if let failure = error as? Failure { throw failure }
            if let failure = error as? RDMAConnectionInfoError { throw .malformedAnswer(peer: peer, reason: failure.description) }
            if let failure = error as? RDMALinkError { throw .link(failure) }
            throw .control(peer: peer, underlying: "\(error)")
        }
    }

    /// One or more connection informations back to back; anything but a whole number of them is decoded as one, so
    /// the error says what one should be.
    static func decodeLanes(_ bytes: [UInt8], peer: String) throws(RDMAConnectionInfoError) -> [RDMAConnectionInfo] {
        let length = RDMAConnectionInfo.encodedLength
        guard bytes.count > length, bytes.count % length == 0, bytes.count / length <= maxLanes else {
            return [try RDMAConnectionInfo.decode(bytes, peer: peer)]
        }
        var infos: [RDMAConnectionInfo] = []
        for start in stride(from: 0, to: bytes.count, by: length) {
            infos.append(try RDMAConnectionInfo.decode(Array(bytes[start..<start + length]), peer: peer))
        }
        return infos
    }

    /// Answerer: given the offer's bytes, sets up and connects its own side with `makeLocal` and accepts, or refuses
    /// with the reason `makeLocal` gives (no usable endpoint here) or the offer's defect. Returns the connected
    /// transport, or nil after a refusal.
    public static func answer<Control: ActivationTransport>(
        offer: [UInt8], over control: Control, peer: String,
        makeLocal: () -> Result<RDMAActivationTransport, RDMASelectionError>
    ) async throws(Failure) -> RDMAActivationTransport? {
        try await answer(lanesOffer: offer, over: control, peer: peer) { _ in makeLocal().map { [$0] } }?.first
    }

    /// Answerer, on several lanes: `makeLocal(n)` sets up this side's first `n` lanes at most (n = the lanes
    /// offered); each is connected to the offered lane of its position. Returns them, or nil after a refusal.
    public static func answer<Control: ActivationTransport>(
        lanesOffer offer: [UInt8], over control: Control, peer: String,
        makeLocal: (_ count: Int) async -> Result<[RDMAActivationTransport], RDMASelectionError>
    ) async throws(Failure) -> [RDMAActivationTransport]? {
        func refuse(_ reason: String) async throws(Failure) {
            var bytes: [UInt8] = [0]
            bytes.append(contentsOf: reason.utf8.prefix(maxReasonBytes))
            do {
                try await control.sendTensor(id: offerTensorID, data: Data(bytes))
            } catch {
                throw .control(peer: peer, underlying: "\(error)")
            }
        }
        let remote: [RDMAConnectionInfo]
        do throws(RDMAConnectionInfoError) {
            remote = try decodeLanes(offer, peer: peer)
        } catch {
            try await refuse(error.description)
            return nil
        }
        let local: [RDMAActivationTransport]
        switch await makeLocal(remote.count) {
        case let .failure(error):
            try await refuse("no usable RDMA endpoint here: \(error)")
            return nil
        case let .success(made):
            local = Array(made.prefix(remote.count))
            for extra in made.dropFirst(remote.count) { await extra.close() }
        }
        do {
            for (lane, info) in zip(local, remote) { try lane.connect(to: info) }
            try await control.sendTensor(id: offerTensorID, data: Data([1] + local.flatMap { $0.localInfo.encoded() }))
            return local
        } catch let error as RDMALinkError {
            for lane in local { await lane.close() }
            try await refuse(error.description)
            return nil
        } catch {
            for lane in local { await lane.close() }
            throw .control(peer: peer, underlying: "\(error)")
        }
    }
}
