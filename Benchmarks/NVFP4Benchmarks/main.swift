// Quantizes an 8192×28672 BF16 matrix (one Llama-70B MLP projection) and prints the input rate beside this
// machine's memory-copy bandwidth, measured in the same run. Run: swift run -c release NVFP4Benchmarks
import Foundation
import NVFP4

let rows = Int(ProcessInfo.processInfo.environment["NVFP4_BENCH_ROWS"] ?? "") ?? 8192
let cols = Int(ProcessInfo.processInfo.environment["NVFP4_BENCH_COLS"] ?? "") ?? 28672
let repeats = 5
let count = rows * cols
let inputBytes = count * 2

func now() -> Double {
    var t = timespec()
    clock_gettime(CLOCK_MONOTONIC, &t)
    return Double(t.tv_sec) + Double(t.tv_nsec) * 1e-9
}

func median(_ xs: [Double]) -> Double { xs.sorted()[xs.count / 2] }

// Llama-like weights: small Gaussian-ish values with sparse outliers, never zeros (zeros run faster).
struct SplitMix64 {
    var state: UInt64 = 0x9E37_79B9_7F4A_7C15
    mutating func next() -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    var z = state
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
    }
}
var random = SplitMix64()
let input = UnsafeMutableBufferPointer<UInt16>.allocate(capacity: count)
for i in 0..<count {
    let r = random.next()
    let u = Float(r & 0xFFFFFF) / Float(1 << 24) - 0.5
    let outlier: Float = (r >> 40) & 0x3FF == 0 ? 40 : 1
    input[i] = BFloat16.fromFloat(u * 0.04 * outlier)
}

// Memory-copy bandwidth: memcpy of the same number of bytes, destination pre-faulted.
let copyDestination = UnsafeMutableRawPointer.allocate(byteCount: inputBytes, alignment: 64)
memset(copyDestination, 1, inputBytes)
var copyTimes: [Double] = []
for _ in 0..<repeats {
    let t0 = now()
    memcpy(copyDestination, input.baseAddress!, inputBytes)
    copyTimes.append(now() - t0)
}
let copyGBs = Double(inputBytes) / median(copyTimes) / 1e9

var amaxTimes: [Double] = [], quantizeTimes: [Double] = [], errorTimes: [Double] = []
var checksum: UInt64 = 0
let readOnly = UnsafeBufferPointer(input)
for _ in 0..<repeats {
    let t0 = now()
    let amax = try NVFP4Quantizer.amax(bf16: readOnly, cols: cols, tensor: "bench")
    let t1 = now()
    let weight = try NVFP4Quantizer.quantize(bf16: readOnly, rows: rows, cols: cols,
                                                   weightScale2: NVFP4Quantizer.weightScale2(amax: amax))
    let t2 = now()
    // The export's quality figure: ‖W − Q(W)‖/‖W‖ of the quantized weight against the source.
    let error = NVFP4Quantizer.quantizationError(of: weight, bf16: readOnly)
    let t3 = now()
    amaxTimes.append(t1 - t0)
    quantizeTimes.append(t2 - t1)
    errorTimes.append(t3 - t2)
    checksum &+= UInt64(error.relative * 1e6)
    checksum &+= UInt64(weight.packed[count / 4]) &+ UInt64(weight.blockScales[7])
}
let totalSeconds = median(amaxTimes) + median(quantizeTimes)
let quantGBs = Double(inputBytes) / totalSeconds / 1e9

let cores = ProcessInfo.processInfo.activeProcessorCount
print("NVFP4 weight quantization, \(rows)x\(cols) BF16 (\(String(format: "%.2f", Double(inputBytes) / 1e9)) GB), \(cores) cores, median of \(repeats)")
print("| measurement | seconds | GB/s of input | % of memcpy |")
print("|---|---|---|---|")
print(String(format: "| memcpy (baseline) | %.4f | %.2f | 100%% |", median(copyTimes), copyGBs))
print(String(format: "| amax pass | %.4f | %.2f | %.0f%% |", median(amaxTimes), Double(inputBytes) / median(amaxTimes) / 1e9,
             Double(inputBytes) / median(amaxTimes) / 1e9 / copyGBs * 100))
print(String(format: "| block quantize | %.4f | %.2f | %.0f%% |", median(quantizeTimes), Double(inputBytes) / median(quantizeTimes) / 1e9,
             Double(inputBytes) / median(quantizeTimes) / 1e9 / copyGBs * 100))
print(String(format: "| amax + quantize (ours) | %.4f | %.2f | %.0f%% |", totalSeconds, quantGBs, quantGBs / copyGBs * 100))
print(String(format: "| quantization error ‖W − Q(W)‖/‖W‖ | %.4f | %.2f | %.0f%% |", median(errorTimes),
             Double(inputBytes) / median(errorTimes) / 1e9, Double(inputBytes) / median(errorTimes) / 1e9 / copyGBs * 100))
print("(checksum \(checksum))")
