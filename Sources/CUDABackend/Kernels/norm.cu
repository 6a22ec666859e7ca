// norm.cu: RMSNorm forward and backward (CPU twin: CPUOps.rmsNormForward / rmsNormBackward).
// x, y, dx, dy are (rows, width) in T; the weight w (width) and rstd (rows) are float32. One thread block per row;
// the sums are float32 block reductions.
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
