// attention.cu: the causal softmax of attention and its backward (CPU twin: CPUOps.attentionForward /
// attentionBackward). The products S = QKᵀ/√D, O = PV, dP = dO Vᵀ, dV = Pᵀ dO, dQ = dS K and dK = dSᵀ Q are
// batched cuBLASLt products; these kernels work on the (B·H, T, T) score matrices, one thread block per row
// (row r is query position i = r mod T, which sees keys 0...i).
#include "common.cuh"

// p ← softmax over j ≤ i of the scaled scores in p (in place); zero above the diagonal.
extern "C" __global__ void softmax_causal_forward(T* p, int tokens, long long rows) {
    long long r = blockIdx.x;
    int i = (int)(r % tokens);
    T* row = p + r * tokens;
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
    float dot = 0.0f;
    for (int j = threadIdx.x; j <= i; j += blockDim.x) dot += ld(d[j]) * ld(pr[j]);
    dot = block_sum(dot);
    for (int j = threadIdx.x; j < tokens; j += blockDim.x)
        d[j] = st(j <= i ? ld(pr[j]) * (ld(d[j]) - dot) * scale : 0.0f);
}
