// norm.cu: RMSNorm forward and backward (CPU twin: CPUOps.rmsNormForward / rmsNormBackward).
// x, y, dx, dy are (rows, width) in T; the weight w (width) and rstd (rows) are float32.
// Thread mappings:
//   rmsnorm_forward / rmsnorm_backward (any width, both types): one thread block per row, the sums float32 block
//     reductions; each thread walks its row in groups of 8 elements.
//   rmsnorm_forward_rows / rmsnorm_backward_rows (bf16, width a multiple of 8 and at most 32 · 8 · NORM_GROUPS,
//     16-byte aligned rows): one warp per row, NORM_ROW_WARPS rows a block of NORM_ROW_WARPS warps. Lane l holds
//     the 16-byte chunks l, l + 32, l + 64, … of its row of x in registers from one read, so that x is read from
//     memory once, every chunk's load is in flight at once, and the sums are warp shuffles (no block barrier); the
//     backward reads dy twice (the second time from the caches: holding it too would halve the warps an SM runs).
//     The same arithmetic as the block kernels, summed in another order.
#include "common.cuh"

// Each thread walks its row in groups of 8 elements (16-byte accesses in bf16 when the width is a multiple of 8
// and the buffers aligned; element by element otherwise).
#define ROW_GROUPS(g0) for (int g0 = threadIdx.x * 8; g0 < width; g0 += blockDim.x * 8)

__device__ __forceinline__ void load8f(float* v, const float* p, int limit) {
    for (int e = 0; e < 8; e++) v[e] = e < limit ? p[e] : 0.0f;
}

// y = w ⊙ (x · rstd), rstd = 1/√(mean(x²) + eps); y's rows `ldy` elements apart (≥ width: the columns past
// width are set to zero, the padding of a product that joins other columns there).
extern "C" __global__ void rmsnorm_forward(T* y, float* rstd, const T* x, const float* w, int rows, int width,
                                           float eps, int ldy) {
    long long base = (long long)blockIdx.x * width, yBase = (long long)blockIdx.x * ldy;
    bool vector = (width & 7) == 0 && (ldy & 7) == 0 && aligned16(x) && aligned16(y);
    float s = 0.0f;
    ROW_GROUPS(g0) {
        float v[8];
        load8(v, x + base + g0, width - g0, vector);
        for (int e = 0; e < 8; e++) s += v[e] * v[e];
    }
    s = block_sum(s);
    float r = 1.0f / sqrtf(s / (float)width + eps);
    if (threadIdx.x == 0) rstd[blockIdx.x] = r;
    ROW_GROUPS(g0) {
        float v[8], wv[8];
        load8(v, x + base + g0, width - g0, vector);
        load8f(wv, w + g0, width - g0);
        for (int e = 0; e < 8; e++) v[e] = wv[e] * (v[e] * r);
        store8(y + yBase + g0, v, width - g0, vector);
    }
    for (int j = width + threadIdx.x; j < ldy; j += blockDim.x) y[yBase + j] = (T)0;
}

// dx (+)= rstd · (w ⊙ dy − x · rstd² · mean(w ⊙ dy ⊙ x)); the weight is frozen.
extern "C" __global__ void rmsnorm_backward(T* dx, const T* dy, const T* x, const float* w, const float* rstd,
                                            int rows, int width, int accumulate) {
    long long base = (long long)blockIdx.x * width;
    bool vector = (width & 7) == 0 && aligned16(dx) && aligned16(dy) && aligned16(x);
    float r = rstd[blockIdx.x];
    float dot = 0.0f;
    ROW_GROUPS(g0) {
        float a[8], b[8], wv[8];
        load8(a, dy + base + g0, width - g0, vector); load8(b, x + base + g0, width - g0, vector);
        load8f(wv, w + g0, width - g0);
        for (int e = 0; e < 8; e++) dot += wv[e] * a[e] * b[e];
    }
    dot = block_sum(dot);
    float c = dot * r * r / (float)width;
    ROW_GROUPS(g0) {
        float a[8], b[8], wv[8], d[8];
        load8(a, dy + base + g0, width - g0, vector); load8(b, x + base + g0, width - g0, vector);
        load8f(wv, w + g0, width - g0);
        if (accumulate) load8(d, dx + base + g0, width - g0, vector);
        for (int e = 0; e < 8; e++) {
            float v = r * (wv[e] * a[e] - b[e] * c);
            d[e] = accumulate ? d[e] + v : v;
        }
        store8(dx + base + g0, d, width - g0, vector);
    }
}

#if QLORA_BF16
#define NORM_GROUPS 16      // chunks of 8 a lane: rows up to 4,096 elements
#define NORM_ROW_WARPS 4    // rows (warps) a block

// Eight bf16 packed in a uint4, widened.
__device__ __forceinline__ void norm_unpack(float* v, uint4 u) {
    const unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int e = 0; e < 4; e++) {
        v[2 * e] = __uint_as_float(w[e] << 16);
        v[2 * e + 1] = __uint_as_float(w[e] & 0xffff0000u);
    }
}
__device__ __forceinline__ void norm_weights(float* v, const float* w) {
    const float4 a = *(const float4*)w, b = *(const float4*)(w + 4);
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
}

// rmsnorm_forward's result, a warp per row. Grid ⌈rows / NORM_ROW_WARPS⌉, NORM_ROW_WARPS · 32 threads.
extern "C" __global__ void __launch_bounds__(NORM_ROW_WARPS * 32)
rmsnorm_forward_rows(T* y, float* rstd, const T* x, const float* w, int rows, int width, float eps, int ldy) {
    const int lane = threadIdx.x & 31, row = blockIdx.x * NORM_ROW_WARPS + (threadIdx.x >> 5);
    if (row >= rows) return;
    const int chunks = width >> 3;
    const uint4* xr = (const uint4*)(x + (long long)row * width);
    uint4 xv[NORM_GROUPS];
#pragma unroll
    for (int g = 0; g < NORM_GROUPS; g++) {
        const int c = g * 32 + lane;
        xv[g] = c < chunks ? xr[c] : make_uint4(0u, 0u, 0u, 0u);
    }
    float s = 0.0f;
#pragma unroll
    for (int g = 0; g < NORM_GROUPS; g++) {
        float v[8];
        norm_unpack(v, xv[g]);
#pragma unroll
        for (int e = 0; e < 8; e++) s += v[e] * v[e];
    }
    s = warp_reduce(s, SumOp());
    const float r = 1.0f / sqrtf(s / (float)width + eps);
    if (lane == 0) rstd[row] = r;
    T* yr = y + (long long)row * ldy;
#pragma unroll
    for (int g = 0; g < NORM_GROUPS; g++) {
        const int c = g * 32 + lane;
        if (c >= chunks) break;
        float v[8], wv[8];
        norm_unpack(v, xv[g]);
        norm_weights(wv, w + c * 8);
#pragma unroll
        for (int e = 0; e < 8; e++) v[e] = wv[e] * (v[e] * r);
        store8(yr + c * 8, v, 8, true);
    }
    for (int j = width + lane; j < ldy; j += 32) yr[j] = (T)0;
}

// rmsnorm_backward's result, a warp per row. Grid ⌈rows / NORM_ROW_WARPS⌉, NORM_ROW_WARPS · 32 threads.
extern "C" __global__ void __launch_bounds__(NORM_ROW_WARPS * 32)
rmsnorm_backward_rows(T* dx, const T* dy, const T* x, const float* w, const float* rstd, int rows, int width,
                      int accumulate) {
    const int lane = threadIdx.x & 31, row = blockIdx.x * NORM_ROW_WARPS + (threadIdx.x >> 5);
    if (row >= rows) return;
    const int chunks = width >> 3;
    const long long base = (long long)row * width;
    const uint4* xr = (const uint4*)(x + base);
    const uint4* dyr = (const uint4*)(dy + base);
    uint4 xv[NORM_GROUPS];
#pragma unroll
    for (int g = 0; g < NORM_GROUPS; g++) {
        const int c = g * 32 + lane;
        xv[g] = c < chunks ? xr[c] : make_uint4(0u, 0u, 0u, 0u);
    }
    const float r = rstd[row];
    float dot = 0.0f;
#pragma unroll
    for (int g = 0; g < NORM_GROUPS; g++) {
        const int c = g * 32 + lane;
        if (c >= chunks) break;
        float a[8], b[8], wv[8];
        norm_unpack(a, dyr[c]); norm_unpack(b, xv[g]);
        norm_weights(wv, w + c * 8);
#pragma unroll
        for (int e = 0; e < 8; e++) dot += wv[e] * a[e] * b[e];
    }
    dot = warp_reduce(dot, SumOp());
    const float k = dot * r * r / (float)width;
#pragma unroll
    for (int g = 0; g < NORM_GROUPS; g++) {
        const int c = g * 32 + lane;
        if (c >= chunks) break;
        float a[8], b[8], wv[8], d[8];
        norm_unpack(a, dyr[c]); norm_unpack(b, xv[g]);   // dy's second read: from the caches
        norm_weights(wv, w + c * 8);
        if (accumulate) load8(d, dx + base + c * 8, 8, true);
#pragma unroll
        for (int e = 0; e < 8; e++) {
            const float v = r * (wv[e] * a[e] - b[e] * k);
            d[e] = accumulate ? d[e] + v : v;
        }
        store8(dx + base + c * 8, d, 8, true);
    }
}
#endif
