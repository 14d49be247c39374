/// # NVFP4
///
/// Pure NVFP4 numerics, with no I/O: the BF16, FP8-E4M3 and E2M1 codecs (`BFloat16`, `FP8E4M3`, `E2M1`), the
/// block quantizer that reproduces NVIDIA modelopt's packed weights and block scales bit for bit
/// (`NVFP4Quantizer`), fused-group global scales (`FusedScales`) and the activation emulation used by the
/// quality report (`NVFP4ActivationEmulation`).
///
/// Everything here follows `nvfp4-checkpoint-spec.md` §1–§5. The order of floating-point operations is normative:
/// do not replace a division by a multiplication with the reciprocal.
public enum NVFP4Format {
    /// Elements per block scale.
    public static let blockSize = 16
}
