#if canImport(Glibc)
import Glibc
#endif

/// How the daemons and `coordctl` ask the C allocator to behave.
public enum ProcessMemory {
    /// Blocks this large and larger are mapped on their own and unmapped when freed.
    public static let mappedBlockThreshold: Int32 = 128 << 10

    /// Fixes glibc's mmap threshold at ``mappedBlockThreshold``. Left dynamic, glibc raises it to the largest block
    /// freed so far (up to 32 MiB): after the first layer's f32 weights are freed, later blocks of that size come
    /// from the heap and stay in the process when freed. On SmolLM2 on the CPU this took the peak resident set from
    /// 682 MB to 412 MB with the same checkpoint bytes (Docs/benchmarks.md). No effect on other C libraries.
    public static func returnLargeBlocksToTheSystem() {
        #if canImport(Glibc)
        // Swift's Glibc module leaves out malloc.h; `mallopt` is looked up instead (absent from musl: nothing done).
        typealias Mallopt = @convention(c) (Int32, Int32) -> Int32
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "mallopt") else { return }
        let mmapThreshold: Int32 = -3  // M_MMAP_THRESHOLD in malloc.h
        _ = unsafeBitCast(symbol, to: Mallopt.self)(mmapThreshold, mappedBlockThreshold)
        #endif
    }
}
