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

void e8cu_entropy_free(e8cu_ctx *ctx)
{
    e8cu_ews *w = &ctx->ews;
    void *d[] = {w->d_fr, w->d_hd, w->d_M, w->d_hist, w->d_ws, w->d_cw, w->d_out, w->d_total};
    for (size_t i = 0; i < sizeof d / sizeof d[0]; i++) cudaFree(d[i]);
    free(w->h_fr);
    free(w->h_hd);
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

int64_t e8cu_gpu_encode(e8cu_ctx *ctx, size_t n, const e8cu_item *items, const e8cu_qmeta *meta,
                        const e8cu_off *off, const void *d_q, cudaStream_t stream, uint64_t *total)
{
    const e8c_fingerprint *fp = &ctx->fp;
    const size_t H = fp->n_kv_heads, hd = fp->head_dim, es = fp->src_dtype == E8C_DTYPE_F32 ? 4 : 2;
    e8cu_ews *w = &ctx->ews;
    size_t nh = 0, ws = 0, cw = 0, cap = 0;
    for (size_t i = 0; i < n; i++)
        if (meta[i].method == 1 && off[i].n_q > 0) nh += H;
    int64_t rc = e8cu_grow_host(ctx, &w->h_fr, &w->hc_fr, n * sizeof(e8cu_eframe));
    if (!rc) rc = e8cu_grow_host(ctx, &w->h_hd, &w->hc_hd, (nh ? nh : 1) * sizeof(e8cu_ehead));
    if (rc) return rc;
    e8cu_eframe *fr = w->h_fr;
    e8cu_ehead *hr = w->h_hd;
    memset(fr, 0, n * sizeof *fr);
    size_t hi = 0;
    for (size_t i = 0; i < n; i++) {
        e8cu_eframe *f = &fr[i];
        uint64_t N = items[i].p.n_tokens, Q = off[i].n_q, nv = H * Q, e = nv * hd;
        f->off_scales = off[i].scales;
        f->off_points2 = off[i].points2;
        f->off_raw = off[i].raw;
        f->method = meta[i].method;
        f->n_q = off[i].n_q;
        f->n_raw = off[i].n_raw;
        uint64_t raw7 = H * off[i].n_raw * hd * es;
        if (f->method == 0) {
            if (raw7 > UINT32_MAX) return e8cu_fail(ctx, E8C_ERR_LIMIT, "item %zu: raw stream of %llu bytes", i, (unsigned long long)raw7);
            f->raw_len[0] = (uint32_t)raw7;
            cap += E8CU_HDR_RAW + raw7;
            continue;
        }
        uint64_t lens[5] = {nv, nv, (e / 8 + 7) / 8, e / 8 * 7, e / 8};
        if (lens[3] > UINT32_MAX / 2 || raw7 > UINT32_MAX)
            return e8cu_fail(ctx, E8C_ERR_LIMIT, "item %zu: streams beyond 2^31 bytes", i);
        for (int s = 0; s < 5; s++) {
            f->raw_len[s] = (uint32_t)lens[s];
            f->ws[s] = ws;
            f->cs[s] = cw;
            ws += A16(lens[s]);
            cw += A16(lens[s]);
            cap += lens[s];
        }
        f->raw_len[7] = (uint32_t)raw7;
        /* escapes are rare: room for 1/16 byte per element, more if the frames need it */
        cap += E8CU_HDR_E8 + raw7 + H * (1 + 3 * hd) + e / 16;
        f->head0 = (uint32_t)hi;
        (void)N;
        if (Q > 0)
            for (uint32_t h = 0; h < H; h++, hi++) {
                memset(&hr[hi], 0, sizeof hr[hi]);
                hr[hi].frame = (uint32_t)i;
                hr[hi].h = h;
            }
    }
    size_t nhist = n * 5 * 256 * sizeof(uint32_t);
    if ((rc = e8cu_grow_dev(ctx, &w->d_fr, &w->c_fr, n * sizeof(e8cu_eframe), "entropy frame records")) ||
        (rc = e8cu_grow_dev(ctx, &w->d_hd, &w->c_hd, (nh ? nh : 1) * sizeof(e8cu_ehead), "entropy head records")) ||
        (rc = e8cu_grow_dev(ctx, &w->d_M, &w->c_M, (nh ? nh : 1) * hd * sizeof(int32_t), "entropy means")) ||
        (rc = e8cu_grow_dev(ctx, &w->d_hist, &w->c_hist, nhist, "entropy histograms")) ||
        (rc = e8cu_grow_dev(ctx, &w->d_ws, &w->c_ws, ws + 16, "entropy stream workspace")) ||
        (rc = e8cu_grow_dev(ctx, &w->d_cw, &w->c_cw, cw + 16, "entropy coded workspace")) ||
        (rc = e8cu_grow_dev(ctx, &w->d_out, &w->c_out, cap + 16, "entropy output")))
        return rc;
    if (!w->d_total) {
        int e = cudaMalloc(&w->d_total, 16);
        if (e) return e8cu_cuda_fail(ctx, e, "entropy total");
    }
    int e = cudaMemcpyAsync(w->d_fr, fr, n * sizeof *fr, cudaMemcpyHostToDevice, stream);
    if (!e && nh) e = cudaMemcpyAsync(w->d_hd, hr, nh * sizeof *hr, cudaMemcpyHostToDevice, stream);
    if (!e) e = cudaMemsetAsync(w->d_hist, 0, nhist, stream);
    if (e) return e8cu_cuda_fail(ctx, e, "entropy records upload");
    e8cu_elaunch L = {
        .q = (unsigned char *)d_q, .fr = w->d_fr, .hd = w->d_hd, .M = w->d_M, .hist = w->d_hist,
        .ws = w->d_ws, .cw = w->d_cw, .out = w->d_out, .out_cap = w->c_out, .total = w->d_total,
        .n_frames = (uint32_t)n, .n_heads = (uint32_t)nh, .H = (uint32_t)H, .n = (uint32_t)hd,
        .esz = (uint32_t)es, .decor = fp->config.decorrelation,
    };
    if ((e = e8cu_launch_entropy_encode(&L, stream))) return e8cu_cuda_fail(ctx, e, "entropy kernels");
    e = cudaMemcpyAsync(fr, w->d_fr, n * sizeof *fr, cudaMemcpyDeviceToHost, stream);
    if (!e) e = cudaStreamSynchronize(stream);
    if (e) return e8cu_cuda_fail(ctx, e, "entropy records download");
    uint64_t t = n ? fr[n - 1].frame_off + fr[n - 1].frame_size : 0;
    if (t > w->c_out) { /* more escapes than room was made for: grow, place again */
        if ((rc = e8cu_grow_dev(ctx, &w->d_out, &w->c_out, t, "entropy output"))) return rc;
        L.out = w->d_out;
        L.out_cap = w->c_out;
        if ((e = e8cu_launch_entropy_place(&L, stream))) return e8cu_cuda_fail(ctx, e, "entropy place kernels");
    }
    *total = t;
    return 0;
}

int64_t e8cu_gpu_fetch(e8cu_ctx *ctx, void *h_out, uint64_t total, cudaStream_t stream)
{
    int e = total ? cudaMemcpyAsync(h_out, ctx->ews.d_out, total, cudaMemcpyDeviceToHost, stream) : 0;
    if (!e) e = cudaStreamSynchronize(stream);
    return e ? e8cu_cuda_fail(ctx, e, "frames copy to the host") : 0;
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

void e8cu_gpu_frame_at(const e8cu_ctx *ctx, size_t i, uint64_t *off, uint32_t *size)
{
    const e8cu_eframe *f = (const e8cu_eframe *)ctx->ews.h_fr + i;
    *off = f->frame_off;
    *size = f->frame_size;
}
