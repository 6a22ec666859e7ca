// attention.cuh: what the flash attention kernels share (flash_attention.cu, and flash_attention_sm90.cu's Hopper
// versions): the base-2 softmax constants and exponential, the scale, document starts, RoPE's inverse on the
// gradients, and (bf16) the accumulator-to-operand repacking of P and dS.
#pragma once

#define FA_LOG2E 1.4426950408889634f
#define FA_LN2 0.6931471805599453f

__device__ __forceinline__ float fa_exp2(float x) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
}

// 1/√D (the square root and the division correctly rounded, as the CPU twin has them).
__device__ __forceinline__ float fa_scale(int d) { return 1.0f / sqrtf((float)d); }

// The first key query i sees (st: batch row b's starts, or null: every query sees from key 0).
__device__ __forceinline__ int fa_start(const int* st, int i) { return st ? st[i] : 0; }

// RoPE's rotation undone on a gradient (`rot`: cos, sin and positions; the tables (positions, D) as rope.cu reads
// them): column i < D/2 and its partner i + D/2 of the row at position p, (g1, g2) → (g1·c + g2·s, g2·c − g1·s) with
// c = cos[p·D + i], s = sin[p·D + i]. rope.cu's inverse, done where dq and dk leave the backward kernels.
struct FaRope { const float* cosT; const float* sinT; const int* positions; };
__device__ __forceinline__ void fa_unrotate(float& g1, float& g2, const float* cosRow, const float* sinRow, int i) {
    const float cs = cosRow[i], sn = sinRow[i], y1 = g1 * cs + g2 * sn, y2 = g2 * cs - g1 * sn;
    g1 = y1; g2 = y2;
}
// The table rows of token `row` of sequence b (its position: positions[b·T + row], or row).
__device__ __forceinline__ long long fa_rope_at(const FaRope& rot, int b, int tokens, int row, int d) {
    return (long long)(rot.positions ? rot.positions[(long long)b * tokens + row] : row) * d;
}

#if QLORA_BF16
// 4 bytes global → shared (zeros where `valid` is false).
__device__ __forceinline__ void fa_copy4(float* dst, const float* src, bool valid) {
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;"
                 :: "r"(smem_address(dst)), "l"(src), "r"(valid ? 4 : 0) : "memory");
}

// The A operand for k-step kk from two accumulator column blocks 2kk, 2kk+1 (same lanes, same rows).
__device__ __forceinline__ void fa_acc_to_a(unsigned* a, const float* c0, const float* c1) {
    a[0] = st2(c0[0], c0[1]); a[1] = st2(c0[2], c0[3]);
    a[2] = st2(c1[0], c1[1]); a[3] = st2(c1[2], c1[3]);
}
#endif
