// optimizer.cu: the AdamW variants and the gradient norm over float32 parameters (CPU twin: Training/Optimizers.swift).
// Every product and sum is written with __fmul_rn / __fadd_rn / __fmaf_rn exactly where the CPU twin has it, so
// the GPU and the CPU compute the same bits. Gradients are multiplied by gscale (clipping) first, as on the CPU.
// Each AdamW kernel also writes the updated parameter into `copy` (T, rounded) when given: the compute-type copy
// the products read, made in the same pass instead of by a cast afterwards.
#include "common.cuh"

// partials[blockIdx] = Σ g² over this block's grid-stride share. No atomics: with sum_partials the result is the
// same on every run (gradient clipping must not make a resumed run differ).
extern "C" __global__ void sum_squares(float* partials, const float* g, long long n) {
    float s = 0.0f;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        s += g[i] * g[i];
    s = block_sum(s);
    if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

// *out = Σ partials in float64, in a fixed order (one block of 256 threads).
extern "C" __global__ void sum_partials(double* out, const float* partials, int count) {
    __shared__ double part[256];
    double s = 0.0;
    for (int i = threadIdx.x; i < count; i += blockDim.x) s += (double)partials[i];
    part[threadIdx.x] = s;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) *out = part[0];
}

// torch.optim.AdamW. stepSize = lr / (1 − β1ᵗ), bc2Sqrt = √(1 − β2ᵗ), both computed on the host in float64 as torch does.
extern "C" __global__ void adamw_torch(float* p, const float* g0, float* m, float* v, long long n, float lr,
                                       float beta1, float beta2, float eps, float wd, float stepSize, float bc2Sqrt,
                                       float gscale, T* copy) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = __fmul_rn(g0[i], gscale);
    float pi = p[i];
    if (wd != 0.0f) pi = __fmul_rn(pi, __fadd_rn(1.0f, -__fmul_rn(lr, wd)));
    float mi = __fadd_rn(m[i], __fmul_rn(__fadd_rn(g, -m[i]), __fadd_rn(1.0f, -beta1)));
    float vi = __fadd_rn(__fmul_rn(v[i], beta2), __fmul_rn(__fmul_rn(g, g), __fadd_rn(1.0f, -beta2)));
    float denom = __fadd_rn(__fdiv_rn(sqrtf(vi), bc2Sqrt), eps);
    p[i] = __fadd_rn(pi, -__fdiv_rn(__fmul_rn(stepSize, mi), denom));
    m[i] = mi;
    v[i] = vi;
    if (copy) copy[i] = st(p[i]);
}

// bitsandbytes' 32-bit Adam: p += stepSize · m / (√v + ε·correction2); then p *= 1 − lr·wd.
// stepSize = −lr · correction2 / (1 − β1ᵗ), correction2 = √(1 − β2ᵗ) (float32, host).
extern "C" __global__ void adamw_bnb32(float* p, const float* g0, float* m, float* v, long long n, float lr,
                                       float beta1, float beta2, float eps, float wd, float stepSize,
                                       float correction2, float gscale, T* copy) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float g = __fmul_rn(g0[i], gscale);
    float mi = __fadd_rn(__fmul_rn(m[i], beta1), __fmul_rn(__fadd_rn(1.0f, -beta1), g));
    float vi = __fadd_rn(__fmul_rn(v[i], beta2), __fmul_rn(__fadd_rn(1.0f, -beta2), __fmul_rn(g, g)));
    float pi = __fadd_rn(p[i], __fmul_rn(stepSize, __fdiv_rn(mi, __fadd_rn(sqrtf(vi), __fmul_rn(eps, correction2)))));
    if (wd > 0.0f) pi = __fmul_rn(pi, __fadd_rn(1.0f, -__fmul_rn(lr, wd)));
    p[i] = pi; m[i] = mi; v[i] = vi;
    if (copy) copy[i] = st(pi);
}

// bitsandbytes' optimizer code search (quantize_2D): seven halvings from index 127, then the nearer neighbour.
__device__ unsigned char quantize_2d(float x, const float* map, int isSigned) {
    int pivot = 127, upperPivot = 255, lowerPivot = 0;
    float lower = isSigned ? -1.0f : 0.0f, upper = 1.0f;
    float value = map[pivot];
    for (int step = 64; step > 0; step >>= 1) {
        if (x > value) { lowerPivot = pivot; lower = value; pivot += step; }
        else { upperPivot = pivot; upper = value; pivot -= step; }
        value = map[pivot];
    }
    if (x > value) return (unsigned char)(x > __fmul_rn(__fadd_rn(upper, value), 0.5f) ? upperPivot : pivot);
    return (unsigned char)(x < __fmul_rn(__fadd_rn(lower, value), 0.5f) ? lowerPivot : pivot);
}

// One tensor of a blockwise 8-bit update: parameter, gradient, the moments' codes and absmax, the compute copy (or
// null), the element count and the first block of the launch that is this tensor's (CUDAAdamW.tensorTable).
struct AdamTensor {
    float* p; const float* g; unsigned char* cm; unsigned char* cv; float* am; float* av; T* copy;
    long long n, firstBlock;
};

// bitsandbytes' blockwise 8-bit Adam (kOptimizerStatic8bit2StateBlockwise) over many tensors in one launch: one
// thread block of 256 per block of 256 values of one tensor; the launch's blocks run through the tensors of
// `tensors` in order (block b belongs to the last tensor whose firstBlock ≤ b, found by thread 0's binary
// search). Moments are dequantized (code × absmax), updated with fused multiply-adds, the parameter is updated, and
// the moments are requantized against the block's new absmax; a first-moment code whose sign differs from the
// value's moves one step toward it. stepSize = (−lr·correction2) · rcp(1 − β1ᵗ), computed on the host (one
// step for all the tensors of a launch).
extern "C" __global__ void adamw_bnb8_blockwise(const AdamTensor* tensors, int count, float lr, float beta1,
                                                float beta2, float eps, float wd, float stepSize, float correction2,
                                                float gscale, const float* signedMap, const float* unsignedMap) {
    __shared__ float smap[256], umap[256];
    __shared__ int which;
    smap[threadIdx.x] = signedMap[threadIdx.x];
    umap[threadIdx.x] = unsignedMap[threadIdx.x];
    if (threadIdx.x == 0) {
        int lo = 0, hi = count - 1;
        while (lo < hi) {
            int mid = (lo + hi + 1) / 2;
            if (tensors[mid].firstBlock <= (long long)blockIdx.x) lo = mid; else hi = mid - 1;
        }
        which = lo;
    }
    __syncthreads();
    const AdamTensor t = tensors[which];
    const long long block = (long long)blockIdx.x - t.firstBlock;
    long long i = block * 256 + threadIdx.x;
    bool inside = i < t.n;
    float g = inside ? __fmul_rn(t.g[i], gscale) : 0.0f;
    bool finite = inside && isfinite(g);
    float oldM = t.am[block], oldV = t.av[block];
    float mi = 0.0f, vi = 0.0f;
    if (finite) {
        float v0 = __fmul_rn(umap[t.cv[i]], oldV);
        vi = __fmaf_rn(v0, beta2, __fmul_rn(__fmul_rn(__fadd_rn(1.0f, -beta2), g), g));
        float m0 = __fmul_rn(smap[t.cm[i]], oldM);
        mi = __fmaf_rn(m0, beta1, __fmul_rn(__fadd_rn(1.0f, -beta1), g));
    }
    float maxM = block_max(fabsf(mi));
    float maxV = block_max(fabsf(vi));
    if (threadIdx.x == 0) { t.am[block] = maxM; t.av[block] = maxV; }
    if (!inside) return;
    float rm = rcp_approx(maxM), rv = rcp_approx(maxV);
    if (finite) {
        float denom = __fadd_rn(sqrtf(vi), __fmul_rn(correction2, eps));
        float pi = __fadd_rn(t.p[i], __fmul_rn(stepSize, __fmul_rn(mi, rcp_approx(denom))));
        if (wd > 0.0f) pi = __fmul_rn(pi, __fadd_rn(1.0f, -__fmul_rn(lr, wd)));
        t.p[i] = pi;
    }
    if (t.copy) t.copy[i] = st(t.p[i]);
    int c1 = quantize_2d(__fmul_rn(mi, rm), smap, 1);
    if ((smap[c1] < 0.0f || (smap[c1] == 0.0f && signbit(smap[c1]))) != signbit(mi)) c1 += mi > 0.0f ? 1 : -1;
    t.cm[i] = (unsigned char)min(max(c1, 0), 255);
    t.cv[i] = quantize_2d(__fmul_rn(vi, rv), umap, 0);
}
