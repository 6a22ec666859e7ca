// CVector: loops of the CPU training step that the Swift compiler does not vectorize well, in C with AVX-512
// versions picked at run time (plain C elsewhere). Each function computes exactly what its plain loop computes:
// the same integers, and the same float operations in the same order.
#ifndef QLORA_CVECTOR_H
#define QLORA_CVECTOR_H
#include <stdint.h>

/// 1 when the AVX-512 versions run on this processor (AVX-512 F, BW, DQ, with BMI2 and FMA).
int cv_has_avx512(void);

/// The LoRA dropout's kept bits of one row of `width` columns (LoRADropout.KeptBits): for each pair of columns
/// (2p, 2p + 1), h = mix(key ^ p); column 2p is kept when (h & 0xffff) < bound, column 2p + 1 when (h >> 16) <
/// bound. Bit c % 64 of row[c / 64] is column c; the ⌈width / 64⌉ words are written whole, bits past `width` 0.
/// `vector` 0 runs the plain loop (for tests).
void cv_dropout_bits(uint32_t key, long width, uint32_t bound, uint64_t *row, int vector);

/// One row of dropout(x): out[c] = x[c] · (bit c ? scale : 0), or with `accumulate` out[c] += that.
void cv_dropout_apply(const uint64_t *bits, const float *x, float *out, long width, float scale, int accumulate,
                      int vector);

/// The settings of one 8-bit blockwise AdamW update (bitsandbytes' kOptimizerStatic8bit2StateBlockwise).
typedef struct {
    float beta1, beta2, eps, weight_decay, lr;
    float correction2;  // √(1 − β2ᵗ)
    float step_size;    // −lr · correction2 · (1 − β1ᵗ)⁻¹ (the GPU's reciprocal)
    const float *signed_map, *unsigned_map;  // DynamicMap's 256 codes each
    const int32_t *reciprocal_delta;         // GPUReciprocal's 1,024 corrections (corrections32)
    int vector;                              // 0: the plain loop (for tests)
} cv_adam8_settings;

/// Blocks first ..< last of 256 elements of an n-element tensor: the moments dequantized (code × absmax), updated,
/// the parameter updated, the moments requantized against each block's new absmax, exactly as AdamW's Swift
/// reference (Optimizers.swift) computes them, operation for operation (no contraction into fused multiply-adds
/// but where the reference fuses).
void cv_adam8_blocks(const cv_adam8_settings *s, float *p, const float *g, uint8_t *cm, uint8_t *cv, float *am,
                     float *av, long n, long first, long last);
#endif
