import Foundation
import Logging
import NIOConcurrencyHelpers
import NIOCore
import Transport

/// Why an RDMA activation link failed, naming the device, the queue pair and the peer.
public enum RDMALinkError: Error, CustomStringConvertible, Equatable, Sendable {
    case verbs(VerbsError)
    case connectionInfo(RDMAConnectionInfoError)
    /// The two ends were set up with different rings.
    case ringMismatch(device: String, peer: String, local: RDMARingParameters, remote: RDMARingParameters)
    /// A ring the connection information cannot describe (slot size or count out of range).
    case invalidRing(device: String, ring: RDMARingParameters)
    /// `sendTensor` before ``RDMAActivationTransport/connect(to:)``, or a second connect.
    case notConnected(device: String, peer: String)
    case alreadyConnected(device: String, peer: String)
    /// A work request completed with an error status: the QP is in the error state and the link is unusable.
    case completionFailed(device: String, queuePair: UInt32, peer: String, operation: String, status: UInt32)
    /// The peer wrote something this protocol does not allow.
    case protocolViolation(device: String, peer: String, reason: String)
    /// The link was closed (by this side, or failed earlier); `reason` says which.
    case linkDown(device: String, peer: String, reason: String)

    public var description: String {
        switch self {
        case let .verbs(error): return error.description
        case let .connectionInfo(error): return error.description
        case let .ringMismatch(device, peer, local, remote):
            return "RDMA link \(device) ↔ \(peer): rings differ (here \(local.slotCount) × \(local.slotBytes) bytes, "
                + "there \(remote.slotCount) × \(remote.slotBytes) bytes)"
        case let .invalidRing(device, ring):
            return "RDMA ring of \(ring.slotCount) slots of \(ring.slotBytes) bytes on \(device) is outside the protocol's limits "
                + "(1...\(RDMAConnectionInfo.maxSlotCount - 1) slots of \(RDMAConnectionInfo.slotBytesRange) bytes)"
        case let .notConnected(device, peer): return "RDMA link \(device) ↔ \(peer) is not connected yet"
        case let .alreadyConnected(device, peer): return "RDMA link \(device) ↔ \(peer) is already connected"
        case let .completionFailed(device, queuePair, peer, operation, status):
            return "RDMA \(operation) on \(device) QP \(queuePair) to \(peer) failed: \(VerbsCompletion.statusName(status)); "
                + "the queue pair is in the error state"
        case let .protocolViolation(device, peer, reason): return "RDMA link \(device) ↔ \(peer): \(reason)"
        case let .linkDown(device, peer, reason): return "RDMA link \(device) ↔ \(peer) is down: \(reason)"
        }
    }

    /// True when the link broke under the data (not a local misuse, nor a clean close by either side): the owner
    /// falls back to TCP.
    public var isLinkFailure: Bool {
        switch self {
        case .completionFailed, .protocolViolation, .verbs: return true
        default: return false
        }
    }
}

/// Where a link runs: the device, port and GID of this side, from ``ActivationTransportSelector/usableEndpoint(in:device:gidIndex:)``.
public struct RDMALinkEndpoint: Sendable, Equatable {
    public var port: Int
    public var gidIndex: Int
    public var gid: VerbsGID
    /// enum ibv_mtu code of the port's active MTU.
    public var mtuCode: UInt32
    public var lid: UInt16
    /// RoCE (Ethernet) addresses by GID; InfiniBand may use the LID.
    public var addressByGID: Bool

    public init(port: Int, gidIndex: Int, gid: VerbsGID, mtuCode: UInt32, lid: UInt16 = 0, addressByGID: Bool = true) {
        self.port = port
        self.gidIndex = gidIndex
        self.gid = gid
        self.mtuCode = mtuCode
        self.lid = lid
        self.addressByGID = addressByGID
    }
}

extension RDMALinkEndpoint {
    /// The link endpoint for a port the selector found usable. Peers are addressed by GID (a GRH on every packet),
    /// which RoCE requires and InfiniBand accepts within a subnet.
    public init(_ endpoint: RDMAEndpoint) {
        let mtu = endpoint.activeMTUBytes ?? 1024
        self.init(port: endpoint.port, gidIndex: endpoint.gidIndex, gid: endpoint.gid,
                  mtuCode: UInt32(max(1, min(5, mtu.trailingZeroBitCount - 7))), addressByGID: true)
    }
}

/// ``ActivationTransport`` over one RC queue pair: each side registers a receive ring of fixed-size slots, and the
/// sender RDMA-WRITEs-with-immediate each piece of a tensor into the peer's next slot. The receiver copies the piece
/// out, hands it to a bounded ``InboundTensorQueue`` and only then returns the slot as a credit (a zero-length WRITE
/// with immediate back), so a slow consumer stops the sender at `slotCount` pieces instead of being overwritten.
///
/// Completions are taken by one thread per link that sleeps on the completion channel when there is nothing to do.
/// A failed completion moves the link down: senders throw ``RDMALinkError/completionFailed(device:queuePair:peer:operation:status:)``
/// and the reader of `incomingTensors` throws it after what had arrived whole.
///
/// Life cycle: `init` creates the queue pair (INIT), rings and receives; ``localInfo`` goes to the peer over the
/// control connection; ``connect(to:)`` takes the peer's and moves to RTR and RTS; ``close()`` tells the peer, tears
/// everything down and deregisters the rings.
// @unchecked: mutable state is behind `lock`; verbs objects are thread-safe for the calls made from two threads
// (posting sends from the sender and the receive task, polling from the completion thread).
public final class RDMAActivationTransport: ActivationTransport, @unchecked Sendable {
    public let deviceName: String
    public let peerName: String
    public let ring: RDMARingParameters
    private let endpoint: RDMALinkEndpoint
    private let logger: Logger

    private let domain: any VerbsProtectionDomain
    private let completionQueue: any VerbsCompletionQueue
    private let queuePair: any VerbsQueuePair
    /// Where the peer writes to us.
    private let receiveBytes: UnsafeMutableRawBufferPointer
    private let receiveRegion: any VerbsMemoryRegion
    /// Where pieces are staged for writing to the peer (verbs reads them from registered memory).
    private let sendBytes: UnsafeMutableRawBufferPointer
    private let sendRegion: any VerbsMemoryRegion
    private let initialPSN: UInt32

    private let inbound: InboundTensorQueue
    private let events: AsyncStream<ReceiveEvent>
    private let eventSink: AsyncStream<ReceiveEvent>.Continuation

    private let lock = NIOLock()
    private var state = LinkState()
    private let sendGate = SerialGate()

    private enum ReceiveEvent: Sendable {
        case data(slot: Int, first: Bool, last: Bool, abort: Bool)
        case peerClosed
        case failed(RDMALinkError)
    }

    /// Mutable state, guarded by `lock`.
    private struct LinkState {
        var remote: RDMAConnectionInfo?
        var credits = 0
        /// Staging slots whose write has not completed yet.
        var stagingBusy: [Bool] = []
        var nextSendSlot = 0
        var failure: RDMALinkError?
        var closing = false
        var closeStarted = false
        var torndown = false
        var waiters: [CheckedContinuation<Void, Never>] = []
        var closeSent: CheckedContinuation<Void, Never>?
        var poller: Thread?
        var pollerExited: DispatchSemaphore?
        var receiveTask: Task<Void, Never>?
    }

    // Work request ids: the kind in the top byte, a slot in the low bits.
    private enum Work: UInt64 {
        case data = 1, credit = 2, close = 3, receive = 4
        func id(_ low: Int = 0) -> UInt64 { rawValue << 56 | UInt64(low) }
        static func of(_ id: UInt64) -> (Work?, Int) { (Work(rawValue: id >> 56), Int(id & 0xffff_ffff)) }
    }

    /// Receives posted at any time: the peer may have `slotCount` data writes and `slotCount` credits in flight, plus
    /// its close.
    private var receiveDepth: Int { 2 * ring.slotCount + 2 }

    /// Sets up this side on `device`: protection domain, completion queue, RC queue pair in INIT on `endpoint.port`,
    /// both rings registered, and every receive posted. `inboundBufferBytes` bounds what waits for the consumer.
    public init(device: any VerbsDataPlaneDevice, endpoint: RDMALinkEndpoint, peerName: String,
                ring: RDMARingParameters = .standard, inboundBufferBytes: Int = 8 << 20, logger: Logger) throws(RDMALinkError) {
        guard RDMAConnectionInfo.slotBytesRange.contains(ring.slotBytes),
              (1..<RDMAConnectionInfo.maxSlotCount).contains(ring.slotCount) else {
            throw .invalidRing(device: device.name, ring: ring)
        }
        self.deviceName = device.name
        self.peerName = peerName
        self.ring = ring
        self.endpoint = endpoint
        self.logger = logger
        self.initialPSN = UInt32.random(in: 0...0xff_ffff)
        self.inbound = InboundTensorQueue(bufferBytes: inboundBufferBytes, peerName: "RDMA peer \(peerName)")
        (events, eventSink) = AsyncStream.makeStream(of: ReceiveEvent.self)

        // Page-aligned: registration pins whole pages, and NICs prefer aligned regions.
        let pageSize = Int(getpagesize())
        receiveBytes = .allocate(byteCount: ring.ringBytes, alignment: pageSize)
        sendBytes = .allocate(byteCount: ring.ringBytes, alignment: pageSize)
        receiveBytes.initializeMemory(as: UInt8.self, repeating: 0)
        sendBytes.initializeMemory(as: UInt8.self, repeating: 0)

        var made: (domain: (any VerbsProtectionDomain)?, cq: (any VerbsCompletionQueue)?, qp: (any VerbsQueuePair)?,
                   receive: (any VerbsMemoryRegion)?, send: (any VerbsMemoryRegion)?) = (nil, nil, nil, nil, nil)
        do throws(VerbsError) {
            made.domain = try device.allocateProtectionDomain()
            // Sends (data, credits, close) and receives complete on one queue, so one thread waits on one channel.
            made.cq = try device.createCompletionQueue(entries: 4 * ring.slotCount + 8)
            made.qp = try made.domain!.createQueuePair(sendQueue: made.cq!, receiveQueue: made.cq!,
                                                       maxSendRequests: 2 * ring.slotCount + 2,
                                                       maxReceiveRequests: 2 * ring.slotCount + 2)
            made.receive = try made.domain!.register(receiveBytes, remoteWrite: true)
            made.send = try made.domain!.register(sendBytes, remoteWrite: false)
            try made.qp!.modifyToInit(port: endpoint.port)
            // Receives may be posted in INIT; they must be there before the peer can write.
            for _ in 0..<(2 * ring.slotCount + 2) { try made.qp!.postReceive(workRequestID: Work.receive.id()) }
        } catch {
            // Undo in reverse order of creation; what the device refuses to free now is reported by the first error.
            try? made.qp?.destroy()
            try? made.send?.deregister()
            try? made.receive?.deregister()
            try? made.cq?.destroy()
            try? made.domain?.deallocate()
            receiveBytes.deallocate()
            sendBytes.deallocate()
            throw .verbs(error)
        }
        domain = made.domain!
        completionQueue = made.cq!
        queuePair = made.qp!
        receiveRegion = made.receive!
        sendRegion = made.send!
        state.credits = ring.slotCount
        state.stagingBusy = Array(repeating: false, count: ring.slotCount)
    }

    deinit {
        // Only close() can free the rings: the verbs objects may go only after the completion thread, and the memory
        // only after deregistration. A transport dropped unclosed (possible only before connect, as the thread holds
        // it) leaks its rings rather than freeing memory a device might still write; say so.
        if !state.torndown {
            logger.warning("RDMA link dropped without close()", metadata: ["device": "\(deviceName)", "peer": "\(peerName)"])
        }
    }

    /// This side's connection information, for the peer.
    public var localInfo: RDMAConnectionInfo {
        RDMAConnectionInfo(queuePairNumber: queuePair.number, packetSequenceNumber: initialPSN, mtuCode: endpoint.mtuCode,
                           lid: endpoint.lid, port: UInt8(clamping: endpoint.port), addressByGID: endpoint.addressByGID,
                           gid: endpoint.gid, ringAddress: receiveRegion.address, ringKey: receiveRegion.remoteKey,
                           slotBytes: UInt32(ring.slotBytes), slotCount: UInt16(ring.slotCount))
    }

    /// The queue pair's state as the device reports it.
    public func queuePairState() throws(VerbsError) -> VerbsQueuePairState { try queuePair.state() }

    /// Connects to the peer described by `remote` (RTR, then RTS) and starts taking completions.
    public func connect(to remote: RDMAConnectionInfo) throws(RDMALinkError) {
        let remoteRing = RDMARingParameters(slotBytes: Int(remote.slotBytes), slotCount: Int(remote.slotCount))
        guard remoteRing == ring else {
            throw .ringMismatch(device: deviceName, peer: peerName, local: ring, remote: remoteRing)
        }
        let already: Bool = lock.withLock {
            if state.remote != nil || state.closing { return true }
            state.remote = remote
            return false
        }
        if already { throw .alreadyConnected(device: deviceName, peer: peerName) }
        do throws(VerbsError) {
            try queuePair.modifyToReadyToReceive(VerbsRemoteQueuePair(
                queuePairNumber: remote.queuePairNumber, packetSequenceNumber: remote.packetSequenceNumber,
                mtuCode: min(remote.mtuCode, endpoint.mtuCode), gid: remote.gid, lid: remote.lid,
                localGIDIndex: endpoint.gidIndex, port: endpoint.port, useGlobalRoute: remote.addressByGID))
            try queuePair.modifyToReadyToSend(packetSequenceNumber: initialPSN)
        } catch {
            lock.withLock { state.remote = nil }
            throw .verbs(error)
        }
        let exited = DispatchSemaphore(value: 0)
        let poller = Thread { [self] in
            pollCompletions()
            exited.signal()
        }
        poller.name = "rdma-cq \(deviceName) QP \(queuePair.number)"
        let receiveTask = Task { [self] in await consumeReceives() }
        lock.withLock {
            state.poller = poller
            state.pollerExited = exited
            state.receiveTask = receiveTask
        }
        poller.start()
        logger.info("RDMA link up", metadata: [
            "device": "\(deviceName)", "port": "\(endpoint.port)", "qp": "\(queuePair.number)",
            "peer": "\(peerName)", "peer_qp": "\(remote.queuePairNumber)",
            "ring": "\(ring.slotCount)x\(ring.slotBytes)",
        ])
    }

    // MARK: Sending

    public func sendTensor<Chunks: AsyncSequence>(id: UInt64, chunks: Chunks) async throws where Chunks.Element == ByteBuffer {
        try await sendGate.serialize { try await sendUnordered(id: id, chunks: chunks) }
    }

    private func sendUnordered<Chunks: AsyncSequence>(id: UInt64, chunks: Chunks) async throws where Chunks.Element == ByteBuffer {
        var isFirst = true
        // One piece is held back so the last one can carry the last flag.
        var held: ByteBuffer?
        do {
            for try await var chunk in chunks {
                while chunk.readableBytes > 0 {
                    let piece = chunk.readSlice(length: min(ring.payloadBytesPerSlot, chunk.readableBytes))!
                    if let previous = held {
                        try await write(tensorID: id, payload: previous, first: isFirst, last: false, abort: false)
                        isFirst = false
                    }
                    held = piece
                }
            }
        } catch let error as RDMALinkError {
            throw error
        } catch {
            if !isFirst {  // the receiver has seen the start: tell it the tensor will not complete
                let envelope = (error as? any RemoteErrorConvertible)?.remoteErrorEnvelope
                    ?? RemoteErrorEnvelope(code: "aborted", message: "sender failed: \(error)")
                let text = ByteBuffer(bytes: Array((envelope.code + "\n" + envelope.message).utf8.prefix(ring.payloadBytesPerSlot)))
                try? await write(tensorID: id, payload: text, first: false, last: true, abort: true)
            }
            throw error
        }
        try await write(tensorID: id, payload: held ?? ByteBuffer(), first: isFirst, last: true, abort: false)
    }

    /// Waits for a credit and the staging slot, stages the piece and posts its write.
    private func write(tensorID: UInt64, payload: ByteBuffer, first: Bool, last: Bool, abort: Bool) async throws {
        let (slot, remote) = try await acquireSlot()
        let base = sendBytes.baseAddress! + slot * ring.slotBytes
        RDMARing.writeHeader(tensorID: tensorID, payloadBytes: payload.readableBytes, into: base)
        payload.withUnsafeReadableBytes { bytes in
            if let source = bytes.baseAddress { (base + RDMARing.headerBytes).copyMemory(from: source, byteCount: bytes.count) }
        }
        let immediate = RDMARing.immediate(.data(slot: slot, first: first, last: last, abort: abort))
        do throws(VerbsError) {
            try queuePair.postWriteWithImmediate(
                workRequestID: Work.data.id(slot), region: sendRegion, offset: slot * ring.slotBytes,
                length: RDMARing.headerBytes + payload.readableBytes,
                remoteAddress: remote.ringAddress + UInt64(slot * ring.slotBytes), remoteKey: remote.ringKey,
                immediate: immediate)
        } catch {
            let failure = RDMALinkError.verbs(error)
            linkFailed(failure)
            throw failure
        }
    }

    /// The next slot once a credit is in hand and its staging copy is no longer being read by the device.
    private func acquireSlot() async throws(RDMALinkError) -> (Int, RDMAConnectionInfo) {
        while true {
            let outcome: Result<(Int, RDMAConnectionInfo)?, RDMALinkError> = lock.withLock {
                if let failure = state.failure { return .failure(failure) }
                if state.closing { return .failure(.linkDown(device: deviceName, peer: peerName, reason: "closed")) }
                guard let remote = state.remote else { return .failure(.notConnected(device: deviceName, peer: peerName)) }
                let slot = state.nextSendSlot
                guard state.credits > 0, !state.stagingBusy[slot] else { return .success(nil) }
                state.credits -= 1
                state.stagingBusy[slot] = true
                state.nextSendSlot = (slot + 1) % ring.slotCount
                return .success((slot, remote))
            }
            switch outcome {
            case let .failure(error): throw error
            case let .success(acquired?): return acquired
            case .success(nil):
                await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                    // Re-checked under the lock: a credit that arrived since the check above must not be missed.
                    let ready: Bool = lock.withLock {
                        let ready = state.failure != nil || state.closing
                            || (state.credits > 0 && !state.stagingBusy[state.nextSendSlot])
                        if !ready { state.waiters.append(continuation) }
                        return ready
                    }
                    if ready { continuation.resume() }
                }
            }
        }
    }

    /// Credits this side holds (for tests and the doctor).
    public var availableCredits: Int { lock.withLock { state.credits } }

    private func wakeSenders(_ update: (inout LinkState) -> Void) {
        let waiting: [CheckedContinuation<Void, Never>] = lock.withLock {
            update(&state)
            let waiting = state.waiters
            state.waiters.removeAll()
            return waiting
        }
        for waiter in waiting { waiter.resume() }
    }

    // MARK: Receiving

    public var incomingTensors: IncomingTensors { inbound.incomingTensors }

    /// Largest number of received bytes that waited for the consumer at once.
    public func peakInboundQueueBytes() async -> Int { await inbound.peakQueuedBytes() }

    /// Copies each announced slot out, delivers it, then returns its credit: slots are drained in order.
    private func consumeReceives() async {
        var expectedSlot = 0
        var openTensor: UInt64?
        for await event in events {
            switch event {
            case let .data(slot, first, last, abort):
                guard slot == expectedSlot else {
                    linkFailed(.protocolViolation(device: deviceName, peer: peerName,
                                                  reason: "write announced slot \(slot), expected \(expectedSlot)"))
                    continue
                }
                expectedSlot = (expectedSlot + 1) % ring.slotCount
                let base = UnsafeRawPointer(receiveBytes.baseAddress! + slot * ring.slotBytes)
                let (tensorID, length) = RDMARing.readHeader(base)
                guard length <= ring.payloadBytesPerSlot else {
                    linkFailed(.protocolViolation(device: deviceName, peer: peerName,
                                                  reason: "slot \(slot) claims \(length) bytes; a slot holds \(ring.payloadBytesPerSlot)"))
                    continue
                }
                if first != (openTensor == nil) || (openTensor != nil && openTensor != tensorID) {
                    linkFailed(.protocolViolation(device: deviceName, peer: peerName, reason: "tensor \(tensorID) piece out of order"
                        + (openTensor.map { " (tensor \($0) is open)" } ?? " (no tensor is open)")))
                    continue
                }
                let bytes = ByteBuffer(bytes: UnsafeRawBufferPointer(start: base + RDMARing.headerBytes, count: length))
                openTensor = last ? nil : tensorID
                do {
                    if abort {
                        let text = String(decoding: bytes.readableBytesView, as: UTF8.self)
                        let parts = text.split(separator: "\n", maxSplits: 1, omittingEmptySubsequences: false)
                        try await inbound.deliverAbort(tensorID: tensorID, code: String(parts[0]),
                                                       message: parts.count > 1 ? String(parts[1]) : "")
                    } else {
                        try await inbound.deliverChunk(tensorID: tensorID, first: first, last: last, bytes: bytes)
                    }
                } catch {
                    continue  // the queue was closed: the link is going down
                }
                returnCredit()
            case .peerClosed:
                wakeSenders { $0.failure = $0.failure ?? .linkDown(device: deviceName, peer: peerName, reason: "the peer closed it") }
                await inbound.close()
            case let .failed(error):
                await inbound.fail(error)
            }
        }
    }

    private func returnCredit() {
        guard let remote = lock.withLock({ state.failure == nil && !state.closing ? state.remote : nil }) else { return }
        do throws(VerbsError) {
            try queuePair.postWriteWithImmediate(workRequestID: Work.credit.id(), region: sendRegion, offset: 0, length: 0,
                                                 remoteAddress: remote.ringAddress, remoteKey: remote.ringKey,
                                                 immediate: RDMARing.immediate(.credit(count: 1)))
        } catch {
            linkFailed(.verbs(error))
        }
    }

    // MARK: Completions

    /// The completion thread: drains the queue, and when it is empty arms it, drains once more (a completion that came
    /// before arming raises no event) and sleeps on the channel.
    private func pollCompletions() {
        while true {
            let completions: [VerbsCompletion]
            do throws(VerbsError) {
                var taken = try completionQueue.poll(maxCompletions: 32)
                if taken.isEmpty {
                    if lock.withLock({ state.torndown || (state.closing && state.closeSent == nil) }) { return }
                    try completionQueue.requestNotification()
                    taken = try completionQueue.poll(maxCompletions: 32)
                    if taken.isEmpty {
                        // The timeout only bounds how late a local close is noticed; traffic wakes it at once.
                        _ = try completionQueue.waitForEvent(timeoutMilliseconds: 200)
                        continue
                    }
                }
                completions = taken
            } catch {
                linkFailed(.verbs(error))
                return
            }
            for completion in completions { handle(completion) }
        }
    }

    private func handle(_ completion: VerbsCompletion) {
        let (work, slot) = Work.of(completion.workRequestID)
        if work == .close {
            // close() waits for this however it ended; a peer that is gone makes it fail, which changes nothing now.
            let sent: CheckedContinuation<Void, Never>? = lock.withLock {
                defer { state.closeSent = nil }
                return state.closeSent
            }
            sent?.resume()
            return
        }
        guard completion.isSuccess else {
            let closing = lock.withLock { state.closing }
            // Flushed requests after this side moved the QP to ERR on close are expected.
            if closing && completion.status == VerbsCompletion.statusWorkRequestFlushed { return }
            let operation: String
            switch work {
            case .data: operation = "WRITE of slot \(slot)"
            case .credit: operation = "credit WRITE"
            case .close: operation = "close WRITE"
            case .receive: operation = "RECV"
            case nil: operation = "work request \(completion.workRequestID)"
            }
            linkFailed(.completionFailed(device: deviceName, queuePair: queuePair.number, peer: peerName,
                                         operation: operation, status: completion.status))
            return
        }
        switch work {
        case .data:
            wakeSenders { if $0.stagingBusy.indices.contains(slot) { $0.stagingBusy[slot] = false } }
        case .credit, .close:
            break
        case .receive:
            received(completion)
        case nil:
            linkFailed(.protocolViolation(device: deviceName, peer: peerName,
                                          reason: "completion of unknown work request \(completion.workRequestID)"))
        }
    }

    private func received(_ completion: VerbsCompletion) {
        guard completion.opcode == .receiveWithImmediate, let immediate = completion.immediate,
              let message = RDMARing.message(immediate) else {
            linkFailed(.protocolViolation(device: deviceName, peer: peerName,
                                          reason: "received \(completion.opcode) with immediate \(completion.immediate.map(String.init) ?? "none")"))
            return
        }
        // Replace the consumed receive before anything else: the peer may already be writing the next message.
        if !lock.withLock({ state.closing || state.failure != nil }) {
            do throws(VerbsError) {
                try queuePair.postReceive(workRequestID: Work.receive.id())
            } catch {
                linkFailed(.verbs(error))
                return
            }
        }
        switch message {
        case let .data(slot, first, last, abort):
            guard slot < ring.slotCount else {
                linkFailed(.protocolViolation(device: deviceName, peer: peerName, reason: "slot \(slot) beyond a ring of \(ring.slotCount)"))
                return
            }
            eventSink.yield(.data(slot: slot, first: first, last: last, abort: abort))
        case let .credit(count):
            var overflow = false
            wakeSenders { state in
                state.credits += count
                overflow = state.credits > ring.slotCount
            }
            if overflow {
                linkFailed(.protocolViolation(device: deviceName, peer: peerName, reason: "more credits returned than slots"))
            }
        case .close:
            eventSink.yield(.peerClosed)
        }
    }

    /// Takes the link down once: the QP goes to ERR (the peer's next write fails too), senders throw, and the reader
    /// gets `error` after the tensors that arrived whole.
    private func linkFailed(_ error: RDMALinkError) {
        let first: Bool = lock.withLock {
            guard state.failure == nil else { return false }
            state.failure = error
            return true
        }
        guard first else { return }
        logger.warning("RDMA link failed", metadata: ["device": "\(deviceName)", "peer": "\(peerName)", "error": "\(error)"])
        try? queuePair.modifyToError()
        wakeSenders { _ in }
        eventSink.yield(.failed(error))
        eventSink.finish()
    }

    /// Why the link is down, or nil while it is up.
    public var failure: RDMALinkError? { lock.withLock { state.failure } }

    // MARK: Closing

    /// Tells the peer no more data comes, stops the completion thread and frees every verbs object and ring
    /// (idempotent). Waits for a send in progress to finish first.
    public func close() async {
        let (proceed, remote, healthy) = lock.withLock { () -> (Bool, RDMAConnectionInfo?, Bool) in
            if state.closeStarted { return (false, nil, false) }
            state.closeStarted = true
            return (true, state.remote, state.failure == nil && state.poller != nil)
        }
        guard proceed else { return }
        if let remote, healthy {
            // Announce the close and wait for it to complete, so the peer's reader ends cleanly, not by a timeout.
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                lock.withLock {
                    state.closeSent = continuation
                    state.closing = true
                }
                do throws(VerbsError) {
                    try queuePair.postWriteWithImmediate(workRequestID: Work.close.id(), region: sendRegion, offset: 0, length: 0,
                                                         remoteAddress: remote.ringAddress, remoteKey: remote.ringKey,
                                                         immediate: RDMARing.immediate(.close))
                } catch {
                    let sent: CheckedContinuation<Void, Never>? = lock.withLock {
                        defer { state.closeSent = nil }
                        return state.closeSent
                    }
                    sent?.resume()
                }
            }
        }
        let (poller, exited, receiveTask) = lock.withLock { () -> (Thread?, DispatchSemaphore?, Task<Void, Never>?) in
            state.closing = true
            return (state.poller, state.pollerExited, state.receiveTask)
        }
        // Senders waiting for credits give up now.
        wakeSenders { _ in }
        // ERR flushes the posted receives, whose completions wake the thread to see `closing`.
        try? queuePair.modifyToError()
        if poller != nil, let exited {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                DispatchQueue.global().async {
                    exited.wait()
                    continuation.resume()
                }
            }
        }
        eventSink.finish()
        await receiveTask?.value
        await inbound.close()
        tearDown()
    }

    /// Frees verbs objects in reverse order of creation, then the memory they pinned.
    private func tearDown() {
        var errors: [VerbsError] = []
        func attempt(_ step: () throws(VerbsError) -> Void) {
            do throws(VerbsError) { try step() } catch { errors.append(error) }
        }
        attempt { () throws(VerbsError) in try queuePair.destroy() }
        attempt { () throws(VerbsError) in try sendRegion.deregister() }
        attempt { () throws(VerbsError) in try receiveRegion.deregister() }
        attempt { () throws(VerbsError) in try completionQueue.destroy() }
        attempt { () throws(VerbsError) in try domain.deallocate() }
        lock.withLock { state.torndown = true }
        if errors.isEmpty {
            // Only now can no device write into the rings.
            receiveBytes.deallocate()
            sendBytes.deallocate()
        } else {
            // A region still registered may be written by the device: leak the memory rather than free it under DMA.
            logger.error("RDMA teardown incomplete; keeping the rings allocated",
                         metadata: ["device": "\(deviceName)", "errors": "\(errors.map(\.description))"])
        }
    }
}
