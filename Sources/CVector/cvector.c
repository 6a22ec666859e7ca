// CVector: the LoRA dropout's mask bits and masked copies, a row at a time (see cvector.h). The AVX-512 versions
// hash 16 column pairs per vector (32-bit multiplies, vpmulld) and turn the two comparisons of each hash into the
// row's bits with pdep (even columns from the low halves, odd from the high); the masked copy multiplies 16
// columns at a time by a vector holding scale or 0 per lane, as the plain loop multiplies each element.
#include "cvector.h"

#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define CV_X86 1
#endif

static inline uint32_t mix(uint32_t x) {
    x ^= x >> 16; x *= 0x7feb352du;
    x ^= x >> 15; x *= 0x846ca68bu;
    x ^= x >> 16;
    return x;
}

int cv_has_avx512(void) {
#ifdef CV_X86
    static int known = -1;   // a benign race: every thread computes the same value
    if (known < 0) {
        __builtin_cpu_init();
        known = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("fma");
    }
    return known;
#else
    return 0;
#endif
}

static void bits_plain(uint32_t key, long width, uint32_t bound, uint64_t *row) {
    memset(row, 0, sizeof(uint64_t) * (size_t)((width + 63) / 64));
    for (long c = 0; c < width; c += 2) {
        uint32_t h = mix(key ^ (uint32_t)(c >> 1));
        if ((h & 0xffffu) < bound) row[c >> 6] |= 1ull << (c & 63);
        if (c + 1 < width && (h >> 16) < bound) row[(c + 1) >> 6] |= 1ull << ((c + 1) & 63);
    }
}

/// Columns `from` ..< `width` of the row.
static void apply_plain(const uint64_t *bits, const float *x, float *out, long from, long width, float scale,
                        int accumulate) {
    for (long c = from; c < width; c++) {
        float m = (bits[c >> 6] >> (c & 63) & 1) ? scale : 0.0f;
        if (accumulate) out[c] += x[c] * m;
        else out[c] = x[c] * m;
    }
}

#ifdef CV_X86
__attribute__((target("avx512f,avx512bw,bmi2")))
static inline __m512i mix16(__m512i x) {
    x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
    x = _mm512_mullo_epi32(x, _mm512_set1_epi32((int)0x7feb352du));
    x = _mm512_xor_si512(x, _mm512_srli_epi32(x, 15));
    x = _mm512_mullo_epi32(x, _mm512_set1_epi32((int)0x846ca68bu));
    return _mm512_xor_si512(x, _mm512_srli_epi32(x, 16));
}

__attribute__((target("avx512f,avx512bw,bmi2")))
static void bits_avx512(uint32_t key, long width, uint32_t bound, uint64_t *row) {
    const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i k = _mm512_set1_epi32((int)key), b = _mm512_set1_epi32((int)bound);
    const __m512i low = _mm512_set1_epi32(0xffff);
    long words = (width + 63) / 64;
    for (long w = 0; w < words; w++) {
        uint64_t word = 0;
        for (int half = 0; half < 2; half++) {   // columns 64w + 32·half … + 31: pairs 32w + 16·half …
            uint32_t p0 = (uint32_t)(32 * w + 16 * half);
            __m512i h = mix16(_mm512_xor_si512(k, _mm512_add_epi32(_mm512_set1_epi32((int)p0), lanes)));
            __mmask16 even = _mm512_cmplt_epu32_mask(_mm512_and_si512(h, low), b);
            __mmask16 odd = _mm512_cmplt_epu32_mask(_mm512_srli_epi32(h, 16), b);
            uint32_t bits32 = _pdep_u32(even, 0x55555555u) | _pdep_u32(odd, 0xaaaaaaaau);
            word |= (uint64_t)bits32 << (32 * half);
        }
        long rest = width - 64 * w;   // columns of this word inside the row
        if (rest < 64) word &= (1ull << rest) - 1;
        row[w] = word;
    }
}

__attribute__((target("avx512f,avx512bw,bmi2")))
static void apply_avx512(const uint64_t *bits, const float *x, float *out, long width, float scale, int accumulate) {
    const __m512 s = _mm512_set1_ps(scale);
    long c = 0;
    for (; c + 16 <= width; c += 16) {
        __mmask16 kept = (__mmask16)(bits[c >> 6] >> (c & 63));
        __m512 m = _mm512_maskz_mov_ps(kept, s);   // scale where kept, 0 elsewhere
        __m512 v = _mm512_mul_ps(_mm512_loadu_ps(x + c), m);
        if (accumulate) v = _mm512_add_ps(_mm512_loadu_ps(out + c), v);
        _mm512_storeu_ps(out + c, v);
    }
    apply_plain(bits, x, out, c, width, scale, accumulate);
}
#endif

void cv_dropout_bits(uint32_t key, long width, uint32_t bound, uint64_t *row, int vector) {
#ifdef CV_X86
    if (vector && cv_has_avx512()) { bits_avx512(key, width, bound, row); return; }
#endif
    bits_plain(key, width, bound, row);
}

void cv_dropout_apply(const uint64_t *bits, const float *x, float *out, long width, float scale, int accumulate,
                      int vector) {
#ifdef CV_X86
    if (vector && cv_has_avx512()) { apply_avx512(bits, x, out, width, scale, accumulate); return; }
#endif
    apply_plain(bits, x, out, 0, width, scale, accumulate);
}
