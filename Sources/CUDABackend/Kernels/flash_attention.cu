// flash_attention.cu: causal grouped-query attention that never stores the (T × T) scores (CPU twin:
// CPUOps.flashAttentionForward / flashAttentionBackward in Sources/CPUBackend/FlashAttention.swift).
//
// Shapes: q (B, T, H, D), k and v (B, T, Hkv, D), row-major and already rotated; head h reads KV head h / (H / Hkv);
// key j is seen by query i when j ≤ i. s = q·k / √D. The forward writes out (B, T, H, D) and lse
// (B, H, T, float32), the natural log of Σ_j exp(s_ij) for each query row; the backward recomputes
// P = exp(s − lse) tile by tile:
//   delta_i = rowsum(dO ⊙ O)                      (flash_attention_backward_dot)
//   dV_j = Σ_i P_ij dO_i,  dK_j = Σ_i dS_ij q_i / √D  (flash_attention_backward_kv_d*, one block per key tile)
//   dQ_i = Σ_j dS_ij k_j / √D                       (flash_attention_backward_q_d*, one block per query tile)
// with dS_ij = P_ij (dO_i·v_j − delta_i). Every output element is written by exactly one thread and summed in a
// fixed order: no atomics, so the results are the same on every run. The softmax runs in base 2 (exp2 of
// s·log2(e)/√D), with the running maximum and sum of each row kept in float32 ("online softmax").
//
// Tiles (the CPU twin uses the same key steps): forward 64 keys a step over 128 query rows (bf16; 64 in float32 and
// in the CPU twin: a row's arithmetic does not depend on how many rows share its block); dK/dV 64 keys × 64 query
// rows; dQ 64 query rows × 64 keys. Tiles wholly above the diagonal are never visited; the diagonal tiles (and rows
// or keys past T, which are loaded as zeros) are masked element by element.
//
// Grids: forward and dQ: (query tiles, H, B), blockIdx.x counted from the last tile so that the longest rows start
// first; dK/dV: (key tiles, Hkv, B), each block looping over the H/Hkv query heads of its group and over the query
// tiles from its diagonal to the end. backward_dot: one warp per (b, t, h) row, 8 warps per block.
//
// bf16 (QLORA_BF16=1): 128 threads = 4 warps. Tensor cores through mma.sync m16n8k16 (bf16 in, float32 out), tiles
// staged in shared memory by cp.async (rows padded by 8 elements so that fragment loads hit 8 different bank
// groups), fragments read with ldmatrix. Forward: warp w owns query rows 32w…32w+31 of the 128-row tile as two
// 16-row groups, so that each key and value fragment read from shared memory feeds two products (with 16 rows a
// warp, shared-memory reads, not the tensor cores, set the pace); q's fragments are read again for every key tile.
// dQ: warp w owns query rows 16w…16w+15. In a 16-row group at m0 the lane with g = lane/4, c = lane%4 holds rows
// m0+g and m0+g+8, and columns 8n+2c, 8n+2c+1 of each 8-wide column block n (the accumulator layout of m16n8k16).
// The row maximum and sum need only the four lanes of a row (shuffles by 1 and 2). P (and dS) go from the
// accumulator registers straight into the A operand of the next product, rounded to bf16. dK/dV: warp w owns keys
// 16w…16w+15 and computes the transposed tiles Sᵀ = K Qᵀ and dPᵀ = V dOᵀ, so that Pᵀ and dSᵀ feed dV += Pᵀ dO and
// dK += dSᵀ Q from registers; the query tiles (q, dO and their lse and delta) are double buffered.
// float32: 256 threads as 16 × 16 (ty = tid/16, tx = tid%16), plain FMAs. Thread (ty, tx) owns tile rows
// 4ty…4ty+3, score columns tx + 16c and output columns tx + 16e; row reductions run over the 16 lanes of tx.
// P and dS pass through shared memory.
//
// RoPE: q and k arrive rotated; given the tables (`cosT`, `sinT`, and `positions` or null), the backward kernels
// write dq and dk with the rotation undone (rope.cu's inverse, applied to the float32 sums before rounding), so the
// caller runs no inverse RoPE pass. A lane holds column i and its partner i + D/2 of its rows in both builds.
//
// Packed documents: `starts` (B·T int32, or null for plain causal attention) gives each query the first key it sees,
// its document's first token: key j is seen by query i when starts[i] ≤ j ≤ i. A row's starts never decrease, so a
// tile's first row has the smallest start and its last row the largest: key tiles below the first row's start are
// skipped (forward, dQ), query tiles whose first row starts past the key tile end the dK/dV loop, and a tile
// holding any start past its first key is masked element by element like the diagonal.
//
// Dynamic shared memory (bytes; the Swift launcher computes the same): LD = D + 8 (bf16), D + 1 (float32);
//   bf16:  forward 512·LD, backward_kv 768·LD + 1024, backward_q 768·LD
//   f32:   forward 4·(192·LD + 64·65), backward_kv 4·(256·LD + 2·64·65), backward_q 4·(256·LD + 64·65)
// (with D = 128: bf16 68, 103 and 102 KiB; float32 113, 162 and 145 KiB; above 48 KiB a kernel must opt in).
// Head dims 32, 64, 96 and 128 each have their own kernels (suffix _d32 … _d128), and packed rows their own
// (_packed_d32 …), so that plain causal attention carries none of the document tests.
#include "common.cuh"
#include "attention.cuh"

#define FWD_ROWS 64   // forward: query rows per block
#define FWD_KEYS 64   // forward: keys per step
#define KV_KEYS 64    // dK/dV: keys per block
#ifndef KV_ROWS
#define KV_ROWS 64    // dK/dV: query rows per step (the harness may try others; the Swift launcher assumes 64)
#endif
#define DQ_ROWS 64    // dQ: query rows per block
#define DQ_KEYS 64    // dQ: keys per step

extern "C" __global__ void flash_attention_backward_dot(float* delta, const T* dout, const T* out, int tokens,
                                                        int heads, int headDim, long long rows) {
    long long r = (long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (r >= rows) return;   // r is the same for the whole warp
    int lane = threadIdx.x & 31;
    const T* a = dout + r * headDim;
    const T* o = out + r * headDim;
    float s = 0.0f;
    for (int d = lane; d < headDim; d += 32) s += ld(a[d]) * ld(o[d]);
    s = warp_reduce(s, SumOp());
    if (lane == 0) {
        long long bt = r / heads;
        int h = (int)(r - bt * heads);
        long long b = bt / tokens;
        int i = (int)(bt - b * tokens);
        delta[(b * heads + h) * tokens + i] = s;
    }
}

#if QLORA_BF16
// ---------------------------------------------------------------------------------------------------------------
// bf16: tensor cores
#define FA_PAD 8
#define FA_THREADS 128
#ifndef FA_FWD_GROUPS
#define FA_FWD_GROUPS 2   // forward: 16-row groups per warp (each key and value fragment read feeds all of them)
#endif
#define FWD_ROWS_BF16 (64 * FA_FWD_GROUPS)   // forward: query rows per block
#ifndef FA_FWD_BLOCKS
#define FA_FWD_BLOCKS (FA_FWD_GROUPS == 1 ? 3 : 2)   // forward blocks per SM the registers are budgeted for
#endif

// Starts copying rows 0..<R of a (rows, D) slice with row stride `stride` into shared memory (row pitch D + 8);
// rows from `valid` on are zero-filled.
template <int D, int R>
__device__ __forceinline__ void fa_load_tile(T* s, const T* g, long long stride, int valid) {
    constexpr int chunks = D / 8;
    for (int c = threadIdx.x; c < R * chunks; c += FA_THREADS) {
        int r = c / chunks, col = (c - r * chunks) * 8;
        bool ok = r < valid;
        cp_async16(s + r * (D + FA_PAD) + col, ok ? g + r * stride + col : g, ok);
    }
}


#ifndef FA_PLAIN_FRAGMENTS
// A operand (16 rows × 16 k) of a row-major [m][k] tile at (m0, k0).
template <int LD> __device__ __forceinline__ void fa_frag_a(unsigned* a, const T* s, int m0, int k0) {
    int lane = threadIdx.x & 31;
    ldsm_x4(a, s + (m0 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + k0 + (lane >> 4) * 8);
}
// B operands of two 8-wide column blocks n0 and n0 + 8 from a tile stored [n][k] (as K for Q·Kᵀ):
// b[0], b[1] for n0; b[2], b[3] for n0 + 8.
template <int LD> __device__ __forceinline__ void fa_frag_b(unsigned* b, const T* s, int n0, int k0) {
    int lane = threadIdx.x & 31;
    ldsm_x4(b, s + (n0 + (lane & 7) + (lane >> 4) * 8) * LD + k0 + ((lane >> 3) & 1) * 8);
}
// The same from a tile stored [k][n] (as V for P·V), transposed on the way.
template <int LD> __device__ __forceinline__ void fa_frag_bt(unsigned* b, const T* s, int k0, int n0) {
    int lane = threadIdx.x & 31;
    ldsm_x4_trans(b, s + (k0 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + n0 + (lane >> 4) * 8);
}
#else
// The same fragments with plain 32-bit and 16-bit shared loads (a slower cross-check of the ldmatrix layouts).
__device__ __forceinline__ unsigned fa_u32(const T* p) { return *(const unsigned*)p; }
__device__ __forceinline__ unsigned fa_u16x2(const T* p, int ld) {
    return (unsigned)p[0] | ((unsigned)p[ld] << 16);
}
template <int LD> __device__ __forceinline__ void fa_frag_a(unsigned* a, const T* s, int m0, int k0) {
    int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    const T* p = s + (m0 + g) * LD + k0 + 2 * c;
    a[0] = fa_u32(p); a[1] = fa_u32(p + 8 * LD); a[2] = fa_u32(p + 8); a[3] = fa_u32(p + 8 * LD + 8);
}
template <int LD> __device__ __forceinline__ void fa_frag_b(unsigned* b, const T* s, int n0, int k0) {
    int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    const T* p = s + (n0 + g) * LD + k0 + 2 * c;
    b[0] = fa_u32(p); b[1] = fa_u32(p + 8); b[2] = fa_u32(p + 8 * LD); b[3] = fa_u32(p + 8 * LD + 8);
}
template <int LD> __device__ __forceinline__ void fa_frag_bt(unsigned* b, const T* s, int k0, int n0) {
    int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    const T* p = s + (k0 + 2 * c) * LD + n0 + g;
    b[0] = fa_u16x2(p, LD); b[1] = fa_u16x2(p + 8 * LD, LD); b[2] = fa_u16x2(p + 8, LD);
    b[3] = fa_u16x2(p + 8 * LD + 8, LD);
}
#endif

template <int D, bool PACKED>
__device__ __forceinline__ void fa_forward(T* out, float* lse, const T* q, const T* k, const T* v, int tokens,
                                           int heads, int kvHeads, const int* starts) {
    constexpr int LD = D + FA_PAD, G = FA_FWD_GROUPS, ROWS = FWD_ROWS_BF16;
    extern __shared__ __attribute__((aligned(16))) unsigned char fa_smem[];
    T* qs = (T*)fa_smem;
    T* ks = qs + ROWS * LD;
    T* vs = ks + FWD_KEYS * LD;
    const int tile = (int)gridDim.x - 1 - (int)blockIdx.x;
    const int h = blockIdx.y, b = blockIdx.z, kh = h / (heads / kvHeads);
    const int i0 = tile * ROWS, rowEnd = min(i0 + ROWS, tokens);   // this block's query rows: i0 ..< rowEnd
    const long long qStride = (long long)heads * D, kStride = (long long)kvHeads * D;
    const T* kg = k + (long long)b * tokens * kStride + (long long)kh * D;
    const T* vg = v + (long long)b * tokens * kStride + (long long)kh * D;
    const int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3, r0 = (threadIdx.x >> 5) * 16 * G;
    const float sl2 = fa_scale(D) * FA_LOG2E;
    const int* st = PACKED ? starts + (long long)b * tokens : nullptr;   // null: folded away unpacked
    const int jt0 = fa_start(st, i0) / FWD_KEYS, jtEnd = (rowEnd - 1) / FWD_KEYS;
    const int lastStart = fa_start(st, rowEnd - 1);
    const int warpLast = i0 + r0 + 16 * G - 1;   // this warp's last row: key tiles past it are skipped
    int rs[G][2];   // the first key of this lane's rows
#pragma unroll
    for (int gi = 0; gi < G; ++gi)
#pragma unroll
        for (int r = 0; r < 2; ++r) rs[gi][r] = fa_start(st, min(i0 + r0 + 16 * gi + g + 8 * r, tokens - 1));

    fa_load_tile<D, ROWS>(qs, q + ((long long)b * tokens + i0) * qStride + (long long)h * D, qStride, tokens - i0);
    fa_load_tile<D, FWD_KEYS>(ks, kg + (long long)jt0 * FWD_KEYS * kStride, kStride, tokens - jt0 * FWD_KEYS);
    cp_async_commit();

    float o[G][D / 8][4];
#pragma unroll
    for (int gi = 0; gi < G; ++gi)
#pragma unroll
        for (int n = 0; n < D / 8; ++n) o[gi][n][0] = o[gi][n][1] = o[gi][n][2] = o[gi][n][3] = 0.0f;
    float mrow[G][2], lrow[G][2];
#pragma unroll
    for (int gi = 0; gi < G; ++gi) mrow[gi][0] = mrow[gi][1] = -INFINITY, lrow[gi][0] = lrow[gi][1] = 0.0f;

    for (int jt = jt0; jt <= jtEnd; ++jt) {
        const int j0 = jt * FWD_KEYS;
        const bool active = j0 <= warpLast;   // warp-uniform: some row of this warp sees a key of this tile
        fa_load_tile<D, FWD_KEYS>(vs, vg + (long long)j0 * kStride, kStride, tokens - j0);
        cp_async_commit();
        cp_async_wait<1>();   // q and this key tile are in
        __syncthreads();
        float s[G][FWD_KEYS / 8][4];
#pragma unroll
        for (int gi = 0; gi < G; ++gi)
#pragma unroll
            for (int n = 0; n < FWD_KEYS / 8; ++n) s[gi][n][0] = s[gi][n][1] = s[gi][n][2] = s[gi][n][3] = 0.0f;
        if (active) {
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) {
                unsigned qa[G][4];   // q's fragments are read again for every key tile (registers are short)
#pragma unroll
                for (int gi = 0; gi < G; ++gi) fa_frag_a<LD>(qa[gi], qs, r0 + 16 * gi, kk * 16);
#pragma unroll
                for (int np = 0; np < FWD_KEYS / 16; ++np) {
                    unsigned bf[4];
                    fa_frag_b<LD>(bf, ks, np * 16, kk * 16);
#pragma unroll
                    for (int gi = 0; gi < G; ++gi) {   // each key fragment feeds every row group
                        mma_bf16(s[gi][2 * np], qa[gi], bf[0], bf[1]);
                        mma_bf16(s[gi][2 * np + 1], qa[gi], bf[2], bf[3]);
                    }
                }
            }
        }
        __syncthreads();   // every warp is done with this key tile: fetch the next one behind the softmax
        if (jt < jtEnd)
            fa_load_tile<D, FWD_KEYS>(ks, kg + (long long)(j0 + FWD_KEYS) * kStride, kStride,
                                      tokens - j0 - FWD_KEYS);
        cp_async_commit();
        if (active) {
            if (j0 + FWD_KEYS - 1 > i0 + r0 || j0 < lastStart) {
#pragma unroll
                for (int gi = 0; gi < G; ++gi)
#pragma unroll
                    for (int n = 0; n < FWD_KEYS / 8; ++n)
#pragma unroll
                        for (int e = 0; e < 4; ++e) {
                            const int col = j0 + n * 8 + 2 * c + (e & 1);
                            if (col > i0 + r0 + 16 * gi + g + 8 * (e >> 1) || col < rs[gi][e >> 1])
                                s[gi][n][e] = -INFINITY;
                        }
            }
#pragma unroll
            for (int gi = 0; gi < G; ++gi)
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    float mx = -INFINITY;
#pragma unroll
                    for (int n = 0; n < FWD_KEYS / 8; ++n)
                        mx = fmaxf(mx, fmaxf(s[gi][n][2 * r], s[gi][n][2 * r + 1]));
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                    const float mnew = fmaxf(mrow[gi][r], mx * sl2);
                    const float base = mnew == -INFINITY ? 0.0f : mnew;
                    const float alpha = fa_exp2(mrow[gi][r] - base);
                    mrow[gi][r] = mnew;
                    float sum = 0.0f;
#pragma unroll
                    for (int n = 0; n < FWD_KEYS / 8; ++n) {
                        s[gi][n][2 * r] = fa_exp2(fmaf(s[gi][n][2 * r], sl2, -base));
                        s[gi][n][2 * r + 1] = fa_exp2(fmaf(s[gi][n][2 * r + 1], sl2, -base));
                        sum += s[gi][n][2 * r] + s[gi][n][2 * r + 1];
                    }
                    lrow[gi][r] = lrow[gi][r] * alpha + sum;
#pragma unroll
                    for (int n = 0; n < D / 8; ++n) { o[gi][n][2 * r] *= alpha; o[gi][n][2 * r + 1] *= alpha; }
                }
        }
        cp_async_wait<1>();   // this value tile is in (the next key tile may still be on its way)
        __syncthreads();
        if (active) {
#pragma unroll
            for (int kk = 0; kk < FWD_KEYS / 16; ++kk) {
                unsigned a[G][4];
#pragma unroll
                for (int gi = 0; gi < G; ++gi) fa_acc_to_a(a[gi], s[gi][2 * kk], s[gi][2 * kk + 1]);
#pragma unroll
                for (int dp = 0; dp < D / 16; ++dp) {
                    unsigned bf[4];
                    fa_frag_bt<LD>(bf, vs, kk * 16, dp * 16);
#pragma unroll
                    for (int gi = 0; gi < G; ++gi) {   // each value fragment feeds every row group
                        mma_bf16(o[gi][2 * dp], a[gi], bf[0], bf[1]);
                        mma_bf16(o[gi][2 * dp + 1], a[gi], bf[2], bf[3]);
                    }
                }
            }
        }
        __syncthreads();   // done with the value tile before the next one is fetched into it
    }
#pragma unroll
    for (int gi = 0; gi < G; ++gi)
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            float l = lrow[gi][r];
            l += __shfl_xor_sync(0xffffffffu, l, 1);
            l += __shfl_xor_sync(0xffffffffu, l, 2);
            const int row = i0 + r0 + 16 * gi + g + 8 * r;
            if (row < tokens) {
                const float inv = 1.0f / l;
                T* orow = out + ((long long)b * tokens + row) * qStride + (long long)h * D;
#pragma unroll
                for (int n = 0; n < D / 8; ++n)
                    *(unsigned*)(orow + n * 8 + 2 * c) = st2(o[gi][n][2 * r] * inv, o[gi][n][2 * r + 1] * inv);
                if (c == 0) lse[((long long)b * heads + h) * tokens + row] = (mrow[gi][r] + log2f(l)) * FA_LN2;
            }
        }
}

template <int D, bool PACKED>
__device__ __forceinline__ void fa_backward_kv(T* dk, T* dv, const T* dout, const float* lse, const float* delta,
                                               const T* q, const T* k, const T* v, int tokens, int heads,
                                               int kvHeads, const int* starts, FaRope rot) {
    constexpr int LD = D + FA_PAD;
    extern __shared__ __attribute__((aligned(16))) unsigned char fa_smem[];
    T* ks = (T*)fa_smem;
    T* vs = ks + KV_KEYS * LD;
    T* qs = vs + KV_KEYS * LD;      // two buffers of KV_ROWS rows
    T* os = qs + 2 * KV_ROWS * LD;  // two buffers of KV_ROWS rows (dO)
    float* stats = (float*)(os + 2 * KV_ROWS * LD);   // two buffers of lse[KV_ROWS], delta[KV_ROWS]
    const int group = heads / kvHeads;
    const int j0 = blockIdx.x * KV_KEYS, kh = blockIdx.y, b = blockIdx.z;
    const long long qStride = (long long)heads * D, kStride = (long long)kvHeads * D;
    const int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3, kr = (threadIdx.x >> 5) * 16;
    const float scale = fa_scale(D), sl2 = scale * FA_LOG2E;
    const int firstTile = j0 / KV_ROWS;
    const int* st = PACKED ? starts + (long long)b * tokens : nullptr;   // null: folded away unpacked
    int queryTiles = (tokens + KV_ROWS - 1) / KV_ROWS - firstTile;
    // Query tiles whose first row starts past this key tile see none of it (nor do the tiles after them).
    while (st && queryTiles > 1 && st[(firstTile + queryTiles - 1) * KV_ROWS] > j0 + KV_KEYS - 1) --queryTiles;
    const int steps = group * queryTiles;

    fa_load_tile<D, KV_KEYS>(ks, k + ((long long)b * tokens + j0) * kStride + (long long)kh * D, kStride, tokens - j0);
    fa_load_tile<D, KV_KEYS>(vs, v + ((long long)b * tokens + j0) * kStride + (long long)kh * D, kStride, tokens - j0);
    // step → (query head, query tile): the heads of the group one after the other, each from the diagonal down.
    auto fetch = [&](int step, int buffer) {
        const int hh = kh * group + step / queryTiles, i0 = (firstTile + step % queryTiles) * KV_ROWS;
        const long long at = ((long long)b * tokens + i0) * qStride + (long long)hh * D;
        fa_load_tile<D, KV_ROWS>(qs + buffer * KV_ROWS * LD, q + at, qStride, tokens - i0);
        fa_load_tile<D, KV_ROWS>(os + buffer * KV_ROWS * LD, dout + at, qStride, tokens - i0);
        for (int x = threadIdx.x; x < 2 * KV_ROWS; x += FA_THREADS) {
            const int r = x % KV_ROWS;
            const bool ok = i0 + r < tokens;
            const float* src = (x < KV_ROWS ? lse : delta) + ((long long)b * heads + hh) * tokens + i0 + r;
            fa_copy4(stats + buffer * 2 * KV_ROWS + x, ok ? src : lse, ok);
        }
    };
    fetch(0, 0);
    cp_async_commit();

    float dka[D / 8][4], dva[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) { dka[n][e] = 0.0f; dva[n][e] = 0.0f; }

    for (int step = 0; step < steps; ++step) {
        const int buffer = step & 1;
        if (step + 1 < steps) fetch(step + 1, buffer ^ 1);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const int i0 = (firstTile + step % queryTiles) * KV_ROWS;
        const T* qb = qs + buffer * KV_ROWS * LD;
        const T* ob = os + buffer * KV_ROWS * LD;
        const float* sb = stats + buffer * 2 * KV_ROWS;

        float sT[KV_ROWS / 8][4], dpt[KV_ROWS / 8][4];   // Sᵀ and dPᵀ: 16 keys × KV_ROWS queries per warp
#pragma unroll
        for (int n = 0; n < KV_ROWS / 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) { sT[n][e] = 0.0f; dpt[n][e] = 0.0f; }
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            unsigned ak[4], av[4];
            fa_frag_a<LD>(ak, ks, kr, kk * 16);
            fa_frag_a<LD>(av, vs, kr, kk * 16);
#pragma unroll
            for (int np = 0; np < KV_ROWS / 16; ++np) {
                unsigned bf[4];
                fa_frag_b<LD>(bf, qb, np * 16, kk * 16);
                mma_bf16(sT[2 * np], ak, bf[0], bf[1]);
                mma_bf16(sT[2 * np + 1], ak, bf[2], bf[3]);
                fa_frag_b<LD>(bf, ob, np * 16, kk * 16);
                mma_bf16(dpt[2 * np], av, bf[0], bf[1]);
                mma_bf16(dpt[2 * np + 1], av, bf[2], bf[3]);
            }
        }
        const bool masked = i0 < j0 + KV_KEYS - 1 || i0 + KV_ROWS > tokens ||
                            fa_start(st, min(i0 + KV_ROWS, tokens) - 1) > j0;
#pragma unroll
        for (int n = 0; n < KV_ROWS / 8; ++n) {
#pragma unroll
            for (int e2 = 0; e2 < 2; ++e2) {
                const int i = i0 + n * 8 + 2 * c + e2;
                const bool inside = i < tokens;
                const int si = masked && inside ? fa_start(st, i) : 0;
                const float l2 = sb[i - i0] * FA_LOG2E, di = sb[KV_ROWS + i - i0];   // zeros past the end
#pragma unroll
                for (int r = 0; r < 2; ++r) {
                    const int e = 2 * r + e2, key = j0 + kr + g + 8 * r;
                    float p = fa_exp2(fmaf(sT[n][e], sl2, -l2));
                    if (masked && (key > i || !inside || key < si)) p = 0.0f;
                    sT[n][e] = p;
                    dpt[n][e] = p * (dpt[n][e] - di);
                }
            }
        }
#pragma unroll
        for (int kq = 0; kq < KV_ROWS / 16; ++kq) {
            unsigned ap[4], ad[4];
            fa_acc_to_a(ap, sT[2 * kq], sT[2 * kq + 1]);
            fa_acc_to_a(ad, dpt[2 * kq], dpt[2 * kq + 1]);
#pragma unroll
            for (int dp = 0; dp < D / 16; ++dp) {
                unsigned bf[4];
                fa_frag_bt<LD>(bf, ob, kq * 16, dp * 16);
                mma_bf16(dva[2 * dp], ap, bf[0], bf[1]);
                mma_bf16(dva[2 * dp + 1], ap, bf[2], bf[3]);
                fa_frag_bt<LD>(bf, qb, kq * 16, dp * 16);
                mma_bf16(dka[2 * dp], ad, bf[0], bf[1]);
                mma_bf16(dka[2 * dp + 1], ad, bf[2], bf[3]);
            }
        }
        __syncthreads();   // this buffer is refilled by the next step's fetch
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int j = j0 + kr + g + 8 * r;
        if (j < tokens) {
            const long long at = ((long long)b * tokens + j) * kStride + (long long)kh * D;
#pragma unroll
            for (int n = 0; n < D / 8; ++n) { dka[n][2 * r] *= scale; dka[n][2 * r + 1] *= scale; }
            if (rot.cosT) {   // column block n pairs with n + D/16 (column + D/2), held by the same lane
                const long long p = fa_rope_at(rot, b, tokens, j, D);
#pragma unroll
                for (int n = 0; n < D / 16; ++n)
#pragma unroll
                    for (int e = 0; e < 2; ++e)
                        fa_unrotate(dka[n][2 * r + e], dka[n + D / 16][2 * r + e], rot.cosT + p, rot.sinT + p,
                                    n * 8 + 2 * c + e);
            }
#pragma unroll
            for (int n = 0; n < D / 8; ++n) {
                *(unsigned*)(dk + at + n * 8 + 2 * c) = st2(dka[n][2 * r], dka[n][2 * r + 1]);
                *(unsigned*)(dv + at + n * 8 + 2 * c) = st2(dva[n][2 * r], dva[n][2 * r + 1]);
            }
        }
    }
}

template <int D, bool PACKED>
__device__ __forceinline__ void fa_backward_q(T* dq, const T* dout, const float* lse, const float* delta,
                                              const T* q, const T* k, const T* v, int tokens, int heads,
                                              int kvHeads, const int* starts, FaRope rot) {
    constexpr int LD = D + FA_PAD;
    extern __shared__ __attribute__((aligned(16))) unsigned char fa_smem[];
    T* qs = (T*)fa_smem;
    T* os = qs + DQ_ROWS * LD;
    T* ks = os + DQ_ROWS * LD;       // two buffers of DQ_KEYS rows
    T* vs = ks + 2 * DQ_KEYS * LD;   // two buffers of DQ_KEYS rows
    const int tile = (int)gridDim.x - 1 - (int)blockIdx.x;
    const int h = blockIdx.y, b = blockIdx.z, kh = h / (heads / kvHeads);
    const int i0 = tile * DQ_ROWS;
    const long long qStride = (long long)heads * D, kStride = (long long)kvHeads * D;
    const T* kg = k + (long long)b * tokens * kStride + (long long)kh * D;
    const T* vg = v + (long long)b * tokens * kStride + (long long)kh * D;
    const int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3, r0 = (threadIdx.x >> 5) * 16;
    const float scale = fa_scale(D), sl2 = scale * FA_LOG2E;

    const int* st = PACKED ? starts + (long long)b * tokens : nullptr;   // null: folded away unpacked
    const int jt0 = fa_start(st, i0) / DQ_KEYS, lastStart = fa_start(st, min(i0 + DQ_ROWS, tokens) - 1);
    const long long at = ((long long)b * tokens + i0) * qStride + (long long)h * D;
    fa_load_tile<D, DQ_ROWS>(qs, q + at, qStride, tokens - i0);
    fa_load_tile<D, DQ_ROWS>(os, dout + at, qStride, tokens - i0);
    {
        const int first = (jt0 & 1) * DQ_KEYS * LD;
        const long long from = (long long)jt0 * DQ_KEYS * kStride;
        fa_load_tile<D, DQ_KEYS>(ks + first, kg + from, kStride, tokens - jt0 * DQ_KEYS);
        fa_load_tile<D, DQ_KEYS>(vs + first, vg + from, kStride, tokens - jt0 * DQ_KEYS);
    }
    cp_async_commit();
    float l2[2], di[2];
    int rs[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int i = i0 + r0 + g + 8 * r;
        const long long li = ((long long)b * heads + h) * tokens + i;
        l2[r] = i < tokens ? lse[li] * FA_LOG2E : 0.0f;
        di[r] = i < tokens ? delta[li] : 0.0f;
        rs[r] = fa_start(st, min(i, tokens - 1));
    }
    float dqa[D / 8][4];
#pragma unroll
    for (int n = 0; n < D / 8; ++n) dqa[n][0] = dqa[n][1] = dqa[n][2] = dqa[n][3] = 0.0f;

    for (int jt = jt0; jt <= tile; ++jt) {   // DQ_KEYS == DQ_ROWS: key tile `tile` is the diagonal
        const int j0 = jt * DQ_KEYS, buffer = jt & 1;
        if (jt < tile) {
            const long long next = (long long)(j0 + DQ_KEYS) * kStride;
            fa_load_tile<D, DQ_KEYS>(ks + (buffer ^ 1) * DQ_KEYS * LD, kg + next, kStride, tokens - j0 - DQ_KEYS);
            fa_load_tile<D, DQ_KEYS>(vs + (buffer ^ 1) * DQ_KEYS * LD, vg + next, kStride, tokens - j0 - DQ_KEYS);
        }
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const T* kb = ks + buffer * DQ_KEYS * LD;
        const T* vb = vs + buffer * DQ_KEYS * LD;
        float s[DQ_KEYS / 8][4], dp[DQ_KEYS / 8][4];
#pragma unroll
        for (int n = 0; n < DQ_KEYS / 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) { s[n][e] = 0.0f; dp[n][e] = 0.0f; }
#pragma unroll
        for (int kk = 0; kk < D / 16; ++kk) {
            unsigned aq[4], ao[4];
            fa_frag_a<LD>(aq, qs, r0, kk * 16);
            fa_frag_a<LD>(ao, os, r0, kk * 16);
#pragma unroll
            for (int np = 0; np < DQ_KEYS / 16; ++np) {
                unsigned bf[4];
                fa_frag_b<LD>(bf, kb, np * 16, kk * 16);
                mma_bf16(s[2 * np], aq, bf[0], bf[1]);
                mma_bf16(s[2 * np + 1], aq, bf[2], bf[3]);
                fa_frag_b<LD>(bf, vb, np * 16, kk * 16);
                mma_bf16(dp[2 * np], ao, bf[0], bf[1]);
                mma_bf16(dp[2 * np + 1], ao, bf[2], bf[3]);
            }
        }
#pragma unroll
        for (int n = 0; n < DQ_KEYS / 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int r = e >> 1;
                float p = fa_exp2(fmaf(s[n][e], sl2, -l2[r]));
                const int col = j0 + n * 8 + 2 * c + (e & 1);
                if ((jt == tile || j0 < lastStart) && (col > i0 + r0 + g + 8 * r || col < rs[r])) p = 0.0f;
                s[n][e] = p * (dp[n][e] - di[r]);   // dS (the 1/√D comes at the end)
            }
#pragma unroll
        for (int kk = 0; kk < DQ_KEYS / 16; ++kk) {
            unsigned a[4];
            fa_acc_to_a(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
            for (int dd = 0; dd < D / 16; ++dd) {
                unsigned bf[4];
                fa_frag_bt<LD>(bf, kb, kk * 16, dd * 16);
                mma_bf16(dqa[2 * dd], a, bf[0], bf[1]);
                mma_bf16(dqa[2 * dd + 1], a, bf[2], bf[3]);
            }
        }
        __syncthreads();   // this buffer is refilled two steps on
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int i = i0 + r0 + g + 8 * r;
        if (i < tokens) {
            T* row = dq + ((long long)b * tokens + i) * qStride + (long long)h * D;
#pragma unroll
            for (int n = 0; n < D / 8; ++n) { dqa[n][2 * r] *= scale; dqa[n][2 * r + 1] *= scale; }
            if (rot.cosT) {
                const long long p = fa_rope_at(rot, b, tokens, i, D);
#pragma unroll
                for (int n = 0; n < D / 16; ++n)
#pragma unroll
                    for (int e = 0; e < 2; ++e)
                        fa_unrotate(dqa[n][2 * r + e], dqa[n + D / 16][2 * r + e], rot.cosT + p, rot.sinT + p,
                                    n * 8 + 2 * c + e);
            }
#pragma unroll
            for (int n = 0; n < D / 8; ++n)
                *(unsigned*)(row + n * 8 + 2 * c) = st2(dqa[n][2 * r], dqa[n][2 * r + 1]);
        }
    }
}

#else
// ---------------------------------------------------------------------------------------------------------------
// float32: plain FMAs, 16 × 16 threads
#define FA_THREADS 256
#define FA_FWD_BLOCKS 1

// Rows 0..<R of a (rows, D) slice with row stride `stride` into shared memory with row pitch LD; rows from
// `valid` on are zeros.
template <int D, int R, int LD>
__device__ __forceinline__ void fa_load_rows(float* s, const float* g, long long stride, int valid) {
    for (int x = threadIdx.x; x < R * D; x += FA_THREADS) {
        int r = x / D, col = x - r * D;
        s[r * LD + col] = r < valid ? g[r * stride + col] : 0.0f;
    }
}

__device__ __forceinline__ float fa_sum16(float v) {
    for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
__device__ __forceinline__ float fa_max16(float v) {
    for (int o = 8; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

template <int D, bool PACKED>
__device__ __forceinline__ void fa_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                                           int tokens, int heads, int kvHeads, const int* starts) {
    constexpr int LD = D + 1, E = D / 16, PL = FWD_KEYS + 1;
    extern __shared__ __attribute__((aligned(16))) unsigned char fa_smem[];
    float* qs = (float*)fa_smem;
    float* ks = qs + FWD_ROWS * LD;
    float* vs = ks + FWD_KEYS * LD;
    float* ps = vs + FWD_KEYS * LD;   // FWD_ROWS × PL
    const int tile = (int)gridDim.x - 1 - (int)blockIdx.x;
    const int h = blockIdx.y, b = blockIdx.z, kh = h / (heads / kvHeads);
    const int i0 = tile * FWD_ROWS;
    const long long qStride = (long long)heads * D, kStride = (long long)kvHeads * D;
    const float* kg = k + (long long)b * tokens * kStride + (long long)kh * D;
    const float* vg = v + (long long)b * tokens * kStride + (long long)kh * D;
    const int ty = threadIdx.x >> 4, tx = threadIdx.x & 15;
    const float sl2 = fa_scale(D) * FA_LOG2E;
    const int* st = PACKED ? starts + (long long)b * tokens : nullptr;   // null: folded away unpacked
    const int jt0 = fa_start(st, i0) / FWD_KEYS;
    int rs[4];
#pragma unroll
    for (int a = 0; a < 4; ++a) rs[a] = fa_start(st, min(i0 + ty * 4 + a, tokens - 1));

    fa_load_rows<D, FWD_ROWS, LD>(qs, q + ((long long)b * tokens + i0) * qStride + (long long)h * D, qStride,
                                  tokens - i0);
    float o[4][E], m[4], l[4];
#pragma unroll
    for (int a = 0; a < 4; ++a) {
        m[a] = -INFINITY; l[a] = 0.0f;
#pragma unroll
        for (int e = 0; e < E; ++e) o[a][e] = 0.0f;
    }
    for (int jt = jt0; jt <= tile; ++jt) {
        const int j0 = jt * FWD_KEYS;
        __syncthreads();   // the previous tile is no longer read
        fa_load_rows<D, FWD_KEYS, LD>(ks, kg + (long long)j0 * kStride, kStride, tokens - j0);
        fa_load_rows<D, FWD_KEYS, LD>(vs, vg + (long long)j0 * kStride, kStride, tokens - j0);
        __syncthreads();
        float s[4][4];
#pragma unroll
        for (int a = 0; a < 4; ++a)
#pragma unroll
            for (int cc = 0; cc < 4; ++cc) s[a][cc] = 0.0f;
#pragma unroll 4
        for (int d = 0; d < D; ++d) {
            float qa[4], kb[4];
#pragma unroll
            for (int a = 0; a < 4; ++a) qa[a] = qs[(ty * 4 + a) * LD + d];
#pragma unroll
            for (int cc = 0; cc < 4; ++cc) kb[cc] = ks[(tx + 16 * cc) * LD + d];
#pragma unroll
            for (int a = 0; a < 4; ++a)
#pragma unroll
                for (int cc = 0; cc < 4; ++cc) s[a][cc] += qa[a] * kb[cc];
        }
#pragma unroll
        for (int a = 0; a < 4; ++a) {
            const int row = i0 + ty * 4 + a;
            float mx = -INFINITY;
#pragma unroll
            for (int cc = 0; cc < 4; ++cc) {
                const int col = j0 + tx + 16 * cc;
                if ((jt == tile && col > row) || col < rs[a]) s[a][cc] = -INFINITY;
                mx = fmaxf(mx, s[a][cc]);
            }
            mx = fa_max16(mx);
            const float mnew = fmaxf(m[a], mx * sl2);
            const float base = mnew == -INFINITY ? 0.0f : mnew;
            const float alpha = fa_exp2(m[a] - base);
            m[a] = mnew;
            float sum = 0.0f;
#pragma unroll
            for (int cc = 0; cc < 4; ++cc) {
                const float p = fa_exp2(fmaf(s[a][cc], sl2, -base));
                ps[(ty * 4 + a) * PL + tx + 16 * cc] = p;
                sum += p;
            }
            l[a] = l[a] * alpha + sum;
#pragma unroll
            for (int e = 0; e < E; ++e) o[a][e] *= alpha;
        }
        __syncthreads();
#pragma unroll 4
        for (int j = 0; j < FWD_KEYS; ++j) {
            float pa[4], vb[E];
#pragma unroll
            for (int a = 0; a < 4; ++a) pa[a] = ps[(ty * 4 + a) * PL + j];
#pragma unroll
            for (int e = 0; e < E; ++e) vb[e] = vs[j * LD + tx + 16 * e];
#pragma unroll
            for (int a = 0; a < 4; ++a)
#pragma unroll
                for (int e = 0; e < E; ++e) o[a][e] += pa[a] * vb[e];
        }
    }
#pragma unroll
    for (int a = 0; a < 4; ++a) {
        const float sum = fa_sum16(l[a]);
        const int row = i0 + ty * 4 + a;
        if (row < tokens) {
            const float inv = 1.0f / sum;
            float* orow = out + ((long long)b * tokens + row) * qStride + (long long)h * D;
#pragma unroll
            for (int e = 0; e < E; ++e) orow[tx + 16 * e] = o[a][e] * inv;
            if (tx == 0) lse[((long long)b * heads + h) * tokens + row] = (m[a] + log2f(sum)) * FA_LN2;
        }
    }
}

template <int D, bool PACKED>
__device__ __forceinline__ void fa_backward_kv(float* dk, float* dv, const float* dout, const float* lse,
                                               const float* delta, const float* q, const float* k, const float* v,
                                               int tokens, int heads, int kvHeads, const int* starts,
                                               FaRope rot) {
    constexpr int LD = D + 1, E = D / 16, PL = KV_ROWS + 1, CQ = KV_ROWS / 16;
    extern __shared__ __attribute__((aligned(16))) unsigned char fa_smem[];
    float* ks = (float*)fa_smem;
    float* vs = ks + KV_KEYS * LD;
    float* qs = vs + KV_KEYS * LD;
    float* os = qs + KV_ROWS * LD;
    float* ps = os + KV_ROWS * LD;   // KV_KEYS × PL: Pᵀ
    float* ds = ps + KV_KEYS * PL;   // KV_KEYS × PL: dSᵀ
    const int group = heads / kvHeads;
    const int j0 = blockIdx.x * KV_KEYS, kh = blockIdx.y, b = blockIdx.z;
    const long long qStride = (long long)heads * D, kStride = (long long)kvHeads * D;
    const int ty = threadIdx.x >> 4, tx = threadIdx.x & 15;
    const float scale = fa_scale(D), sl2 = scale * FA_LOG2E;
    const int* st = PACKED ? starts + (long long)b * tokens : nullptr;   // null: folded away unpacked

    fa_load_rows<D, KV_KEYS, LD>(ks, k + ((long long)b * tokens + j0) * kStride + (long long)kh * D, kStride,
                                 tokens - j0);
    fa_load_rows<D, KV_KEYS, LD>(vs, v + ((long long)b * tokens + j0) * kStride + (long long)kh * D, kStride,
                                 tokens - j0);
    float dka[4][E], dva[4][E];
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int e = 0; e < E; ++e) { dka[a][e] = 0.0f; dva[a][e] = 0.0f; }

    for (int gi = 0; gi < group; ++gi) {
        const int hh = kh * group + gi;
        const float* lrow = lse + ((long long)b * heads + hh) * tokens;
        const float* drow = delta + ((long long)b * heads + hh) * tokens;
        // From the diagonal (KV_KEYS is a multiple of KV_ROWS) to the first query tile starting past these keys.
        for (int i0 = j0; i0 < tokens && fa_start(st, i0) <= j0 + KV_KEYS - 1; i0 += KV_ROWS) {
            __syncthreads();
            const long long at = ((long long)b * tokens + i0) * qStride + (long long)hh * D;
            fa_load_rows<D, KV_ROWS, LD>(qs, q + at, qStride, tokens - i0);
            fa_load_rows<D, KV_ROWS, LD>(os, dout + at, qStride, tokens - i0);
            __syncthreads();
            float sT[4][CQ], dpt[4][CQ];
#pragma unroll
            for (int a = 0; a < 4; ++a)
#pragma unroll
                for (int cc = 0; cc < CQ; ++cc) { sT[a][cc] = 0.0f; dpt[a][cc] = 0.0f; }
#pragma unroll 4
            for (int d = 0; d < D; ++d) {
                float ka[4], va[4], qb[CQ], ob[CQ];
#pragma unroll
                for (int a = 0; a < 4; ++a) { ka[a] = ks[(ty * 4 + a) * LD + d]; va[a] = vs[(ty * 4 + a) * LD + d]; }
#pragma unroll
                for (int cc = 0; cc < CQ; ++cc) {
                    qb[cc] = qs[(tx + 16 * cc) * LD + d];
                    ob[cc] = os[(tx + 16 * cc) * LD + d];
                }
#pragma unroll
                for (int a = 0; a < 4; ++a)
#pragma unroll
                    for (int cc = 0; cc < CQ; ++cc) { sT[a][cc] += ka[a] * qb[cc]; dpt[a][cc] += va[a] * ob[cc]; }
            }
#pragma unroll
            for (int cc = 0; cc < CQ; ++cc) {
                const int i = i0 + tx + 16 * cc;
                const bool inside = i < tokens;
                const float l2 = inside ? lrow[i] * FA_LOG2E : 0.0f;
                const float di = inside ? drow[i] : 0.0f;
                const int si = inside ? fa_start(st, i) : 0;
#pragma unroll
                for (int a = 0; a < 4; ++a) {
                    const int key = j0 + ty * 4 + a;
                    const bool seen = inside && key <= i && key >= si;
                    const float p = seen ? fa_exp2(fmaf(sT[a][cc], sl2, -l2)) : 0.0f;
                    ps[(ty * 4 + a) * PL + tx + 16 * cc] = p;
                    ds[(ty * 4 + a) * PL + tx + 16 * cc] = p * (dpt[a][cc] - di);
                }
            }
            __syncthreads();
#pragma unroll 4
            for (int i = 0; i < KV_ROWS; ++i) {
                float pa[4], da[4], ob[E], qb[E];
#pragma unroll
                for (int a = 0; a < 4; ++a) { pa[a] = ps[(ty * 4 + a) * PL + i]; da[a] = ds[(ty * 4 + a) * PL + i]; }
#pragma unroll
                for (int e = 0; e < E; ++e) { ob[e] = os[i * LD + tx + 16 * e]; qb[e] = qs[i * LD + tx + 16 * e]; }
#pragma unroll
                for (int a = 0; a < 4; ++a)
#pragma unroll
                    for (int e = 0; e < E; ++e) { dva[a][e] += pa[a] * ob[e]; dka[a][e] += da[a] * qb[e]; }
            }
        }
    }
#pragma unroll
    for (int a = 0; a < 4; ++a) {
        const int j = j0 + ty * 4 + a;
        if (j < tokens) {
            const long long at = ((long long)b * tokens + j) * kStride + (long long)kh * D;
#pragma unroll
            for (int e = 0; e < E; ++e) dka[a][e] *= scale;
            if (rot.cosT) {   // column tx + 16e pairs with tx + 16(e + D/32) (column + D/2)
                const long long p = fa_rope_at(rot, b, tokens, j, D);
#pragma unroll
                for (int e = 0; e < D / 32; ++e)
                    fa_unrotate(dka[a][e], dka[a][e + D / 32], rot.cosT + p, rot.sinT + p, tx + 16 * e);
            }
#pragma unroll
            for (int e = 0; e < E; ++e) {
                dk[at + tx + 16 * e] = dka[a][e];
                dv[at + tx + 16 * e] = dva[a][e];
            }
        }
    }
}

template <int D, bool PACKED>
__device__ __forceinline__ void fa_backward_q(float* dq, const float* dout, const float* lse, const float* delta,
                                              const float* q, const float* k, const float* v, int tokens, int heads,
                                              int kvHeads, const int* starts, FaRope rot) {
    constexpr int LD = D + 1, E = D / 16, PL = DQ_KEYS + 1;
    extern __shared__ __attribute__((aligned(16))) unsigned char fa_smem[];
    float* qs = (float*)fa_smem;
    float* os = qs + DQ_ROWS * LD;
    float* ks = os + DQ_ROWS * LD;
    float* vs = ks + DQ_KEYS * LD;
    float* ds = vs + DQ_KEYS * LD;   // DQ_ROWS × PL
    const int tile = (int)gridDim.x - 1 - (int)blockIdx.x;
    const int h = blockIdx.y, b = blockIdx.z, kh = h / (heads / kvHeads);
    const int i0 = tile * DQ_ROWS;
    const long long qStride = (long long)heads * D, kStride = (long long)kvHeads * D;
    const float* kg = k + (long long)b * tokens * kStride + (long long)kh * D;
    const float* vg = v + (long long)b * tokens * kStride + (long long)kh * D;
    const int ty = threadIdx.x >> 4, tx = threadIdx.x & 15;
    const float scale = fa_scale(D), sl2 = scale * FA_LOG2E;

    const long long at = ((long long)b * tokens + i0) * qStride + (long long)h * D;
    fa_load_rows<D, DQ_ROWS, LD>(qs, q + at, qStride, tokens - i0);
    fa_load_rows<D, DQ_ROWS, LD>(os, dout + at, qStride, tokens - i0);
    const int* st = PACKED ? starts + (long long)b * tokens : nullptr;   // null: folded away unpacked
    const int jt0 = fa_start(st, i0) / DQ_KEYS;
    float l2[4], di[4], dqa[4][E];
    int rs[4];
#pragma unroll
    for (int a = 0; a < 4; ++a) {
        const int i = i0 + ty * 4 + a;
        const long long li = ((long long)b * heads + h) * tokens + i;
        l2[a] = i < tokens ? lse[li] * FA_LOG2E : 0.0f;
        di[a] = i < tokens ? delta[li] : 0.0f;
        rs[a] = fa_start(st, min(i, tokens - 1));
#pragma unroll
        for (int e = 0; e < E; ++e) dqa[a][e] = 0.0f;
    }
    for (int jt = jt0; jt <= tile; ++jt) {
        const int j0 = jt * DQ_KEYS;
        __syncthreads();
        fa_load_rows<D, DQ_KEYS, LD>(ks, kg + (long long)j0 * kStride, kStride, tokens - j0);
        fa_load_rows<D, DQ_KEYS, LD>(vs, vg + (long long)j0 * kStride, kStride, tokens - j0);
        __syncthreads();
        float s[4][4], dp[4][4];
#pragma unroll
        for (int a = 0; a < 4; ++a)
#pragma unroll
            for (int cc = 0; cc < 4; ++cc) { s[a][cc] = 0.0f; dp[a][cc] = 0.0f; }
#pragma unroll 2
        for (int d = 0; d < D; ++d) {
            float qa[4], oa[4], kb[4], vb[4];
#pragma unroll
            for (int a = 0; a < 4; ++a) { qa[a] = qs[(ty * 4 + a) * LD + d]; oa[a] = os[(ty * 4 + a) * LD + d]; }
#pragma unroll
            for (int cc = 0; cc < 4; ++cc) {
                kb[cc] = ks[(tx + 16 * cc) * LD + d];
                vb[cc] = vs[(tx + 16 * cc) * LD + d];
            }
#pragma unroll
            for (int a = 0; a < 4; ++a)
#pragma unroll
                for (int cc = 0; cc < 4; ++cc) { s[a][cc] += qa[a] * kb[cc]; dp[a][cc] += oa[a] * vb[cc]; }
        }
#pragma unroll
        for (int a = 0; a < 4; ++a)
#pragma unroll
            for (int cc = 0; cc < 4; ++cc) {
                const int col = j0 + tx + 16 * cc;
                const bool seen = (jt < tile || col <= i0 + ty * 4 + a) && col >= rs[a];
                const float p = seen ? fa_exp2(fmaf(s[a][cc], sl2, -l2[a])) : 0.0f;
                ds[(ty * 4 + a) * PL + tx + 16 * cc] = p * (dp[a][cc] - di[a]);
            }
        __syncthreads();
#pragma unroll 4
        for (int j = 0; j < DQ_KEYS; ++j) {
            float da[4], kb[E];
#pragma unroll
            for (int a = 0; a < 4; ++a) da[a] = ds[(ty * 4 + a) * PL + j];
#pragma unroll
            for (int e = 0; e < E; ++e) kb[e] = ks[j * LD + tx + 16 * e];
#pragma unroll
            for (int a = 0; a < 4; ++a)
#pragma unroll
                for (int e = 0; e < E; ++e) dqa[a][e] += da[a] * kb[e];
        }
    }
#pragma unroll
    for (int a = 0; a < 4; ++a) {
        const int i = i0 + ty * 4 + a;
        if (i < tokens) {
            float* row = dq + ((long long)b * tokens + i) * qStride + (long long)h * D;
#pragma unroll
            for (int e = 0; e < E; ++e) dqa[a][e] *= scale;
            if (rot.cosT) {
                const long long p = fa_rope_at(rot, b, tokens, i, D);
#pragma unroll
                for (int e = 0; e < D / 32; ++e)
                    fa_unrotate(dqa[a][e], dqa[a][e + D / 32], rot.cosT + p, rot.sinT + p, tx + 16 * e);
            }
#pragma unroll
            for (int e = 0; e < E; ++e) row[tx + 16 * e] = dqa[a][e];
        }
    }
}
#endif

// The exported kernels, one set per head dim and layout (plain causal; packed, named _packed_); same names and
// arguments in both builds. Unpacked, `starts` is never read and its tests fold away at compile time.
#define FA_KERNEL_SET(D, PACKED, NAME)                                                                               \
    extern "C" __global__ void __launch_bounds__(FA_THREADS, FA_FWD_BLOCKS) flash_attention_forward_##NAME(        \
        T* out, float* lse, const T* q, const T* k, const T* v, int tokens, int heads, int kvHeads,                 \
        const int* starts) {                                                                                         \
        fa_forward<D, PACKED>(out, lse, q, k, v, tokens, heads, kvHeads, starts);                                    \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(FA_THREADS) flash_attention_backward_kv_##NAME(                    \
        T* dk, T* dv, const T* dout, const float* lse, const float* delta, const T* q, const T* k, const T* v,      \
        int tokens, int heads, int kvHeads, const int* starts, const float* cosT, const float* sinT,                 \
        const int* positions) {                                                                                      \
        fa_backward_kv<D, PACKED>(dk, dv, dout, lse, delta, q, k, v, tokens, heads, kvHeads, starts,                 \
                                  FaRope{cosT, sinT, positions});                                                    \
    }                                                                                                                \
    extern "C" __global__ void __launch_bounds__(FA_THREADS) flash_attention_backward_q_##NAME(                     \
        T* dq, const T* dout, const float* lse, const float* delta, const T* q, const T* k, const T* v,             \
        int tokens, int heads, int kvHeads, const int* starts, const float* cosT, const float* sinT,                 \
        const int* positions) {                                                                                      \
        fa_backward_q<D, PACKED>(dq, dout, lse, delta, q, k, v, tokens, heads, kvHeads, starts,                      \
                                 FaRope{cosT, sinT, positions});                                                     \
    }
#define FA_KERNELS(D) FA_KERNEL_SET(D, false, d##D) FA_KERNEL_SET(D, true, packed_d##D)

FA_KERNELS(32)
FA_KERNELS(64)
FA_KERNELS(96)
FA_KERNELS(128)
