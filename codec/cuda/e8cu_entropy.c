/*
 * e8cu_entropy.c: host half of the GPU entropy stage (encode): the per-frame and per-head
 * records of a launch (stream sizes from the geometry, workspace offsets), the device
 * workspace, one compact copy of the coded frames to the host, then on the worker threads the
 * frame headers, stream descriptors and CRC32Cs (isa-l), FORMAT.md §5, version 2.
 *
 * The kernels (e8cu_enc.cu) leave a gap of the header's size before each frame's streams, so
 * the frames come back to the host already back to back, in item order: what a chunk's payload
 * is (FORMAT §7), with nothing moved on the host.
 */
#include <isa-l/crc.h>
#include <stdio.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>

#include "codec/cuda/e8cu_ctx.h"
#include "codec/cuda/e8cu_entropy.h"

#define A16(x) (((x) + 15u) & ~(size_t)15u)

uint32_t e8cu_crc32c(const void *p, size_t n)
{
    uint32_t c = 0xFFFFFFFFu;
    const unsigned char *b = p;
    while (n > 0) { /* isa-l takes an int length */
        int k = n > (1u << 30) ? (1 << 30) : (int)n;
        c = crc32_iscsi((unsigned char *)b, k, c);
        b += k;
        n -= (size_t)k;
    }
    return c ^ 0xFFFFFFFFu;
}

void e8cu_prof(const char *what, cudaStream_t stream)
{
    static int on = -1;
    static double last;
    if (on < 0) {
        const char *e = getenv("E8CU_PROFILE");
        on = e && *e == '1';
    }
    if (!on) return;
    cudaStreamSynchronize(stream);
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    double now = ts.tv_sec + ts.tv_nsec * 1e-9;
    if (what) fprintf(stderr, "e8cu profile: %-16s %8.3f ms\n", what, (now - last) * 1e3);
    last = now;
}

size_t e8cu_groups(size_t el, size_t n)
{
    /* Unset: groups of 2^26 elements (64 Mi; at most 8), the v4 pipeline of bench/gpu/NOTES.md
     * (104 / 139 GB/s end to end on the H200). It was off while many-items runs with small groups
     * gave a wrong frame now and then: the RoPE table race fixed in a80006c, not the pipeline;
     * tests/gpu/test_e8cu_groups checks 8, 2 and 1 groups on the device, repeatedly. 0: one. */
    const char *v = getenv("E8CU_GROUP_ELEMS");
    unsigned long long per = v ? strtoull(v, NULL, 10) : (1ull << 26);
    if (per == 0) return 1;
    size_t ng = (size_t)(el / per);
    ng = ng < 1 ? 1 : ng > 8 ? 8 : ng;
    return ng > n ? n : ng;
}

void e8cu_entropy_free(e8cu_ctx *ctx)
{
    e8cu_ews *w = &ctx->ews;
    void *d[] = {w->d_fr, w->d_hd, w->d_M, w->d_hist, w->d_ws, w->d_cw, w->d_out, w->d_total};
    /* (cudaFree of NULL is a no-op) */
    for (size_t i = 0; i < sizeof d / sizeof d[0]; i++) cudaFree(d[i]);
    cudaFreeHost(w->h_fr);
    cudaFreeHost(w->h_hd);
    cudaFreeHost(w->h_up);
    for (int k = 0; k < E8CU_PIPE_EVENTS; k++)
        if (w->ev[k]) cudaEventDestroy(w->ev[k]);
    if (w->copy) cudaStreamDestroy(w->copy);
    if (w->aux) cudaStreamDestroy(w->aux);
    memset(w, 0, sizeof *w);
}

int64_t e8cu_grow_dev(e8cu_ctx *ctx, void **p, size_t *cap, size_t need, const char *what)
{
    if (need <= *cap && *p) return 0;
    cudaFree(*p);
    *p = NULL;
    *cap = 0;
    size_t c = need + need / 8 + 256;
    int e = cudaMalloc(p, c);
    if (e) return e8cu_cuda_fail(ctx, e, what);
    *cap = c;
    return 0;
}

int64_t e8cu_grow_pinned(e8cu_ctx *ctx, void **p, size_t *cap, size_t need)
{
    if (need <= *cap && *p) return 0;
    cudaFreeHost(*p);
    *p = NULL;
    *cap = 0;
    size_t c = need + need / 8 + 256;
    int e = cudaMallocHost(p, c);
    if (e) return e8cu_cuda_fail(ctx, e, "pinned records");
    *cap = c;
    return 0;
}

int64_t e8cu_grow_host(e8cu_ctx *ctx, void **p, size_t *cap, size_t need)
{
    if (need <= *cap && *p) return 0;
    void *q = realloc(*p, need);
    if (!q) return e8cu_fail(ctx, E8C_ERR_NOMEM, "entropy records of %zu bytes", need);
    *p = q;
    *cap = need;
    return 0;
}

static void put16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static void put64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }

/* Records of items [i0, i1) (one group): workspace offsets relative to the group, head records
 * from hr[h0]. Returns the group's head count; *ws_need, *cw_need, *cap its workspace and output
 * bound; fails only on streams beyond the format's u32 lengths. */
static int64_t group_records(e8cu_ctx *ctx, size_t i0, size_t i1, const e8cu_qmeta *meta,
                             const e8cu_off *off, e8cu_eframe *fr, e8cu_ehead *hr, size_t *ws_need, size_t *cw_need,
                             size_t *cap)
{
    const e8c_fingerprint *fp = &ctx->fp;
    const size_t H = fp->n_kv_heads, hd = fp->head_dim, es = fp->src_dtype == E8C_DTYPE_F32 ? 4 : 2;
    size_t ws = 0, cw = 0, c = 0, nh = 0;
    for (size_t i = i0; i < i1; i++) {
        e8cu_eframe *f = &fr[i];
        uint64_t Q = off[i].n_q, nv = H * Q, e = nv * hd, raw7 = H * off[i].n_raw * hd * es;
        memset(f, 0, sizeof *f);
        f->off_scales = off[i].scales;
        f->off_points2 = off[i].points2;
        f->off_raw = off[i].raw;
        f->method = meta[i].method;
        f->n_q = off[i].n_q;
        f->n_raw = off[i].n_raw;
        if (raw7 > UINT32_MAX / 2 || e / 8 * 7 > UINT32_MAX / 2)
            return e8cu_fail(ctx, E8C_ERR_LIMIT, "item %zu: streams beyond 2^31 bytes", i);
        if (f->method == 0) {
            f->raw_len[0] = (uint32_t)raw7;
            c += E8CU_HDR_RAW + raw7;
            continue;
        }
        uint64_t lens[5] = {nv, nv, (e / 8 + 7) / 8, e / 8 * 7, e / 8};
        for (int s = 0; s < 5; s++) {
            f->raw_len[s] = (uint32_t)lens[s];
            f->ws[s] = ws;
            f->cs[s] = cw;
            ws += A16(lens[s]);
            cw += A16(lens[s]);
            c += lens[s];
        }
        f->raw_len[7] = (uint32_t)raw7;
        /* escapes are rare: room for 1/16 byte per element (more is made if needed) */
        c += E8CU_HDR_E8 + raw7 + H * (1 + 3 * hd) + e / 16;
        f->head0 = (uint32_t)nh;
        if (Q > 0)
            for (uint32_t h = 0; h < H; h++, nh++) {
                memset(&hr[nh], 0, sizeof hr[nh]);
                hr[nh].frame = (uint32_t)(i - i0);
                hr[nh].h = h;
            }
    }
    *ws_need = ws;
    *cw_need = cw;
    *cap = c;
    return (int64_t)nh;
}

typedef struct {
    e8cu_ctx *ctx;
    const e8cu_item *items;
    const e8cu_qmeta *meta;
    uint8_t *h_out;
    void *const *dsts;
    const size_t *caps;
    size_t *sizes;
    uint64_t *offsets;
    size_t i0;
} e8cu_hjob;

static int64_t header_job(void *arg, size_t k, e8c_ctx *wctx, char *msg, size_t msg_size)
{
    (void)wctx;
    const e8cu_hjob *J = arg;
    size_t i = J->i0 + k;
    const e8cu_eframe *f = (const e8cu_eframe *)J->ctx->ews.h_fr + i;
    e8cu_gpu_header(J->ctx, i, &J->items[i], &J->meta[i], J->h_out);
    J->sizes[i] = f->frame_size;
    if (J->offsets) J->offsets[i] = f->frame_off;
    if (!J->dsts) return 0;
    if (J->caps[i] < f->frame_size) {
        snprintf(msg, msg_size, "frame of %u bytes, buffer of %zu", f->frame_size, J->caps[i]);
        return E8C_ERR_DST_SIZE;
    }
    memcpy(J->dsts[i], J->h_out + f->frame_off, f->frame_size);
    return 0;
}

/* The streams and events of the pipeline (created once per context). */
int64_t e8cu_pipe_init(e8cu_ctx *ctx)
{
    e8cu_ews *w = &ctx->ews;
    int e = 0;
    if (!w->copy) e = cudaStreamCreateWithFlags(&w->copy, cudaStreamNonBlocking);
    if (!e && !w->aux) e = cudaStreamCreateWithFlags(&w->aux, cudaStreamNonBlocking);
    for (int k = 0; !e && k < E8CU_PIPE_EVENTS; k++)
        if (!w->ev[k]) e = cudaEventCreateWithFlags(&w->ev[k], cudaEventDisableTiming);
    return e ? e8cu_cuda_fail(ctx, e, "entropy streams and events") : 0;
}

/* Kernel stream of group g: the caller's and an internal one alternate, so that two groups'
 * kernels (latency-bound: one warp per stream) share the GPU. E8CU_STREAMS=1: the caller's only. */
cudaStream_t e8cu_group_stream(const e8cu_ctx *ctx, size_t g, cudaStream_t stream)
{
    static int one = -1;
    if (one < 0) {
        const char *v = getenv("E8CU_STREAMS");
        one = v && *v == '1';
    }
    return (g & 1) && !one ? ctx->ews.aux : stream;
}

/* Groups of items, each with its own workspace regions, coded on two streams at once; the host
 * then takes them in order: records, one copy of the frames (a third stream), headers on the
 * worker threads while the next groups are still being coded and copied.
 *
 * Ordering rules (each buffer has one writer at a time, and every wait names its own group):
 *   - the records are built in h_up and uploaded from there; the kernels' records come back per
 *     group into h_fr, a different pinned buffer (no upload and download share memory);
 *   - group g's kernels and records download end with event KERN(g); its frames copy waits for
 *     KERN(g) on the device as well as on the host, and ends with event COPY(g);
 *   - the host reads group g's records only after KERN(g), and writes group g's headers (and
 *     copies its frames out) only after COPY(g); no event is recorded twice in one call. */
int64_t e8cu_gpu_pack(e8cu_ctx *ctx, size_t n, const e8cu_item *items, const e8cu_qmeta *meta, const e8cu_off *off,
                      const void *d_q, void *h_out, size_t h_cap, void *const *dsts, const size_t *caps, size_t *sizes,
                      uint64_t *offsets, uint64_t *total, cudaStream_t stream)
{
    const e8c_fingerprint *fp = &ctx->fp;
    const size_t H = fp->n_kv_heads, hd = fp->head_dim;
    e8cu_ews *w = &ctx->ews;
    int64_t rc;
    size_t nh_all = 0, el = 0;
    for (size_t i = 0; i < n; i++) {
        if (meta[i].method == 1 && off[i].n_q > 0) nh_all += H;
        el += (size_t)H * items[i].p.n_tokens * hd;
    }
    if ((rc = e8cu_grow_pinned(ctx, &w->h_up, &w->hc_up, n * sizeof(e8cu_eframe))) ||
        (rc = e8cu_grow_pinned(ctx, &w->h_fr, &w->hc_fr, n * sizeof(e8cu_eframe))) ||
        (rc = e8cu_grow_pinned(ctx, &w->h_hd, &w->hc_hd, (nh_all ? nh_all : 1) * sizeof(e8cu_ehead))) ||
        (rc = e8cu_pipe_init(ctx)))
        return rc;
    e8cu_eframe *up = w->h_up, *fr = w->h_fr;
    e8cu_ehead *hr = w->h_hd;
    size_t ng = e8cu_groups(el, n);
    size_t gb[E8CU_MAX_GROUPS + 1], hb[E8CU_MAX_GROUPS + 1], wb[E8CU_MAX_GROUPS + 1], cb[E8CU_MAX_GROUPS + 1],
           ob[E8CU_MAX_GROUPS + 1];
    gb[0] = hb[0] = wb[0] = cb[0] = ob[0] = 0;
    for (size_t g = 0, i = 0, acc = 0; g < ng; g++) {
        size_t goal = el / ng * (g + 1);
        while (i < n && (acc < goal || i == gb[g] || g + 1 == ng)) {
            acc += (size_t)H * items[i].p.n_tokens * hd;
            i++;
        }
        gb[g + 1] = i;
        size_t ws = 0, cw = 0, cap = 0;
        int64_t nh = group_records(ctx, gb[g], i, meta, off, up, hr + hb[g], &ws, &cw, &cap);
        if (nh < 0) return nh;
        hb[g + 1] = hb[g] + (size_t)nh;
        wb[g + 1] = wb[g] + ws;
        cb[g + 1] = cb[g] + cw;
        ob[g + 1] = ob[g] + A16(cap + 16);
    }
    if ((rc = e8cu_grow_dev(ctx, &w->d_fr, &w->c_fr, n * sizeof(e8cu_eframe), "entropy frame records")) ||
        (rc = e8cu_grow_dev(ctx, &w->d_hd, &w->c_hd, (nh_all ? nh_all : 1) * sizeof(e8cu_ehead), "entropy head records")) ||
        (rc = e8cu_grow_dev(ctx, &w->d_M, &w->c_M, (nh_all ? nh_all : 1) * hd * sizeof(int32_t), "entropy means")) ||
        (rc = e8cu_grow_dev(ctx, &w->d_hist, &w->c_hist, n * 5 * 256 * sizeof(uint32_t), "entropy histograms")) ||
        (rc = e8cu_grow_dev(ctx, &w->d_ws, &w->c_ws, wb[ng] + 16, "entropy stream workspace")) ||
        (rc = e8cu_grow_dev(ctx, &w->d_cw, &w->c_cw, cb[ng] + 16, "entropy coded workspace")) ||
        (rc = e8cu_grow_dev(ctx, &w->d_out, &w->c_out, ob[ng] + 16, "entropy output")) ||
        (rc = e8cu_grow_dev(ctx, &w->d_total, &w->c_total, 16 * ng, "entropy totals")))
        return rc;
    /* every group's records up front; every kernel stream and the copy stream start after them
     * (and after the caller's earlier work on stream: the quantize) */
    int e = cudaMemcpyAsync(w->d_fr, up, n * sizeof *up, cudaMemcpyHostToDevice, stream);
    if (!e && nh_all) e = cudaMemcpyAsync(w->d_hd, hr, nh_all * sizeof *hr, cudaMemcpyHostToDevice, stream);
    if (!e) e = cudaMemsetAsync(w->d_hist, 0, n * 5 * 256 * sizeof(uint32_t), stream);
    if (!e) e = cudaEventRecord(w->ev[E8CU_EV_SETUP], stream);
    if (!e) e = cudaStreamWaitEvent(w->aux, w->ev[E8CU_EV_SETUP], 0);
    if (!e) e = cudaStreamWaitEvent(w->copy, w->ev[E8CU_EV_SETUP], 0);
    if (e) return e8cu_cuda_fail(ctx, e, "entropy records upload");
    e8cu_prof("enc records up", stream);
    e8cu_elaunch L[E8CU_MAX_GROUPS];
    for (size_t g = 0; g < ng; g++) {
        size_t i0 = gb[g];
        L[g] = (e8cu_elaunch){
            .q = (unsigned char *)d_q, .fr = (e8cu_eframe *)w->d_fr + i0, .hd = (e8cu_ehead *)w->d_hd + hb[g],
            .M = (int32_t *)w->d_M + hb[g] * hd, .hist = (uint32_t *)w->d_hist + i0 * 5 * 256,
            .ws = (unsigned char *)w->d_ws + wb[g], .cw = (unsigned char *)w->d_cw + cb[g],
            .out = (unsigned char *)w->d_out + ob[g], .out_cap = ob[g + 1] - ob[g],
            .total = (uint64_t *)w->d_total + 2 * g, .n_frames = (uint32_t)(gb[g + 1] - i0),
            .n_heads = (uint32_t)(hb[g + 1] - hb[g]), .H = (uint32_t)H, .n = (uint32_t)hd,
            .esz = fp->src_dtype == E8C_DTYPE_F32 ? 4u : 2u, .decor = fp->config.decorrelation,
        };
        if (L[g].n_frames == 0) continue;
        cudaStream_t sg = e8cu_group_stream(ctx, g, stream);
        if ((e = e8cu_launch_entropy_encode(&L[g], sg))) return e8cu_cuda_fail(ctx, e, "entropy kernels");
        /* the group's records back to its own range of h_fr right behind its kernels */
        e = cudaMemcpyAsync(fr + gb[g], L[g].fr, L[g].n_frames * sizeof *fr, cudaMemcpyDeviceToHost, sg);
        if (!e) e = cudaEventRecord(w->ev[E8CU_EV_KERN(g)], sg);
        if (e) return e8cu_cuda_fail(ctx, e, "entropy records download");
    }
    uint64_t base = 0;
    int fits = 1;
    long pend = -1; /* group whose frames are on their way to the host (headers not written yet) */
    void *tmp = NULL; /* an overflowing group's output (more escapes than room was made for) */
    e8cu_hjob J = {ctx, items, meta, h_out, dsts, caps, sizes, offsets, 0};
    for (size_t g = 0; g < ng && !rc; g++) {
        size_t i0 = gb[g], ng_i = gb[g + 1] - i0;
        if (ng_i == 0) continue;
        cudaStream_t sg = e8cu_group_stream(ctx, g, stream);
        e = cudaEventSynchronize(w->ev[E8CU_EV_KERN(g)]);
        if (e) { rc = e8cu_cuda_fail(ctx, e, "entropy kernels or records download"); break; }
        e8cu_prof("enc records down", stream);
        uint64_t t = fr[i0 + ng_i - 1].frame_off + fr[i0 + ng_i - 1].frame_size;
        const unsigned char *src = L[g].out;
        if (t > L[g].out_cap) { /* place this group again into a buffer of its own */
            e = cudaStreamSynchronize(w->copy); /* the previous tmp's copy is done */
            cudaFree(tmp);
            tmp = NULL;
            if (!e) e = cudaMalloc(&tmp, t + 16);
            if (!e) {
                L[g].out = tmp;
                L[g].out_cap = t + 16;
                e = e8cu_launch_entropy_place(&L[g], sg);
            }
            if (!e) e = cudaStreamSynchronize(sg);
            if (e) { rc = e8cu_cuda_fail(ctx, e, "entropy output of an escape-heavy group"); break; }
            src = tmp;
        }
        for (size_t i = i0; i < i0 + ng_i; i++) fr[i].frame_off += base;
        long prev = pend;
        pend = -1;
        if (fits && base + t <= h_cap) {
            /* on the device too, the copy comes after the group's kernels (not only because the
             * host waited for them above) */
            e = cudaStreamWaitEvent(w->copy, w->ev[E8CU_EV_KERN(g)], 0);
            if (!e && t) e = cudaMemcpyAsync((uint8_t *)h_out + base, src, t, cudaMemcpyDeviceToHost, w->copy);
            if (!e) e = cudaEventRecord(w->ev[E8CU_EV_COPY(g)], w->copy);
            if (e) { rc = e8cu_cuda_fail(ctx, e, "frames copy to the host"); break; }
            pend = (long)g;
        } else {
            fits = 0;
        }
        if (src == tmp) { /* tmp is reused: this copy completes first */
            e = cudaStreamSynchronize(w->copy);
            if (e) { rc = e8cu_cuda_fail(ctx, e, "frames copy to the host"); break; }
        }
        base += t;
        if (prev >= 0) { /* headers of the previous group (its copy done) while this one travels */
            e = cudaEventSynchronize(w->ev[E8CU_EV_COPY(prev)]);
            if (e) { rc = e8cu_cuda_fail(ctx, e, "frames copy to the host"); break; }
            J.i0 = gb[prev];
            rc = e8cu_run_jobs(ctx, gb[prev + 1] - gb[prev], header_job, &J, "frame headers");
            e8cu_prof("enc headers", stream);
        }
    }
    if (!rc && pend >= 0) {
        e = cudaEventSynchronize(w->ev[E8CU_EV_COPY(pend)]);
        if (e) rc = e8cu_cuda_fail(ctx, e, "frames copy to the host");
        J.i0 = gb[pend];
        if (!rc) rc = e8cu_run_jobs(ctx, gb[pend + 1] - gb[pend], header_job, &J, "frame headers");
        e8cu_prof("enc headers", stream);
    }
    /* nothing may still run when h_out and the workspace go back to the caller */
    cudaStreamSynchronize(w->copy);
    cudaStreamSynchronize(w->aux);
    cudaStreamSynchronize(stream);
    cudaFree(tmp);
    if (rc) return rc;
    *total = base;
    return fits ? 0 : 1;
}

/* Header, descriptors and CRCs of frame i, in place at h_out + its offset (FORMAT §5). */
void e8cu_gpu_header(const e8cu_ctx *ctx, size_t i, const e8cu_item *it, const e8cu_qmeta *m, uint8_t *h_out)
{
    const e8c_fingerprint *fp = &ctx->fp;
    const e8cu_eframe *f = (const e8cu_eframe *)ctx->ews.h_fr + i;
    uint8_t *h = h_out + f->frame_off;
    uint32_t ns = f->method == 0 ? 1 : E8CU_NS, hdr = f->method == 0 ? E8CU_HDR_RAW : E8CU_HDR_E8;
    memcpy(h, "E8KF", 4);
    h[4] = E8CU_FRAME_VERSION;
    h[5] = (uint8_t)it->p.kind;
    h[6] = (uint8_t)f->method;
    h[7] = (uint8_t)fp->src_dtype;
    put16(h + 8, it->p.layer);
    put16(h + 10, fp->n_kv_heads);
    put16(h + 12, fp->head_dim);
    put16(h + 14, ns);
    put32(h + 16, it->p.n_tokens);
    put32(h + 20, m->first_pos);
    put32(h + 24, m->rope_seq_len);
    put32(h + 28, f->method ? m->n_raw_head : 0);
    put32(h + 32, f->method ? m->n_raw_tail : 0);
    put64(h + 36, fp->config.hadamard_seed);
    memcpy(h + 44, ctx->id, 8);
    const uint8_t *s = h + hdr;
    for (uint32_t k = 0; k < ns; k++) {
        uint8_t *d = h + 52 + 13 * k;
        d[0] = f->coding[k];
        put32(d + 1, f->raw_len[k]);
        put32(d + 5, f->stored_len[k]);
        put32(d + 9, e8cu_crc32c(s, f->stored_len[k]));
        s += f->stored_len[k];
    }
    put32(h + hdr - 4, e8cu_crc32c(h, hdr - 4));
}
