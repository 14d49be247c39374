/// Global scales shared by the Linears that vLLM fuses into one GEMM (spec §5).
public enum FusedScales {
    /// One `S2` for a group (q/k/v, or gate/up), from the max of the members' weight amax values.
    /// Block scales of every member must be computed against this value.
    public static func sharedWeightScale2(memberAmax: [Float]) -> Float {
        NVFP4Quantizer.weightScale2(amax: memberAmax.max() ?? 0)
    }

}

/// W4A4 emulation of a Linear's input: per-16 dynamic block scales under the calibrated global scale, as the
/// NVFP4 GEMM computes them at run time. Used for the quality report, never for checkpoint bytes.
public enum NVFP4ActivationEmulation {
    /// Quantizes and dequantizes `values` in place, block by block along the last dimension of length `cols`.
    public static func fakeQuantize(_ values: UnsafeMutableBufferPointer<Float>, cols: Int, inputScale: InputScale) {
        precondition(cols % 16 == 0, "activation width must be a multiple of 16")
        let sx = inputScale.value
        let d = 6 * sx
        var index = 0
        while index + 16 <= values.count {
            var blockAmax: Float = 0
            for k in 0..<16 { blockAmax = max(blockAmax, abs(values[index + k])) }
            let code = NVFP4Quantizer.blockScaleCode(blockAmax: blockAmax, d: d)
            let scale = FP8E4M3.decode(code) * sx
            for k in 0..<16 {
                let q = E2M1.encode(values[index + k] / scale)
                values[index + k] = E2M1.value(q) * scale
            }
            index += 16
        }
    }
}
