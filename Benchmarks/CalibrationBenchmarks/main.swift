// Times a layer-streaming calibration of a model directory over the default calibration set, and prints the
// achieved GFLOP/s beside OpenBLAS's own sgemm rate measured in the same run.
// usage: CalibrationBenchmarks MODEL_DIR [samples=64] [chunkTokens=4096] [activationMemoryBytes=8GiB] [maxLayers]
import COpenBLAS
import CPUBackend
import Calibration
import ComputeBackend
import Foundation
import LlamaModel
import Logging
import SafeTensors
import Tokenizer

func peakResidentMiB() -> String {
    let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
    return status.split(separator: "\n").first { $0.hasPrefix("VmHWM") }.map(String.init) ?? "VmHWM unknown"
}

let arguments = CommandLine.arguments
let directory = arguments[1]
let sampleCount = arguments.count > 2 ? Int(arguments[2])! : 64
let chunkTokens = arguments.count > 3 ? Int(arguments[3])! : 4096
let budget = arguments.count > 4 ? Int(arguments[4])! : 8 << 30
let config = try LlamaConfig.load(path: directory + "/config.json")
let layers = arguments.count > 5 ? Int(arguments[5])! : config.numHiddenLayers
let model = try SafeTensorsModel(directory: directory)
let tokenizer = try BPETokenizer.load(modelDirectory: directory)
let loadStart = Date()
let set = try CalibrationData.loadDefault(tokenizer: tokenizer, vocabSize: config.vocabSize,
                                          options: CalibrationOptions(samples: sampleCount))
print(set.summary, String(format: "(loaded in %.2f s)", Date().timeIntervalSince(loadStart)))
CPUBackend.setBLASThreadCount(ProcessInfo.processInfo.activeProcessorCount)
var logger = Logger(label: "calibration-benchmark")
logger.logLevel = .info
let start = Date()
var lastPrint = Date.distantPast
let calibrator = try LayerStreamingCalibrator(
    backend: CPUBackend(config: config, activationPrecision: .bfloat16), weights: model, calibrationSet: set, chunkTokens: chunkTokens,
    activationMemoryBudget: budget, logger: logger,
    releaseWeights: { names in for name in names { try? model.releasePages(name) } },
    progress: { progress in
        if Date().timeIntervalSince(lastPrint) > 10 {
            lastPrint = Date()
            print("  layer \(progress.layer) \(progress.samplesDone)/\(progress.sampleCount), "
                  + String(format: "%.0f tok/s, ETA %.0f s", progress.tokensPerSecond, progress.estimatedSecondsRemaining ?? -1))
        }
    })
for layer in 0..<layers { _ = try calibrator.activationAmax(layer: layer) }
calibrator.finish()
let seconds = Date().timeIntervalSince(start)
print(String(format: "%d layers, %d samples, %d tokens, %d chunks (%d spilled): %.1f s, %.0f token-layers/s",
             layers, calibrator.sampleCount, calibrator.tokenTotal, calibrator.chunkCount, calibrator.spilledChunkCount,
             seconds, Double(calibrator.tokenTotal * layers) / seconds))
print(peakResidentMiB())
// Every Linear's amax as bits, hashed: equal digests across two builds mean equal activation scales.
let amaxBytes = calibrator.perLinearAmax.sorted { $0.key < $1.key }
    .flatMap { Array($0.key.utf8) + withUnsafeBytes(of: $0.value.bitPattern.littleEndian, Array.init) }
print("activation amax digest (\(calibrator.perLinearAmax.count) Linears): \(SHA256Hasher.hexDigest(of: amaxBytes))")

// FLOPs of the calibration forward that a careful implementation cannot avoid: every Linear, plus causal
// attention (scores and the weighted sum over keys u <= t only).
let hidden = config.hiddenSize, heads = config.numAttentionHeads, headDim = config.headDim
let linearWeights = hidden * (heads + 2 * config.numKeyValueHeads) * headDim + heads * headDim * hidden
    + 3 * hidden * config.intermediateSize
var flops = 0.0
for sample in set.samples {
    let t = Double(sample.tokens.count)
    flops += 2 * t * Double(linearWeights) + 2 * t * (t + 1) * Double(headDim * heads)
}
flops *= Double(layers)

// OpenBLAS's own rate on a square sgemm with random data, same thread count (the peak reference).
let n = 2048
let a = (0..<(n * n)).map { _ in Float.random(in: -1...1) }
let b = (0..<(n * n)).map { _ in Float.random(in: -1...1) }
var c = [Float](repeating: 0, count: n * n)
var sgemmTimes: [Double] = []
for _ in 0..<5 {
    let t0 = Date()
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(n), Int32(n), Int32(n), 1, a, Int32(n), b, Int32(n), 0, &c, Int32(n))
    sgemmTimes.append(Date().timeIntervalSince(t0))
}
let sgemmGFLOPs = 2 * pow(Double(n), 3) / sgemmTimes.sorted()[2] / 1e9
let ours = flops / seconds / 1e9

// The same rate at the Linears' own shapes: one average chunk's rows through q/k/v, o, gate/up and down (x · Wᵀ, as
// the forward calls them), best of 3 each. This is the most the forward's GEMMs reach here, whatever runs around them.
func randomFloats(_ count: Int, seed: UInt64) -> [Float] {
    var generator = seed &* 0x9E37_79B9_7F4A_7C15 | 1
    return (0..<count).map { _ in
        generator ^= generator << 13
        generator ^= generator >> 7
        generator ^= generator << 17
        return Float(generator >> 40) / Float(1 << 23) - 1
    }
}
let chunkRows = calibrator.tokenTotal / max(1, calibrator.chunkCount)
let linearShapes = [(inner: hidden, outputs: (heads + 2 * config.numKeyValueHeads) * headDim), (heads * headDim, hidden),
                    (hidden, 2 * config.intermediateSize), (config.intermediateSize, hidden)]
var linearSeconds = 0.0, linearFLOPs = 0.0
for (inner, outputs) in linearShapes {
    let input = randomFloats(chunkRows * inner, seed: 1), weight = randomFloats(outputs * inner, seed: 2)
    var output = [Float](repeating: 0, count: chunkRows * outputs)
    var best = Double.infinity
    for _ in 0..<3 {
        let t0 = Date()
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(chunkRows), Int32(outputs), Int32(inner), 1, input,
                    Int32(inner), weight, Int32(inner), 1, &output, Int32(outputs))
        best = min(best, Date().timeIntervalSince(t0))
    }
    linearSeconds += best
    linearFLOPs += 2 * Double(chunkRows * outputs * inner)
}
let linearGFLOPs = linearFLOPs / linearSeconds / 1e9
print("| measurement | value |")
print("|---|---|")
print(String(format: "| calibration wall time | %.1f s |", seconds))
print(String(format: "| tokens through all layers | %.0f token-layers/s |", Double(calibrator.tokenTotal * layers) / seconds))
print(String(format: "| useful FLOPs (Linears + causal attention) | %.2f TFLOP |", flops / 1e12))
print(String(format: "| achieved | %.1f GFLOP/s |", ours))
print(String(format: "| OpenBLAS sgemm %dx%dx%d (peak reference) | %.1f GFLOP/s |", n, n, n, sgemmGFLOPs))
print(String(format: "| achieved / sgemm peak | %.0f%% |", ours / sgemmGFLOPs * 100))
print(String(format: "| OpenBLAS sgemm at the Linears' shapes (%d rows) | %.1f GFLOP/s (%.0f%% of peak) |", chunkRows,
             linearGFLOPs, linearGFLOPs / sgemmGFLOPs * 100))
