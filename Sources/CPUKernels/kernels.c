// Vector forms of the CPU backend's BF16 element-wise passes. Built with -ffp-contract=off: every a*b+c below must
// stay a rounded product and a rounded sum, as in the Swift loops these replace, or results would change.
#include "CPUKernels.h"

#include <math.h>
#include <pthread.h>
#include <string.h>

static inline uint32_t bits_of(float value) { uint32_t u; memcpy(&u, &value, 4); return u; }
static inline float float_of(uint32_t u) { float value; memcpy(&value, &u, 4); return value; }

// Round to nearest even on the upper 16 bits; NaN (|x| above the infinity pattern) passes unchanged. Written
// without branches so that the loops around it vectorize.
static inline float bf16(float value) {
    uint32_t u = bits_of(value);
    uint32_t rounded = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;
    return float_of((u & 0x7FFFFFFFu) > 0x7F800000u ? u : rounded);
}

void cpuk_round_bf16(float *x, size_t count) {
    for (size_t i = 0; i < count; i++) x[i] = bf16(x[i]);
}

void cpuk_add_rounded_bf16(float *a, const float *b, size_t count) {
    for (size_t i = 0; i < count; i++) a[i] = bf16(a[i] + bf16(b[i]));
}

// For non-NaN floats, |x| orders like its bit pattern with the sign cleared, so an integer max is exact and
// vectorizes; any pattern above infinity's is a NaN.
float cpuk_max_abs(const float *x, size_t count) {
    uint32_t largest = 0;
    for (size_t i = 0; i < count; i++) {
        uint32_t magnitude = bits_of(x[i]) & 0x7FFFFFFFu;
        largest = magnitude > largest ? magnitude : largest;
    }
    return largest > 0x7F800000u ? NAN : float_of(largest);
}

void cpuk_rms_norm_bf16(const float *x, const float *weight, float *out, size_t rows, size_t width, float epsilon) {
    size_t row = 0;
    // Four rows at a time: each sum of squares is still accumulated in index order, but the four independent chains
    // overlap instead of waiting on one add's latency.
    for (; row + 4 <= rows; row += 4) {
        const float *r0 = x + row * width, *r1 = r0 + width, *r2 = r1 + width, *r3 = r2 + width;
        float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        for (size_t i = 0; i < width; i++) {
            s0 += r0[i] * r0[i];
            s1 += r1[i] * r1[i];
            s2 += r2[i] * r2[i];
            s3 += r3[i] * r3[i];
        }
        float sums[4] = {s0, s1, s2, s3};
        for (size_t k = 0; k < 4; k++) {
            const float *in = x + (row + k) * width;
            float *o = out + (row + k) * width;
            float inverse = 1.0f / sqrtf(sums[k] / (float)width + epsilon);
            for (size_t i = 0; i < width; i++) o[i] = bf16(bf16(in[i] * inverse) * weight[i]);
        }
    }
    for (; row < rows; row++) {
        const float *in = x + row * width;
        float *o = out + row * width;
        float sum = 0;
        for (size_t i = 0; i < width; i++) sum += in[i] * in[i];
        float inverse = 1.0f / sqrtf(sum / (float)width + epsilon);
        for (size_t i = 0; i < width; i++) o[i] = bf16(bf16(in[i] * inverse) * weight[i]);
    }
}

void cpuk_rope_bf16(float *row, size_t heads, size_t head_dim, const float *cosines, const float *sines) {
    size_t half = head_dim / 2;
    for (size_t head = 0; head < heads; head++) {
        float *first = row + head * head_dim, *second = first + half;
        for (size_t i = 0; i < half; i++) {
            float a = first[i], b = second[i];
            first[i] = bf16(bf16(a * cosines[i]) + bf16(-b * sines[i]));
            second[i] = bf16(bf16(b * cosines[i]) + bf16(a * sines[i]));
        }
    }
}

// MARK: - exp

#if defined(__x86_64__)
#include <immintrin.h>

// glibc's expf (sysdeps/ieee754/flt-32/e_expf.c, the variant its ifunc picks on CPUs with FMA): x in double,
// k = round(x·32/ln2), r = x·32/ln2 - k with fused multiply-adds, 2^(k/32) from a 32-entry table times a cubic in r,
// rounded to float once. The constants are __exp2f_data's. Inputs with |x| >= 88, infinities and NaN take the
// library call, as glibc sends them to its own special path.
static const uint64_t exp_table[32] = {
    0x3ff0000000000000, 0x3fefd9b0d3158574, 0x3fefb5586cf9890f, 0x3fef9301d0125b51, 0x3fef72b83c7d517b,
    0x3fef54873168b9aa, 0x3fef387a6e756238, 0x3fef1e9df51fdee1, 0x3fef06fe0a31b715, 0x3feef1a7373aa9cb,
    0x3feedea64c123422, 0x3feece086061892d, 0x3feebfdad5362a27, 0x3feeb42b569d4f82, 0x3feeab07dd485429,
    0x3feea47eb03a5585, 0x3feea09e667f3bcd, 0x3fee9f75e8ec5f74, 0x3feea11473eb0187, 0x3feea589994cce13,
    0x3feeace5422aa0db, 0x3feeb737b0cdc5e5, 0x3feec49182a3f090, 0x3feed503b23e255d, 0x3feee89f995ad3ad,
    0x3feeff76f2fb5e47, 0x3fef199bdd85529c, 0x3fef3720dcef9069, 0x3fef5818dcfba487, 0x3fef7c97337b9b5f,
    0x3fefa4afa2a490da, 0x3fefd0765b6e4540,
};

__attribute__((target("avx2,fma")))
static inline __m128 exp4_fma(__m128 x) {
    const __m256d inverse_ln2_scaled = _mm256_set1_pd(0x1.71547652b82fep+5);
    const __m256d shift = _mm256_set1_pd(0x1.8p+52);
    __m256d xd = _mm256_cvtps_pd(x);
    __m256d kd = _mm256_fmadd_pd(inverse_ln2_scaled, xd, shift);
    __m256i ki = _mm256_castpd_si256(kd);
    kd = _mm256_sub_pd(kd, shift);
    __m256d r = _mm256_fmsub_pd(inverse_ln2_scaled, xd, kd);
    __m256i index = _mm256_and_si256(ki, _mm256_set1_epi64x(31));
    __m256i t = _mm256_i64gather_epi64((const long long *)exp_table, index, 8);
    __m256d s = _mm256_castsi256_pd(_mm256_add_epi64(t, _mm256_slli_epi64(ki, 47)));
    __m256d z = _mm256_fmadd_pd(_mm256_set1_pd(0x1.c6af84b912394p-20), r, _mm256_set1_pd(0x1.ebfce50fac4f3p-13));
    __m256d r2 = _mm256_mul_pd(r, r);
    __m256d y = _mm256_fmadd_pd(_mm256_set1_pd(0x1.62e42ff0c52d6p-6), r, _mm256_set1_pd(1.0));
    y = _mm256_fmadd_pd(z, r2, y);
    return _mm256_cvtpd_ps(_mm256_mul_pd(y, s));
}

__attribute__((target("avx2,fma")))
static void exp_fma(const float *x, float *out, size_t count) {
    size_t i = 0;
    for (; i + 8 <= count; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256i magnitude = _mm256_and_si256(_mm256_castps_si256(v), _mm256_set1_epi32(0x7FFFFFFF));
        int special = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(magnitude, _mm256_set1_epi32(0x42AFFFFF))));
        __m128 low = exp4_fma(_mm256_castps256_ps128(v)), high = exp4_fma(_mm256_extractf128_ps(v, 1));
        float inputs[8];
        if (special) _mm256_storeu_ps(inputs, v);  // x may alias out
        _mm_storeu_ps(out + i, low);
        _mm_storeu_ps(out + i + 4, high);
        for (int lane = 0; special; lane++, special >>= 1) {
            if (special & 1) out[i + lane] = expf(inputs[lane]);
        }
    }
    for (; i < count; i++) out[i] = expf(x[i]);
}

static int vector_exp_enabled = 0;
static pthread_once_t vector_exp_once = PTHREAD_ONCE_INIT;

static uint64_t mismatches_fma(uint32_t first, uint32_t last, uint32_t stride) {
    uint64_t mismatches = 0;
    float inputs[256], ours[256];
    uint64_t next = first;
    while (next <= last) {
        size_t n = 0;
        for (; n < 256 && next <= last; n++, next += stride) inputs[n] = float_of((uint32_t)next);
        exp_fma(inputs, ours, n);
        for (size_t k = 0; k < n; k++) {
            float expected = expf(inputs[k]);
            if (bits_of(ours[k]) != bits_of(expected) && !(isnan(ours[k]) && isnan(expected))) mismatches++;
        }
    }
    return mismatches;
}

// The vector path is only right where this process's expf is the algorithm above: check it on a spread of inputs
// over both signs and the whole non-special range (about 1.1 million values, a few milliseconds) before using it.
static void decide_vector_exp(void) {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return;
    vector_exp_enabled = mismatches_fma(0, 0x42B00000u, 2039) == 0 && mismatches_fma(0x80000000u, 0xC2B00000u, 2039) == 0
        && mismatches_fma(0xBF000000u, 0xBF800000u, 61) == 0 && mismatches_fma(0x3F000000u, 0x3F800000u, 61) == 0;
}

int cpuk_vector_exp_enabled(void) {
    pthread_once(&vector_exp_once, decide_vector_exp);
    return vector_exp_enabled;
}

uint64_t cpuk_vector_exp_mismatches(uint32_t first, uint32_t last, uint32_t stride) {
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma") || stride == 0) return 0;
    return mismatches_fma(first, last, stride);
}

void cpuk_exp(const float *x, float *out, size_t count) {
    if (cpuk_vector_exp_enabled()) {
        exp_fma(x, out, count);
    } else {
        for (size_t i = 0; i < count; i++) out[i] = expf(x[i]);
    }
}
#else
int cpuk_vector_exp_enabled(void) { return 0; }
uint64_t cpuk_vector_exp_mismatches(uint32_t first, uint32_t last, uint32_t stride) {
    (void)first; (void)last; (void)stride;
    return 0;
}
void cpuk_exp(const float *x, float *out, size_t count) {
    for (size_t i = 0; i < count; i++) out[i] = expf(x[i]);
}
#endif

void cpuk_swiglu_bf16(const float *gate_up, float *out, size_t rows, size_t intermediate) {
    float exponentials[256];
    for (size_t row = 0; row < rows; row++) {
        const float *gate = gate_up + row * 2 * intermediate, *up = gate + intermediate;
        float *o = out + row * intermediate;
        for (size_t start = 0; start < intermediate; start += 256) {
            size_t n = intermediate - start < 256 ? intermediate - start : 256;
            for (size_t i = 0; i < n; i++) exponentials[i] = -bf16(gate[start + i]);
            cpuk_exp(exponentials, exponentials, n);
            for (size_t i = 0; i < n; i++) {
                float g = bf16(gate[start + i]);
                o[start + i] = bf16(bf16(g / (1.0f + exponentials[i])) * bf16(up[start + i]));
            }
        }
    }
}

// Swift's max(x, y): y >= x ? y : x (keeps x when y is NaN).
static inline float swift_max(float x, float y) { return y >= x ? y : x; }

// The max of row[start..<end] as Swift's sequential max fold from -infinity gives it, for the values the softmax
// sees. Without NaN the fold's result is the largest value whatever the order (only the sign of a zero maximum could
// differ, and exp(v - (+0)) = exp(v - (-0))), so it is taken as an integer max over an order-preserving map of the
// bits, which vectorizes; with a NaN the fold runs in order.
static float block_max(const float *row, size_t start, size_t end) {
    int32_t largest = INT32_MIN;
    uint32_t sawNaN = 0;
    for (size_t key = start; key < end; key++) {
        uint32_t u = bits_of(row[key]);
        int32_t ordered = (int32_t)(u ^ ((uint32_t)((int32_t)u >> 31) & 0x7FFFFFFFu));
        largest = ordered > largest ? ordered : largest;
        sawNaN |= (u & 0x7FFFFFFFu) > 0x7F800000u;
    }
    if (!sawNaN) return float_of((uint32_t)largest ^ ((uint32_t)(largest >> 31) & 0x7FFFFFFFu));
    float fold = -INFINITY;
    for (size_t key = start; key < end; key++) fold = swift_max(fold, row[key]);
    return fold;
}

void cpuk_blocked_softmax_bf16(float *row, size_t count, size_t block) {
    float running_max = -INFINITY, sum = 0;
    size_t blocks = (count + block - 1) / block;
    float maxima[blocks ? blocks : 1];
    for (size_t b = 0; b < blocks; b++) {
        size_t start = b * block, end = start + block < count ? start + block : count;
        float new_max = swift_max(running_max, block_max(row, start, end));
        for (size_t key = start; key < end; key++) row[key] -= new_max;
        cpuk_exp(row + start, row + start, end - start);
        // The f32 sum of the unrounded weights, in key order as the kernel adds them.
        float block_sum = 0;
        for (size_t key = start; key < end; key++) block_sum += row[key];
        for (size_t key = start; key < end; key++) row[key] = bf16(row[key]);
        sum = (running_max == -INFINITY ? 0 : sum * expf(running_max - new_max)) + block_sum;
        running_max = new_max;
        maxima[b] = new_max;
    }
    float inverse = 1 / sum;
    for (size_t b = 0; b < blocks; b++) {
        size_t start = b * block, end = start + block < count ? start + block : count;
        float factor = expf(maxima[b] - running_max) * inverse;
        for (size_t key = start; key < end; key++) row[key] *= factor;
    }
}

// Eight consecutive query rows at once: row j of the group has `first_count + j` keys. Each row's numbers are exactly
// those of cpuk_blocked_softmax_bf16; only the f32 block sums, each a chain of dependent adds in key order, are
// interleaved across the rows so that eight chains are in flight instead of one.
enum { softmax_group = 8 };

static void blocked_softmax_group(float *first_row, size_t ld, size_t first_count, size_t block) {
    float running_max[softmax_group], sum[softmax_group];
    size_t blocks = (first_count + softmax_group - 1 + block - 1) / block;
    float maxima[softmax_group][blocks];
    for (size_t j = 0; j < softmax_group; j++) { running_max[j] = -INFINITY; sum[j] = 0; }
    for (size_t b = 0; b < blocks; b++) {
        size_t start = b * block, end[softmax_group], common_end = start + block;
        float new_max[softmax_group], block_sum[softmax_group];
        int all_active = 1;
        for (size_t j = 0; j < softmax_group; j++) {
            size_t count = first_count + j;
            block_sum[j] = 0;
            if (start >= count) { all_active = 0; end[j] = start; continue; }
            end[j] = start + block < count ? start + block : count;
            common_end = end[j] < common_end ? end[j] : common_end;
            float *row = first_row + j * ld;
            new_max[j] = swift_max(running_max[j], block_max(row, start, end[j]));
            for (size_t key = start; key < end[j]; key++) row[key] -= new_max[j];
            cpuk_exp(row + start, row + start, end[j] - start);
        }
        size_t sequential_from = start;
        if (all_active) {
            float s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
            const float *r0 = first_row, *r1 = r0 + ld, *r2 = r1 + ld, *r3 = r2 + ld, *r4 = r3 + ld, *r5 = r4 + ld,
                        *r6 = r5 + ld, *r7 = r6 + ld;
            for (size_t key = start; key < common_end; key++) {
                s0 += r0[key]; s1 += r1[key]; s2 += r2[key]; s3 += r3[key];
                s4 += r4[key]; s5 += r5[key]; s6 += r6[key]; s7 += r7[key];
            }
            block_sum[0] = s0; block_sum[1] = s1; block_sum[2] = s2; block_sum[3] = s3;
            block_sum[4] = s4; block_sum[5] = s5; block_sum[6] = s6; block_sum[7] = s7;
            sequential_from = common_end;
        }
        for (size_t j = 0; j < softmax_group; j++) {
            if (start >= first_count + j) continue;
            float *row = first_row + j * ld;
            float block_total = block_sum[j];
            for (size_t key = sequential_from; key < end[j]; key++) block_total += row[key];
            for (size_t key = start; key < end[j]; key++) row[key] = bf16(row[key]);
            sum[j] = (running_max[j] == -INFINITY ? 0 : sum[j] * expf(running_max[j] - new_max[j])) + block_total;
            running_max[j] = new_max[j];
            maxima[j][b] = new_max[j];
        }
    }
    for (size_t j = 0; j < softmax_group; j++) {
        float *row = first_row + j * ld;
        size_t count = first_count + j;
        float inverse = 1 / sum[j];
        for (size_t b = 0; b * block < count; b++) {
            size_t start = b * block, end = start + block < count ? start + block : count;
            float factor = expf(maxima[j][b] - running_max[j]) * inverse;
            for (size_t key = start; key < end; key++) row[key] *= factor;
        }
    }
}

void cpuk_causal_softmax_bf16(float *scores, size_t ld, size_t first_query, size_t rows, size_t block) {
    size_t r = 0;
    for (; r + softmax_group <= rows; r += softmax_group) {
        blocked_softmax_group(scores + r * ld, ld, first_query + r + 1, block);
    }
    for (; r < rows; r++) cpuk_blocked_softmax_bf16(scores + r * ld, first_query + r + 1, block);
}
