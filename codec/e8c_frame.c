/*
 * e8c_frame.c: the context (create, workspace, backend) and the per-layer
 * frame API: policy (which tokens stay raw), input checks, quantize with
 * the chosen backend, pack; and the reverse.
 */
#define ZSTD_STATIC_LINKING_ONLY
#include <zstd.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "codec/e8c_internal.h"

int e8c_cpu_has_avx2(void);

/* ------------------------------------------------------------- context */

e8c_ctx *e8c_ctx_create(const e8c_fingerprint *fp, int64_t *err)
{
    int64_t e = fp ? e8c_fingerprint_validate(fp, NULL, 0) : E8C_ERR_ARG;
    e8c_ctx *ctx = NULL;
    if (e == 0 && !(ctx = calloc(1, sizeof *ctx))) e = E8C_ERR_NOMEM;
    if (e == 0) {
        ctx->fp = *fp;
        e = e8c_fingerprint_id(fp, ctx->id);
    }
    if (e == 0) {
        e8c_hplan_init(&ctx->hp, fp->head_dim, fp->config.hadamard_seed);
        ctx->zc = ZSTD_createCCtx();
        ctx->zd = ZSTD_createDCtx();
        ctx->w.vec = malloc(sizeof(float) * 4 * E8C_MAX_HEAD_DIM);
        if (!ctx->zc || !ctx->zd || !ctx->w.vec) e = E8C_ERR_NOMEM;
    }
    if (e == 0) {
        int bad = ZSTD_isError(ZSTD_CCtx_setParameter(ctx->zc, ZSTD_c_compressionLevel, fp->config.zstd_level));
        bad |= ZSTD_isError(ZSTD_CCtx_setParameter(ctx->zc, ZSTD_c_format, ZSTD_f_zstd1_magicless));
        bad |= ZSTD_isError(ZSTD_CCtx_setParameter(ctx->zc, ZSTD_c_contentSizeFlag, 0));
        bad |= ZSTD_isError(ZSTD_CCtx_setParameter(ctx->zc, ZSTD_c_checksumFlag, 0));
        bad |= ZSTD_isError(ZSTD_CCtx_setParameter(ctx->zc, ZSTD_c_dictIDFlag, 0));
        bad |= ZSTD_isError(ZSTD_CCtx_setParameter(ctx->zc, ZSTD_c_minMatch, 7));
        bad |= ZSTD_isError(ZSTD_DCtx_setParameter(ctx->zd, ZSTD_d_format, ZSTD_f_zstd1_magicless));
        if (bad) e = E8C_ERR_ZSTD;
        e8c_ctx_set_backend(ctx, E8C_BACKEND_AUTO);
    }
    if (e && ctx) { e8c_ctx_free(ctx); ctx = NULL; }
    if (err) *err = e;
    return ctx;
}

static void work_free(e8c_work *w)
{
    free(w->scales); free(w->points2); free(w->raw); free(w->ints); free(w->rtmp); free(w->rtmp2);
    for (int s = 0; s <= E8C_N_STREAMS; s++) free(w->sbuf[s]);
}

void e8c_ctx_free(e8c_ctx *ctx)
{
    if (!ctx) return;
    work_free(&ctx->w);
    free(ctx->w.vec);
    free(ctx->rc_cos);
    free(ctx->rc_sin);
    ZSTD_freeCCtx(ctx->zc);
    ZSTD_freeDCtx(ctx->zd);
    free(ctx);
}

int64_t e8c_work_reserve(e8c_ctx *ctx, uint32_t T)
{
    if (T == 0 || T > E8C_MAX_TOKENS)
        return e8c_fail(ctx, E8C_ERR_LIMIT, "%u tokens: must be in [1, %u]", T, E8C_MAX_TOKENS);
    if (T <= ctx->w.tokens) return 0;
    size_t H = ctx->fp.n_kv_heads, n = ctx->fp.head_dim, e = H * T * n;
    e8c_work nw = {0};
    nw.vec = ctx->w.vec;
    nw.tokens = T;
    nw.scales = malloc(2 * H * T);
    nw.points2 = malloc(2 * e);
    nw.raw = malloc(4 * e);
    nw.ints = malloc(4 * (size_t)T * n);
    size_t caps[E8C_N_STREAMS + 1] = {H * T, H * T, e / 64 + 8, e, e / 8 + 8, 3 * e + 16,
                                      H * (1 + 3 * n) + 16, 8, 3 * e / 8 + 16};
    nw.rtmp = malloc(2 * e + 64);
    nw.rtmp2 = malloc(e + 64);
    int bad = !nw.scales || !nw.points2 || !nw.raw || !nw.ints || !nw.rtmp || !nw.rtmp2;
    for (int s = 0; s <= E8C_N_STREAMS; s++) {
        nw.sbuf[s] = malloc(caps[s]);
        bad |= !nw.sbuf[s];
    }
    if (bad) { nw.vec = NULL; work_free(&nw); return e8c_fail(ctx, E8C_ERR_NOMEM, "workspace for %u tokens", T); }
    work_free(&ctx->w);
    ctx->w = nw;
    return 0;
}

int64_t e8c_ctx_reserve(e8c_ctx *ctx, uint32_t max_tokens)
{
    if (!ctx) return E8C_ERR_ARG;
    int64_t r = e8c_work_reserve(ctx, max_tokens);
    if (r) return r;
    const float *c, *s;
    if (ctx->fp.rope.type != E8C_ROPE_NONE && max_tokens > ctx->rc_cap) {
        /* size the cos/sin cache too */
        r = e8c_ctx_rope_table(ctx, 0, max_tokens, 0, &c, &s);
        ctx->rc_valid = 0;
    }
    return r;
}

const e8c_fingerprint *e8c_ctx_fingerprint(const e8c_ctx *ctx) { return ctx ? &ctx->fp : NULL; }
const uint8_t *e8c_ctx_id(const e8c_ctx *ctx) { return ctx ? ctx->id : NULL; }
const char *e8c_ctx_last_error(const e8c_ctx *ctx) { return ctx ? ctx->err : ""; }

int64_t e8c_ctx_set_backend(e8c_ctx *ctx, e8c_backend b)
{
    if (!ctx) return E8C_ERR_ARG;
    switch (b) {
    case E8C_BACKEND_AUTO: ctx->backend = e8c_cpu_has_avx2() ? 3 : 2; return 0;
    case E8C_BACKEND_REF: ctx->backend = 1; return 0;
    case E8C_BACKEND_FAST_SCALAR: ctx->backend = 2; return 0;
    }
    return e8c_fail(ctx, E8C_ERR_ARG, "backend %d unknown", (int)b);
}

/* ------------------------------------------------------------- checks */

int64_t e8c_check_tensor(e8c_ctx *ctx, const e8c_tensor *t, uint32_t N)
{
    if (!t || !t->data) return e8c_fail(ctx, E8C_ERR_ARG, "tensor or its data is NULL");
    if (e8c_dtype_size((e8c_dtype)t->dtype) == 0)
        return e8c_fail(ctx, E8C_ERR_DTYPE, "tensor dtype %u: must be fp16 (1), bf16 (2) or fp32 (3)", t->dtype);
    if (t->stride_head < 0 || t->stride_token < 0 || t->stride_dim < 0 ||
        t->stride_head > (INT64_C(1) << 40) || t->stride_token > (INT64_C(1) << 40) ||
        t->stride_dim > (INT64_C(1) << 40))
        return e8c_fail(ctx, E8C_ERR_SHAPE, "tensor strides must be in [0, 2^40] elements");
    (void)N;
    return 0;
}

static int64_t check_params(e8c_ctx *ctx, const e8c_frame_params *p, uint32_t *seq, uint32_t *rl)
{
    if (!p) return e8c_fail(ctx, E8C_ERR_ARG, "params NULL");
    if (p->layer >= ctx->fp.n_layers)
        return e8c_fail(ctx, E8C_ERR_LAYER_RANGE, "layer %u >= n_layers %u", p->layer, ctx->fp.n_layers);
    if (p->kind > E8C_V) return e8c_fail(ctx, E8C_ERR_ARG, "kind %u: must be K (0) or V (1)", p->kind);
    if (p->n_tokens == 0 || p->n_tokens > E8C_MAX_TOKENS)
        return e8c_fail(ctx, E8C_ERR_LIMIT, "n_tokens %u: must be in [1, %u]", p->n_tokens, E8C_MAX_TOKENS);
    uint64_t end = (uint64_t)p->first_pos + p->n_tokens;
    if (end > E8C_MAX_POSITION)
        return e8c_fail(ctx, E8C_ERR_POSITION, "positions %u+%u exceed %u", p->first_pos, p->n_tokens, E8C_MAX_POSITION);
    *seq = p->seq_len ? p->seq_len : (uint32_t)end;
    if (*seq < end || *seq > E8C_MAX_POSITION)
        return e8c_fail(ctx, E8C_ERR_POSITION, "seq_len %u < first_pos + n_tokens %llu", *seq, (unsigned long long)end);
    *rl = p->rope_seq_len ? p->rope_seq_len : *seq;
    return 0;
}

/* Geometry and policy of one layer frame (FORMAT.md section 6). */
static void layer_geom(const e8c_ctx *ctx, const e8c_frame_params *p, uint32_t seq,
                       uint32_t rl, e8c_layer_geom *g)
{
    const e8c_config *c = &ctx->fp.config;
    memset(g, 0, sizeof *g);
    g->H = ctx->fp.n_kv_heads; g->n = ctx->fp.head_dim; g->N = p->n_tokens;
    g->first_pos = p->first_pos; g->rope_seq_len = rl; g->kind = p->kind; g->layer = p->layer;
    g->method = e8c_layer_protected(&ctx->fp, p->layer) ? E8C_METHOD_RAW : E8C_METHOD_E8;
    if (g->method == E8C_METHOD_RAW) return;
    if (c->sink_tokens > p->first_pos) {
        uint32_t k = c->sink_tokens - p->first_pos;
        g->raw_head = k < g->N ? k : g->N;
    }
    uint32_t start = seq > c->recent_tokens ? seq - c->recent_tokens : 0;
    uint32_t end = p->first_pos + p->n_tokens;
    if (end > start) {
        uint32_t k = end - start;
        if (k > g->N) k = g->N;
        g->raw_tail = k > g->N - g->raw_head ? g->N - g->raw_head : k;
    }
}

/* Checks the raw-kept tokens (finite, |x| <= 2^64) and copies them into
 * q->raw in the source dtype. */
static int64_t check_and_raw(e8c_ctx *ctx, const e8c_layer_geom *g, const e8c_tensor *src,
                             e8c_qlayer *q)
{
    uint32_t sd = ctx->fp.src_dtype, n = g->n;
    size_t es = e8c_dtype_size((e8c_dtype)sd), r = 0;
    for (uint32_t h = 0; h < g->H; h++)
        for (uint32_t t = 0; t < g->N; t++) {
            int raw = g->method == E8C_METHOD_RAW || t < g->raw_head || t >= g->N - g->raw_tail;
            if (!raw) continue; /* quantized tokens: the backend checks them */
            int64_t base = (int64_t)h * src->stride_head + (int64_t)t * src->stride_token;
            for (uint32_t j = 0; j < n; j++) {
                int64_t idx = base + (int64_t)j * src->stride_dim;
                float x = e8c_load(src->data, src->dtype, idx);
                if (!isfinite(x))
                    return e8c_fail(ctx, E8C_ERR_NONFINITE, "head %u token %u dim %u is %s", h, t, j,
                                    isnan(x) ? "NaN" : "inf");
                if (fabsf(x) > (float)E8C_MAX_ABS)
                    return e8c_fail(ctx, E8C_ERR_RANGE, "head %u token %u dim %u: |%g| > 2^64", h, t, j, (double)x);
                uint8_t *o = (uint8_t *)q->raw + es * r++;
                if (src->dtype == sd) { memcpy(o, (const uint8_t *)src->data + es * (size_t)idx, es); continue; }
                uint16_t b16;
                if (sd == E8C_DTYPE_F32) { memcpy(o, &x, 4); continue; }
                if (sd == E8C_DTYPE_BF16) b16 = e8c_f32_to_bf16(x);
                else if (e8c_f32_to_f16_checked(x, &b16))
                    return e8c_fail(ctx, E8C_ERR_RANGE, "raw-kept value %g does not fit fp16", (double)x);
                e8c_put16(o, b16);
            }
        }
    return 0;
}

static void qlayer_ws(e8c_ctx *ctx, e8c_qlayer *q)
{
    q->scales = ctx->w.scales;
    q->points2 = ctx->w.points2;
    q->raw = ctx->w.raw;
}

static int64_t quantize_into(e8c_ctx *ctx, const e8c_frame_params *p, const e8c_tensor *src,
                             e8c_qlayer *q)
{
    uint32_t seq = 0, rl = 0;
    int64_t rc = check_params(ctx, p, &seq, &rl);
    if (!rc) rc = e8c_check_tensor(ctx, src, p->n_tokens);
    if (rc) return rc;
    e8c_layer_geom g;
    layer_geom(ctx, p, seq, rl, &g);
    q->kind = g.kind; q->layer = g.layer; q->n_tokens = g.N; q->first_pos = g.first_pos;
    q->rope_seq_len = g.rope_seq_len; q->method = g.method;
    q->n_raw_head = g.raw_head; q->n_raw_tail = g.raw_tail;
    if ((rc = check_and_raw(ctx, &g, src, q))) return rc;
    if (g.method == E8C_METHOD_RAW || g.raw_head + g.raw_tail == g.N) return 0;
    return ctx->backend == 1 ? e8c_ref_quantize_layer(ctx, &g, src, q)
                             : e8c_fast_quantize_layer(ctx, &g, src, q);
}

/* ------------------------------------------------------------ frames */

int64_t e8c_frame_max_size(const e8c_ctx *ctx, uint32_t n_tokens)
{
    if (!ctx) return E8C_ERR_ARG;
    if (n_tokens == 0 || n_tokens > E8C_MAX_TOKENS) return E8C_ERR_LIMIT;
    return (int64_t)e8c_frame_bound(&ctx->fp, n_tokens);
}

int64_t e8c_frame_encode(e8c_ctx *ctx, const e8c_frame_params *p, const e8c_tensor *src,
                         void *dst, size_t dst_size)
{
    if (!ctx) return E8C_ERR_ARG;
    ctx->err[0] = 0;
    if (!dst) return e8c_fail(ctx, E8C_ERR_ARG, "dst NULL");
    if (p && p->n_tokens > ctx->w.tokens) {
        int64_t rc = e8c_work_reserve(ctx, p->n_tokens);
        if (rc) return rc;
    }
    e8c_qlayer q;
    qlayer_ws(ctx, &q);
    int64_t rc = quantize_into(ctx, p, src, &q);
    return rc ? rc : e8c_pack(ctx, &q, dst, dst_size);
}

int64_t e8c_frame_info_get(const void *frame, size_t size, e8c_frame_info *info)
{
    if (!frame || !info) return E8C_ERR_ARG;
    return e8c_frame_parse(frame, size, info, NULL, NULL, 1);
}

/* Writes the raw-kept tokens of q into dst, re-rotating keys for new
 * positions (remove at stored, apply at new). */
static int64_t raw_to_dst(e8c_ctx *ctx, const e8c_qlayer *q, const e8c_decode_params *dp,
                          const e8c_tensor *dst)
{
    const e8c_fingerprint *fp = &ctx->fp;
    uint32_t H = fp->n_kv_heads, n = fp->head_dim, sd = fp->src_dtype;
    uint32_t nr = q->method == E8C_METHOD_RAW ? q->n_tokens : q->n_raw_head + q->n_raw_tail;
    int rerot = q->kind == E8C_K && fp->rope.type != E8C_ROPE_NONE && dp && dp->use_new_pos;
    float inv_old[E8C_MAX_ROPE_FACTORS], inv_new[E8C_MAX_ROPE_FACTORS];
    uint32_t hr = fp->rope.rotary_dim / 2;
    if (rerot) {
        int64_t rc = e8c_rope_inv_freq(fp, q->rope_seq_len, inv_old);
        if (!rc) rc = e8c_rope_inv_freq(fp, dp->new_rope_seq_len ? dp->new_rope_seq_len : q->rope_seq_len, inv_new);
        if (rc) return e8c_fail(ctx, rc, "rope frequencies");
    }
    float *x = ctx->w.vec, c[E8C_MAX_ROPE_FACTORS], s[E8C_MAX_ROPE_FACTORS];
    for (uint32_t h = 0; h < H; h++)
        for (uint32_t r = 0; r < nr; r++) {
            uint32_t t = (q->method == E8C_METHOD_RAW || r < q->n_raw_head) ? r
                                                                           : q->n_tokens - nr + r;
            const void *src = (const uint8_t *)q->raw + e8c_dtype_size((e8c_dtype)sd) * ((size_t)h * nr + r) * n;
            int64_t base = (int64_t)h * dst->stride_head + (int64_t)t * dst->stride_token;
            if (!rerot && dst->dtype == sd) {
                size_t es = e8c_dtype_size((e8c_dtype)sd);
                for (uint32_t j = 0; j < n; j++)
                    memcpy((uint8_t *)dst->data + es * (size_t)(base + (int64_t)j * dst->stride_dim),
                           (const uint8_t *)src + es * j, es);
                continue;
            }
            for (uint32_t j = 0; j < n; j++) x[j] = e8c_load(src, sd, j);
            if (rerot) {
                float po = (float)(q->first_pos + t), pn = (float)(dp->new_first_pos + t);
                for (uint32_t i = 0; i < hr; i++) e8c_sincos(inv_old[i] * po, &s[i], &c[i]);
                e8c_rope_remove(&fp->rope, x, c, s);
                for (uint32_t i = 0; i < hr; i++) e8c_sincos(inv_new[i] * pn, &s[i], &c[i]);
                e8c_rope_apply(&fp->rope, x, c, s);
            }
            for (uint32_t j = 0; j < n; j++) e8c_store(dst->data, dst->dtype, base + (int64_t)j * dst->stride_dim, x[j]);
        }
    return 0;
}

static int64_t dequantize_all(e8c_ctx *ctx, const e8c_qlayer *q, const e8c_decode_params *dp,
                              const e8c_tensor *dst)
{
    int64_t rc = e8c_check_tensor(ctx, dst, q->n_tokens);
    if (rc) return rc;
    if (dp && dp->use_new_pos && (uint64_t)dp->new_first_pos + q->n_tokens > E8C_MAX_POSITION)
        return e8c_fail(ctx, E8C_ERR_POSITION, "new positions %u+%u out of range", dp->new_first_pos, q->n_tokens);
    if (q->method == E8C_METHOD_E8 && q->n_raw_head + q->n_raw_tail < q->n_tokens) {
        rc = ctx->backend == 1 ? e8c_ref_dequantize_layer(ctx, q, dp, dst)
                               : e8c_fast_dequantize_layer(ctx, q, dp, dst);
        if (rc) return rc;
    }
    return raw_to_dst(ctx, q, dp, dst);
}

int64_t e8c_frame_decode_into(e8c_ctx *ctx, const void *frame, size_t size,
                              const e8c_decode_params *dp, const e8c_tensor *dst,
                              uint32_t n_tokens)
{
    if (!ctx) return E8C_ERR_ARG;
    ctx->err[0] = 0;
    if (!frame) return e8c_fail(ctx, E8C_ERR_ARG, "frame NULL");
    e8c_frame_info fi;
    int64_t rc = e8c_frame_parse(frame, size, &fi, NULL, NULL, 0);
    if (rc) return e8c_fail(ctx, rc, "frame header");
    if (n_tokens && fi.n_tokens != n_tokens)
        return e8c_fail(ctx, E8C_ERR_SHAPE, "frame holds %u tokens, caller expects %u", fi.n_tokens, n_tokens);
    if (fi.n_tokens > ctx->w.tokens && (rc = e8c_work_reserve(ctx, fi.n_tokens))) return rc;
    e8c_qlayer q;
    qlayer_ws(ctx, &q);
    if ((rc = e8c_unpack(ctx, frame, size, &q, &fi))) return rc;
    return dequantize_all(ctx, &q, dp, dst);
}

int64_t e8c_frame_decode(e8c_ctx *ctx, const void *frame, size_t size,
                         const e8c_decode_params *dp, const e8c_tensor *dst)
{
    return e8c_frame_decode_into(ctx, frame, size, dp, dst, 0);
}

/* ------------------------------------------------------------ qlayer */

int64_t e8c_qlayer_size(const e8c_ctx *ctx, uint32_t N, e8c_qlayer_sizes *s)
{
    if (!ctx || !s) return E8C_ERR_ARG;
    if (N == 0 || N > E8C_MAX_TOKENS) return E8C_ERR_LIMIT;
    size_t H = ctx->fp.n_kv_heads, n = ctx->fp.head_dim;
    s->scales = 2 * H * N;
    s->points2 = 2 * H * N * n;
    s->raw = H * N * n * e8c_dtype_size((e8c_dtype)ctx->fp.src_dtype);
    return 0;
}

int64_t e8c_quantize(e8c_ctx *ctx, const e8c_frame_params *p, const e8c_tensor *src, e8c_qlayer *q)
{
    if (!ctx) return E8C_ERR_ARG;
    ctx->err[0] = 0;
    if (!q || !q->scales || !q->points2 || !q->raw) return e8c_fail(ctx, E8C_ERR_ARG, "qlayer arrays NULL");
    if (p && p->n_tokens > ctx->w.tokens) {
        int64_t rc = e8c_work_reserve(ctx, p->n_tokens);
        if (rc) return rc;
    }
    return quantize_into(ctx, p, src, q);
}

int64_t e8c_qlayer_pack(e8c_ctx *ctx, const e8c_qlayer *q, void *dst, size_t dst_size)
{
    if (!ctx) return E8C_ERR_ARG;
    ctx->err[0] = 0;
    if (!q || !dst) return e8c_fail(ctx, E8C_ERR_ARG, "qlayer or dst NULL");
    uint32_t N = q->n_tokens;
    if (N == 0 || N > E8C_MAX_TOKENS || q->kind > 1 || q->method > 1 || q->layer >= ctx->fp.n_layers ||
        (uint64_t)q->n_raw_head + q->n_raw_tail > N || (uint64_t)q->first_pos + N > E8C_MAX_POSITION ||
        (q->method == E8C_METHOD_RAW && (q->n_raw_head || q->n_raw_tail)))
        return e8c_fail(ctx, E8C_ERR_ARG, "qlayer fields inconsistent");
    if (N > ctx->w.tokens) {
        int64_t rc = e8c_work_reserve(ctx, N);
        if (rc) return rc;
    }
    return e8c_pack(ctx, q, dst, dst_size);
}

int64_t e8c_qlayer_unpack(e8c_ctx *ctx, const void *frame, size_t size, e8c_qlayer *q)
{
    if (!ctx) return E8C_ERR_ARG;
    ctx->err[0] = 0;
    if (!frame || !q || !q->scales || !q->points2 || !q->raw) return e8c_fail(ctx, E8C_ERR_ARG, "NULL argument");
    e8c_frame_info fi;
    int64_t rc = e8c_frame_parse(frame, size, &fi, NULL, NULL, 0);
    if (rc) return e8c_fail(ctx, rc, "frame header");
    if (fi.n_tokens > q->n_tokens)
        return e8c_fail(ctx, E8C_ERR_DST_SIZE, "frame holds %u tokens, qlayer arrays hold %u", fi.n_tokens, q->n_tokens);
    if (fi.n_tokens > ctx->w.tokens && (rc = e8c_work_reserve(ctx, fi.n_tokens))) return rc;
    return e8c_unpack(ctx, frame, size, q, &fi);
}

int64_t e8c_dequantize(e8c_ctx *ctx, const e8c_qlayer *q, const e8c_decode_params *dp,
                       const e8c_tensor *dst)
{
    if (!ctx) return E8C_ERR_ARG;
    ctx->err[0] = 0;
    if (!q) return e8c_fail(ctx, E8C_ERR_ARG, "qlayer NULL");
    if (q->n_tokens == 0 || q->n_tokens > E8C_MAX_TOKENS || (uint64_t)q->n_raw_head + q->n_raw_tail > q->n_tokens)
        return e8c_fail(ctx, E8C_ERR_ARG, "qlayer fields inconsistent");
    return dequantize_all(ctx, q, dp, dst);
}
