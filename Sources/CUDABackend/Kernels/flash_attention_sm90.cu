// flash_attention_sm90.cu: flash attention in bf16 at head dim 128 on Hopper, with the warpgroup matrix instructions
// (wgmma, sm_90a: the Swift side compiles this file for "sm_90a" on an sm_90 device). The forward and the backward
// compute what flash_attention.cu's _d128 and _packed_d128 kernels compute, with the same arithmetic row by row (64
// keys or 64 query rows a step; the online softmax in base 2 with float32 running maxima and sums; dq and dk leave
// with RoPE undone when given the tables); their CPU twins are the same: CPUOps.flashAttentionForward and
// flashAttentionBackward. Shapes and conventions are flash_attention.cu's header's: q (B, T, H, D), k, v (B, T,
// Hkv, D), out (B, T, H, D), lse (B, H, T, float32, natural log), causal (key j seen by query i when starts[i] ≤ j ≤
// i; starts null: from 0); the backward's delta comes from flash_attention.cu's flash_attention_backward_dot.
//
// Thread mapping: a block of 256 threads is two warpgroups; warpgroup w owns query rows 64w…64w+63 of the block's
// 128-row tile, and in it warp u rows 16u…16u+15 (the lane with g = lane/4, c = lane%4 holds rows g and g+8 and
// columns 8n+2c, 8n+2c+1 of each 8-wide column block n: the accumulator layout of wgmma m64nNk16, the same as
// mma.sync m16n8 a warp). Grid (query tiles, H, B), blockIdx.x counted from the last tile (the longest rows first).
// Per 64-key step: S = Q·Kᵀ (wgmma m64n64k16, A = Q and B = K from shared memory, both K-major), the mask and the
// online softmax in registers, then O += P·V (wgmma m64n128k16, A = P from registers, rounded to bf16; B = V from
// shared memory, MN-major). All 256 threads stage the tiles with cp.async: q once, k and v double buffered.
//
// Shared memory: 64-row × 128-column bf16 tiles of 16 KiB, each two panels of 64 columns (8 KiB: 64 rows of 128
// bytes), the 16-byte chunks of a row swizzled within each 1,024-byte group of 8 rows (chunk c of row r at c ^ (r %
// 8): the 128-byte swizzle the wgmma descriptors name). q: two tiles; k, v: two stages each: 6 tiles + 1 KiB to
// align = 99,328 bytes (the Swift launcher has the same numbers).
//
// The backward is one kernel for dK, dV and dQ, so that S and dP are computed once. Its blocks are two warpgroups
// too, one block an SM: a block owns 128 keys (64 a warpgroup: k and v, two tiles each) and steps over the 64-row
// query tiles that see them (q and dO double buffered, with their lse and delta). Its mapping is the forward's with
// keys as the rows of the accumulators: it computes Sᵀ and dPᵀ, so that Pᵀ and dSᵀ feed dV += Pᵀ·dO
// and dK += dSᵀ·Q from registers. dSᵀ also goes to shared memory (bf16, 128 keys by 64 queries: 16 KiB),
// where warpgroup w reads it, transposed, for columns 64w…64w+63 of the tile's dQ share dS·K; the shares are
// summed in float32 in global memory, key block after key block in a fixed order (h_dq_step), and
// flash_attention_dq_finish rounds the sums.
// 8 tiles + 1 KiB of lse and delta + 16 KiB of dSᵀ + 1 KiB to align = 149,504 bytes.
//
// wgmma_probe: one warpgroup, checks the descriptors and layouts above on their own (check-cuda): s = a·bkᵀ
// (SS, K-major) and o = a[:, 0..<64]·bv (A from registers, B MN-major with the given leading and stride offsets).
#include "common.cuh"
#include "attention.cuh"

#if QLORA_BF16
#define H_TILE 16384          // bytes of a 64 × 128 bf16 tile
#define H_ROWS 128            // query rows per block
#define H_KEYS 64             // keys per step
#define H_MN_LBO 8192         // MN-major operand: bytes between its two 64-column panels
#define H_MN_SBO 1024         // MN-major operand: bytes between groups of 8 rows (of the k dimension)
#define H_KM_SBO 1024         // K-major operand: bytes between groups of 8 rows (of the m or n dimension)

extern __shared__ __attribute__((aligned(1024))) unsigned char h_raw[];   // dynamic shared memory

// Byte offset of 16-byte chunk c (0..<16) of row r (0..<64) in a tile.
__device__ __forceinline__ unsigned h_offset(int r, int c) {
    return (unsigned)((c >> 3) * 8192 + r * 128 + (((c & 7) ^ (r & 7)) << 4));
}
// Starts copying rows 0..<rows (a multiple of 64: rows/64 tiles back to back) of a (rows, 128) slice with row
// stride `stride` into swizzled tiles at s; rows from `valid` on are zero-filled.
__device__ __forceinline__ void h_load(unsigned char* s, const T* g, long long stride, int valid, int rows) {
    for (int i = threadIdx.x; i < rows * 16; i += blockDim.x) {
        const int r = i >> 4, c = i & 15;
        const bool ok = r < valid;
        cp_async16((T*)(s + (r >> 6) * H_TILE + h_offset(r & 63, c)), ok ? g + r * stride + c * 8 : g, ok);
    }
}
// h_load for the kernels' blocks of 256 threads and ROWS (a multiple of 16) known at compile time: thread x copies
// chunk x % 16 of rows x / 16 + 16n. Its chunks' shared offsets differ by constants (2,048 bytes a step of 16 rows in
// a tile: the swizzle's row phase r % 8 stays the thread's own), so a call costs a few instructions a chunk, where
// h_load's loop recomputes the row, the chunk and the swizzle for each.
template <int ROWS>
__device__ __forceinline__ void h_load256(unsigned char* s, const T* g, long long stride, int valid) {
    const int r0 = threadIdx.x >> 4, c = threadIdx.x & 15;
    const unsigned d = smem_address(s) + h_offset(r0, c);
    const T* src = g + r0 * stride + c * 8;
    const long long step = 16 * stride;
#pragma unroll
    for (int n = 0; n < ROWS / 16; ++n) {
        const bool ok = r0 + 16 * n < valid;
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;"
                     :: "r"(d + (n >> 2) * H_TILE + (n & 3) * 2048), "l"(ok ? src + n * step : g), "r"(ok ? 16 : 0)
                     : "memory");
    }
}
// A shared-memory matrix descriptor: start address, leading and stride byte offsets, 128-byte swizzle.
__device__ __forceinline__ unsigned long long h_desc(unsigned address, unsigned lbo, unsigned sbo) {
    return (unsigned long long)((address & 0x3FFFF) >> 4) | ((unsigned long long)(lbo >> 4) << 16) |
           ((unsigned long long)(sbo >> 4) << 32) | (1ull << 62);
}
// The same in two parts, for the kernels' loops: the low word (start address and leading offset) of a tile's
// descriptor is computed once, and the descriptor of a place `offset` bytes into the tile (a multiple of 16, inside
// the 256 KiB shared window, so that the address field cannot carry into the offset's) is that word plus offset / 16
// with the high word (stride offset, swizzle) beside it: one addition a product instead of the whole packing.
__device__ __forceinline__ unsigned h_lo(unsigned address, unsigned lbo) {
    return ((address & 0x3FFFF) >> 4) | ((lbo >> 4) << 16);
}
__device__ __forceinline__ unsigned long long h_at(unsigned lo, unsigned offset, unsigned sbo) {
    return ((unsigned long long)((sbo >> 4) | (1u << 30)) << 32) | (lo + (offset >> 4));
}
// K-major operand (a tile of rows × 128 k, its low word `lo`) at k-step kk (16 columns): panel kk/4, 32 bytes a step
// within it.
__device__ __forceinline__ unsigned long long h_kmajor(unsigned lo, int kk) {
    return h_at(lo, (kk >> 2) * 8192 + (kk & 3) * 32, H_KM_SBO);
}
// MN-major operand (its low word with H_MN_LBO) at `offset` bytes.
__device__ __forceinline__ unsigned long long h_mn(unsigned lo, unsigned offset) { return h_at(lo, offset, H_MN_SBO); }
#define H_KLO(address) h_lo(address, 16)
#define H_MNLO(address) h_lo(address, H_MN_LBO)

__device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;" ::: "memory"); }
__device__ __forceinline__ void wg_wait0() { asm volatile("wgmma.wait_group.sync.aligned 0;" ::: "memory"); }
// Keeps the compiler from moving reads or writes of accumulators across the asynchronous products.
template <int N> __device__ __forceinline__ void wg_hold(float* d) {
#pragma unroll
    for (int i = 0; i < N; ++i) asm volatile("" : "+f"(d[i]) :: "memory");
}
__device__ __forceinline__ void proxy_fence() { asm volatile("fence.proxy.async.shared::cta;" ::: "memory"); }

#define WG_D8(i) "+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
                 "+f"(d[i + 6]), "+f"(d[i + 7])
// d (64 × 64, float32) = or += a (64 × 16) · bᵀ from shared memory: MN = 0, a and b K-major; MN = 1, both
// MN-major (a stored k-row by k-row, m contiguous; b likewise, n contiguous: the instruction's transpose flags).
template <int MN>
__device__ __forceinline__ void wg_ss_n64(float* d, unsigned long long a, unsigned long long b, int accumulate) {
    asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
                 "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31}, "
                 "%32, %33, p, 1, 1, %35, %35;\n}\n"
                 : WG_D8(0), WG_D8(8), WG_D8(16), WG_D8(24)
                 : "l"(a), "l"(b), "r"(accumulate), "n"(MN));
}
// d (64 × 128, float32) += a (64 × 16, bf16 from registers, mma.sync's A layout a warp) · b, b MN-major in shared
// memory (its 128 columns contiguous in two panels).
__device__ __forceinline__ void wg_rs_n128(float* d, const unsigned* a, unsigned long long b) {
    asm volatile("{\n"
                 "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
                 "{%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
                 "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
                 "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
                 "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63}, "
                 "{%64, %65, %66, %67}, %68, 1, 1, 1, 1;\n}\n"
                 : WG_D8(0), WG_D8(8), WG_D8(16), WG_D8(24), WG_D8(32), WG_D8(40), WG_D8(48), WG_D8(56)
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(b));
}

template <bool PACKED>
__device__ __forceinline__ void h_forward(T* out, float* lse, const T* q, const T* k, const T* v, int tokens,
                                          int heads, int kvHeads, const int* starts) {
    constexpr int D = 128;
    unsigned char* sm = h_raw + ((1024u - (smem_address(h_raw) & 1023u)) & 1023u);
    unsigned char* qs = sm;                 // two tiles: the block's 128 query rows
    unsigned char* ks = sm + 2 * H_TILE;    // two stages
    unsigned char* vs = sm + 4 * H_TILE;    // two stages
    const int tile = (int)gridDim.x - 1 - (int)blockIdx.x;
    const int h = blockIdx.y, b = blockIdx.z, kh = h / (heads / kvHeads);
    const int i0 = tile * H_ROWS, rowEnd = min(i0 + H_ROWS, tokens);
    const long long qStride = (long long)heads * D, kStride = (long long)kvHeads * D;
    const T* kg = k + (long long)b * tokens * kStride + (long long)kh * D;
    const T* vg = v + (long long)b * tokens * kStride + (long long)kh * D;
    const int wg = threadIdx.x >> 7, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    const int rowBase = i0 + 64 * wg + 16 * ((threadIdx.x >> 5) & 3);   // this warp's first row
    const int wgLast = i0 + 64 * wg + 63;                               // this warpgroup's last row
    const float sl2 = fa_scale(D) * FA_LOG2E;
    const int* st = PACKED ? starts + (long long)b * tokens : nullptr;
    const int jt0 = fa_start(st, i0) / H_KEYS, jtEnd = (rowEnd - 1) / H_KEYS;
    const int lastStart = fa_start(st, rowEnd - 1);
    int rs[2];   // the first key of this lane's rows
#pragma unroll
    for (int r = 0; r < 2; ++r) rs[r] = fa_start(st, min(rowBase + g + 8 * r, tokens - 1));

    h_load256<H_ROWS>(qs, q + ((long long)b * tokens + i0) * qStride + (long long)h * D, qStride, tokens - i0);
    h_load256<H_KEYS>(ks, kg + (long long)jt0 * H_KEYS * kStride, kStride, tokens - jt0 * H_KEYS);
    h_load256<H_KEYS>(vs, vg + (long long)jt0 * H_KEYS * kStride, kStride, tokens - jt0 * H_KEYS);
    cp_async_commit();

    float o[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) o[i] = 0.0f;
    float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.0f, 0.0f};
    const unsigned qTile = smem_address(qs + wg * H_TILE);
    const unsigned qLo = H_KLO(qTile);
    for (int jt = jt0; jt <= jtEnd; ++jt) {
        const int stage = (jt - jt0) & 1, j0 = jt * H_KEYS;
        cp_async_wait<0>();   // this step's tiles are in (the only copies in flight)
        proxy_fence();        // visible to the tensor cores' reads
        __syncthreads();      // ... and both warpgroups are done with the other stage, which the next tiles fill
        if (jt < jtEnd) {     // the next key and value tiles, behind this step's products
            const int j1 = j0 + H_KEYS;
            h_load256<H_KEYS>(ks + (stage ^ 1) * H_TILE, kg + (long long)j1 * kStride, kStride, tokens - j1);
            h_load256<H_KEYS>(vs + (stage ^ 1) * H_TILE, vg + (long long)j1 * kStride, kStride, tokens - j1);
        }
        cp_async_commit();
        if (j0 <= wgLast) {   // warpgroup-uniform: some row of this warpgroup sees a key of this tile
            float s[32];
#pragma unroll
            for (int i = 0; i < 32; ++i) s[i] = 0.0f;
            const unsigned kTile = smem_address(ks + stage * H_TILE);
            wg_hold<32>(s);
            wg_fence();
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) wg_ss_n64<0>(s, h_kmajor(qLo, kk), h_kmajor(H_KLO(kTile), kk), kk > 0);
            wg_commit();
            wg_wait0();
            wg_hold<32>(s);
            if (j0 + H_KEYS - 1 > rowBase || j0 < lastStart) {
#pragma unroll
                for (int n = 0; n < 8; ++n)
#pragma unroll
                    for (int e = 0; e < 4; ++e) {
                        const int col = j0 + n * 8 + 2 * c + (e & 1);
                        if (col > rowBase + g + 8 * (e >> 1) || col < rs[e >> 1]) s[4 * n + e] = -INFINITY;
                    }
            }
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                float mx = -INFINITY;
#pragma unroll
                for (int n = 0; n < 8; ++n) mx = fmaxf(mx, fmaxf(s[4 * n + 2 * r], s[4 * n + 2 * r + 1]));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
                mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
                const float mnew = fmaxf(mrow[r], mx * sl2);
                const float base = mnew == -INFINITY ? 0.0f : mnew;
                const float alpha = fa_exp2(mrow[r] - base);
                mrow[r] = mnew;
                float sum = 0.0f;
#pragma unroll
                for (int n = 0; n < 8; ++n) {
                    s[4 * n + 2 * r] = fa_exp2(fmaf(s[4 * n + 2 * r], sl2, -base));
                    s[4 * n + 2 * r + 1] = fa_exp2(fmaf(s[4 * n + 2 * r + 1], sl2, -base));
                    sum += s[4 * n + 2 * r] + s[4 * n + 2 * r + 1];
                }
                lrow[r] = lrow[r] * alpha + sum;
#pragma unroll
                for (int n = 0; n < 16; ++n) { o[4 * n + 2 * r] *= alpha; o[4 * n + 2 * r + 1] *= alpha; }
            }
            unsigned pa[4][4];
#pragma unroll
            for (int kk = 0; kk < 4; ++kk) fa_acc_to_a(pa[kk], s + 8 * kk, s + 8 * kk + 4);
            const unsigned vTile = smem_address(vs + stage * H_TILE);
            wg_hold<64>(o);
            wg_fence();
#pragma unroll
            for (int kk = 0; kk < 4; ++kk) wg_rs_n128(o, pa[kk], h_mn(H_MNLO(vTile), kk * 2048));
            wg_commit();
            wg_wait0();
            wg_hold<64>(o);
        }
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        float l = lrow[r];
        l += __shfl_xor_sync(0xffffffffu, l, 1);
        l += __shfl_xor_sync(0xffffffffu, l, 2);
        const int row = rowBase + g + 8 * r;
        if (row < tokens) {
            const float inv = 1.0f / l;
            T* orow = out + ((long long)b * tokens + row) * qStride + (long long)h * D;
#pragma unroll
            for (int n = 0; n < 16; ++n)
                *(unsigned*)(orow + n * 8 + 2 * c) = st2(o[4 * n + 2 * r] * inv, o[4 * n + 2 * r + 1] * inv);
            if (c == 0) lse[((long long)b * heads + h) * tokens + row] = (mrow[r] + log2f(l)) * FA_LN2;
        }
    }
}

extern "C" __global__ void __launch_bounds__(256, 2)
flash_attention_forward_wgmma_d128(T* out, float* lse, const T* q, const T* k, const T* v, int tokens, int heads,
                                   int kvHeads, const int* starts) {
    h_forward<false>(out, lse, q, k, v, tokens, heads, kvHeads, starts);
}
extern "C" __global__ void __launch_bounds__(256, 2)
flash_attention_forward_wgmma_packed_d128(T* out, float* lse, const T* q, const T* k, const T* v, int tokens,
                                          int heads, int kvHeads, const int* starts) {
    h_forward<true>(out, lse, q, k, v, tokens, heads, kvHeads, starts);
}

__device__ __forceinline__ int h_acquire(const int* p) {
    int v;
    asm volatile("ld.acquire.gpu.global.s32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ void h_release(int* p) {
    asm volatile("red.release.gpu.global.add.s32 [%0], 1;" :: "l"(p) : "memory");
}

// The backward's dQ for one (key block, 64-row query tile) step: warpgroup w computes columns 64w…64w+63 of dS·K
// (64 queries by 128 keys by 128 columns; dSᵀ in shared memory as `dsT` holds it, K as the block's two key tiles
// at `kTiles`) and adds them to the float32 accumulator `dq` (row i of the tile at dq + (i0 + i)·H·128). Key blocks
// add to a query tile one at a time, the block of the highest keys first: thread 0 waits until `arrival` reaches
// `order` (the number of blocks with higher keys that see the tile; `seen`: what it last read there); the first
// writes instead of adding, so the accumulator needs no clearing and the sums come in the same order every run.
// Thread 0 counts the previous step's arrival (`pending`, its writes behind the barrier that ended that step) here,
// a step late, so that the release finds them long done.
__device__ __forceinline__ void h_dq_step(float* dq, const int* arrival, int order, int seen, int* pending,
                                          const unsigned char* dsT, unsigned kTiles, int i0, int tokens, int heads) {
    const int wg = threadIdx.x >> 7, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
#if FA_DQ_UNORDERED   // a measurement only (QLORA_KERNEL_DEFINES): adds in any order into zeroed sums
    order = 1;
#else
    if (threadIdx.x == 0) {
        if (pending) h_release(pending);
        while (seen < order) seen = h_acquire(arrival);
    }
#endif
    proxy_fence();   // dSᵀ, written by both warpgroups, visible to the tensor cores
    __syncthreads();
    float d[32];
#pragma unroll
    for (int i = 0; i < 32; ++i) d[i] = 0.0f;
    const unsigned ds = smem_address(dsT);
    wg_hold<32>(d);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < 8; ++kk)
        wg_ss_n64<1>(d, h_mn(H_MNLO(ds), (kk >> 2) * 8192 + (kk & 3) * 2048),
                     h_mn(H_MNLO(kTiles + wg * 8192), (kk >> 2) * H_TILE + (kk & 3) * 2048), kk > 0);
    wg_commit();
    wg_wait0();
    wg_hold<32>(d);
    // Lanes c and c ^ 1 trade halves: the even one takes columns 8n + 2c … + 3 of row g, the odd one columns
    // 8n + 2(c − 1) … + 3 of row g + 8, so that each writes 16 bytes at a time.
    const bool odd = c & 1;
    const int i = i0 + 16 * ((threadIdx.x >> 5) & 3) + g + (odd ? 8 : 0);
    float* row = dq + (long long)i * heads * 128 + 64 * wg + 2 * (c & 2);
#pragma unroll
    for (int n = 0; n < 8; ++n) {   // d[4n … 4n + 3] becomes the 4 columns this lane writes
        const float give0 = odd ? d[4 * n] : d[4 * n + 2], give1 = odd ? d[4 * n + 1] : d[4 * n + 3];
        const float got0 = __shfl_xor_sync(0xffffffffu, give0, 1), got1 = __shfl_xor_sync(0xffffffffu, give1, 1);
        if (odd) { d[4 * n] = got0; d[4 * n + 1] = got1; }
        else { d[4 * n + 2] = got0; d[4 * n + 3] = got1; }
    }
    if (i >= tokens) return;
    if (order == 0) {
#pragma unroll
        for (int n = 0; n < 8; ++n)
            *(float4*)(row + 8 * n) = make_float4(d[4 * n], d[4 * n + 1], d[4 * n + 2], d[4 * n + 3]);
    } else {
#pragma unroll
        for (int n = 0; n < 8; ++n)
            asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};"
                         :: "l"(row + 8 * n), "f"(d[4 * n]), "f"(d[4 * n + 1]), "f"(d[4 * n + 2]), "f"(d[4 * n + 3])
                         : "memory");
    }
}

// The backward's Pᵀ and dSᵀ in place of this lane's Sᵀ and dPᵀ (keys `key` and key + 8, query columns 8n + 2c and
// + 1 of the tile at i0; `sb`: the tile's lse (natural log) and delta): p = 2^(s·sl2 − lse·log₂e), dS = p·(dP − delta).
// MASKED zeroes p where the query does not see the key (before it, before its document, or past the sequence's end).
template <bool MASKED, int ROWS>
__device__ __forceinline__ void h_probabilities(float* sT, float* dpt, const float* sb, int i0, int key, int c,
                                                int tokens, const int* st, float sl2) {
#pragma unroll
    for (int n = 0; n < ROWS / 8; ++n)
#pragma unroll
        for (int e2 = 0; e2 < 2; ++e2) {
            const int col = n * 8 + 2 * c + e2, i = i0 + col;
            const float l2 = sb[col] * FA_LOG2E, di = sb[ROWS + col];   // zeros past the end
            const bool inside = !MASKED || i < tokens;
            const int si = MASKED && inside ? fa_start(st, i) : 0;
#pragma unroll
            for (int r = 0; r < 2; ++r) {
                const int e = 4 * n + 2 * r + e2, kr = key + 8 * r;
                float p = fa_exp2(fmaf(sT[e], sl2, -l2));
                if (MASKED && (kr > i || !inside || kr < si)) p = 0.0f;
                sT[e] = p;
                dpt[e] = p * (dpt[e] - di);
            }
        }
}

// The backward: warpgroup w owns keys 64w…64w+63 of the block's 128; a step is one (query head of the KV group,
// 64-row query tile), from the diagonal on. Sᵀ = K·Qᵀ and dPᵀ = V·dOᵀ (m64n64k16, all operands K-major in
// shared memory), Pᵀ and dSᵀ in registers, then dV += Pᵀ·dO and dK += dSᵀ·Q (m64n128k16, A from registers,
// dO and Q MN-major), and dSᵀ through shared memory to h_dq_step for the tile's share of dQ.
template <bool PACKED, bool SPLIT>
__device__ __forceinline__ void h_backward(T* dk, T* dv, const T* dout, const float* lse, const float* delta,
                                           const T* q, const T* k, const T* v, int tokens, int heads, int kvHeads,
                                           const int* starts, FaRope rot, float* dqa, int* arrivals,
                                           float* dkva, int* kvArrivals) {
    constexpr int D = 128, KEYS = 128, ROWS = 64;
    unsigned char* sm = h_raw + ((1024u - (smem_address(h_raw) & 1023u)) & 1023u);
    unsigned char* ks = sm;                         // two tiles: the block's keys
    unsigned char* vs = ks + 2 * H_TILE;            // two tiles
    unsigned char* qs = vs + 2 * H_TILE;            // two stages of a query tile
    unsigned char* os = qs + 2 * H_TILE;            // two stages of dO
    float* stats = (float*)(os + 2 * H_TILE);       // two stages of lse[64], delta[64]
    unsigned char* dsT = (unsigned char*)(stats + 4 * ROWS);   // dSᵀ, 128 keys × 64 queries (two panels)
    // SPLIT: blockIdx.y is a query head, and the block's dK and dV are its share, summed over the KV group's
    // heads in float32 (dkva) in head order; otherwise blockIdx.y is a KV head and the block takes its group's heads.
    const int group = SPLIT ? 1 : heads / kvHeads;
    const int j0 = blockIdx.x * KEYS, kh = SPLIT ? blockIdx.y / (heads / kvHeads) : blockIdx.y, b = blockIdx.z;
    const int headBase = SPLIT ? blockIdx.y : kh * group;   // the block's first query head
    const long long qStride = (long long)heads * D, kStride = (long long)kvHeads * D;
    const int wg = threadIdx.x >> 7, lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3;
    const int kw = j0 + 64 * wg, kr = kw + 16 * ((threadIdx.x >> 5) & 3);   // the warpgroup's, the warp's first key
    const float scale = fa_scale(D), sl2 = scale * FA_LOG2E;
    const int firstTile = j0 / ROWS;
    const int* st = PACKED ? starts + (long long)b * tokens : nullptr;
    int queryTiles = (tokens + ROWS - 1) / ROWS - firstTile;
    // Query tiles whose first row starts past this block's keys see none of them (nor do the tiles after them).
    while (st && queryTiles > 1 && st[(firstTile + queryTiles - 1) * ROWS] > j0 + KEYS - 1) --queryTiles;
    const int steps = group * queryTiles;
    int* pending = nullptr;   // thread 0: the arrival of the last step, not yet counted

    h_load256<KEYS>(ks, k + ((long long)b * tokens + j0) * kStride + (long long)kh * D, kStride, tokens - j0);
    h_load256<KEYS>(vs, v + ((long long)b * tokens + j0) * kStride + (long long)kh * D, kStride, tokens - j0);
    auto fetch = [&](int step, int buffer) {
        const int hh = headBase + step / queryTiles, i0 = (firstTile + step % queryTiles) * ROWS;
        const long long at = ((long long)b * tokens + i0) * qStride + (long long)hh * D;
        h_load256<ROWS>(qs + buffer * H_TILE, q + at, qStride, tokens - i0);
        h_load256<ROWS>(os + buffer * H_TILE, dout + at, qStride, tokens - i0);
        for (int x = threadIdx.x; x < 2 * ROWS; x += blockDim.x) {
            const int r = x % ROWS;
            const bool ok = i0 + r < tokens;
            const float* src = (x < ROWS ? lse : delta) + ((long long)b * heads + hh) * tokens + i0 + r;
            fa_copy4(stats + buffer * 2 * ROWS + x, ok ? src : lse, ok);
        }
    };
    fetch(0, 0);
    cp_async_commit();

    float dka[64], dva[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) { dka[i] = 0.0f; dva[i] = 0.0f; }
    const unsigned kTile = smem_address(ks + wg * H_TILE), vTile = smem_address(vs + wg * H_TILE);
    const unsigned kLo = H_KLO(kTile), vLo = H_KLO(vTile);
    for (int step = 0; step < steps; ++step) {
        const int buffer = step & 1;
        cp_async_wait<0>();   // this step's tiles are in (the only copies in flight)
        proxy_fence();
        // ... and every thread is done with the previous step: its stage (refilled next), its dSᵀ (written again
        // below) and its dQ adds (which thread 0 counts in this step's h_dq_step).
        __syncthreads();
        if (step + 1 < steps) fetch(step + 1, buffer ^ 1);
        cp_async_commit();
        const int i0 = (firstTile + step % queryTiles) * ROWS;
        // This step's query tile's arrival count, read early by thread 0 (its latency behind the products).
        const int hh = headBase + step / queryTiles, order = (i0 / ROWS >> 1) - (int)blockIdx.x;
        int* arrival = arrivals + ((long long)b * heads + hh) * ((tokens + ROWS - 1) / ROWS) + i0 / ROWS;
        int seen = 0;
        if (threadIdx.x == 0 && order > 0) seen = h_acquire(arrival);
        // Every warpgroup computes every step, the one whose keys the tile cannot see too (its mask gives zeros), so
        // that no branch depends on the warpgroup and the products of dV and dK run on while dQ's are issued.
        {
            const unsigned qTile = smem_address(qs + buffer * H_TILE), oTile = smem_address(os + buffer * H_TILE);
            const float* sb = stats + buffer * 2 * ROWS;
            float sT[32], dpt[32];   // Sᵀ and dPᵀ: 64 keys × 64 queries a warpgroup
#pragma unroll
            for (int i = 0; i < 32; ++i) { sT[i] = 0.0f; dpt[i] = 0.0f; }
            wg_hold<32>(sT);
            wg_hold<32>(dpt);
            wg_fence();
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk) wg_ss_n64<0>(sT, h_kmajor(kLo, kk), h_kmajor(H_KLO(qTile), kk), kk > 0);
#pragma unroll
            for (int kk = 0; kk < D / 16; ++kk)
                wg_ss_n64<0>(dpt, h_kmajor(vLo, kk), h_kmajor(H_KLO(oTile), kk), kk > 0);
            wg_commit();
            wg_wait0();
            wg_hold<32>(sT);
            wg_hold<32>(dpt);
            // Warp-uniform: whether some key of this warp is not seen by some query of the tile (the diagonal, the
            // end of the sequence, documents); most steps take the plain path, without the per-element tests.
            const bool masked = i0 < kr + 15 || i0 + ROWS > tokens || fa_start(st, min(i0 + ROWS, tokens) - 1) > kr;
            if (masked) h_probabilities<true, ROWS>(sT, dpt, sb, i0, kr + g, c, tokens, st, sl2);
            else h_probabilities<false, ROWS>(sT, dpt, sb, i0, kr + g, c, tokens, st, sl2);
            unsigned ap[4][4], ad[4][4];
#pragma unroll
            for (int kq = 0; kq < 4; ++kq) {
                fa_acc_to_a(ap[kq], sT + 8 * kq, sT + 8 * kq + 4);
                fa_acc_to_a(ad[kq], dpt + 8 * kq, dpt + 8 * kq + 4);
            }
            {   // dSᵀ rows (keys) g and g + 8 of this warp, query columns 8n + 2c, + 1, in bf16
                const int key = 64 * wg + 16 * ((threadIdx.x >> 5) & 3) + g;   // key % 8 == g
#pragma unroll
                for (int kq = 0; kq < 4; ++kq)
#pragma unroll
                    for (int x = 0; x < 4; ++x) {
                        const int n = 2 * kq + (x >> 1), row = key + 8 * (x & 1);
                        *(unsigned*)(dsT + (row >> 6) * 8192 + (row & 63) * 128 + ((n ^ g) << 4) + 4 * c) = ad[kq][x];
                    }
            }
            wg_hold<64>(dva);
            wg_hold<64>(dka);
            wg_fence();
#pragma unroll
            for (int kq = 0; kq < 4; ++kq) wg_rs_n128(dva, ap[kq], h_mn(H_MNLO(oTile), kq * 2048));
#pragma unroll
            for (int kq = 0; kq < 4; ++kq) wg_rs_n128(dka, ad[kq], h_mn(H_MNLO(qTile), kq * 2048));
            wg_commit();
        }
        // h_dq_step's wait covers the products of dV and dK too.
        h_dq_step(dqa + ((long long)b * tokens * heads + hh) * D, arrival, order, seen, pending, dsT,
                  smem_address(ks), i0, tokens, heads);
        wg_hold<64>(dva);
        wg_hold<64>(dka);
        pending = threadIdx.x == 0 ? arrival : nullptr;
    }
    __syncthreads();   // every thread's dQ adds of the last step are issued before thread 0 counts them
    if (pending) h_release(pending);
    if (SPLIT) {   // this head's dK and dV added to the group's float32 sums after the heads before it in the group
        const int r = blockIdx.y % (heads / kvHeads);
        int* arrival = kvArrivals + ((long long)b * kvHeads + kh) * gridDim.x + blockIdx.x;
        if (threadIdx.x == 0 && r > 0) { int seen = 0; while (seen < r) seen = h_acquire(arrival); }
        __syncthreads();
        const long long half = (long long)gridDim.z * tokens * kStride;   // dV's sums follow dK's
#pragma unroll
        for (int e = 0; e < 2; ++e) {
            const int j = kr + g + 8 * e;
            if (j >= tokens) continue;
            float* row = dkva + ((long long)b * tokens + j) * kStride + (long long)kh * D + 2 * c;
#pragma unroll
            for (int n = 0; n < 16; ++n) {
                if (r == 0) {
                    *(float2*)(row + n * 8) = make_float2(dka[4 * n + 2 * e], dka[4 * n + 2 * e + 1]);
                    *(float2*)(row + half + n * 8) = make_float2(dva[4 * n + 2 * e], dva[4 * n + 2 * e + 1]);
                } else {
                    asm volatile("red.global.add.v2.f32 [%0], {%1, %2};"
                                 :: "l"(row + n * 8), "f"(dka[4 * n + 2 * e]), "f"(dka[4 * n + 2 * e + 1]) : "memory");
                    asm volatile("red.global.add.v2.f32 [%0], {%1, %2};"
                                 :: "l"(row + half + n * 8), "f"(dva[4 * n + 2 * e]), "f"(dva[4 * n + 2 * e + 1])
                                 : "memory");
                }
            }
        }
        __syncthreads();
        if (threadIdx.x == 0) h_release(arrival);
        return;
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int j = kr + g + 8 * r;
        if (j < tokens) {
            const long long at = ((long long)b * tokens + j) * kStride + (long long)kh * D;
#pragma unroll
            for (int n = 0; n < 16; ++n) { dka[4 * n + 2 * r] *= scale; dka[4 * n + 2 * r + 1] *= scale; }
            if (rot.cosT) {   // column block n pairs with n + 8 (column + 64), held by the same lane
                const long long p = fa_rope_at(rot, b, tokens, j, D);
#pragma unroll
                for (int n = 0; n < 8; ++n)
#pragma unroll
                    for (int e = 0; e < 2; ++e)
                        fa_unrotate(dka[4 * n + 2 * r + e], dka[4 * (n + 8) + 2 * r + e], rot.cosT + p, rot.sinT + p,
                                    n * 8 + 2 * c + e);
            }
#pragma unroll
            for (int n = 0; n < 16; ++n) {
                *(unsigned*)(dk + at + n * 8 + 2 * c) = st2(dka[4 * n + 2 * r], dka[4 * n + 2 * r + 1]);
                *(unsigned*)(dv + at + n * 8 + 2 * c) = st2(dva[4 * n + 2 * r], dva[4 * n + 2 * r + 1]);
            }
        }
    }
}

// The backward: dK and dV, and each step's dS·K added to the float32 dq accumulator `dqa` (B, T, H, 128), which
// flash_attention_dq_finish turns into dq. `arrivals`: B·H·⌈T/64⌉ zeros. One block an SM.
#define H_BACKWARD(NAME, PACKED, SPLIT)                                                                             \
    extern "C" __global__ void __launch_bounds__(256, 1) flash_attention_backward_wgmma_##NAME(                     \
        T* dk, T* dv, float* dqa, int* arrivals, const T* dout, const float* lse, const float* delta, const T* q,   \
        const T* k, const T* v, int tokens, int heads, int kvHeads, const int* starts, const float* cosT,           \
        const float* sinT, const int* positions, float* dkva, int* kvArrivals) {                                    \
        h_backward<PACKED, SPLIT>(dk, dv, dout, lse, delta, q, k, v, tokens, heads, kvHeads, starts,                \
                                  FaRope{cosT, sinT, positions}, dqa, arrivals, dkva, kvArrivals);                  \
    }
H_BACKWARD(d128, false, false)
H_BACKWARD(packed_d128, true, false)
// The split form for grouped-query attention (a block a query head, not a KV group: blocks of a KV group's four
// heads are four times as long, and the last wave's tail was ~30% of the kernel; see CUDAOps+FlashAttention.swift):
// dK and dV leave as float32 sums in dkva (B, T, Hkv, 128, dK's then dV's), which flash_attention_dq_finish (dK:
// scaled, RoPE undone) and a cast (dV) round. kvArrivals: B·Hkv·⌈T/128⌉ zeros.
H_BACKWARD(split_d128, false, true)
H_BACKWARD(split_packed_d128, true, true)

// dq (B, T, H, 128) from the backward's float32 sums: scaled by 1/√128, RoPE undone with the tables (as the dQ
// kernels leave it), rounded to bf16. Thread x of a block of 256: columns 4(x % 16) … + 3 and the 4 after column 64
// (their RoPE partners) of row r = 16·block + x / 16, the row (b·T + t)·H + h: 16-byte loads, 8-byte stores.
extern "C" __global__ void __launch_bounds__(256) flash_attention_dq_finish(T* dq, const float* dqa, int tokens,
                                                                           int heads, long long rows,
                                                                           const float* cosT, const float* sinT,
                                                                           const int* positions) {
    const long long r = 16ll * blockIdx.x + (threadIdx.x >> 4);
    if (r >= rows) return;
    const int x = 4 * (threadIdx.x & 15), t = (int)((r / heads) % tokens), b = (int)(r / ((long long)heads * tokens));
    const float scale = fa_scale(128);
    const float4 u = *(const float4*)(dqa + r * 128 + x), w = *(const float4*)(dqa + r * 128 + x + 64);
    float g1[4] = {u.x * scale, u.y * scale, u.z * scale, u.w * scale};
    float g2[4] = {w.x * scale, w.y * scale, w.z * scale, w.w * scale};
    if (cosT) {
        const long long p = fa_rope_at(FaRope{cosT, sinT, positions}, b, tokens, t, 128);
#pragma unroll
        for (int e = 0; e < 4; ++e) fa_unrotate(g1[e], g2[e], cosT + p, sinT + p, x + e);
    }
    *(uint2*)(dq + r * 128 + x) = make_uint2(st2(g1[0], g1[1]), st2(g1[2], g1[3]));
    *(uint2*)(dq + r * 128 + x + 64) = make_uint2(st2(g2[0], g2[1]), st2(g2[2], g2[3]));
}

// One warpgroup: s (64 × 64, float32, row-major) = a · bkᵀ and o (64 × 128) = a[:, 0..<64] · bv, with a, bk, bv
// (64 × 128 bf16, row-major) staged as the kernels stage them; bv's descriptor takes `lbo` and `sbo`.
extern "C" __global__ void __launch_bounds__(128) wgmma_probe(float* s, float* o, const T* a, const T* bk,
                                                              const T* bv, unsigned lbo, unsigned sbo) {
    unsigned char* sm = h_raw + ((1024u - (smem_address(h_raw) & 1023u)) & 1023u);
    h_load(sm, a, 128, 64, 64);
    h_load(sm + H_TILE, bk, 128, 64, 64);
    h_load(sm + 2 * H_TILE, bv, 128, 64, 64);
    cp_async_commit();
    cp_async_wait<0>();
    proxy_fence();
    __syncthreads();
    const int lane = threadIdx.x & 31, g = lane >> 2, c = lane & 3, r0 = 16 * (threadIdx.x >> 5);
    float d[32], e[64];
#pragma unroll
    for (int i = 0; i < 32; ++i) d[i] = 0.0f;
#pragma unroll
    for (int i = 0; i < 64; ++i) e[i] = 0.0f;
    unsigned frag[4][4];   // a[:, 16kk ..< 16kk + 16] in the A layout, from global memory
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
        const T* p = a + (r0 + g) * 128 + 16 * kk + 2 * c;
        frag[kk][0] = *(const unsigned*)p; frag[kk][1] = *(const unsigned*)(p + 8 * 128);
        frag[kk][2] = *(const unsigned*)(p + 8); frag[kk][3] = *(const unsigned*)(p + 8 * 128 + 8);
    }
    const unsigned at = smem_address(sm), bt = smem_address(sm + H_TILE), vt = smem_address(sm + 2 * H_TILE);
    wg_hold<32>(d);
    wg_hold<64>(e);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < 8; ++kk) wg_ss_n64<0>(d, h_kmajor(H_KLO(at), kk), h_kmajor(H_KLO(bt), kk), kk > 0);
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) wg_rs_n128(e, frag[kk], h_desc(vt + kk * 2048, lbo, sbo));
    wg_commit();
    wg_wait0();
    wg_hold<32>(d);
    wg_hold<64>(e);
#pragma unroll
    for (int i = 0; i < 32; ++i) s[(r0 + g + 8 * ((i >> 1) & 1)) * 64 + (i >> 2) * 8 + 2 * c + (i & 1)] = d[i];
#pragma unroll
    for (int i = 0; i < 64; ++i) o[(r0 + g + 8 * ((i >> 1) & 1)) * 128 + (i >> 2) * 8 + 2 * c + (i & 1)] = e[i];
}
#endif
