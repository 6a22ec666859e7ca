// elementwise.cu: the one-pass ops of the training step (CPU twins in CPUOps and Llama+Training.swift):
// embedding gather, residual add, SwiGLU forward/backward, LoRA dropout, dtype casts, bias, and the random fills
// the benchmark builds its model with. One thread per element, grid-stride where sizes can exceed a launch.
#include "common.cuh"

#define FOR_EACH(i, n) for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
                            i += (long long)gridDim.x * blockDim.x)

// out (N, C) = table[ids[r]] (V, C).
extern "C" __global__ void embedding_forward(T* out, const int* ids, const T* table, long long rows, int width) {
    FOR_EACH(k, rows * width) { long long r = k / width; out[k] = table[(long long)ids[r] * width + k % width]; }
}

// out = a + b (out may be a or b).
extern "C" __global__ void add(T* out, const T* a, const T* b, long long n) {
    FOR_EACH(i, n) out[i] = st(ld(a[i]) + ld(b[i]));
}

// act = silu(gate) ⊙ up.
extern "C" __global__ void swiglu_forward(T* act, const T* gate, const T* up, long long n) {
    FOR_EACH(i, n) { float g = ld(gate[i]); act[i] = st(g / (1.0f + expf(-g)) * ld(up[i])); }
}

// dgate = da ⊙ up ⊙ σ(g)(1 + g(1 − σ(g))), dup = da ⊙ silu(g). Each element's inputs are read before
// its outputs are written, so dgate may be gate's memory and dup up's (the step writes them in place).
extern "C" __global__ void swiglu_backward(T* dgate, T* dup, const T* da, const T* gate, const T* up, long long n) {
    FOR_EACH(i, n) {
        float g = ld(gate[i]), u = ld(up[i]), a = ld(da[i]);
        float sig = 1.0f / (1.0f + expf(-g));
        dup[i] = st(a * g * sig);
        dgate[i] = st(a * u * sig * (1.0f + g * (1.0f - sig)));
    }
}

// out = x ⊙ mask / keep, mask[i] = (uniform(seed, first + i) < keep): `first` is the element index of x[0] in the
// whole tensor, so a tensor processed a block of rows at a time draws the mask it would draw whole.
extern "C" __global__ void dropout_forward(T* out, const T* x, long long n, float keep, unsigned long long seed,
                                           long long first) {
    float scale = 1.0f / keep;
    FOR_EACH(i, n) out[i] = st(hash_uniform(seed, first + i) < keep ? ld(x[i]) * scale : 0.0f);
}

// dx += dinput ⊙ mask / keep (the same mask as dropout_forward with this seed).
extern "C" __global__ void dropout_backward_add(T* dx, const T* dinput, long long n, float keep,
                                                unsigned long long seed, long long first) {
    float scale = 1.0f / keep;
    FOR_EACH(i, n) if (hash_uniform(seed, first + i) < keep) dx[i] = st(ld(dx[i]) + ld(dinput[i]) * scale);
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
