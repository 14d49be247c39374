import Foundation
import NIOConcurrencyHelpers
@testable import RDMATransport

/// An in-process RDMA fabric: fake devices whose queue pairs really move bytes. A WRITE with immediate copies from
/// the sender's registered region into the peer's, consumes one of the peer's posted receives and completes on both
/// sides, with the checks a NIC makes (QP states, keys, bounds, access rights, a posted receive). Faults are injected
/// by device name.
final class FakeFabric: @unchecked Sendable {
    let lock = NIOLock()
    private var nextKey: UInt32 = 0x100
    private var nextQueuePair: UInt32 = 0x40
    private(set) var regions: [UInt32: FakeRegion] = [:]
    private(set) var queuePairs: [UInt32: FakeQueuePair] = [:]
    private(set) var completionQueues: [FakeCompletionQueue] = []
    private(set) var domains: [FakeDomain] = []
    /// Devices whose next writes complete with this status instead of landing.
    private var injectedStatus: [String: UInt32] = [:]
    /// Devices that vanished: their queue pairs no longer answer.
    private var vanished: Set<String> = []
    /// Devices whose queue pairs cannot reach RTR (as when the peer's GID is unreachable from the port).
    private var unreachableFrom: Set<String> = []
    /// Every state change, as "device QP n: FROM -> TO".
    private(set) var transitions: [String] = []
    /// Data writes that landed, per receiving device.
    private(set) var landedWrites: [String: Int] = [:]

    /// Runs `body` under the lock, keeping its typed error (NIOLock's withLock rethrows `any Error`).
    func locked<T>(_ body: () throws(VerbsError) -> T) throws(VerbsError) -> T {
        lock.lock()
        defer { lock.unlock() }
        return try body()
    }

    func device(_ name: String) -> FakeDataPlaneDevice { FakeDataPlaneDevice(fabric: self, name: name) }

    func injectCompletionError(on device: String, status: UInt32) { lock.withLock { injectedStatus[device] = status } }
    func vanish(_ device: String) { lock.withLock { _ = vanished.insert(device) } }
    /// From now on, connecting a queue pair of `device` (INIT → RTR) fails.
    func failConnects(on device: String) { lock.withLock { _ = unreachableFrom.insert(device) } }
    fileprivate func connectsFail(on device: String) -> Bool { unreachableFrom.contains(device) }
    /// Queue pairs ever created on `device`, live or destroyed.
    func queuePairsCreated(on device: String) -> Int { lock.withLock { queuePairs.values.filter { $0.device == device }.count } }

    func liveRegions(on device: String) -> Int { lock.withLock { regions.values.filter { $0.device == device && $0.live }.count } }
    func liveQueuePairs(on device: String) -> Int { lock.withLock { queuePairs.values.filter { $0.device == device && $0.live }.count } }
    func liveCompletionQueues(on device: String) -> Int { lock.withLock { completionQueues.filter { $0.device == device && $0.live }.count } }
    func liveDomains(on device: String) -> Int { lock.withLock { domains.filter { $0.device == device && $0.live }.count } }
    func landed(on device: String) -> Int { lock.withLock { landedWrites[device, default: 0] } }

    fileprivate func makeKey() -> UInt32 {
        nextKey += 1
        return nextKey
    }

    fileprivate func makeQueuePairNumber() -> UInt32 {
        nextQueuePair += 1
        return nextQueuePair
    }

    fileprivate func add(region: FakeRegion) { regions[region.localKey] = region }
    fileprivate func add(queuePair: FakeQueuePair) { queuePairs[queuePair.number] = queuePair }
    fileprivate func add(completionQueue: FakeCompletionQueue) { completionQueues.append(completionQueue) }
    fileprivate func add(domain: FakeDomain) { domains.append(domain) }
    fileprivate func record(_ transition: String) { transitions.append(transition) }

    /// Carries out a posted WRITE with immediate; called with `lock` held.
    fileprivate func write(from sender: FakeQueuePair, workRequestID: UInt64, region: FakeRegion, offset: Int, length: Int,
                           remoteAddress: UInt64, remoteKey: UInt32, immediate: UInt32) {
        // The failing request completes first; flushing what else was posted comes after, as on hardware.
        func fail(_ status: UInt32, peer: FakeQueuePair? = nil) {
            sender.sendQueue.add(VerbsCompletion(workRequestID: workRequestID, status: status, opcode: .other))
            sender.moveToError()
            peer?.moveToError()
        }
        if sender.current == .error { return fail(VerbsCompletion.statusWorkRequestFlushed) }
        if let status = injectedStatus.removeValue(forKey: sender.device) { return fail(status) }
        guard region.live, region.domain === sender.domain, offset >= 0, offset + length <= region.length else {
            return fail(VerbsCompletion.statusLocalProtectionError)
        }
        guard let remoteNumber = sender.remoteNumber, let peer = queuePairs[remoteNumber], peer.live,
              !vanished.contains(peer.device), !vanished.contains(sender.device),
              peer.current == .readyToReceive || peer.current == .readyToSend else {
            // No acknowledgement ever comes: the sender's retries run out.
            return fail(VerbsCompletion.statusRetryExceeded)
        }
        if length > 0 {
            guard let target = regions.values.first(where: { $0.remoteKey == remoteKey }), target.live, target.remoteWrite,
                  target.domain === peer.domain, remoteAddress >= target.address,
                  remoteAddress + UInt64(length) <= target.address + UInt64(target.length) else {
                return fail(VerbsCompletion.statusRemoteAccessError, peer: peer)
            }
            UnsafeMutableRawPointer(bitPattern: UInt(remoteAddress))!
                .copyMemory(from: UnsafeRawPointer(bitPattern: UInt(region.address) + UInt(offset))!, byteCount: length)
            landedWrites[peer.device, default: 0] += 1
        }
        guard !peer.postedReceives.isEmpty else {
            // rnr_retry 7 would retry for ever on hardware; here a missing receive is a protocol bug made visible.
            return fail(VerbsCompletion.statusReceiverNotReadyRetryExceeded)
        }
        let receive = peer.postedReceives.removeFirst()
        peer.receiveQueue.add(VerbsCompletion(workRequestID: receive, status: 0, opcode: .receiveWithImmediate,
                                              byteLength: UInt32(length), immediate: immediate))
        sender.sendQueue.add(VerbsCompletion(workRequestID: workRequestID, status: 0, opcode: .rdmaWrite, byteLength: UInt32(length)))
    }
}

struct FakeDataPlaneDevice: VerbsDataPlaneDevice {
    let fabric: FakeFabric
    let name: String

    func allocateProtectionDomain() throws(VerbsError) -> any VerbsProtectionDomain {
        let domain = FakeDomain(fabric: fabric, device: name)
        fabric.lock.withLock { fabric.add(domain: domain) }
        return domain
    }

    func createCompletionQueue(entries: Int) throws(VerbsError) -> any VerbsCompletionQueue {
        guard entries > 0 else { throw VerbsError.callFailed(call: "ibv_create_cq", device: name, port: nil, code: EINVAL) }
        let queue = FakeCompletionQueue(fabric: fabric, device: name, capacity: entries)
        fabric.lock.withLock { fabric.add(completionQueue: queue) }
        return queue
    }
}

final class FakeDomain: VerbsProtectionDomain, @unchecked Sendable {
    let fabric: FakeFabric
    let device: String
    var live = true

    init(fabric: FakeFabric, device: String) {
        self.fabric = fabric
        self.device = device
    }

    func register(_ bytes: UnsafeMutableRawBufferPointer, remoteWrite: Bool) throws(VerbsError) -> any VerbsMemoryRegion {
        try fabric.locked { () throws(VerbsError) -> FakeRegion in
            guard live, let base = bytes.baseAddress, bytes.count > 0 else {
                throw VerbsError.callFailed(call: "ibv_reg_mr", device: device, port: nil, code: EINVAL)
            }
            let region = FakeRegion(fabric: fabric, domain: self, device: device, address: UInt64(UInt(bitPattern: base)),
                                    length: bytes.count, key: fabric.makeKey(), remoteWrite: remoteWrite)
            fabric.add(region: region)
            return region
        }
    }

    func createQueuePair(sendQueue: any VerbsCompletionQueue, receiveQueue: any VerbsCompletionQueue, maxSendRequests: Int,
                         maxReceiveRequests: Int) throws(VerbsError) -> any VerbsQueuePair {
        try fabric.locked { () throws(VerbsError) -> FakeQueuePair in
            guard live, let send = sendQueue as? FakeCompletionQueue, let receive = receiveQueue as? FakeCompletionQueue,
                  send.live, receive.live else {
                throw VerbsError.callFailed(call: "ibv_create_qp", device: device, port: nil, code: EINVAL)
            }
            let pair = FakeQueuePair(fabric: fabric, domain: self, device: device, number: fabric.makeQueuePairNumber(),
                                     sendQueue: send, receiveQueue: receive, maxReceives: maxReceiveRequests)
            fabric.add(queuePair: pair)
            return pair
        }
    }

    func deallocate() throws(VerbsError) {
        try fabric.locked { () throws(VerbsError) in
            guard live else { throw VerbsError.callFailed(call: "ibv_dealloc_pd", device: device, port: nil, code: EBADF) }
            let inUse = fabric.regions.values.contains { $0.domain === self && $0.live }
                || fabric.queuePairs.values.contains { $0.domain === self && $0.live }
            guard !inUse else { throw VerbsError.callFailed(call: "ibv_dealloc_pd", device: device, port: nil, code: EBUSY) }
            live = false
        }
    }
}

final class FakeRegion: VerbsMemoryRegion, @unchecked Sendable {
    let fabric: FakeFabric
    let domain: FakeDomain
    let device: String
    let address: UInt64
    let length: Int
    let localKey: UInt32
    let remoteKey: UInt32
    let remoteWrite: Bool
    var live = true

    init(fabric: FakeFabric, domain: FakeDomain, device: String, address: UInt64, length: Int, key: UInt32, remoteWrite: Bool) {
        self.fabric = fabric
        self.domain = domain
        self.device = device
        self.address = address
        self.length = length
        self.localKey = key
        self.remoteKey = key ^ 0x8000_0000
        self.remoteWrite = remoteWrite
    }

    func deregister() throws(VerbsError) {
        try fabric.locked { () throws(VerbsError) in
            guard live else { throw VerbsError.callFailed(call: "ibv_dereg_mr", device: device, port: nil, code: EBADF) }
            live = false
        }
    }
}

/// Completions with the arming rule of a real CQ: an event is raised only for a completion added while armed.
final class FakeCompletionQueue: VerbsCompletionQueue, @unchecked Sendable {
    let fabric: FakeFabric
    let device: String
    let capacity: Int
    var live = true
    private let condition = NSCondition()
    private var entries: [VerbsCompletion] = []
    private var armed = false
    private var eventPending = false
    private var pollCalls = 0

    init(fabric: FakeFabric, device: String, capacity: Int) {
        self.fabric = fabric
        self.device = device
        self.capacity = capacity
    }

    /// How often poll() was called (an idle link must not spin).
    var polls: Int { condition.withLock { pollCalls } }

    func add(_ completion: VerbsCompletion) {
        condition.withLock {
            entries.append(completion)
            if armed {
                armed = false
                eventPending = true
                condition.broadcast()
            }
        }
    }

    func requestNotification() throws(VerbsError) {
        condition.withLock { armed = true }
    }

    func waitForEvent(timeoutMilliseconds: Int) throws(VerbsError) -> Bool {
        condition.withLock {
            let deadline = Date(timeIntervalSinceNow: Double(timeoutMilliseconds) / 1000)
            while !eventPending {
                if !condition.wait(until: deadline) { break }
            }
            defer { eventPending = false }
            return eventPending
        }
    }

    func poll(maxCompletions: Int) throws(VerbsError) -> [VerbsCompletion] {
        condition.withLock {
            pollCalls += 1
            let taken = Array(entries.prefix(maxCompletions))
            entries.removeFirst(taken.count)
            return taken
        }
    }

    func destroy() throws(VerbsError) {
        try fabric.locked { () throws(VerbsError) in
            guard live else { throw VerbsError.callFailed(call: "ibv_destroy_cq", device: device, port: nil, code: EBADF) }
            let inUse = fabric.queuePairs.values.contains { $0.live && ($0.sendQueue === self || $0.receiveQueue === self) }
            guard !inUse else { throw VerbsError.callFailed(call: "ibv_destroy_cq", device: device, port: nil, code: EBUSY) }
            live = false
        }
    }
}

/// An RC queue pair with the verbs state machine: RESET → INIT → RTR → RTS, any state → ERR, nothing else.
final class FakeQueuePair: VerbsQueuePair, @unchecked Sendable {
    let fabric: FakeFabric
    let domain: FakeDomain
    let device: String
    let number: UInt32
    let sendQueue: FakeCompletionQueue
    let receiveQueue: FakeCompletionQueue
    let maxReceives: Int
    var live = true
    var current = VerbsQueuePairState.reset
    var remoteNumber: UInt32?
    var postedReceives: [UInt64] = []

    init(fabric: FakeFabric, domain: FakeDomain, device: String, number: UInt32, sendQueue: FakeCompletionQueue,
         receiveQueue: FakeCompletionQueue, maxReceives: Int) {
        self.fabric = fabric
        self.domain = domain
        self.device = device
        self.number = number
        self.sendQueue = sendQueue
        self.receiveQueue = receiveQueue
        self.maxReceives = maxReceives
    }

    /// With the fabric's lock held. Posted receives complete flushed, as on hardware.
    func moveToError() {
        guard current != .error else { return }
        fabric.record("\(device) QP \(number): \(current) -> ERR")
        current = .error
        for receive in postedReceives {
            receiveQueue.add(VerbsCompletion(workRequestID: receive, status: VerbsCompletion.statusWorkRequestFlushed, opcode: .other))
        }
        postedReceives.removeAll()
    }

    private func transition(from allowed: VerbsQueuePairState, to next: VerbsQueuePairState, _ call: String,
                            port: Int? = nil, _ apply: () -> Void = {}) throws(VerbsError) {
        try fabric.locked { () throws(VerbsError) in
            guard live, current == allowed else {
                throw VerbsError.callFailed(call: "\(call) from \(current) (QP \(number))", device: device, port: port, code: EINVAL)
            }
            apply()
            fabric.record("\(device) QP \(number): \(current) -> \(next)")
            current = next
        }
    }

    func modifyToInit(port: Int) throws(VerbsError) {
        guard port == 1 else { throw VerbsError.callFailed(call: "ibv_modify_qp to INIT", device: device, port: port, code: EINVAL) }
        try transition(from: .reset, to: .initialized, "ibv_modify_qp to INIT", port: port)
    }

    func modifyToReadyToReceive(_ remote: VerbsRemoteQueuePair) throws(VerbsError) {
        guard (1...5).contains(remote.mtuCode) else {
            throw VerbsError.callFailed(call: "ibv_modify_qp to RTR", device: device, port: remote.port, code: EINVAL)
        }
        if fabric.lock.withLock({ fabric.connectsFail(on: device) }) {
            throw VerbsError.callFailed(call: "ibv_modify_qp to RTR", device: device, port: remote.port, code: ENETUNREACH)
        }
        try transition(from: .initialized, to: .readyToReceive, "ibv_modify_qp to RTR", port: remote.port) {
            remoteNumber = remote.queuePairNumber
        }
    }

    func modifyToReadyToSend(packetSequenceNumber: UInt32) throws(VerbsError) {
        try transition(from: .readyToReceive, to: .readyToSend, "ibv_modify_qp to RTS")
    }

    func modifyToError() throws(VerbsError) {
        try fabric.locked { () throws(VerbsError) in
            guard live else { throw VerbsError.callFailed(call: "ibv_modify_qp to ERR", device: device, port: nil, code: EBADF) }
            moveToError()
        }
    }

    func state() throws(VerbsError) -> VerbsQueuePairState {
        try fabric.locked { () throws(VerbsError) in
            guard live else { throw VerbsError.callFailed(call: "ibv_query_qp", device: device, port: nil, code: EBADF) }
            return current
        }
    }

    func postWriteWithImmediate(workRequestID: UInt64, region: any VerbsMemoryRegion, offset: Int, length: Int,
                                remoteAddress: UInt64, remoteKey: UInt32, immediate: UInt32) throws(VerbsError) {
        try fabric.locked { () throws(VerbsError) in
            // Posting before RTS is refused by the provider; in ERR it is accepted and flushed.
            guard live, current == .readyToSend || current == .error, let region = region as? FakeRegion else {
                throw VerbsError.callFailed(call: "ibv_post_send in \(current) (QP \(number))", device: device, port: nil, code: EINVAL)
            }
            fabric.write(from: self, workRequestID: workRequestID, region: region, offset: offset, length: length,
                         remoteAddress: remoteAddress, remoteKey: remoteKey, immediate: immediate)
        }
    }

    func postReceive(workRequestID: UInt64) throws(VerbsError) {
        try fabric.locked { () throws(VerbsError) in
            guard live, current != .reset else {
                throw VerbsError.callFailed(call: "ibv_post_recv in \(current) (QP \(number))", device: device, port: nil, code: EINVAL)
            }
            guard postedReceives.count < maxReceives else {
                throw VerbsError.callFailed(call: "ibv_post_recv beyond \(maxReceives)", device: device, port: nil, code: ENOMEM)
            }
            if current == .error {
                receiveQueue.add(VerbsCompletion(workRequestID: workRequestID, status: VerbsCompletion.statusWorkRequestFlushed,
                                                 opcode: .other))
                return
            }
            postedReceives.append(workRequestID)
        }
    }

    func destroy() throws(VerbsError) {
        try fabric.locked { () throws(VerbsError) in
            guard live else { throw VerbsError.callFailed(call: "ibv_destroy_qp", device: device, port: nil, code: EBADF) }
            live = false
            postedReceives.removeAll()
        }
    }
}
