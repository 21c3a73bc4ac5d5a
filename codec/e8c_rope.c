/*
 * e8c_rope.c: RoPE frequencies for every variant (FORMAT.md 2.1), the
 * deterministic sincos (2.2), removal and restore (2.3).
 *
 * inv_freq follows HuggingFace transformers' modeling_rope_utils.py
 * (default, linear, dynamic NTK, yarn, llama3, longrope), evaluated in f64
 * and rounded once to fp32.  cos/sin use our own range reduction and Taylor
 * polynomials instead of libm so that every backend gets the same bits.
 */
#include <math.h>
#include <stdlib.h>

#include "codec/e8c_internal.h"

static const double E8C_PI = 3.14159265358979323846;

static double yarn_corr(double rot, double d, double base, double omax)
{
    return d * log(omax / (rot * 2 * E8C_PI)) / (2 * log(base));
}

int64_t e8c_rope_inv_freq(const e8c_fingerprint *fp, uint32_t L, float *inv)
{
    if (!fp || !inv) return E8C_ERR_ARG;
    const e8c_rope *r = &fp->rope;
    if (r->type == E8C_ROPE_NONE) return 0;
    if (r->type < E8C_ROPE_DEFAULT || r->type > E8C_ROPE_LONGROPE || r->rotary_dim < 2)
        return E8C_ERR_ROPE;
    uint32_t h = r->rotary_dim / 2;
    double d = r->rotary_dim, base = r->theta, om = r->original_max_pos;
    double lo = 0, hi = 0;
    if (r->type == E8C_ROPE_DYNAMIC && L > r->original_max_pos)
        base = r->theta * pow(r->factor * L / om - (r->factor - 1), d / (d - 2));
    if (r->type == E8C_ROPE_YARN) {
        lo = yarn_corr(r->beta_fast, d, base, om);
        hi = yarn_corr(r->beta_slow, d, base, om);
        if (!r->yarn_no_truncate) { lo = floor(lo); hi = ceil(hi); }
        if (lo < 0) lo = 0;
        if (hi > d - 1) hi = d - 1;
        if (lo == hi) hi += 0.001;
    }
    for (uint32_t i = 0; i < h; i++) {
        double pf = pow(base, (double)(2 * i) / d), v = 1 / pf;
        switch (r->type) {
        case E8C_ROPE_LINEAR: v = 1 / pf / r->factor; break;
        case E8C_ROPE_YARN: {
            double ramp = ((double)i - lo) / (hi - lo);
            ramp = ramp < 0 ? 0 : ramp > 1 ? 1 : ramp;
            double ext = 1 - ramp;
            v = (1 / (r->factor * pf)) * (1 - ext) + (1 / pf) * ext;
            break;
        }
        case E8C_ROPE_LLAMA3: {
            double wl = 2 * E8C_PI / v;
            double lw = om / r->low_freq_factor, hw = om / r->high_freq_factor;
            if (wl > lw) v = v / r->factor;
            else if (!(wl < hw)) {
                double s = (om / wl - r->low_freq_factor) /
                           (r->high_freq_factor - r->low_freq_factor);
                v = (1 - s) * v / r->factor + s * v;
            }
            break;
        }
        case E8C_ROPE_LONGROPE: {
            double f = L > r->original_max_pos ? r->long_factor[i] : r->short_factor[i];
            v = 1 / (f * pf);
            break;
        }
        default: break;
        }
        inv[i] = (float)v;
    }
    return 0;
}

/* FORMAT.md 2.2.  Every line is one IEEE f64 operation; no fma. */
void e8c_sincos(float ang, float *s_out, float *c_out)
{
    static const double S1 = -1.0 / 6.0, S2 = 1.0 / 120.0, S3 = -1.0 / 5040.0,
                        S4 = 1.0 / 362880.0, S5 = -1.0 / 39916800.0,
                        S6 = 1.0 / 6227020800.0;
    static const double C1 = -1.0 / 2.0, C2 = 1.0 / 24.0, C3 = -1.0 / 720.0,
                        C4 = 1.0 / 40320.0, C5 = -1.0 / 3628800.0,
                        C6 = 1.0 / 479001600.0;
    double x = (double)ang;
    double k = nearbyint(x * 0x1.45f306dc9c883p-1);
    double r = ((x - k * 0x1.921fb544p+0) - k * 0x1.0b4611a6p-34) - k * 0x1.3198a2e037073p-69;
    double z = r * r;
    double S = r + (r * z) * (S1 + z * (S2 + z * (S3 + z * (S4 + z * (S5 + z * S6)))));
    double C = 1 + z * (C1 + z * (C2 + z * (C3 + z * (C4 + z * (C5 + z * C6)))));
    int q = (int)((int64_t)k & 3);
    double sv, cv;
    switch (q) {
    case 0: sv = S; cv = C; break;
    case 1: sv = C; cv = -S; break;
    case 2: sv = -S; cv = -C; break;
    default: sv = -C; cv = S; break;
    }
    *s_out = (float)sv;
    *c_out = (float)cv;
}

int64_t e8c_rope_cos_sin(const e8c_fingerprint *fp, uint32_t L, uint32_t first,
                         uint32_t n, float *cos_t, float *sin_t)
{
    if (!fp || (n && (!cos_t || !sin_t))) return E8C_ERR_ARG;
    if ((uint64_t)first + n > E8C_MAX_POSITION) return E8C_ERR_POSITION;
    if (fp->rope.type == E8C_ROPE_NONE) return 0;
    float inv[E8C_MAX_ROPE_FACTORS];
    int64_t rc = e8c_rope_inv_freq(fp, L, inv);
    if (rc) return rc;
    uint32_t h = fp->rope.rotary_dim / 2;
    for (uint32_t t = 0; t < n; t++) {
        float pos = (float)(first + t);
        for (uint32_t i = 0; i < h; i++) {
            float ang = inv[i] * pos;
            e8c_sincos(ang, &sin_t[(size_t)t * h + i], &cos_t[(size_t)t * h + i]);
        }
    }
    return 0;
}

/* Cached table in the ctx: one per (first, n, L); chunks reuse it for
 * every layer. */
int64_t e8c_ctx_rope_table(e8c_ctx *ctx, uint32_t first, uint32_t n, uint32_t L,
                           const float **cos_t, const float **sin_t)
{
    uint32_t h = ctx->fp.rope.rotary_dim / 2;
    if (!(ctx->rc_valid && ctx->rc_first == first && ctx->rc_n >= n && ctx->rc_L == L)) {
        if (n > ctx->rc_cap) {
            float *c = realloc(ctx->rc_cos, sizeof(float) * (size_t)n * h + 4);
            if (c) ctx->rc_cos = c;
            float *s = realloc(ctx->rc_sin, sizeof(float) * (size_t)n * h + 4);
            if (s) ctx->rc_sin = s;
            if (!c || !s) { ctx->rc_valid = 0; return e8c_fail(ctx, E8C_ERR_NOMEM, "rope table"); }
            ctx->rc_cap = n;
        }
        int64_t rc = e8c_rope_cos_sin(&ctx->fp, L, first, n, ctx->rc_cos, ctx->rc_sin);
        if (rc) { ctx->rc_valid = 0; return e8c_fail(ctx, rc, "rope table for positions %u+%u", first, n); }
        ctx->rc_valid = 1;
        ctx->rc_first = first;
        ctx->rc_n = n;
        ctx->rc_L = L;
    }
    *cos_t = ctx->rc_cos;
    *sin_t = ctx->rc_sin;
    return 0;
}

/* c, s: the token's row of rotary_dim/2 values. */
void e8c_rope_remove(const e8c_rope *r, float *x, const float *c, const float *s)
{
    uint32_t h = r->rotary_dim / 2;
    uint32_t step = r->layout == E8C_ROPE_LAYOUT_INTERLEAVED ? 2 : 1;
    uint32_t boff = r->layout == E8C_ROPE_LAYOUT_INTERLEAVED ? 1 : h;
    for (uint32_t i = 0; i < h; i++) {
        float *pa = &x[i * step], *pb = &x[i * step + boff];
        float a = *pa, b = *pb;
        float ac = a * c[i], bs = b * s[i], bc = b * c[i], as = a * s[i];
        *pa = ac + bs;
        *pb = bc - as;
    }
}

void e8c_rope_apply(const e8c_rope *r, float *x, const float *c, const float *s)
{
    uint32_t h = r->rotary_dim / 2;
    uint32_t step = r->layout == E8C_ROPE_LAYOUT_INTERLEAVED ? 2 : 1;
    uint32_t boff = r->layout == E8C_ROPE_LAYOUT_INTERLEAVED ? 1 : h;
    for (uint32_t i = 0; i < h; i++) {
        float *pa = &x[i * step], *pb = &x[i * step + boff];
        float a = *pa, b = *pb;
        float ac = a * c[i], bs = b * s[i], bc = b * c[i], as = a * s[i];
        *pa = ac - bs;
        *pb = bc + as;
    }
}
