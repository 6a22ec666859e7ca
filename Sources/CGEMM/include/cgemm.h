// CGEMM: the CPU's matrix products, C = alpha · op(A) · op(B) + beta · C (row-major, float32 in and out), with
// micro-kernels for several instruction sets chosen at run time. See cgemm.c for the blocking and the split.
#ifndef QLORA_CGEMM_H
#define QLORA_CGEMM_H

/// Kernels, in the order of `cgemm_kernel_name`: 0 portable C, 1 AVX2+FMA, 2 AVX-512 fp32, 3 AVX512_BF16.
int cgemm_kernel_count(void);
/// A short name of kernel `kernel` ("portable", "avx2", "avx512", "avx512bf16").
const char *cgemm_kernel_name(int kernel);
/// 1 when this processor can run `kernel`.
int cgemm_kernel_supported(int kernel);
/// 1 when `kernel` multiplies bf16 pairs (it serves bf16 products only).
int cgemm_kernel_is_bf16(int kernel);
/// The fastest supported kernel for float32 products (`bf16` 0) or for bf16 ones (`bf16` 1: inputs rounded to
/// bf16, nearest even, products accumulated in float32).
int cgemm_best_kernel(int bf16);

/// Part `part` of `parts` of C (m×n) = alpha · op(A) · op(B) + beta · C, op(A) m×k, op(B) k×n, with row strides
/// lda, ldb, ldc; op transposes when trans_a / trans_b is 1. With `bf16` 1 the inputs are rounded to bf16 (nearest
/// even) before they are multiplied. The parts split C into disjoint blocks, so they may run on different threads
/// at once; together they compute the whole product. beta 0 writes C without reading it.
void cgemm_compute(int kernel, int bf16, int trans_a, int trans_b, long m, long n, long k, float alpha,
                   const float *a, long lda, const float *b, long ldb, float beta, float *c, long ldc,
                   int part, int parts);

/// The 32-bit lanes (floats, or bf16 pairs for a pair kernel) that op(B) (k×n) takes packed whole for `kernel`.
long cgemm_packed_size(int kernel, long n, long k);
/// Packs op(B) (k×n; B itself is n×k when trans_b is 1, else k×n, row stride ldb) whole into `packed`
/// (cgemm_packed_size lanes) as `kernel`'s products read it, rounded to bf16 with `bf16` 1 (a pair kernel needs it):
/// a frozen matrix packed once instead of in every product.
void cgemm_pack_b(int kernel, int bf16, int trans_b, long n, long k, const float *b, long ldb, float *packed);
/// cgemm_compute with op(B) packed by cgemm_pack_b (the same kernel, bf16, n and k): the same result bit for bit.
void cgemm_compute_packed(int kernel, int bf16, int trans_a, long m, long n, long k, float alpha, const float *a,
                          long lda, const float *packed, float beta, float *c, long ldc, int part, int parts);
#endif
