// lora.cu: the adapter's three products with its dropout applied where x is read, so that dropout(x) is never
// stored (CPU twin: LlamaModel's projectionForward / projectionBackward with LoRADropout's masks, and the plain
// products of CPUOps). With x (rows, k), A (r, k), dz (rows, r) and m = the dropout mask of each element of x:
//   lora_down:         z (rows, r)  = zScale · scale · (m ⊙ x) Aᵀ        (forward: the adapter's down projection)
//   lora_down_grad:    partial[s] (r, k) = dzᵀ (m ⊙ x) over rows slice s   (backward: dA, in fixed-order slices)
//   lora_down_reduce:  dA (r, k) += scale · Σ_s partial[s]                (the slices summed in order: no atomics;
//                      the parts of one launch together)
//   lora_dx:           dx (rows, k) (+)= scale · m ⊙ (dz A)               (backward: the gradient through m ⊙ x)
//   lora_up_grad:      dB partials and dz partials from one read of dy    (backward: the up projection's two
//                      gradients, bf16 only; lora_up_reduce sums dz's strips and dB's slices in order)
// scale is 1/keep (the inverted-dropout factor) and m is all ones when keep = 1 (no dropout: no hashing).
// lora_down and lora_down_grad take up to three adapters that read the same x (q, k and v; gate and up), each with
// its own A or dz, output and mask seed (`count` of them: the slots past it are never read). The adapter is the
// fastest-varying part of blockIdx.x, so the blocks of all adapters for the same rows and columns run side by side
// and x comes from DRAM about once, the other reads hitting L2. x has row stride ldx ≥ k and z row stride ldz ≥ r,
// so that z can be written into columns of x's own rows (x = [h | z₁ | z₂ | …]: the adapter's term then joins the
// base product as extra columns, the dequantization (quantize.cu) writing B beside W).
//
// The mask of element (row, col) is LoRADropout's: with key = mix(lo(seed) ^ mix(hi(seed) ^ row)) and
// h = mix(key ^ ⌊col / 2⌋), the element is kept when its half of h (the low 16 bits for an even column, the high
// 16 for an odd one) is below ⌈keep · 2^16⌉: one hash per pair of columns. mix is a 32-bit xorshift-multiply
// finalizer. The CPU computes the same integers, so both devices draw the same masks.
//
// Thread mappings (T is bf16 or float32, arithmetic in float32):
//   lora_down, bf16: tensor cores (see the bf16 section at the end): 16 rows and 16 outputs a block of 8 warps that
//     split k. float32: 256 threads own 32 rows (warp w: rows 4w…4w+3) and 16 of the r outputs (blockIdx.y),
//     walking k in steps of 256 columns, lane l reading columns 4l…4l+3 and 128+4l…128+4l+3 of the step of its 4
//     rows and the step's slice of A from shared memory (16-byte reads, no bank conflicts); a warp reduction
//     (shuffles) ends it.
//   lora_down_grad (both types): 256 threads own 64 columns (lane l: columns 2l, 2l+1), a slice of 512 rows
//     (blockIdx.y; warp w takes every 8th row from w) and 16 of the r outputs (blockIdx.z); dz of the slice and
//     its row keys are staged in shared memory. The 8 warps' sums are added in warp order through shared memory
//     and written to partial[slice].
//     bf16 with k a multiple of 8: lora_down_grad_mma, the same partial sums on the tensor cores (see there).
//   lora_down_reduce: one thread per element of dA.
//   lora_dx, bf16: tensor cores, 16 · tiles rows × 256 columns a block of 4 warps (a strip of 64 columns each).
//     float32: 256 threads own 32 rows × 256 columns (warp w: rows 4w…4w+3; lane l: columns 4l…4l+3 and
//     128+4l…) and walk r in slices of 16, each slice of A (16 × 256) and dz (32 × 16) staged in shared memory.
#include "common.cuh"

#define LORA_THREADS 256
#define DOWN_ROWS 32
#define LORA_COLS 256   // columns of A staged at a time (float32 kernels)
#define GRAD_ROWS 512
#define GRAD_COLS 64
#define DX_ROWS 32

// This block's adapter (blockIdx.x % count) and its share of blockIdx.x (blockIdx.x / count).
#define LORA_SELECT(p, a0, a1, a2) ((p) == 0 ? (a0) : (p) == 1 ? (a1) : (a2))
#define LORA_ADAPTER const int adapter = (int)blockIdx.x % count, blockX = (int)blockIdx.x / count

__device__ __forceinline__ unsigned lora_mix(unsigned x) {
    x ^= x >> 16; x *= 0x7feb352du;
    x ^= x >> 15; x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}
__device__ __forceinline__ unsigned lora_row_key(unsigned long long seed, unsigned row) {
    return lora_mix((unsigned)seed ^ lora_mix((unsigned)(seed >> 32) ^ row));
}
// The 16-bit bound below which an element is kept (keep < 1; keep · 2^16 is exact in float32).
__device__ __forceinline__ unsigned lora_threshold(float keep) { return (unsigned)ceilf(keep * 65536.0f); }
// Bit 0: column 2⌊col / 2⌋ kept; bit 1: column 2⌊col / 2⌋ + 1 kept.
__device__ __forceinline__ unsigned lora_kept_pair(unsigned key, unsigned col, unsigned threshold) {
    unsigned h = lora_mix(key ^ (col >> 1));
    return ((h & 0xffffu) < threshold ? 1u : 0u) | ((h >> 16) < threshold ? 2u : 0u);
}

// Columns c0 + 4·lane … + 3 (e < 4) and c0 + 128 + 4·lane … (e ≥ 4) of a 256-column step: the lane's 8 columns.
__device__ __forceinline__ int lora_column(int c0, int lane, int e) { return c0 + (e >> 2) * 128 + 4 * lane + (e & 3); }

#if !QLORA_BF16
// Stages rows j0 … j0 + 15 (those below j0 + jn; zeros for the rest) and columns c0 … c0 + 255 of A (r, k) into
// `as` (16 × 256 float32), a block of 256 threads 8 columns each; zeros past k.
__device__ __forceinline__ void lora_stage_a(float* as, const T* a, int j0, int jn, int k, int c0, bool vector) {
    for (int e = threadIdx.x; e < 16 * (LORA_COLS / 8); e += LORA_THREADS) {
        int j = e / (LORA_COLS / 8), c = (e % (LORA_COLS / 8)) * 8;
        float v[8];
        load8(v, a + (long long)(j0 + (j < jn ? j : 0)) * k + c0 + c, j < jn ? k - (c0 + c) : 0, vector);
        float4* d = (float4*)(as + j * LORA_COLS + c);
        d[0] = make_float4(v[0], v[1], v[2], v[3]);
        d[1] = make_float4(v[4], v[5], v[6], v[7]);
    }
}

// The lane's 8 columns (lora_column's) of row j of a slice of A staged by lora_stage_a: two 16-byte reads.
__device__ __forceinline__ void lora_staged_row(float* av, const float* as, int j, int lane) {
    float4 lo = *(const float4*)(as + j * LORA_COLS + 4 * lane);
    float4 hi = *(const float4*)(as + j * LORA_COLS + 128 + 4 * lane);
    av[0] = lo.x; av[1] = lo.y; av[2] = lo.z; av[3] = lo.w; av[4] = hi.x; av[5] = hi.y; av[6] = hi.z; av[7] = hi.w;
}

// float32: z (rows, r) = scale · (m ⊙ x) Aᵀ with FMAs. Grid (⌈rows / 32⌉ · count, ⌈r / 16⌉).
extern "C" __global__ void __launch_bounds__(LORA_THREADS)
lora_down(T* z0, T* z1, T* z2, const T* x, const T* a0, const T* a1, const T* a2, int count, int rows, int k, int r,
          int ldx, int ldz, float keep, float zScale, unsigned long long seed0, unsigned long long seed1,
          unsigned long long seed2) {
    __shared__ __align__(16) float as[16 * LORA_COLS];
    LORA_ADAPTER;
    T* z = LORA_SELECT(adapter, z0, z1, z2);
    const T* a = LORA_SELECT(adapter, a0, a1, a2);
    const unsigned long long seed = LORA_SELECT(adapter, seed0, seed1, seed2);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int j0 = blockIdx.y * 16, jn = min(16, r - j0);
    int row0 = blockX * DOWN_ROWS + warp * 4;
    bool vector = (k & 7) == 0, xVector = vector && (ldx & 7) == 0, dropping = keep < 1.0f;
    unsigned threshold = dropping ? lora_threshold(keep) : 0u;
    unsigned key[4];
#pragma unroll
    for (int i = 0; i < 4; i++) key[i] = lora_row_key(seed, (unsigned)(row0 + i));
    float acc[4][16];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 16; j++) acc[i][j] = 0.0f;
    for (int c0 = 0; c0 < k; c0 += LORA_COLS) {
        __syncthreads();   // the previous step's slice of A has been read
        lora_stage_a(as, a, j0, jn, k, c0, vector);
        __syncthreads();
        float xv[4][8];
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int row = row0 + i;
            const T* p = x + (long long)(row < rows ? row : 0) * ldx;
#pragma unroll
            for (int h = 0; h < 2; h++) {
                int col = lora_column(c0, lane, 4 * h);
                load4(xv[i] + 4 * h, p + col, row < rows ? k - col : 0, xVector);
            }
            if (dropping) {
#pragma unroll
                for (int e = 0; e < 8; e += 2) {
                    unsigned kept = lora_kept_pair(key[i], (unsigned)lora_column(c0, lane, e), threshold);
                    if (!(kept & 1u)) xv[i][e] = 0.0f;
                    if (!(kept & 2u)) xv[i][e + 1] = 0.0f;
                }
            }
        }
#pragma unroll
        for (int j = 0; j < 16; j++) {
            float av[8];
            lora_staged_row(av, as, j, lane);
#pragma unroll
            for (int i = 0; i < 4; i++) {
                float s = acc[i][j];
#pragma unroll
                for (int e = 0; e < 8; e++) s += xv[i][e] * av[e];
                acc[i][j] = s;
            }
        }
    }
    float scale = zScale / keep;
#pragma unroll
    for (int i = 0; i < 4; i++) {
#pragma unroll
        for (int j = 0; j < 16; j++) {
            float s = warp_reduce(acc[i][j], SumOp());
            int row = row0 + i;
            if (lane == j && j < jn && row < rows) z[(long long)row * ldz + j0 + j] = st(s * scale);
        }
    }
}

#endif

// partial[slice] (r, k) = Σ over the slice's rows of dzᵀ (m ⊙ x).
// Grid (⌈k / 64⌉ · count, ⌈rows / 512⌉, ⌈r / 16⌉).
extern "C" __global__ void __launch_bounds__(LORA_THREADS)
lora_down_grad(float* partial0, float* partial1, float* partial2, const T* dz0, const T* dz1, const T* dz2,
               const T* x, int count, int rows, int k, int r, int ldx, float keep, unsigned long long seed0,
               unsigned long long seed1, unsigned long long seed2) {
    LORA_ADAPTER;
    float* partial = LORA_SELECT(adapter, partial0, partial1, partial2);
    const T* dz = LORA_SELECT(adapter, dz0, dz1, dz2);
    const unsigned long long seed = LORA_SELECT(adapter, seed0, seed1, seed2);
    __shared__ __align__(16) float buffer[GRAD_ROWS * 16];   // dz of the slice, then the warps' sums (8 × 16 × 64)
    __shared__ unsigned keys[GRAD_ROWS];                     // the slice's row keys, hashed once
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int j0 = blockIdx.z * 16, jn = min(16, r - j0);
    int rowStart = blockIdx.y * GRAD_ROWS, rowCount = min(GRAD_ROWS, rows - rowStart);
    int col = blockX * GRAD_COLS + lane * 2;
    bool dropping = keep < 1.0f, pair = (k & 1) == 0 && (ldx & 1) == 0 && col + 1 < k;
    unsigned threshold = dropping ? lora_threshold(keep) : 0u;
    for (int e = threadIdx.x; e < GRAD_ROWS * 16; e += LORA_THREADS) {
        int i = e / 16, j = e % 16;
        buffer[e] = (i < rowCount && j < jn) ? ld(dz[(long long)(rowStart + i) * r + j0 + j]) : 0.0f;
    }
    if (dropping)
        for (int i = threadIdx.x; i < GRAD_ROWS; i += LORA_THREADS)
            keys[i] = lora_row_key(seed, (unsigned)(rowStart + i));
    __syncthreads();
    float acc[2][16];
#pragma unroll
    for (int c = 0; c < 2; c++)
#pragma unroll
        for (int j = 0; j < 16; j++) acc[c][j] = 0.0f;
    for (int i = warp; i < rowCount; i += 8) {
        int row = rowStart + i;
        const T* xr = x + (long long)row * ldx + col;
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
            unsigned kept = lora_kept_pair(keys[i], (unsigned)col, threshold);   // col is even
            if (!(kept & 1u)) x0 = 0.0f;
            if (!(kept & 2u)) x1 = 0.0f;
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
        int column = blockX * GRAD_COLS + c;
        if (j >= jn || column >= k) continue;
        float s = 0.0f;
#pragma unroll
        for (int w = 0; w < 8; w++) s += sums[(w * 16 + j) * GRAD_COLS + c];
        partial[sliceBase + (long long)(j0 + j) * k + column] = s;
    }
}

// grad (r·k, float32) += scale · Σ_{s < slices} partial[s], in slice order.
// Part blockIdx.y (of up to three that share slices and count: the adapters of one lora_down_grad launch).
extern "C" __global__ void lora_down_reduce(float* grad0, float* grad1, float* grad2, const float* partial0,
                                            const float* partial1, const float* partial2, int slices, long long count,
                                            float scale) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    float* grad = LORA_SELECT(blockIdx.y, grad0, grad1, grad2);
    const float* partial = LORA_SELECT(blockIdx.y, partial0, partial1, partial2);
    float s = 0.0f;
    for (int p = 0; p < slices; p++) s += partial[(long long)p * count + i];
    grad[i] += scale * s;
}

#if !QLORA_BF16
// float32: dx (rows, k) (+)= scale · m ⊙ (dz A) with FMAs (added to dx when `accumulate`, else written).
// Grid (⌈k / 256⌉, ⌈rows / 32⌉).
extern "C" __global__ void __launch_bounds__(LORA_THREADS)
lora_dx(T* dx, const T* dz, const T* a, int rows, int k, int r, float keep, unsigned long long seed,
        int accumulate) {
    __shared__ __align__(16) float as[16 * LORA_COLS];
    __shared__ __align__(16) float ds[DX_ROWS * 16];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int rowBlock = blockIdx.y * DX_ROWS, row0 = rowBlock + warp * 4;
    int c0 = blockIdx.x * LORA_COLS;
    bool vector = (k & 7) == 0;
    float acc[4][8];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int e = 0; e < 8; e++) acc[i][e] = 0.0f;
    for (int j0 = 0; j0 < r; j0 += 16) {
        int jn = min(16, r - j0);
        __syncthreads();   // the previous slice has been read
        lora_stage_a(as, a, j0, jn, k, c0, vector);
        for (int e = threadIdx.x; e < DX_ROWS * 16; e += LORA_THREADS) {
            int i = e / 16, j = e % 16, row = rowBlock + i;
            ds[e] = (row < rows && j < jn) ? ld(dz[(long long)row * r + j0 + j]) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int j = 0; j < 16; j++) {
            float av[8];
            lora_staged_row(av, as, j, lane);
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
            float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
            if (accumulate) load4(v, p + col, limit, vector);
#pragma unroll
            for (int e = 0; e < 4; e++) {
                unsigned kept = dropping ? lora_kept_pair(key, (unsigned)(col + e), threshold) >> (e & 1) : 1u;
                if (kept & 1u) v[e] += scale * acc[i][4 * h + e];
            }
            store4(p + col, v, limit, vector);
        }
    }
}
#endif

#if QLORA_BF16
// ---------------------------------------------------------------------------------------------------------------
// bf16: z and dx on the tensor cores (mma.sync m16n8k16, bf16 in, float32 out), fragments loaded from global
// memory straight into registers. In lora_down the 16 columns of an mma step are a permutation of the k index:
// lane (g = lane/4, c = lane%4) loads columns 8c…8c+7 of a 32-column step (one 16-byte load per row), and the
// adapter's rows with the same permutation, so each product sums the right pairs; the mask is applied to the
// packed registers.
#define DOWN_WARPS 8
#define DOWN_TILES 1   // row tiles of 16 per block: 16 rows (a 7B step's 8192 rows fill the GPU: 512 blocks)
#define DXM_WARPS 4


// Eight bf16 at p as four packed registers (element 2i in the low half of register i); zeros past `limit`.
__device__ __forceinline__ uint4 lora_load_packed(const T* p, int limit, bool vector) {
    if (vector && limit >= 8) return *(const uint4*)p;
    unsigned w[4] = {0u, 0u, 0u, 0u};
    for (int e = 0; e < 8; e++) if (e < limit) w[e >> 1] |= (unsigned)p[e] << (16 * (e & 1));
    return make_uint4(w[0], w[1], w[2], w[3]);
}

// The eight packed values of columns col…col+7 of the row with `key`, the dropped ones zeroed.
__device__ __forceinline__ uint4 lora_mask_packed(uint4 u, unsigned key, int col, unsigned threshold) {
    unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; i++) {   // register i holds the pair of columns col + 2i, col + 2i + 1 (col is even)
        unsigned kept = lora_kept_pair(key, (unsigned)(col + 2 * i), threshold);
        w[i] &= ((kept & 1u) ? 0x0000ffffu : 0u) | ((kept & 2u) ? 0xffff0000u : 0u);
    }
    return make_uint4(w[0], w[1], w[2], w[3]);
}

// z (rows, r) = scale · (m ⊙ x) Aᵀ. A block owns DOWN_TILES × 16 rows and 16 of the r outputs (blockIdx.y); its 8
// warps split k (warp w takes the 32-column steps w, w + 8, …) and their sums are added in warp order through shared
// memory.
// Grid (⌈rows / 16⌉ · count, ⌈r / 16⌉), 256 threads.
extern "C" __global__ void __launch_bounds__(DOWN_WARPS * 32)
lora_down(T* z0, T* z1, T* z2, const T* x, const T* a0, const T* a1, const T* a2, int count, int rows, int k, int r,
          int ldx, int ldz, float keep, float zScale, unsigned long long seed0, unsigned long long seed1,
          unsigned long long seed2) {
    __shared__ float sums[DOWN_WARPS * DOWN_TILES * 16 * 16];
    LORA_ADAPTER;
    T* z = LORA_SELECT(adapter, z0, z1, z2);
    const T* a = LORA_SELECT(adapter, a0, a1, a2);
    const unsigned long long seed = LORA_SELECT(adapter, seed0, seed1, seed2);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    int j0 = blockIdx.y * 16, jn = min(16, r - j0);
    int row0 = blockX * DOWN_TILES * 16;
    bool vector = (k & 7) == 0, xVector = vector && (ldx & 7) == 0, dropping = keep < 1.0f;
    unsigned threshold = dropping ? lora_threshold(keep) : 0u;
    unsigned key[DOWN_TILES][2];
    const T* xrow[DOWN_TILES][2];
    bool live[DOWN_TILES][2];
#pragma unroll
    for (int t = 0; t < DOWN_TILES; t++)
#pragma unroll
        for (int h = 0; h < 2; h++) {
            int row = row0 + 16 * t + g + 8 * h;
            live[t][h] = row < rows;
            xrow[t][h] = x + (long long)(live[t][h] ? row : 0) * ldx;
            key[t][h] = dropping ? lora_row_key(seed, (unsigned)row) : 0u;
        }
    bool loLive = g < jn, hiLive = 8 + g < jn;
    const T* aLo = a + (long long)(j0 + (loLive ? g : 0)) * k;
    const T* aHi = a + (long long)(j0 + (hiLive ? 8 + g : 0)) * k;
    float acc[DOWN_TILES][2][4];
#pragma unroll
    for (int t = 0; t < DOWN_TILES; t++)
#pragma unroll
        for (int nb = 0; nb < 2; nb++)
#pragma unroll
            for (int q = 0; q < 4; q++) acc[t][nb][q] = 0.0f;
    // One 32-column step of the warp: 8 columns of x and of A a lane (zeros past k or outside the rows), masked,
    // then the products. `whole`: the step lies inside k and the loads are 16 bytes, without the edge tests (the
    // loop over such steps is unrolled so that several steps' loads are in flight).
    auto step = [&](int c0, bool whole) {
        int col = c0 + 8 * c, limit = k - col;
        const uint4 zero = make_uint4(0u, 0u, 0u, 0u);
        uint4 w0 = whole ? (loLive ? *(const uint4*)(aLo + col) : zero)
                         : lora_load_packed(aLo + col, loLive ? limit : 0, vector);
        uint4 w1 = whole ? (hiLive ? *(const uint4*)(aHi + col) : zero)
                         : lora_load_packed(aHi + col, hiLive ? limit : 0, vector);
        uint4 xv[DOWN_TILES][2];
#pragma unroll
        for (int t = 0; t < DOWN_TILES; t++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                xv[t][h] = whole ? (live[t][h] ? *(const uint4*)(xrow[t][h] + col) : zero)
                                 : lora_load_packed(xrow[t][h] + col, live[t][h] ? limit : 0, xVector);
                if (dropping) xv[t][h] = lora_mask_packed(xv[t][h], key[t][h], col, threshold);
            }
#pragma unroll
        for (int t = 0; t < DOWN_TILES; t++) {
            unsigned f0[4] = {xv[t][0].x, xv[t][1].x, xv[t][0].y, xv[t][1].y};
            unsigned f1[4] = {xv[t][0].z, xv[t][1].z, xv[t][0].w, xv[t][1].w};
            mma_bf16(acc[t][0], f0, w0.x, w0.y); mma_bf16(acc[t][0], f1, w0.z, w0.w);
            mma_bf16(acc[t][1], f0, w1.x, w1.y); mma_bf16(acc[t][1], f1, w1.z, w1.w);
        }
    };
    const int wholeEnd = vector && xVector ? k / 32 * 32 : 0;
    int c0 = warp * 32;
#pragma unroll 4
    for (; c0 < wholeEnd; c0 += DOWN_WARPS * 32) step(c0, true);
    for (; c0 < k; c0 += DOWN_WARPS * 32) step(c0, false);
    // acc[t][nb][q]: row 16t + g (+8 for q ≥ 2), output 8nb + 2c + (q & 1).
#pragma unroll
    for (int t = 0; t < DOWN_TILES; t++)
#pragma unroll
        for (int nb = 0; nb < 2; nb++)
#pragma unroll
            for (int q = 0; q < 4; q++)
                sums[((warp * DOWN_TILES + t) * 16 + g + 8 * (q >> 1)) * 16 + 8 * nb + 2 * c + (q & 1)] = acc[t][nb][q];
    __syncthreads();
    float scale = zScale / keep;
    for (int e = threadIdx.x; e < DOWN_TILES * 16 * 16; e += DOWN_WARPS * 32) {
        int i = e / 16, j = e % 16, row = row0 + i;
        if (row >= rows || j >= jn) continue;
        float s = 0.0f;
#pragma unroll
        for (int w = 0; w < DOWN_WARPS; w++) s += sums[(w * DOWN_TILES * 16 + i) * 16 + j];
        z[(long long)row * ldz + j0 + j] = st(s * scale);
    }
}

// Two bf16 (rows or columns apart in memory) as one packed register, zeros where not `valid`.
__device__ __forceinline__ unsigned lora_pair(const T* p, long long stride, bool valid0, bool valid1) {
    return (valid0 ? (unsigned)p[0] : 0u) | (valid1 ? (unsigned)p[stride] << 16 : 0u);
}

// The A fragment (16 rows from `base` × adapter rows j0 … j0 + 15) of dz (rows, r): one 32-bit load per register
// where the pair is inside and aligned, zeros outside.
__device__ __forceinline__ void lora_dz_fragment(unsigned* f, const T* dz, int base, int j0, int rows, int r) {
    int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
#pragma unroll
    for (int q = 0; q < 4; q++) {
        int row = base + g + 8 * (q & 1), j = j0 + 2 * c + 8 * (q >> 1);
        bool ok0 = row < rows && j < r, ok1 = row < rows && j + 1 < r;
        const T* p = dz + (long long)(row < rows ? row : 0) * r + (j < r ? j : 0);
        f[q] = ok1 && (r & 1) == 0 ? *(const unsigned*)p : lora_pair(p, 1, ok0, ok1);
    }
}

// dx (rows, k) (+)= scale · m ⊙ (dz A) (added when `accumulate`, else written). A block owns 16 · tiles rows × 256
// columns; warp w a strip of 64 columns (8 mma column blocks), walking its row tiles; the B operand (A's rows 2c,
// 2c+1 and 2c+8, 2c+9 of column 8nb + g) is loaded once per strip when r ≤ 16. Each 16 × 64 result tile goes through
// the warp's shared-memory tile (masked and scaled on the way in) so that dx is read and written 16 bytes a lane.
// Grid (⌈k / 256⌉, ⌈rows / (16 · tiles)⌉), 128 threads.
#define DXM_PITCH 68   // floats per row of a warp's staged tile (64 + 4: fewer bank conflicts)
// LORA_DX_BLOCKS (QLORA_KERNEL_DEFINES, for comparisons): the blocks an SM must fit (5: ≤ 102 registers; 6: ≤ 85).
#ifndef LORA_DX_BLOCKS
#define LORA_DX_BLOCKS 5
#endif
extern "C" __global__ void __launch_bounds__(DXM_WARPS * 32, LORA_DX_BLOCKS)
lora_dx(T* dx, const T* dz, const T* a, int rows, int k, int r, float keep, unsigned long long seed,
        int accumulate, int tiles) {
    __shared__ __align__(16) float staged[DXM_WARPS * 16 * DXM_PITCH];
    __shared__ uint4 olds[DXM_WARPS][2][16 * 8];   // a warp's two buffers of dx's old values: 16 rows × 8 chunks
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    int strip = blockIdx.x * DXM_WARPS * 64 + warp * 64;
    if (strip >= k) return;   // each warp uses only its own tile and __syncwarp: no block barriers here
    float* tile = staged + warp * 16 * DXM_PITCH;
    int rowStart = blockIdx.y * tiles * 16;
    bool dropping = keep < 1.0f, vector = (k & 7) == 0;
    unsigned threshold = dropping ? lora_threshold(keep) : 0u;
    float scale = 1.0f / keep;
    unsigned b[8][2];
    unsigned fNext[4];   // r ≤ 16: the next row tile's dz fragment, loaded a tile ahead (its latency hidden)
    if (r <= 16) lora_dz_fragment(fNext, dz, rowStart, 0, rows, r);
    // Accumulating with k % 8 == 0, a tile's dx (16 rows × 8 chunks of 8 columns: lane l takes chunks l, l + 32,
    // l + 64, l + 96, row = chunk / 8) is copied to the warp's buffer a tile ahead (cp.async: no registers held
    // while the products run; each lane reads back only its own chunks).
    const bool staging = accumulate && vector;
    auto request = [&](int base, int buffer) {
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int chunk = lane + 32 * i, col = strip + (chunk & 7) * 8, row = base + (chunk >> 3);
            bool ok = row < rows && col < k;   // k % 8 == 0: a chunk is wholly inside or outside
            cp_async16((T*)&olds[warp][buffer][chunk], ok ? dx + (long long)row * k + col : dx, ok);
        }
    };
    if (staging) {
        request(rowStart, 0);
        cp_async_commit();
    }
    for (int t = 0; t < tiles; t++) {
        int base = rowStart + 16 * t;
        if (base >= rows) break;
        if (staging) {
            if (t + 1 < tiles && base + 16 < rows) request(base + 16, (t + 1) & 1);
            cp_async_commit();
        }
        float acc[8][4];
#pragma unroll
        for (int nb = 0; nb < 8; nb++)
#pragma unroll
            for (int q = 0; q < 4; q++) acc[nb][q] = 0.0f;
        for (int j0 = 0; j0 < r; j0 += 16) {
            unsigned f[4];
            if (r <= 16) {   // this tile's fragment came with the previous one; fetch the next tile's behind it
#pragma unroll
                for (int q = 0; q < 4; q++) f[q] = fNext[q];
                if (t + 1 < tiles) lora_dz_fragment(fNext, dz, base + 16, 0, rows, r);
            } else {
                lora_dz_fragment(f, dz, base, j0, rows, r);
            }
            if (t == 0 || r > 16) {
#pragma unroll
                for (int nb = 0; nb < 8; nb++) {
                    int col = strip + 8 * nb + g;
#pragma unroll
                    for (int h = 0; h < 2; h++) {
                        int j = j0 + 2 * c + 8 * h;
                        const T* p = a + (long long)(j < r ? j : 0) * k + (col < k ? col : 0);
                        b[nb][h] = lora_pair(p, k, j < r && col < k, j + 1 < r && col < k);
                    }
                }
            }
#pragma unroll
            for (int nb = 0; nb < 8; nb++) mma_bf16(acc[nb], f, b[nb][0], b[nb][1]);
        }
        // acc[nb][q]: row base + g (+8 for q ≥ 2), column strip + 8nb + 2c + (q & 1), masked and scaled into the
        // tile.
        __syncwarp();   // the previous tile has been written out
#pragma unroll
        for (int h = 0; h < 2; h++) {
            unsigned key = dropping ? lora_row_key(seed, (unsigned)(base + g + 8 * h)) : 0u;
#pragma unroll
            for (int nb = 0; nb < 8; nb++) {
                int col = strip + 8 * nb + 2 * c;   // even
                unsigned kept = dropping ? lora_kept_pair(key, (unsigned)col, threshold) : 3u;
                *(float2*)(tile + (g + 8 * h) * DXM_PITCH + 8 * nb + 2 * c) =
                    make_float2((kept & 1u) ? scale * acc[nb][2 * h] : 0.0f,
                                (kept & 2u) ? scale * acc[nb][2 * h + 1] : 0.0f);
            }
        }
        __syncwarp();
        if (staging) cp_async_wait<1>();   // this tile's old values are in (the next tile's may still be on their way)
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int chunk = lane + 32 * i, col = strip + (chunk & 7) * 8, row = base + (chunk >> 3);
            int limit = row < rows ? k - col : 0;
            const float* src = tile + (chunk >> 3) * DXM_PITCH + (chunk & 7) * 8;
            T* p = dx + (long long)row * k + col;
            // the staged old values (zeros when not accumulating), or a ragged edge read here
            const uint4 old = staging ? olds[warp][t & 1][chunk] : make_uint4(0u, 0u, 0u, 0u);
            float v[8] = {__uint_as_float(old.x << 16), __uint_as_float(old.x & 0xffff0000u),
                          __uint_as_float(old.y << 16), __uint_as_float(old.y & 0xffff0000u),
                          __uint_as_float(old.z << 16), __uint_as_float(old.z & 0xffff0000u),
                          __uint_as_float(old.w << 16), __uint_as_float(old.w & 0xffff0000u)};
            if (limit > 0) {
                if (accumulate && !staging) load8(v, p, limit, vector);
#pragma unroll
                for (int e = 0; e < 8; e++) v[e] += src[e];
                store8(p, v, limit, vector);
            }
        }
    }
}
// dA on the tensor cores (k and ldx multiples of 8): partial[slice] (r, k) = dzᵀ (m ⊙ x) over the slice's rows, as
// lora_down_grad computes it, with M = 16 adapter rows, N = 8 columns of x and K = 16 rows of x per mma step. A block
// of 4 warps owns GRADM_COLS columns (warp w: 64 of them, 8 column blocks, 32 accumulators a lane) and a slice of
// GRADM_ROWS rows, walked in chunks of GRADM_CHUNK rows staged by cp.async (double buffered) and masked in shared
// memory (one hash per pair of columns; the slice's row keys hashed once). dz of the slice is staged once,
// transposed ([j][row]), so that its A fragments load with ldmatrix and x's B fragments with ldmatrix.trans.
// Grid (⌈k / 256⌉ · count, ⌈rows / 256⌉, ⌈r / 16⌉), 128 threads, GRADM_SHARED bytes of dynamic shared
// memory (43 KiB: up to five blocks an SM; slices of 256 rows, so that a 7B step's 8192 rows make 512 blocks for 4096
// columns).
#define GRADM_ROWS 256
#define GRADM_COLS 256
#define GRADM_CHUNK 32
#define GRADM_XLD (GRADM_COLS + 8)   // row pitch (elements) of a staged x chunk: ldmatrix rows hit 8 bank groups
#define GRADM_DLD (GRADM_ROWS + 8)   // row pitch of the staged dzᵀ
#define GRADM_SHARED (2 * (2 * GRADM_CHUNK * GRADM_XLD + 16 * GRADM_DLD) + 4 * GRADM_ROWS)
extern "C" __global__ void __launch_bounds__(128)
lora_down_grad_mma(float* partial0, float* partial1, float* partial2, const T* dz0, const T* dz1, const T* dz2,
                   const T* x, int count, int rows, int k, int r, int ldx, float keep, unsigned long long seed0,
                   unsigned long long seed1, unsigned long long seed2) {
    extern __shared__ __align__(16) unsigned char lora_smem[];
    LORA_ADAPTER;
    float* partial = LORA_SELECT(adapter, partial0, partial1, partial2);
    const T* dz = LORA_SELECT(adapter, dz0, dz1, dz2);
    const unsigned long long seed = LORA_SELECT(adapter, seed0, seed1, seed2);
    T* xs = (T*)lora_smem;                          // two chunks of GRADM_CHUNK × GRADM_XLD
    T* dzt = xs + 2 * GRADM_CHUNK * GRADM_XLD;      // 16 × GRADM_DLD
    unsigned* keys = (unsigned*)(dzt + 16 * GRADM_DLD);
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    int j0 = blockIdx.z * 16, jn = min(16, r - j0);
    int rowStart = blockIdx.y * GRADM_ROWS, rowCount = min(GRADM_ROWS, rows - rowStart);
    int col0 = blockX * GRADM_COLS;
    bool dropping = keep < 1.0f;
    unsigned threshold = dropping ? lora_threshold(keep) : 0u;
    // Thread x stages chunk x % 32 (8 columns) of rows x / 32 + 4n of a chunk of x, masks column pair x (both
    // loops unrolled, so that each access is a base and a constant), and reads its fragments at fixed offsets.
    const int stageRow = threadIdx.x >> 5, stageCol = (threadIdx.x & 31) * 8;
    const bool stageOk = col0 + stageCol < k;   // k % 8 == 0: 8 columns are wholly inside or outside
    const T* stageSrc = x + (long long)(rowStart + stageRow) * ldx + col0 + stageCol;
    const unsigned xsAt = smem_address(xs), dztAt = smem_address(dzt);
    const unsigned stageAt = xsAt + 2 * (stageRow * GRADM_XLD + stageCol);
    auto stage = [&](int chunk, int buffer) {
        const unsigned at = stageAt + buffer * (2 * GRADM_CHUNK * GRADM_XLD);
#pragma unroll
        for (int n = 0; n < GRADM_CHUNK / 4; ++n) {
            const int row = chunk * GRADM_CHUNK + stageRow + 4 * n;
            const bool ok = stageOk && row < rowCount;
            cp_async16_at(at + n * (2 * 4 * GRADM_XLD), ok ? stageSrc + (long long)(chunk * GRADM_CHUNK + 4 * n) * ldx
                                                            : x, ok);
        }
    };
    stage(0, 0);
    cp_async_commit();
    for (int e = threadIdx.x; e < 16 * GRADM_ROWS; e += 128) {
        int i = e >> 4, j = e & 15;
        dzt[j * GRADM_DLD + i] = (i < rowCount && j < jn) ? dz[(long long)(rowStart + i) * r + j0 + j] : (T)0;
    }
    if (dropping)
        for (int i = threadIdx.x; i < GRADM_ROWS; i += 128) keys[i] = lora_row_key(seed, (unsigned)(rowStart + i));
    float acc[8][4];
#pragma unroll
    for (int nb = 0; nb < 8; nb++) acc[nb][0] = acc[nb][1] = acc[nb][2] = acc[nb][3] = 0.0f;
    const int fragRow = (lane & 7) + ((lane >> 3) & 1) * 8, fragCol = (lane >> 4) * 8;
    const unsigned aAt = dztAt + 2 * (fragRow * GRADM_DLD + fragCol);
    const unsigned bAt = xsAt + 2 * (fragRow * GRADM_XLD + warp * 64 + fragCol);
    const unsigned pair = (unsigned)(col0 >> 1) + threadIdx.x;   // the column pair this thread masks
    int chunks = (rowCount + GRADM_CHUNK - 1) / GRADM_CHUNK;
    for (int ch = 0; ch < chunks; ch++) {
        int buffer = ch & 1;
        if (ch + 1 < chunks) stage(ch + 1, buffer ^ 1);
        cp_async_commit();
        cp_async_wait<1>();   // this chunk is in (the next may still be on its way)
        __syncthreads();
        const unsigned bufferAt = buffer * (2 * GRADM_CHUNK * GRADM_XLD);
        if (dropping) {
            unsigned* column = (unsigned*)(xs + buffer * GRADM_CHUNK * GRADM_XLD) + threadIdx.x;
            const unsigned* chunkKeys = keys + ch * GRADM_CHUNK;
#pragma unroll 8
            for (int i = 0; i < GRADM_CHUNK; ++i) {
                const unsigned kept = lora_kept_pair(chunkKeys[i], 2 * pair, threshold);
                column[i * (GRADM_XLD / 2)] &= ((kept & 1u) ? 0x0000ffffu : 0u) | ((kept & 2u) ? 0xffff0000u : 0u);
            }
            __syncthreads();
        }
#pragma unroll
        for (int kk = 0; kk < GRADM_CHUNK / 16; kk++) {
            unsigned a[4];
            ldsm_x4_at(a, aAt + 2 * (ch * GRADM_CHUNK + kk * 16));
#pragma unroll
            for (int np = 0; np < 4; np++) {   // column blocks 2np and 2np + 1 of the warp's 64 columns
                unsigned b[4];
                ldsm_x4_trans_at(b, bAt + bufferAt + 2 * (kk * 16 * GRADM_XLD + np * 16));
                mma_bf16(acc[2 * np], a, b[0], b[1]);
                mma_bf16(acc[2 * np + 1], a, b[2], b[3]);
            }
        }
        __syncthreads();   // every warp is done with this buffer before it is refilled
    }
    // acc[nb][q]: adapter row g (+8 for q ≥ 2), column col0 + 64w + 8nb + 2c + (q & 1).
    float* out = partial + (long long)blockIdx.y * r * k;
#pragma unroll
    for (int nb = 0; nb < 8; nb++) {
        int col = col0 + warp * 64 + nb * 8 + 2 * c;
        if (col >= k) continue;   // k is even: col + 1 < k too
#pragma unroll
        for (int h = 0; h < 2; h++)
            if (g + 8 * h < jn) {
                float2 v = make_float2(acc[nb][2 * h], acc[nb][2 * h + 1]);
                *(float2*)(out + (long long)(j0 + g + 8 * h) * k + col) = v;
            }
    }
}

// The up projection's two gradients from one read of dy (bf16, out a multiple of 8), for y += z Bᵀ with z (rows, r)
// holding the LoRA scale already:
//   dBᵀ partial[slice] (as (out, r)) = Σ over the slice's rows of dyᵀ z     (summed in slice order by lora_up_reduce)
//   dz partial[strip] (rows, r)      = dy B over the strip's columns        (summed in strip order by lora_up_reduce)
// A block of 8 warps owns a strip of UP_COLS columns of dy (warp w: 64 of them) and a slice of UP_ROWS rows, walked in
// chunks of UP_CHUNK rows staged by cp.async (double buffered), and 16 of the r adapter columns (blockIdx.z). z of the
// slice is staged once, transposed ([j][row]): dBᵀ's fragments are zᵀ (ldmatrix) times the chunk (ldmatrix.trans),
// 32 accumulators a lane kept over the slice. dz's are the chunk (ldmatrix) times B's rows of the warp's columns,
// loaded from global memory once per block (16 registers); each chunk's 32 × 16 sums of the 8 warps are added in warp
// order through shared memory and written to the strip's partial. Grid (⌈out / 512⌉, ⌈rows / 256⌉, ⌈r / 16⌉),
// 256 threads, UP_SHARED bytes of dynamic shared memory (two blocks an SM).
#define UP_ROWS 256
#define UP_COLS 512
#define UP_CHUNK 32
#define UP_XLD (UP_COLS + 8)    // row pitch (elements) of a staged chunk of dy
#define UP_ZLD (UP_ROWS + 8)    // row pitch of the staged zᵀ
#define UP_SHARED (2 * (2 * UP_CHUNK * UP_XLD + 16 * UP_ZLD) + 4 * 8 * UP_CHUNK * 16)
extern "C" __global__ void __launch_bounds__(256, 2)
lora_up_grad(float* partialB, float* partialZ, const T* dy, const T* z, const T* b, int rows, int out, int r, int ldz) {
    extern __shared__ __align__(16) unsigned char lora_smem[];
    T* xs = (T*)lora_smem;                          // two chunks of UP_CHUNK × UP_XLD
    T* zt = xs + 2 * UP_CHUNK * UP_XLD;             // 16 × UP_ZLD
    float* red = (float*)(zt + 16 * UP_ZLD);        // 8 warps × UP_CHUNK × 16
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    int j0 = blockIdx.z * 16, jn = min(16, r - j0);
    int rowStart = blockIdx.y * UP_ROWS, rowCount = min(UP_ROWS, rows - rowStart);
    int col0 = blockIdx.x * UP_COLS, wcol = col0 + warp * 64;
    // Thread x stages chunk x % 64 (8 columns) of rows x / 64 + 4n of a chunk of dy (unrolled: a base and constants).
    const int stageRow = threadIdx.x >> 6, stageCol = (threadIdx.x & 63) * 8;
    const bool stageOk = col0 + stageCol < out;   // out % 8 == 0: 8 columns are wholly inside or outside
    const T* stageSrc = dy + (long long)(rowStart + stageRow) * out + col0 + stageCol;
    const unsigned xsAt = smem_address(xs), ztAt = smem_address(zt);
    const unsigned stageAt = xsAt + 2 * (stageRow * UP_XLD + stageCol);
    auto stage = [&](int chunk, int buffer) {
        const unsigned at = stageAt + buffer * (2 * UP_CHUNK * UP_XLD);
#pragma unroll
        for (int n = 0; n < UP_CHUNK / 4; ++n) {
            const bool ok = stageOk && chunk * UP_CHUNK + stageRow + 4 * n < rowCount;
            cp_async16_at(at + n * (2 * 4 * UP_XLD), ok ? stageSrc + (long long)(chunk * UP_CHUNK + 4 * n) * out : dy,
                          ok);
        }
    };
    stage(0, 0);
    cp_async_commit();
    for (int e = threadIdx.x; e < 16 * UP_ROWS; e += 256) {
        int i = e >> 4, j = e & 15;
        zt[j * UP_ZLD + i] = (i < rowCount && j < jn) ? z[(long long)(rowStart + i) * ldz + j0 + j] : (T)0;
    }
    // B's fragments for dz: bf[kk][nb][h] holds B[col][j], B[col + 1][j] with col = wcol + 16kk + 2c + 8h and
    // j = j0 + 8nb + g (the mma's column-major 16 × 8 operand).
    unsigned bf[4][2][2];
#pragma unroll
    for (int kk = 0; kk < 4; kk++)
#pragma unroll
        for (int nb = 0; nb < 2; nb++)
#pragma unroll
            for (int h = 0; h < 2; h++) {
                int col = wcol + 16 * kk + 2 * c + 8 * h, j = j0 + 8 * nb + g;
                bool ok = j < r && col < out;   // out is even: col + 1 < out too
                bf[kk][nb][h] = lora_pair(b + (long long)(ok ? col : 0) * r + (ok ? j : 0), r, ok, ok);
            }
    float accB[8][4];
#pragma unroll
    for (int nb = 0; nb < 8; nb++) accB[nb][0] = accB[nb][1] = accB[nb][2] = accB[nb][3] = 0.0f;
    float* strip = partialZ + (long long)blockIdx.x * rows * r;
    const int fragRow = (lane & 7) + ((lane >> 3) & 1) * 8, fragCol = (lane >> 4) * 8;
    const unsigned zAt = ztAt + 2 * (fragRow * UP_ZLD + fragCol);
    const unsigned fragAt = xsAt + 2 * (fragRow * UP_XLD + warp * 64 + fragCol);
    int chunks = (rowCount + UP_CHUNK - 1) / UP_CHUNK;
    for (int ch = 0; ch < chunks; ch++) {
        int buffer = ch & 1;
        if (ch + 1 < chunks) stage(ch + 1, buffer ^ 1);
        cp_async_commit();
        cp_async_wait<1>();   // this chunk is in (the next may still be on its way)
        __syncthreads();
        const unsigned sAt = fragAt + buffer * (2 * UP_CHUNK * UP_XLD);   // this lane's fragment rows in the chunk
        // dBᵀ (16 × the warp's 64 columns) += zᵀ (16 × 32 rows) · chunk (32 rows × 64 columns)
#pragma unroll
        for (int kk = 0; kk < UP_CHUNK / 16; kk++) {
            unsigned a[4];
            ldsm_x4_at(a, zAt + 2 * (ch * UP_CHUNK + kk * 16));
#pragma unroll
            for (int np = 0; np < 4; np++) {
                unsigned t[4];
                ldsm_x4_trans_at(t, sAt + 2 * (kk * 16 * UP_XLD + np * 16));
                mma_bf16(accB[2 * np], a, t[0], t[1]);
                mma_bf16(accB[2 * np + 1], a, t[2], t[3]);
            }
        }
        // dz (32 rows × 16) over the warp's 64 columns: chunk (32 × 64) · B (64 × 16)
        float accZ[2][2][4];
#pragma unroll
        for (int m = 0; m < 2; m++)
#pragma unroll
            for (int nb = 0; nb < 2; nb++) accZ[m][nb][0] = accZ[m][nb][1] = accZ[m][nb][2] = accZ[m][nb][3] = 0.0f;
#pragma unroll
        for (int m = 0; m < 2; m++)
#pragma unroll
            for (int kk = 0; kk < 4; kk++) {
                unsigned a[4];
                ldsm_x4_at(a, sAt + 2 * (m * 16 * UP_XLD + kk * 16));
                mma_bf16(accZ[m][0], a, bf[kk][0][0], bf[kk][0][1]);
                mma_bf16(accZ[m][1], a, bf[kk][1][0], bf[kk][1][1]);
            }
        // accZ[m][nb][q]: chunk row 16m + g (+8 for q ≥ 2), adapter column 8nb + 2c + (q & 1)
        float* mine = red + warp * UP_CHUNK * 16;
#pragma unroll
        for (int m = 0; m < 2; m++)
#pragma unroll
            for (int nb = 0; nb < 2; nb++)
#pragma unroll
                for (int h = 0; h < 2; h++)
                    *(float2*)(mine + (16 * m + g + 8 * h) * 16 + 8 * nb + 2 * c) =
                        make_float2(accZ[m][nb][2 * h], accZ[m][nb][2 * h + 1]);
        __syncthreads();   // every warp's sums are in (and every warp is done reading this buffer)
        for (int e = threadIdx.x; e < UP_CHUNK * 16; e += 256) {
            int i = e >> 4, j = e & 15, row = ch * UP_CHUNK + i;
            if (row >= rowCount || j >= jn) continue;
            float v = 0.0f;
#pragma unroll
            for (int w = 0; w < 8; w++) v += red[w * UP_CHUNK * 16 + e];
            strip[(long long)(rowStart + row) * r + j0 + j] = v;
        }
        // red is written again only after the next chunk's barrier, which every thread passes after its reads here
    }
    // accB[nb][q]: adapter column j0 + g (+8 for q ≥ 2), column wcol + 8nb + 2c + (q & 1); stored as (out, r)
    float* part = partialB + (long long)blockIdx.y * out * r;
#pragma unroll
    for (int nb = 0; nb < 8; nb++) {
        int col = wcol + nb * 8 + 2 * c;
        if (col >= out) continue;
#pragma unroll
        for (int h = 0; h < 2; h++) {
            int j = g + 8 * h;
            if (j >= jn) continue;
            part[(long long)col * r + j0 + j] = accB[nb][2 * h];
            part[(long long)(col + 1) * r + j0 + j] = accB[nb][2 * h + 1];
        }
    }
}

// lora_up_grad's two sums in one launch, one thread an element: blockIdx.y 0, dz (rows, r) = scale · Σ_s
// partialZ[s] (its strips in order); 1, gradB (out, r) += Σ_s partialB[s] (its slices in order).
extern "C" __global__ void lora_up_reduce(T* dz, const float* partialZ, int strips, long long countZ, float scale,
                                          float* gradB, const float* partialB, int slices, long long countB) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    float s = 0.0f;
    if (blockIdx.y == 0) {
        if (i >= countZ) return;
        for (int p = 0; p < strips; p++) s += partialZ[(long long)p * countZ + i];
        dz[i] = st(scale * s);
    } else {
        if (i >= countB) return;
        for (int p = 0; p < slices; p++) s += partialB[(long long)p * countB + i];
        gradB[i] += s;
    }
}
#endif
