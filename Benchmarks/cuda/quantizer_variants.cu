// Variants of the NVFP4 weight quantizer kernel, timed against the production kernel (Resources/nvfp4_kernels.cu,
// itself bit-identical to the CPU quantizer) on an 8192x28672 BF16 matrix, with every output byte compared to it.
// Built and run on the GPU machine by Benchmarks/cuda/quantizer-variants.sh (nvcc; not part of the Swift package).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <algorithm>
#include <random>
#include <cuda_runtime.h>
#include "../../Sources/CUDABackend/Resources/nvfp4_kernels.cu"

#define CHECK(call) do { cudaError_t e = (call); if (e != cudaSuccess) { \
    fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e)); exit(1); } } while (0)

// Integer thresholds on BF16 magnitude bits: for a bf16 magnitude m (15 bits) and a float bound B >= 0,
// float(m) > B  iff  m > bits(B) >> 16, and float(m) >= B iff m > ceil(bits(B) / 2^16) - 1.
struct E2M1Thresholds {
    int t[7];
    int nonzero;
};

__device__ __forceinline__ int above(float bound) { return (int)(__float_as_uint(bound) >> 16); }
__device__ __forceinline__ int at_least(float bound) { return (int)((__float_as_uint(bound) + 0xffffu) >> 16) - 1; }

__device__ __forceinline__ E2M1Thresholds e2m1_thresholds(float d) {
    E2M1Bounds b = e2m1_bounds(d);
    E2M1Thresholds r;
    r.t[0] = above(b.b[0]); r.t[1] = at_least(b.b[1]); r.t[2] = above(b.b[2]); r.t[3] = at_least(b.b[3]);
    r.t[4] = above(b.b[4]); r.t[5] = at_least(b.b[5]); r.t[6] = above(b.b[6]);
    r.nonzero = above(b.nonzero);
    return r;
}

__device__ __forceinline__ u32 e2m1_code_bits(u32 bf16, const E2M1Thresholds& r) {
    int m = (int)(bf16 & 0x7fffu);
    u32 c = (m > r.t[0]) + (m > r.t[1]) + (m > r.t[2]) + (m > r.t[3]) + (m > r.t[4]) + (m > r.t[5]) + (m > r.t[6]);
    return ((bf16 & 0x8000u) && m > r.nonzero) ? (c | 8u) : c;
}

__device__ __forceinline__ u64 quantize_block_int(uint4 low, uint4 high, float weight_scale_2, unsigned char* scale_out) {
    u32 words[8] = {low.x, low.y, low.z, low.w, high.x, high.y, high.z, high.w};
    u32 max_bits = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) max_bits = max(max_bits, max(words[i] & 0x7fffu, (words[i] >> 16) & 0x7fffu));
    float d = __fmul_rn(6.0f, weight_scale_2);
    u32 code = block_scale_code(bf16_to_float(max_bits), d);
    *scale_out = (unsigned char)code;
    E2M1Thresholds r = e2m1_thresholds(__fmul_rn(e4m3_value(code), weight_scale_2));
    u64 out = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        u32 even = e2m1_code_bits(words[i] & 0xffffu, r);
        u32 odd = e2m1_code_bits(words[i] >> 16, r);
        out |= (u64)(even | (odd << 4)) << (8 * i);
    }
    return out;
}

// V1: the production kernel's code, at most 64 registers (at least 4 blocks of 256 per SM).
extern "C" __global__ void __launch_bounds__(256, 4) v1_bounded(const bf16_t* __restrict__ weight, u64* __restrict__ packed,
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

// V2: integer thresholds, one thread per block.
extern "C" __global__ void v2_int(const bf16_t* __restrict__ weight, u64* __restrict__ packed,
        unsigned char* __restrict__ scales, float weight_scale_2, long long blocks) {
    long long block = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (block >= blocks) return;
    const uint4* source = reinterpret_cast<const uint4*>(weight) + block * 2;
    packed[block] = quantize_block_int(source[0], source[1], weight_scale_2, scales + block);
}

// V3: integer thresholds, grid-stride over blocks with the next block's 32 bytes loaded before this one is computed.
extern "C" __global__ void __launch_bounds__(256) v3_prefetch(const bf16_t* __restrict__ weight, u64* __restrict__ packed,
        unsigned char* __restrict__ scales, float weight_scale_2, long long blocks) {
    long long stride = (long long)gridDim.x * blockDim.x;
    long long block = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const uint4* source = reinterpret_cast<const uint4*>(weight);
    if (block >= blocks) return;
    uint4 low = source[block * 2], high = source[block * 2 + 1];
    while (true) {
        long long next = block + stride;
        uint4 next_low, next_high;
        if (next < blocks) { next_low = source[next * 2]; next_high = source[next * 2 + 1]; }
        packed[block] = quantize_block_int(low, high, weight_scale_2, scales + block);
        if (next >= blocks) break;
        block = next; low = next_low; high = next_high;
    }
}

// V4: two threads per block, each loading 16 contiguous bytes (a warp reads 512 contiguous bytes per instruction);
// the pair exchanges its max, both derive the scale, each packs 8 codes into 4 bytes.
extern "C" __global__ void v4_pairs(const bf16_t* __restrict__ weight, u32* __restrict__ packed,
        unsigned char* __restrict__ scales, float weight_scale_2, long long blocks) {
    long long half = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long block = half >> 1;
    bool inside = block < blocks;
    uint4 v = inside ? reinterpret_cast<const uint4*>(weight)[half] : make_uint4(0, 0, 0, 0);
    u32 words[4] = {v.x, v.y, v.z, v.w};
    u32 max_bits = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) max_bits = max(max_bits, max(words[i] & 0x7fffu, (words[i] >> 16) & 0x7fffu));
    max_bits = max(max_bits, __shfl_xor_sync(0xffffffffu, max_bits, 1));
    if (!inside) return;
    float d = __fmul_rn(6.0f, weight_scale_2);
    u32 code = block_scale_code(bf16_to_float(max_bits), d);
    if ((half & 1) == 0) scales[block] = (unsigned char)code;
    E2M1Thresholds r = e2m1_thresholds(__fmul_rn(e4m3_value(code), weight_scale_2));
    u32 out = 0;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        u32 even = e2m1_code_bits(words[i] & 0xffffu, r);
        u32 odd = e2m1_code_bits(words[i] >> 16, r);
        out |= (even | (odd << 4)) << (8 * i);
    }
    packed[half] = out;
}

// V5: V2 with the per-block scale chain replaced by a 256-entry table lookup: the E4M3 code is a monotone function of the
// block max bits, so thresholds per code are computed once per launch (by a setup kernel) into shared memory.
__global__ void v5_setup(float weight_scale_2, int* table) {
    int code = threadIdx.x;  // 0..255 (only 1..126 occur)
    E2M1Thresholds r = e2m1_thresholds(__fmul_rn(e4m3_value((u32)code & 0x7fu), weight_scale_2));
    for (int k = 0; k < 7; ++k) table[code * 8 + k] = r.t[k];
    table[code * 8 + 7] = r.nonzero;
}

extern "C" __global__ void v5_table(const bf16_t* __restrict__ weight, u64* __restrict__ packed,
        unsigned char* __restrict__ scales, float weight_scale_2, long long blocks, const int* __restrict__ table) {
    __shared__ int shared[128 * 8];
    for (int i = threadIdx.x; i < 128 * 8; i += blockDim.x) shared[i] = table[i];
    __syncthreads();
    long long block = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (block >= blocks) return;
    const uint4* source = reinterpret_cast<const uint4*>(weight) + block * 2;
    uint4 low = source[0], high = source[1];
    u32 words[8] = {low.x, low.y, low.z, low.w, high.x, high.y, high.z, high.w};
    u32 max_bits = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) max_bits = max(max_bits, max(words[i] & 0x7fffu, (words[i] >> 16) & 0x7fffu));
    u32 code = block_scale_code(bf16_to_float(max_bits), __fmul_rn(6.0f, weight_scale_2));
    scales[block] = (unsigned char)code;
    E2M1Thresholds r;
    const int* row = shared + (code & 0x7fu) * 8;
#pragma unroll
    for (int k = 0; k < 7; ++k) r.t[k] = row[k];
    r.nonzero = row[7];
    u64 out = 0;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        u32 even = e2m1_code_bits(words[i] & 0xffffu, r);
        u32 odd = e2m1_code_bits(words[i] >> 16, r);
        out |= (u64)(even | (odd << 4)) << (8 * i);
    }
    packed[block] = out;
}

static float bf16f(uint16_t b) { uint32_t u = (uint32_t)b << 16; float f; memcpy(&f, &u, 4); return f; }

int main(int argc, char** argv) {
    const long long rows = 8192, cols = 28672, count = rows * cols, blocks = count / 16;
    const int repeats = 20;
    std::vector<std::vector<uint16_t>> inputs;
    std::mt19937_64 random(7);
    {   // Normal weights, as a trained layer's.
        std::normal_distribution<float> normal(0.0f, 0.02f);
        std::vector<uint16_t> m(count);
        for (auto& x : m) { float f = normal(random); uint32_t u; memcpy(&u, &f, 4); x = (uint16_t)((u + 0x7fff + ((u >> 16) & 1)) >> 16); }
        inputs.push_back(m);
    }
    {   // Every finite BF16 bit pattern is equally likely: subnormals, huge and tiny blocks, signed zeros.
        std::vector<uint16_t> m(count);
        for (auto& x : m) { uint16_t b; do { b = (uint16_t)random(); } while ((b & 0x7f80) == 0x7f80); x = b; }
        inputs.push_back(m);
    }
    uint16_t* weight; u64* packed0; unsigned char* scales0; u64* packed; unsigned char* scales; int* table;
    CHECK(cudaMalloc(&weight, count * 2));
    CHECK(cudaMalloc(&packed0, count / 2)); CHECK(cudaMalloc(&scales0, blocks));
    CHECK(cudaMalloc(&packed, count / 2)); CHECK(cudaMalloc(&scales, blocks));
    CHECK(cudaMalloc(&table, 256 * 8 * 4));
    void* copy_target; CHECK(cudaMalloc(&copy_target, count * 2));
    cudaEvent_t start, stop; CHECK(cudaEventCreate(&start)); CHECK(cudaEventCreate(&stop));
    const char* names[] = {"v0 production", "v1 <=64 registers", "v2 integer thresholds", "v3 grid-stride prefetch",
                           "v4 two threads per block", "v5 threshold table"};
    for (int k = 0; k < 6; ++k) {
        cudaFuncAttributes attributes;
        const void* kernels[] = {(const void*)nvfp4_quantize, (const void*)v1_bounded, (const void*)v2_int, (const void*)v3_prefetch,
                                 (const void*)v4_pairs, (const void*)v5_table};
        CHECK(cudaFuncGetAttributes(&attributes, kernels[k]));
        printf("%-26s %3d registers, %zu B local\n", names[k], attributes.numRegs, attributes.localSizeBytes);
    }
    int sms; CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    const double bytes = count * 2.0 + count / 2.0 + blocks;
    for (size_t which = 0; which < inputs.size(); ++which) {
        CHECK(cudaMemcpy(weight, inputs[which].data(), count * 2, cudaMemcpyHostToDevice));
        float amax = 0; for (uint16_t b : inputs[which]) amax = std::max(amax, std::fabs(bf16f(b)));
        float s2 = amax / (6.0f * 448.0f);
        printf("\ninput %zu (%s): amax %g, S2 %g\n", which, which == 0 ? "normal" : "every finite pattern", amax, s2);
        auto time = [&](auto launch) {
            std::vector<float> ms;
            for (int r = 0; r < repeats + 3; ++r) {
                CHECK(cudaEventRecord(start)); launch(); CHECK(cudaEventRecord(stop)); CHECK(cudaEventSynchronize(stop));
                float t; CHECK(cudaEventElapsedTime(&t, start, stop)); if (r >= 3) ms.push_back(t);
            }
            CHECK(cudaGetLastError());
            std::sort(ms.begin(), ms.end()); return ms[ms.size() / 2];
        };
        float copy = time([&] { CHECK(cudaMemcpyAsync(copy_target, weight, count * 2, cudaMemcpyDeviceToDevice)); });
        double copy_rate = 2.0 * count * 2 / (copy * 1e-3) / 1e9;
        printf("%-26s %8.4f ms %8.0f GB/s (read + write)\n", "device copy 470 MB", copy, copy_rate);
        int grid = (int)((blocks + 255) / 256);
        float base = time([&] { nvfp4_quantize<<<grid, 256>>>(weight, packed0, scales0, s2, blocks); });
        std::vector<unsigned char> ref_packed(count / 2), ref_scales(blocks), got_packed(count / 2), got_scales(blocks);
        CHECK(cudaMemcpy(ref_packed.data(), packed0, count / 2, cudaMemcpyDeviceToHost));
        CHECK(cudaMemcpy(ref_scales.data(), scales0, blocks, cudaMemcpyDeviceToHost));
        auto report = [&](const char* name, float ms) {
            CHECK(cudaMemcpy(got_packed.data(), packed, count / 2, cudaMemcpyDeviceToHost));
            CHECK(cudaMemcpy(got_scales.data(), scales, blocks, cudaMemcpyDeviceToHost));
            long long diff_p = 0, diff_s = 0;
            for (long long i = 0; i < count / 2; ++i) diff_p += ref_packed[i] != got_packed[i];
            for (long long i = 0; i < blocks; ++i) diff_s += ref_scales[i] != got_scales[i];
            double rate = bytes / (ms * 1e-3) / 1e9;
            printf("%-26s %8.4f ms %8.0f GB/s %5.1f%% of copy  packed bytes differing %lld, scales differing %lld\n",
                   name, ms, rate, 100 * rate / copy_rate, diff_p, diff_s);
        };
        CHECK(cudaMemset(packed, 0, count / 2)); CHECK(cudaMemset(scales, 0, blocks));
        report(names[0], time([&] { nvfp4_quantize<<<grid, 256>>>(weight, (u64*)packed, scales, s2, blocks); }));
        CHECK(cudaMemset(packed, 0, count / 2)); CHECK(cudaMemset(scales, 0, blocks));
        report(names[1], time([&] { v1_bounded<<<grid, 256>>>(weight, packed, scales, s2, blocks); }));
        CHECK(cudaMemset(packed, 0, count / 2)); CHECK(cudaMemset(scales, 0, blocks));
        report(names[2], time([&] { v2_int<<<grid, 256>>>(weight, packed, scales, s2, blocks); }));
        for (int waves : {4, 8, 16}) {
            CHECK(cudaMemset(packed, 0, count / 2)); CHECK(cudaMemset(scales, 0, blocks));
            char name[64]; snprintf(name, sizeof name, "%s x%d", names[3], waves);
            report(name, time([&] { v3_prefetch<<<sms * waves, 256>>>(weight, packed, scales, s2, blocks); }));
        }
        CHECK(cudaMemset(packed, 0, count / 2)); CHECK(cudaMemset(scales, 0, blocks));
        report(names[4], time([&] { v4_pairs<<<(int)((2 * blocks + 255) / 256), 256>>>(weight, (u32*)packed, scales, s2, blocks); }));
        CHECK(cudaMemset(packed, 0, count / 2)); CHECK(cudaMemset(scales, 0, blocks));
        report(names[5], time([&] { v5_setup<<<1, 256>>>(s2, table); v5_table<<<grid, 256>>>(weight, packed, scales, s2, blocks, table); }));
        (void)base;
    }
    return 0;
}
