// attention.cu: the causal softmax of attention and its backward (CPU twin: CPUOps.attentionForward /
// attentionBackward). The products S = QKᵀ/√D, O = PV, dP = dO Vᵀ, dV = Pᵀ dO, dQ = dS K and dK = dSᵀ Q are
// batched cuBLASLt products; these kernels work on the (B·H, T, T) score matrices, one thread block per row
// (row r is query position i = r mod T, which sees keys 0...i). A row of up to PER_THREAD × blockDim.x values is
// read once into registers (one read and one write of the row, the memory traffic that bounds these kernels);
// longer rows take the three-pass loop.
#include "common.cuh"

#define PER_THREAD 16

// p ← softmax over j ≤ i of the scaled scores in p (in place); zero above the diagonal.
extern "C" __global__ void softmax_causal_forward(T* p, int tokens, long long rows) {
    long long r = blockIdx.x;
    int i = (int)(r % tokens);
    T* row = p + r * tokens;
    if (tokens <= PER_THREAD * (int)blockDim.x) {
        float v[PER_THREAD];
        float m = -INFINITY;
#pragma unroll
        for (int k = 0; k < PER_THREAD; k++) {
            int j = threadIdx.x + k * blockDim.x;
            v[k] = j <= i ? ld(row[j]) : -INFINITY;
            m = fmaxf(m, v[k]);
        }
        m = block_max(m);
        float z = 0.0f;
#pragma unroll
        for (int k = 0; k < PER_THREAD; k++) {
            int j = threadIdx.x + k * blockDim.x;
            v[k] = j <= i ? expf(v[k] - m) : 0.0f;
            z += v[k];
        }
        z = block_sum(z);
        float inv = 1.0f / z;
#pragma unroll
        for (int k = 0; k < PER_THREAD; k++) {
            int j = threadIdx.x + k * blockDim.x;
            if (j < tokens) row[j] = st(v[k] * inv);
        }
        return;
    }
    float m = -INFINITY;
    for (int j = threadIdx.x; j <= i; j += blockDim.x) m = fmaxf(m, ld(row[j]));
    m = block_max(m);
    float z = 0.0f;
    for (int j = threadIdx.x; j <= i; j += blockDim.x) z += expf(ld(row[j]) - m);
    z = block_sum(z);
    float inv = 1.0f / z;
    for (int j = threadIdx.x; j < tokens; j += blockDim.x) row[j] = st(j <= i ? expf(ld(row[j]) - m) * inv : 0.0f);
}

// ds ← P ⊙ (dP − rowsum(dP ⊙ P)) · scale, in place on ds (which holds dP); zero above the diagonal.
extern "C" __global__ void softmax_causal_backward(T* ds, const T* p, int tokens, long long rows, float scale) {
    long long r = blockIdx.x;
    int i = (int)(r % tokens);
    T* d = ds + r * tokens;
    const T* pr = p + r * tokens;
    if (tokens <= PER_THREAD * (int)blockDim.x) {
        float dv[PER_THREAD], pv[PER_THREAD];
        float dot = 0.0f;
#pragma unroll
        for (int k = 0; k < PER_THREAD; k++) {
            int j = threadIdx.x + k * blockDim.x;
            bool in = j <= i;
            dv[k] = in ? ld(d[j]) : 0.0f;
            pv[k] = in ? ld(pr[j]) : 0.0f;
            dot += dv[k] * pv[k];
        }
        dot = block_sum(dot);
#pragma unroll
        for (int k = 0; k < PER_THREAD; k++) {
            int j = threadIdx.x + k * blockDim.x;
            if (j < tokens) d[j] = st(j <= i ? pv[k] * (dv[k] - dot) * scale : 0.0f);
        }
        return;
    }
    float dot = 0.0f;
    for (int j = threadIdx.x; j <= i; j += blockDim.x) dot += ld(d[j]) * ld(pr[j]);
    dot = block_sum(dot);
    for (int j = threadIdx.x; j < tokens; j += blockDim.x)
        d[j] = st(j <= i ? ld(pr[j]) * (ld(d[j]) - dot) * scale : 0.0f);
}
