import CUDARuntime
import Dispatch
import Foundation
import NVFP4

extension CUDADevice {
    /// Size of each pinned staging buffer for host↔device copies.
    static let stagingBytes = 64 << 20

    /// Copies host bytes into `buffer` at `offset` through two pinned staging buffers on `stream`: the memcpy into one
    /// overlaps the DMA out of the other. Returns once the last chunk is enqueued (the host memory may be reused).
    /// Callers hold ``exclusive(_:)``.
    func upload(_ bytes: UnsafeRawBufferPointer, to buffer: DeviceBuffer, atByteOffset offset: Int = 0, stream: CUDAStream) throws {
        guard bytes.count > 0 else { return }
        let lane = stream === copyStream ? 2 : stream === exportStream ? 4 : 0
        let staging = [try workspace.host("staging\(lane)", bytes: Self.stagingBytes),
                       try workspace.host("staging\(lane + 1)", bytes: Self.stagingBytes)]
        var done = 0
        var slot = 0
        while done < bytes.count {
            let count = min(Self.stagingBytes, bytes.count - done)
            if let pending = pendingStaging[lane + slot] { try pending.synchronize() }
            parallelCopy(to: staging[slot].pointer, from: bytes.baseAddress! + done, count: count)
            try buffer.copy(from: UnsafeRawBufferPointer(start: staging[slot].pointer, count: count), toByteOffset: offset + done,
                            stream: stream)
            let event = try stagingEvent(lane + slot)
            try event.record(on: stream)
            pendingStaging[lane + slot] = event
            done += count
            slot ^= 1
        }
    }

    /// Copies `count` bytes of `buffer` back to host memory through two pinned staging buffers: the DMA of one chunk
    /// overlaps the memcpy out of the other. Synchronous.
    func download(_ buffer: DeviceBuffer, byteCount count: Int, into host: UnsafeMutableRawBufferPointer, stream: CUDAStream) throws {
        try download(buffer, fromByteOffset: 0, byteCount: count, into: host, stream: stream)
    }

    /// ``download(_:byteCount:into:stream:)`` of the `count` bytes at `offset` in `buffer`.
    func download(_ buffer: DeviceBuffer, fromByteOffset offset: Int, byteCount count: Int, into host: UnsafeMutableRawBufferPointer,
                  stream: CUDAStream) throws {
        precondition(host.count >= count, "host buffer too small")
        guard count > 0 else { return }
        let chunk = min(count, Self.stagingBytes)
        let staging = [try workspace.host("download0", bytes: chunk), try workspace.host("download1", bytes: chunk)]
        let events = [try downloadEvent(0), try downloadEvent(1)]
        let starts = Array(stride(from: 0, to: count, by: chunk))
        func enqueue(_ index: Int) throws {
            let size = min(chunk, count - starts[index])
            try buffer.copy(to: UnsafeMutableRawBufferPointer(start: staging[index % 2].pointer, count: size),
                            fromByteOffset: offset + starts[index], stream: stream)
            try events[index % 2].record(on: stream)
        }
        try enqueue(0)
        for index in starts.indices {
            if index + 1 < starts.count { try enqueue(index + 1) }
            try events[index % 2].synchronize()
            parallelCopy(to: host.baseAddress! + starts[index], from: staging[index % 2].pointer, count: min(chunk, count - starts[index]))
        }
    }

    func stagingEvent(_ index: Int) throws -> CUDAEvent {
        if let event = stagingEvents[index] { return event }
        let event = try CUDAEvent(context: context, timing: false)
        stagingEvents[index] = event
        return event
    }

    func downloadEvent(_ index: Int) throws -> CUDAEvent {
        if let event = downloadEvents[index] { return event }
        let event = try CUDAEvent(context: context, timing: false)
        downloadEvents[index] = event
        return event
    }
}

/// memcpy split over up to 8 threads for large copies (one core's memcpy is far below pinned-memory DMA speed).
func parallelCopy(to destination: UnsafeMutableRawPointer, from source: UnsafeRawPointer, count: Int) {
    let parts = count >= (8 << 20) ? 8 : 1
    if parts == 1 {
        destination.copyMemory(from: source, byteCount: count)
        return
    }
    let pointers = UncheckedSendable((destination: destination, source: source))
    let slice = (count + parts - 1) / parts
    DispatchQueue.concurrentPerform(iterations: parts) { part in
        let start = part * slice
        let size = min(slice, count - start)
        if size > 0 { (pointers.value.destination + start).copyMemory(from: pointers.value.source + start, byteCount: size) }
    }
}
