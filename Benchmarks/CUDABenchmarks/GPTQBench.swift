// GPTQ on the GPU: agreement with the CPU's GPTQQuantizer on the same inputs (gptq-check), and the cost of Hessians +
// GPTQ for one 70B-shaped layer against that layer's calibration forward (gptq-bench).
import COpenBLAS
import CUDABackend
import CUDARuntime
import ComputeBackend
import Foundation
import GPTQ
import LlamaModel
import NVFP4
import SafeTensors

/// Deterministic normal samples (SplitMix64 + Box–Muller), so every run sees the same data.
struct NormalSamples {
    var state: UInt64

    mutating func nextUniform() -> Double {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        return (Double(z >> 11) + 0.5) / Double(1 << 53)
    }

    mutating func next() -> Float {
        Float((-2 * log(nextUniform())).squareRoot() * cos(2 * Double.pi * nextUniform()))
    }
}

/// ‖X·(W − Q)ᵀ‖ / ‖X·Wᵀ‖ on the host (X `[tokens, cols]`, W and Q `[rows, cols]`).
func relativeOutputError(_ x: [Float], tokens: Int, weight: [Float], quantized: [Float], rows: Int, cols: Int) -> Double {
    var reference = [Float](repeating: 0, count: tokens * rows)
    var approximate = [Float](repeating: 0, count: tokens * rows)
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(tokens), Int32(rows), Int32(cols), 1, x, Int32(cols), weight, Int32(cols),
                0, &reference, Int32(rows))
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, Int32(tokens), Int32(rows), Int32(cols), 1, x, Int32(cols), quantized, Int32(cols),
                0, &approximate, Int32(rows))
    var difference = 0.0, norm = 0.0
    for i in 0..<reference.count {
        difference += Double(reference[i] - approximate[i]) * Double(reference[i] - approximate[i])
        norm += Double(reference[i]) * Double(reference[i])
    }
    return (difference / norm).squareRoot()
}

/// The same BF16 inputs and weights through the CPU's HessianAccumulator + GPTQQuantizer and the GPU's DeviceHessian +
/// CUDAGPTQ: block scales must match exactly, and the share of E2M1 codes that differ is reported (floating-point noise:
/// FP32 tensor-core sums against Double ones move a few values across a rounding boundary, and GPTQ carries the change
/// along the row). Exits non-zero when more than 2% of the codes differ or the GPU's output error exceeds the CPU's by 2%.
@MainActor func gptqCheck(device: CUDADevice) throws {
    let gptq = try CUDAGPTQ(device: device)
    let tf32 = try CUDAGPTQ(device: device, tf32Products: true)
    var rows: [[String: Any]] = []
    var failures: [String] = []
    for (shapeIndex, shape) in [(rows: 512, cols: 1024, tokens: 8192), (rows: 1536, cols: 576, tokens: 16384)].enumerated() {
        var samples = NormalSamples(state: UInt64(7 + shapeIndex))
        // Inputs with per-channel loudness over three decades, shared components (correlated channels), dead channels.
        let channelScale = (0..<shape.cols).map { _ in Float(pow(10, samples.nextUniform() * 3 - 1.5)) }
        let shared = (0..<(shape.tokens * 8)).map { _ in samples.next() }
        var x = [Float](repeating: 0, count: shape.tokens * shape.cols)
        for t in 0..<shape.tokens {
            for c in 0..<shape.cols where c % 97 != 5 {
                let value = channelScale[c] * (samples.next() + 0.7 * shared[t * 8 + c % 8])
                x[t * shape.cols + c] = BFloat16.toFloat(BFloat16.fromFloat(value))
            }
        }
        let weight = (0..<(shape.rows * shape.cols)).map { _ in BFloat16.toFloat(BFloat16.fromFloat(0.02 * samples.next())) }
        let s2 = NVFP4Quantizer.weightScale2(amax: weight.map { abs($0) }.max()!)

        var cpuHessian = HessianAccumulator(columns: shape.cols)
        for start in stride(from: 0, to: shape.tokens, by: 4096) {
            let count = min(4096, shape.tokens - start)
            x.withUnsafeBufferPointer { cpuHessian.add(rows: UnsafeBufferPointer(rebasing: $0[(start * shape.cols)..<((start + count) * shape.cols)]), count: count) }
        }
        let deviceHessian = try DeviceHessian(device: device, columns: shape.cols)
        let xBits = x.map { BFloat16.fromFloat($0) }
        let xBuffer = try DeviceBuffer(context: device.context, byteCount: xBits.count * 2)
        try xBits.withUnsafeBytes { try xBuffer.copy(from: $0, stream: device.computeStream) }
        try device.computeStream.synchronize()
        for start in stride(from: 0, to: shape.tokens, by: 4096) {
            let count = min(4096, shape.tokens - start)
            try gptq.accumulate(deviceHessian, bf16Rows: xBuffer.address + CUdeviceptr(start * shape.cols * 2), count: count)
        }

        for activationOrder in [false, true] {
            let parameters = GPTQParameters(activationOrder: activationOrder)
            let matrix = cpuHessian.matrix
            let cpu = try weight.withUnsafeBufferPointer { w in
                try matrix.withUnsafeBufferPointer { h in
                    try GPTQQuantizer.quantize(f32: w, rows: shape.rows, cols: shape.cols, hessian: h, weightScale2: s2, parameters: parameters)
                }
            }
            let factorization = try gptq.factorize(deviceHessian, parameters: parameters, tensor: "check")
            let gpu = try weight.withUnsafeBufferPointer {
                try gptq.quantize(.hostF32($0), rows: shape.rows, cols: shape.cols, factorization: factorization, weightScale2: s2, tensor: "check")
            }
            let weightBits = weight.map { BFloat16.fromFloat($0) }
            let weightBuffer = try DeviceBuffer(context: device.context, byteCount: weightBits.count * 2)
            try weightBits.withUnsafeBytes { try weightBuffer.copy(from: $0, stream: device.computeStream) }
            try device.computeStream.synchronize()
            let gpuFromDevice = try gptq.quantize(.deviceBF16(weightBuffer.address), rows: shape.rows, cols: shape.cols,
                                                  factorization: factorization, weightScale2: s2, tensor: "check")
            func codesDiffering(_ a: NVFP4Weight, _ b: NVFP4Weight) -> Int {
                var count = 0
                for i in 0..<a.packed.count {
                    if a.packed[i] & 0xF != b.packed[i] & 0xF { count += 1 }
                    if a.packed[i] >> 4 != b.packed[i] >> 4 { count += 1 }
                }
                return count
            }
            let differing = codesDiffering(cpu, gpu)
            let fraction = Double(differing) / Double(shape.rows * shape.cols)
            let gpuTF32 = try weight.withUnsafeBufferPointer {
                try tf32.quantize(.hostF32($0), rows: shape.rows, cols: shape.cols, factorization: factorization, weightScale2: s2, tensor: "check")
            }
            let tf32Fraction = Double(codesDiffering(cpu, gpuTF32)) / Double(shape.rows * shape.cols)
            let scalesMatch = cpu.blockScales == gpu.blockScales && gpu.blockScales == gpuFromDevice.blockScales
            let inputsAgree = gpu.packed == gpuFromDevice.packed
            let probeTokens = min(shape.tokens, 2048)
            let probe = Array(x[0..<(probeTokens * shape.cols)])
            let cpuError = relativeOutputError(probe, tokens: probeTokens, weight: weight, quantized: NVFP4Quantizer.dequantize(cpu),
                                               rows: shape.rows, cols: shape.cols)
            let gpuError = relativeOutputError(probe, tokens: probeTokens, weight: weight, quantized: NVFP4Quantizer.dequantize(gpu),
                                               rows: shape.rows, cols: shape.cols)
            let tf32Error = relativeOutputError(probe, tokens: probeTokens, weight: weight, quantized: NVFP4Quantizer.dequantize(gpuTF32),
                                                rows: shape.rows, cols: shape.cols)
            let rtn = try weight.withUnsafeBufferPointer {
                try NVFP4Quantizer.quantize(f32: $0, rows: shape.rows, cols: shape.cols, weightScale2: s2, tensor: "check")
            }
            let rtnError = relativeOutputError(probe, tokens: probeTokens, weight: weight, quantized: NVFP4Quantizer.dequantize(rtn),
                                               rows: shape.rows, cols: shape.cols)
            let label = "\(shape.rows)x\(shape.cols), \(shape.tokens) tokens, act order \(activationOrder)"
            print("gptq-check \(label): codes differing \(String(format: "%.4f", fraction * 100))% (\(differing) of \(shape.rows * shape.cols)); "
                  + "with TF32 products \(String(format: "%.4f", tf32Fraction * 100))%, "
                  + "block scales identical \(scalesMatch), BF16-on-device = F32-from-host \(inputsAgree); output error RTN "
                  + "\(String(format: "%.5f", rtnError)), GPTQ CPU \(String(format: "%.5f", cpuError)), GPTQ CUDA \(String(format: "%.5f", gpuError)), with TF32 products \(String(format: "%.5f", tf32Error))")
            rows.append(["shape": label, "codesDiffering": differing, "fractionDiffering": fraction, "fractionDifferingTF32": tf32Fraction, "blockScalesIdentical": scalesMatch,
                         "deviceInputAgrees": inputsAgree, "rtnOutputError": rtnError, "cpuOutputError": cpuError, "cudaOutputError": gpuError, "cudaTF32OutputError": tf32Error])
            if fraction > 0.02 { failures.append("\(label): \(fraction * 100)% of codes differ") }
            if !scalesMatch { failures.append("\(label): block scales differ") }
            if !inputsAgree { failures.append("\(label): device BF16 and host F32 inputs give different codes") }
            if gpuError > cpuError * 1.02 { failures.append("\(label): CUDA output error \(gpuError) exceeds the CPU's \(cpuError) by more than 2%") }
            if tf32Fraction > 0.02 || tf32Error > cpuError * 1.02 {
                failures.append("\(label): with TF32 products \(tf32Fraction * 100)% of codes differ, output error \(tf32Error) against the CPU's \(cpuError)")
            }
        }
    }
    results["gptqCheck"] = rows
    if !failures.isEmpty { throw Failure("gptq-check failed: " + failures.joined(separator: "; ")) }
}

/// One 70B-shaped layer (DIR as for layer-bench): its calibration forward over `samples` samples of 150–1200 tokens,
/// the same forward adding the four Hessians, then GPTQ of its seven Linears from the Hessians (factorizations shared
/// by q/k/v and gate/up), with the weights already on the GPU.
@MainActor func gptqBench(_ directory: String, samples sampleCount: Int, activationOrder: Bool, device: CUDADevice) throws {
    let config = try LlamaConfig.load(path: directory + "/model/config.json")
    let model = try SafeTensorsModel(directory: directory + "/model")
    let hiddenFile = try SafeTensorsFile(path: directory + "/hidden.safetensors")
    let backend = try CUDABackend(config: config, device: device)
    var lengths = NormalSamples(state: 42)
    let tokenCounts = (0..<sampleCount).map { _ in 150 + Int(lengths.nextUniform() * 1051) }
    let batch = try SequenceBatch(tokenCounts: tokenCounts)
    let tokens = batch.totalTokens
    let width = config.hiddenSize
    let queryWidth = config.numAttentionHeads * config.headDim
    var report: [String: Any] = ["samples": sampleCount, "tokens": tokens, "device": device.context.name,
                                 "activationOrder": activationOrder, "passTokens": backend.maxTokensPerPass]

    // The layer-bench hidden states, repeated to fill the batch.
    let source = try hiddenFile.withTensorBytes("hidden") { Array($0.bindMemory(to: UInt16.self)) }
    let sourceRows = source.count / width
    var values = [Float](repeating: 0, count: tokens * width)
    for row in 0..<tokens {
        let from = (row % sourceRows) * width
        for c in 0..<width { values[row * width + c] = BFloat16.toFloat(source[from + c]) }
    }
    let layer = try backend.loadLayer(0, from: model)
    try device.copyStream.synchronize()
    var states = try backend.makeResident(HiddenStates(hiddenSize: width, values: values), batch: batch)
    try device.computeStream.synchronize()

    func forward(_ hessians: LayerDeviceHessians?) throws -> Double {
        var times: [Double] = []
        for _ in 0..<3 {
            let started = Date()
            _ = try backend.completeForward(try backend.enqueueForward(layer: layer, states: &states, batch: batch, hessians: hessians))
            times.append(Date().timeIntervalSince(started) * 1000)
        }
        return median(times)
    }
    _ = try forward(nil)  // warm-up: plans, workspace
    let forwardMs = try forward(nil)
    let hessians = try LayerDeviceHessians(device: device, hiddenSize: width, attentionWidth: queryWidth,
                                           intermediateSize: config.intermediateSize)
    let withHessiansMs = try forward(hessians)
    let hessianFlops = Double(tokens) * (hessians.qkv.flopsPerRow + hessians.o.flopsPerRow + hessians.gateUp.flopsPerRow + hessians.down.flopsPerRow)
    print("gptq-bench: \(sampleCount) samples, \(tokens) tokens (passes of \(backend.maxTokensPerPass)), \(device.context.name)")
    print("layer calibration forward: \(String(format: "%.1f", forwardMs)) ms; with the four Hessians: \(String(format: "%.1f", withHessiansMs)) ms "
          + "(+\(String(format: "%.1f", withHessiansMs - forwardMs)) ms, \(String(format: "%.1f", hessianFlops / 1e12)) TFLOP)")
    report["forwardMs"] = forwardMs
    report["forwardWithHessiansMs"] = withHessiansMs

    // GPTQ of the seven Linears, timed on the wall clock (the factorization reads cuSOLVER's status, the codes come back to
    // the host). Rows are independent in GPTQ, so the members of a fused group (one Hessian, one S2) run as one stacked
    // matrix, as they lie in the loaded layer. FP32 products first (the default), then TF32 ones.
    let parameters = GPTQParameters(activationOrder: activationOrder)
    let quantizer = CUDANVFP4Quantizer(device: device)
    let groups: [(name: String, hessian: DeviceHessian, buffer: DeviceBuffer, cols: Int)] = [
        ("qkv", hessians.qkv, layer.qkvWeight, width), ("o", hessians.o, layer.oWeight, queryWidth),
        ("gateUp", hessians.gateUp, layer.gateUpWeight, width), ("down", hessians.down, layer.downWeight, config.intermediateSize),
    ]
    for tf32 in [false, true] {
        let gptq = try CUDAGPTQ(device: device, tf32Products: tf32)
        var factorizeMs: [String: Double] = [:]
        var quantizeMs: [String: Double] = [:]
        var dampening: [String: Double] = [:]
        let gptqStarted = Date()
        for group in groups {
            var started = Date()
            let factorization = try gptq.factorize(group.hessian, parameters: parameters, tensor: group.name)
            factorizeMs[group.name] = Date().timeIntervalSince(started) * 1000
            dampening[group.name] = factorization.dampening
            let s2 = NVFP4Quantizer.weightScale2(amax: Float(bitPattern: try quantizer.deviceAmaxBits(
                weight: group.buffer.address, count: group.buffer.byteCount / 2, stream: device.computeStream)))
            let rows = group.buffer.byteCount / 2 / group.cols
            started = Date()
            let weight = try gptq.quantize(.deviceBF16(group.buffer.address), rows: rows, cols: group.cols, factorization: factorization,
                                           weightScale2: s2, tensor: group.name)
            quantizeMs[group.name] = Date().timeIntervalSince(started) * 1000
            precondition(weight.packed.count == rows * group.cols / 2)
        }
        let gptqMs = Date().timeIntervalSince(gptqStarted) * 1000
        let added = withHessiansMs - forwardMs + gptqMs
        let label = tf32 ? "TF32 products" : "FP32 products"
        print("\(label): factorizations (FP64 Cholesky) " + groups.map { "\($0.name) \(String(format: "%.0f", factorizeMs[$0.name]!)) ms" }.joined(separator: ", ")
              + "; column loops " + groups.map { "\($0.name) \(String(format: "%.0f", quantizeMs[$0.name]!)) ms" }.joined(separator: ", "))
        print("\(label): GPTQ of the layer \(String(format: "%.1f", gptqMs)) ms; Hessians + GPTQ add \(String(format: "%.1f", added)) ms = "
              + "\(String(format: "%.2f", added / forwardMs))× the layer's calibration forward (target ≤ 2×)")
        report[tf32 ? "tf32" : "fp32"] = ["factorizeMs": factorizeMs, "quantizeMs": quantizeMs, "dampening": dampening, "gptqMs": gptqMs,
                                          "addedMs": added, "addedOverForward": added / forwardMs]
    }
    results["gptqBench" + (activationOrder ? "ActOrder" : "")] = report
}
