/*
 * e8c_ref.c: the plain reference quantizer, FORMAT.md sections 1-4 line by
 * line: one head vector at a time, scalar code, no tricks.  The fast path
 * (e8c_fast.c) must produce the same qlayer (and so the same frame bytes);
 * tests/codec compares them.
 */
#include <math.h>
#include <string.h>

#include "codec/e8c_internal.h"

/* FORMAT.md section 4: bf16 scale from the RMS. */
uint16_t e8c_ref_scale(const float *y, uint32_t n, float step)
{
    double A[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (uint32_t j = 0; j < n; j++) A[j % 8] = A[j % 8] + (double)y[j] * (double)y[j];
    double T = ((A[0] + A[4]) + (A[2] + A[6])) + ((A[1] + A[5]) + (A[3] + A[7]));
    if (T == 0) return 0;
    return e8c_scale_code(sqrt(T / n), step);
}

/* FORMAT.md section 4: v = fp32(rms * step) rounded to nearest even at 3
 * mantissa bits, as bf16 bits (low 4 bits zero); 0x0010 if it underflows. */
uint16_t e8c_scale_code(double rms, float step)
{
    float v = (float)(rms * (double)step);
    uint32_t u;
    memcpy(&u, &v, 4);
    u = (u + 0x7ffffu + ((u >> 20) & 1u)) & 0xfff00000u;
    uint16_t s = (uint16_t)(u >> 16);
    return s == 0 ? 0x0010 : s;
}

/* Conway & Sloane's nearest point of D8 (+ offset): f gets the integer
 * point of u, returns the squared distance (fp32, fixed tree order). */
static float d8_cand(const float *u, float *f)
{
    float d[8];
    long long sum = 0;
    for (int i = 0; i < 8; i++) {
        f[i] = rintf(u[i]);
        d[i] = u[i] - f[i];
        sum += (long long)f[i];
    }
    if (sum & 1) {
        int k = 0;
        for (int i = 1; i < 8; i++)
            if (fabsf(d[i]) > fabsf(d[k])) k = i;
        f[k] = d[k] >= 0 ? f[k] + 1.0f : f[k] - 1.0f;
    }
    float e[8];
    for (int i = 0; i < 8; i++) {
        float r = u[i] - f[i];
        e[i] = r * r;
    }
    return ((e[0] + e[1]) + (e[2] + e[3])) + ((e[4] + e[5]) + (e[6] + e[7]));
}

void e8c_ref_e8_block(const float *t, int16_t *p2)
{
    float f[8], g[8], u[8];
    float dist0 = d8_cand(t, f);
    for (int i = 0; i < 8; i++) u[i] = t[i] - 0.5f;
    float dist1 = d8_cand(u, g);
    if (dist1 < dist0)
        for (int i = 0; i < 8; i++) p2[i] = (int16_t)(2 * (int)g[i] + 1);
    else
        for (int i = 0; i < 8; i++) p2[i] = (int16_t)(2 * (int)f[i]);
}

void e8c_ref_quantize_vec(const float *y, uint32_t n, float step, uint16_t *scale,
                          int16_t *p2)
{
    uint16_t s = e8c_ref_scale(y, n, step);
    *scale = s;
    if (s == 0) {
        memset(p2, 0, sizeof(int16_t) * n);
        return;
    }
    float sf = e8c_bf16_to_f32(s);
    float t[8];
    for (uint32_t b = 0; b < n; b += 8) {
        for (int i = 0; i < 8; i++) t[i] = y[b + i] / sf;
        e8c_ref_e8_block(t, p2 + b);
    }
}

void e8c_ref_dequantize_vec(uint16_t scale, const int16_t *p2, uint32_t n, float *y)
{
    float sf = e8c_bf16_to_f32(scale);
    for (uint32_t j = 0; j < n; j++) y[j] = sf * (0.5f * (float)p2[j]);
}

/* Reads head h, token t of src into x (fp32); checks FORMAT.md section 1. */
static int64_t load_vec(e8c_ctx *ctx, const e8c_tensor *src, uint32_t n, uint32_t h,
                        uint32_t t, float *x)
{
    int64_t base = (int64_t)h * src->stride_head + (int64_t)t * src->stride_token;
    for (uint32_t j = 0; j < n; j++) {
        x[j] = e8c_load(src->data, src->dtype, base + (int64_t)j * src->stride_dim);
        if (!isfinite(x[j]))
            return e8c_fail(ctx, E8C_ERR_NONFINITE, "head %u token %u dim %u is %s", h, t, j,
                            isnan(x[j]) ? "NaN" : "inf");
        if (fabsf(x[j]) > (float)E8C_MAX_ABS)
            return e8c_fail(ctx, E8C_ERR_RANGE, "head %u token %u dim %u: |%g| > 2^64", h, t, j,
                            (double)x[j]);
    }
    return 0;
}

static void store_vec(const e8c_tensor *dst, uint32_t n, uint32_t h, uint32_t t, const float *x)
{
    int64_t base = (int64_t)h * dst->stride_head + (int64_t)t * dst->stride_token;
    for (uint32_t j = 0; j < n; j++)
        e8c_store(dst->data, dst->dtype, base + (int64_t)j * dst->stride_dim, x[j]);
}

int64_t e8c_ref_quantize_layer(e8c_ctx *ctx, const e8c_layer_geom *g,
                               const e8c_tensor *src, e8c_qlayer *q)
{
    const e8c_fingerprint *fp = &ctx->fp;
    uint32_t n = g->n, Q = g->N - g->raw_head - g->raw_tail;
    int rope = g->kind == E8C_K && fp->rope.type != E8C_ROPE_NONE;
    uint32_t hr = rope ? fp->rope.rotary_dim / 2 : 0;
    const float *ct = NULL, *st = NULL;
    if (rope && Q > 0) {
        int64_t rc = e8c_ctx_rope_table(ctx, g->first_pos + g->raw_head, Q, g->rope_seq_len, &ct, &st);
        if (rc) return rc;
    }
    float step = g->kind == E8C_K ? fp->config.k_step : fp->config.v_step;
    float *x = ctx->w.vec, *tmp = ctx->w.vec + E8C_MAX_HEAD_DIM;
    for (uint32_t h = 0; h < g->H; h++)
        for (uint32_t j = 0; j < Q; j++) {
            int64_t rc = load_vec(ctx, src, n, h, g->raw_head + j, x);
            if (rc) return rc;
            if (rope) e8c_rope_remove(&fp->rope, x, ct + (size_t)j * hr, st + (size_t)j * hr);
            e8c_hadamard_fwd(&ctx->hp, x, tmp);
            size_t v = (size_t)h * Q + j;
            e8c_ref_quantize_vec(x, n, step, &q->scales[v], &q->points2[v * n]);
        }
    return 0;
}

/* Restores one layer: dst gets token t of every head. */
int64_t e8c_ref_dequantize_layer(e8c_ctx *ctx, const e8c_qlayer *q,
                                 const e8c_decode_params *dp, const e8c_tensor *dst)
{
    const e8c_fingerprint *fp = &ctx->fp;
    uint32_t n = fp->head_dim, Q = q->n_tokens - q->n_raw_head - q->n_raw_tail;
    int rope = q->kind == E8C_K && fp->rope.type != E8C_ROPE_NONE;
    uint32_t hr = rope ? fp->rope.rotary_dim / 2 : 0;
    const float *ct = NULL, *st = NULL;
    if (rope && Q > 0) {
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
            e8c_ref_dequantize_vec(q->scales[v], &q->points2[v * n], n, x);
            e8c_hadamard_inv(&ctx->hp, x, tmp);
            if (rope) e8c_rope_apply(&fp->rope, x, ct + (size_t)j * hr, st + (size_t)j * hr);
            store_vec(dst, n, h, q->n_raw_head + j, x);
        }
    return 0;
}
