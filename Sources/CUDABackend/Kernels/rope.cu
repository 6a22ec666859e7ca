// rope.cu: rotary position embedding in Hugging Face's half-rotation layout (CPU twin: CPUOps.rope).
// x is (B, T, heads, D) in T, rotated in place; cos/sin are float32 tables (positions, D). `inverse` applies the
// transpose (the backward pass). One thread per (row, head, i < D/2) pair; position = t + offset.
#include "common.cuh"

extern "C" __global__ void rope(T* x, const float* cosT, const float* sinT, int batch, int tokens, int heads,
                                int headDim, int inverse, int offset) {
    int half = headDim / 2;
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long total = (long long)batch * tokens * heads * half;
    if (idx >= total) return;
    int i = (int)(idx % half);
    long long rh = idx / half;              // (b·T + t)·heads + h
    int t = (int)((rh / heads) % tokens) + offset;
    long long base = rh * headDim;
    float c = cosT[(long long)t * headDim + i], s = sinT[(long long)t * headDim + i];
    if (inverse) s = -s;
    float x1 = ld(x[base + i]), x2 = ld(x[base + i + half]);
    x[base + i] = st(x1 * c - x2 * s);
    x[base + i + half] = st(x2 * c + x1 * s);
}
