import NIOCore

/// The receiving half for an ``ActivationTransport`` built outside this module (the RDMA one): whatever moves the
/// bytes delivers chunks here, and the consumer reads them as ``IncomingTensors`` with exactly the semantics of the
/// TCP and local transports (whole tensors in order, aborts, undrained tensors skipped).
///
/// Buffering is bounded: ``deliverChunk(tensorID:first:last:bytes:)`` suspends while `bufferBytes` are queued, so a
/// producer that frees its own buffers only after delivering slows its sender down.
public struct InboundTensorQueue: Sendable {
    private let pipe: LocalBulkPipe
    private let receiver: BulkReceiver

    /// `peerName` names the sending side in `connectionClosed` errors.
    public init(bufferBytes: Int, peerName: String) {
        pipe = LocalBulkPipe(capacity: max(1, bufferBytes), senderName: peerName)
        receiver = BulkReceiver(source: pipe)
    }

    public func deliverChunk(tensorID: UInt64, first: Bool, last: Bool, bytes: ByteBuffer) async throws {
        var flags: FrameFlags = []
        if first { flags.insert(.firstChunk) }
        if last { flags.insert(.lastChunk) }
        try await pipe.push(.chunk(tensorID: tensorID, flags: flags, bytes: bytes))
    }

    /// The sender gave up on `tensorID`; its reader throws ``TransportError/remoteError(code:message:)``.
    public func deliverAbort(tensorID: UInt64, code: String, message: String) async throws {
        try await pipe.push(.abort(tensorID: tensorID, RemoteErrorEnvelope(code: code, message: message)))
    }

    /// Ends cleanly: the tensors already queued are delivered, then the sequence finishes.
    public func close() async { await pipe.close() }

    /// Ends with `error`, which the consumer sees after the queued tensors.
    public func fail(_ error: any Error) async { await pipe.fail(error) }

    public var incomingTensors: IncomingTensors { IncomingTensors(receiver: receiver) }

    /// Largest number of chunk bytes queued at once.
    public func peakQueuedBytes() async -> Int { await pipe.peakBytes }
}
