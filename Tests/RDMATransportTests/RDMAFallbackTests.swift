import Foundation
import Logging
import NIOConcurrencyHelpers
import Testing
import Transport
@testable import RDMATransport
@testable import Worker

/// What the receiving worker keeps: each tensor once, in arrival order, whichever transport carried it (a resent
/// tensor it already has is dropped, as workerd's receiver does).
final class ReceivedTensors: Sendable {
    private let state = NIOLockedValueBox<(order: [UInt64], bytes: [UInt64: Data], duplicates: Int)>(([], [:], 0))

    func take(id: UInt64, bytes: Data) {
        state.withLockedValue { state in
            if state.bytes[id] != nil {
                state.duplicates += 1
                return
            }
            state.order.append(id)
            state.bytes[id] = bytes
        }
    }

    var snapshot: (order: [UInt64], bytes: [UInt64: Data], duplicates: Int) { state.withLockedValue { $0 } }

    /// Reads `tensors` until they end, acknowledging each on `transport` as workerd's receiver does.
    func serve<T: ActivationTransport>(_ transport: T) -> Task<Void, Never> {
        Task {
            do {
                for try await tensor in transport.incomingTensors {
                    let bytes = try await tensor.chunks.collectData()
                    take(id: tensor.id, bytes: bytes)
                    try await transport.acknowledge(id: tensor.id, byteCount: bytes.count)
                }
            } catch {}
        }
    }
}

@Suite("Falling back from RDMA to TCP mid-job")
struct RDMAFallbackTests {
    @Test("a completion error mid-stream moves the link to TCP and the receiver gets every tensor, byte-identical")
    func midStreamFallback() async throws {
        let logger = Logger(label: "rdma-fallback-test")
        let choice = ActivationLinkChoice(initial: ActivationTransportDecision(transport: .rdma, reason: "test"),
                                          peer: "worker-b", logger: logger)
        let received = ReceivedTensors()
        let dials = NIOLockedValueBox<[ActivationTransportKind]>([])
        let lastRDMA = NIOLockedValueBox<FakeLink?>(nil)
        let servers = NIOLockedValueBox<[Task<Void, Never>]>([])

        // The dialer workerd's successor link would run: RDMA while the choice says so, TCP after (the local
        // transport stands in for TCP here; both meet the same ActivationTransport contract).
        let link = SuccessorLink(worker: "worker-a", successor: "worker-b", policy: .init(firstBackoff: .milliseconds(10)),
                                 logger: logger, dial: {
            if let previous = lastRDMA.withLockedValue({ $0 }) {
                choice.connectionEnded(previous.a)
                await previous.close()
                lastRDMA.withLockedValue { $0 = nil }
            }
            let kind = choice.current.transport
            dials.withLockedValue { $0.append(kind) }
            switch kind {
            case .rdma:
                let rdma = try FakeLink.make(ring: RDMARingParameters(slotBytes: 8192, slotCount: 8))
                lastRDMA.withLockedValue { $0 = rdma }
                servers.withLockedValue { $0.append(received.serve(rdma.b)) }
                return SuccessorLink.Connection(send: { id, bytes in try await rdma.a.sendTensor(id: id, data: bytes) },
                                                acknowledgements: rdma.a.acknowledgements(), close: {})
            case .tcp:
                let (sender, receiver) = LocalActivationTransport.makePair(names: ("worker-a", "worker-b"))
                servers.withLockedValue { $0.append(received.serve(receiver)) }
                return SuccessorLink.Connection(send: { id, bytes in try await sender.sendTensor(id: id, data: bytes) },
                                                acknowledgements: sender.acknowledgements(), close: { await sender.close() })
            }
        }, onLinkDown: { _ in })
        try await link.connect()

        let tensors = (0..<40).map { pattern(3000 + 997 * $0, seed: UInt8($0)) }
        for (index, tensor) in tensors.enumerated() {
            if index == 15 {
                // The RDMA link breaks under the data: the next write completes with an error and the QP goes to ERR.
                let rdma = try #require(lastRDMA.withLockedValue { $0 })
                rdma.fabric.injectCompletionError(on: "fake_a", status: VerbsCompletion.statusRetryExceeded)
            }
            try await link.send(id: UInt64(index), bytes: tensor)
        }
        // Every tensor arrives whole; the ones RDMA lost were resent over TCP.
        for _ in 0..<500 where received.snapshot.order.count < tensors.count { try await Task.sleep(for: .milliseconds(10)) }
        let snapshot = received.snapshot
        #expect(snapshot.order == (0..<40).map(UInt64.init))
        for (index, tensor) in tensors.enumerated() {
            #expect(snapshot.bytes[UInt64(index)] == tensor, "tensor \(index)")
        }
        #expect(dials.withLockedValue { $0 } == [.rdma, .tcp])
        #expect(choice.current.transport == .tcp)
        #expect(choice.current.reason.contains("RDMA link failed mid-job") && choice.current.reason.contains("fake_a"),
                "\(choice.current.reason)")
        await link.close()
        for server in servers.withLockedValue({ $0 }) { server.cancel() }
        // The failed RDMA link released its registrations when the dialer replaced it.
        #expect(lastRDMA.withLockedValue { $0 } == nil)
    }

    @Test("a clean close of an RDMA connection keeps RDMA for the next dial")
    func cleanCloseKeepsRDMA() async throws {
        let choice = ActivationLinkChoice(initial: ActivationTransportDecision(transport: .rdma, reason: "test"),
                                          peer: "worker-b", logger: Logger(label: "t"))
        let link = try FakeLink.make()
        await link.close()
        choice.connectionEnded(link.a)
        // b saw its peer close: also not a failure of the link.
        #expect(link.b.failure?.isLinkFailure == false)
        choice.connectionEnded(link.b)
        #expect(choice.current.transport == .rdma)
        #expect(link.fabric.liveRegions(on: "fake_a") == 0)
    }

    @Test("a link that started on TCP stays on TCP")
    func tcpStaysTCP() async throws {
        let choice = ActivationLinkChoice(initial: ActivationTransportDecision(transport: .tcp, reason: "--transport tcp"),
                                          peer: "worker-b", logger: Logger(label: "t"))
        let link = try FakeLink.make()
        link.fabric.injectCompletionError(on: "fake_a", status: VerbsCompletion.statusRetryExceeded)
        try? await link.a.sendTensor(id: 1, data: pattern(10, seed: 1))
        for _ in 0..<100 where link.a.failure == nil { try await Task.sleep(for: .milliseconds(10)) }
        choice.connectionEnded(link.a)
        #expect(choice.current == ActivationTransportDecision(transport: .tcp, reason: "--transport tcp"))
        await link.close()
    }
}
