/*
 * e8c_fast_body.h: the fast CPU quantizer, compiled twice: by e8c_fast.c
 * for baseline x86-64 (SSE2) and by e8c_fast_avx2.c with -mavx2 -mf16c;
 * e8c_fast.c picks one at run time (cpuid).  Same arithmetic as the
 * reference, in the same order (FORMAT.md): element-wise loops the compiler
 * vectorizes; hand-written AVX2 for fp16 loads, the Hadamard butterflies,
 * the E8 search (8 blocks at once, structure of arrays, branch-free), and
 * the per-head layout passes e8c_pack.c calls (e8c_pack_head,
 * e8c_head_points).
 * Reductions keep the spec's order (no -ffast-math), so bytes are identical.
 *
 * Define E8C_SFX (name suffix) before including.
 */
#include <math.h>
#include <string.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

#include "codec/e8c_internal.h"

#define E8C_CAT2(a, b) a##_##b
#define E8C_CAT(a, b) E8C_CAT2(a, b)
#define FN(name) E8C_CAT(name, E8C_SFX)

const float *e8c_f16_table(void);

/* Loads head vector (contiguous or strided) into x; checks range. */
static int FN(load)(const e8c_tensor *src, int64_t base, uint32_t n, float *restrict x)
{
    const uint8_t *d = src->data;
    if (src->stride_dim == 1 && src->dtype == E8C_DTYPE_F16) {
        const uint16_t *p = (const uint16_t *)d + base;
#ifdef __F16C__
        for (uint32_t j = 0; j < n; j += 8)
            _mm256_storeu_ps(x + j, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + j))));
#else
        const float *tab = e8c_f16_table();
        for (uint32_t j = 0; j < n; j++) x[j] = tab[p[j]];
#endif
    } else if (src->stride_dim == 1 && src->dtype == E8C_DTYPE_BF16) {
        const uint16_t *p = (const uint16_t *)d + base;
        uint32_t *xu = (uint32_t *)(void *)x;
        for (uint32_t j = 0; j < n; j++) xu[j] = (uint32_t)p[j] << 16;
    } else if (src->stride_dim == 1) {
        memcpy(x, (const float *)d + base, sizeof(float) * n);
    } else {
        for (uint32_t j = 0; j < n; j++) x[j] = e8c_load(d, src->dtype, base + (int64_t)j * src->stride_dim);
    }
    /* |x| <= 2^64 and not NaN: one compare per element, NaN fails it */
    int ok = 1;
    for (uint32_t j = 0; j < n; j++) ok &= fabsf(x[j]) <= 0x1p64f;
    return ok;
}

static void FN(bh)(const e8c_hplan *restrict hp, float *restrict v)
{
    for (uint32_t b = 0; b < hp->nblocks; b++) {
        float *x = v + hp->boff[b];
        uint32_t m = hp->bsize[b];
        float g = hp->gain[b];
#ifdef __AVX2__
        /* strides 1, 2, 4 inside one register: lane i gets a + c or a - c
         * with the same operands as the scalar butterfly */
        const __m256 vg = _mm256_set1_ps(g);
        for (uint32_t j = 0; j < m; j += 8) {
            __m256 v = _mm256_loadu_ps(x + j), y;
            y = _mm256_permute_ps(v, 0xB1);
            v = _mm256_blend_ps(_mm256_add_ps(v, y), _mm256_sub_ps(y, v), 0xAA);
            y = _mm256_permute_ps(v, 0x4E);
            v = _mm256_blend_ps(_mm256_add_ps(v, y), _mm256_sub_ps(y, v), 0xCC);
            y = _mm256_permute2f128_ps(v, v, 1);
            v = _mm256_blend_ps(_mm256_add_ps(v, y), _mm256_sub_ps(y, v), 0xF0);
            if (m == 8) v = _mm256_mul_ps(v, vg);
            _mm256_storeu_ps(x + j, v);
        }
        /* strides 8 .. m/2 on whole registers; the gain multiplies the last
         * stage's results (the same two roundings as a separate pass) */
        for (uint32_t hs = 8; hs < m; hs <<= 1) {
            int last = 2 * hs == m;
            for (uint32_t j = 0; j < m; j += 2 * hs)
                for (uint32_t k = 0; k < hs; k += 8) {
                    __m256 a = _mm256_loadu_ps(x + j + k), c = _mm256_loadu_ps(x + j + k + hs);
                    __m256 s0 = _mm256_add_ps(a, c), s1 = _mm256_sub_ps(a, c);
                    if (last) { s0 = _mm256_mul_ps(s0, vg); s1 = _mm256_mul_ps(s1, vg); }
                    _mm256_storeu_ps(x + j + k, s0);
                    _mm256_storeu_ps(x + j + k + hs, s1);
                }
        }
#else
        for (uint32_t j = 0; j < m; j += 2) { float a = x[j], c = x[j + 1]; x[j] = a + c; x[j + 1] = a - c; }
        for (uint32_t j = 0; j < m; j += 4)
            for (uint32_t k = 0; k < 2; k++) { float a = x[j + k], c = x[j + k + 2]; x[j + k] = a + c; x[j + k + 2] = a - c; }
        for (uint32_t j = 0; j < m; j += 8)
            for (uint32_t k = 0; k < 4; k++) { float a = x[j + k], c = x[j + k + 4]; x[j + k] = a + c; x[j + k + 4] = a - c; }
        for (uint32_t hs = 8; hs < m; hs <<= 1)
            for (uint32_t j = 0; j < m; j += 2 * hs)
                for (uint32_t k = 0; k < hs; k++) {
                    float a = x[j + k], c = x[j + k + hs];
                    x[j + k] = a + c;
                    x[j + k + hs] = a - c;
                }
        for (uint32_t j = 0; j < m; j++) x[j] = x[j] * g;
#endif
    }
}

#ifdef __AVX2__
/* bh for one power-of-two block of NV = n/8 registers (n = 64 or 128),
 * the whole vector in registers: the same butterflies, in the same stage
 * order, as bh (strides 1, 2, 4 inside a register, then whole registers),
 * then the gain (NV = 8 or 16).  sign (or NULL) multiplies x first (hfwd's sign0 step). */
static inline __attribute__((always_inline)) void FN(bf)(__m256 *a, __m256 *c)
{
    __m256 x = *a, y = *c;
    *a = _mm256_add_ps(x, y);
    *c = _mm256_sub_ps(x, y);
}

/* bh for one power-of-two block of NV = n/8 registers (n = 64 or 128) held
 * in v: the same butterflies, in the same stage order, as bh (strides 1, 2,
 * 4 inside a register, then whole registers), then the gain. */
static inline __attribute__((always_inline)) void FN(bh_v)(__m256 *v, float g, const uint32_t NV)
{
#pragma GCC unroll 16
    for (uint32_t i = 0; i < NV; i++) {
        __m256 a = v[i], y;
        y = _mm256_permute_ps(a, 0xB1);
        a = _mm256_blend_ps(_mm256_add_ps(a, y), _mm256_sub_ps(y, a), 0xAA);
        y = _mm256_permute_ps(a, 0x4E);
        a = _mm256_blend_ps(_mm256_add_ps(a, y), _mm256_sub_ps(y, a), 0xCC);
        y = _mm256_permute2f128_ps(a, a, 1);
        v[i] = _mm256_blend_ps(_mm256_add_ps(a, y), _mm256_sub_ps(y, a), 0xF0);
    }
    /* whole-register strides 8, 16, 32 (64): stage by stage across the
     * 8-register halves, which do not meet before stride 64 */
    for (uint32_t o = 0; o < NV; o += 8) {
        FN(bf)(&v[o + 0], &v[o + 1]); FN(bf)(&v[o + 2], &v[o + 3]);
        FN(bf)(&v[o + 4], &v[o + 5]); FN(bf)(&v[o + 6], &v[o + 7]);
        FN(bf)(&v[o + 0], &v[o + 2]); FN(bf)(&v[o + 1], &v[o + 3]);
        FN(bf)(&v[o + 4], &v[o + 6]); FN(bf)(&v[o + 5], &v[o + 7]);
        FN(bf)(&v[o + 0], &v[o + 4]); FN(bf)(&v[o + 1], &v[o + 5]);
        FN(bf)(&v[o + 2], &v[o + 6]); FN(bf)(&v[o + 3], &v[o + 7]);
    }
    if (NV == 16)
        for (uint32_t k = 0; k < 8; k++) FN(bf)(&v[k], &v[k + 8]);
    const __m256 vg = _mm256_set1_ps(g);
#pragma GCC unroll 16
    for (uint32_t i = 0; i < NV; i++) v[i] = _mm256_mul_ps(v[i], vg);
}

/* bh_v on x in memory; sign (or NULL) multiplies x first (hfwd's sign0). */
static inline __attribute__((always_inline)) void FN(bh_reg)(float *restrict x, const float *restrict sign,
                                                             float g, const uint32_t NV)
{
    __m256 v[16];
#pragma GCC unroll 16
    for (uint32_t i = 0; i < NV; i++) {
        v[i] = _mm256_loadu_ps(x + 8 * i);
        if (sign) v[i] = _mm256_mul_ps(v[i], _mm256_loadu_ps(sign + 8 * i));
    }
    FN(bh_v)(v, g, NV);
#pragma GCC unroll 16
    for (uint32_t i = 0; i < NV; i++) _mm256_storeu_ps(x + 8 * i, v[i]);
}

/* Split-half RoPE on registers (rotary_dim = n): a = v[i], b = v[i + NV/2];
 * remove (apply = 0): a' = a*c + b*s, b' = b*c - a*s; apply: a' = a*c - b*s,
 * b' = b*c + a*s (FORMAT.md 2.3, products then the sum). */
static inline __attribute__((always_inline)) void FN(rope_v)(__m256 *v, const float *c, const float *s,
                                                             int apply, const uint32_t NV)
{
#pragma GCC unroll 8
    for (uint32_t i = 0; i < NV / 2; i++) {
        __m256 a = v[i], b = v[i + NV / 2], vc = _mm256_loadu_ps(c + 8 * i), vs = _mm256_loadu_ps(s + 8 * i);
        __m256 ac = _mm256_mul_ps(a, vc), bs = _mm256_mul_ps(b, vs), bc = _mm256_mul_ps(b, vc), as = _mm256_mul_ps(a, vs);
        v[i] = apply ? _mm256_sub_ps(ac, bs) : _mm256_add_ps(ac, bs);
        v[i + NV / 2] = apply ? _mm256_add_ps(bc, as) : _mm256_sub_ps(bc, as);
    }
}

/* Encoder front for fp16 rows (stride 1) and n = 8 NV (64 or 128): fp16
 * load, range check, RoPE removal (c NULL: none; split-half, rotary_dim =
 * n), sign0, BH, into x.  0 if an element is NaN, inf or above 2^64 (the
 * caller reports it). */
static inline __attribute__((always_inline)) int FN(front_v)(const uint16_t *p, const float *c, const float *s,
                                                             const e8c_hplan *hp, float *restrict x,
                                                             const uint32_t NV)
{
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff)), lim = _mm256_set1_ps(0x1p64f);
    __m256 v[16], bad = _mm256_setzero_ps();
#pragma GCC unroll 16
    for (uint32_t i = 0; i < NV; i++) {
        v[i] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 8 * i)));
        bad = _mm256_or_ps(bad, _mm256_cmp_ps(_mm256_and_ps(v[i], absmask), lim, _CMP_NLE_UQ));
    }
    if (c) FN(rope_v)(v, c, s, 0, NV);
#pragma GCC unroll 16
    for (uint32_t i = 0; i < NV; i++) v[i] = _mm256_mul_ps(v[i], _mm256_loadu_ps(hp->sign0 + 8 * i));
    FN(bh_v)(v, hp->gain[0], NV);
#pragma GCC unroll 16
    for (uint32_t i = 0; i < NV; i++) _mm256_storeu_ps(x + 8 * i, v[i]);
    return _mm256_testz_ps(bad, bad);
}

/* Decoder back for n = 8 NV (64 or 128) into fp16 rows (stride 1): points
 * times the scale, BH, sign0, RoPE restore (c NULL: none; split-half,
 * rotary_dim = n), fp16 with saturation (FORMAT.md 1). */
static inline __attribute__((always_inline)) void FN(back_v)(const int16_t *p2, float sf, const float *c,
                                                             const float *s, const e8c_hplan *hp,
                                                             uint16_t *o, const uint32_t NV)
{
    const __m256 vsf = _mm256_set1_ps(sf), half = _mm256_set1_ps(0.5f);
    const __m256 mx = _mm256_set1_ps(65504.0f), mn = _mm256_set1_ps(-65504.0f);
    __m256 v[16];
#pragma GCC unroll 16
    for (uint32_t i = 0; i < NV; i++) {
        __m256 pf = _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)(p2 + 8 * i))));
        v[i] = _mm256_mul_ps(vsf, _mm256_mul_ps(half, pf));
    }
    FN(bh_v)(v, hp->gain[0], NV);
#pragma GCC unroll 16
    for (uint32_t i = 0; i < NV; i++) v[i] = _mm256_mul_ps(v[i], _mm256_loadu_ps(hp->sign0 + 8 * i));
    if (c) FN(rope_v)(v, c, s, 1, NV);
#pragma GCC unroll 16
    for (uint32_t i = 0; i < NV; i++) {
        __m256 y = _mm256_min_ps(_mm256_max_ps(v[i], mn), mx);
        _mm_storeu_si128((__m128i *)(o + 8 * i), _mm256_cvtps_ph(y, _MM_FROUND_TO_NEAREST_INT));
    }
}
#endif

static void FN(hfwd)(const e8c_hplan *restrict hp, float *restrict x, float *restrict tmp)
{
    uint32_t n = hp->n;
#ifdef __AVX2__
    if (n == 64) { FN(bh_reg)(x, hp->sign0, hp->gain[0], 8); return; }
    if (n == 128) { FN(bh_reg)(x, hp->sign0, hp->gain[0], 16); return; }
#endif
    for (uint32_t j = 0; j < n; j++) x[j] = x[j] * hp->sign0[j];
    FN(bh)(hp, x);
    if (hp->pow2) return;
    for (uint32_t k = 0; k < n; k++) tmp[k] = x[hp->perm[k]] * hp->sign1[k];
    FN(bh)(hp, tmp);
    memcpy(x, tmp, sizeof(float) * n);
}

static void FN(hinv)(const e8c_hplan *restrict hp, float *restrict y, float *restrict tmp)
{
    uint32_t n = hp->n;
    if (!hp->pow2) {
        FN(bh)(hp, y);
        for (uint32_t k = 0; k < n; k++) tmp[hp->perm[k]] = y[k] * hp->sign1[k];
        memcpy(y, tmp, sizeof(float) * n);
    }
#ifdef __AVX2__
    if (n == 64) FN(bh_reg)(y, NULL, hp->gain[0], 8);
    else if (n == 128) FN(bh_reg)(y, NULL, hp->gain[0], 16);
    else
#endif
    FN(bh)(hp, y);
    for (uint32_t j = 0; j < n; j++) y[j] = y[j] * hp->sign0[j];
}

static void FN(rope)(const e8c_rope *r, float *restrict x, const float *restrict c,
                     const float *restrict s, int apply)
{
    uint32_t h = r->rotary_dim / 2;
    if (r->layout == E8C_ROPE_LAYOUT_SPLIT_HALF) {
        float *a = x, *b = x + h;
        if (!apply)
            for (uint32_t i = 0; i < h; i++) {
                float ai = a[i], bi = b[i];
                float ac = ai * c[i], bs = bi * s[i], bc = bi * c[i], as = ai * s[i];
                a[i] = ac + bs; b[i] = bc - as;
            }
        else
            for (uint32_t i = 0; i < h; i++) {
                float ai = a[i], bi = b[i];
                float ac = ai * c[i], bs = bi * s[i], bc = bi * c[i], as = ai * s[i];
                a[i] = ac - bs; b[i] = bc + as;
            }
    } else if (!apply) {
        e8c_rope_remove(r, x, c, s);
    } else {
        e8c_rope_apply(r, x, c, s);
    }
}

static uint16_t FN(scale)(const float *restrict y, uint32_t n, float step)
{
    double A[8] = {0, 0, 0, 0, 0, 0, 0, 0};
#ifdef __AVX2__
    /* lanes 0-3 and 4-7 of the 8 f64 sums, each in ascending j as the
     * spec says (products then sums, two roundings; no FMA in this build) */
    __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
    for (uint32_t j = 0; j < n; j += 8) {
        __m256d lo = _mm256_cvtps_pd(_mm_loadu_ps(y + j)), hi = _mm256_cvtps_pd(_mm_loadu_ps(y + j + 4));
        a0 = _mm256_add_pd(a0, _mm256_mul_pd(lo, lo));
        a1 = _mm256_add_pd(a1, _mm256_mul_pd(hi, hi));
    }
    _mm256_storeu_pd(A, a0);
    _mm256_storeu_pd(A + 4, a1);
#else
    for (uint32_t j = 0; j < n; j += 8)
        for (int l = 0; l < 8; l++) A[l] = A[l] + (double)y[j + l] * (double)y[j + l];
#endif
    double T = ((A[0] + A[4]) + (A[2] + A[6])) + ((A[1] + A[5]) + (A[3] + A[7]));
    if (T == 0) return 0;
    /* e8c_scale_code, inline: the call sat on each vector's serial chain */
    float v = (float)(sqrt(T / n) * (double)step);
    uint32_t u;
    memcpy(&u, &v, 4);
    u = (u + 0x7ffffu + ((u >> 20) & 1u)) & 0xfff00000u;
    uint16_t sc = (uint16_t)(u >> 16);
    return sc == 0 ? 0x0010 : sc;
}

#ifdef __AVX2__
/* The scale code of sum of squares T (FORMAT.md section 4, as scale). */
static inline uint16_t FN(scale_code)(double T, uint32_t n, float step)
{
    if (T == 0) return 0;
    float v = (float)(sqrt(T / n) * (double)step);
    uint32_t u;
    memcpy(&u, &v, 4);
    u = (u + 0x7ffffu + ((u >> 20) & 1u)) & 0xfff00000u;
    uint16_t sc = (uint16_t)(u >> 16);
    return sc == 0 ? 0x0010 : sc;
}

/* scale for four vectors y + b n (b < 4) at once, n = 64 or 128 (its
 * callers).  First from an fp32 sum of squares, with the margin test of
 * codec/cuda's e8cu_scale_fast, where it is proven: T~ (each square
 * rounded, at most 16 adds per lane, a 3-level tree: 20 roundings of sums
 * of nonnegative terms) is within 21u T of the exact T (u = 2^-24; the
 * GPU's bound allows 40u); w = sqrtf(T~ / n) * step (1/n exact for these
 * n; sqrtf and the product correctly rounded) is within 12u relative of
 * the real sqrt(T/n) step, the reference's fp32 v within u.  The code rounds at 3
 * mantissa bits, at midpoints where the low 20 bits of the pattern are
 * 0x80000; more than 256 units (2^-16 relative at least) away, v lies on
 * w's side and neither is a tie, so w rounded half up gives v's code.
 * T~ in [2^-80, 2^80] keeps v normal and far from the 0x0010 rule.  A
 * vector outside that: the exact f64 sums below, each of its eight lane
 * sums in the spec's order, the four chains interleaved. */
static void FN(scale4)(const float *restrict y, uint32_t n, float step, uint16_t sc[4])
{
    __m256 s[4];
    for (int b = 0; b < 4; b++) s[b] = _mm256_setzero_ps();
    for (uint32_t j = 0; j < n; j += 8)
        for (int b = 0; b < 4; b++) {
            __m256 p = _mm256_loadu_ps(y + (size_t)b * n + j);
            s[b] = _mm256_add_ps(s[b], _mm256_mul_ps(p, p));
        }
    const float inv_n = 1.0f / (float)n;
    int slow = 0;
    for (int b = 0; b < 4; b++) {
        __m128 h = _mm_add_ps(_mm256_castps256_ps128(s[b]), _mm256_extractf128_ps(s[b], 1));
        h = _mm_add_ps(h, _mm_movehl_ps(h, h));
        h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 1));
        float T = _mm_cvtss_f32(h), w = sqrtf(T * inv_n) * step;
        uint32_t u;
        memcpy(&u, &w, 4);
        uint32_t off = (u & 0xfffffu) - 0x80000u + 256u; /* in [0, 512]: near a midpoint */
        int ok = T >= 0x1p-80f && T <= 0x1p80f && off > 512u;
        sc[b] = (uint16_t)(((u + 0x80000u) & 0xfff00000u) >> 16);
        slow |= !ok << b;
    }
    if (!slow) return;
    __m256d a[8];
    for (int k = 0; k < 8; k++) a[k] = _mm256_setzero_pd();
    for (uint32_t j = 0; j < n; j += 8)
        for (int b = 0; b < 4; b++) {
            const float *p = y + (size_t)b * n + j;
            __m256d lo = _mm256_cvtps_pd(_mm_loadu_ps(p)), hi = _mm256_cvtps_pd(_mm_loadu_ps(p + 4));
            a[2 * b] = _mm256_add_pd(a[2 * b], _mm256_mul_pd(lo, lo));
            a[2 * b + 1] = _mm256_add_pd(a[2 * b + 1], _mm256_mul_pd(hi, hi));
        }
    for (int b = 0; b < 4; b++) {
        double A[8];
        _mm256_storeu_pd(A, a[2 * b]);
        _mm256_storeu_pd(A + 4, a[2 * b + 1]);
        double T = ((A[0] + A[4]) + (A[2] + A[6])) + ((A[1] + A[5]) + (A[3] + A[7]));
        if (slow >> b & 1) sc[b] = FN(scale_code)(T, n, step);
    }
}

/* For tests (test_e8c_math.c): scale4's codes of four vectors y + b n. */
void FN(e8c_scale4)(const float *y, uint32_t n, float step, uint16_t sc[4]);
void FN(e8c_scale4)(const float *y, uint32_t n, float step, uint16_t sc[4])
{
    FN(scale4)(y, n, step, sc);
}

/* FORMAT.md section 4 for one 8-block in one register. */
static inline __m256 FN(cand)(__m256 u, __m256 *dist)
{
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 f = _mm256_round_ps(u, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 d = _mm256_sub_ps(u, f);
    __m256i fi = _mm256_cvtps_epi32(f);
    __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(fi), _mm256_extracti128_si256(fi, 1));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
    s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
    if (_mm_cvtsi128_si32(s4) & 1) {
        __m256 ad = _mm256_and_ps(d, absmask);
        __m256 m = _mm256_max_ps(ad, _mm256_permute2f128_ps(ad, ad, 1));
        m = _mm256_max_ps(m, _mm256_shuffle_ps(m, m, 0x4e));
        m = _mm256_max_ps(m, _mm256_shuffle_ps(m, m, 0xb1));
        int k = __builtin_ctz((unsigned)_mm256_movemask_ps(_mm256_cmp_ps(ad, m, _CMP_EQ_OQ)));
        float dk[8];
        _mm256_storeu_ps(dk, d);
        float adj = dk[k] >= 0 ? 1.0f : -1.0f;
        __m256i sel = _mm256_cmpeq_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32(k));
        f = _mm256_add_ps(f, _mm256_and_ps(_mm256_castsi256_ps(sel), _mm256_set1_ps(adj)));
    }
    __m256 r = _mm256_sub_ps(u, f);
    __m256 e = _mm256_mul_ps(r, r);
    __m256 h1 = _mm256_hadd_ps(e, e);  /* e0+e1, e2+e3, .., e4+e5, e6+e7 */
    __m256 h2 = _mm256_hadd_ps(h1, h1); /* (e0+e1)+(e2+e3) | (e4+e5)+(e6+e7) */
    *dist = _mm256_add_ps(h2, _mm256_permute2f128_ps(h2, h2, 1));
    return f;
}

/* 8x8 transpose of rows r[0..8) in place. */
static inline void FN(tr8)(__m256 r[8])
{
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(u0, u4, 0x20); r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    r[2] = _mm256_permute2f128_ps(u2, u6, 0x20); r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    r[4] = _mm256_permute2f128_ps(u0, u4, 0x31); r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    r[6] = _mm256_permute2f128_ps(u2, u6, 0x31); r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

/* FORMAT.md section 4's cand() for 8 blocks at once, structure of arrays:
 * u[i] holds coordinate i of blocks 0..7.  Branch-free.  The parity of
 * the integer sum from the float sum of the f_i: exact, since |y_j| <=
 * sqrt(n) * rms and the scale is at least 2/3 of rms * step (3-bit rounding
 * loses at most 1/16 for normal values, 1/3 in the bf16 subnormal range,
 * the clamp only raises it), so with step >= 1/64 and n <= 512 every |t| <
 * 2200 and every partial sum is an integer below 2^24.  The parity fix goes to the first coordinate with
 * the largest |d| (the reference's strict >), adj = d >= 0 ? +1 : -1; the
 * distance sums in the spec's tree order. */
static inline __m256 FN(cand8)(const __m256 u[8], __m256 f[8])
{
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 one = _mm256_set1_ps(1.0f), mone = _mm256_set1_ps(-1.0f), zero = _mm256_setzero_ps();
    __m256 d[8], ad[8], m, fs;
    for (int i = 0; i < 8; i++) {
        f[i] = _mm256_round_ps(u[i], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        d[i] = _mm256_sub_ps(u[i], f[i]);
        ad[i] = _mm256_and_ps(d[i], absmask);
    }
    fs = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(f[0], f[1]), _mm256_add_ps(f[2], f[3])),
                       _mm256_add_ps(_mm256_add_ps(f[4], f[5]), _mm256_add_ps(f[6], f[7])));
    m = _mm256_max_ps(_mm256_max_ps(_mm256_max_ps(ad[0], ad[1]), _mm256_max_ps(ad[2], ad[3])),
                      _mm256_max_ps(_mm256_max_ps(ad[4], ad[5]), _mm256_max_ps(ad[6], ad[7])));
    /* blocks with an odd sum still to fix: cleared at their first maximum */
    __m256 todo = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtps_epi32(fs), 31));
    todo = _mm256_castsi256_ps(_mm256_srai_epi32(_mm256_castps_si256(todo), 31));
    __m256 e[8];
    for (int i = 0; i < 8; i++) {
        __m256 sel = _mm256_and_ps(todo, _mm256_cmp_ps(ad[i], m, _CMP_EQ_OQ));
        todo = _mm256_andnot_ps(sel, todo);
        __m256 adj = _mm256_blendv_ps(mone, one, _mm256_cmp_ps(d[i], zero, _CMP_GE_OQ));
        f[i] = _mm256_add_ps(f[i], _mm256_and_ps(sel, adj));
        __m256 r = _mm256_sub_ps(u[i], f[i]);
        e[i] = _mm256_mul_ps(r, r);
    }
    return _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(e[0], e[1]), _mm256_add_ps(e[2], e[3])),
                         _mm256_add_ps(_mm256_add_ps(e[4], e[5]), _mm256_add_ps(e[6], e[7])));
}

/* The coset choice of 8 blocks (SoA, as cand8) from one rounding, the
 * argument of codec/cuda/e8cu_fastq.cuh (e8cu_e8_fast), where it is proven:
 * with f = rint(t), d = t - f, a = |d|, mt >= max|t_i| of the block (here
 * the block's own maximum), odd0 = parity of sum f and, when min a >= guard
 * = 2^-22 (mt + 1), odd1 = odd0 xor parity of the negative d (rint(t - 1/2)
 * = f - [d < 0]), the reference's dist1 - dist0 has the sign of
 *   delta = ((2 - sum a) + odd1 * 2 min a) - odd0 * (1 - 2 max a)
 * (fp32, this order; the sum in the spec's tree order) and is not 0
 * whenever |delta| > tau = 2^-17 + 2^-20 (mt + 1) (both thresholds here
 * are rounded once, a relative 2^-24 against a slack of 53 * 2^-24 in the
 * bound).  Then c = delta < 0, and the chosen candidate is computed
 * exactly as the reference's cand(t - c/2), with the parity just proven.
 * Returns 0 (out untouched) when a block of the 8 is not decided: the
 * caller runs the exact pair of cand8 for the group.  Else out[i] =
 * points2 as exact floats. */
static inline int FN(e8_fast8)(const __m256 t[8], __m256 out[8])
{
    const __m256 absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 one = _mm256_set1_ps(1.0f), mone = _mm256_set1_ps(-1.0f), zero = _mm256_setzero_ps();
    __m256 f[8], d[8], a[8], mt = zero;
    __m256i xd = _mm256_setzero_si256();
    for (int i = 0; i < 8; i++) {
        f[i] = _mm256_round_ps(t[i], _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        d[i] = _mm256_sub_ps(t[i], f[i]);
        a[i] = _mm256_and_ps(d[i], absmask);
        mt = _mm256_max_ps(mt, _mm256_and_ps(t[i], absmask));
        xd = _mm256_xor_si256(xd, _mm256_castps_si256(d[i]));
    }
    __m256 l1 = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])),
                              _mm256_add_ps(_mm256_add_ps(a[4], a[5]), _mm256_add_ps(a[6], a[7])));
    __m256 mx = _mm256_max_ps(_mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3])),
                              _mm256_max_ps(_mm256_max_ps(a[4], a[5]), _mm256_max_ps(a[6], a[7])));
    __m256 mn = _mm256_min_ps(_mm256_min_ps(_mm256_min_ps(a[0], a[1]), _mm256_min_ps(a[2], a[3])),
                              _mm256_min_ps(_mm256_min_ps(a[4], a[5]), _mm256_min_ps(a[6], a[7])));
    /* parity of sum f from the float sum: exact, see cand8 */
    __m256 fs = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(f[0], f[1]), _mm256_add_ps(f[2], f[3])),
                              _mm256_add_ps(_mm256_add_ps(f[4], f[5]), _mm256_add_ps(f[6], f[7])));
    __m256i odd0 = _mm256_srai_epi32(_mm256_slli_epi32(_mm256_cvtps_epi32(fs), 31), 31);
    __m256i odd1 = _mm256_xor_si256(odd0, _mm256_srai_epi32(xd, 31));
    __m256 p1 = _mm256_and_ps(_mm256_castsi256_ps(odd1), _mm256_add_ps(mn, mn));
    __m256 p0 = _mm256_and_ps(_mm256_castsi256_ps(odd0), _mm256_sub_ps(one, _mm256_add_ps(mx, mx)));
    __m256 delta = _mm256_sub_ps(_mm256_add_ps(_mm256_sub_ps(_mm256_set1_ps(2.0f), l1), p1), p0);
    __m256 tau = _mm256_add_ps(_mm256_mul_ps(mt, _mm256_set1_ps(0x1p-20f)), _mm256_set1_ps(0x1p-17f + 0x1p-20f));
    __m256 guard = _mm256_add_ps(_mm256_mul_ps(mt, _mm256_set1_ps(0x1p-22f)), _mm256_set1_ps(0x1p-22f));
    __m256 ok = _mm256_and_ps(_mm256_cmp_ps(_mm256_and_ps(delta, absmask), tau, _CMP_GT_OQ),
                              _mm256_cmp_ps(mn, guard, _CMP_GE_OQ));
    if (_mm256_movemask_ps(ok) != 0xFF) return 0;
    __m256 c = _mm256_cmp_ps(delta, zero, _CMP_LT_OQ);
    __m256 hc = _mm256_and_ps(c, _mm256_set1_ps(0.5f)), dd[8], ad[8];
    __m256 todo = _mm256_blendv_ps(_mm256_castsi256_ps(odd0), _mm256_castsi256_ps(odd1), c);
    for (int i = 0; i < 8; i++) { /* the chosen candidate: the reference's cand(t - c/2) */
        __m256 w = _mm256_sub_ps(t[i], hc);
        f[i] = _mm256_round_ps(w, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        dd[i] = _mm256_sub_ps(w, f[i]);
        ad[i] = _mm256_and_ps(dd[i], absmask);
    }
    __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_max_ps(ad[0], ad[1]), _mm256_max_ps(ad[2], ad[3])),
                             _mm256_max_ps(_mm256_max_ps(ad[4], ad[5]), _mm256_max_ps(ad[6], ad[7])));
    __m256 c1 = _mm256_and_ps(c, one);
    for (int i = 0; i < 8; i++) {
        __m256 sel = _mm256_and_ps(todo, _mm256_cmp_ps(ad[i], m, _CMP_EQ_OQ));
        todo = _mm256_andnot_ps(sel, todo);
        __m256 adj = _mm256_blendv_ps(mone, one, _mm256_cmp_ps(dd[i], zero, _CMP_GE_OQ));
        __m256 g = _mm256_add_ps(f[i], _mm256_and_ps(sel, adj));
        out[i] = _mm256_add_ps(_mm256_add_ps(g, g), c1); /* 2f, or 2g + 1 */
    }
    return 1;
}

static void FN(e8_vec)(const float *y, uint32_t n, float sf, int16_t *p2)
{
    const __m256 vsf = _mm256_set1_ps(sf), half = _mm256_set1_ps(0.5f);
    uint32_t b = 0;
    for (; b + 64 <= n; b += 64) { /* 8 blocks in SoA form */
        __m256 t[8], u[8], f[8], g[8];
        for (int i = 0; i < 8; i++) t[i] = _mm256_loadu_ps(y + b + 8 * i);
        FN(tr8)(t);
        for (int i = 0; i < 8; i++) t[i] = _mm256_div_ps(t[i], vsf);
        if (!FN(e8_fast8)(t, u)) { /* a near-tie: the exact pair */
            for (int i = 0; i < 8; i++) u[i] = _mm256_sub_ps(t[i], half);
            __m256 d0 = FN(cand8)(t, f), d1 = FN(cand8)(u, g);
            __m256 c = _mm256_cmp_ps(d1, d0, _CMP_LT_OQ);
            for (int i = 0; i < 8; i++) { /* 2f, or 2g + 1, as exact floats */
                __m256 pf = _mm256_add_ps(f[i], f[i]);
                __m256 pg = _mm256_add_ps(_mm256_add_ps(g[i], g[i]), _mm256_set1_ps(1.0f));
                u[i] = _mm256_blendv_ps(pf, pg, c);
            }
        }
        for (int i = 0; i < 8; i++) t[i] = u[i];
        FN(tr8)(t);
        for (int i = 0; i < 8; i += 2) {
            __m256i a = _mm256_cvtps_epi32(t[i]), z = _mm256_cvtps_epi32(t[i + 1]);
            __m256i pk = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, z), 0xD8);
            _mm256_storeu_si256((__m256i *)(p2 + b + 8 * i), pk);
        }
    }
    for (; b < n; b += 8) {
        __m256 t = _mm256_div_ps(_mm256_loadu_ps(y + b), vsf);
        __m256 d0, d1;
        __m256 f = FN(cand)(t, &d0);
        __m256 g = FN(cand)(_mm256_sub_ps(t, half), &d1);
        __m256i pi;
        if (_mm_cvtss_f32(_mm256_castps256_ps128(d1)) < _mm_cvtss_f32(_mm256_castps256_ps128(d0)))
            pi = _mm256_add_epi32(_mm256_slli_epi32(_mm256_cvtps_epi32(g), 1), _mm256_set1_epi32(1));
        else
            pi = _mm256_slli_epi32(_mm256_cvtps_epi32(f), 1);
        __m128i p16 = _mm_packs_epi32(_mm256_castsi256_si128(pi), _mm256_extracti128_si256(pi, 1));
        _mm_storeu_si128((__m128i *)(p2 + b), p16);
    }
}
#else
static void FN(e8_vec)(const float *y, uint32_t n, float sf, int16_t *p2)
{
    float t[8];
    for (uint32_t b = 0; b < n; b += 8) {
        for (int i = 0; i < 8; i++) t[i] = y[b + i] / sf;
        e8c_ref_e8_block(t, p2 + b);
    }
}
#endif

/* For tests (test_e8c_math.c): the fast path's lattice points of one
 * vector, p2 from y[0..n) / sf (n a multiple of 8, sf > 0 finite); returns
 * how many 8-block groups the AVX2 coset filter (e8_fast8) left to the
 * exact rule (0 in the baseline build). */
uint32_t FN(e8c_e8_vec)(const float *y, uint32_t n, float sf, int16_t *p2);
uint32_t FN(e8c_e8_vec)(const float *y, uint32_t n, float sf, int16_t *p2)
{
    uint32_t slow = 0;
    FN(e8_vec)(y, n, sf, p2);
#ifdef __AVX2__
    for (uint32_t b = 0; b + 64 <= n; b += 64) {
        __m256 t[8], u[8];
        for (int i = 0; i < 8; i++) t[i] = _mm256_div_ps(_mm256_loadu_ps(y + b + 8 * i), _mm256_set1_ps(sf));
        FN(tr8)(t);
        slow += !FN(e8_fast8)(t, u);
    }
#endif
    return slow;
}

/* The error of the first element of x[0..n) that is NaN, inf or above 2^64. */
static int64_t FN(bad_elem)(e8c_ctx *ctx, const float *x, uint32_t n, uint32_t h, uint32_t t)
{
    for (uint32_t i = 0; i < n; i++)
        if (!(fabsf(x[i]) <= 0x1p64f))
            return e8c_fail(ctx, isfinite(x[i]) ? E8C_ERR_RANGE : E8C_ERR_NONFINITE,
                            "head %u token %u dim %u is %g (must be finite, |x| <= 2^64)", h, t, i,
                            (double)x[i]);
    return e8c_fail(ctx, E8C_ERR_RANGE, "head %u token %u: value out of range", h, t);
}

int64_t FN(e8c_fast_quantize_layer)(e8c_ctx *ctx, const e8c_layer_geom *g,
                                    const e8c_tensor *src, e8c_qlayer *q)
{
    const e8c_fingerprint *fp = &ctx->fp;
    uint32_t n = g->n, Q = g->N - g->raw_head - g->raw_tail;
    int rope = g->kind == E8C_K && fp->rope.type != E8C_ROPE_NONE;
    uint32_t hr = rope ? fp->rope.rotary_dim / 2 : 0;
    const float *ct = NULL, *st = NULL;
    if (rope) {
        int64_t rc = e8c_ctx_rope_table(ctx, g->first_pos + g->raw_head, Q, g->rope_seq_len, &ct, &st);
        if (rc) return rc;
    }
    float step = g->kind == E8C_K ? fp->config.k_step : fp->config.v_step;
    float *x = ctx->w.vec, *tmp = ctx->w.vec + E8C_MAX_HEAD_DIM;
#ifdef __AVX2__
    /* fp16 rows, head_dim 64 or 128, full split-half RoPE or none: the
     * front of the pipeline in registers (front_v) */
    int fastv = (n == 64 || n == 128) && src->dtype == E8C_DTYPE_F16 && src->stride_dim == 1 &&
                (!rope || (fp->rope.layout == E8C_ROPE_LAYOUT_SPLIT_HALF && fp->rope.rotary_dim == n));
#endif
#ifdef __AVX2__
    /* Four tokens at a time: their fronts, then their scales, then their
     * lattice points, so that the serial chain of each vector (sum of
     * squares, sqrt, scale, division) overlaps with the next ones'; the
     * first bad element in token order is reported, as below. */
    if (fastv)
        for (uint32_t h = 0; h < g->H; h++)
            for (uint32_t j = 0; j < Q; j += 4) {
                uint32_t nb = Q - j < 4 ? Q - j : 4;
                uint16_t sc[4];
                for (uint32_t b = 0; b < nb; b++) {
                    int64_t base = (int64_t)h * src->stride_head + (int64_t)(g->raw_head + j + b) * src->stride_token;
                    const uint16_t *p = (const uint16_t *)src->data + base;
                    const float *c = rope ? ct + (size_t)(j + b) * hr : NULL;
                    const float *sn = rope ? st + (size_t)(j + b) * hr : NULL;
                    float *xb = x + (size_t)b * n; /* w.vec: 4 rows of up to 512 */
                    int ok = n == 64 ? FN(front_v)(p, c, sn, &ctx->hp, xb, 8) : FN(front_v)(p, c, sn, &ctx->hp, xb, 16);
                    if (!ok) {
                        FN(load)(src, base, n, xb);
                        return FN(bad_elem)(ctx, xb, n, h, g->raw_head + j + b);
                    }
                }
                if (nb == 4) FN(scale4)(x, n, step, sc);
                else
                    for (uint32_t b = 0; b < nb; b++) sc[b] = FN(scale)(x + (size_t)b * n, n, step);
                for (uint32_t b = 0; b < nb; b++) {
                    size_t v = (size_t)h * Q + j + b;
                    q->scales[v] = sc[b];
                    if (sc[b] == 0) memset(&q->points2[v * n], 0, sizeof(int16_t) * n);
                    else FN(e8_vec)(x + (size_t)b * n, n, e8c_bf16_to_f32(sc[b]), &q->points2[v * n]);
                }
            }
    if (fastv) return 0;
#endif
    for (uint32_t h = 0; h < g->H; h++)
        for (uint32_t j = 0; j < Q; j++) {
            int64_t base = (int64_t)h * src->stride_head + (int64_t)(g->raw_head + j) * src->stride_token;
            int ok = FN(load)(src, base, n, x);
            if (ok && rope) FN(rope)(&fp->rope, x, ct + (size_t)j * hr, st + (size_t)j * hr, 0);
            if (ok) FN(hfwd)(&ctx->hp, x, tmp);
            if (!ok) return FN(bad_elem)(ctx, x, n, h, g->raw_head + j);
            size_t v = (size_t)h * Q + j;
            uint16_t s = FN(scale)(x, n, step);
            q->scales[v] = s;
            if (s == 0) memset(&q->points2[v * n], 0, sizeof(int16_t) * n);
            else FN(e8_vec)(x, n, e8c_bf16_to_f32(s), &q->points2[v * n]);
        }
    return 0;
}

#ifdef __AVX2__
/* e8c_pack.c's head_fast with AVX2: one 8-block per step.  Same result:
 * returns nonzero if a symbol is 255 or a value is out of range. */
/* e8c_head_points for n a multiple of 16, two 8-blocks per register in
 * 16-bit lanes.  No lane wraps before the verdict is known: S of a valid
 * frame is within [-16384, 16383]; a decoded R is within [-128, 127]
 * (symbols < 255; 255 marks the frame bad), so S = R, R + M (|M| <= 16384,
 * checked by the caller) and R + S_prev with S_prev in range stay inside
 * int16, and once an S leaves the range the verdict is bad already.  The
 * range check is head_points' |P| < 2^15 on P = 2 S + c (lanes 0-6: S in
 * [-16384, 16383]) and P_7 = 2 (2 S_7 + par) + c (S_7 in [-8192, 8191]),
 * as bounds on S. */
static uint32_t FN(head_points16)(const uint8_t *restrict cs, const uint8_t *restrict hs, uint32_t Q,
                                  uint32_t n, uint8_t mode, const int32_t *M, const uint8_t *cos_bits,
                                  size_t b0, int16_t *restrict p2)
{
    int16_t prev[E8C_MAX_HEAD_DIM], M16[E8C_MAX_HEAD_DIM];
    for (uint32_t j = 0; j < n; j++) { prev[j] = 0; M16[j] = mode == 3 ? (int16_t)M[j] : 0; }
    /* bytes 0-6 of the 14 coordinates, the first half, bytes 7-13, the second half */
    const __m128i order = _mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 14, 7, 8, 9, 10, 11, 12, 13, 15);
    const __m256i one = _mm256_set1_epi16(1), v255 = _mm256_set1_epi16(255);
    const __m256i mul = _mm256_setr_epi16(2, 2, 2, 2, 2, 2, 2, 4, 2, 2, 2, 2, 2, 2, 2, 4);
    const __m256i lo = _mm256_setr_epi16(-16384, -16384, -16384, -16384, -16384, -16384, -16384, -8192,
                                         -16384, -16384, -16384, -16384, -16384, -16384, -16384, -8192);
    const __m256i hi = _mm256_setr_epi16(16383, 16383, 16383, 16383, 16383, 16383, 16383, 8191,
                                         16383, 16383, 16383, 16383, 16383, 16383, 16383, 8191);
    /* P - mul S by coset c and parity par of each of the two blocks:
     * c in lanes 0-7, 2 par more in lane 7 (index c0 | par0 << 1 | c1 << 2 | par1 << 3) */
    int16_t addv[16][16];
    for (int k = 0; k < 16; k++)
        for (int l = 0; l < 16; l++) {
            int blk = l >> 3, c = (k >> (2 * blk)) & 1, par = (k >> (2 * blk + 1)) & 1;
            addv[k][l] = (int16_t)(c + ((l & 7) == 7 ? 2 * par : 0));
        }
    __m256i bad = _mm256_setzero_si256();
    size_t blk = b0, k = 0;
    for (uint32_t t = 0; t < Q; t++)
        for (uint32_t j = 0; j < n; j += 16, k += 2, blk += 2) {
            __m128i b = _mm_loadu_si128((const __m128i *)(cs + 7 * k)); /* 14 used; cs holds n bytes per 7 */
            uint16_t h2;
            memcpy(&h2, hs + k, 2);
            b = _mm_shuffle_epi8(_mm_insert_epi16(b, h2, 7), order);
            __m256i z = _mm256_cvtepu8_epi16(b);
            bad = _mm256_or_si256(bad, _mm256_cmpeq_epi16(z, v255));
            __m256i S = _mm256_xor_si256(_mm256_srli_epi16(z, 1), _mm256_sub_epi16(_mm256_setzero_si256(), _mm256_and_si256(z, one)));
            if (mode == 2) {
                S = _mm256_add_epi16(S, _mm256_loadu_si256((const __m256i *)(prev + j)));
                _mm256_storeu_si256((__m256i *)(prev + j), S);
            } else if (mode == 3) {
                S = _mm256_add_epi16(S, _mm256_loadu_si256((const __m256i *)(M16 + j)));
            }
            bad = _mm256_or_si256(bad, _mm256_or_si256(_mm256_cmpgt_epi16(lo, S) , _mm256_cmpgt_epi16(S, hi)));
            /* parities of S_0..S_6 of each block (low bit of each lane, as the high byte's top bit) */
            uint32_t m = (uint32_t)_mm256_movemask_epi8(_mm256_slli_epi16(S, 15));
            uint32_t par0 = (uint32_t)__builtin_popcount(m & 0x2AAAu) & 1;
            uint32_t par1 = (uint32_t)__builtin_popcount(m & 0x2AAA0000u) & 1;
            uint32_t c0 = (cos_bits[blk >> 3] >> (blk & 7)) & 1, c1 = (cos_bits[(blk + 1) >> 3] >> ((blk + 1) & 7)) & 1;
            __m256i P = _mm256_add_epi16(_mm256_mullo_epi16(S, mul),
                                         _mm256_loadu_si256((const __m256i *)addv[c0 | par0 << 1 | c1 << 2 | par1 << 3]));
            _mm256_storeu_si256((__m256i *)(p2 + 8 * k), P);
        }
    return (uint32_t)!_mm256_testz_si256(bad, bad);
}

uint32_t FN(e8c_head_points)(const uint8_t *restrict cs, const uint8_t *restrict hs, uint32_t Q,
                             uint32_t n, uint8_t mode, const int32_t *M, const uint8_t *cos_bits,
                             size_t b0, int32_t *restrict prev, int16_t *restrict p2);
uint32_t FN(e8c_head_points)(const uint8_t *restrict cs, const uint8_t *restrict hs, uint32_t Q,
                             uint32_t n, uint8_t mode, const int32_t *M, const uint8_t *cos_bits,
                             size_t b0, int32_t *restrict prev, int16_t *restrict p2)
{
    if (n % 16 == 0) return FN(head_points16)(cs, hs, Q, n, mode, M, cos_bits, b0, p2);
    const __m256i one = _mm256_set1_epi32(1), v255 = _mm256_set1_epi32(255);
    const __m256i shifts = _mm256_setr_epi32(1, 1, 1, 1, 1, 1, 1, 2);
    const __m256i pmin = _mm256_set1_epi32(-32768), pmax = _mm256_set1_epi32(32767);
    /* P - (S << shift) by coset c and parity par: c in every lane, 2 par
     * more in lane 7 (P_i = 2 S_i + c, P_7 = 2 (2 S_7 + par) + c) */
    static const int32_t addv[4][8] = {{0, 0, 0, 0, 0, 0, 0, 0}, {1, 1, 1, 1, 1, 1, 1, 1},
                                       {0, 0, 0, 0, 0, 0, 0, 2}, {1, 1, 1, 1, 1, 1, 1, 3}};
    __m256i bad = _mm256_setzero_si256();
    for (uint32_t j = 0; j < n; j++) prev[j] = 0;
    size_t blk = b0, nb = (size_t)Q * (n / 8);
    uint32_t j = 0;
    for (size_t k = 0; k < nb; k++, blk++, j = j + 8 == n ? 0 : j + 8) {
        /* 7 coordinate bytes and the half byte; the 8-byte load reads one
         * byte past the 7 (the coords buffer holds n bytes per 8-block of
         * 7: always readable) */
        uint64_t w8;
        memcpy(&w8, cs + 7 * k, 8);
        w8 = (w8 & 0x00FFFFFFFFFFFFFFull) | ((uint64_t)hs[k] << 56);
        __m256i z = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)w8));
        bad = _mm256_or_si256(bad, _mm256_cmpeq_epi32(z, v255));
        __m256i S = _mm256_xor_si256(_mm256_srli_epi32(z, 1), _mm256_sub_epi32(_mm256_setzero_si256(), _mm256_and_si256(z, one)));
        if (mode == 2) {
            S = _mm256_add_epi32(S, _mm256_loadu_si256((const __m256i *)(prev + j)));
            _mm256_storeu_si256((__m256i *)(prev + j), S);
        } else if (mode == 3) {
            S = _mm256_add_epi32(S, _mm256_loadu_si256((const __m256i *)(M + j)));
        }
        /* parity of S_0..S_6 from their low bits */
        int mask = _mm256_movemask_ps(_mm256_castsi256_ps(_mm256_slli_epi32(S, 31))) & 0x7f;
        uint32_t par = (uint32_t)__builtin_popcount((unsigned)mask) & 1;
        uint32_t c = (cos_bits[blk >> 3] >> (blk & 7)) & 1;
        /* |P| < 2^15 checked; for lanes 0-6 that is exactly head_points'
         * check of S (P = 2 S + c), for lane 7 it implies it */
        __m256i P = _mm256_add_epi32(_mm256_sllv_epi32(S, shifts),
                                     _mm256_loadu_si256((const __m256i *)addv[c | par << 1]));
        bad = _mm256_or_si256(bad, _mm256_or_si256(_mm256_cmpgt_epi32(pmin, P), _mm256_cmpgt_epi32(P, pmax)));
        __m128i p16 = _mm_packs_epi32(_mm256_castsi256_si128(P), _mm256_extracti128_si256(P, 1));
        _mm_storeu_si128((__m128i *)(p2 + 8 * k), p16);
    }
    return (uint32_t)!_mm256_testz_si256(bad, bad);
}
#endif

#ifdef __AVX2__
static inline uint64_t FN(hsum32)(__m256i v)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return (uint32_t)_mm_cvtsi128_si32(s);
}

static inline __m256i FN(zz8)(__m256i r)
{
    return _mm256_xor_si256(_mm256_slli_epi32(r, 1), _mm256_srai_epi32(r, 31));
}

/* e8c_pack.c's head_ints + decorrelate + escape-free emit for one head
 * (Q >= 1 tokens), in three passes instead of five: S and the sums of
 * modes 1, 2 and the column sums; the mean's cost; the chosen mode applied
 * and written as bytes.  Same integers, same sums (exact), same mode, same
 * bytes.  S gets R (the decorrelated integers), M the means.  Returns the
 * mode; *esc = 1 if some zigzag value is >= 255: then cs/hs are not valid
 * and the caller emits from S with escapes. */
/* sum of 16 u16 lanes z as 8 i32 pair sums, added to acc (madd works on
 * signed i16: z ^ 0x8000 = z - 32768, the 16 x 32768 added back once by
 * the caller per call) */
static inline __m256i FN(sum16)(__m256i acc, __m256i z)
{
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_xor_si256(z, _mm256_set1_epi16((short)0x8000)),
                                                   _mm256_set1_epi16(1)));
}

/* the sum of 8 signed i32 lanes, in 64 bits */
static inline int64_t FN(hsum_s64)(__m256i v)
{
    int32_t a[8];
    _mm256_storeu_si256((__m256i *)(void *)a, v);
    return ((int64_t)a[0] + a[1]) + ((int64_t)a[2] + a[3]) + ((int64_t)a[4] + a[5]) + ((int64_t)a[6] + a[7]);
}

static inline __m256i FN(zz16)(__m256i r)
{
    return _mm256_xor_si256(_mm256_slli_epi16(r, 1), _mm256_srai_epi16(r, 15));
}

/* e8c_pack_head for n a multiple of 16, in 16-bit lanes (16 elements per
 * register instead of 8): S = (P - c) >> 1, >> 2 for the half lane (7 of
 * each 8-block), |S| <= 16384, so S, the row differences, S - M and their
 * zigzag values (< 2^16) fit 16-bit lanes; the sums go to 32 bits (sum16),
 * the column sums too.  Same integers, sums, mode and bytes as the 32-bit
 * passes; S16 (Q n i16) lives in the first half of S, and on an escape is
 * widened in place to the int32 R the caller emits from. */
static uint32_t FN(pack_head16)(const int16_t *restrict p2, uint32_t Q, uint32_t n, uint32_t forced,
                                int32_t *restrict S, int32_t *restrict M, uint8_t *restrict cs,
                                uint8_t *restrict hs, int *esc)
{
    int16_t *S16 = (int16_t *)(void *)S, prow[E8C_MAX_HEAD_DIM], M16[E8C_MAX_HEAD_DIM];
    int32_t col[E8C_MAX_HEAD_DIM];
    const __m256i one16 = _mm256_set1_epi16(1);
    int64_t c1 = 0, c2 = 0, c3 = 0; /* sums of zigzag - 32768 (sum16), then the 32768s added */
    memset(col, 0, sizeof(int32_t) * n);
    __m256i a1 = _mm256_setzero_si256(), a2 = _mm256_setzero_si256();
    uint32_t rows = 0;
    for (uint32_t t = 0; t < Q; t++) {
        const int16_t *pr = p2 + (size_t)t * n;
        int16_t *sr = S16 + (size_t)t * n;
        for (uint32_t j = 0; j < n; j += 16) {
            __m256i P = _mm256_loadu_si256((const __m256i *)(pr + j));
            __m256i s1 = _mm256_srai_epi16(_mm256_sub_epi16(P, _mm256_and_si256(P, one16)), 1);
            __m256i sv = _mm256_blend_epi16(s1, _mm256_srai_epi16(s1, 1), 0x80);
            _mm256_storeu_si256((__m256i *)(sr + j), sv);
            __m256i lo = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(sv));
            __m256i hi = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(sv, 1));
            _mm256_storeu_si256((__m256i *)(col + j), _mm256_add_epi32(_mm256_loadu_si256((const __m256i *)(col + j)), lo));
            _mm256_storeu_si256((__m256i *)(col + j + 8), _mm256_add_epi32(_mm256_loadu_si256((const __m256i *)(col + j + 8)), hi));
            __m256i z1 = FN(zz16)(sv);
            a1 = FN(sum16)(a1, z1);
            a2 = FN(sum16)(a2, t ? FN(zz16)(_mm256_sub_epi16(sv, _mm256_loadu_si256((const __m256i *)(sr - n + j)))) : z1);
        }
        /* flush the i32 lanes before they can wrap: each gains at most
         * 2^16 in magnitude per register, n / 16 <= 32 registers per row */
        if (++rows == 256 || t + 1 == Q) {
            c1 += FN(hsum_s64)(a1);
            c2 += FN(hsum_s64)(a2);
            a1 = a2 = _mm256_setzero_si256();
            rows = 0;
        }
    }
    for (uint32_t j = 0; j < n; j++) {
        int64_t num = (int64_t)col[j] + Q / 2;
        M[j] = (int32_t)(num >= 0 ? num / Q : -((-num + Q - 1) / Q));
        M16[j] = (int16_t)M[j];
    }
    __m256i a3 = _mm256_setzero_si256();
    rows = 0;
    for (uint32_t t = 0; t < Q; t++) {
        const int16_t *sr = S16 + (size_t)t * n;
        for (uint32_t j = 0; j < n; j += 16)
            a3 = FN(sum16)(a3, FN(zz16)(_mm256_sub_epi16(_mm256_loadu_si256((const __m256i *)(sr + j)),
                                                         _mm256_loadu_si256((const __m256i *)(M16 + j)))));
        if (++rows == 256 || t + 1 == Q) {
            c3 += FN(hsum_s64)(a3);
            a3 = _mm256_setzero_si256();
            rows = 0;
        }
    }
    /* the xor of sum16 took 32768 from every u16: add it back */
    int64_t bias = (int64_t)Q * n * 32768;
    c1 += bias; c2 += bias; c3 += bias;
    uint32_t mode = e8c_decor_pick(forced, (uint64_t)c1, (uint64_t)c2, (uint64_t)c3);
    memset(prow, 0, sizeof(int16_t) * n);
    __m256i big = _mm256_setzero_si256();
    const __m256i lim = _mm256_set1_epi16(254);
    /* per 16 bytes (two 8-blocks): the 7 + 7 coordinates first, then the two halves */
    const __m256i sel = _mm256_setr_epi8(0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 7, 15,
                                         0, 1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 7, 15);
    size_t nc = 0, nh = 0;
    for (uint32_t t = 0; t < Q; t++) {
        int16_t *sr = S16 + (size_t)t * n;
        for (uint32_t j = 0; j < n; j += 32) {
            __m256i r[2];
            for (int k = 0; k < 2; k++) {
                if (j + 16 * k >= n) { r[k] = _mm256_setzero_si256(); continue; }
                __m256i sv = _mm256_loadu_si256((const __m256i *)(sr + j + 16 * k)), rv = sv;
                if (mode == 2) {
                    rv = _mm256_sub_epi16(sv, _mm256_loadu_si256((const __m256i *)(prow + j + 16 * k)));
                    _mm256_storeu_si256((__m256i *)(prow + j + 16 * k), sv);
                } else if (mode == 3) {
                    rv = _mm256_sub_epi16(sv, _mm256_loadu_si256((const __m256i *)(M16 + j + 16 * k)));
                }
                _mm256_storeu_si256((__m256i *)(sr + j + 16 * k), rv);
                __m256i z = FN(zz16)(rv);
                big = _mm256_or_si256(big, _mm256_xor_si256(_mm256_max_epu16(z, lim), lim));
                r[k] = z;
            }
            /* bytes of 32 lanes (the second 16 may be past the row: then
             * only the first 16 are written) */
            __m256i b = _mm256_permute4x64_epi64(_mm256_packus_epi16(r[0], r[1]), 0xD8);
            b = _mm256_shuffle_epi8(b, sel); /* per 128 bits: 14 coordinates, 2 halves */
            __m128i b0 = _mm256_castsi256_si128(b), b1 = _mm256_extracti128_si256(b, 1);
            _mm_storeu_si128((__m128i *)(cs + nc), b0);
            uint16_t h0 = (uint16_t)_mm_extract_epi16(b0, 7);
            memcpy(hs + nh, &h0, 2);
            nc += 14;
            nh += 2;
            if (j + 16 < n) {
                _mm_storeu_si128((__m128i *)(cs + nc), b1);
                uint16_t h1 = (uint16_t)_mm_extract_epi16(b1, 7);
                memcpy(hs + nh, &h1, 2);
                nc += 14;
                nh += 2;
            }
        }
    }
    *esc = !_mm256_testz_si256(big, big);
    if (*esc) /* R as int32 for the caller's emit with escapes: widen in place, from the end
               * (byte copies: the i16 and i32 views of one buffer) */
        for (size_t i = (size_t)Q * n; i-- > 0;) {
            int16_t v;
            memcpy(&v, (const char *)S + 2 * i, 2);
            int32_t w = v;
            memcpy((char *)S + 4 * i, &w, 4);
        }
    return mode;
}

uint32_t FN(e8c_pack_head)(const int16_t *restrict p2, uint32_t Q, uint32_t n, uint32_t forced,
                           int32_t *restrict S, int32_t *restrict M, uint8_t *restrict cs,
                           uint8_t *restrict hs, int *esc);
uint32_t FN(e8c_pack_head)(const int16_t *restrict p2, uint32_t Q, uint32_t n, uint32_t forced,
                           int32_t *restrict S, int32_t *restrict M, uint8_t *restrict cs,
                           uint8_t *restrict hs, int *esc)
{
    if (n % 16 == 0) return FN(pack_head16)(p2, Q, n, forced, S, M, cs, hs, esc);
    const __m256i shifts = _mm256_setr_epi32(1, 1, 1, 1, 1, 1, 1, 2);
    int32_t col[E8C_MAX_HEAD_DIM], prow[E8C_MAX_HEAD_DIM];
    uint64_t c1 = 0, c2 = 0, c3 = 0;
    memset(col, 0, sizeof(int32_t) * n);
    for (uint32_t t = 0; t < Q; t++) {
        const int16_t *pr = p2 + (size_t)t * n;
        int32_t *sr = S + (size_t)t * n;
        __m256i a1 = _mm256_setzero_si256(), a2 = _mm256_setzero_si256();
        for (uint32_t j = 0; j < n; j += 8) {
            __m256i P = _mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)(pr + j)));
            __m256i s = _mm256_srav_epi32(_mm256_sub_epi32(P, _mm256_set1_epi32(pr[j] & 1)), shifts);
            _mm256_storeu_si256((__m256i *)(sr + j), s);
            __m256i cl = _mm256_loadu_si256((const __m256i *)(col + j));
            _mm256_storeu_si256((__m256i *)(col + j), _mm256_add_epi32(cl, s));
            a1 = _mm256_add_epi32(a1, FN(zz8)(s));
            if (t) a2 = _mm256_add_epi32(a2, FN(zz8)(_mm256_sub_epi32(s, _mm256_loadu_si256((const __m256i *)(sr - n + j)))));
        }
        uint64_t r1 = FN(hsum32)(a1);
        c1 += r1;
        c2 += t ? FN(hsum32)(a2) : r1;
    }
    for (uint32_t j = 0; j < n; j++) {
        int64_t num = (int64_t)col[j] + Q / 2;
        M[j] = (int32_t)(num >= 0 ? num / Q : -((-num + Q - 1) / Q));
    }
    for (uint32_t t = 0; t < Q; t++) {
        const int32_t *sr = S + (size_t)t * n;
        __m256i a3 = _mm256_setzero_si256();
        for (uint32_t j = 0; j < n; j += 8)
            a3 = _mm256_add_epi32(a3, FN(zz8)(_mm256_sub_epi32(_mm256_loadu_si256((const __m256i *)(sr + j)),
                                                               _mm256_loadu_si256((const __m256i *)(M + j)))));
        c3 += FN(hsum32)(a3);
    }
    uint32_t mode = e8c_decor_pick(forced, c1, c2, c3);
    memset(prow, 0, sizeof(int32_t) * n);
    __m256i big = _mm256_setzero_si256();
    const __m256i lim = _mm256_set1_epi32(254);
    size_t nc = 0, nh = 0;
    for (uint32_t t = 0; t < Q; t++) {
        int32_t *sr = S + (size_t)t * n;
        for (uint32_t j = 0; j < n; j += 8) {
            __m256i s = _mm256_loadu_si256((const __m256i *)(sr + j)), r = s;
            if (mode == 2) {
                r = _mm256_sub_epi32(s, _mm256_loadu_si256((const __m256i *)(prow + j)));
                _mm256_storeu_si256((__m256i *)(prow + j), s);
            } else if (mode == 3) {
                r = _mm256_sub_epi32(s, _mm256_loadu_si256((const __m256i *)(M + j)));
            }
            _mm256_storeu_si256((__m256i *)(sr + j), r);
            __m256i z = FN(zz8)(r);
            big = _mm256_or_si256(big, _mm256_cmpgt_epi32(z, lim));
            /* 8 bytes (7 coordinates + the half) to cs; the 8th is
             * overwritten by the next block (cs has room for it) */
            __m128i w16 = _mm_packus_epi32(_mm256_castsi256_si128(z), _mm256_extracti128_si256(z, 1));
            __m128i w8 = _mm_packus_epi16(w16, w16);
            _mm_storel_epi64((__m128i *)(cs + nc), w8);
            hs[nh++] = (uint8_t)_mm_extract_epi8(w8, 7);
            nc += 7;
        }
    }
    *esc = !_mm256_testz_si256(big, big);
    return mode;
}
#endif

static void FN(store)(const e8c_tensor *dst, int64_t base, uint32_t n, const float *restrict x)
{
    uint8_t *d = dst->data;
    if (dst->stride_dim != 1) {
        for (uint32_t j = 0; j < n; j++) e8c_store(d, dst->dtype, base + (int64_t)j * dst->stride_dim, x[j]);
    } else if (dst->dtype == E8C_DTYPE_F32) {
        memcpy((float *)d + base, x, sizeof(float) * n);
    } else if (dst->dtype == E8C_DTYPE_BF16) {
        uint16_t *p = (uint16_t *)d + base;
        const uint32_t *xu = (const uint32_t *)(const void *)x;
        for (uint32_t j = 0; j < n; j++) {
            uint32_t u = xu[j];
            p[j] = (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
        }
    } else {
        uint16_t *p = (uint16_t *)d + base;
#ifdef __F16C__
        const __m256 mx = _mm256_set1_ps(65504.0f), mn = _mm256_set1_ps(-65504.0f);
        for (uint32_t j = 0; j < n; j += 8) {
            __m256 v = _mm256_min_ps(_mm256_max_ps(_mm256_loadu_ps(x + j), mn), mx);
            _mm_storeu_si128((__m128i *)(p + j), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
        }
#else
        for (uint32_t j = 0; j < n; j++) p[j] = e8c_f32_to_f16_sat(x[j]);
#endif
    }
}

int64_t FN(e8c_fast_dequantize_layer)(e8c_ctx *ctx, const e8c_qlayer *q,
                                      const e8c_decode_params *dp, const e8c_tensor *dst)
{
    const e8c_fingerprint *fp = &ctx->fp;
    uint32_t n = fp->head_dim, Q = q->n_tokens - q->n_raw_head - q->n_raw_tail;
    int rope = q->kind == E8C_K && fp->rope.type != E8C_ROPE_NONE;
    uint32_t hr = rope ? fp->rope.rotary_dim / 2 : 0;
    const float *ct = NULL, *st = NULL;
    if (rope) {
        uint32_t first = (dp && dp->use_new_pos) ? dp->new_first_pos : q->first_pos;
        uint32_t L = (dp && dp->use_new_pos && dp->new_rope_seq_len) ? dp->new_rope_seq_len
                                                                     : q->rope_seq_len;
        int64_t rc = e8c_ctx_rope_table(ctx, first + q->n_raw_head, Q, L, &ct, &st);
        if (rc) return rc;
    }
    float *x = ctx->w.vec, *tmp = ctx->w.vec + E8C_MAX_HEAD_DIM;
#ifdef __AVX2__
    /* fp16 rows, head_dim 64 or 128, full split-half RoPE or none: the
     * back of the pipeline in registers (back_v) */
    int fastv = (n == 64 || n == 128) && dst->dtype == E8C_DTYPE_F16 && dst->stride_dim == 1 &&
                (!rope || (fp->rope.layout == E8C_ROPE_LAYOUT_SPLIT_HALF && fp->rope.rotary_dim == n));
#endif
    for (uint32_t h = 0; h < fp->n_kv_heads; h++)
        for (uint32_t j = 0; j < Q; j++) {
            size_t v = (size_t)h * Q + j;
            float sf = e8c_bf16_to_f32(q->scales[v]);
            const int16_t *p2 = &q->points2[v * n];
#ifdef __AVX2__
            if (fastv) {
                uint16_t *o = (uint16_t *)dst->data + (int64_t)h * dst->stride_head +
                              (int64_t)(q->n_raw_head + j) * dst->stride_token;
                const float *c = rope ? ct + (size_t)j * hr : NULL, *sn = rope ? st + (size_t)j * hr : NULL;
                if (n == 64) FN(back_v)(p2, sf, c, sn, &ctx->hp, o, 8);
                else FN(back_v)(p2, sf, c, sn, &ctx->hp, o, 16);
                continue;
            }
#endif
            for (uint32_t i = 0; i < n; i++) x[i] = sf * (0.5f * (float)p2[i]);
            FN(hinv)(&ctx->hp, x, tmp);
            if (rope) FN(rope)(&fp->rope, x, ct + (size_t)j * hr, st + (size_t)j * hr, 1);
            FN(store)(dst, (int64_t)h * dst->stride_head + (int64_t)(q->n_raw_head + j) * dst->stride_token, n, x);
        }
    return 0;
}
