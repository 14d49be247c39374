// The part every libFuzzer target shares: hand libFuzzer the command line and the input callback.
import FuzzSupport
#if canImport(Glibc)
import Glibc
#endif

// Set once, before libFuzzer starts; libFuzzer calls the target from one thread.
nonisolated(unsafe) private var fuzzTarget: ((UnsafeRawBufferPointer) -> Void)?

/// Runs libFuzzer (its flags and corpus directories come from the command line) on `target`, then exits with
/// libFuzzer's status.
public func runFuzzer(_ target: @escaping (UnsafeRawBufferPointer) -> Void) -> Never {
    fuzzTarget = target
    var argc = CommandLine.argc
    var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
    exit(LLVMFuzzerRunDriver(&argc, &argv) { data, size in fuzzerTestOneInput(data, size) })
}

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzerTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    fuzzTarget?(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}
