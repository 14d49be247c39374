import CVerbs
import Foundation
import NIOConcurrencyHelpers

// The data-plane protocols over the CVerbs shim. Each object keeps what it was made from alive (a region its domain,
// a domain its device), so libibverbs never sees a child outlive its parent through Swift's reference counting.
// Each records whether it was already destroyed: a second destroy is an error, never a double free.

extension VerbsDevice: VerbsDataPlaneDevice {
    public func allocateProtectionDomain() throws(VerbsError) -> any VerbsProtectionDomain {
        var pd: OpaquePointer?
        let status = cverbs_pd_alloc(context, &pd)
        guard status == 0, let pd else { throw VerbsError.callFailed(call: "ibv_alloc_pd", device: name, port: nil, code: status) }
        return ShimProtectionDomain(device: self, pd: pd)
    }

    public func createCompletionQueue(entries: Int) throws(VerbsError) -> any VerbsCompletionQueue {
        guard let count = Int32(exactly: entries), count > 0 else {
            throw VerbsError.callFailed(call: "ibv_create_cq (\(entries) entries)", device: name, port: nil, code: EINVAL)
        }
        var cq: OpaquePointer?
        let status = cverbs_cq_create(context, count, &cq)
        guard status == 0, let cq else { throw VerbsError.callFailed(call: "ibv_create_cq", device: name, port: nil, code: status) }
        return ShimCompletionQueue(device: self, cq: cq)
    }
}

/// Holds a shim pointer until it is destroyed once.
// @unchecked: the pointer is read under the lock, and cleared there by the one destroy that frees it.
final class ShimObject: @unchecked Sendable {
    private let lock = NIOLock()
    private var pointer: OpaquePointer?
    let device: String
    let kind: String

    init(_ pointer: OpaquePointer, device: String, kind: String) {
        self.pointer = pointer
        self.device = device
        self.kind = kind
    }

    /// The live pointer, or an error naming the object for use after destroy.
    func live(_ call: String) throws(VerbsError) -> OpaquePointer {
        let current = lock.withLock { pointer }
        guard let current else { throw VerbsError.callFailed(call: "\(call) on a destroyed \(kind)", device: device, port: nil, code: EBADF) }
        return current
    }

    /// Runs `destroy` once; the pointer is forgotten only when it succeeded.
    func destroy(_ call: String, _ destroy: (OpaquePointer) -> Int32) throws(VerbsError) {
        let status: Int32 = lock.withLock {
            guard let current = pointer else { return EBADF }
            let status = destroy(current)
            if status == 0 { pointer = nil }
            return status
        }
        guard status == 0 else { throw VerbsError.callFailed(call: call, device: device, port: nil, code: status) }
    }

    var isLive: Bool { lock.withLock { pointer != nil } }
}

final class ShimProtectionDomain: VerbsProtectionDomain {
    let device: VerbsDevice
    let object: ShimObject

    init(device: VerbsDevice, pd: OpaquePointer) {
        self.device = device
        self.object = ShimObject(pd, device: device.name, kind: "protection domain")
    }

    deinit { if object.isLive { try? deallocate() } }

    func register(_ bytes: UnsafeMutableRawBufferPointer, remoteWrite: Bool) throws(VerbsError) -> any VerbsMemoryRegion {
        let pd = try object.live("ibv_reg_mr")
        guard let base = bytes.baseAddress, bytes.count > 0 else {
            throw VerbsError.callFailed(call: "ibv_reg_mr of an empty buffer", device: device.name, port: nil, code: EINVAL)
        }
        var mr: OpaquePointer?
        var lkey: UInt32 = 0
        var rkey: UInt32 = 0
        let status = cverbs_mr_register(pd, base, bytes.count, remoteWrite ? 1 : 0, &mr, &lkey, &rkey)
        guard status == 0, let mr else {
            throw VerbsError.callFailed(call: "ibv_reg_mr (\(bytes.count) bytes)", device: device.name, port: nil, code: status)
        }
        return ShimMemoryRegion(domain: self, mr: mr, address: UInt64(UInt(bitPattern: base)), length: bytes.count,
                                localKey: lkey, remoteKey: rkey)
    }

    func createQueuePair(sendQueue: any VerbsCompletionQueue, receiveQueue: any VerbsCompletionQueue,
                         maxSendRequests: Int, maxReceiveRequests: Int) throws(VerbsError) -> any VerbsQueuePair {
        guard let send = sendQueue as? ShimCompletionQueue, let receive = receiveQueue as? ShimCompletionQueue else {
            throw VerbsError.callFailed(call: "ibv_create_qp with a completion queue of another provider", device: device.name,
                                        port: nil, code: EINVAL)
        }
        guard let sends = UInt32(exactly: maxSendRequests), let receives = UInt32(exactly: maxReceiveRequests) else {
            throw VerbsError.callFailed(call: "ibv_create_qp", device: device.name, port: nil, code: EINVAL)
        }
        let pd = try object.live("ibv_create_qp")
        var qp: OpaquePointer?
        var number: UInt32 = 0
        let status = cverbs_qp_create(pd, try send.object.live("ibv_create_qp"), try receive.object.live("ibv_create_qp"),
                                      sends, receives, &qp, &number)
        guard status == 0, let qp else { throw VerbsError.callFailed(call: "ibv_create_qp", device: device.name, port: nil, code: status) }
        return ShimQueuePair(domain: self, sendQueue: send, receiveQueue: receive, qp: qp, number: number)
    }

    func deallocate() throws(VerbsError) {
        try object.destroy("ibv_dealloc_pd") { cverbs_pd_free($0) }
    }
}

final class ShimMemoryRegion: VerbsMemoryRegion {
    let domain: ShimProtectionDomain
    let object: ShimObject
    let address: UInt64
    let length: Int
    let localKey: UInt32
    let remoteKey: UInt32

    init(domain: ShimProtectionDomain, mr: OpaquePointer, address: UInt64, length: Int, localKey: UInt32, remoteKey: UInt32) {
        self.domain = domain
        self.object = ShimObject(mr, device: domain.device.name, kind: "memory region")
        self.address = address
        self.length = length
        self.localKey = localKey
        self.remoteKey = remoteKey
    }

    deinit { if object.isLive { try? deregister() } }

    func deregister() throws(VerbsError) {
        try object.destroy("ibv_dereg_mr") { cverbs_mr_deregister($0) }
    }
}

final class ShimCompletionQueue: VerbsCompletionQueue {
    let device: VerbsDevice
    let object: ShimObject

    init(device: VerbsDevice, cq: OpaquePointer) {
        self.device = device
        self.object = ShimObject(cq, device: device.name, kind: "completion queue")
    }

    deinit { if object.isLive { try? destroy() } }

    func requestNotification() throws(VerbsError) {
        let status = cverbs_cq_request_notify(try object.live("ibv_req_notify_cq"))
        guard status == 0 else { throw VerbsError.callFailed(call: "ibv_req_notify_cq", device: device.name, port: nil, code: status) }
    }

    func waitForEvent(timeoutMilliseconds: Int) throws(VerbsError) -> Bool {
        let status = cverbs_cq_wait(try object.live("ibv_get_cq_event"), Int32(clamping: timeoutMilliseconds))
        if status == ETIMEDOUT { return false }
        guard status == 0 else { throw VerbsError.callFailed(call: "ibv_get_cq_event", device: device.name, port: nil, code: status) }
        return true
    }

    func poll(maxCompletions: Int) throws(VerbsError) -> [VerbsCompletion] {
        let cq = try object.live("ibv_poll_cq")
        var raw = [cverbs_completion](repeating: cverbs_completion(), count: max(1, min(maxCompletions, 32)))
        var count: Int32 = 0
        let status = cverbs_cq_poll(cq, &raw, Int32(raw.count), &count)
        guard status == 0 else { throw VerbsError.callFailed(call: "ibv_poll_cq", device: device.name, port: nil, code: status) }
        return raw.prefix(Int(count)).map { completion in
            VerbsCompletion(workRequestID: completion.wr_id, status: completion.status,
                            opcode: VerbsCompletionOpcode(rawValue: completion.opcode) ?? .other,
                            byteLength: completion.byte_len, immediate: completion.has_imm != 0 ? completion.imm_data : nil,
                            vendorError: completion.vendor_error)
        }
    }

    func destroy() throws(VerbsError) {
        try object.destroy("ibv_destroy_cq") { cverbs_cq_destroy($0) }
    }
}

final class ShimQueuePair: VerbsQueuePair {
    let domain: ShimProtectionDomain
    // Kept so the queues outlive the QP that completes on them.
    let sendQueue: ShimCompletionQueue
    let receiveQueue: ShimCompletionQueue
    let object: ShimObject
    let number: UInt32

    init(domain: ShimProtectionDomain, sendQueue: ShimCompletionQueue, receiveQueue: ShimCompletionQueue, qp: OpaquePointer,
         number: UInt32) {
        self.domain = domain
        self.sendQueue = sendQueue
        self.receiveQueue = receiveQueue
        self.object = ShimObject(qp, device: domain.device.name, kind: "queue pair \(number)")
        self.number = number
    }

    deinit { if object.isLive { try? destroy() } }

    private func check(_ status: Int32, _ call: String, port: Int? = nil) throws(VerbsError) {
        guard status == 0 else { throw VerbsError.callFailed(call: "\(call) (QP \(number))", device: domain.device.name, port: port, code: status) }
    }

    func modifyToInit(port: Int) throws(VerbsError) {
        guard let portNumber = UInt8(exactly: port), portNumber > 0 else { try check(EINVAL, "ibv_modify_qp to INIT", port: port); return }
        try check(cverbs_qp_modify_init(try object.live("ibv_modify_qp"), portNumber), "ibv_modify_qp to INIT", port: port)
    }

    func modifyToReadyToReceive(_ remote: VerbsRemoteQueuePair) throws(VerbsError) {
        guard let port = UInt8(exactly: remote.port), port > 0, let gidIndex = UInt8(exactly: remote.localGIDIndex),
              (1...5).contains(remote.mtuCode) else {
            try check(EINVAL, "ibv_modify_qp to RTR", port: remote.port)
            return
        }
        var raw = cverbs_remote_qp()
        raw.qp_num = remote.queuePairNumber
        raw.psn = remote.packetSequenceNumber
        raw.mtu_code = remote.mtuCode
        raw.lid = remote.lid
        withUnsafeMutableBytes(of: &raw.gid) { $0.copyBytes(from: remote.gid.bytes) }
        raw.local_gid_index = gidIndex
        raw.port = port
        raw.use_grh = remote.useGlobalRoute ? 1 : 0
        try check(cverbs_qp_modify_rtr(try object.live("ibv_modify_qp"), &raw), "ibv_modify_qp to RTR", port: remote.port)
    }

    func modifyToReadyToSend(packetSequenceNumber: UInt32) throws(VerbsError) {
        try check(cverbs_qp_modify_rts(try object.live("ibv_modify_qp"), packetSequenceNumber), "ibv_modify_qp to RTS")
    }

    func modifyToError() throws(VerbsError) {
        try check(cverbs_qp_modify_error(try object.live("ibv_modify_qp")), "ibv_modify_qp to ERR")
    }

    func state() throws(VerbsError) -> VerbsQueuePairState {
        var raw: UInt32 = 0
        try check(cverbs_qp_query_state(try object.live("ibv_query_qp"), &raw), "ibv_query_qp")
        guard let state = VerbsQueuePairState(rawValue: raw) else { try check(EPROTO, "ibv_query_qp state \(raw)"); return .error }
        return state
    }

    func postWriteWithImmediate(workRequestID: UInt64, region: any VerbsMemoryRegion, offset: Int, length: Int,
                                remoteAddress: UInt64, remoteKey: UInt32, immediate: UInt32) throws(VerbsError) {
        guard let region = region as? ShimMemoryRegion, offset >= 0, length >= 0, offset + length <= region.length,
              let length32 = UInt32(exactly: length) else {
            try check(EINVAL, "ibv_post_send: \(length) bytes at \(offset) outside the registered region")
            return
        }
        _ = try region.object.live("ibv_post_send")
        let local = UnsafeRawPointer(bitPattern: UInt(region.address) + UInt(offset))
        try check(cverbs_post_write_imm(try object.live("ibv_post_send"), workRequestID, local, length32, region.localKey,
                                        remoteAddress, remoteKey, immediate), "ibv_post_send RDMA_WRITE_WITH_IMM")
    }

    func postReceive(workRequestID: UInt64) throws(VerbsError) {
        try check(cverbs_post_recv(try object.live("ibv_post_recv"), workRequestID), "ibv_post_recv")
    }

    func destroy() throws(VerbsError) {
        try object.destroy("ibv_destroy_qp") { cverbs_qp_destroy($0) }
    }
}
