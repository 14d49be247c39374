// Model read benchmark: every tensor of SmolLM2-135M (BF16) widened to f32, through SafeTensorsFile (pread into a
// buffer, after checking the file is unchanged) beside the memory-mapped reading it replaced (mmap the shard, widen
// from the mapping), in the same run, page cache warm. Run with `swift run -c release ModelReadBenchmarks`.
import Foundation
import SafeTensors
#if canImport(Glibc)
import Glibc
#endif

let packageRoot = URL(fileURLWithPath: #filePath)
    .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
let modelDirectory = packageRoot.appendingPathComponent(".assets/smollm2")
let shardPath = modelDirectory.appendingPathComponent("model.safetensors").path
let repetitions = 5

if !FileManager.default.fileExists(atPath: shardPath) {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
    process.arguments = ["bash", packageRoot.appendingPathComponent("Scripts/fetch-smollm2.sh").path]
    try process.run()
    process.waitUntilExit()
    guard process.terminationStatus == 0 else { fatalError("Scripts/fetch-smollm2.sh failed") }
}

let file = try SafeTensorsFile(path: shardPath)
let floatTensors = file.tensors.filter { $0.dtype == .bf16 || $0.dtype == .f32 }
let totalBytes = floatTensors.reduce(0) { $0 + $1.byteCount }

/// The baseline: the whole shard mapped read-only, each tensor widened straight from the mapping.
func readMapped() -> Float {
    let descriptor = open(shardPath, O_RDONLY)
    defer { close(descriptor) }
    let size = Int(lseek(descriptor, 0, SEEK_END))
    let base = UnsafeRawPointer(mmap(nil, size, PROT_READ, MAP_PRIVATE, descriptor, 0)!)
    defer { munmap(UnsafeMutableRawPointer(mutating: base), size) }
    var sum: Float = 0
    for tensor in floatTensors {
        let bytes = UnsafeRawBufferPointer(start: base + file.dataSectionOffset + tensor.dataOffsets.lowerBound,
                                           count: tensor.dataOffsets.count)
        let values = tensor.dtype == .bf16 ? FloatWidening.widenBFloat16(bytes) : FloatWidening.copyFloat32(bytes)
        sum += values[values.count / 2]
    }
    return sum
}

/// Ours: SafeTensorsFile.floats, which preads each tensor after checking the file is unchanged.
func readWithPread() throws -> Float {
    let reader = try SafeTensorsFile(path: shardPath)
    var sum: Float = 0
    for tensor in floatTensors {
        let values = try reader.floats(tensor.name)
        sum += values[values.count / 2]
    }
    return sum
}

func best(_ body: () throws -> Float) rethrows -> (seconds: Double, checksum: Float) {
    var fastest = Double.infinity
    var checksum: Float = 0
    for _ in 0..<repetitions {
        let start = DispatchTime.now().uptimeNanoseconds
        checksum = try body()
        fastest = min(fastest, Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9)
    }
    return (fastest, checksum)
}

_ = readMapped()  // warm the page cache
let mapped = best(readMapped)
let preads = try best(readWithPread)
guard mapped.checksum.bitPattern == preads.checksum.bitPattern else { fatalError("the two readings differ") }
let gigabytes = Double(totalBytes) / 1e9
print("SmolLM2-135M, \(floatTensors.count) tensors, \(String(format: "%.1f", Double(totalBytes) / 1e6)) MB of BF16 widened to f32, best of \(repetitions), page cache warm")
print(String(format: "mmap (baseline)        %.3f s  %.2f GB/s", mapped.seconds, gigabytes / mapped.seconds))
print(String(format: "pread + unchanged check %.3f s  %.2f GB/s  (%.2fx the baseline's time)", preads.seconds,
             gigabytes / preads.seconds, preads.seconds / mapped.seconds))
