// CGEMM computes C (m×n) = alpha · op(A) · op(B) + beta · C for row-major float32 matrices, op(X) being X or Xᵀ,
// optionally with A and B rounded to bf16 (nearest even) and the products accumulated in float32.
//
// How: the usual three-level blocking. C is cut into column panels of `nc` and the k dimension into blocks of
// `kc`; each (kc × nc) block of op(B) is packed into strips `nr` columns wide, each (mc × kc) block of op(A) into
// strips `mr` rows tall (zero-padded at the ragged edges), and a register-tile micro-kernel multiplies one A strip
// by one B strip into an (mr × nr) tile of C. For bf16 kernels the packed strips hold pairs of consecutive k
// values (two bf16 in 32 bits), the layout `vdpbf16ps` reads. Kernels for AVX-512 (+BF16) and AVX2 are compiled
// with per-function target attributes and picked at run time from what the processor reports; the portable
// kernel is plain C. Threads: the caller runs parts 0..<parts, each a disjoint static block of C (split along the
// longer of C's two dimensions, in whole tiles); each part packs what it reads into its own thread-local buffers.

#include "cgemm.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CGEMM_X86 1
#endif

typedef struct {
    int trans_a, trans_b, bf16;
    int vector;  // the processor has AVX2 (for the packing)
    long m, n, k, lda, ldb, ldc;
    float alpha, beta;
    const float *a, *b;
    float *c;
} problem;

/// Multiplies `steps` packed k steps of an A strip by a B strip into the (mr × nr) corner of the tile at c.
typedef void (*kernel_fn)(long steps, const void *a, const void *b, float *c, long ldc, float alpha, float beta,
                          int mr, int nr);

typedef struct {
    const char *name;
    int mr, nr;      // register tile
    long kc, mc, nc; // cache blocks (kc in k values, mc a multiple of mr)
    int pairs;       // packs bf16 pairs
    kernel_fn kernel;
} tier;

// MARK: bf16 rounding

static inline uint32_t bf16_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x40u;  // NaN stays a quiet NaN
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

static inline float bf16_rounded(float x) {
    uint32_t u = bf16_bits(x) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// MARK: Tile store

/// C (mr × nr) = alpha · tile + beta · C, tile rows `width` apart; beta 0 does not read C.
static void store_tile(const float *tile, int width, float *c, long ldc, float alpha, float beta, int mr, int nr) {
    for (int r = 0; r < mr; r++) {
        for (int l = 0; l < nr; l++) {
            float v = alpha * tile[r * width + l];
            c[r * ldc + l] = beta == 0 ? v : v + beta * c[r * ldc + l];
        }
    }
}

// MARK: Kernels

static void kernel_portable(long steps, const void *pa, const void *pb, float *c, long ldc, float alpha,
                            float beta, int mr, int nr) {
    enum { MR = 4, NR = 16 };
    const float *a = pa, *b = pb;
    float acc[MR][NR] = {{0}};
    for (long q = 0; q < steps; q++, a += MR, b += NR) {
        for (int r = 0; r < MR; r++) {
            for (int l = 0; l < NR; l++) acc[r][l] += a[r] * b[l];
        }
    }
    store_tile(&acc[0][0], NR, c, ldc, alpha, beta, mr, nr);
}

#ifdef CGEMM_X86
__attribute__((target("avx2,fma")))
static void kernel_avx2(long steps, const void *pa, const void *pb, float *c, long ldc, float alpha, float beta,
                        int mr, int nr) {
    enum { MR = 6, NR = 16 };
    const float *a = pa, *b = pb;
    __m256 acc[MR][2];
    for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = _mm256_setzero_ps();
    for (long q = 0; q < steps; q++, a += MR, b += NR) {
        __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
        for (int r = 0; r < MR; r++) {
            __m256 x = _mm256_broadcast_ss(a + r);
            acc[r][0] = _mm256_fmadd_ps(x, b0, acc[r][0]);
            acc[r][1] = _mm256_fmadd_ps(x, b1, acc[r][1]);
        }
    }
    __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta);
    if (mr == MR && nr == NR) {
        for (int r = 0; r < MR; r++) {
            for (int h = 0; h < 2; h++) {
                float *d = c + r * ldc + 8 * h;
                __m256 v = _mm256_mul_ps(acc[r][h], va);
                if (beta != 0) v = _mm256_fmadd_ps(vb, _mm256_loadu_ps(d), v);
                _mm256_storeu_ps(d, v);
            }
        }
        return;
    }
    float tile[MR * NR];
    for (int r = 0; r < MR; r++) {
        _mm256_storeu_ps(tile + r * NR, acc[r][0]);
        _mm256_storeu_ps(tile + r * NR + 8, acc[r][1]);
    }
    store_tile(tile, NR, c, ldc, alpha, beta, mr, nr);
}

/// Stores an AVX-512 accumulator tile of MR × 32: full tiles straight to C, ragged ones through a buffer.
#define CGEMM_STORE_512(MR)                                                                                      \
    do {                                                                                                         \
        __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);                                            \
        if (mr == (MR) && nr == 32) {                                                                            \
            for (int r = 0; r < (MR); r++) {                                                                     \
                for (int h = 0; h < 2; h++) {                                                                    \
                    float *d = c + r * ldc + 16 * h;                                                             \
                    __m512 v = _mm512_mul_ps(acc[r][h], va);                                                     \
                    if (beta != 0) v = _mm512_fmadd_ps(vb, _mm512_loadu_ps(d), v);                               \
                    _mm512_storeu_ps(d, v);                                                                      \
                }                                                                                                \
            }                                                                                                    \
            return;                                                                                              \
        }                                                                                                        \
        float tile[(MR) * 32];                                                                                   \
        for (int r = 0; r < (MR); r++) {                                                                         \
            _mm512_storeu_ps(tile + r * 32, acc[r][0]);                                                          \
            _mm512_storeu_ps(tile + r * 32 + 16, acc[r][1]);                                                     \
        }                                                                                                        \
        store_tile(tile, 32, c, ldc, alpha, beta, mr, nr);                                                       \
    } while (0)

__attribute__((target("avx512f,avx512bw,avx512vl")))
static void kernel_avx512(long steps, const void *pa, const void *pb, float *c, long ldc, float alpha, float beta,
                          int mr, int nr) {
    enum { MR = 12, NR = 32 };
    const float *a = pa, *b = pb;
    __m512 acc[MR][2];
    for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (long q = 0; q < steps; q++, a += MR, b += NR) {
        __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16);
        for (int r = 0; r < MR; r++) {
            __m512 x = _mm512_set1_ps(a[r]);
            acc[r][0] = _mm512_fmadd_ps(x, b0, acc[r][0]);
            acc[r][1] = _mm512_fmadd_ps(x, b1, acc[r][1]);
        }
    }
    CGEMM_STORE_512(MR);
}

/// One step is a k pair: each 32-bit lane of A and B holds (value at k, value at k + 1) as two bf16.
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
static void kernel_avx512bf16(long steps, const void *pa, const void *pb, float *c, long ldc, float alpha,
                              float beta, int mr, int nr) {
    enum { MR = 12, NR = 32 };
    const int32_t *a = pa, *b = pb;
    __m512 acc[MR][2];
    for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (long q = 0; q < steps; q++, a += MR, b += NR) {
        __m512i b0 = _mm512_loadu_si512(b), b1 = _mm512_loadu_si512(b + 16);
        for (int r = 0; r < MR; r++) {
            __m512i x = _mm512_set1_epi32(a[r]);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], (__m512bh)x, (__m512bh)b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], (__m512bh)x, (__m512bh)b1);
        }
    }
    CGEMM_STORE_512(MR);
}
#endif

static const tier tiers[] = {
    {"portable", 4, 16, 256, 64, 2048, 0, kernel_portable},
#ifdef CGEMM_X86
    {"avx2", 6, 16, 256, 120, 4096, 0, kernel_avx2},
    {"avx512", 12, 32, 256, 120, 4096, 0, kernel_avx512},
    {"avx512bf16", 12, 32, 512, 120, 4096, 1, kernel_avx512bf16},
#endif
};
enum { tier_count = sizeof(tiers) / sizeof(tiers[0]) };

int cgemm_kernel_count(void) { return tier_count; }

const char *cgemm_kernel_name(int kernel) { return kernel >= 0 && kernel < tier_count ? tiers[kernel].name : "?"; }

int cgemm_kernel_is_bf16(int kernel) { return kernel >= 0 && kernel < tier_count && tiers[kernel].pairs; }

int cgemm_kernel_supported(int kernel) {
    if (kernel == 0) return 1;
#ifdef CGEMM_X86
    __builtin_cpu_init();
    int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl");
    switch (kernel) {
    case 1: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case 2: return avx512;
    case 3: return avx512 && __builtin_cpu_supports("avx512bf16");
    }
#endif
    return 0;
}

int cgemm_best_kernel(int bf16) {
    for (int t = tier_count - 1; t > 0; t--) {
        if (cgemm_kernel_supported(t) && (bf16 || !tiers[t].pairs)) return t;
    }
    return 0;
}

// MARK: Packing

#ifdef CGEMM_X86
/// dst[q·dw + l] = src[l·sl + q] for q, l < 8: an 8 × 8 transpose in registers.
__attribute__((target("avx2")))
static inline void transpose8(const float *src, long sl, float *dst, long dw) {
    __m256 r[8], t[8], u[8];
    for (int l = 0; l < 8; l++) r[l] = _mm256_loadu_ps(src + l * sl);
    for (int h = 0; h < 4; h++) {
        t[2 * h] = _mm256_unpacklo_ps(r[2 * h], r[2 * h + 1]);
        t[2 * h + 1] = _mm256_unpackhi_ps(r[2 * h], r[2 * h + 1]);
    }
    for (int h = 0; h < 2; h++) {
        u[4 * h] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0x44);
        u[4 * h + 1] = _mm256_shuffle_ps(t[4 * h], t[4 * h + 2], 0xee);
        u[4 * h + 2] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0x44);
        u[4 * h + 3] = _mm256_shuffle_ps(t[4 * h + 1], t[4 * h + 3], 0xee);
    }
    for (int q = 0; q < 4; q++) {
        _mm256_storeu_ps(dst + q * dw, _mm256_permute2f128_ps(u[q], u[q + 4], 0x20));
        _mm256_storeu_ps(dst + (q + 4) * dw, _mm256_permute2f128_ps(u[q], u[q + 4], 0x31));
    }
}
#endif

/// Packs one strip: `kc` k steps of `width` lanes, dst[q·width + l] = src[q·sq + l·sl] for the first `count` lanes
/// and 0 past them. Either the lanes or the k steps are contiguous in the source (sl or sq is 1); the writes are
/// sequential either way (strided writes cost far more than strided reads here), in 8 × 8 register transposes
/// of whole groups of 8 lanes where `vector` says the processor has AVX2.
static void pack_strip(const float *src, long sq, long sl, int count, int width, long kc, int vector, float *dst) {
    if (count < width) memset(dst, 0, sizeof(float) * (size_t)(kc * width));
    if (sl == 1) {
        for (long q = 0; q < kc; q++) memcpy(dst + q * width, src + q * sq, sizeof(float) * (size_t)count);
        return;
    }
    int vector_lanes = 0;
#ifdef CGEMM_X86
    if (vector) {
        vector_lanes = count / 8 * 8;
        for (long q = 0; q + 8 <= kc; q += 8) {
            for (int l = 0; l < vector_lanes; l += 8) transpose8(src + l * sl + q, sl, dst + q * width + l, width);
        }
    }
#endif
    for (long q = 0; q < kc; q++) {
        int first = q < kc / 8 * 8 ? vector_lanes : 0;
        for (int l = first; l < count; l++) dst[q * width + l] = src[l * sl + q];
    }
}

/// Packs op(A)[i0 ..< i0+rows, q0 ..< q0+kc] as one strip of `width` rows.
static void pack_a_strip(const problem *p, long i0, int rows, long q0, long kc, int width, float *dst) {
    if (p->trans_a) pack_strip(p->a + q0 * p->lda + i0, p->lda, 1, rows, width, kc, p->vector, dst);
    else pack_strip(p->a + i0 * p->lda + q0, 1, p->lda, rows, width, kc, p->vector, dst);
}

/// Packs op(B)[q0 ..< q0+kc, j0 ..< j0+cols] as one strip of `width` columns.
static void pack_b_strip(const problem *p, long q0, long kc, long j0, int cols, int width, float *dst) {
    if (p->trans_b) pack_strip(p->b + j0 * p->ldb + q0, 1, p->ldb, cols, width, kc, p->vector, dst);
    else pack_strip(p->b + q0 * p->ldb + j0, p->ldb, 1, cols, width, kc, p->vector, dst);
}

#ifdef CGEMM_X86
/// The pair layout of `finish_strip` with AVX512_BF16's conversion (nearest even; it reads subnormal inputs as 0,
/// as `vdpbf16ps` does anyway).
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
static void pairs_avx512bf16(const float *strip, long kc, int width, uint32_t *out) {
    for (long s = 0; s < (kc + 1) / 2; s++) {
        for (int l = 0; l < width; l += 16) {
            __mmask16 mask = (__mmask16)(width - l >= 16 ? 0xffff : (1u << (width - l)) - 1);
            __m512 lo = _mm512_maskz_loadu_ps(mask, strip + 2 * s * width + l);
            __m512 hi = 2 * s + 1 < kc ? _mm512_maskz_loadu_ps(mask, strip + (2 * s + 1) * width + l)
                                       : _mm512_setzero_ps();
            __m512i lo32 = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(lo));
            __m512i hi32 = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(hi));
            _mm512_mask_storeu_epi32(out + s * width + l, mask, _mm512_or_si512(lo32, _mm512_slli_epi32(hi32, 16)));
        }
    }
}
#endif

/// Rounds a packed float strip (kc steps of `width`) to bf16 in place, or, with `pairs` (only the AVX512_BF16
/// kernel packs pairs), rewrites it into `dst` as (kc + 1) / 2 steps of `width` 32-bit lanes, each holding the
/// bf16 values of k steps 2s and 2s + 1.
static void finish_strip(float *strip, long kc, int width, int bf16, int pairs, void *dst) {
#ifdef CGEMM_X86
    if (pairs) {
        pairs_avx512bf16(strip, kc, width, dst);
        return;
    }
#endif
    if (bf16) {
        for (long x = 0; x < kc * width; x++) strip[x] = bf16_rounded(strip[x]);
    }
}

// MARK: Driver

static _Thread_local float *scratch_buffer;
static _Thread_local size_t scratch_floats;

static float *scratch(size_t floats) {
    if (floats > scratch_floats) {
        free(scratch_buffer);
        size_t bytes = (floats * sizeof(float) + 63) / 64 * 64;
        scratch_buffer = aligned_alloc(64, bytes);
        scratch_floats = scratch_buffer ? floats : 0;
    }
    return scratch_buffer;
}

/// The k block size for tier t and depth k: k blocks of equal size (even, for pair kernels), so no short last
/// block pays for C's extra load and store.
static long block_depth(const tier *t, long k) {
    long k_blocks = (k + t->kc - 1) / t->kc;
    long kc_max = (k + k_blocks - 1) / k_blocks;
    return kc_max + (kc_max & 1);
}

/// Where the strip of columns s·nr … of k block `block` starts in op(B) packed whole (`cgemm_pack_b`): the blocks
/// one after the other, each its strips one after the other (32-bit lanes: floats, or bf16 pairs).
static long packed_offset(const tier *t, long n, long kc_max, long block, long k, long strip) {
    long strips = (n + t->nr - 1) / t->nr, pc = block * kc_max;
    long kc = k - pc < kc_max ? k - pc : kc_max;
    long steps_max = t->pairs ? kc_max / 2 : kc_max, steps = t->pairs ? (kc + 1) / 2 : kc;
    return block * steps_max * strips * t->nr + strip * steps * t->nr;
}

/// The block rows [i_lo, i_hi) × columns [j_lo, j_hi) of C, computed with tier t; op(B) from `packed` when given
/// (packed whole by cgemm_pack_b for this tier), else packed here block by block.
static void compute_block(const tier *t, const problem *p, const float *packed, long i_lo, long i_hi, long j_lo,
                          long j_hi) {
    long kc_max = block_depth(t, p->k);
    long nc_max = t->nc, mc_max = t->mc;
    long wide = t->mr > t->nr ? t->mr : t->nr;
    float *a_pack = scratch((size_t)(mc_max + t->mr) * kc_max + (size_t)(nc_max + t->nr) * kc_max + wide * kc_max);
    if (!a_pack) abort();  // no memory for the packing buffers: better to stop than to leave C unwritten
    float *b_pack = a_pack + (mc_max + t->mr) * kc_max;
    float *strip = b_pack + (nc_max + t->nr) * kc_max;
    for (long jc = j_lo; jc < j_hi; jc += nc_max) {
        long nc = j_hi - jc < nc_max ? j_hi - jc : nc_max;
        for (long pc = 0; pc < p->k; pc += kc_max) {
            long kc = p->k - pc < kc_max ? p->k - pc : kc_max;
            long steps = t->pairs ? (kc + 1) / 2 : kc;
            float beta = pc == 0 ? p->beta : 1;
            for (long jr = 0; jr < nc && !packed; jr += t->nr) {
                float *dst = b_pack + jr / t->nr * steps * t->nr;
                int cols = nc - jr < t->nr ? (int)(nc - jr) : t->nr;
                pack_b_strip(p, pc, kc, jc + jr, cols, t->nr, t->pairs ? strip : dst);
                finish_strip(t->pairs ? strip : dst, kc, t->nr, p->bf16, t->pairs, dst);
            }
            for (long ic = i_lo; ic < i_hi; ic += mc_max) {
                long mc = i_hi - ic < mc_max ? i_hi - ic : mc_max;
                for (long ir = 0; ir < mc; ir += t->mr) {
                    float *dst = a_pack + ir / t->mr * steps * t->mr;
                    int rows = mc - ir < t->mr ? (int)(mc - ir) : t->mr;
                    pack_a_strip(p, ic + ir, rows, pc, kc, t->mr, t->pairs ? strip : dst);
                    finish_strip(t->pairs ? strip : dst, kc, t->mr, p->bf16, t->pairs, dst);
                }
                for (long jr = 0; jr < nc; jr += t->nr) {
                    int cols = nc - jr < t->nr ? (int)(nc - jr) : t->nr;
                    const float *bs = packed ? packed + packed_offset(t, p->n, kc_max, pc / kc_max, p->k,
                                                                      (jc + jr) / t->nr)
                                             : b_pack + jr / t->nr * steps * t->nr;
                    for (long ir = 0; ir < mc; ir += t->mr) {
                        int rows = mc - ir < t->mr ? (int)(mc - ir) : t->mr;
                        t->kernel(steps, a_pack + ir / t->mr * steps * t->mr, bs, p->c + (ic + ir) * p->ldc + jc + jr,
                                  p->ldc, p->alpha, beta, rows, cols);
                    }
                }
            }
        }
    }
}

/// cgemm_compute and cgemm_compute_packed: op(B) from b (packed here) or from `packed`.
static void compute(int kernel, int bf16, int trans_a, int trans_b, long m, long n, long k, float alpha,
                    const float *a, long lda, const float *b, long ldb, const float *packed, float beta, float *c,
                    long ldc, int part, int parts) {
    if (kernel < 0 || kernel >= tier_count || m <= 0 || n <= 0 || parts < 1 || part < 0 || part >= parts) return;
    const tier *t = &tiers[kernel];
    if (t->pairs && !bf16) return;  // a pair kernel multiplies bf16 only
    // The part's block of C: whole tiles of the dimension with more of them.
    long tiles_m = (m + t->mr - 1) / t->mr, tiles_n = (n + t->nr - 1) / t->nr;
    long i_lo = 0, i_hi = m, j_lo = 0, j_hi = n;
    if (tiles_n >= tiles_m) {
        j_lo = tiles_n * part / parts * t->nr;
        j_hi = tiles_n * (part + 1) / parts * t->nr;
        if (j_hi > n) j_hi = n;
    } else {
        i_lo = tiles_m * part / parts * t->mr;
        i_hi = tiles_m * (part + 1) / parts * t->mr;
        if (i_hi > m) i_hi = m;
    }
    if (i_lo >= i_hi || j_lo >= j_hi) return;
    if (k <= 0) {
        for (long i = i_lo; i < i_hi; i++) {
            for (long j = j_lo; j < j_hi; j++) c[i * ldc + j] = beta == 0 ? 0 : beta * c[i * ldc + j];
        }
        return;
    }
    problem p = {trans_a, trans_b, bf16, kernel > 0, m, n, k, lda, ldb, ldc, alpha, beta, a, b, c};
    compute_block(t, &p, packed, i_lo, i_hi, j_lo, j_hi);
}

void cgemm_compute(int kernel, int bf16, int trans_a, int trans_b, long m, long n, long k, float alpha,
                   const float *a, long lda, const float *b, long ldb, float beta, float *c, long ldc,
                   int part, int parts) {
    compute(kernel, bf16, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, NULL, beta, c, ldc, part, parts);
}

long cgemm_packed_size(int kernel, long n, long k) {
    if (kernel < 0 || kernel >= tier_count || n <= 0 || k <= 0) return 0;
    const tier *t = &tiers[kernel];
    long kc_max = block_depth(t, k), blocks = (k + kc_max - 1) / kc_max;
    return packed_offset(t, n, kc_max, blocks - 1, k, (n + t->nr - 1) / t->nr);
}

void cgemm_pack_b(int kernel, int bf16, int trans_b, long n, long k, const float *b, long ldb, float *packed) {
    if (kernel < 0 || kernel >= tier_count || n <= 0 || k <= 0) return;
    const tier *t = &tiers[kernel];
    if (t->pairs && !bf16) return;
    problem p = {0, trans_b, bf16, kernel > 0, 0, n, k, 0, ldb, 0, 1, 0, NULL, b, NULL};
    long kc_max = block_depth(t, k);
    float *strip = t->pairs ? scratch((size_t)kc_max * t->nr) : NULL;
    if (t->pairs && !strip) abort();
    for (long pc = 0, block = 0; pc < k; pc += kc_max, block++) {
        long kc = k - pc < kc_max ? k - pc : kc_max;
        for (long j = 0; j < n; j += t->nr) {
            float *dst = packed + packed_offset(t, n, kc_max, block, k, j / t->nr);
            int cols = n - j < t->nr ? (int)(n - j) : t->nr;
            pack_b_strip(&p, pc, kc, j, cols, t->nr, t->pairs ? strip : dst);
            finish_strip(t->pairs ? strip : dst, kc, t->nr, bf16, t->pairs, dst);
        }
    }
}

void cgemm_compute_packed(int kernel, int bf16, int trans_a, long m, long n, long k, float alpha, const float *a,
                          long lda, const float *packed, float beta, float *c, long ldc, int part, int parts) {
    compute(kernel, bf16, trans_a, 0, m, n, k, alpha, a, lda, NULL, 0, packed, beta, c, ldc, part, parts);
}
