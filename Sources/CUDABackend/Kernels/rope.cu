// rope.cu: rotary position embedding in Hugging Face's half-rotation layout (CPU twin: CPUOps.rope).
// x is (B, T, heads, D) in T, rotated in place; cos/sin are float32 tables (positions, D). `inverse` applies the
// transpose (the backward pass). One thread per (row, head) and 8 consecutive i < D/2 (16-byte accesses in bf16
// when D/2 is a multiple of 8; element by element otherwise). The position of token (b, t) is positions[b·T + t]
// when `positions` (int32) is given (packed documents restart at 0; a decode step's tokens sit at their sequence's
// length), else t.
#include "common.cuh"

// v[0..8) = p[0..8) through two 16-byte loads (p 16-byte aligned).
__device__ __forceinline__ void rope_load8(float* v, const float* p) {
    float4 a = *(const float4*)p, b = *(const float4*)(p + 4);
    v[0] = a.x; v[1] = a.y; v[2] = a.z; v[3] = a.w; v[4] = b.x; v[5] = b.y; v[6] = b.z; v[7] = b.w;
}

extern "C" __global__ void rope(T* x, const float* cosT, const float* sinT, int batch, int tokens, int heads,
                                int headDim, int inverse, const int* positions) {
    int half = headDim / 2, groups = (half + 7) / 8;
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long total = (long long)batch * tokens * heads * groups;
    if (idx >= total) return;
    int i0 = (int)(idx % groups) * 8, limit = half - i0;
    long long rh = idx / groups;              // (b·T + t)·heads + h
    long long bt = rh / heads;
    int t = positions ? positions[bt] : (int)(bt % tokens);
    T* p = x + rh * headDim;
    bool vector = (half & 7) == 0 && aligned16(x);
    float x1[8], x2[8], c[8], s[8];
    load8(x1, p + i0, limit, vector);
    load8(x2, p + i0 + half, limit, vector);
    const float* cp = cosT + (long long)t * headDim + i0;
    const float* sp = sinT + (long long)t * headDim + i0;
    if (vector && (headDim & 7) == 0 && aligned16(cosT) && aligned16(sinT)) {   // two 16-byte loads each
        rope_load8(c, cp); rope_load8(s, sp);
    } else {
        for (int e = 0; e < 8; e++) { c[e] = e < limit ? cp[e] : 0.0f; s[e] = e < limit ? sp[e] : 0.0f; }
    }
    if (inverse) for (int e = 0; e < 8; e++) s[e] = -s[e];
    float y1[8], y2[8];
    for (int e = 0; e < 8; e++) { y1[e] = x1[e] * c[e] - x2[e] * s[e]; y2[e] = x2[e] * c[e] + x1[e] * s[e]; }
    store8(p + i0, y1, limit, vector);
    store8(p + i0 + half, y2, limit, vector);
}
