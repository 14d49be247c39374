import COpenBLAS
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// OpenBLAS's thread count, which every BLAS caller in the process shares.
///
/// The count is process-wide, and OpenBLAS sums a GEMM in another order on one thread than on several: sgemm
/// differs in its last bits at every shape the forward, GPTQ and the quality probe use (OpenBLAS 0.3.21, measured
/// 1 against 2 threads). The CPU attention lowers the count to one while its (sample, head) jobs fill the cores, so a
/// BLAS call elsewhere in the process (GPTQ on the export queue while calibration goes on) that ran meanwhile would
/// give results that depend on timing. Every BLAS call therefore runs inside ``withConfiguredThreads(_:)``, which
/// waits while a ``withOneThread(_:)`` body runs; those take turns among themselves.
///
/// Wrap single calls, never a scope that reaches another wrapped call: the lock is not recursive.
public enum OpenBLASThreads {
    private static let lock = ReadersWriterLock()

    /// Runs `body` with OpenBLAS on one thread; no other BLAS call in the process runs meanwhile.
    public static func withOneThread<Result>(_ body: () throws -> Result) rethrows -> Result {
        lock.lockExclusive()
        defer { lock.unlock() }
        let configured = openblas_get_num_threads()
        openblas_set_num_threads(1)
        defer { openblas_set_num_threads(configured) }
        return try body()
    }

    /// Runs `body` (BLAS or LAPACK calls) at the configured thread count, beside other such bodies.
    public static func withConfiguredThreads<Result>(_ body: () throws -> Result) rethrows -> Result {
        lock.lockShared()
        defer { lock.unlock() }
        return try body()
    }

    /// Sets how many threads OpenBLAS uses for one call, once no BLAS call is running.
    public static func setThreadCount(_ count: Int) {
        lock.lockExclusive()
        defer { lock.unlock() }
        openblas_set_num_threads(Int32(max(1, count)))
    }
}

/// A pthread readers-writer lock that prefers writers, so a steady stream of readers cannot starve the attention.
private final class ReadersWriterLock: @unchecked Sendable {
    private let handle: UnsafeMutablePointer<pthread_rwlock_t>

    init() {
        handle = .allocate(capacity: 1)
        var attributes = pthread_rwlockattr_t()
        pthread_rwlockattr_init(&attributes)
        #if canImport(Glibc)
        pthread_rwlockattr_setkind_np(&attributes, Int32(PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP))
        #endif
        let status = pthread_rwlock_init(handle, &attributes)
        pthread_rwlockattr_destroy(&attributes)
        precondition(status == 0, "pthread_rwlock_init failed: \(status)")
    }

    func lockShared() { precondition(pthread_rwlock_rdlock(handle) == 0, "pthread_rwlock_rdlock failed") }
    func lockExclusive() { precondition(pthread_rwlock_wrlock(handle) == 0, "pthread_rwlock_wrlock failed") }
    func unlock() { precondition(pthread_rwlock_unlock(handle) == 0, "pthread_rwlock_unlock failed") }
}
