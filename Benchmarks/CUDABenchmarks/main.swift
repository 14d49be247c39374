// CUDABenchmarks: device-side checks and benchmarks of the CUDA backend (run on a GPU machine; see Docs/operations.md).
//
//   CUDABenchmarks golden FILE                 GPU quantizer vs the golden NVFP4 vectors (modelopt bytes)
//   CUDABenchmarks quantizer-check MODEL_DIR   GPU vs CPU quantizer (amax, packed, scales) on every Linear
//   CUDABenchmarks forward-check MODEL_DIR     CUDA vs CPU (bf16) backend amax, layer by layer
//   CUDABenchmarks loaded-check MODEL_DIR [LAYERS]
//                                              each layer's Linears quantized from the weights the forward loaded
//                                              (one launch per layer, no second upload) vs the CPU quantizer on the file
//   CUDABenchmarks embed-check MODEL_DIR [TOKENS]
//                                              GPU embedding gather vs host gather + upload: states bit for bit, times
//   CUDABenchmarks layer-bench DIR [REPEATS]   one decoder layer (DIR/model, DIR/hidden.safetensors, DIR/lengths.json),
//                                              GEMM peak, copy bandwidth, NVFP4 quantization of down_proj
//   CUDABenchmarks gptq-check                  GPU vs CPU GPTQ on the same inputs: codes differing, output errors
//   CUDABenchmarks gptq-bench DIR [SAMPLES] [--act-order]
//                                              one layer's calibration forward vs Hessians + GPTQ of its seven Linears
// Each prints a summary and, with --json PATH, writes its numbers as JSON.
import CPUBackend
import CUDABackend
import CUDARuntime
import ComputeBackend
import Foundation
import LlamaModel
import Logging
import NVFP4
import SafeTensors

var logger = Logger(label: "cuda-bench")
logger.logLevel = .info

struct Failure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

var arguments = Array(CommandLine.arguments.dropFirst())
var jsonPath: String?
if let index = arguments.firstIndex(of: "--json"), index + 1 < arguments.count {
    jsonPath = arguments[index + 1]
    arguments.removeSubrange(index...(index + 1))
}
var results: [String: Any] = [:]

func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }

/// Times `body` on the compute stream with events: `warmup` untimed runs, then the median of `repeats`, in ms.
/// Median milliseconds of `body` on the compute stream; with `launches` > 1, the mean of that many back-to-back runs
/// between the two events (steady state: the host's launch latency no longer shows).
func timeOnDevice(_ device: CUDADevice, warmup: Int = 2, repeats: Int = 10, launches: Int = 1, prepare: () throws -> Void = {},
                  _ body: () throws -> Void) throws -> Double {
    let start = try CUDAEvent(context: device.context)
    let stop = try CUDAEvent(context: device.context)
    var times: [Double] = []
    for run in 0..<(warmup + repeats) {
        try prepare()
        try start.record(on: device.computeStream)
        for _ in 0..<launches { try body() }
        try stop.record(on: device.computeStream)
        try stop.synchronize()
        if run >= warmup { times.append(Double(try stop.milliseconds(since: start)) / Double(launches)) }
    }
    return median(times)
}

func bf16Values(_ source: some WeightSource, _ name: String) throws -> (values: [UInt16], shape: [Int]) {
    guard let description = source.describeTensor(name), description.dtype == "BF16" else { throw Failure("\(name): not a BF16 tensor") }
    let values = try source.withTensorBytes(name) { Array($0.bindMemory(to: UInt16.self)) }
    return (values, description.shape)
}

@MainActor func golden(_ path: String, device: CUDADevice) throws {
    let file = try SafeTensorsFile(path: path)
    let quantizer = CUDANVFP4Quantizer(device: device)
    let cases = file.tensorNames.filter { $0.hasSuffix(".input") }.map { String($0.dropLast(6)) }.sorted()
    var failures: [String] = []
    for name in cases {
        let (input, shape) = try bf16Values(file, name + ".input")
        let s2 = try file.withTensorBytes(name + ".weight_scale_2") { $0.load(as: Float.self) }
        let expectedPacked = try file.withTensorBytes(name + ".weight") { Array($0.bindMemory(to: UInt8.self)) }
        let expectedScales = try file.withTensorBytes(name + ".weight_scale") { Array($0.bindMemory(to: UInt8.self)) }
        let result = try input.withUnsafeBufferPointer {
            try quantizer.quantize(bf16: $0, rows: shape[0], cols: shape[1], weightScale2: s2, tensor: name)
        }
        let same = result.packed == expectedPacked && result.blockScales == expectedScales
        print("golden \(name) [\(shape[0])x\(shape[1])]: \(same ? "identical" : "DIFFERENT")")
        if !same { failures.append(name) }
    }
    results["golden"] = ["cases": cases.count, "failures": failures]
    print("golden: \(cases.count - failures.count)/\(cases.count) cases bit-identical to modelopt")
    if !failures.isEmpty { throw Failure("golden cases differ: \(failures)") }
}

@MainActor func quantizerCheck(_ directory: String, device: CUDADevice) throws {
    let config = try LlamaConfig.load(path: directory + "/config.json")
    let model = try SafeTensorsModel(directory: directory)
    let quantizer = CUDANVFP4Quantizer(device: device)
    var checked = 0
    var failures: [String] = []
    var bytes = 0
    var gpuSeconds = 0.0
    var cpuSeconds = 0.0
    for layer in 0..<config.numHiddenLayers {
        for linear in config.linears(layer: layer) {
            let (values, shape) = try bf16Values(model, linear.weightName)
            try values.withUnsafeBufferPointer { buffer in
                let cpuAmax = try NVFP4Quantizer.amax(bf16: buffer, cols: shape[1], tensor: linear.weightName)
                let gpuAmax = try quantizer.amax(bf16: buffer, cols: shape[1], tensor: linear.weightName)
                let s2 = NVFP4Quantizer.weightScale2(amax: cpuAmax)
                var started = Date()
                let gpu = try quantizer.quantize(bf16: buffer, rows: shape[0], cols: shape[1], weightScale2: s2, tensor: linear.weightName)
                gpuSeconds += Date().timeIntervalSince(started)
                started = Date()
                let cpu = try NVFP4Quantizer.quantize(bf16: buffer, rows: shape[0], cols: shape[1], weightScale2: s2, tensor: linear.weightName)
                cpuSeconds += Date().timeIntervalSince(started)
                bytes += buffer.count * 2
                checked += 1
                if gpu != cpu || gpuAmax.bitPattern != cpuAmax.bitPattern {
                    let packedDiff = zip(gpu.packed, cpu.packed).filter { $0 != $1 }.count
                    let scaleDiff = zip(gpu.blockScales, cpu.blockScales).filter { $0 != $1 }.count
                    print("DIFFERENT \(linear.weightName): amax \(gpuAmax) vs \(cpuAmax), \(packedDiff) packed bytes, \(scaleDiff) scales")
                    failures.append(linear.weightName)
                }
            }
        }
    }
    print("quantizer-check: \(checked - failures.count)/\(checked) Linears bit-identical (amax, packed, block scales); " +
          "\(bytes >> 20) MiB; GPU (with host copies) \(String(format: "%.2f", gpuSeconds)) s, CPU \(String(format: "%.2f", cpuSeconds)) s")
    results["quantizerCheck"] = ["linears": checked, "failures": failures, "gpuSeconds": gpuSeconds, "cpuSeconds": cpuSeconds]
    if !failures.isEmpty { throw Failure("\(failures.count) Linears differ") }
}

/// ``CUDANVFP4Quantizer/quantize(loaded:linears:)`` (the export's path for W4A4 round to nearest on the GPU) against
/// the CPU quantizer reading the model file: amax, S2 shared by each fused group, codes and block scales, bit for bit.
@MainActor func loadedCheck(_ directory: String, layers: Int?, device: CUDADevice) throws {
    let config = try LlamaConfig.load(path: directory + "/config.json")
    let model = try SafeTensorsModel(directory: directory)
    let backend = try CUDABackend(config: config, device: device)
    let quantizer = CUDANVFP4Quantizer(device: device)
    var failures: [String] = []
    var gpuSeconds: [Double] = []
    var checked = 0
    for layer in 0..<min(layers ?? config.numHiddenLayers, config.numHiddenLayers) {
        let loaded = try backend.loadLayer(layer, from: model)
        let started = Date()
        guard let quantized = try quantizer.quantize(loaded: loaded, linears: config.linears(layer: layer)) else {
            throw Failure("layer \(layer): the loaded weights were not quantized (a zero or non-finite amax)")
        }
        gpuSeconds.append(Date().timeIntervalSince(started))
        var memberAmax: [String: Float] = [:]
        for linear in config.linears(layer: layer) {
            let (values, shape) = try bf16Values(model, linear.weightName)
            memberAmax[linear.weightName] = try values.withUnsafeBufferPointer {
                try NVFP4Quantizer.amax(bf16: $0, cols: shape[1], tensor: linear.weightName)
            }
        }
        for linear in config.linears(layer: layer) {
            let members = config.linears(layer: layer).filter { $0.kind.group == linear.kind.group }
            let s2 = FusedScales.sharedWeightScale2(memberAmax: members.map { memberAmax[$0.weightName]! })
            let (values, shape) = try bf16Values(model, linear.weightName)
            let cpu = try values.withUnsafeBufferPointer {
                try NVFP4Quantizer.quantize(bf16: $0, rows: shape[0], cols: shape[1], weightScale2: s2, tensor: linear.weightName)
            }
            checked += 1
            let gpu = quantized.weights[linear.name]
            if gpu != cpu || quantized.weightAmax[linear.weightName]?.bitPattern != memberAmax[linear.weightName]!.bitPattern {
                print("DIFFERENT \(linear.name): amax \(String(describing: quantized.weightAmax[linear.weightName])) vs \(memberAmax[linear.weightName]!)")
                failures.append(linear.name)
            }
        }
    }
    print("loaded-check \(directory): \(checked - failures.count)/\(checked) Linears bit-identical (amax, S2, codes, block scales); "
          + "GPU quantization of a loaded layer incl. download \(String(format: "%.3f", median(gpuSeconds))) s (median of \(gpuSeconds.count))")
    results["loadedCheck"] = ["linears": checked, "failures": failures, "gpuSecondsMedian": median(gpuSeconds)]
    if !failures.isEmpty { throw Failure("\(failures.count) Linears differ") }
}

@MainActor func forwardCheck(_ directory: String, device: CUDADevice) throws {
    let config = try LlamaConfig.load(path: directory + "/config.json")
    let model = try SafeTensorsModel(directory: directory)
    let cuda = try CUDABackend(config: config, device: device)
    let cpu = CPUBackend(config: config, activationPrecision: .bfloat16)
    // Lengths cover one and several 64-key tiles and PyTorch's 512-key blocks; tokens are a fixed pseudo-random draw.
    let lengths = [37, 200, 513, 64, 1100, 5]
    var state: UInt64 = 0x9E37_79B9_7F4A_7C15
    let tokens = (0..<lengths.reduce(0, +)).map { _ -> Int in
        state = state &* 6364136223846793005 &+ 1442695040888963407
        return Int((state >> 33) % UInt64(config.vocabSize))
    }
    let batch = try SequenceBatch(tokenCounts: lengths)
    var cpuHidden = try cpu.embed(tokens, from: model)
    var gpuHidden = cpuHidden
    var worst: Float = 0
    var perLayer: [[String: Any]] = []
    var cpuSeconds = 0.0
    var gpuSeconds = 0.0
    var cpuAll = ObservedAmax.zero
    var gpuAll = ObservedAmax.zero
    for index in 0..<config.numHiddenLayers {
        let cpuLayer = try cpu.loadLayer(index, from: model)
        let gpuLayer = try cuda.loadLayer(index, from: model)
        var started = Date()
        let expected = try cpu.forward(layer: cpuLayer, hidden: &cpuHidden, batch: batch)
        cpuSeconds += Date().timeIntervalSince(started)
        started = Date()
        let observed = try cuda.forward(layer: gpuLayer, hidden: &gpuHidden, batch: batch)
        gpuSeconds += Date().timeIntervalSince(started)
        cpuAll = cpuAll.merging(expected)
        gpuAll = gpuAll.merging(observed)
        var row: [String: Any] = ["layer": index]
        var line = "layer \(index):"
        for group in FusedGroup.allCases {
            let relative = abs(observed[group] - expected[group]) / expected[group]
            worst = max(worst, relative.isNaN ? .infinity : relative)
            row["\(group)"] = ["cpu": expected[group], "cuda": observed[group], "relative": relative]
            line += " \(group) \(expected[group])/\(observed[group]) (\(String(format: "%.3f", relative * 100))%)"
        }
        perLayer.append(row)
        print(line)
    }
    var hiddenError: Double = 0
    var hiddenNorm: Double = 0
    for (a, b) in zip(cpuHidden.values, gpuHidden.values) {
        hiddenError += Double(a - b) * Double(a - b)
        hiddenNorm += Double(a) * Double(a)
    }
    let relativeHidden = (hiddenError / hiddenNorm).squareRoot()
    print("forward-check: \(config.numHiddenLayers) layers, \(batch.totalTokens) tokens in \(lengths.count) samples; worst per-layer amax " +
          "difference \(String(format: "%.3f", worst * 100))%; final hidden ‖Δ‖/‖ref‖ = \(String(format: "%.2e", relativeHidden)); " +
          "CPU \(String(format: "%.1f", cpuSeconds)) s, CUDA \(String(format: "%.2f", gpuSeconds)) s")
    results["forwardCheck"] = ["layers": perLayer, "worstRelative": worst, "finalHiddenRelative": relativeHidden,
                               "cpuSeconds": cpuSeconds, "cudaSeconds": gpuSeconds, "lengths": lengths]
}

@MainActor func layerBench(_ directory: String, repeats: Int, device: CUDADevice) throws {
    let config = try LlamaConfig.load(path: directory + "/model/config.json")
    let model = try SafeTensorsModel(directory: directory + "/model")
    let lengths = try JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: directory + "/lengths.json"))) as! [Int]
    let batch = try SequenceBatch(tokenCounts: lengths)
    let hiddenFile = try SafeTensorsFile(path: directory + "/hidden.safetensors")
    let backend = try CUDABackend(config: config, device: device)
    let tokens = batch.totalTokens
    let width = config.hiddenSize
    var report: [String: Any] = ["tokens": tokens, "samples": lengths.count, "device": device.context.name]

    var started = Date()
    let layer = try backend.loadLayer(0, from: model)
    try device.copyStream.synchronize()
    let loadSeconds = Date().timeIntervalSince(started)
    let layerBytes = (layer.qkvWeight.byteCount + layer.oWeight.byteCount + layer.gateUpWeight.byteCount + layer.downWeight.byteCount)
    print("layer load: \(layerBytes >> 20) MiB in \(String(format: "%.2f", loadSeconds)) s (\(String(format: "%.1f", Double(layerBytes) / loadSeconds / 1e9)) GB/s host→device incl. page-in)")
    report["loadSeconds"] = loadSeconds

    let pristine = try DeviceBuffer(context: device.context, byteCount: tokens * width * 2)
    let work = try DeviceBuffer(context: device.context, byteCount: tokens * width * 2)
    try hiddenFile.withTensorBytes("hidden") { bytes in
        guard bytes.count == tokens * width * 2 else { throw Failure("hidden.safetensors holds \(bytes.count) bytes, expected \(tokens * width * 2)") }
        try pristine.copy(from: bytes, stream: device.computeStream)
        try device.computeStream.synchronize()
    }
    let queryWidth = config.numAttentionHeads * config.headDim
    let qkvWidth = queryWidth + 2 * config.numKeyValueHeads * config.headDim
    let gemmFlops = 2.0 * Double(tokens) * Double(width) * Double(qkvWidth + queryWidth + 3 * config.intermediateSize)
    let attentionFlops = lengths.reduce(0.0) { $0 + 2.0 * Double(config.numAttentionHeads * config.headDim) * Double($1) * Double($1 + 1) }
    var amax = ObservedAmax.zero
    let milliseconds = try timeOnDevice(device, warmup: 2, repeats: repeats, prepare: {
        try work.copy(from: pristine, byteCount: tokens * width * 2, stream: device.computeStream)
    }) {
        amax = try backend.forwardOnDevice(layer: layer, hidden: work, batch: batch)
    }
    let tflops = (gemmFlops + attentionFlops) / (milliseconds / 1000) / 1e12
    print("layer forward (device-resident, amax observed): \(String(format: "%.2f", milliseconds)) ms for \(tokens) tokens = " +
          "\(String(format: "%.0f", Double(tokens) / milliseconds * 1000)) tokens/s, \(String(format: "%.0f", tflops)) TFLOP/s " +
          "(GEMM \(String(format: "%.2f", gemmFlops / 1e12)) + attention \(String(format: "%.2f", attentionFlops / 1e12)) TFLOP)")
    print("amax: qkv \(amax.qkv) o \(amax.o) gateUp \(amax.gateUp) down \(amax.down)")
    report["forwardMs"] = milliseconds
    report["tokensPerSecond"] = Double(tokens) / milliseconds * 1000
    report["tflops"] = tflops
    report["gemmTFLOP"] = gemmFlops / 1e12
    report["attentionTFLOP"] = attentionFlops / 1e12
    report["amax"] = ["qkv": amax.qkv, "o": amax.o, "gateUp": amax.gateUp, "down": amax.down]

    // Pieces: the GEMMs alone and attention alone, to place the time.
    let stream = device.computeStream
    let normed = try DeviceBuffer(context: device.context, byteCount: tokens * max(width, queryWidth) * 2)
    let wide = try DeviceBuffer(context: device.context, byteCount: tokens * 2 * config.intermediateSize * 2)
    let gemmMs = try timeOnDevice(device, repeats: max(3, repeats)) {
        try device.blas.matmul(GEMMShape(rows: tokens, inner: width, outputs: qkvWidth), input: work.address, weight: layer.qkvWeight.address, output: wide.address, stream: stream)
        try device.blas.matmul(GEMMShape(rows: tokens, inner: queryWidth, outputs: width), input: work.address, weight: layer.oWeight.address, output: normed.address, stream: stream)
        try device.blas.matmul(GEMMShape(rows: tokens, inner: width, outputs: 2 * config.intermediateSize), input: work.address, weight: layer.gateUpWeight.address, output: wide.address, stream: stream)
        try device.blas.matmul(GEMMShape(rows: tokens, inner: config.intermediateSize, outputs: width), input: wide.address, weight: layer.downWeight.address, output: normed.address, stream: stream)
    }
    print("the layer's 4 GEMMs alone: \(String(format: "%.2f", gemmMs)) ms = \(String(format: "%.0f", gemmFlops / (gemmMs / 1000) / 1e12)) TFLOP/s")
    report["gemmOnlyMs"] = gemmMs

    // BF16 GEMM peak on random data (the layer's own weights as operands).
    let square = 8192
    let product = try DeviceBuffer(context: device.context, byteCount: square * square * 2)
    let peakMs = try timeOnDevice(device, warmup: 3, repeats: 10) {
        try device.blas.matmul(GEMMShape(rows: square, inner: square, outputs: square), input: layer.downWeight.address,
                               weight: layer.gateUpWeight.address, output: product.address, stream: stream)
    }
    let peak = 2 * pow(Double(square), 3) / (peakMs / 1000) / 1e12
    print("cuBLASLt BF16 GEMM 8192³: \(String(format: "%.3f", peakMs)) ms = \(String(format: "%.0f", peak)) TFLOP/s (measured peak)")
    report["gemmPeakTFLOPS"] = peak

    // Device-to-device copy bandwidth (bytes read + written).
    let copyBytes = 2 << 30
    let copySource = try DeviceBuffer(context: device.context, byteCount: copyBytes)
    let copyTarget = try DeviceBuffer(context: device.context, byteCount: copyBytes)
    try copySource.fill(byte: 0x3C, stream: stream)
    let copyMs = try timeOnDevice(device, warmup: 2, repeats: 10) {
        try copyTarget.copy(from: copySource, byteCount: copyBytes, stream: stream)
    }
    let copyBandwidth = 2 * Double(copyBytes) / (copyMs / 1000) / 1e9
    print("device-to-device copy 2 GiB: \(String(format: "%.3f", copyMs)) ms = \(String(format: "%.0f", copyBandwidth)) GB/s (read + write)")
    report["copyGBps"] = copyBandwidth

    // NVFP4 quantization of down_proj [hidden, intermediate] on the device, then a bit check against the CPU quantizer.
    let quantizer = CUDANVFP4Quantizer(device: device)
    let rows = width
    let cols = config.intermediateSize
    let count = rows * cols
    let packed = try DeviceBuffer(context: device.context, byteCount: count / 2)
    let scales = try DeviceBuffer(context: device.context, byteCount: count / 16)
    let amaxBuffer = try DeviceBuffer(context: device.context, byteCount: 4)
    let amaxMs = try timeOnDevice(device) {
        try quantizer.enqueueAmax(weight: layer.downWeight.address, count: count, into: amaxBuffer, stream: stream)
    }
    let bits = try quantizer.deviceAmaxBits(weight: layer.downWeight.address, count: count, stream: stream)
    let s2 = NVFP4Quantizer.weightScale2(amax: Float(bitPattern: bits))
    let quantizeMs = try timeOnDevice(device) {
        try quantizer.quantizeOnDevice(weight: layer.downWeight.address, rows: rows, cols: cols, weightScale2: s2,
                                       packed: packed.address, scales: scales.address, stream: stream)
    }
    let quantizeSteadyMs = try timeOnDevice(device, launches: 20) {
        try quantizer.quantizeOnDevice(weight: layer.downWeight.address, rows: rows, cols: cols, weightScale2: s2,
                                       packed: packed.address, scales: scales.address, stream: stream)
    }
    let copySteadyMs = try timeOnDevice(device, launches: 20) {
        try copyTarget.copy(from: copySource, byteCount: copyBytes, stream: stream)
    }
    let quantizeBytes = Double(count * 2 + count / 2 + count / 16)
    let quantizeBandwidth = quantizeBytes / (quantizeMs / 1000) / 1e9
    let steadyBandwidth = quantizeBytes / (quantizeSteadyMs / 1000) / 1e9
    let copySteadyBandwidth = 2 * Double(copyBytes) / (copySteadyMs / 1000) / 1e9
    print("steady state (20 back-to-back launches per timing): copy \(String(format: "%.0f", copySteadyBandwidth)) GB/s, " +
          "quantize \(String(format: "%.4f", quantizeSteadyMs)) ms = \(String(format: "%.0f", steadyBandwidth)) GB/s = " +
          "\(String(format: "%.1f", steadyBandwidth / copySteadyBandwidth * 100))% of copy bandwidth")
    report["quantizeSteadyMs"] = quantizeSteadyMs
    report["quantizeSteadyGBps"] = steadyBandwidth
    report["copySteadyGBps"] = copySteadyBandwidth
    print("NVFP4 quantization \(rows)x\(cols): amax \(String(format: "%.3f", amaxMs)) ms (\(String(format: "%.0f", Double(count * 2) / (amaxMs / 1000) / 1e9)) GB/s), " +
          "quantize \(String(format: "%.3f", quantizeMs)) ms = \(String(format: "%.0f", quantizeBandwidth)) GB/s = " +
          "\(String(format: "%.0f", quantizeBandwidth / copyBandwidth * 100))% of copy bandwidth")
    report["quantizeMs"] = quantizeMs
    report["quantizeGBps"] = quantizeBandwidth
    report["amaxMs"] = amaxMs
    var gpuPacked = [UInt8](repeating: 0, count: count / 2)
    var gpuScales = [UInt8](repeating: 0, count: count / 16)
    try gpuPacked.withUnsafeMutableBytes { try packed.copy(to: $0, stream: stream) }
    try gpuScales.withUnsafeMutableBytes { try scales.copy(to: $0, stream: stream) }
    try stream.synchronize()
    let (downValues, _) = try bf16Values(model, config.linears(layer: 0).first { $0.kind == .down }!.weightName)
    let cpu = try downValues.withUnsafeBufferPointer { try NVFP4Quantizer.quantize(bf16: $0, rows: rows, cols: cols, weightScale2: s2) }
    let identical = cpu.packed == gpuPacked && cpu.blockScales == gpuScales
    print("NVFP4 \(rows)x\(cols) GPU vs CPU quantizer: \(identical ? "bit-identical" : "DIFFERENT")")
    report["quantizeIdentical"] = identical

    // The protocol call: f32 host states in and out (what the calibration loop sees).
    var host = HiddenStates(hiddenSize: width, values: try hiddenFile.withTensorBytes("hidden") { bytes in
        bytes.bindMemory(to: UInt16.self).map { BFloat16.toFloat($0) }
    })
    let original = host
    var protocolTimes: [Double] = []
    for _ in 0..<2 {
        host = original
        host.values.withUnsafeMutableBufferPointer { _ in }  // its own storage before the clock starts
        started = Date()
        _ = try backend.forward(layer: layer, hidden: &host, batch: batch)
        protocolTimes.append(Date().timeIntervalSince(started))
    }
    print("layer forward through ComputeBackend.forward (f32 host states in/out): \(String(format: "%.1f", protocolTimes.min()! * 1000)) ms")
    report["protocolForwardMs"] = protocolTimes.min()! * 1000
    results["layerBench"] = report
}

/// The GPU's embedding gather (table uploaded once) against the host gather widened to f32 and made resident, on
/// the same pseudo-random token ids: the resident BF16 states must be equal bit for bit. Prints both times.
@MainActor func embedCheck(_ directory: String, tokens tokenCount: Int, device: CUDADevice) throws {
    let config = try LlamaConfig.load(path: directory + "/config.json")
    let model = try SafeTensorsModel(directory: directory)
    let cuda = try CUDABackend(config: config, device: device)
    var state: UInt64 = 0x2545_F491_4F6C_DD1D
    let tokens = (0..<tokenCount).map { _ -> Int in
        state = state &* 6364136223846793005 &+ 1442695040888963407
        return Int((state >> 33) % UInt64(config.vocabSize))
    }
    // Samples of 150-1200 tokens, as the calibration benchmark's.
    var lengths: [Int] = []
    var left = tokenCount
    while left > 0 {
        state = state &* 6364136223846793005 &+ 1442695040888963407
        let length = min(left, 150 + Int((state >> 33) % 1051))
        lengths.append(length)
        left -= length
    }
    let batch = try SequenceBatch(tokenCounts: lengths)
    var started = Date()
    let hostStates = try cuda.makeResident(try cuda.embed(tokens, from: model), batch: batch)
    try device.context.synchronize()
    let hostSeconds = Date().timeIntervalSince(started)
    started = Date()
    guard let embedder = try cuda.residentEmbedder(from: model) else { throw Failure("no GPU embedder for \(directory)") }
    try device.context.synchronize()
    let tableSeconds = Date().timeIntervalSince(started)
    started = Date()
    let (deviceStates, nonFinite) = try embedder.embed(tokens, batch)
    let gatherSeconds = Date().timeIntervalSince(started)
    let expected = try cuda.hostStates(hostStates).values
    let observed = try cuda.hostStates(deviceStates).values
    let differing = zip(expected, observed).filter { $0.0.bitPattern != $0.1.bitPattern }.count
    print("embed-check \(directory): \(tokenCount) tokens in \(lengths.count) samples; host gather + upload \(String(format: "%.3f", hostSeconds)) s; "
          + "GPU table upload \(String(format: "%.3f", tableSeconds)) s + gather \(String(format: "%.3f", gatherSeconds)) s; "
          + "\(differing) of \(expected.count) values differ; non-finite row \(nonFinite.map(String.init) ?? "none")")
    var outOfRange = tokens
    outOfRange[1] = config.vocabSize
    var refused = "accepted"
    do { _ = try embedder.embed(outOfRange, batch) } catch { refused = "\(error)" }
    print("embed-check: token id \(config.vocabSize) at position 1: \(refused)")
    results["embedCheck"] = ["tokens": tokenCount, "hostSeconds": hostSeconds, "tableSeconds": tableSeconds,
                             "gatherSeconds": gatherSeconds, "differing": differing]
    if differing != 0 || nonFinite != nil || refused == "accepted" { throw Failure("embed-check failed") }
}

do {
    guard let command = arguments.first else {
        throw Failure("usage: CUDABenchmarks golden FILE | quantizer-check MODEL | forward-check MODEL | embed-check MODEL [TOKENS] | loaded-check MODEL [LAYERS] | layer-bench DIR [REPEATS] | gptq-check | gptq-bench DIR [SAMPLES] [--act-order] [--json PATH]")
    }
    let device = try CUDADevice(ordinal: Int(ProcessInfo.processInfo.environment["NVFP4_CUDA_DEVICE"] ?? "0") ?? 0, logger: logger)
    switch command {
    case "golden": try golden(arguments[1], device: device)
    case "quantizer-check": try quantizerCheck(arguments[1], device: device)
    case "forward-check": try forwardCheck(arguments[1], device: device)
    case "loaded-check": try loadedCheck(arguments[1], layers: arguments.count > 2 ? Int(arguments[2]) : nil, device: device)
    case "embed-check": try embedCheck(arguments[1], tokens: arguments.count > 2 ? Int(arguments[2]) ?? 32768 : 32768, device: device)
    case "layer-bench": try layerBench(arguments[1], repeats: arguments.count > 2 ? Int(arguments[2]) ?? 5 : 5, device: device)
    case "gptq-check": try gptqCheck(device: device)
    case "gptq-bench":
        try gptqBench(arguments[1], samples: arguments.count > 2 ? Int(arguments[2]) ?? 256 : 256,
                      activationOrder: arguments.contains("--act-order"), device: device)
    default: throw Failure("unknown command \(command)")
    }
    if let jsonPath {
        let data = try JSONSerialization.data(withJSONObject: results, options: [.prettyPrinted, .sortedKeys])
        try data.write(to: URL(fileURLWithPath: jsonPath))
    }
} catch {
    print("error: \(error)")
    exit(1)
}
