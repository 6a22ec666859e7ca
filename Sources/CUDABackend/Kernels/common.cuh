// common.cuh: what every qlora kernel shares. Each .cu file is compiled twice by NVRTC, once with
// QLORA_BF16=1 (activations stored as bf16) and once without (float32); `T` is the storage type of activations,
// `ld` widens it to float and `st` rounds a float to it (round to nearest even, as torch does). Arithmetic is
// always in float32. No CUDA headers are included, so the kernels compile wherever libnvrtc is, headers or not.
#pragma once
#define INFINITY __int_as_float(0x7f800000)

#if QLORA_BF16
typedef unsigned short T;
__device__ __forceinline__ float ld(T v) { return __uint_as_float(((unsigned int)v) << 16); }
__device__ __forceinline__ T st(float f) {
    unsigned int u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (T)((u >> 16) | 0x40u);   // NaN stays NaN
    u += 0x7fffu + ((u >> 16) & 1u);
    return (T)(u >> 16);
}
#else
typedef float T;
__device__ __forceinline__ float ld(T v) { return v; }
__device__ __forceinline__ T st(float f) { return f; }
#endif

// Sum or maximum over a warp, then over a block of up to 1024 threads (blockDim.x a multiple of 32); every thread
// gets the result. `identity` fills the lanes of warps that do not exist.
struct SumOp { __device__ float operator()(float a, float b) const { return a + b; } };
struct MaxOp { __device__ float operator()(float a, float b) const { return fmaxf(a, b); } };

template <class Op> __device__ __forceinline__ float warp_reduce(float v, Op op) {
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
template <class Op> __device__ float block_reduce(float v, Op op, float identity) {
    __shared__ float partial[32];
    __shared__ float total;
    v = warp_reduce(v, op);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();   // an earlier call may still be reading `total`
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    if (warp == 0) {
        float s = warp_reduce(lane < (int)(blockDim.x >> 5) ? partial[lane] : identity, op);
        if (lane == 0) total = s;
    }
    __syncthreads();
    return total;
}
__device__ __forceinline__ float block_sum(float v) { return block_reduce(v, SumOp(), 0.0f); }
__device__ __forceinline__ float block_max(float v) { return block_reduce(v, MaxOp(), -INFINITY); }

// The GPU's approximate reciprocal, as bitsandbytes gets it from --use_fast_math.
__device__ __forceinline__ float rcp_approx(float x) {
    float r;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}

// A counter-based uniform in [0, 1) from (seed, index): splitmix64, top 24 bits. Dropout masks are a pure function
// of the seed and the element, so a recomputed layer (gradient checkpointing) draws the same mask.
__device__ __forceinline__ float hash_uniform(unsigned long long seed, unsigned long long i) {
    unsigned long long z = seed + (i + 1ull) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)(z >> 40) * (1.0f / 16777216.0f);
}
