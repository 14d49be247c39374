import Foundation
import Logging
import NIOCore
import Transport

/// One link over several RDMA queue pairs, one per configured device (a ConnectX-7 port half each): every tensor is
/// cut into as many contiguous parts as there are lanes, part *k* sent on lane *k* as a tensor of the same id, all
/// lanes at once. The receiver reads one tensor from each lane in lane order and joins them, so tensors arrive whole,
/// in order and byte-identical; acknowledgements travel the same way. A failure on any lane fails the link.
public final class StripedActivationTransport: ActivationTransport, @unchecked Sendable {
    public let lanes: [RDMAActivationTransport]
    private let inbound: InboundTensorQueue
    private let sendGate = SerialGate()
    private let joining: Task<Void, Never>

    /// `lanes` are connected; they are closed with this transport.
    public init(lanes: [RDMAActivationTransport], inboundBufferBytes: Int = 8 << 20) {
        precondition(!lanes.isEmpty, "a striped link needs at least one lane")
        self.lanes = lanes
        let inbound = InboundTensorQueue(bufferBytes: inboundBufferBytes, peerName: "RDMA peer \(lanes[0].peerName)")
        self.inbound = inbound
        joining = Task { await Self.join(lanes, into: inbound) }
    }

    public var deviceNames: [String] { lanes.map(\.deviceName) }

    /// The first lane's failure, or nil while every lane is up.
    public var failure: RDMALinkError? { lanes.lazy.compactMap(\.failure).first }

    public var incomingTensors: IncomingTensors { inbound.incomingTensors }

    public func sendTensor<Chunks: AsyncSequence>(id: UInt64, chunks: Chunks) async throws where Chunks.Element == ByteBuffer {
        // The parts need the whole length; a chunk source that fails here has sent nothing.
        var whole = ByteBuffer()
        for try await var chunk in chunks { whole.writeBuffer(&chunk) }
        let parts = Self.split(whole, into: lanes.count)
        let lanes = self.lanes
        // Whole tensors in turn: the receiver pairs each lane's n-th tensor with the others' n-th.
        try await sendGate.serialize {
            try await withThrowingTaskGroup(of: Void.self) { group in
                for (lane, part) in zip(lanes, parts) {
                    group.addTask { try await lane.sendTensor(id: id, chunks: [part]) }
                }
                try await group.waitForAll()
            }
        }
    }

    /// Contiguous parts, the first ones one byte longer where the length does not divide; empty parts are sent too.
    static func split(_ buffer: ByteBuffer, into count: Int) -> [ByteBuffer] {
        let total = buffer.readableBytes
        var offset = buffer.readerIndex
        return (0..<count).map { index in
            let length = total / count + (index < total % count ? 1 : 0)
            defer { offset += length }
            return buffer.getSlice(at: offset, length: length)!
        }
    }

    public func close() async {
        for lane in lanes { await lane.close() }
        await joining.value
    }

    /// Reads lane 0's next tensor, then each other lane's, checks the ids agree, and delivers the parts as one.
    private static func join(_ lanes: [RDMAActivationTransport], into inbound: InboundTensorQueue) async {
        var iterators = lanes.map { $0.incomingTensors.makeAsyncIterator() }
        do {
            while true {
                guard let head = try await iterators[0].next() else {
                    await inbound.close()
                    return
                }
                var first = true
                var pending: ByteBuffer?
                for index in lanes.indices {
                    let tensor: IncomingTensor
                    if index == 0 {
                        tensor = head
                    } else {
                        guard let next = try await iterators[index].next() else {
                            throw RDMALinkError.protocolViolation(device: lanes[index].deviceName, peer: lanes[index].peerName,
                                                                  reason: "lane \(index) ended in the middle of tensor \(head.id)")
                        }
                        guard next.id == head.id else {
                            throw RDMALinkError.protocolViolation(device: lanes[index].deviceName, peer: lanes[index].peerName,
                                                                  reason: "lane \(index) carries tensor \(next.id) where lane 0 has \(head.id)")
                        }
                        tensor = next
                    }
                    // One chunk is held back so the last one of the last lane can carry the last flag.
                    for try await chunk in tensor.chunks {
                        if let previous = pending {
                            try await inbound.deliverChunk(tensorID: head.id, first: first, last: false, bytes: previous)
                            first = false
                        }
                        pending = chunk
                    }
                }
                try await inbound.deliverChunk(tensorID: head.id, first: first, last: true, bytes: pending ?? ByteBuffer())
            }
        } catch {
            await inbound.fail(error)
        }
    }
}
