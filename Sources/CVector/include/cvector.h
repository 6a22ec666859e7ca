// CVector: loops of the CPU training step that the Swift compiler does not vectorize well, in C with AVX-512
// versions picked at run time (plain C elsewhere). Each function computes exactly what its plain loop computes:
// the same integers, and the same float operations in the same order.
#ifndef QLORA_CVECTOR_H
#define QLORA_CVECTOR_H
#include <stdint.h>

/// 1 when the AVX-512 versions run on this processor.
int cv_has_avx512(void);

/// The LoRA dropout's kept bits of one row of `width` columns (LoRADropout.KeptBits): for each pair of columns
/// (2p, 2p + 1), h = mix(key ^ p); column 2p is kept when (h & 0xffff) < bound, column 2p + 1 when (h >> 16) <
/// bound. Bit c % 64 of row[c / 64] is column c; the ⌈width / 64⌉ words are written whole, bits past `width` 0.
/// `vector` 0 runs the plain loop (for tests).
void cv_dropout_bits(uint32_t key, long width, uint32_t bound, uint64_t *row, int vector);

/// One row of dropout(x): out[c] = x[c] · (bit c ? scale : 0), or with `accumulate` out[c] += that.
void cv_dropout_apply(const uint64_t *bits, const float *x, float *out, long width, float scale, int accumulate,
                      int vector);
#endif
