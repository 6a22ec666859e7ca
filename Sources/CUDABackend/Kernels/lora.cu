// lora.cu: the adapter's three products with its dropout applied where x is read, so that dropout(x) is never
// stored (CPU twin: LlamaModel's projectionForward / projectionBackward with LoRADropout's masks, and the plain
// products of CPUOps). With x (rows, k), A (r, k), dz (rows, r) and m = the dropout mask of each element of x:
//   lora_down:         z (rows, r)  = scale · (m ⊙ x) Aᵀ                 (forward: the adapter's down projection)
//   lora_down_grad:    partial[s] (r, k) = dzᵀ (m ⊙ x) over rows slice s   (backward: dA, in fixed-order slices)
//   lora_down_reduce:  dA (r, k) += scale · Σ_s partial[s]                (the slices summed in order: no atomics)
//   lora_dx:           dx (rows, k) += scale · m ⊙ (dz A)                 (backward: the gradient through m ⊙ x)
// scale is 1/keep (the inverted-dropout factor) and m is all ones when keep = 1 (no dropout: no hashing).
//
// The mask of element (row, col) is LoRADropout's: with key = mix(lo(seed) ^ mix(hi(seed) ^ row)), the element is
// kept when mix(key ^ col) < ⌈keep · 2^24⌉ · 2^8 (the top 24 bits, as a fraction of 2^24, below keep). mix is a
// 32-bit xorshift-multiply finalizer. The CPU computes the same integers, so both devices draw the same masks.
//
// Thread mappings (256 threads = 8 warps per block; T is bf16 or float32, arithmetic in float32):
//   lora_down: a block owns 32 rows (warp w: rows 4w…4w+3) and 16 of the r outputs (blockIdx.y); it walks k in
//     steps of 256 columns, lane l reading columns 4l…4l+3 and 128+4l…128+4l+3 of the step (8-byte loads in
//     bf16) of its 4 rows, and the step's slice of A as float32 from shared memory (16-byte reads, no bank
//     conflicts). Each lane sums its 8 columns for 4 × 16 outputs; a warp reduction (shuffles) ends it.
//   lora_down_grad: a block owns 64 columns (lane l: columns 2l, 2l+1), a slice of 512 rows (blockIdx.y; warp w
//     takes every 8th row from w) and 16 of the r outputs (blockIdx.z); dz of the slice is staged in shared memory.
//     The 8 warps' sums are added in warp order through shared memory and written to partial[slice].
//   lora_down_reduce: one thread per element of dA.
//   lora_dx: a block owns 32 rows × 256 columns (warp w: rows 4w…4w+3; lane l: columns 4l…4l+3 and
//     128+4l…128+4l+3) and walks r in slices of 16, each slice of A (16 × 256) and dz (32 × 16) staged in shared
//     memory as float32.
#include "common.cuh"

#define LORA_THREADS 256
#define DOWN_ROWS 32
#define DOWN_COLS 256
#define GRAD_ROWS 512
#define GRAD_COLS 64
#define DX_ROWS 32
#define DX_COLS 256

__device__ __forceinline__ unsigned lora_mix(unsigned x) {
    x ^= x >> 16; x *= 0x7feb352du;
    x ^= x >> 15; x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}
__device__ __forceinline__ unsigned lora_row_key(unsigned long long seed, unsigned row) {
    return lora_mix((unsigned)seed ^ lora_mix((unsigned)(seed >> 32) ^ row));
}
// The hash bound below which an element is kept (keep < 1; keep · 2^24 is exact in float32).
__device__ __forceinline__ unsigned lora_threshold(float keep) {
    return ((unsigned)ceilf(keep * 16777216.0f)) << 8;
}
__device__ __forceinline__ bool lora_kept(unsigned key, unsigned col, unsigned threshold) {
    return lora_mix(key ^ col) < threshold;
}

// Columns c0 + 4·lane … + 3 (e < 4) and c0 + 128 + 4·lane … (e ≥ 4) of a 256-column step: the lane's 8 columns.
__device__ __forceinline__ int lora_column(int c0, int lane, int e) { return c0 + (e >> 2) * 128 + 4 * lane + (e & 3); }

// z (rows, r) = scale · (m ⊙ x) Aᵀ. Grid (⌈rows / 32⌉, ⌈r / 16⌉).
extern "C" __global__ void __launch_bounds__(LORA_THREADS)
lora_down(T* z, const T* x, const T* a, int rows, int k, int r, float keep, unsigned long long seed) {
    __shared__ __align__(16) float as[16 * DOWN_COLS];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int j0 = blockIdx.y * 16, jn = min(16, r - j0);
    int row0 = blockIdx.x * DOWN_ROWS + warp * 4;
    bool vector = (k & 7) == 0, dropping = keep < 1.0f;
    unsigned threshold = dropping ? lora_threshold(keep) : 0u;
    unsigned key[4];
#pragma unroll
    for (int i = 0; i < 4; i++) key[i] = lora_row_key(seed, (unsigned)(row0 + i));
    float acc[4][16];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 16; j++) acc[i][j] = 0.0f;
    for (int c0 = 0; c0 < k; c0 += DOWN_COLS) {
        __syncthreads();   // the previous step's slice of A has been read
        for (int e = threadIdx.x; e < 16 * (DOWN_COLS / 8); e += LORA_THREADS) {
            int j = e / (DOWN_COLS / 8), c = (e % (DOWN_COLS / 8)) * 8;
            float v[8];
            load8(v, a + (long long)(j0 + (j < jn ? j : 0)) * k + c0 + c, j < jn ? k - (c0 + c) : 0, vector);
            float4* d = (float4*)(as + j * DOWN_COLS + c);
            d[0] = make_float4(v[0], v[1], v[2], v[3]);
            d[1] = make_float4(v[4], v[5], v[6], v[7]);
        }
        __syncthreads();
        float xv[4][8];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int row = row0 + i;
            const T* p = x + (long long)(row < rows ? row : 0) * k;
#pragma unroll
            for (int h = 0; h < 2; h++) {
                int col = lora_column(c0, lane, 4 * h);
                load4(xv[i] + 4 * h, p + col, row < rows ? k - col : 0, vector);
            }
            if (dropping) {
#pragma unroll
                for (int e = 0; e < 8; e++)
                    if (!lora_kept(key[i], (unsigned)lora_column(c0, lane, e), threshold)) xv[i][e] = 0.0f;
            }
        }
#pragma unroll
        for (int j = 0; j < 16; j++) {
            float4 lo = *(const float4*)(as + j * DOWN_COLS + 4 * lane);
            float4 hi = *(const float4*)(as + j * DOWN_COLS + 128 + 4 * lane);
            float av[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
#pragma unroll
            for (int i = 0; i < 4; i++) {
                float s = acc[i][j];
#pragma unroll
                for (int e = 0; e < 8; e++) s += xv[i][e] * av[e];
                acc[i][j] = s;
            }
        }
    }
    float scale = 1.0f / keep;
#pragma unroll
    for (int i = 0; i < 4; i++) {
#pragma unroll
        for (int j = 0; j < 16; j++) {
            float s = warp_reduce(acc[i][j], SumOp());
            int row = row0 + i;
            if (lane == j && j < jn && row < rows) z[(long long)row * r + j0 + j] = st(s * scale);
        }
    }
}

// partial[slice] (r, k) = Σ over the slice's rows of dzᵀ (m ⊙ x). Grid (⌈k / 64⌉, ⌈rows / 512⌉, ⌈r / 16⌉).
extern "C" __global__ void __launch_bounds__(LORA_THREADS)
lora_down_grad(float* partial, const T* dz, const T* x, int rows, int k, int r, float keep, unsigned long long seed) {
    __shared__ __align__(16) float buffer[GRAD_ROWS * 16];   // dz of the slice, then the warps' sums (8 × 16 × 64)
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int j0 = blockIdx.z * 16, jn = min(16, r - j0);
    int rowStart = blockIdx.y * GRAD_ROWS, rowCount = min(GRAD_ROWS, rows - rowStart);
    int col = blockIdx.x * GRAD_COLS + lane * 2;
    bool dropping = keep < 1.0f, pair = (k & 1) == 0 && col + 1 < k;
    unsigned threshold = dropping ? lora_threshold(keep) : 0u;
    for (int e = threadIdx.x; e < GRAD_ROWS * 16; e += LORA_THREADS) {
        int i = e / 16, j = e % 16;
        buffer[e] = (i < rowCount && j < jn) ? ld(dz[(long long)(rowStart + i) * r + j0 + j]) : 0.0f;
    }
    __syncthreads();
    float acc[2][16];
#pragma unroll
    for (int c = 0; c < 2; c++)
#pragma unroll
        for (int j = 0; j < 16; j++) acc[c][j] = 0.0f;
    for (int i = warp; i < rowCount; i += 8) {
        int row = rowStart + i;
        const T* xr = x + (long long)row * k + col;
        float x0, x1;
#if QLORA_BF16
        if (pair) {
            unsigned u = *(const unsigned*)xr;
            x0 = __uint_as_float(u << 16); x1 = __uint_as_float(u & 0xffff0000u);
        } else
#endif
        {
            x0 = col < k ? ld(xr[0]) : 0.0f; x1 = col + 1 < k ? ld(xr[1]) : 0.0f;
        }
        if (dropping) {
            unsigned key = lora_row_key(seed, (unsigned)row);
            if (!lora_kept(key, (unsigned)col, threshold)) x0 = 0.0f;
            if (!lora_kept(key, (unsigned)(col + 1), threshold)) x1 = 0.0f;
        }
        const float4* d = (const float4*)(buffer + i * 16);
#pragma unroll
        for (int q = 0; q < 4; q++) {
            float4 v = d[q];
            float dv[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int e = 0; e < 4; e++) { acc[0][4 * q + e] += dv[e] * x0; acc[1][4 * q + e] += dv[e] * x1; }
        }
    }
    __syncthreads();   // dz is no longer needed: the buffer now holds each warp's sums
    float* sums = buffer;   // [warp][j][64 columns]
#pragma unroll
    for (int j = 0; j < 16; j++) {
        *(float2*)(sums + (warp * 16 + j) * GRAD_COLS + lane * 2) = make_float2(acc[0][j], acc[1][j]);
    }
    __syncthreads();
    long long sliceBase = (long long)blockIdx.y * r * k;
    for (int e = threadIdx.x; e < 16 * GRAD_COLS; e += LORA_THREADS) {
        int j = e / GRAD_COLS, c = e % GRAD_COLS;
        int column = blockIdx.x * GRAD_COLS + c;
        if (j >= jn || column >= k) continue;
        float s = 0.0f;
#pragma unroll
        for (int w = 0; w < 8; w++) s += sums[(w * 16 + j) * GRAD_COLS + c];
        partial[sliceBase + (long long)(j0 + j) * k + column] = s;
    }
}

// grad (r·k, float32) += scale · Σ_{s < slices} partial[s], in slice order.
extern "C" __global__ void lora_down_reduce(float* grad, const float* partial, int slices, long long count,
                                            float scale) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    float s = 0.0f;
    for (int p = 0; p < slices; p++) s += partial[(long long)p * count + i];
    grad[i] += scale * s;
}

// dx (rows, k) += scale · m ⊙ (dz A). Grid (⌈k / 256⌉, ⌈rows / 32⌉).
extern "C" __global__ void __launch_bounds__(LORA_THREADS)
lora_dx(T* dx, const T* dz, const T* a, int rows, int k, int r, float keep, unsigned long long seed) {
    __shared__ __align__(16) float as[16 * DX_COLS];
    __shared__ __align__(16) float ds[DX_ROWS * 16];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int rowBlock = blockIdx.y * DX_ROWS, row0 = rowBlock + warp * 4;
    int c0 = blockIdx.x * DX_COLS;
    bool vector = (k & 7) == 0;
    float acc[4][8];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int e = 0; e < 8; e++) acc[i][e] = 0.0f;
    for (int j0 = 0; j0 < r; j0 += 16) {
        int jn = min(16, r - j0);
        __syncthreads();   // the previous slice has been read
        for (int e = threadIdx.x; e < 16 * (DX_COLS / 8); e += LORA_THREADS) {
            int j = e / (DX_COLS / 8), c = (e % (DX_COLS / 8)) * 8;
            float v[8];
            load8(v, a + (long long)(j0 + (j < jn ? j : 0)) * k + c0 + c, j < jn ? k - (c0 + c) : 0, vector);
            float4* d = (float4*)(as + j * DX_COLS + c);
            d[0] = make_float4(v[0], v[1], v[2], v[3]);
            d[1] = make_float4(v[4], v[5], v[6], v[7]);
        }
        for (int e = threadIdx.x; e < DX_ROWS * 16; e += LORA_THREADS) {
            int i = e / 16, j = e % 16, row = rowBlock + i;
            ds[e] = (row < rows && j < jn) ? ld(dz[(long long)row * r + j0 + j]) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int j = 0; j < 16; j++) {
            float4 lo = *(const float4*)(as + j * DX_COLS + 4 * lane);
            float4 hi = *(const float4*)(as + j * DX_COLS + 128 + 4 * lane);
            float av[8] = {lo.x, lo.y, lo.z, lo.w, hi.x, hi.y, hi.z, hi.w};
#pragma unroll
            for (int i = 0; i < 4; i++) {
                float d = ds[(warp * 4 + i) * 16 + j];
#pragma unroll
                for (int e = 0; e < 8; e++) acc[i][e] += d * av[e];
            }
        }
    }
    float scale = 1.0f / keep;
    bool dropping = keep < 1.0f;
    unsigned threshold = dropping ? lora_threshold(keep) : 0u;
#pragma unroll
    for (int i = 0; i < 4; i++) {
        int row = row0 + i;
        if (row >= rows) break;
        T* p = dx + (long long)row * k;
        unsigned key = dropping ? lora_row_key(seed, (unsigned)row) : 0u;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            int col = lora_column(c0, lane, 4 * h), limit = k - col;
            if (limit <= 0) continue;
            float v[4];
            load4(v, p + col, limit, vector);
#pragma unroll
            for (int e = 0; e < 4; e++) {
                bool kept = !dropping || lora_kept(key, (unsigned)(col + e), threshold);
                if (kept) v[e] += scale * acc[i][4 * h + e];
            }
            store4(p + col, v, limit, vector);
        }
    }
}
