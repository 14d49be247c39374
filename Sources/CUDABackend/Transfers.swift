import CUDARuntime
import Foundation

extension CUDADevice {
    /// Size of each pinned staging buffer for host→device uploads.
    static let stagingBytes = 64 << 20

    /// Copies host bytes into `buffer` at `offset` through two pinned staging buffers on `stream`: the memcpy into one
    /// overlaps the DMA out of the other. Returns once the last chunk is enqueued (the host memory may be reused).
    /// Callers hold ``exclusive(_:)``.
    func upload(_ bytes: UnsafeRawBufferPointer, to buffer: DeviceBuffer, atByteOffset offset: Int = 0, stream: CUDAStream) throws {
        guard bytes.count > 0 else { return }
        let staging = [try workspace.host("staging0", bytes: Self.stagingBytes), try workspace.host("staging1", bytes: Self.stagingBytes)]
        let events = [try stagingEvent(0), try stagingEvent(1)]
        var done = 0
        var slot = 0
        while done < bytes.count {
            let count = min(Self.stagingBytes, bytes.count - done)
            if let pending = pendingStaging[slot] { try pending.synchronize() }
            staging[slot].pointer.copyMemory(from: bytes.baseAddress! + done, byteCount: count)
            try buffer.copy(from: UnsafeRawBufferPointer(start: staging[slot].pointer, count: count), toByteOffset: offset + done,
                            stream: stream)
            try events[slot].record(on: stream)
            pendingStaging[slot] = events[slot]
            done += count
            slot ^= 1
        }
    }

    /// Copies `count` bytes of `buffer` back to host memory through pinned staging. Synchronous.
    func download(_ buffer: DeviceBuffer, byteCount count: Int, into host: UnsafeMutableRawBufferPointer, stream: CUDAStream) throws {
        precondition(host.count >= count, "host buffer too small")
        let staging = try workspace.host("download", bytes: min(count, Self.stagingBytes))
        var done = 0
        while done < count {
            let chunk = min(staging.byteCount, count - done)
            try buffer.copy(to: UnsafeMutableRawBufferPointer(start: staging.pointer, count: chunk), fromByteOffset: done, stream: stream)
            try stream.synchronize()
            host.baseAddress!.advanced(by: done).copyMemory(from: staging.pointer, byteCount: chunk)
            done += chunk
        }
    }

    func stagingEvent(_ index: Int) throws -> CUDAEvent {
        if let event = stagingEvents[index] { return event }
        let event = try CUDAEvent(context: context, timing: false)
        stagingEvents[index] = event
        return event
    }
}
