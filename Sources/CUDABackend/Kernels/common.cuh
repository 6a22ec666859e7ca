// common.cuh: what every qlora kernel shares. Each .cu file is compiled twice by NVRTC, once with
// QLORA_BF16=1 (activations stored as bf16) and once without (float32); `T` is the storage type of activations,
// `ld` widens it to float and `st` rounds a float to it (round to nearest even, as torch does). Arithmetic is
// always in float32. No CUDA headers are included, so the kernels compile wherever libnvrtc is, headers or not.
#pragma once
#define INFINITY __int_as_float(0x7f800000)

#if QLORA_BF16
typedef unsigned short T;
__device__ __forceinline__ float ld(T v) { return __uint_as_float(((unsigned int)v) << 16); }
// One instruction (cvt.rn: round to nearest even, subnormals kept, overflow to infinity; NaN stays NaN).
__device__ __forceinline__ T st(float f) {
    unsigned short b;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(b) : "f"(f));
    return b;
}
// Two floats rounded as `st` rounds them, packed: lo in the low half, hi in the high half (one instruction).
__device__ __forceinline__ unsigned st2(float lo, float hi) {
    unsigned w;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(w) : "f"(hi), "f"(lo));
    return w;
}
#else
typedef float T;
__device__ __forceinline__ float ld(T v) { return v; }
__device__ __forceinline__ T st(float f) { return f; }
#endif

// Eight consecutive values as floats, and back: one 16-byte access for bf16 (two for float32) when `vector` (the
// address 16-byte aligned and all 8 in range), else element by element for the first `limit` (zeros past it).
__device__ __forceinline__ void load8(float* v, const T* p, int limit, bool vector) {
#if QLORA_BF16
    if (vector && limit >= 8) {
        uint4 u = *(const uint4*)p;
        unsigned w[4] = {u.x, u.y, u.z, u.w};
        for (int e = 0; e < 4; e++) {
            v[2 * e] = __uint_as_float(w[e] << 16);
            v[2 * e + 1] = __uint_as_float(w[e] & 0xffff0000u);
        }
        return;
    }
#else
    if (vector && limit >= 8) {
        float4 a = *(const float4*)p, b = *(const float4*)(p + 4);
        v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
        return;
    }
#endif
    for (int e = 0; e < 8; e++) v[e] = e < limit ? ld(p[e]) : 0.0f;
}
__device__ __forceinline__ void store8(T* p, const float* v, int limit, bool vector) {
#if QLORA_BF16
    if (vector && limit >= 8) {
        unsigned w[4];
        for (int e = 0; e < 4; e++) w[e] = st2(v[2 * e], v[2 * e + 1]);
        *(uint4*)p = make_uint4(w[0], w[1], w[2], w[3]);
        return;
    }
#else
    if (vector && limit >= 8) {
        *(float4*)p = make_float4(v[0], v[1], v[2], v[3]);
        *(float4*)(p + 4) = make_float4(v[4], v[5], v[6], v[7]);
        return;
    }
#endif
    for (int e = 0; e < 8 && e < limit; e++) p[e] = st(v[e]);
}
// Four consecutive values (one 8-byte access for bf16, 16 bytes for float32, when `vector`: aligned to that and all
// four in range), else element by element for the first `limit`.
__device__ __forceinline__ void load4(float* v, const T* p, int limit, bool vector) {
    if (vector && limit >= 4) {
#if QLORA_BF16
        uint2 u = *(const uint2*)p;
        v[0] = __uint_as_float(u.x << 16); v[1] = __uint_as_float(u.x & 0xffff0000u);
        v[2] = __uint_as_float(u.y << 16); v[3] = __uint_as_float(u.y & 0xffff0000u);
#else
        float4 a = *(const float4*)p;
        v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w;
#endif
        return;
    }
    for (int e = 0; e < 4; e++) v[e] = e < limit ? ld(p[e]) : 0.0f;
}
__device__ __forceinline__ void store4(T* p, const float* v, int limit, bool vector) {
    if (vector && limit >= 4) {
#if QLORA_BF16
        *(uint2*)p = make_uint2(st2(v[0], v[1]), st2(v[2], v[3]));
#else
        *(float4*)p = make_float4(v[0], v[1], v[2], v[3]);
#endif
        return;
    }
    for (int e = 0; e < 4 && e < limit; e++) p[e] = st(v[e]);
}
__device__ __forceinline__ bool aligned16(const void* p) { return ((unsigned long long)p & 15ull) == 0; }

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

#if QLORA_BF16
// Tensor-core and shared-memory helpers of the bf16 kernels (flash_attention.cu, lora.cu).
// c (16×8, float32) += a (16×16, bf16, row-major) · b (16×8, bf16, column-major): mma.sync m16n8k16.
__device__ __forceinline__ void mma_bf16(float* c, const unsigned* a, unsigned b0, unsigned b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
__device__ __forceinline__ unsigned smem_address(const void* p) {
    unsigned a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}
// 16 bytes global → shared without passing through registers; `valid` false writes zeros (nothing is read).
__device__ __forceinline__ void cp_async16(T* dst, const T* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;"
                 :: "r"(smem_address(dst)), "l"(src), "r"(valid ? 16 : 0) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
// Waits until at most `N` of the most recently committed copy groups are still in flight.
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory");
}
// Fragment loads with ldmatrix: each lane gives the shared address of one 16-byte row of one of four 8×8 blocks
// (lanes 0–7 the first block, 8–15 the second, …); `trans` transposes each block on the way.
__device__ __forceinline__ void ldsm_x4(unsigned* r, const T* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_address(p)));
}
// The same from a shared-memory address (smem_address), so that callers can keep one base and add constants.
__device__ __forceinline__ void ldsm_x4_at(unsigned* r, unsigned address) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(address));
}
__device__ __forceinline__ void ldsm_x4_trans_at(unsigned* r, unsigned address) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(address));
}
// 16 bytes global → shared at a shared-memory address; `valid` false writes zeros (nothing is read).
__device__ __forceinline__ void cp_async16_at(unsigned address, const T* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(address), "l"(src), "r"(valid ? 16 : 0)
                 : "memory");
}
__device__ __forceinline__ void ldsm_x4_trans(unsigned* r, const T* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_address(p)));
}
#endif

// The GPU's approximate reciprocal, as bitsandbytes gets it from --use_fast_math.
__device__ __forceinline__ float rcp_approx(float x) {
    float r;
    asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}

// A counter-based uniform in [0, 1) from (seed, index): splitmix64, top 24 bits (the benchmark's random fills;
// dropout masks have their own 32-bit hash in lora.cu).
__device__ __forceinline__ float hash_uniform(unsigned long long seed, unsigned long long i) {
    unsigned long long z = seed + (i + 1ull) * 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)(z >> 40) * (1.0f / 16777216.0f);
}
