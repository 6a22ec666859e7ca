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

#define DQ_SPAN 1024   // elements a warp dequantizes: 32 lanes × 8 elements × 4 steps

// out[i] = table[code(i)] · absmax(i / blocksize), rounded to T; the double-quantized absmax is decoded inline.
// Thread mapping: one warp per span of DQ_SPAN elements. The span's absmax values (one per quantization block
// it covers: at most 32 when blocksize is a power of two ≥ 32) are decoded once, lane j taking block j, and
// handed to the lanes that need them by shuffles. Then in each of 4 steps lane l takes the 8 elements at
// 8 · (32 · step + l): one 4-byte load of codes and one 16-byte store (bf16; two in float32), so a warp reads
// 128 contiguous bytes and writes 512 a step. A span past the end, or a blocksize that is no power of two ≥ 32,
// goes element by element. The output's rows (of `cols` elements; a multiple of 8 for the spans) lie `ld` elements
// apart (ld ≥ cols). With `beside` (an adapter's B, rows × r), the blocks after the spans' (one thread per element
// of the rows × (ld − cols) padding) write the columns past cols: B's row in the r columns from cols + slot·r,
// zeros elsewhere, so that [x | z0 z1 ... | 0] W'^T = x W^T + z_slot B^T (lora.cu's joined product); without
// it they are left as they are.
extern "C" __global__ void dequantize_4bit(T* out, const unsigned char* packed, const float* absmax,
                                           const unsigned char* codes, const float* nested,
                                           const float* nestedCode, float offset, int nestedBlocksize,
                                           const float* table, long long n, int blocksize, int cols, int ld,
                                           const T* beside, int slot, int r, int rows) {
    const long long spanBlocks = (n + 8 * DQ_SPAN - 1) / (8 * DQ_SPAN);   // 8 warps a block (256 threads)
    if ((long long)blockIdx.x >= spanBlocks) {   // the padding
        const int width = ld - cols;
        const long long i = ((long long)blockIdx.x - spanBlocks) * blockDim.x + threadIdx.x;
        if (!beside || i >= (long long)rows * width) return;
        const int row = (int)(i / width), j = (int)(i - (long long)row * width) - slot * r;
        out[(long long)row * ld + cols + slot * r + j] = j >= 0 && j < r ? beside[(long long)row * r + j] : (T)0;
        return;
    }
    __shared__ float book[16];
    if (threadIdx.x < 16) book[threadIdx.x] = table[threadIdx.x];
    __syncthreads();
    const int lane = threadIdx.x & 31;
    const long long span0 = ((long long)blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * DQ_SPAN;
    if (span0 >= n) return;   // the same for the whole warp
    const bool power = blocksize >= 32 && (blocksize & (blocksize - 1)) == 0 && (cols & 7) == 0 && (ld & 7) == 0;
    if (span0 + DQ_SPAN <= n && power) {
        const int shift = __ffs(blocksize) - 1;
        const long long block0 = span0 >> shift;
        const int blocks = blocksize >= DQ_SPAN ? 1 : DQ_SPAN >> shift;   // ≤ 32
        const float mine = lane < blocks ? block_absmax(block0 + lane, absmax, codes, nested, nestedCode, offset,
                                                        nestedBlocksize) : 0.0f;
        // The row and column of the span's first element; each lane's 8 never cross a row (cols % 8 == 0).
        const long long row0 = ld == cols ? 0 : span0 / cols, col0 = span0 - row0 * cols;
        unsigned words[4];
#pragma unroll
        for (int step = 0; step < 4; ++step)
            words[step] = *(const unsigned*)(packed + (span0 + 8 * (32 * step + lane)) / 2);
#pragma unroll
        for (int step = 0; step < 4; ++step) {
            const int at = 8 * (32 * step + lane);   // within the span
            const float scale = __shfl_sync(0xffffffffu, mine, blocks == 1 ? 0 : at >> shift);
            float v[8];
#pragma unroll
            for (int b = 0; b < 4; b++) {
                const unsigned byte = (words[step] >> (8 * b)) & 255u;
                v[2 * b] = __fmul_rn(book[byte >> 4], scale);
                v[2 * b + 1] = __fmul_rn(book[byte & 15u], scale);
            }
            long long row = row0;
            int col = (int)col0 + at;
            if (ld != cols) while (col >= cols) { col -= cols; ++row; }   // at < 1024: once at most when cols ≥ 1024
            store8(out + (ld == cols ? span0 + at : row * ld + col), v, 8, true);
        }
        return;
    }
    for (long long i = span0 + lane; i < span0 + DQ_SPAN && i < n; i += 32) {
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
