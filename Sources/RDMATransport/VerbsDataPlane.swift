import Foundation

// The data-plane half of the narrow verbs interface: protection domains, registered memory, completion queues and
// RC queue pairs. ``VerbsLibrary`` implements it over the CVerbs shim; the tests implement it with an in-process
// fabric that moves real bytes between fake devices.

/// A device that can carry data: what ``RDMAActivationTransport`` opens its queues on.
public protocol VerbsDataPlaneDevice: Sendable {
    var name: String { get }
    func allocateProtectionDomain() throws(VerbsError) -> any VerbsProtectionDomain
    /// A completion queue of at least `entries` entries, with its own completion channel.
    func createCompletionQueue(entries: Int) throws(VerbsError) -> any VerbsCompletionQueue
}

/// A protection domain: regions and queue pairs made on one may only be used together.
public protocol VerbsProtectionDomain: AnyObject, Sendable {
    /// Registers `bytes` (which the caller keeps alive until deregistration) for local write and, when
    /// `remoteWrite`, for the peer's RDMA WRITEs.
    func register(_ bytes: UnsafeMutableRawBufferPointer, remoteWrite: Bool) throws(VerbsError) -> any VerbsMemoryRegion
    /// An RC queue pair in RESET whose sends and receives complete on the given queues.
    func createQueuePair(sendQueue: any VerbsCompletionQueue, receiveQueue: any VerbsCompletionQueue,
                         maxSendRequests: Int, maxReceiveRequests: Int) throws(VerbsError) -> any VerbsQueuePair
    /// Frees the domain; fails (EBUSY) while a region or queue pair made on it is alive.
    func deallocate() throws(VerbsError)
}

/// A registered memory region.
public protocol VerbsMemoryRegion: AnyObject, Sendable {
    /// The registered bytes' first address, as the peer writes to it.
    var address: UInt64 { get }
    var length: Int { get }
    var localKey: UInt32 { get }
    var remoteKey: UInt32 { get }
    /// Deregisters; the keys are invalid afterwards, and the second call fails.
    func deregister() throws(VerbsError)
}

/// A completion queue bound to a completion channel, so an idle waiter sleeps in the kernel instead of spinning.
public protocol VerbsCompletionQueue: AnyObject, Sendable {
    /// Arms the queue: the next completion wakes ``waitForEvent(timeoutMilliseconds:)``.
    func requestNotification() throws(VerbsError)
    /// Sleeps until the armed queue has an event; false on timeout. Poll afterwards: events only say "look".
    func waitForEvent(timeoutMilliseconds: Int) throws(VerbsError) -> Bool
    func poll(maxCompletions: Int) throws(VerbsError) -> [VerbsCompletion]
    func destroy() throws(VerbsError)
}

/// enum ibv_qp_state.
public enum VerbsQueuePairState: UInt32, Sendable, CustomStringConvertible {
    case reset = 0, initialized = 1, readyToReceive = 2, readyToSend = 3, sendQueueDrained = 4, sendQueueError = 5,
         error = 6

    public var description: String {
        switch self {
        case .reset: return "RESET"
        case .initialized: return "INIT"
        case .readyToReceive: return "RTR"
        case .readyToSend: return "RTS"
        case .sendQueueDrained: return "SQD"
        case .sendQueueError: return "SQE"
        case .error: return "ERR"
        }
    }
}

/// What RTR needs to know of the peer's queue pair.
public struct VerbsRemoteQueuePair: Sendable, Equatable {
    public var queuePairNumber: UInt32
    public var packetSequenceNumber: UInt32
    /// enum ibv_mtu code (1 = 256 … 5 = 4096 bytes).
    public var mtuCode: UInt32
    public var gid: VerbsGID
    public var lid: UInt16
    /// This side's GID index: on RoCE the GRH's source address, which selects RoCE v2.
    public var localGIDIndex: Int
    /// This side's port, which the path to the peer leaves from.
    public var port: Int
    /// Address the peer by GID (always on RoCE, which has no LIDs).
    public var useGlobalRoute: Bool

    public init(queuePairNumber: UInt32, packetSequenceNumber: UInt32, mtuCode: UInt32, gid: VerbsGID, lid: UInt16 = 0,
                localGIDIndex: Int, port: Int, useGlobalRoute: Bool = true) {
        self.queuePairNumber = queuePairNumber
        self.packetSequenceNumber = packetSequenceNumber
        self.mtuCode = mtuCode
        self.gid = gid
        self.lid = lid
        self.localGIDIndex = localGIDIndex
        self.port = port
        self.useGlobalRoute = useGlobalRoute
    }
}

/// An RC queue pair.
public protocol VerbsQueuePair: AnyObject, Sendable {
    var number: UInt32 { get }
    /// RESET → INIT on `port`, letting the peer write into this side's remote-write regions.
    func modifyToInit(port: Int) throws(VerbsError)
    /// INIT → RTR.
    func modifyToReadyToReceive(_ remote: VerbsRemoteQueuePair) throws(VerbsError)
    /// RTR → RTS.
    func modifyToReadyToSend(packetSequenceNumber: UInt32) throws(VerbsError)
    /// Any state → ERR: posted work requests complete with a flush error.
    func modifyToError() throws(VerbsError)
    func state() throws(VerbsError) -> VerbsQueuePairState
    /// RDMA WRITE with immediate of `length` bytes at `offset` of `region` to `remoteAddress` of the peer's region
    /// `remoteKey`. Signalled: completes on the send queue with `workRequestID`.
    func postWriteWithImmediate(workRequestID: UInt64, region: any VerbsMemoryRegion, offset: Int, length: Int,
                                remoteAddress: UInt64, remoteKey: UInt32, immediate: UInt32) throws(VerbsError)
    /// A receive with no buffer, consumed by one incoming WRITE with immediate.
    func postReceive(workRequestID: UInt64) throws(VerbsError)
    /// Fails (EBUSY) never in practice; after it the number is free for reuse.
    func destroy() throws(VerbsError)
}

/// Completion opcodes the data plane distinguishes.
public enum VerbsCompletionOpcode: UInt32, Sendable {
    case other = 0, rdmaWrite = 1, receiveWithImmediate = 2, receive = 3
}

/// One work completion.
public struct VerbsCompletion: Sendable, Equatable {
    public var workRequestID: UInt64
    /// enum ibv_wc_status; 0 is success.
    public var status: UInt32
    public var opcode: VerbsCompletionOpcode
    public var byteLength: UInt32
    public var immediate: UInt32?
    public var vendorError: UInt32

    public init(workRequestID: UInt64, status: UInt32, opcode: VerbsCompletionOpcode, byteLength: UInt32 = 0,
                immediate: UInt32? = nil, vendorError: UInt32 = 0) {
        self.workRequestID = workRequestID
        self.status = status
        self.opcode = opcode
        self.byteLength = byteLength
        self.immediate = immediate
        self.vendorError = vendorError
    }

    public var isSuccess: Bool { status == 0 }

    /// enum ibv_wc_status codes the data plane names (the rest print as numbers).
    public static let statusLocalProtectionError: UInt32 = 4
    public static let statusWorkRequestFlushed: UInt32 = 5
    public static let statusRemoteAccessError: UInt32 = 10
    public static let statusRetryExceeded: UInt32 = 12
    public static let statusReceiverNotReadyRetryExceeded: UInt32 = 13

    /// The status's name as ibv_wc_status_str prints it, for the ones the data plane meets.
    public static func statusName(_ status: UInt32) -> String {
        switch status {
        case 0: return "success"
        case 1: return "local length error"
        case 2: return "local QP operation error"
        case statusLocalProtectionError: return "local protection error"
        case statusWorkRequestFlushed: return "work request flushed"
        case 9: return "remote invalid request error"
        case statusRemoteAccessError: return "remote access error"
        case 11: return "remote operation error"
        case statusRetryExceeded: return "transport retry counter exceeded (peer unreachable)"
        case statusReceiverNotReadyRetryExceeded: return "RNR retry counter exceeded (no receive posted)"
        default: return "status \(status)"
        }
    }
}
