// elementwise.cu: the one-pass ops of the training step (CPU twins in CPUOps and Llama+Training.swift):
// embedding gather, SwiGLU forward/backward, dtype casts, bias, strided column copies, and the random fills
// the benchmark builds its model with. One thread per element, grid-stride where sizes can exceed a launch.
#include "common.cuh"

#define FOR_EACH(i, n) for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
                            i += (long long)gridDim.x * blockDim.x)

// out (N, C) = table[ids[r]] (V, C).
extern "C" __global__ void embedding_forward(T* out, const int* ids, const T* table, long long rows, int width) {
    FOR_EACH(k, rows * width) { long long r = k / width; out[k] = table[(long long)ids[r] * width + k % width]; }
}

// dst[r·ldd + c] = src[r·lds + c] for r < rows, c < cols: a block of columns between strided rows (the adapters' z
// kept from the forward pass for the recompute; no CPU twin needed: check-cuda compares it with the plain copy).
extern "C" __global__ void copy_columns(T* dst, long long ldd, const T* src, long long lds, long long rows, int cols) {
    FOR_EACH(k, rows * cols) { long long r = k / cols; int c = (int)(k % cols); dst[r * ldd + c] = src[r * lds + c]; }
}

// Eight elements a thread (16-byte accesses in bf16 where every pointer is aligned; element by element at a tail).
#define FOR_EACH8(i0, n) for (long long i0 = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * 8; i0 < (n); \
                              i0 += (long long)gridDim.x * blockDim.x * 8)

// act = silu(gate) ⊙ up.
extern "C" __global__ void swiglu_forward(T* act, const T* gate, const T* up, long long n) {
    bool vector = aligned16(act) && aligned16(gate) && aligned16(up);
    FOR_EACH8(i0, n) {
        int limit = (int)min(8ll, n - i0);
        float g[8], u[8];
        load8(g, gate + i0, limit, vector); load8(u, up + i0, limit, vector);
        for (int e = 0; e < 8; e++) g[e] = g[e] / (1.0f + expf(-g[e])) * u[e];
        store8(act + i0, g, limit, vector);
    }
}

// dgate = da ⊙ up ⊙ σ(g)(1 + g(1 − σ(g))), dup = da ⊙ silu(g). Each group's inputs are read before its
// outputs are written, so dgate may be gate's memory and dup up's (the step writes them in place).
extern "C" __global__ void swiglu_backward(T* dgate, T* dup, const T* da, const T* gate, const T* up, long long n) {
    bool vector = aligned16(dgate) && aligned16(dup) && aligned16(da) && aligned16(gate) && aligned16(up);
    FOR_EACH8(i0, n) {
        int limit = (int)min(8ll, n - i0);
        float g[8], u[8], a[8], dg[8], du[8];
        load8(g, gate + i0, limit, vector); load8(u, up + i0, limit, vector); load8(a, da + i0, limit, vector);
        for (int e = 0; e < 8; e++) {
            float sig = 1.0f / (1.0f + expf(-g[e]));
            du[e] = a[e] * g[e] * sig;
            dg[e] = a[e] * u[e] * sig * (1.0f + g[e] * (1.0f - sig));
        }
        store8(dup + i0, du, limit, vector); store8(dgate + i0, dg, limit, vector);
    }
}

extern "C" __global__ void cast_from_f32(T* out, const float* in, long long n) { FOR_EACH(i, n) out[i] = st(in[i]); }
extern "C" __global__ void cast_to_f32(float* out, const T* in, long long n) { FOR_EACH(i, n) out[i] = ld(in[i]); }

// y (rows, cols) += bias (cols).
extern "C" __global__ void bias_add(T* y, const float* bias, long long rows, int cols) {
    FOR_EACH(k, rows * cols) y[k] = st(ld(y[k]) + bias[k % cols]);
}

// Random fills from a counter-based hash (the benchmark's random-weight model).
extern "C" __global__ void random_bytes(unsigned char* out, long long n, unsigned long long seed) {
    FOR_EACH(i, n) out[i] = (unsigned char)(hash_uniform(seed, i) * 256.0f);
}
extern "C" __global__ void random_uniform(T* out, long long n, unsigned long long seed, float lo, float hi) {
    FOR_EACH(i, n) out[i] = st(lo + (hi - lo) * hash_uniform(seed, i));
}
extern "C" __global__ void random_uniform_f32(float* out, long long n, unsigned long long seed, float lo, float hi) {
    FOR_EACH(i, n) out[i] = lo + (hi - lo) * hash_uniform(seed, i);
}
