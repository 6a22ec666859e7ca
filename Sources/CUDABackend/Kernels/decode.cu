// decode.cu: the key/value cache of generation (CPU twins: CPUOps.kvCacheWrite and CPUOps.decodeAttention in
// Sources/CPUBackend/DecodeAttention.swift).
//
// The cache of one layer holds keys (or values) as (B, capacity, W) with W = Hkv·D: row b, position p.
//
// kv_cache_write: cache[b, at[b] + t, :] = src[b, t, :] for t < n (src is (B, n, W)): a prompt's n keys written
// from position 0, or one new token's key at its sequence's length. One thread per 8 consecutive elements of W.
//
// decode_attention: one query token per sequence, q (B, H, D) already rotated, attending to the first lengths[b]
// positions of its row of the cache (head h reads KV head h / (H / Hkv)): out (B, H, D) = Σ_j softmax_j(q·k_j / √D)
// v_j. One block of DECODE_WARPS warps per (head, sequence); warp w takes keys w, w + DECODE_WARPS, …; its lanes hold
// D/32 consecutive elements of q, of each key and of the output (D = 32·k, k ≤ 4), the dot product is summed by
// shuffles, and each warp keeps its own running maximum, sum and output (online softmax, natural exp). The warps'
// partial results are then merged in shared memory by the first warp.
#include "common.cuh"

#define DECODE_WARPS 8

extern "C" __global__ void kv_cache_write(T* cache, const T* src, const int* at, int batch, int n, int width,
                                          int capacity) {
    const int groups = (width + 7) / 8;
    long long idx = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (long long)batch * n * groups) return;
    const int c0 = (int)(idx % groups) * 8;
    const long long bt = idx / groups;
    const int b = (int)(bt / n), t = (int)(bt % n);
    const T* from = src + bt * width + c0;
    T* to = cache + ((long long)b * capacity + at[b] + t) * width + c0;
    for (int e = 0; e < 8 && c0 + e < width; ++e) to[e] = from[e];
}

extern "C" __global__ void __launch_bounds__(32 * DECODE_WARPS) decode_attention(
    T* out, const T* q, const T* keys, const T* values, const int* lengths, int heads, int kvHeads, int headDim,
    int capacity) {
    const int h = blockIdx.x, b = blockIdx.y, kh = h / (heads / kvHeads);
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, per = headDim / 32;   // elements per lane
    const int length = lengths[b];
    const long long width = (long long)kvHeads * headDim;
    const T* qh = q + ((long long)b * heads + h) * headDim + lane * per;
    const T* kb = keys + (long long)b * capacity * width + (long long)kh * headDim + lane * per;
    const T* vb = values + (long long)b * capacity * width + (long long)kh * headDim + lane * per;
    const float scale = 1.0f / sqrtf((float)headDim);
    float qv[4], acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int e = 0; e < 4; ++e) qv[e] = e < per ? ld(qh[e]) * scale : 0.0f;
    float m = -INFINITY, l = 0.0f;
    for (int j = warp; j < length; j += DECODE_WARPS) {
        const T* kj = kb + (long long)j * width;
        float s = 0.0f;
        for (int e = 0; e < per; ++e) s += qv[e] * ld(kj[e]);
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
        const float mnew = fmaxf(m, s);
        const float alpha = expf(m - mnew), p = expf(s - mnew);   // m = −∞ at first: alpha = 0
        l = l * alpha + p;
        const T* vj = vb + (long long)j * width;
        for (int e = 0; e < per; ++e) acc[e] = acc[e] * alpha + p * ld(vj[e]);
        m = mnew;
    }
    // Merge the warps: each writes (m, l, acc); warp 0 rescales them to the common maximum and sums.
    __shared__ float sm[DECODE_WARPS], sl[DECODE_WARPS], sacc[DECODE_WARPS][128];
    if (lane == 0) { sm[warp] = m; sl[warp] = l; }
    for (int e = 0; e < per; ++e) sacc[warp][lane * per + e] = acc[e];
    __syncthreads();
    if (warp != 0) return;
    float mall = -INFINITY;
    for (int w = 0; w < DECODE_WARPS; ++w) mall = fmaxf(mall, sm[w]);
    float total = 0.0f, o[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int w = 0; w < DECODE_WARPS; ++w) {
        if (sm[w] == -INFINITY) continue;   // a warp that saw no key
        const float f = expf(sm[w] - mall);
        total += sl[w] * f;
        for (int e = 0; e < per; ++e) o[e] += sacc[w][lane * per + e] * f;
    }
    T* oh = out + ((long long)b * heads + h) * headDim + lane * per;
    for (int e = 0; e < per; ++e) oh[e] = st(o[e] / total);
}
