/*
 * e8c_fast_body.h: the fast CPU quantizer, compiled twice: by e8c_fast.c
 * for baseline x86-64 (SSE2) and by e8c_fast_avx2.c with -mavx2 -mf16c;
 * e8c_fast.c picks one at run time (cpuid).  Same arithmetic as the
 * reference, in the same order (FORMAT.md): element-wise loops the compiler
 * vectorizes, hand-written AVX2 for the E8 block search and fp16 loads.
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
#ifdef __AVX2__
        /* strides 1, 2, 4 inside one register: lane i gets a + c or a - c
         * with the same operands as the scalar butterfly */
        for (uint32_t j = 0; j < m; j += 8) {
            __m256 v = _mm256_loadu_ps(x + j), y;
            y = _mm256_permute_ps(v, 0xB1);
            v = _mm256_blend_ps(_mm256_add_ps(v, y), _mm256_sub_ps(y, v), 0xAA);
            y = _mm256_permute_ps(v, 0x4E);
            v = _mm256_blend_ps(_mm256_add_ps(v, y), _mm256_sub_ps(y, v), 0xCC);
            y = _mm256_permute2f128_ps(v, v, 1);
            v = _mm256_blend_ps(_mm256_add_ps(v, y), _mm256_sub_ps(y, v), 0xF0);
            _mm256_storeu_ps(x + j, v);
        }
#else
        for (uint32_t j = 0; j < m; j += 2) { float a = x[j], c = x[j + 1]; x[j] = a + c; x[j + 1] = a - c; }
        for (uint32_t j = 0; j < m; j += 4)
            for (uint32_t k = 0; k < 2; k++) { float a = x[j + k], c = x[j + k + 2]; x[j + k] = a + c; x[j + k + 2] = a - c; }
        for (uint32_t j = 0; j < m; j += 8)
            for (uint32_t k = 0; k < 4; k++) { float a = x[j + k], c = x[j + k + 4]; x[j + k] = a + c; x[j + k + 4] = a - c; }
#endif
        for (uint32_t hs = 8; hs < m; hs <<= 1)
            for (uint32_t j = 0; j < m; j += 2 * hs)
                for (uint32_t k = 0; k < hs; k++) {
                    float a = x[j + k], c = x[j + k + hs];
                    x[j + k] = a + c;
                    x[j + k + hs] = a - c;
                }
        float g = hp->gain[b];
        for (uint32_t j = 0; j < m; j++) x[j] = x[j] * g;
    }
}

static void FN(hfwd)(const e8c_hplan *restrict hp, float *restrict x, float *restrict tmp)
{
    uint32_t n = hp->n;
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
    for (uint32_t j = 0; j < n; j += 8)
        for (int l = 0; l < 8; l++) A[l] = A[l] + (double)y[j + l] * (double)y[j + l];
    double T = ((A[0] + A[4]) + (A[2] + A[6])) + ((A[1] + A[5]) + (A[3] + A[7]));
    if (T == 0) return 0;
    return e8c_scale_code(sqrt(T / n), step);
}

#ifdef __AVX2__
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

static void FN(e8_vec)(const float *y, uint32_t n, float sf, int16_t *p2)
{
    const __m256 vsf = _mm256_set1_ps(sf), half = _mm256_set1_ps(0.5f);
    for (uint32_t b = 0; b < n; b += 8) {
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
    for (uint32_t h = 0; h < g->H; h++)
        for (uint32_t j = 0; j < Q; j++) {
            int64_t base = (int64_t)h * src->stride_head + (int64_t)(g->raw_head + j) * src->stride_token;
            if (!FN(load)(src, base, n, x)) {
                for (uint32_t i = 0; i < n; i++)
                    if (!(fabsf(x[i]) <= 0x1p64f))
                        return e8c_fail(ctx, isfinite(x[i]) ? E8C_ERR_RANGE : E8C_ERR_NONFINITE,
                                        "head %u token %u dim %u is %g (must be finite, |x| <= 2^64)",
                                        h, g->raw_head + j, i, (double)x[i]);
            }
            if (rope) FN(rope)(&fp->rope, x, ct + (size_t)j * hr, st + (size_t)j * hr, 0);
            FN(hfwd)(&ctx->hp, x, tmp);
            size_t v = (size_t)h * Q + j;
            uint16_t s = FN(scale)(x, n, step);
            q->scales[v] = s;
            if (s == 0) memset(&q->points2[v * n], 0, sizeof(int16_t) * n);
            else FN(e8_vec)(x, n, e8c_bf16_to_f32(s), &q->points2[v * n]);
        }
    return 0;
}

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
    for (uint32_t h = 0; h < fp->n_kv_heads; h++)
        for (uint32_t j = 0; j < Q; j++) {
            size_t v = (size_t)h * Q + j;
            float sf = e8c_bf16_to_f32(q->scales[v]);
            const int16_t *p2 = &q->points2[v * n];
            for (uint32_t i = 0; i < n; i++) x[i] = sf * (0.5f * (float)p2[i]);
            FN(hinv)(&ctx->hp, x, tmp);
            if (rope) FN(rope)(&fp->rope, x, ct + (size_t)j * hr, st + (size_t)j * hr, 1);
            FN(store)(dst, (int64_t)h * dst->stride_head + (int64_t)(q->n_raw_head + j) * dst->stride_token, n, x);
        }
    return 0;
}
