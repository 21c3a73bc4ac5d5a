/*
 * e8cu_dentropy.c: host half of the GPU entropy stage (decode). On the worker threads: each
 * frame's header, CRC32Cs and descriptors are checked exactly as the CPU decoder checks them
 * (e8c_frame_info_get, then the fingerprint and the stream lengths the geometry implies), and
 * its stream bytes are staged back to back in the pinned h_q. Then one host-to-device copy, the
 * decode kernels (e8cu_dec.cu) into the qbatch d_q, and the frames' device statuses.
 *
 * Frames whose streams use another coding than stored (0) and rans32 (3), e.g. version 1
 * frames with zstd, go to the host path (e8cu_unpack, the CPU library's decoder) instead.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/cuda/e8cu_ctx.h"
#include "codec/cuda/e8cu_entropy.h"

#define A16(x) (((x) + 15u) & ~(size_t)15u)

static uint32_t get32(const uint8_t *p) { return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24); }

typedef struct {
    e8cu_ctx *ctx;
    const e8cu_item *items;
    const void *const *frames;
    const size_t *frame_sizes;
    e8cu_qmeta *meta;
    e8cu_dframe *fr;
    int host_only;      /* set by a job: a coding the GPU does not decode */
    const uint64_t *slot; /* frame i is staged at h_st + slot[i] (prefix sums of frame_sizes) */
    unsigned char *h_st;
    size_t i0;          /* jobs are frames i0 + k */
} e8cu_djob;

/* Header checks of frame i (CPU order: e8c_frame_info_get, item, fingerprint, lengths). */
static int64_t check_job(void *arg, size_t k, e8c_ctx *wctx, char *msg, size_t msg_size)
{
    (void)wctx;
    e8cu_djob *J = arg;
    const size_t i = J->i0 + k;
    const e8c_fingerprint *fp = &J->ctx->fp;
    const uint8_t *p = J->frames[i];
    e8c_frame_info fi;
    int64_t r = e8c_frame_info_get(p, J->frame_sizes[i], &fi);
    if (r) {
        snprintf(msg, msg_size, "%s", e8c_error_string(r));
        return r;
    }
    const e8c_frame_params *ip = &J->items[i].p;
    if (fi.layer != ip->layer || fi.kind != ip->kind || fi.n_tokens != ip->n_tokens) {
        snprintf(msg, msg_size, "frame is layer %u kind %u with %u tokens, the item expects %u %u %u", fi.layer,
                 fi.kind, fi.n_tokens, ip->layer, ip->kind, ip->n_tokens);
        return E8C_ERR_SHAPE;
    }
    if (fi.n_kv_heads != fp->n_kv_heads || fi.head_dim != fp->head_dim || fi.src_dtype != fp->src_dtype ||
        fi.layer >= fp->n_layers) {
        snprintf(msg, msg_size, "frame geometry %ux%u (dtype %u, layer %u) is not the model's", fi.n_kv_heads,
                 fi.head_dim, fi.src_dtype, fi.layer);
        return E8C_ERR_FINGERPRINT;
    }
    if (memcmp(fi.id_prefix, J->ctx->id, 8) != 0 || fi.hadamard_seed != fp->config.hadamard_seed) {
        snprintf(msg, msg_size, "frame fingerprint id differs from the context's");
        return E8C_ERR_FINGERPRINT;
    }
    e8cu_qmeta *m = &J->meta[i];
    m->method = fi.method;
    m->n_raw_head = fi.n_raw_head;
    m->n_raw_tail = fi.n_raw_tail;
    m->first_pos = fi.first_pos;
    m->rope_seq_len = fi.rope_seq_len;
    e8cu_dframe *f = &J->fr[i];
    memset(f, 0, sizeof *f);
    uint64_t H = fp->n_kv_heads, n = fp->head_dim, N = fi.n_tokens, es = fp->src_dtype == E8C_DTYPE_F32 ? 4 : 2;
    uint32_t ns = fi.method == 0 ? 1 : E8CU_NS, hdr = fi.method == 0 ? E8CU_HDR_RAW : E8CU_HDR_E8;
    uint64_t Q = fi.method == 0 ? 0 : N - fi.n_raw_head - fi.n_raw_tail, e = H * Q * n;
    uint64_t want[E8CU_NS] = {H * Q, H * Q, (e / 8 + 7) / 8, e / 8 * 7, e / 8, 5 * e, H * (1 + 5 * n),
                              H * (N - Q) * n * es};
    if (fi.method == 0) want[0] = H * N * n * es;
    f->method = fi.method;
    f->n_q = (uint32_t)Q;
    f->n_raw_el = (uint32_t)(H * (N - Q) * n);
    for (uint32_t s = 0; s < ns; s++) {
        const uint8_t *d = p + 52 + 13 * s;
        f->coding[s] = d[0];
        f->raw_len[s] = get32(d + 1);
        f->stored_len[s] = get32(d + 5);
        if (d[0] != E8CU_CODING_STORED && (d[0] != E8CU_CODING_RANS32 || s >= 5)) J->host_only = 1;
    }
    if (fi.method == 1 && (f->raw_len[5] > want[5] || f->raw_len[6] > want[6])) {
        snprintf(msg, msg_size, "escape or mode stream too long");
        return E8C_ERR_CORRUPT;
    }
    for (uint32_t s = 0; s < ns; s++)
        if ((s < 5 || s == 7) && f->raw_len[s] != want[s]) {
            snprintf(msg, msg_size, "stream %u length %u, expected %llu", s, f->raw_len[s], (unsigned long long)want[s]);
            return E8C_ERR_CORRUPT;
        }
    /* staged whole at its slot: stream s at slot + hdr + the stored lengths before it */
    uint64_t o = J->slot[i] + hdr;
    for (uint32_t s = 0; s < ns; s++) {
        f->st[s] = o;
        o += f->stored_len[s];
    }
    memcpy(J->h_st + J->slot[i], p, fi.frame_size);
    return 0;
}

/* Pipelined over groups of frames: group g is checked and staged on the worker threads while
 * group g-1 travels to the device (a second stream) and group g-2 is decoded. */
int64_t e8cu_gpu_decode(e8cu_ctx *ctx, size_t n, const e8cu_item *items, const void *const *frames,
                        const size_t *frame_sizes, e8cu_qmeta *meta, void *h_q, void *d_q, size_t qbatch_bytes,
                        cudaStream_t stream)
{
    const e8c_fingerprint *fp = &ctx->fp;
    e8cu_ews *w = &ctx->ews;
    const size_t H = fp->n_kv_heads, hd = fp->head_dim;
    int64_t rc = 0;
    size_t nh_max = 0, ws_max = 0, st_all = 0, el = 0;
    uint64_t *slot = malloc((n + 1) * sizeof *slot);
    e8cu_off *off = malloc(n * sizeof *off);
    if (!slot || !off) {
        free(slot);
        free(off);
        return e8cu_fail(ctx, E8C_ERR_NOMEM, "decode records of %zu items", n);
    }
    for (size_t i = 0; i < n; i++) { /* bounds from the geometry: every token quantized */
        uint64_t v = (uint64_t)H * items[i].p.n_tokens, e = v * hd;
        slot[i] = st_all;
        st_all += frame_sizes[i];
        ws_max += 2 * A16(v) + A16((e / 8 + 7) / 8) + A16(e / 8 * 7) + A16(e / 8);
        nh_max += H;
        el += e;
    }
    slot[n] = st_all;
    if (st_all > qbatch_bytes) { /* the frames do not fit h_q: the host path */
        free(slot);
        free(off);
        return 1;
    }
    int e = 0;
    if ((rc = e8cu_grow_pinned(ctx, &w->h_fr, &w->hc_fr, n * sizeof(e8cu_dframe))) ||
        (rc = e8cu_grow_pinned(ctx, &w->h_hd, &w->hc_hd, (nh_max ? nh_max : 1) * sizeof(e8cu_dhead))) ||
        (rc = e8cu_grow_dev(ctx, &w->d_fr, &w->c_fr, n * sizeof(e8cu_dframe), "decode frame records")) ||
        (rc = e8cu_grow_dev(ctx, &w->d_hd, &w->c_hd, nh_max * sizeof(e8cu_dhead), "decode head records")) ||
        (rc = e8cu_grow_dev(ctx, &w->d_M, &w->c_M, nh_max * hd * sizeof(int32_t), "decode means")) ||
        (rc = e8cu_grow_dev(ctx, &w->d_ws, &w->c_ws, ws_max + 16, "decode stream workspace")) ||
        (rc = e8cu_grow_dev(ctx, &w->d_cw, &w->c_cw, st_all + 16, "decode staging")) ||
        (rc = e8cu_grow_dev(ctx, &w->d_out, &w->c_out, 4 * st_all + 16, "decode escape values"))) {
        free(slot);
        free(off);
        return rc;
    }
    if ((rc = e8cu_pipe_init(ctx))) {
        free(slot);
        free(off);
        return rc;
    }
    /* the copy stream and the second kernel stream start after the caller's earlier work */
    e = cudaEventRecord(w->ev[E8CU_EV_SETUP], stream);
    if (!e) e = cudaStreamWaitEvent(w->copy, w->ev[E8CU_EV_SETUP], 0);
    if (!e) e = cudaStreamWaitEvent(w->aux, w->ev[E8CU_EV_SETUP], 0);
    if (e) {
        free(slot);
        free(off);
        return e8cu_cuda_fail(ctx, e, "decode streams");
    }
    e8cu_dframe *fr = w->h_fr;
    e8cu_dhead *hr = w->h_hd;
    e8cu_djob J = {ctx, items, frames, frame_sizes, meta, fr, 0, slot, h_q, 0};
    size_t ng = e8cu_groups(el, n);
    const char *l1 = getenv("E8CU_DEC_LANE1");
    size_t cur = ((8 * n) + 15) & ~(size_t)15, ws = 0, ev = 0, nh = 0, i0 = 0;
    e8cu_prof(NULL, stream);
    for (size_t g = 0; g < ng && !rc; g++) {
        size_t i1 = g + 1 == ng ? n : n * (g + 1) / ng, h0 = nh;
        if (i1 <= i0) continue;
        J.i0 = i0;
        if ((rc = e8cu_run_jobs(ctx, i1 - i0, check_job, &J, "frame check"))) break;
        if (J.host_only) { rc = 1; break; }
        cur = e8cu_layout_range(ctx, i0, i1, cur, items, meta, off);
        if (cur > qbatch_bytes) {
            rc = e8cu_fail(ctx, E8C_ERR_DST_SIZE, "qbatch needs more than %zu bytes", qbatch_bytes);
            break;
        }
        for (size_t i = i0; i < i1; i++) {
            e8cu_dframe *f = &fr[i];
            f->off_scales = off[i].scales;
            f->off_points2 = off[i].points2;
            f->off_raw = off[i].raw;
            f->n_raw = off[i].n_raw;
            if (f->method == 0) continue;
            for (int s = 0; s < 5; s++) {
                f->ws[s] = ws;
                ws += A16(f->raw_len[s]);
            }
            f->ev = ev;
            ev += f->raw_len[5];
            f->head0 = (uint32_t)(nh - h0);
            if (f->n_q)
                for (uint32_t h = 0; h < H; h++, nh++) {
                    memset(&hr[nh], 0, sizeof hr[nh]);
                    hr[nh].frame = (uint32_t)(i - i0);
                    hr[nh].h = h;
                }
        }
        e8cu_prof("dec check+stage", stream);
        /* group g to the device on the copy stream (from its own ranges of the pinned h_q, h_fr,
         * h_hd, which the host does not touch again in this call); its kernels after that copy,
         * through an event of its own (never re-recorded while a wait on it is pending) */
        cudaEvent_t evg = w->ev[E8CU_EV_COPY(g)];
        e = cudaMemcpyAsync((uint8_t *)w->d_cw + slot[i0], (uint8_t *)h_q + slot[i0], slot[i1] - slot[i0],
                            cudaMemcpyHostToDevice, w->copy);
        if (!e) e = cudaMemcpyAsync((e8cu_dframe *)w->d_fr + i0, fr + i0, (i1 - i0) * sizeof *fr,
                                    cudaMemcpyHostToDevice, w->copy);
        if (!e && nh > h0) e = cudaMemcpyAsync((e8cu_dhead *)w->d_hd + h0, hr + h0, (nh - h0) * sizeof *hr,
                                               cudaMemcpyHostToDevice, w->copy);
        cudaStream_t sg = e8cu_group_stream(ctx, g, stream);
        if (!e) e = cudaEventRecord(evg, w->copy);
        if (!e) e = cudaStreamWaitEvent(sg, evg, 0);
        if (e) { rc = e8cu_cuda_fail(ctx, e, "frames copy to the device"); break; }
        e8cu_dlaunch L = {
            .q = d_q, .fr = (e8cu_dframe *)w->d_fr + i0, .hd = (e8cu_dhead *)w->d_hd + h0,
            .M = (int32_t *)w->d_M + h0 * hd, .st = w->d_cw, .ws = w->d_ws, .ev = w->d_out,
            .n_frames = (uint32_t)(i1 - i0), .n_heads = (uint32_t)(nh - h0), .H = (uint32_t)H, .n = (uint32_t)hd,
            .src_dtype = fp->src_dtype, .lane1 = !(l1 && *l1 == '0'),
        };
        if ((e = e8cu_launch_entropy_decode(&L, sg))) { rc = e8cu_cuda_fail(ctx, e, "entropy decode kernels"); break; }
        i0 = i1;
    }
    free(off);
    /* every group decoded (both kernel streams) before the statuses are read and h_q goes back */
    int e2 = cudaStreamSynchronize(w->copy), e3 = cudaStreamSynchronize(w->aux);
    free(slot);
    if (rc) {
        cudaStreamSynchronize(stream);
        return rc;
    }
    e = e2 ? e2 : e3;
    if (!e) e = cudaMemcpyAsync(fr, w->d_fr, n * sizeof *fr, cudaMemcpyDeviceToHost, stream);
    if (!e) e = cudaStreamSynchronize(stream);
    if (e) return e8cu_cuda_fail(ctx, e, "decode status copy");
    e8cu_prof("dec kernels+status", stream);
    static const char *why[] = {"", "rans32 stream does not decode", "mode stream", "escape stream",
                                "scale out of range", "raw stream holds NaN/inf", "coordinate or point out of range"};
    for (size_t i = 0; i < n; i++)
        if (fr[i].status)
            return e8cu_fail(ctx, E8C_ERR_CORRUPT, "unpack: item %zu: E8C_ERR_CORRUPT: %s", i,
                             fr[i].status > 0 && fr[i].status < 7 ? why[fr[i].status] : "corrupt");
    return 0;
}
