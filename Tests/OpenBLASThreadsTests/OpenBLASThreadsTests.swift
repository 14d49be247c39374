import COpenBLAS
import Dispatch
import OpenBLASThreads
import Testing

/// OpenBLAS's thread count is process-wide; the CPU attention lowers it to one. A BLAS call elsewhere (GPTQ on the
/// export queue) must never run while it is lowered, or its sums would be grouped differently.
@Suite(.serialized) struct OpenBLASThreadsTests {
    @Test func aCallAtTheConfiguredCountNeverSeesTheSingleThreadSetting() {
        OpenBLASThreads.setThreadCount(2)
        let seen = UnsafeMutableBufferPointer<Int32>.allocate(capacity: 4000)
        defer { seen.deallocate() }
        let shared = SendablePointer(seen)
        // Two threads: one keeps lowering the count, the other keeps reading it as a BLAS caller would.
        DispatchQueue.concurrentPerform(iterations: 2) { role in
            for index in 0..<4000 {
                if role == 0 {
                    OpenBLASThreads.withOneThread {
                        #expect(openblas_get_num_threads() == 1)
                        for _ in 0..<50 { _ = openblas_get_num_threads() }  // hold the setting a little
                    }
                } else {
                    shared.buffer[index] = OpenBLASThreads.withConfiguredThreads { openblas_get_num_threads() }
                }
            }
        }
        #expect(seen.allSatisfy { $0 == 2 }, "a caller saw \(Set(seen).sorted()) threads")
        #expect(openblas_get_num_threads() == 2, "the count is restored after each single-thread body")
    }
}

private struct SendablePointer: @unchecked Sendable {
    let buffer: UnsafeMutableBufferPointer<Int32>
    init(_ buffer: UnsafeMutableBufferPointer<Int32>) { self.buffer = buffer }
}
