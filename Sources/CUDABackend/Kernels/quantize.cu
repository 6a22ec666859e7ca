// quantize.cu: bitsandbytes' blockwise 4-bit format on the GPU (CPU twin: Quantization/Quantized4BitTensor.swift).
// Layout: the flattened tensor in blocks of `blocksize`, two codes a byte (element 2j in the high nibble, 2j+1 in
// the low one), one float32 absmax per block; with double quantization the absmax values are 8-bit codes scaled by
// a nested absmax per 256 and shifted by an offset. Products are written with __fmul_rn / __fadd_rn so that no
// multiply-add is contracted: the values are exactly the CPU's (and bitsandbytes').
#include "common.cuh"

// The absmax of quantization block `b`: absmax[b], or with double quantization (absmax null)
// nestedCode[codes[b]] · nested[b / nestedBlocksize] + offset.
__device__ __forceinline__ float block_absmax(long long b, const float* absmax, const unsigned char* codes,
                                              const float* nested, const float* nestedCode, float offset,
                                              int nestedBlocksize) {
    if (absmax) return absmax[b];
    return __fadd_rn(__fmul_rn(nestedCode[codes[b]], nested[b / nestedBlocksize]), offset);
}

#define DQ_SPAN 1024   // elements a warp dequantizes a span: 32 lanes × 8 elements × 4 steps
#define DQ_SPANS 4     // spans a warp

// out[i] = table[code(i)] · absmax(i / blocksize), rounded to T; the double-quantized absmax is decoded inline.
// Thread mapping: one warp per DQ_SPANS consecutive spans of DQ_SPAN elements (4,096 elements), 8 warps a block.
// The warp first issues all its code loads: in each of 4 steps of a span, lane l takes the 8 elements at
// 8 · (32 · step + l), one 4-byte load (16 loads a lane in flight). Then the absmax values of the quantization
// blocks the spans cover (at most 128 when blocksize is a power of two ≥ 32) are decoded once, lane j taking
// blocks j, j + 32, …, the nested code book read from shared memory, and handed to the lanes that need them by
// shuffles; then, each byte's two values read at once from a 256-entry table of pairs in shared memory, one
// 16-byte store a step (bf16; two in float32), so a warp writes 512 contiguous bytes a step.
// The tensor's last group goes span by span, its last partial span element by element, as does everything for a
// blocksize that is no power of two ≥ 32. The output's rows (of `cols` elements; a multiple of 8 for the fast
// path) lie `ld` elements apart (ld ≥ cols). With `beside` (an adapter's B, rows × r), the blocks after the spans'
// (one thread per element of the rows × (ld − cols) padding) write the columns past cols: B's row in the r columns
// from cols + slot·r, zeros elsewhere, so that [x | z0 z1 ... | 0] W'^T = x W^T + z_slot B^T (lora.cu's joined
// product); without it they are left as they are.

// NS spans of DQ_SPAN elements from `first` (all inside the tensor; blocksize a power of two ≥ 32; cols and ld
// multiples of 8), as the header says: every code load first, then the absmax values, then the stores.
template <int NS>
__device__ __forceinline__ void dq_spans(T* __restrict__ out, const unsigned char* __restrict__ packed,
                                         const float* absmax, const unsigned char* codes, const float* nested,
                                         const float* nestedBook, float offset, int nestedBlocksize,
                                         const float2* pairs, long long first, int blocksize, int cols, int ld,
                                         int lane) {
    unsigned words[NS][4];
#pragma unroll
    for (int sp = 0; sp < NS; ++sp)
#pragma unroll
        for (int step = 0; step < 4; ++step)
            words[sp][step] = *(const unsigned*)(packed + (first + sp * DQ_SPAN + 8 * (32 * step + lane)) / 2);
    const int shift = __ffs(blocksize) - 1;
    const long long block0 = first >> shift;
    const int blocks = (int)(((long long)NS * DQ_SPAN + blocksize - 1) >> shift);   // ≤ 32 · NS
    float mine[NS];
#pragma unroll
    for (int q = 0; q < NS; ++q) {
        const int b = 32 * q + lane;
        mine[q] = 0.0f;
        if (b < blocks) {
            mine[q] = absmax ? absmax[block0 + b]
                             : __fadd_rn(__fmul_rn(nestedBook[codes[block0 + b]],
                                                   nested[(block0 + b) / nestedBlocksize]), offset);
        }
    }
#pragma unroll
    for (int sp = 0; sp < NS; ++sp) {
        const long long span0 = first + sp * DQ_SPAN;
        // The row and column of the span's first element; each lane's 8 never cross a row (cols % 8 == 0).
        const long long row0 = ld == cols ? 0 : span0 / cols, col0 = span0 - row0 * cols;
#pragma unroll
        for (int step = 0; step < 4; ++step) {
            const int at = 8 * (32 * step + lane);        // within the span
            const int b = (sp * DQ_SPAN + at) >> shift;   // b / 32 is the same for the whole warp (shift ≥ 5)
            const int q = b >> 5;   // NS ≤ 4 (a chain of selects: an indexed array would go to local memory)
            const float pick = q == 0 ? mine[0] : q == 1 ? mine[1 % NS] : q == 2 ? mine[2 % NS] : mine[3 % NS];
            const float scale = __shfl_sync(0xffffffffu, pick, b & 31);
            float v[8];
#pragma unroll
            for (int e = 0; e < 4; e++) {
                const float2 codes2 = pairs[(words[sp][step] >> (8 * e)) & 255u];   // both codes of the byte
                v[2 * e] = __fmul_rn(codes2.x, scale);
                v[2 * e + 1] = __fmul_rn(codes2.y, scale);
            }
            long long row = row0;
            int col = (int)col0 + at;
            if (ld != cols) while (col >= cols) { col -= cols; ++row; }   // at < 1024: once at most when cols ≥ 1024
            store8(out + (ld == cols ? span0 + at : row * ld + col), v, 8, true);
        }
    }
}

extern "C" __global__ void __launch_bounds__(256, 4)   // ≤ 64 registers: 4 blocks (32 warps) an SM
dequantize_4bit(T* __restrict__ out, const unsigned char* __restrict__ packed, const float* absmax,
                const unsigned char* codes, const float* nested, const float* nestedCode, float offset,
                int nestedBlocksize, const float* table, long long n, int blocksize, int cols, int ld,
                const T* beside, int slot, int r, int rows) {
    const long long group = (long long)DQ_SPAN * DQ_SPANS;
    const long long spanBlocks = (n + 8 * group - 1) / (8 * group);   // 8 warps a block (256 threads)
    if ((long long)blockIdx.x >= spanBlocks) {   // the padding
        const int width = ld - cols;
        const long long i = ((long long)blockIdx.x - spanBlocks) * blockDim.x + threadIdx.x;
        if (!beside || i >= (long long)rows * width) return;
        const int row = (int)(i / width), j = (int)(i - (long long)row * width) - slot * r;
        out[(long long)row * ld + cols + slot * r + j] = j >= 0 && j < r ? beside[(long long)row * r + j] : (T)0;
        return;
    }
    // The code book by byte (both of its codes: one shared-memory read per byte), and the nested one.
    __shared__ float book[16];
    __shared__ float2 pairs[256];
    __shared__ float nestedBook[256];
    if (threadIdx.x < 16) book[threadIdx.x] = table[threadIdx.x];
    pairs[threadIdx.x] = make_float2(table[threadIdx.x >> 4], table[threadIdx.x & 15]);   // blockDim.x is 256
    if (!absmax) nestedBook[threadIdx.x] = nestedCode[threadIdx.x];
    __syncthreads();
    const int lane = threadIdx.x & 31;
    const long long first = ((long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * group;
    if (first >= n) return;   // the same for the whole warp
    const bool power = blocksize >= 32 && (blocksize & (blocksize - 1)) == 0 && (cols & 7) == 0 && (ld & 7) == 0;
    if (power && first + group <= n) {
        dq_spans<DQ_SPANS>(out, packed, absmax, codes, nested, nestedBook, offset, nestedBlocksize, pairs, first,
                           blocksize, cols, ld, lane);
        return;
    }
    // The tensor's last group: whole spans as above, the rest element by element.
    long long i0 = first;
    if (power)
        for (; i0 + DQ_SPAN <= n; i0 += DQ_SPAN)
            dq_spans<1>(out, packed, absmax, codes, nested, nestedBook, offset, nestedBlocksize, pairs, i0,
                        blocksize, cols, ld, lane);
    for (long long i = i0 + lane; i < first + group && i < n; i += 32) {
        const unsigned char byte = packed[i / 2];
        const float code = book[(i & 1) ? (byte & 15) : (byte >> 4)];
        out[i + (i / cols) * (ld - cols)] = st(__fmul_rn(code, block_absmax(i / blocksize, absmax, codes, nested,
                                                                             nestedCode, offset, nestedBlocksize)));
    }
}

// bitsandbytes' NF4 decision tree (dQuantizeNF4): the number of thresholds strictly below x; NaN gives 0.
__device__ __forceinline__ unsigned char nf4_code(float x) {
    const float t[16] = {-0.8480964004993439f, -0.6106329262256622f, -0.4599952697753906f, -0.33967943489551544f,
                         -0.23460740596055984f, -0.13791173323988914f, -0.045525018125772476f, 0.03979014977812767f,
                         0.1202552504837513f, 0.2035212516784668f, 0.2920137718319893f, 0.3893125355243683f,
                         0.5016634166240692f, 0.6427869200706482f, 0.8614784181118011f, INFINITY};
    int i = x > t[7] ? 8 : 0;
    i += x > t[i + 3] ? 4 : 0;
    i += x > t[i + 1] ? 2 : 0;
    i += x > t[i] ? 1 : 0;
    return (unsigned char)i;
}

// bitsandbytes' FP4 (dQuantizeFP4): sign bit 3, the magnitude's rank mapped to its 3-bit pattern.
__device__ __forceinline__ unsigned char fp4_code(float x) {
    const float t[8] = {0.00260417f, 0.0859375f, 0.20833333f, 0.29166667f, 0.4166667f, 0.583333f, 0.8333333f, INFINITY};
    const unsigned char bits[8] = {0, 1, 6, 7, 4, 5, 2, 3};
    unsigned char sign = x < 0.0f ? 8 : 0;
    float m = fabsf(x);
    int i = m > t[3] ? 4 : 0;
    i += m > t[i + 1] ? 2 : 0;
    i += m > t[i] ? 1 : 0;
    return bits[i] | sign;
}

// One thread block per quantization block: absmax of |x| (padding past n counts as 0), scale by the approximate
// reciprocal, two codes a byte. blockDim.x = min(blocksize / 2, 1024) threads, each doing pairs.
extern "C" __global__ void quantize_4bit(unsigned char* packed, float* absmax, const T* in, long long n,
                                        int blocksize, int fp4) {
    long long start = (long long)blockIdx.x * blocksize;
    float m = 0.0f;
    for (int k = threadIdx.x; k < blocksize; k += blockDim.x) {
        long long i = start + k;
        if (i < n) m = fmaxf(m, fabsf(ld(in[i])));
    }
    m = block_max(m);
    if (threadIdx.x == 0) absmax[blockIdx.x] = m;
    float scale = rcp_approx(m);
    for (int p = threadIdx.x; p < blocksize / 2; p += blockDim.x) {
        long long i = start + 2 * p;
        if (i >= n) break;
        float a = __fmul_rn(ld(in[i]), scale);
        float b = i + 1 < n ? __fmul_rn(ld(in[i + 1]), scale) : __fmul_rn(0.0f, scale);
        unsigned char code;
        if (fp4) {
            if (fabsf(a) < 1.17549435e-38f) a = copysignf(0.0f, a);
            if (fabsf(b) < 1.17549435e-38f) b = copysignf(0.0f, b);
            code = (unsigned char)(fp4_code(a) << 4) | fp4_code(b);
        } else {
            code = (unsigned char)(nf4_code(a) << 4) | nf4_code(b);
        }
        packed[i / 2] = code;
    }
}
