/*
 * e8cu_batch.c: the host launchers of the CUDA codec: item checks, the policy (which tokens
 * stay raw, FORMAT.md §6, as e8c_frame.c decides it), the qbatch layout, kernel launches in
 * groups of items sharing RoPE tables, and the host halves (pack, unpack) on worker threads.
 *
 * qbatch layout (device and pinned host alike, compact for the actual policy):
 *   [n x u64 status, padded to 16]
 *   per item, in order: scales u16 [H][n_q] (padded to 16) | points2 i16 [H][n_q][n] |
 *                       raw source-dtype [H][n_raw][n] (padded to 16)
 * with n_q + n_raw = n_tokens. A status word is all ones, or the smallest
 * (phase << 62 | element << 1 | code) over bad input elements, phase 0 for raw-kept tokens
 * and 1 for quantized ones, code 0 NaN/inf and 1 out of range: the first bad element in the
 * CPU path's scan order, so the error is the one e8c_frame_encode returns.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/cuda/e8cu_ctx.h"
#include "codec/cuda/e8cu_entropy.h"

#define A16(x) (((x) + 15u) & ~(size_t)15u)


static size_t esize(uint32_t dtype) { return dtype == E8C_DTYPE_F32 ? 4 : 2; }

static int layer_protected(const e8c_fingerprint *fp, uint32_t l)
{
    const e8c_config *c = &fp->config;
    if (l < c->protect_first) return 1;
    if (c->protect_last > 0 && l + c->protect_last >= fp->n_layers) return 1;
    return (int)((c->protect_mask[l / 64] >> (l % 64)) & 1u);
}

/* Checks item i as e8c_frame_encode checks its arguments, plus the GPU layout rules. */
static int64_t check_item(e8cu_ctx *ctx, size_t i, const e8cu_item *it, uint32_t *seq, uint32_t *rl)
{
    const e8c_frame_params *p = &it->p;
    const e8c_tensor *t = &it->t;
    if (p->layer >= ctx->fp.n_layers)
        return e8cu_fail(ctx, E8C_ERR_LAYER_RANGE, "item %zu: layer %u >= n_layers %u", i, p->layer, ctx->fp.n_layers);
    if (p->kind > E8C_V) return e8cu_fail(ctx, E8C_ERR_ARG, "item %zu: kind %u: must be K (0) or V (1)", i, p->kind);
    if (p->n_tokens == 0 || p->n_tokens > E8C_MAX_TOKENS)
        return e8cu_fail(ctx, E8C_ERR_LIMIT, "item %zu: n_tokens %u: must be in [1, %u]", i, p->n_tokens, E8C_MAX_TOKENS);
    uint64_t end = (uint64_t)p->first_pos + p->n_tokens;
    if (end > E8C_MAX_POSITION)
        return e8cu_fail(ctx, E8C_ERR_POSITION, "item %zu: positions %u+%u exceed %u", i, p->first_pos, p->n_tokens, E8C_MAX_POSITION);
    *seq = p->seq_len ? p->seq_len : (uint32_t)end;
    if (*seq < end || *seq > E8C_MAX_POSITION)
        return e8cu_fail(ctx, E8C_ERR_POSITION, "item %zu: seq_len %u < first_pos + n_tokens %llu", i, *seq, (unsigned long long)end);
    *rl = p->rope_seq_len ? p->rope_seq_len : *seq;
    if (!t->data) return e8cu_fail(ctx, E8C_ERR_ARG, "item %zu: tensor data NULL", i);
    if (t->dtype < E8C_DTYPE_F16 || t->dtype > E8C_DTYPE_F32)
        return e8cu_fail(ctx, E8C_ERR_DTYPE, "item %zu: dtype %u: must be fp16 (1), bf16 (2) or fp32 (3)", i, t->dtype);
    if (t->stride_dim != 1 || t->stride_head < 0 || t->stride_token < 0 || t->stride_head % 8 ||
        t->stride_token % 8 || t->stride_head > (INT64_C(1) << 40) || t->stride_token > (INT64_C(1) << 40) ||
        ((uintptr_t)t->data & 15u))
        return e8cu_fail(ctx, E8C_ERR_SHAPE, "item %zu: device tensor must be 16-byte aligned with stride_dim 1 "
                         "and stride_head, stride_token multiples of 8 in [0, 2^40] (got %lld, %lld, %lld)", i,
                         (long long)t->stride_head, (long long)t->stride_token, (long long)t->stride_dim);
    return 0;
}

/* Policy, FORMAT.md §6 (the same rule as e8c_frame.c layer_geom). */
static void policy(const e8cu_ctx *ctx, const e8c_frame_params *p, uint32_t seq, uint32_t rl, e8cu_qmeta *m)
{
    const e8c_config *c = &ctx->fp.config;
    uint32_t N = p->n_tokens;
    memset(m, 0, sizeof *m);
    m->first_pos = p->first_pos;
    m->rope_seq_len = rl;
    m->method = layer_protected(&ctx->fp, p->layer) ? 0 : 1;
    if (m->method == 0) return;
    if (c->sink_tokens > p->first_pos) {
        uint32_t k = c->sink_tokens - p->first_pos;
        m->n_raw_head = k < N ? k : N;
    }
    uint32_t start = seq > c->recent_tokens ? seq - c->recent_tokens : 0, end = p->first_pos + N;
    if (end > start) {
        uint32_t k = end - start;
        if (k > N) k = N;
        m->n_raw_tail = k > N - m->n_raw_head ? N - m->n_raw_head : k;
    }
}

/* Offsets of every item's arrays for the given metas; returns the bytes used. */
size_t e8cu_layout(const e8cu_ctx *ctx, size_t n, const e8cu_item *items, const e8cu_qmeta *meta, e8cu_off *off)
{
    return e8cu_layout_range(ctx, 0, n, A16(8 * n), items, meta, off);
}

size_t e8cu_layout_range(const e8cu_ctx *ctx, size_t i0, size_t i1, size_t cur, const e8cu_item *items,
                         const e8cu_qmeta *meta, e8cu_off *off)
{
    size_t H = ctx->fp.n_kv_heads, hd = ctx->fp.head_dim, ss = esize(ctx->fp.src_dtype);
    for (size_t i = i0; i < i1; i++) {
        uint32_t N = items[i].p.n_tokens;
        uint32_t nr = meta[i].method == 0 ? N : meta[i].n_raw_head + meta[i].n_raw_tail;
        off[i].n_raw = nr;
        off[i].n_q = N - nr;
        off[i].scales = cur;
        cur += A16(2 * H * off[i].n_q);
        off[i].points2 = cur;
        cur += 2 * H * off[i].n_q * hd;
        off[i].raw = cur;
        cur += A16(H * nr * hd * ss);
        off[i].end = cur;
    }
    return cur;
}

int64_t e8cu_qbatch_size(e8cu_ctx *ctx, size_t n, const e8cu_item *items, size_t *bytes)
{
    if (!ctx) return E8C_ERR_ARG;
    ctx->err[0] = 0;
    if (!bytes || (n && !items)) return e8cu_fail(ctx, E8C_ERR_ARG, "NULL argument");
    size_t H = ctx->fp.n_kv_heads, hd = ctx->fp.head_dim, ss = esize(ctx->fp.src_dtype);
    size_t total = A16(8 * n);
    for (size_t i = 0; i < n; i++) {
        uint32_t seq, rl;
        int64_t rc = check_item(ctx, i, &items[i], &seq, &rl);
        if (rc) return rc;
        size_t N = items[i].p.n_tokens;
        total += A16(2 * H * N) + 2 * H * N * hd + A16(H * N * hd * ss);
    }
    *bytes = total;
    return 0;
}

/* ------------------------------------------------------------ launches */

typedef struct {
    uint32_t first, rows, key_L; /* table range and rope_seq_len */
    int on;
} e8cu_span;

/* Adds [first, first + rows) at L to span s; 0 if it does not fit the group. */
static int span_add(const e8cu_ctx *ctx, e8cu_span *s, uint32_t first, uint32_t rows, uint32_t L)
{
    int dep = ctx->fp.rope.type == E8C_ROPE_DYNAMIC || ctx->fp.rope.type == E8C_ROPE_LONGROPE;
    if (!s->on) { *s = (e8cu_span){first, rows, L, 1}; return 1; }
    if (dep && s->key_L != L) return 0;
    uint64_t lo = s->first < first ? s->first : first;
    uint64_t hi = (uint64_t)s->first + s->rows > (uint64_t)first + rows ? (uint64_t)s->first + s->rows
                                                                         : (uint64_t)first + rows;
    if (hi - lo > 262144 && hi - lo > 2 * ((uint64_t)s->rows + rows)) return 0;
    s->first = (uint32_t)lo;
    s->rows = (uint32_t)(hi - lo);
    return 1;
}

/* floor(v / d) = umulhi(2v, m) >> l for every v < 2^31: l = ceil(log2 d), m = ceil(2^(31+l) / d)
 * (< 2^32; Granlund & Montgomery 1994, with N = 31). d >= 1. */
static void launch_magic(uint32_t d, uint32_t *m, uint32_t *l)
{
    uint32_t lg = 0;
    while (lg < 32 && ((uint64_t)1 << lg) < d) lg++;
    *l = lg;
    *m = (uint32_t)((((uint64_t)1 << (31 + lg)) + d - 1) / d);
}

/* kernel parameters: at most 32764 bytes (Volta and later, CUDA >= 12.1) */
_Static_assert(sizeof(e8cu_launch) <= 32764, "e8cu_launch exceeds the kernel parameter limit");
_Static_assert(E8CU_LAUNCH_ITEMS <= 256, "vbucket holds uint8 item indices");

static void launch_common(const e8cu_ctx *ctx, e8cu_launch *L, void *d_q)
{
    const e8c_fingerprint *fp = &ctx->fp;
    memset(L, 0, sizeof *L);
    L->q = d_q;
    L->signs = ctx->d_signs;
    L->k_step = fp->config.k_step;
    L->v_step = fp->config.v_step;
    L->head_dim = fp->head_dim;
    L->n_kv_heads = fp->n_kv_heads;
    L->R = fp->head_dim / 8;
    L->pow2 = (fp->head_dim & (fp->head_dim - 1)) == 0;
    L->rotary_dim = fp->rope.rotary_dim;
    L->rope_layout = fp->rope.layout;
    L->rope_on = fp->rope.type != E8C_ROPE_NONE;
    L->src_dtype = fp->src_dtype;
    memcpy(L->bh_log2, ctx->bh_log2, sizeof L->bh_log2);
    memcpy(L->bh_gain, ctx->bh_gain, sizeof L->bh_gain);
    if (L->pow2) { /* the fast kernels read these as launch constants, not registers */
        uint32_t lg = 0;
        while ((8u << lg) < fp->head_dim) lg++;
        L->inv_n = 1.0f / (float)fp->head_dim;
        L->gain_n = ctx->bh_gain[lg];
    }
    memcpy(L->sgn_bits, ctx->sgn_bits, sizeof L->sgn_bits);
    L->vb_shift = 0xff;
}

/* Items of different sizes: the bucket table of e8cu_launch (vbucket, vb_shift) and each
 * item's magic numbers for the head division, so that a kernel finds a vector's item and head
 * by a table read, a short forward walk and a multiply-high (not a binary search over the
 * items and a division). Needs n_vec < 2^31. */
static void launch_buckets(e8cu_launch *L)
{
    if (L->vec_per_item || L->n_vec == 0 || L->n_vec >= (1ull << 31)) return;
    uint32_t sh = 0;
    while ((L->n_vec - 1) >> sh >= E8CU_VBUCKETS) sh++;
    uint32_t k = 0;
    for (uint64_t b = 0; b < E8CU_VBUCKETS && (b << sh) < L->n_vec; b++) {
        while (k + 1 < L->n_items && L->items[k + 1].vec_begin <= (b << sh)) k++;
        L->vbucket[b] = (uint8_t)k;
    }
    for (uint32_t i = 0; i < L->n_items; i++)
        if (L->items[i].n_q) launch_magic(L->items[i].n_q, &L->items[i].nq_magic, &L->items[i].nq_shift);
    L->vb_shift = sh;
}

/* dir 0: quantize; 1: dequantize (dp may ask for new positions). */
static int64_t launch_all(e8cu_ctx *ctx, int dir, size_t n, const e8cu_item *items, const e8cu_qmeta *meta,
                          const e8cu_off *off, const e8c_decode_params *dp, void *d_q, cudaStream_t stream)
{
    static __thread e8cu_launch L; /* ~20 KiB: not on the stack */
    int rope = ctx->fp.rope.type != E8C_ROPE_NONE;
    int newpos = dir == 1 && dp && dp->use_new_pos;
    size_t i = 0;
    /* encode: a RoPE table that still covers the next launch is not asked for again (no
     * stream operation between two launches, so that they can overlap: e8cu_quant.cu) and its
     * use is recorded once, after its last launch, or before another table is asked for */
    e8cu_table *held = NULL;
    int after_q = 0; /* the stream's last operation is this call's quantize launch */
    int64_t rc = 0;
    while (i < n && rc == 0) {
        e8cu_span A = {0}, B = {0};
        size_t j = i;
        for (; j < n && j - i < E8CU_LAUNCH_ITEMS; j++) {
            const e8cu_qmeta *m = &meta[j];
            uint32_t N = items[j].p.n_tokens;
            int k = rope && items[j].p.kind == E8C_K;
            int needA = k && (off[j].n_q > 0 || (newpos && off[j].n_raw > 0));
            int needB = k && newpos && off[j].n_raw > 0;
            uint32_t fa = newpos ? dp->new_first_pos : m->first_pos;
            uint32_t La = newpos && dp->new_rope_seq_len ? dp->new_rope_seq_len : m->rope_seq_len;
            e8cu_span A2 = A, B2 = B;
            if (needA && !span_add(ctx, &A2, fa, N, La)) break;
            if (needB && !span_add(ctx, &B2, m->first_pos, N, m->rope_seq_len)) break;
            A = A2;
            B = B2;
        }
        e8cu_table *ta = NULL, *tb = NULL;
        if (A.on && dir == 0 && held && e8cu_table_covers(ctx, held, A.first, A.rows, A.key_L)) {
            ta = held;
        } else {
            if (held && (rc = e8cu_table_used(ctx, held, stream))) break;
            held = NULL;
            if (A.on) {
                after_q = 0;
                if ((rc = e8cu_table_get(ctx, A.first, A.rows, A.key_L, stream, &ta))) break;
            }
        }
        if (B.on && (rc = e8cu_table_get(ctx, B.first, B.rows, B.key_L, stream, &tb))) break;
        launch_common(ctx, &L, d_q);
        L.pdl = (uint32_t)(dir == 0 && after_q);
        if (ta) { L.rope_cos = ta->d_cos; L.rope_sin = ta->d_sin; }
        if (tb) { L.rope_cos2 = tb->d_cos; L.rope_sin2 = tb->d_sin; }
        L.n_items = (uint32_t)(j - i);
        for (size_t k = i; k < j; k++) {
            e8cu_kitem *ki = &L.items[k - i];
            const e8cu_item *it = &items[k];
            uint32_t fa = newpos ? dp->new_first_pos : meta[k].first_pos;
            ki->src = it->t.data;
            ki->stride_head = it->t.stride_head;
            ki->stride_token = it->t.stride_token;
            ki->off_scales = off[k].scales;
            ki->off_points2 = off[k].points2;
            ki->off_raw = off[k].raw;
            ki->off_status = 8 * k;
            ki->vec_begin = L.n_vec;
            ki->raw_begin = L.n_raw_blocks;
            ki->n_q = off[k].n_q;
            ki->n_raw = off[k].n_raw;
            ki->n_raw_head = meta[k].method == 0 ? off[k].n_raw : meta[k].n_raw_head;
            ki->n_tokens = it->p.n_tokens;
            ki->rope_row = ta ? fa - ta->first : 0;
            ki->rope_row2 = tb ? meta[k].first_pos - tb->first : 0;
            ki->dtype = (uint16_t)it->t.dtype;
            ki->kind = (uint8_t)it->p.kind;
            ki->method = (uint8_t)meta[k].method;
            L.n_vec += (uint64_t)ctx->fp.n_kv_heads * off[k].n_q;
            L.n_raw_blocks += (uint64_t)ctx->fp.n_kv_heads * off[k].n_raw * (ctx->fp.head_dim / 8);
        }
        /* uniform items: the kernels find an item by one division */
        {
            uint64_t v0 = L.items[0].vec_begin, r0 = L.items[0].raw_begin, nv = 0, nr = 0;
            int uv = L.n_vec < UINT32_MAX, ur = L.n_raw_blocks < UINT32_MAX;
            for (uint32_t k = 0; k < L.n_items; k++) {
                uint64_t ev = k + 1 < L.n_items ? L.items[k + 1].vec_begin : L.n_vec;
                uint64_t er = k + 1 < L.n_items ? L.items[k + 1].raw_begin : L.n_raw_blocks;
                if (k == 0) { nv = ev - v0; nr = er - r0; }
                if (ev - L.items[k].vec_begin != nv || nv == 0) uv = 0;
                if (er - L.items[k].raw_begin != nr || nr == 0) ur = 0;
            }
            L.vec_per_item = uv ? (uint32_t)nv : 0;
            L.raw_per_item = ur ? (uint32_t)nr : 0;
            L.vec_magic = 0;
            if (uv && L.n_vec < (1ull << 31) && nv % ctx->fp.n_kv_heads == 0) {
                L.nq_uni = (uint32_t)nv / ctx->fp.n_kv_heads;
                launch_magic((uint32_t)nv, &L.vec_magic, &L.vec_shift);
                launch_magic(L.nq_uni, &L.nq_magic, &L.nq_shift);
            }
            launch_buckets(&L);
            L.all16 = L.items[0].dtype == E8C_DTYPE_F16 ? 1 : L.items[0].dtype == E8C_DTYPE_BF16 ? 2 : 0;
            for (uint32_t k = 1; k < L.n_items; k++)
                if (L.items[k].dtype != L.items[0].dtype) L.all16 = 0;
        }
        if (dir == 1) L.out_dtype = items[i].t.dtype;
        /* dequantize writes every item's own dtype: launch per run of equal dtypes */
        if (dir == 1) {
            for (size_t k = i + 1; k < j; k++)
                if (items[k].t.dtype != items[i].t.dtype)
                    return e8cu_fail(ctx, E8C_ERR_DTYPE, "items %zu and %zu: one dequantize call writes one output dtype", i, k);
        }
        int e = dir == 0 ? e8cu_launch_quantize(&L, stream) : e8cu_launch_dequantize(&L, stream);
        if (e) {
            rc = e8cu_cuda_fail(ctx, e, dir == 0 ? "quantize launch" : "dequantize launch");
            break;
        }
        /* the last kernel of the launch: the quantize kernel, or the raw kernel (before it) */
        after_q = dir == 0;
        if (dir == 0) held = ta;
        else if (ta && (rc = e8cu_table_used(ctx, ta, stream))) break;
        if (tb && (rc = e8cu_table_used(ctx, tb, stream))) break;
        i = j;
    }
    if (held) {
        int64_t r2 = e8cu_table_used(ctx, held, stream);
        if (!rc) rc = r2;
    }
    return rc;
}

static int64_t wait_for(e8cu_ctx *ctx, cudaEvent_t ev, cudaStream_t stream)
{
    if (!ev) return 0;
    int e = cudaStreamWaitEvent(stream, ev, 0);
    return e ? e8cu_cuda_fail(ctx, e, "cudaStreamWaitEvent on the producer event") : 0;
}

/* ------------------------------------------------------------ encode */

int64_t e8cu_quantize_async(e8cu_ctx *ctx, size_t n, const e8cu_item *items, e8cu_qmeta *meta,
                            void *d_q, size_t qbatch_bytes, cudaEvent_t wait_event, cudaStream_t stream)
{
    if (!ctx) return E8C_ERR_ARG;
    ctx->err[0] = 0;
    if (n == 0) return 0;
    if (!items || !meta || !d_q) return e8cu_fail(ctx, E8C_ERR_ARG, "NULL argument");
    for (size_t i = 0; i < n; i++) {
        uint32_t seq, rl;
        int64_t rc = check_item(ctx, i, &items[i], &seq, &rl);
        if (rc) return rc;
        policy(ctx, &items[i].p, seq, rl, &meta[i]);
    }
    e8cu_off *off = malloc(n * sizeof *off);
    if (!off) return e8cu_fail(ctx, E8C_ERR_NOMEM, "layout of %zu items", n);
    size_t used = e8cu_layout(ctx, n, items, meta, off);
    int64_t rc = 0;
    if (used > qbatch_bytes)
        rc = e8cu_fail(ctx, E8C_ERR_DST_SIZE, "qbatch needs %zu bytes, %zu given", used, qbatch_bytes);
    if (!rc) rc = wait_for(ctx, wait_event, stream);
    if (!rc) {
        int e = cudaMemsetAsync(d_q, 0xff, 8 * n, stream);
        if (e) rc = e8cu_cuda_fail(ctx, e, "status reset");
    }
    if (!rc) rc = launch_all(ctx, 0, n, items, meta, off, NULL, d_q, stream);
    free(off);
    return rc;
}

typedef struct {
    e8cu_ctx *ctx;
    const e8cu_item *items;
    const e8cu_qmeta *meta;
    const e8cu_off *off;
    unsigned char *h_q;
    void *const *dsts;
    const size_t *caps;
    size_t *sizes;
    const void *const *frames;
    const size_t *frame_sizes;
} e8cu_job;

static void qlayer_at(const e8cu_job *J, size_t i, e8c_qlayer *q)
{
    memset(q, 0, sizeof *q);
    q->kind = J->items[i].p.kind;
    q->layer = J->items[i].p.layer;
    q->n_tokens = J->items[i].p.n_tokens;
    q->first_pos = J->meta[i].first_pos;
    q->rope_seq_len = J->meta[i].rope_seq_len;
    q->method = J->meta[i].method;
    q->n_raw_head = J->meta[i].n_raw_head;
    q->n_raw_tail = J->meta[i].n_raw_tail;
    q->scales = (uint16_t *)(J->h_q + J->off[i].scales);
    q->points2 = (int16_t *)(J->h_q + J->off[i].points2);
    q->raw = J->h_q + J->off[i].raw;
}

static int64_t pack_job(void *arg, size_t i, e8c_ctx *wctx, char *msg, size_t msg_size)
{
    (void)msg, (void)msg_size;
    const e8cu_job *J = arg;
    e8c_qlayer q;
    qlayer_at(J, i, &q);
    int64_t r = e8c_qlayer_pack(wctx, &q, J->dsts[i], J->caps[i]);
    if (r < 0) return r;
    J->sizes[i] = (size_t)r;
    return 0;
}

/* Status words of the quantize kernels (bad input), copied to h_q[0..8n): 0 or the lowest
 * failing item's error. */
static int64_t check_status(e8cu_ctx *ctx, size_t n, const void *d_q, void *h_q, cudaStream_t stream)
{
    int e = cudaMemcpyAsync(h_q, d_q, 8 * n, cudaMemcpyDeviceToHost, stream);
    if (!e) e = cudaStreamSynchronize(stream);
    if (e) return e8cu_cuda_fail(ctx, e, "status copy to the host");
    for (size_t i = 0; i < n; i++) {
        uint64_t st;
        memcpy(&st, (unsigned char *)h_q + 8 * i, 8);
        if (st == UINT64_MAX) continue;
        uint64_t el = (st & ((UINT64_C(1) << 62) - 1)) >> 1;
        return e8cu_fail(ctx, (st & 1) ? E8C_ERR_RANGE : E8C_ERR_NONFINITE, "item %zu: %s element %llu %s", i,
                         (st >> 62) ? "quantized" : "raw-kept", (unsigned long long)el,
                         (st & 1) ? "is out of range (|x| > 2^64, or beyond the source dtype)" : "is NaN or inf");
    }
    return 0;
}

/* e8cu_pack on the GPU: 0, an error (< 0), or 1 when the frames do not fit h_q. */
static int64_t gpu_pack(e8cu_ctx *ctx, size_t n, const e8cu_item *items, const e8cu_qmeta *meta,
                        const e8cu_off *off, const void *d_q, void *h_q, size_t qbatch_bytes, void *const *dsts,
                        const size_t *dst_caps, size_t *sizes, cudaStream_t stream)
{
    uint64_t total;
    e8cu_prof(NULL, stream);
    int64_t rc = check_status(ctx, n, d_q, h_q, stream);
    e8cu_prof("enc quantize+st", stream);
    if (rc) return rc;
    return e8cu_gpu_pack(ctx, n, items, meta, off, d_q, h_q, qbatch_bytes, dsts, dst_caps, sizes, NULL, &total,
                         stream);
}

int64_t e8cu_pack_frames(e8cu_ctx *ctx, size_t n, const e8cu_item *items, const e8cu_qmeta *meta,
                         const void *d_q, size_t qbatch_bytes, void *h_out, size_t out_cap,
                         uint64_t *offsets, size_t *sizes, size_t *total, cudaStream_t stream)
{
    if (!ctx) return E8C_ERR_ARG;
    ctx->err[0] = 0;
    if (!total) return e8cu_fail(ctx, E8C_ERR_ARG, "NULL argument");
    *total = 0;
    if (n == 0) return 0;
    if (!items || !meta || !d_q || !h_out || !sizes) return e8cu_fail(ctx, E8C_ERR_ARG, "NULL argument");
    if (!ctx->gpu_entropy)
        return e8cu_fail(ctx, E8C_ERR_CONFIG, "e8cu_pack_frames codes on the GPU: the fingerprint's entropy "
                         "config is not rans32 (or E8CU_GPU_ENTROPY=0): use e8cu_pack");
    e8cu_off *off = malloc(n * sizeof *off);
    if (!off) return e8cu_fail(ctx, E8C_ERR_NOMEM, "layout of %zu items", n);
    size_t used = e8cu_layout(ctx, n, items, meta, off);
    uint64_t t = 0;
    int64_t rc = 0;
    if (used > qbatch_bytes) rc = e8cu_fail(ctx, E8C_ERR_DST_SIZE, "qbatch needs %zu bytes, %zu given", used, qbatch_bytes);
    if (!rc && out_cap < 8 * n) rc = e8cu_fail(ctx, E8C_ERR_DST_SIZE, "output of %zu bytes < 8 x items", out_cap);
    e8cu_prof(NULL, stream);
    if (!rc) rc = check_status(ctx, n, d_q, h_out, stream);
    e8cu_prof("enc quantize+st", stream);
    if (!rc) rc = e8cu_gpu_pack(ctx, n, items, meta, off, d_q, h_out, out_cap, NULL, NULL, sizes, offsets, &t, stream);
    free(off);
    *total = t;
    if (rc == 1)
        return e8cu_fail(ctx, E8C_ERR_DST_SIZE, "frames need %llu bytes, %zu given", (unsigned long long)t, out_cap);
    return rc;
}

int64_t e8cu_pack(e8cu_ctx *ctx, size_t n, const e8cu_item *items, const e8cu_qmeta *meta, const void *d_q,
                  void *h_q, size_t qbatch_bytes, void *const *dsts, const size_t *dst_caps, size_t *sizes,
                  cudaStream_t stream)
{
    if (!ctx) return E8C_ERR_ARG;
    ctx->err[0] = 0;
    if (n == 0) return 0;
    if (!items || !meta || !d_q || !h_q || !dsts || !dst_caps || !sizes)
        return e8cu_fail(ctx, E8C_ERR_ARG, "NULL argument");
    e8cu_off *off = malloc(n * sizeof *off);
    if (!off) return e8cu_fail(ctx, E8C_ERR_NOMEM, "layout of %zu items", n);
    size_t used = e8cu_layout(ctx, n, items, meta, off);
    int64_t rc = 0;
    if (used > qbatch_bytes) rc = e8cu_fail(ctx, E8C_ERR_DST_SIZE, "qbatch needs %zu bytes, %zu given", used, qbatch_bytes);
    if (!rc && ctx->gpu_entropy) {
        int64_t r = gpu_pack(ctx, n, items, meta, off, d_q, h_q, qbatch_bytes, dsts, dst_caps, sizes, stream);
        if (r <= 0) {
            free(off);
            return r;
        }
        /* r > 0: the coded frames do not fit h_q: the host packer below (same bytes) */
    }
    int e = rc ? 0 : cudaMemcpyAsync(h_q, d_q, used, cudaMemcpyDeviceToHost, stream);
    if (!rc && !e) e = cudaStreamSynchronize(stream);
    if (!rc && e) rc = e8cu_cuda_fail(ctx, e, "qbatch copy to the host");
    for (size_t i = 0; !rc && i < n; i++) {
        uint64_t st;
        memcpy(&st, (unsigned char *)h_q + 8 * i, 8);
        if (st == UINT64_MAX) continue;
        uint64_t el = (st & ((UINT64_C(1) << 62) - 1)) >> 1;
        rc = e8cu_fail(ctx, (st & 1) ? E8C_ERR_RANGE : E8C_ERR_NONFINITE, "item %zu: %s element %llu %s", i,
                       (st >> 62) ? "quantized" : "raw-kept", (unsigned long long)el,
                       (st & 1) ? "is out of range (|x| > 2^64, or beyond the source dtype)" : "is NaN or inf");
    }
    if (!rc) {
        e8cu_job J = {ctx, items, meta, off, h_q, dsts, dst_caps, sizes, NULL, NULL};
        rc = e8cu_run_jobs(ctx, n, pack_job, &J, "pack");
    }
    free(off);
    return rc;
}

/* ------------------------------------------------------------ decode */

static int64_t info_job(void *arg, size_t i, e8c_ctx *wctx, char *msg, size_t msg_size)
{
    (void)wctx;
    const e8cu_job *J = arg;
    e8c_frame_info fi;
    int64_t r = e8c_frame_info_get(J->frames[i], J->frame_sizes[i], &fi);
    if (r) {
        snprintf(msg, msg_size, "%s", e8c_error_string(r));
        return r;
    }
    const e8c_frame_params *p = &J->items[i].p;
    if (fi.layer != p->layer || fi.kind != p->kind || fi.n_tokens != p->n_tokens) {
        snprintf(msg, msg_size, "frame is layer %u kind %u with %u tokens, the item expects %u %u %u",
                 fi.layer, fi.kind, fi.n_tokens, p->layer, p->kind, p->n_tokens);
        return E8C_ERR_SHAPE;
    }
    e8cu_qmeta *m = (e8cu_qmeta *)&J->meta[i];
    m->method = fi.method;
    m->n_raw_head = fi.n_raw_head;
    m->n_raw_tail = fi.n_raw_tail;
    m->first_pos = fi.first_pos;
    m->rope_seq_len = fi.rope_seq_len;
    return 0;
}

static int64_t unpack_job(void *arg, size_t i, e8c_ctx *wctx, char *msg, size_t msg_size)
{
    (void)msg, (void)msg_size;
    const e8cu_job *J = arg;
    e8c_qlayer q;
    qlayer_at(J, i, &q);
    return e8c_qlayer_unpack(wctx, J->frames[i], J->frame_sizes[i], &q);
}

int64_t e8cu_unpack(e8cu_ctx *ctx, size_t n, const e8cu_item *items, const void *const *frames,
                    const size_t *frame_sizes, e8cu_qmeta *meta, void *h_q, size_t qbatch_bytes)
{
    if (!ctx) return E8C_ERR_ARG;
    ctx->err[0] = 0;
    if (n == 0) return 0;
    if (!items || !frames || !frame_sizes || !meta || !h_q) return e8cu_fail(ctx, E8C_ERR_ARG, "NULL argument");
    for (size_t i = 0; i < n; i++) {
        uint32_t seq, rl;
        int64_t rc = check_item(ctx, i, &items[i], &seq, &rl);
        if (rc) return rc;
        if (!frames[i]) return e8cu_fail(ctx, E8C_ERR_ARG, "frame %zu NULL", i);
    }
    e8cu_off *off = malloc(n * sizeof *off);
    if (!off) return e8cu_fail(ctx, E8C_ERR_NOMEM, "layout of %zu items", n);
    e8cu_job J = {ctx, items, meta, off, h_q, NULL, NULL, NULL, frames, frame_sizes};
    int64_t rc = e8cu_run_jobs(ctx, n, info_job, &J, "frame check");
    if (!rc) {
        size_t used = e8cu_layout(ctx, n, items, meta, off);
        if (used > qbatch_bytes) rc = e8cu_fail(ctx, E8C_ERR_DST_SIZE, "qbatch needs %zu bytes, %zu given", used, qbatch_bytes);
    }
    if (!rc) rc = e8cu_run_jobs(ctx, n, unpack_job, &J, "unpack");
    free(off);
    return rc;
}

int64_t e8cu_dequantize_async(e8cu_ctx *ctx, size_t n, const e8cu_item *items, const e8cu_qmeta *meta,
                              const e8c_decode_params *dp, const void *d_q, size_t qbatch_bytes,
                              cudaEvent_t wait_event, cudaStream_t stream)
{
    if (!ctx) return E8C_ERR_ARG;
    ctx->err[0] = 0;
    if (n == 0) return 0;
    if (!items || !meta || !d_q) return e8cu_fail(ctx, E8C_ERR_ARG, "NULL argument");
    for (size_t i = 0; i < n; i++) {
        uint32_t seq, rl;
        int64_t rc = check_item(ctx, i, &items[i], &seq, &rl);
        if (rc) return rc;
        const e8cu_qmeta *m = &meta[i];
        if (m->method > 1 || (uint64_t)m->n_raw_head + m->n_raw_tail > items[i].p.n_tokens ||
            (uint64_t)m->first_pos + items[i].p.n_tokens > E8C_MAX_POSITION)
            return e8cu_fail(ctx, E8C_ERR_ARG, "item %zu: meta inconsistent with n_tokens %u", i, items[i].p.n_tokens);
        if (dp && dp->use_new_pos && (uint64_t)dp->new_first_pos + items[i].p.n_tokens > E8C_MAX_POSITION)
            return e8cu_fail(ctx, E8C_ERR_POSITION, "new positions %u+%u out of range", dp->new_first_pos, items[i].p.n_tokens);
    }
    e8cu_off *off = malloc(n * sizeof *off);
    if (!off) return e8cu_fail(ctx, E8C_ERR_NOMEM, "layout of %zu items", n);
    size_t used = e8cu_layout(ctx, n, items, meta, off);
    int64_t rc = 0;
    if (used > qbatch_bytes) rc = e8cu_fail(ctx, E8C_ERR_DST_SIZE, "qbatch needs %zu bytes, %zu given", used, qbatch_bytes);
    if (!rc) rc = wait_for(ctx, wait_event, stream);
    if (!rc) rc = launch_all(ctx, 1, n, items, meta, off, dp, (void *)d_q, stream);
    free(off);
    return rc;
}

int64_t e8cu_decode_async(e8cu_ctx *ctx, size_t n, const e8cu_item *items, const void *const *frames,
                          const size_t *frame_sizes, const e8c_decode_params *dp, e8cu_qmeta *meta, void *h_q,
                          void *d_q, size_t qbatch_bytes, cudaEvent_t wait_event, cudaStream_t stream)
{
    if (ctx && ctx->gpu_entropy && n > 0 && items && frames && frame_sizes && meta && h_q && d_q) {
        ctx->err[0] = 0;
        for (size_t i = 0; i < n; i++) {
            uint32_t seq, rl;
            int64_t rc = check_item(ctx, i, &items[i], &seq, &rl);
            if (rc) return rc;
            if (!frames[i]) return e8cu_fail(ctx, E8C_ERR_ARG, "frame %zu NULL", i);
        }
        int64_t r = wait_for(ctx, wait_event, stream);
        if (!r) r = e8cu_gpu_decode(ctx, n, items, frames, frame_sizes, meta, h_q, d_q, qbatch_bytes, stream);
        if (r == 0) {
            r = e8cu_dequantize_async(ctx, n, items, meta, dp, d_q, qbatch_bytes, NULL, stream);
            e8cu_prof("dec dequantize", stream);
            return r;
        }
        if (r < 0) return r;
        /* r == 1: frames the GPU path does not decode (other codings): the host path */
    }
    int64_t rc = e8cu_unpack(ctx, n, items, frames, frame_sizes, meta, h_q, qbatch_bytes);
    if (rc || n == 0) return rc;
    e8cu_off *off = malloc(n * sizeof *off);
    if (!off) return e8cu_fail(ctx, E8C_ERR_NOMEM, "layout of %zu items", n);
    size_t used = e8cu_layout(ctx, n, items, meta, off);
    free(off);
    if (!d_q) return e8cu_fail(ctx, E8C_ERR_ARG, "d_q NULL");
    int e = cudaMemcpyAsync(d_q, h_q, used, cudaMemcpyHostToDevice, stream);
    if (e) return e8cu_cuda_fail(ctx, e, "qbatch copy to the device");
    return e8cu_dequantize_async(ctx, n, items, meta, dp, d_q, qbatch_bytes, wait_event, stream);
}
