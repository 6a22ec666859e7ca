// norm.cu: RMSNorm forward and backward (CPU twin: CPUOps.rmsNormForward / rmsNormBackward).
// x, y, dx, dy are (rows, width) in T; the weight w (width) and rstd (rows) are float32. One thread block per row;
// the sums are float32 block reductions.
#include "common.cuh"

// y = w ⊙ (x · rstd), rstd = 1/√(mean(x²) + eps).
extern "C" __global__ void rmsnorm_forward(T* y, float* rstd, const T* x, const float* w, int rows, int width,
                                           float eps) {
    long long base = (long long)blockIdx.x * width;
    float s = 0.0f;
    for (int i = threadIdx.x; i < width; i += blockDim.x) { float v = ld(x[base + i]); s += v * v; }
    s = block_sum(s);
    float r = 1.0f / sqrtf(s / (float)width + eps);
    if (threadIdx.x == 0) rstd[blockIdx.x] = r;
    for (int i = threadIdx.x; i < width; i += blockDim.x) y[base + i] = st(w[i] * (ld(x[base + i]) * r));
}

// dx (+)= rstd · (w ⊙ dy − x · rstd² · mean(w ⊙ dy ⊙ x)); the weight is frozen.
extern "C" __global__ void rmsnorm_backward(T* dx, const T* dy, const T* x, const float* w, const float* rstd,
                                            int rows, int width, int accumulate) {
    long long base = (long long)blockIdx.x * width;
    float r = rstd[blockIdx.x];
    float dot = 0.0f;
    for (int i = threadIdx.x; i < width; i += blockDim.x) dot += w[i] * ld(dy[base + i]) * ld(x[base + i]);
    dot = block_sum(dot);
    float c = dot * r * r / (float)width;
    for (int i = threadIdx.x; i < width; i += blockDim.x) {
        float v = r * (w[i] * ld(dy[base + i]) - ld(x[base + i]) * c);
        dx[base + i] = st(accumulate ? ld(dx[base + i]) + v : v);
    }
}
