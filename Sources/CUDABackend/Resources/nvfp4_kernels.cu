// NVFP4Cluster GPU kernels, compiled at run time by NVRTC for the device's own architecture.
// BF16 values travel as raw 16-bit patterns, so no CUDA header is needed. Amax results are the bit patterns of
// non-negative floats, which order like unsigned integers, so atomicMax on them is a float max (NaN wins).

typedef unsigned short bf16_t;
typedef unsigned int u32;
typedef unsigned long long u64;
#define NEG_INF __int_as_float(0xff800000)

__device__ __forceinline__ float bf16_to_float(u32 bits) { return __uint_as_float(bits << 16); }

// Round to nearest even, as the CPU backend's bf16(); NaN stays NaN.
__device__ __forceinline__ u32 float_to_bf16(float value) {
    u32 u = __float_as_uint(value);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x40u;
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

__device__ __forceinline__ float round_bf16(float value) { return bf16_to_float(float_to_bf16(value)); }

__device__ __forceinline__ u32 pack_bf16(float low, float high) { return float_to_bf16(low) | (float_to_bf16(high) << 16); }

// One atomic per warp: the warp's max of `bits`, then atomicMax.
__device__ __forceinline__ void warp_amax(u32* amax, u32 bits) {
    u32 m = __reduce_max_sync(0xffffffffu, bits);
    if ((threadIdx.x & 31) == 0) atomicMax(amax, m);
}

__device__ __forceinline__ u32 abs_bits(float value) { return __float_as_uint(value) & 0x7fffffffu; }

// ---------------------------------------------------------------------------------------------------------------
// NVFP4 weight quantization (spec §3), the CPU quantizer's operations in the same order with IEEE rounding.

__device__ __forceinline__ float e4m3_value(u32 code) {
    u32 exponent = (code >> 3) & 0xfu, mantissa = code & 7u;
    if (exponent == 0) return __fmul_rn((float)mantissa, 0.001953125f);  // m · 2^-9, exact
    return __uint_as_float(((exponent + 120u) << 23) | (mantissa << 20));
}

__device__ __forceinline__ u32 e4m3_encode_magnitude(float a) {
    if (a < 0.015625f) return (u32)__float2int_rn(__fmul_rn(a, 512.0f));
    u32 u = __float_as_uint(a);
    u = u + 0x7ffffu + ((u >> 20) & 1u);
    return ((((u >> 23) - 120u) << 3) | ((u >> 20) & 7u)) & 0xffu;
}

__device__ __forceinline__ u32 block_scale_code(float block_amax, float d) {
    float s = __fdiv_rn(block_amax, d);
    if (s == 0.0f) s = 1.0f;
    s = fminf(fmaxf(s, 0.001953125f), 448.0f);
    return e4m3_encode_magnitude(s);
}

// E2M1 rounding of y = fl(x / d) without the division. The CPU quantizer counts the thresholds fl(|y|) passes
// (> 0.25, >= 0.75, > 1.25, >= 1.75, > 2.5, >= 3.5, > 5). With round-to-nearest-even and thresholds of even mantissa,
// fl(q) > t holds exactly when q > t + ulp(t)/2, and fl(q) >= t when q >= t - ulp(t⁻)/2. Those midpoints times d are exact
// in double; and for a float a, a > B iff a > RD(B), a >= B iff a >= RU(B). So each block computes eight float bounds
// once and every element costs eight comparisons. The eighth, fl(q) > 0 (q > 2^-150), keeps the CPU's sign rule:
// the sign bit is set only when y < 0, so an x whose quotient underflows to -0 gets code 0.
struct E2M1Bounds {
    float b[7];
    float nonzero;
};

__device__ __forceinline__ E2M1Bounds e2m1_bounds(float d) {
    double dd = (double)d;
    E2M1Bounds r;
    r.b[0] = __double2float_rd(__dmul_rn(0.25 + 0x1p-26, dd));
    r.b[1] = __double2float_ru(__dmul_rn(0.75 - 0x1p-25, dd));
    r.b[2] = __double2float_rd(__dmul_rn(1.25 + 0x1p-24, dd));
    r.b[3] = __double2float_ru(__dmul_rn(1.75 - 0x1p-24, dd));
    r.b[4] = __double2float_rd(__dmul_rn(2.5 + 0x1p-23, dd));
    r.b[5] = __double2float_ru(__dmul_rn(3.5 - 0x1p-23, dd));
    r.b[6] = __double2float_rd(__dmul_rn(5.0 + 0x1p-22, dd));
    r.nonzero = __double2float_rd(__dmul_rn(0x1p-150, dd));
    return r;
}

__device__ __forceinline__ u32 e2m1_code(float x, const E2M1Bounds& r) {
    float a = fabsf(x);
    u32 m = (a > r.b[0]) + (a >= r.b[1]) + (a > r.b[2]) + (a >= r.b[3]) + (a > r.b[4]) + (a >= r.b[5]) + (a > r.b[6]);
    return (x < 0.0f && a > r.nonzero) ? (m | 8u) : m;
}

// One thread per 16-element block: reads 32 bytes, writes 8 packed bytes and one scale byte.
extern "C" __global__ void nvfp4_quantize(const bf16_t* __restrict__ weight, u64* __restrict__ packed,
                                          unsigned char* __restrict__ scales, float weight_scale_2, long long blocks) {
    long long block = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (block >= blocks) return;
    const uint4* source = reinterpret_cast<const uint4*>(weight) + block * 2;
    uint4 low = source[0], high = source[1];
    u32 words[8] = {low.x, low.y, low.z, low.w, high.x, high.y, high.z, high.w};
    u32 max_bits = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) max_bits = max(max_bits, max(words[i] & 0x7fffu, (words[i] >> 16) & 0x7fffu));
    float d = __fmul_rn(6.0f, weight_scale_2);
    u32 code = block_scale_code(bf16_to_float(max_bits), d);
    scales[block] = (unsigned char)code;
    E2M1Bounds bounds = e2m1_bounds(__fmul_rn(e4m3_value(code), weight_scale_2));
    u64 out = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        u32 even = e2m1_code(bf16_to_float(words[i] & 0xffffu), bounds);
        u32 odd = e2m1_code(bf16_to_float(words[i] >> 16), bounds);
        out |= (u64)(even | (odd << 4)) << (8 * i);
    }
    packed[block] = out;
}

// max |x| of a BF16 tensor (count a multiple of 8) as float bits into *amax.
extern "C" __global__ void bf16_amax(const bf16_t* __restrict__ values, long long count, u32* amax) {
    long long vectors = count / 8;
    u32 max_bits = 0;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < vectors; i += (long long)gridDim.x * blockDim.x) {
        uint4 v = reinterpret_cast<const uint4*>(values)[i];
        u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int k = 0; k < 4; ++k) max_bits = max(max_bits, max(w[k] & 0x7fffu, (w[k] >> 16) & 0x7fffu));
    }
    warp_amax(amax, max_bits << 16);
}

// The first row of a BF16 [rows, width] tensor holding a NaN or infinity, as atomicMax of ~row into *flag (0: none),
// so that calibration can name the sample without reading device-resident hidden states back.
extern "C" __global__ void bf16_first_nonfinite_row(const bf16_t* __restrict__ values, long long count, int width, u32* flag) {
    long long vectors = count / 8;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < vectors; i += (long long)gridDim.x * blockDim.x) {
        uint4 v = reinterpret_cast<const uint4*>(values)[i];
        u32 w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            u32 bits = (w[k >> 1] >> (16 * (k & 1))) & 0x7f80u;
            if (bits == 0x7f80u) {
                atomicMax(flag, 0xffffffffu - (u32)((i * 8 + k) / width));
                break;
            }
        }
    }
}

// Rows of a BF16 [vocab, width] embedding table gathered for `tokens` token ids (checked on the host) into out, 16 bytes
// per thread (width a multiple of 16), so calibration embeds without widening on the host and uploading f32.
extern "C" __global__ void embed_gather_bf16(const bf16_t* __restrict__ table, const int* __restrict__ ids,
                                             bf16_t* __restrict__ out, long long tokens, int width) {
    long long row_vectors = width / 8;
    long long vectors = tokens * row_vectors;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < vectors; i += (long long)gridDim.x * blockDim.x) {
        long long row = i / row_vectors, column = i % row_vectors;
        reinterpret_cast<uint4*>(out)[i] = reinterpret_cast<const uint4*>(table)[(long long)ids[row] * row_vectors + column];
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Format conversions for the host's f32 hidden states.

extern "C" __global__ void f32_to_bf16(const float* __restrict__ in, bf16_t* __restrict__ out, long long count) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (long long)gridDim.x * blockDim.x)
        out[i] = (bf16_t)float_to_bf16(in[i]);
}

extern "C" __global__ void bf16_to_f32(const bf16_t* __restrict__ in, float* __restrict__ out, long long count) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < count; i += (long long)gridDim.x * blockDim.x)
        out[i] = bf16_to_float(in[i]);
}

// ---------------------------------------------------------------------------------------------------------------
// The decoder layer's own kernels, with transformers' BF16 rounding points (as CPUBackend's bf16 mode).

// out = bf16(bf16(x · rsqrt(mean(x²) + eps)) · w), one block per row; amax (if given) of out.
extern "C" __global__ void rmsnorm_bf16(const bf16_t* __restrict__ x, const bf16_t* __restrict__ weight,
                                        bf16_t* __restrict__ out, u32* amax, int width, float eps) {
    __shared__ float partial[32];
    const bf16_t* row = x + (long long)blockIdx.x * width;
    bf16_t* out_row = out + (long long)blockIdx.x * width;
    float sum = 0.0f;
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
        float v = bf16_to_float(row[i]);
        sum = __fadd_rn(sum, __fmul_rn(v, v));
    }
    for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    if ((threadIdx.x & 31) == 0) partial[threadIdx.x >> 5] = sum;
    __syncthreads();
    if (threadIdx.x < 32) {
        float s = threadIdx.x < (blockDim.x >> 5) ? partial[threadIdx.x] : 0.0f;
        for (int offset = 16; offset > 0; offset >>= 1) s += __shfl_xor_sync(0xffffffffu, s, offset);
        if (threadIdx.x == 0) partial[0] = s;
    }
    __syncthreads();
    float inverse_rms = __fdiv_rn(1.0f, __fsqrt_rn(__fadd_rn(__fdiv_rn(partial[0], (float)width), eps)));
    u32 max_bits = 0;
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
        float normed = round_bf16(__fmul_rn(bf16_to_float(row[i]), inverse_rms));
        u32 result = float_to_bf16(__fmul_rn(normed, bf16_to_float(weight[i])));
        out_row[i] = (bf16_t)result;
        max_bits = max(max_bits, (result & 0x7fffu) << 16);
    }
    if (amax) warp_amax(amax, max_bits);
}

// RoPE on the q and k heads of each token (rotate-half layout), at the token's position in its sample.
// cos/sin tables are [positions, head_dim/2] f32 values already rounded to BF16; each product and sum is rounded.
extern "C" __global__ void rope_bf16(bf16_t* qkv, const int* __restrict__ positions, const float* __restrict__ cos_table,
                                     const float* __restrict__ sin_table, int row_stride, int rotated_heads, int head_dim) {
    int token = blockIdx.x;
    int half = head_dim >> 1;
    int position = positions[token];
    bf16_t* row = qkv + (long long)token * row_stride;
    for (int job = threadIdx.x; job < rotated_heads * half; job += blockDim.x) {
        int head = job / half, index = job % half;
        bf16_t* base = row + head * head_dim;
        float first = bf16_to_float(base[index]), second = bf16_to_float(base[index + half]);
        float c = cos_table[position * half + index], s = sin_table[position * half + index];
        base[index] = (bf16_t)float_to_bf16(__fadd_rn(round_bf16(__fmul_rn(first, c)), round_bf16(__fmul_rn(-second, s))));
        base[index + half] = (bf16_t)float_to_bf16(__fadd_rn(round_bf16(__fmul_rn(second, c)), round_bf16(__fmul_rn(first, s))));
    }
}

// out[r, i] = bf16(bf16(silu(g)) · u) for rows [g (intermediate) | u (intermediate)]; amax of out.
extern "C" __global__ void swiglu_bf16(const bf16_t* __restrict__ gate_up, bf16_t* __restrict__ out, u32* amax, int rows,
                                       int intermediate) {
    long long pairs = (long long)rows * (intermediate / 2);
    int pairs_per_row = intermediate / 2;
    u32 max_bits = 0;
    for (long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x; p < pairs; p += (long long)gridDim.x * blockDim.x) {
        long long r = p / pairs_per_row;
        int c = (int)(p % pairs_per_row) * 2;
        const bf16_t* source = gate_up + r * 2 * intermediate;
        u32 g = *reinterpret_cast<const u32*>(source + c);
        u32 u = *reinterpret_cast<const u32*>(source + intermediate + c);
        float g0 = bf16_to_float(g & 0xffffu), g1 = bf16_to_float(g >> 16);
        float s0 = round_bf16(__fdiv_rn(g0, __fadd_rn(1.0f, expf(-g0))));
        float s1 = round_bf16(__fdiv_rn(g1, __fadd_rn(1.0f, expf(-g1))));
        u32 o0 = float_to_bf16(__fmul_rn(s0, bf16_to_float(u & 0xffffu)));
        u32 o1 = float_to_bf16(__fmul_rn(s1, bf16_to_float(u >> 16)));
        *reinterpret_cast<u32*>(out + r * intermediate + c) = o0 | (o1 << 16);
        max_bits = max(max_bits, max(o0 & 0x7fffu, o1 & 0x7fffu) << 16);
    }
    warp_amax(amax, max_bits);
}

// hidden = bf16(hidden + delta), both BF16; count even.
extern "C" __global__ void residual_add_bf16(bf16_t* hidden, const bf16_t* __restrict__ delta, long long count) {
    long long pairs = count / 2;
    for (long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x; p < pairs; p += (long long)gridDim.x * blockDim.x) {
        u32 h = reinterpret_cast<const u32*>(hidden)[p];
        u32 d = reinterpret_cast<const u32*>(delta)[p];
        u32 r0 = float_to_bf16(__fadd_rn(bf16_to_float(h & 0xffffu), bf16_to_float(d & 0xffffu)));
        u32 r1 = float_to_bf16(__fadd_rn(bf16_to_float(h >> 16), bf16_to_float(d >> 16)));
        reinterpret_cast<u32*>(hidden)[p] = r0 | (r1 << 16);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Causal GQA attention over concatenated samples, flash style on BF16 tensor cores (mma.sync m16n8k16, f32 accum).
// Grid (query blocks of 64, samples, heads), 4 warps of 16 query rows. Keys go in tiles of 64 with an online
// softmax; probabilities are rounded to BF16 for the P·V product while the row sums stay f32.

__device__ __forceinline__ void mma_bf16(float* c, u32 a0, u32 a1, u32 a2, u32 a3, u32 b0, u32 b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

template <int D>
__device__ void attention(const bf16_t* __restrict__ qkv, bf16_t* __restrict__ out, const int* __restrict__ offsets,
                          const int* __restrict__ lengths, int row_stride, int heads, int kv_heads, float scale_log2) {
    constexpr int KEYS = 64;
    constexpr int K_STRIDE = D / 2 + 4;   // words per key row (padding spreads banks)
    constexpr int V_STRIDE = KEYS + 8;    // bf16 per transposed dim row
    __shared__ __align__(16) u32 key_tile[KEYS * K_STRIDE];
    __shared__ __align__(16) bf16_t value_tile[D * V_STRIDE];

    const int sample = blockIdx.y, head = blockIdx.z;
    const int length = lengths[sample];
    const int q0 = blockIdx.x * 64;
    if (q0 >= length) return;
    const long long first_row = offsets[sample];
    const int kv_head = head / (heads / kv_heads);
    const int q_column = head * D, k_column = heads * D + kv_head * D, v_column = (heads + kv_heads) * D + kv_head * D;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, group = lane >> 2, quad = lane & 3;
    const int row0 = q0 + warp * 16 + group, row1 = row0 + 8;

    u32 qa[D / 16][4];
#pragma unroll
    for (int ks = 0; ks < D / 16; ++ks) {
        int c = q_column + ks * 16 + quad * 2;
        const bf16_t* r0 = qkv + (first_row + row0) * row_stride + c;
        const bf16_t* r1 = qkv + (first_row + row1) * row_stride + c;
        qa[ks][0] = row0 < length ? *reinterpret_cast<const u32*>(r0) : 0u;
        qa[ks][1] = row1 < length ? *reinterpret_cast<const u32*>(r1) : 0u;
        qa[ks][2] = row0 < length ? *reinterpret_cast<const u32*>(r0 + 8) : 0u;
        qa[ks][3] = row1 < length ? *reinterpret_cast<const u32*>(r1 + 8) : 0u;
    }
    float o[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.0f;
    float m0 = NEG_INF, m1 = NEG_INF, l0 = 0.0f, l1 = 0.0f;

    const int last_tile = min(length - 1, q0 + 63) / KEYS;
    for (int tile = 0; tile <= last_tile; ++tile) {
        const int k0 = tile * KEYS;
        __syncthreads();
        // Keys row-major, values transposed; rows past the sample's end are zero.
        for (int v = threadIdx.x; v < KEYS * D / 8; v += blockDim.x) {
            int key = v / (D / 8), chunk = v % (D / 8);
            uint4 kv = make_uint4(0, 0, 0, 0), vv = make_uint4(0, 0, 0, 0);
            if (k0 + key < length) {
                const bf16_t* source = qkv + (first_row + k0 + key) * row_stride;
                kv = *reinterpret_cast<const uint4*>(source + k_column + chunk * 8);
                vv = *reinterpret_cast<const uint4*>(source + v_column + chunk * 8);
            }
            *reinterpret_cast<uint4*>(&key_tile[key * K_STRIDE + chunk * 4]) = kv;
            u32 w[4] = {vv.x, vv.y, vv.z, vv.w};
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                value_tile[(chunk * 8 + 2 * j) * V_STRIDE + key] = (bf16_t)(w[j] & 0xffffu);
                value_tile[(chunk * 8 + 2 * j + 1) * V_STRIDE + key] = (bf16_t)(w[j] >> 16);
            }
        }
        __syncthreads();

        float s[KEYS / 8][4];
#pragma unroll
        for (int n = 0; n < KEYS / 8; ++n) {
            s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
            const u32* key_row = key_tile + (n * 8 + group) * K_STRIDE;
#pragma unroll
            for (int ks = 0; ks < D / 16; ++ks)
                mma_bf16(s[n], qa[ks][0], qa[ks][1], qa[ks][2], qa[ks][3], key_row[ks * 8 + quad], key_row[ks * 8 + 4 + quad]);
        }
        float tile_max0 = NEG_INF, tile_max1 = NEG_INF;
#pragma unroll
        for (int n = 0; n < KEYS / 8; ++n) {
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                int key = k0 + n * 8 + quad * 2 + (j & 1);
                int row = j < 2 ? row0 : row1;
                float x = (key > row || key >= length) ? NEG_INF : s[n][j] * scale_log2;
                s[n][j] = x;
                if (j < 2) tile_max0 = fmaxf(tile_max0, x); else tile_max1 = fmaxf(tile_max1, x);
            }
        }
        tile_max0 = fmaxf(tile_max0, __shfl_xor_sync(0xffffffffu, tile_max0, 1));
        tile_max0 = fmaxf(tile_max0, __shfl_xor_sync(0xffffffffu, tile_max0, 2));
        tile_max1 = fmaxf(tile_max1, __shfl_xor_sync(0xffffffffu, tile_max1, 1));
        tile_max1 = fmaxf(tile_max1, __shfl_xor_sync(0xffffffffu, tile_max1, 2));
        float new0 = fmaxf(m0, tile_max0), new1 = fmaxf(m1, tile_max1);
        float correction0 = exp2f(m0 - new0), correction1 = exp2f(m1 - new1);
        m0 = new0;
        m1 = new1;
        l0 *= correction0;
        l1 *= correction1;
#pragma unroll
        for (int n = 0; n < D / 8; ++n) {
            o[n][0] *= correction0; o[n][1] *= correction0;
            o[n][2] *= correction1; o[n][3] *= correction1;
        }
#pragma unroll
        for (int n = 0; n < KEYS / 8; ++n) {
            s[n][0] = exp2f(s[n][0] - m0); s[n][1] = exp2f(s[n][1] - m0);
            s[n][2] = exp2f(s[n][2] - m1); s[n][3] = exp2f(s[n][3] - m1);
            l0 += s[n][0] + s[n][1];
            l1 += s[n][2] + s[n][3];
        }
#pragma unroll
        for (int kstep = 0; kstep < KEYS / 16; ++kstep) {
            u32 a0 = pack_bf16(s[2 * kstep][0], s[2 * kstep][1]);
            u32 a1 = pack_bf16(s[2 * kstep][2], s[2 * kstep][3]);
            u32 a2 = pack_bf16(s[2 * kstep + 1][0], s[2 * kstep + 1][1]);
            u32 a3 = pack_bf16(s[2 * kstep + 1][2], s[2 * kstep + 1][3]);
#pragma unroll
            for (int n = 0; n < D / 8; ++n) {
                const u32* value_row = reinterpret_cast<const u32*>(value_tile + (n * 8 + group) * V_STRIDE);
                mma_bf16(o[n], a0, a1, a2, a3, value_row[kstep * 8 + quad], value_row[kstep * 8 + 4 + quad]);
            }
        }
    }
    l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
    l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
    l1 += __shfl_xor_sync(0xffffffffu, l1, 2);
    const int out_stride = heads * D;
    float inverse0 = 1.0f / l0, inverse1 = 1.0f / l1;
#pragma unroll
    for (int n = 0; n < D / 8; ++n) {
        int c = head * D + n * 8 + quad * 2;
        if (row0 < length)
            *reinterpret_cast<u32*>(out + (first_row + row0) * out_stride + c) = pack_bf16(o[n][0] * inverse0, o[n][1] * inverse0);
        if (row1 < length)
            *reinterpret_cast<u32*>(out + (first_row + row1) * out_stride + c) = pack_bf16(o[n][2] * inverse1, o[n][3] * inverse1);
    }
}

extern "C" __global__ void __launch_bounds__(128) attention_d64(const bf16_t* qkv, bf16_t* out, const int* offsets,
                                                                const int* lengths, int row_stride, int heads, int kv_heads,
                                                                float scale_log2) {
    attention<64>(qkv, out, offsets, lengths, row_stride, heads, kv_heads, scale_log2);
}

extern "C" __global__ void __launch_bounds__(128) attention_d128(const bf16_t* qkv, bf16_t* out, const int* offsets,
                                                                 const int* lengths, int row_stride, int heads, int kv_heads,
                                                                 float scale_log2) {
    attention<128>(qkv, out, offsets, lengths, row_stride, heads, kv_heads, scale_log2);
}

extern "C" __global__ void __launch_bounds__(128) attention_d32(const bf16_t* qkv, bf16_t* out, const int* offsets,
                                                                const int* lengths, int row_stride, int heads, int kv_heads,
                                                                float scale_log2) {
    attention<32>(qkv, out, offsets, lengths, row_stride, heads, kv_heads, scale_log2);
}

// ---------------------------------------------------------------------------------------------------------------
// GPTQ (see CUDAGPTQ.swift). Hessian sums are FP32 column-major [n, n] of which only tiles (bi, bj) with bi <= bj
// (tile edge `tile`) are computed; the Cholesky factorization runs in FP64; the column loop in FP32 with the CPU's
// rounding of each value.

__device__ __forceinline__ float hessian_entry(const float* __restrict__ h, long long n, int tile, int a, int b) {
    return (a / tile <= b / tile) ? h[(long long)a + (long long)b * n] : h[(long long)b + (long long)a * n];
}

// diag[i] = H[i, i].
extern "C" __global__ void gptq_diagonal(const float* __restrict__ h, long long n, float* __restrict__ diag) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        diag[i] = h[i * (n + 1)];
}

// The reversed, permuted, scaled and damped Hessian in FP64, column-major:
// a[i + j·n] = scale · H[s(i), s(j)] for i != j, diagonal[s(i)] + lambda on the diagonal, with s(i) = order[n-1-i].
extern "C" __global__ void gptq_prepare_f64(const float* __restrict__ h, long long n, int tile, const int* __restrict__ order,
                                            const double* __restrict__ diagonal, double scale, double lambda,
                                            double* __restrict__ a) {
    long long total = n * n;
    for (long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x; index < total;
         index += (long long)gridDim.x * blockDim.x) {
        long long i = index % n, j = index / n;
        int si = order[n - 1 - i], sj = order[n - 1 - j];
        a[index] = (i == j) ? diagonal[si] + lambda : scale * (double)hessian_entry(h, n, tile, si, sj);
    }
}

// V (column-major FP32, upper triangular) from the Cholesky factor L of the reversed matrix: V[r, c] = L[n-1-r, n-1-c]
// for c >= r. The permuted Hessian is V·Vᵀ, and V⁻¹ = U is the upper Cholesky factor of its inverse (H⁻¹ = UᵀU).
extern "C" __global__ void gptq_extract_upper(const double* __restrict__ lower, long long n, float* __restrict__ upper) {
    long long total = n * n;
    for (long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x; index < total;
         index += (long long)gridDim.x * blockDim.x) {
        long long r = index % n, c = index / n;
        upper[index] = (c >= r) ? (float)lower[(n - 1 - r) + (n - 1 - c) * n] : 0.0f;
    }
}

// working[p·rows + r] = W[r, order[p]] (0 for dead inputs): the weights transposed into quantization order, through a
// 32×32 shared tile so that both the reads (along a row of W) and the writes (along a column) are coalesced.
template <typename Load>
__device__ __forceinline__ void gptq_gather(Load load, int rows, int cols, const int* __restrict__ order,
                                            const unsigned char* __restrict__ dead, float* __restrict__ working) {
    __shared__ float tile[32][33];
    int p0 = blockIdx.x * 32, r0 = blockIdx.y * 32;
    for (int k = threadIdx.y; k < 32; k += blockDim.y) {
        int r = r0 + k, p = p0 + threadIdx.x;
        float value = 0.0f;
        if (r < rows && p < cols) {
            int c = order[p];
            value = dead[c] ? 0.0f : load((long long)r * cols + c);
        }
        tile[k][threadIdx.x] = value;
    }
    __syncthreads();
    for (int k = threadIdx.y; k < 32; k += blockDim.y) {
        int p = p0 + k, r = r0 + threadIdx.x;
        if (r < rows && p < cols) working[(long long)p * rows + r] = tile[threadIdx.x][k];
    }
}

extern "C" __global__ void gptq_gather_bf16(const bf16_t* __restrict__ weight, int rows, int cols, const int* __restrict__ order,
                                            const unsigned char* __restrict__ dead, float* __restrict__ working) {
    gptq_gather([&](long long i) { return bf16_to_float(weight[i]); }, rows, cols, order, dead, working);
}

extern "C" __global__ void gptq_gather_f32(const float* __restrict__ weight, int rows, int cols, const int* __restrict__ order,
                                           const unsigned char* __restrict__ dead, float* __restrict__ working) {
    gptq_gather([&](long long i) { return weight[i]; }, rows, cols, order, dead, working);
}

// E2M1 of a quotient y, as E2M1.encode: thresholds on |y|, sign only when y < 0.
__device__ __forceinline__ u32 e2m1_encode_quotient(float y) {
    float a = fabsf(y);
    u32 m = (a > 0.25f) + (a >= 0.75f) + (a > 1.25f) + (a >= 1.75f) + (a > 2.5f) + (a >= 3.5f) + (a > 5.0f);
    return y < 0.0f ? (m | 8u) : m;
}

__device__ __forceinline__ float e2m1_magnitude(u32 code) {
    const float magnitudes[8] = {0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f};
    float m = magnitudes[code & 7u];
    return (code & 8u) ? -m : m;
}

// One GPTQ block of columns [start, end) (end - start <= 128) in the left-looking form, one thread per row. With
// V = U⁻¹ (upper triangular; H⁻¹ = UᵀU) and D = W - Q the rounding differences of the columns before, column p is
// rounded from w̃_p = W_p + (Σ_{i<p} D_i·V[i,p]) / V[p,p], which is GPTQ's updated column (W - Q = E·U with
// E = (W - Q)·V). The sum over the columns before the block comes in `before` (a GEMM, rows × width, absent for the
// first block); the block's own differences are kept in shared memory ([column][thread]) and written to `differences`.
extern "C" __global__ void gptq_block(const float* __restrict__ working, float* __restrict__ differences, const float* __restrict__ before,
                                      int rows, long long n, int start, int end, const float* __restrict__ v,
                                      const unsigned char* __restrict__ scales, int blocks_per_row, const int* __restrict__ order,
                                      float weight_scale_2, unsigned char* __restrict__ codes) {
    extern __shared__ float block_differences[];
    int threads = blockDim.x, t = threadIdx.x;
    int r = blockIdx.x * threads + t;
    if (r >= rows) return;  // rows are independent: no thread waits for another
    int width = end - start;
    for (int j = 0; j < width; ++j) {
        long long p = start + j;
        const float* column = v + p * n + start;  // V[start.., p]
        // Four partial sums break the dependency chain of one accumulator.
        float sums[4] = {before ? before[(long long)j * rows + r] : 0.0f, 0.0f, 0.0f, 0.0f};
        int i = 0;
        for (; i + 4 <= j; i += 4) {
#pragma unroll
            for (int lane = 0; lane < 4; ++lane)
                sums[lane] = __fmaf_rn(block_differences[(i + lane) * threads + t], column[i + lane], sums[lane]);
        }
        for (; i < j; ++i) sums[0] = __fmaf_rn(block_differences[i * threads + t], column[i], sums[0]);
        float correction = __fadd_rn(__fadd_rn(sums[0], sums[1]), __fadd_rn(sums[2], sums[3]));
        float original = working[p * rows + r];
        float value = __fadd_rn(original, __fdiv_rn(correction, v[p + p * n]));
        float d = __fmul_rn(e4m3_value(scales[(long long)r * blocks_per_row + order[p] / 16]), weight_scale_2);
        u32 code = e2m1_encode_quotient(__fdiv_rn(value, d));
        codes[p * rows + r] = (unsigned char)code;
        float difference = __fsub_rn(original, __fmul_rn(e2m1_magnitude(code), d));
        block_differences[j * threads + t] = difference;
        differences[p * rows + r] = difference;
    }
}

// packed[r·cols/2 + m] = code of column 2m | code of column 2m+1 << 4, from codes in quantization order
// (codes[position[c]·rows + r]).
extern "C" __global__ void gptq_pack(const unsigned char* __restrict__ codes, const int* __restrict__ position, int rows, int cols,
                                     unsigned char* __restrict__ packed) {
    long long half = cols / 2, total = (long long)rows * half;
    for (long long index = (long long)blockIdx.x * blockDim.x + threadIdx.x; index < total;
         index += (long long)gridDim.x * blockDim.x) {
        long long r = index % rows, m = index / rows;
        u32 low = codes[(long long)position[2 * m] * rows + r];
        u32 high = codes[(long long)position[2 * m + 1] * rows + r];
        packed[r * half + m] = (unsigned char)(low | (high << 4));
    }
}
