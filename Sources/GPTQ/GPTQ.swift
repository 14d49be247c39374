/// # GPTQ
///
/// Error-compensating NVFP4 weight quantization (GPTQ, Frantar et al. 2022) on the CPU, as an alternative to the
/// round-to-nearest `NVFP4Quantizer`. So far: the Hessian of a Linear input.
///
/// - ``HessianAccumulator`` collects `H = (2/n) Σ xᵀx` over the calibration rows of one Linear input. Linears that
///   read the same input (q/k/v, gate/up) share one accumulator.
///
/// Pure numerics over OpenBLAS; no I/O.
public enum GPTQOverview {}
