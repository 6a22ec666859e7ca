// cv_adam8_blocks: bitsandbytes' blockwise 8-bit AdamW on the CPU (see cvector.h), the loop of AdamW's Swift
// reference in C. Float contraction is off for this file: every multiply and add rounds where the reference's do,
// and the reference's fused multiply-adds are written as fmaf.
#pragma STDC FP_CONTRACT OFF
#include "cvector.h"

#include <math.h>
#include <string.h>

static inline uint32_t bits_of(float x) { uint32_t u; memcpy(&u, &x, 4); return u; }
static inline float float_of(uint32_t u) { float x; memcpy(&x, &u, 4); return x; }

/// 1/x as the GPU computes it under fast math (GPUReciprocal.reciprocal).
static inline float gpu_reciprocal(float x, const int32_t *delta) {
    if (x == 0 || fpclassify(x) == FP_SUBNORMAL) return signbit(x) ? -INFINITY : INFINITY;
    float r = 1 / x;
    if (fpclassify(r) == FP_SUBNORMAL) return signbit(x) ? -0.0f : 0.0f;
    uint32_t mantissa = bits_of(x) & 0x7fffffu;
    if ((mantissa & 0x1fffu) == 0 && isfinite(x)) r = float_of((uint32_t)((int32_t)bits_of(r) + delta[mantissa >> 13]));
    return r;
}

/// The optimizer kernel's code search (AdamW.quantize2D), without branches: the seven comparisons depend on the
/// data, and mispredicted they cost more than the rest of the update.
static inline int quantize_2d(float x, const float *map, int is_signed) {
    int pivot = 127, upper_pivot = 255, lower_pivot = 0;
    float lower = is_signed ? -1.0f : 0.0f, upper = 1.0f;
    float value = map[pivot];
    for (int step = 64; step > 0; step >>= 1) {
        int gt = x > value;
        lower_pivot = gt ? pivot : lower_pivot;
        lower = gt ? value : lower;
        upper_pivot = gt ? upper_pivot : pivot;
        upper = gt ? upper : value;
        pivot += gt ? step : -step;
        value = map[pivot];
    }
    int gt = x > value;
    int above = x > (upper + value) * 0.5f, below = x < (lower + value) * 0.5f;
    int up = above ? upper_pivot : pivot, down = below ? lower_pivot : pivot;
    return gt ? up : down;
}

/// Elements lo ..< hi of block b, the plain way: the moments into m and v (from index 0), and their absolute maxima
/// taken into *max_m and *max_v.
static void moments_plain(const cv_adam8_settings *s, const float *g, const uint8_t *cm, const uint8_t *cv, float am,
                          float av, long lo, long hi, float *m, float *v, float *max_m, float *max_v) {
    const float b1 = s->beta1, b2 = s->beta2, one_b1 = 1 - s->beta1, one_b2 = 1 - s->beta2;
    for (long i = lo; i < hi; i++) {
        long j = i - lo;
        float gi = g[i];
        if (isfinite(gi)) {
            v[j] = fmaf(s->unsigned_map[cv[i]] * av, b2, one_b2 * gi * gi);
            m[j] = fmaf(s->signed_map[cm[i]] * am, b1, one_b1 * gi);
        } else {
            m[j] = 0; v[j] = 0;
        }
        float a = fabsf(m[j]), c = fabsf(v[j]);
        *max_m = a >= *max_m ? a : *max_m;   // Swift's max(x, y): y when y >= x
        *max_v = c >= *max_v ? c : *max_v;
    }
}

/// Elements lo ..< hi: the parameter from the new moments, and the moments' codes.
static void finish_plain(const cv_adam8_settings *s, float *p, const float *g, uint8_t *cm, uint8_t *cv, float rm,
                         float rv, long lo, long hi, const float *m, const float *v) {
    for (long i = lo; i < hi; i++) {
        long j = i - lo;
        if (isfinite(g[i])) {
            float denom = sqrtf(v[j]) + s->correction2 * s->eps;
            p[i] = p[i] + s->step_size * (m[j] * gpu_reciprocal(denom, s->reciprocal_delta));
            if (s->weight_decay > 0) p[i] = p[i] * (1 - s->lr * s->weight_decay);
        }
        int c1 = quantize_2d(m[j] * rm, s->signed_map, 1);
        if ((signbit(s->signed_map[c1]) != 0) != (signbit(m[j]) != 0)) c1 += m[j] > 0 ? 1 : -1;
        cm[i] = (uint8_t)(c1 < 0 ? 0 : c1 > 255 ? 255 : c1);
        cv[i] = (uint8_t)quantize_2d(v[j] * rv, s->unsigned_map, 0);
    }
}

static void blocks_plain(const cv_adam8_settings *s, float *p, const float *g, uint8_t *cm, uint8_t *cv, float *am,
                         float *av, long n, long first, long last) {
    float m[256], v[256];
    for (long b = first; b < last; b++) {
        long lo = b * 256, hi = lo + 256 < n ? lo + 256 : n;
        float max_m = 0, max_v = 0;
        moments_plain(s, g, cm, cv, am[b], av[b], lo, hi, m, v, &max_m, &max_v);
        am[b] = max_m; av[b] = max_v;
        finish_plain(s, p, g, cm, cv, gpu_reciprocal(max_m, s->reciprocal_delta),
                     gpu_reciprocal(max_v, s->reciprocal_delta), lo, hi, m, v);
    }
}

#if defined(__x86_64__)
#include <immintrin.h>
#define V16 __attribute__((target("avx512f,avx512bw,avx512dq,fma")))

/// GPUReciprocal.reciprocal on 16 lanes: the correctly rounded 1/x, then the same special cases and corrections.
V16 static inline __m512 reciprocal16(__m512 x, const int32_t *delta32) {
    const __m512 inf = _mm512_set1_ps(INFINITY);
    const __m512i sign = _mm512_set1_epi32((int)0x80000000u);
    __m512i xb = _mm512_castps_si512(x);
    __m512 r = _mm512_div_ps(_mm512_set1_ps(1.0f), x);
    __m512i xs = _mm512_and_si512(xb, sign);
    // zero or subnormal x (exponent bits 0): ±∞ with x's sign
    const __m512i exponent = _mm512_set1_epi32(0x7f800000), zero = _mm512_setzero_si512();
    __mmask16 tiny = _mm512_cmpeq_epi32_mask(_mm512_and_si512(xb, exponent), zero);
    // the correction where the mantissa's low 13 bits are zero and x is finite (r computed from it)
    __m512i mant = _mm512_and_si512(xb, _mm512_set1_epi32(0x7fffff));
    __mmask16 fin = _mm512_cmp_ps_mask(_mm512_abs_ps(x), inf, _CMP_LT_OQ);
    __mmask16 fix = _mm512_mask_cmpeq_epi32_mask(fin, _mm512_and_si512(mant, _mm512_set1_epi32(0x1fff)),
                                                 _mm512_setzero_si512());
    __m512i d = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), fix, _mm512_srli_epi32(mant, 13), delta32, 4);
    __m512i rb = _mm512_add_epi32(_mm512_castps_si512(r), d);
    // r subnormal (nonzero, exponent bits 0): ±0 with x's sign; checked on r before the correction, as the scalar
    __m512i r0 = _mm512_castps_si512(r);
    __mmask16 rsub = _mm512_cmpeq_epi32_mask(_mm512_and_si512(r0, exponent), zero) &
                     _mm512_cmpneq_epi32_mask(_mm512_and_si512(r0, _mm512_set1_epi32(0x7fffffff)), zero);
    rb = _mm512_mask_mov_epi32(rb, rsub, xs);
    rb = _mm512_mask_mov_epi32(rb, tiny, _mm512_or_si512(xs, _mm512_set1_epi32(0x7f800000)));
    return _mm512_castsi512_ps(rb);
}

/// quantize_2d on 16 lanes: the same seven steps, each lane's pivot from a gather.
V16 static inline __m512i quantize16(__m512 x, const float *map, int is_signed) {
    __m512i pivot = _mm512_set1_epi32(127), upper_pivot = _mm512_set1_epi32(255), lower_pivot = _mm512_setzero_si512();
    __m512 lower = _mm512_set1_ps(is_signed ? -1.0f : 0.0f), upper = _mm512_set1_ps(1.0f);
    __m512 value = _mm512_set1_ps(map[127]);
    for (int step = 64; step > 0; step >>= 1) {
        __mmask16 gt = _mm512_cmp_ps_mask(x, value, _CMP_GT_OQ);
        lower_pivot = _mm512_mask_mov_epi32(lower_pivot, gt, pivot);
        lower = _mm512_mask_mov_ps(lower, gt, value);
        upper_pivot = _mm512_mask_mov_epi32(pivot, gt, upper_pivot);
        upper = _mm512_mask_mov_ps(value, gt, upper);
        pivot = _mm512_mask_add_epi32(_mm512_sub_epi32(pivot, _mm512_set1_epi32(step)), gt, pivot,
                                      _mm512_set1_epi32(step));
        value = _mm512_i32gather_ps(pivot, map, 4);
    }
    const __m512 half = _mm512_set1_ps(0.5f);
    __mmask16 gt = _mm512_cmp_ps_mask(x, value, _CMP_GT_OQ);
    __mmask16 above = _mm512_cmp_ps_mask(x, _mm512_mul_ps(_mm512_add_ps(upper, value), half), _CMP_GT_OQ);
    __mmask16 below = _mm512_cmp_ps_mask(x, _mm512_mul_ps(_mm512_add_ps(lower, value), half), _CMP_LT_OQ);
    __m512i up = _mm512_mask_mov_epi32(pivot, above, upper_pivot);
    __m512i down = _mm512_mask_mov_epi32(pivot, below, lower_pivot);
    return _mm512_mask_mov_epi32(down, gt, up);
}

V16 static void blocks_avx512(const cv_adam8_settings *s, float *p, const float *g, uint8_t *cm, uint8_t *cv,
                              float *am, float *av, long n, long first, long last) {
    float m[256], v[256];
    const __m512 inf = _mm512_set1_ps(INFINITY);
    const __m512 b1 = _mm512_set1_ps(s->beta1), b2 = _mm512_set1_ps(s->beta2);
    const __m512 one_b1 = _mm512_set1_ps(1 - s->beta1), one_b2 = _mm512_set1_ps(1 - s->beta2);
    const __m512 ceps = _mm512_set1_ps(s->correction2 * s->eps), step = _mm512_set1_ps(s->step_size);
    const __m512 decay = _mm512_set1_ps(1 - s->lr * s->weight_decay);
    const __m512i zero = _mm512_setzero_si512();
    for (long b = first; b < last; b++) {
        long lo = b * 256, hi = lo + 256 < n ? lo + 256 : n, whole = lo + (hi - lo) / 16 * 16;
        __m512 vam = _mm512_set1_ps(am[b]), vav = _mm512_set1_ps(av[b]);
        __m512 mm = _mm512_setzero_ps(), mv = _mm512_setzero_ps();
        for (long i = lo; i < whole; i += 16) {
            __m512 gi = _mm512_loadu_ps(g + i);
            __mmask16 fin = _mm512_cmp_ps_mask(_mm512_abs_ps(gi), inf, _CMP_LT_OQ);
            __m512i c1 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(cm + i)));
            __m512i c2 = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(cv + i)));
            __m512 v0 = _mm512_mul_ps(_mm512_i32gather_ps(c2, s->unsigned_map, 4), vav);
            __m512 vv = _mm512_maskz_mov_ps(fin, _mm512_fmadd_ps(v0, b2, _mm512_mul_ps(_mm512_mul_ps(one_b2, gi), gi)));
            __m512 m0 = _mm512_mul_ps(_mm512_i32gather_ps(c1, s->signed_map, 4), vam);
            __m512 vm = _mm512_maskz_mov_ps(fin, _mm512_fmadd_ps(m0, b1, _mm512_mul_ps(one_b1, gi)));
            _mm512_storeu_ps(m + (i - lo), vm);
            _mm512_storeu_ps(v + (i - lo), vv);
            mm = _mm512_max_ps(_mm512_abs_ps(vm), mm);   // a NaN lane keeps the maximum, as Swift's max does
            mv = _mm512_max_ps(_mm512_abs_ps(vv), mv);
        }
        float max_m = _mm512_reduce_max_ps(mm), max_v = _mm512_reduce_max_ps(mv);
        moments_plain(s, g, cm, cv, am[b], av[b], whole, hi, m + (whole - lo), v + (whole - lo), &max_m, &max_v);
        am[b] = max_m; av[b] = max_v;
        float rm = gpu_reciprocal(max_m, s->reciprocal_delta), rv = gpu_reciprocal(max_v, s->reciprocal_delta);
        const __m512 vrm = _mm512_set1_ps(rm), vrv = _mm512_set1_ps(rv);
        for (long i = lo; i < whole; i += 16) {
            __m512 gi = _mm512_loadu_ps(g + i);
            __mmask16 fin = _mm512_cmp_ps_mask(_mm512_abs_ps(gi), inf, _CMP_LT_OQ);
            __m512 vm = _mm512_loadu_ps(m + (i - lo)), vv = _mm512_loadu_ps(v + (i - lo));
            __m512 denom = _mm512_add_ps(_mm512_sqrt_ps(vv), ceps);
            __m512 pi = _mm512_loadu_ps(p + i);
            __m512 r = reciprocal16(denom, s->reciprocal_delta);
            __m512 np = _mm512_add_ps(pi, _mm512_mul_ps(step, _mm512_mul_ps(vm, r)));
            if (s->weight_decay > 0) np = _mm512_mul_ps(np, decay);
            _mm512_storeu_ps(p + i, _mm512_mask_mov_ps(pi, fin, np));
            __m512i q1 = quantize16(_mm512_mul_ps(vm, vrm), s->signed_map, 1);
            __m512 code = _mm512_i32gather_ps(q1, s->signed_map, 4);
            __mmask16 differ = _mm512_cmpneq_epi32_mask(_mm512_srli_epi32(_mm512_castps_si512(code), 31),
                                                        _mm512_srli_epi32(_mm512_castps_si512(vm), 31));
            __mmask16 positive = _mm512_cmp_ps_mask(vm, _mm512_setzero_ps(), _CMP_GT_OQ);
            __m512i moved = _mm512_mask_mov_epi32(_mm512_set1_epi32(-1), positive, _mm512_set1_epi32(1));
            q1 = _mm512_mask_add_epi32(q1, differ, q1, moved);
            q1 = _mm512_min_epi32(_mm512_max_epi32(q1, zero), _mm512_set1_epi32(255));
            _mm_storeu_si128((__m128i *)(cm + i), _mm512_cvtepi32_epi8(q1));
            __m512i q2 = quantize16(_mm512_mul_ps(vv, vrv), s->unsigned_map, 0);
            _mm_storeu_si128((__m128i *)(cv + i), _mm512_cvtepi32_epi8(q2));
        }
        finish_plain(s, p, g, cm, cv, rm, rv, whole, hi, m + (whole - lo), v + (whole - lo));
    }
}
#endif

void cv_adam8_blocks(const cv_adam8_settings *s, float *p, const float *g, uint8_t *cm, uint8_t *cv, float *am,
                     float *av, long n, long first, long last) {
#if defined(__x86_64__)
    if (s->vector && cv_has_avx512()) {
        blocks_avx512(s, p, g, cm, cv, am, av, n, first, last);
        return;
    }
#endif
    blocks_plain(s, p, g, cm, cv, am, av, n, first, last);
}
