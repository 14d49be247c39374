#ifndef CPU_KERNELS_H
#define CPU_KERNELS_H

#include <stddef.h>
#include <stdint.h>

/// Element-wise kernels of the CPU backend's BF16 forward. Each one computes exactly what the scalar Swift loops it
/// replaced computed (same f32 operations in the same order), only in vector registers: results are bit-identical.

/// x[i] = bf16(x[i]): round to the nearest BF16 (ties to even), kept in an f32; NaN unchanged.
void cpuk_round_bf16(float *x, size_t count);

/// a[i] = bf16(a[i] + bf16(b[i])): a Linear output rounded, then the BF16 residual add. (Where both operands are
/// NaN, which payload the NaN result carries is unspecified, as it was for the scalar loop.)
void cpuk_add_rounded_bf16(float *a, const float *b, size_t count);

/// max |x[i]|, NaN if any x[i] is NaN, +0 for count 0.
float cpuk_max_abs(const float *x, size_t count);

/// transformers' LlamaRMSNorm on BF16 rows: out = bf16(bf16(x · rsqrt(mean(x²) + eps)) · w), the mean's sum of
/// squares accumulated in f32 in index order.
void cpuk_rms_norm_bf16(const float *x, const float *weight, float *out, size_t rows, size_t width, float epsilon);

/// out[r, i] = bf16(bf16(g / (1 + exp(-g))) · u) for rows laid out as [gate (intermediate) | up (intermediate)],
/// with g and u rounded to BF16 first (the gate/up GEMM's output rounding, folded in: rounding is idempotent, so
/// inputs already in BF16 give the same result).
void cpuk_swiglu_bf16(const float *gate_up, float *out, size_t rows, size_t intermediate);

/// RoPE of `heads` adjacent heads of one token in BF16 (cos/sin already BF16):
/// x₁' = bf16(bf16(x₁·cos) + bf16(-x₂·sin)), x₂' = bf16(bf16(x₂·cos) + bf16(x₁·sin)).
void cpuk_rope_bf16(float *row, size_t heads, size_t head_dim, const float *cosines, const float *sines);

/// PyTorch's CPU flash-attention softmax for BF16, keys in blocks of `block` (see the Swift caller).
void cpuk_blocked_softmax_bf16(float *row, size_t count, size_t block);

/// cpuk_blocked_softmax_bf16 on `rows` consecutive rows of a causal score matrix (leading dimension `ld`): row r
/// holds query first_query + r and softmaxes its first first_query + r + 1 keys. Same results, faster.
void cpuk_causal_softmax_bf16(float *scores, size_t ld, size_t first_query, size_t rows, size_t block);

/// exp of each value as the C library's expf computes it (the vector path where it is known to agree).
void cpuk_exp(const float *x, float *out, size_t count);

/// Whether `cpuk_exp` uses its vector path (it does only where it reproduced this process's expf on the self-check).
int cpuk_vector_exp_enabled(void);

/// How many float bit patterns in [first, last] (inclusive, stepping by `stride`) the vector exp computes
/// differently from expf, counting NaN results as equal when both are NaN. 0 where there is no vector path.
uint64_t cpuk_vector_exp_mismatches(uint32_t first, uint32_t last, uint32_t stride);

#endif
