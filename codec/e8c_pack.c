/*
 * e8c_pack.c: qlayer <-> frame bytes (FORMAT.md section 5): stored
 * integers, decorrelation, zigzag with escapes, zstd, CRC32C.
 *
 * Shared by every backend: the byte half of a frame is pure integer work,
 * so there is one implementation, written in the spec's order.  Parsing
 * treats the frame as hostile: every length is checked against what the
 * geometry implies before anything is allocated or decoded.
 */
#define ZSTD_STATIC_LINKING_ONLY
#include <zstd.h>
#include <zstd_errors.h>
#include <string.h>

#include "codec/e8c_internal.h"

/* AVX2 build of head_fast (e8c_fast_body.h), for backend 3 */

static uint32_t zz(int64_t v) { return v >= 0 ? (uint32_t)(2 * v) : (uint32_t)(-2 * v - 1); }
static int64_t unzz(uint64_t z) { return (z & 1) ? -(int64_t)(z >> 1) - 1 : (int64_t)(z >> 1); }

static size_t leb_put(uint8_t *p, uint32_t v)
{
    size_t k = 0;
    while (v >= 0x80) { p[k++] = (uint8_t)(v | 0x80); v >>= 7; }
    p[k++] = (uint8_t)v;
    return k;
}

/* Reads one LEB128 (at most 5 bytes, value < 2^32); -1 on error. */
static int leb_get(const uint8_t *p, size_t len, size_t *off, uint32_t *v)
{
    uint64_t x = 0;
    for (int k = 0; k < 5; k++) {
        if (*off >= len) return -1;
        uint8_t b = p[(*off)++];
        x |= (uint64_t)(b & 0x7f) << (7 * k);
        if (!(b & 0x80)) {
            if (x > 0xffffffffu) return -1;
            *v = (uint32_t)x;
            return 0;
        }
    }
    return -1;
}

/* Expected raw lengths of the fixed-size streams for H heads, Q tokens. */
static void expected_lens(uint32_t H, uint32_t Q, uint32_t n, size_t out[E8C_N_STREAMS])
{
    size_t v = (size_t)H * Q, e = v * n;
    out[E8C_STREAM_SCALES_HI] = v;
    out[E8C_STREAM_SCALES_LO] = v;
    out[E8C_STREAM_COSETS] = (e / 8 + 7) / 8;
    out[E8C_STREAM_COORDS] = e / 8 * 7;
    out[E8C_STREAM_HALVES] = e / 8;
    out[E8C_STREAM_ESCAPES] = 5 * e;           /* upper bound */
    out[E8C_STREAM_MODES] = (size_t)H * (1 + 5 * (size_t)n); /* upper bound */
    out[E8C_STREAM_RAW] = 0;
}

size_t e8c_frame_bound(const e8c_fingerprint *fp, uint32_t N)
{
    size_t lens[E8C_N_STREAMS];
    expected_lens(fp->n_kv_heads, N, fp->head_dim, lens);
    size_t es = e8c_dtype_size((e8c_dtype)fp->src_dtype);
    size_t raw = (size_t)fp->n_kv_heads * N * fp->head_dim * es;
    size_t total = E8C_FRAME_FIXED + E8C_DESC_SIZE * E8C_N_STREAMS + 4;
    /* coords+halves bytes and raw bytes never both exceed raw: a token is
     * either quantized or raw; escapes are bounded by 3 bytes per element
     * for the values the encoder produces (< 2^21). */
    size_t e = (size_t)fp->n_kv_heads * N * fp->head_dim;
    total += 2 * lens[E8C_STREAM_SCALES_HI] + lens[E8C_STREAM_COSETS] + e + 3 * e +
             (size_t)fp->n_kv_heads * (1 + 3 * (size_t)fp->head_dim) + raw;
    return total;
}

/* ------------------------------------------------------------- encoder */

/* Finishes a stream at dst+*off: coded (out bytes already there) or, for
 * E8C_CODING_STORED, the raw bytes copied; fills desc. */
static int64_t put_done(e8c_ctx *ctx, const uint8_t *src, size_t len, uint8_t *dst, size_t cap,
                        size_t *off, uint8_t *desc, int coded, size_t out)
{
    uint8_t *o = dst + *off;
    if (!coded) {
        if (cap - *off < len) return e8c_fail(ctx, E8C_ERR_DST_SIZE, "frame buffer of %zu bytes too small", cap);
        if (len) memcpy(o, src, len);
        out = len;
    }
    desc[0] = (uint8_t)coded;
    e8c_put32(desc + 1, (uint32_t)len);
    e8c_put32(desc + 5, (uint32_t)out);
    e8c_put32(desc + 9, e8c_crc32c(o, out));
    *off += out;
    return 0;
}

/* Writes stream bytes at dst+*off with the coding FORMAT.md 5.2 picks for
 * the config's entropy mode; lattice = streams 0-4.  Fills desc. */
static int64_t put_stream(e8c_ctx *ctx, const uint8_t *src, size_t len, uint8_t *dst,
                          size_t cap, size_t *off, uint8_t *desc, int lattice)
{
    size_t room = cap - *off, out = len;
    uint32_t ent = ctx->fp.config.entropy;
    int coded = E8C_CODING_STORED, ref = ctx->backend == 1;
    uint8_t *o = dst + *off, *tmp = ctx->w.rtmp2;
    if (len > 0 && ent == E8C_ENTROPY_RANS32 && lattice) {
        /* the default: coding 3 if smaller than the raw bytes, else stored */
        size_t c3 = len - 1 < room ? len - 1 : room, k;
        k = !c3 ? 0 : ref ? e8c_rans32_encode_ref(src, len, o, c3, (uint16_t *)(void *)ctx->w.rtmp)
                          : e8c_rans32_encode_ex(src, len, o, c3, ctx->backend == 3);
        if (k) { out = k; coded = E8C_CODING_RANS32; }
    } else if (len > 0 && ent != E8C_ENTROPY_RANS32) {
        /* best / v1: the smallest, ties to the earlier of stored, zstd,
         * rANS, rans32 (v1: no rans32) */
        size_t zcap = len - 1 < room ? len - 1 : room;
        size_t r = ZSTD_compress2(ctx->zc, o, zcap, src, len);
        if (!ZSTD_isError(r)) { out = r; coded = E8C_CODING_ZSTD; }
        else if (ZSTD_getErrorCode(r) != ZSTD_error_dstSize_tooSmall)
            return e8c_fail(ctx, E8C_ERR_ZSTD, "zstd: %s", ZSTD_getErrorName(r));
        size_t best = coded ? out : zcap + 1; /* a coding must fit in best - 1 */
        if (lattice && best > 1) {
            size_t k = e8c_rans_encode(src, len, tmp, best - 1, ctx->w.rtmp);
            if (k) { memcpy(o, tmp, k); out = best = k; coded = E8C_CODING_RANS; }
        }
        if (lattice && ent == E8C_ENTROPY_BEST && best > 1) {
            size_t k = ref ? e8c_rans32_encode_ref(src, len, tmp, best - 1, (uint16_t *)(void *)ctx->w.rtmp)
                           : e8c_rans32_encode_ex(src, len, tmp, best - 1, ctx->backend == 3);
            if (k) { memcpy(o, tmp, k); out = k; coded = E8C_CODING_RANS32; }
        }
    }
    return put_done(ctx, src, len, dst, cap, off, desc, coded, out);
}

/* Coords and halves (or the two scale streams) with the default coding
 * (rans32) on the AVX2 backend: encoded together (the halves' one lane
 * inside the coords' AVX2 rounds; two one-lane streams side by side), the
 * second into scratch first; then each exactly as put_stream would
 * write it (coding 3 only if smaller than the raw bytes and within the
 * room). */
static int64_t put_pair(e8c_ctx *ctx, const uint8_t *sc, size_t lc, const uint8_t *sh, size_t lh,
                        uint8_t *dst, size_t cap, size_t *off, uint8_t *desc)
{
    size_t room = cap - *off, kh = 0;
    size_t kc = e8c_rans32_encode2(sc, lc, dst + *off, lc - 1 < room ? lc - 1 : room, sh, lh,
                                   ctx->w.rtmp2, lh - 1, &kh, 1);
    int64_t rc = put_done(ctx, sc, lc, dst, cap, off, desc, kc ? E8C_CODING_RANS32 : E8C_CODING_STORED,
                          kc);
    if (rc) return rc;
    if (kh > cap - *off) kh = 0; /* put_stream's cap: min(lh - 1, room) */
    if (kh) memcpy(dst + *off, ctx->w.rtmp2, kh);
    return put_done(ctx, sh, lh, dst, cap, off, desc + E8C_DESC_SIZE,
                    kh ? E8C_CODING_RANS32 : E8C_CODING_STORED, kh);
}

/* S integers of one head into ints[Q][n] (FORMAT.md 5.2).  Every 8-block
 * of points2 is all even or all odd, so (P - c) / 2 is exact as a shift and
 * floor(q_7 / 2) is an arithmetic shift too (gcc/clang: >> on negative
 * values is arithmetic). */
static void head_ints(const int16_t *restrict p2, uint32_t Q, uint32_t n, int32_t *restrict S)
{
    for (size_t b = 0; b < (size_t)Q * n; b += 8) {
        int32_t c = p2[b] & 1;
        for (int i = 0; i < 8; i++) S[b + i] = ((int32_t)p2[b + i] - c) >> (i == 7 ? 2 : 1);
    }
}

/* zigzag for the encoder's value range (|v| < 2^30) */
static inline uint32_t zz32(int32_t v) { return ((uint32_t)v << 1) ^ (uint32_t)(v >> 31); }

/* Picks and applies the decorrelation mode in place; M gets the means.
 * Row-major passes so the inner loops vectorize. */
static uint8_t decorrelate(int32_t *S, uint32_t Q, uint32_t n, uint32_t forced, int32_t *M)
{
    int64_t col[E8C_MAX_HEAD_DIM];
    for (uint32_t j = 0; j < n; j++) col[j] = 0;
    for (uint32_t t = 0; t < Q; t++)
        for (uint32_t j = 0; j < n; j++) col[j] += S[(size_t)t * n + j];
    for (uint32_t j = 0; j < n; j++) {
        int64_t num = col[j] + Q / 2;
        M[j] = (int32_t)(num >= 0 ? num / Q : -((-num + Q - 1) / Q));
    }
    uint64_t c1 = 0, c2 = 0, c3 = 0;
    for (uint32_t j = 0; j < n; j++) { c1 += zz32(S[j]); c3 += zz32(S[j] - M[j]); }
    c2 = c1;
    for (uint32_t t = 1; t < Q; t++) {
        const int32_t *row = S + (size_t)t * n, *prev = row - n;
        uint32_t a1 = 0, a2 = 0, a3 = 0; /* per row: n * 2^17 < 2^32 */
        for (uint32_t j = 0; j < n; j++) {
            a1 += zz32(row[j]);
            a2 += zz32(row[j] - prev[j]);
            a3 += zz32(row[j] - M[j]);
        }
        c1 += a1; c2 += a2; c3 += a3;
    }
    uint8_t mode = (uint8_t)e8c_decor_pick(forced, c1, c2, c3);
    if (mode == 2)
        for (size_t i = (size_t)Q * n; i-- > n;) S[i] -= S[i - n];
    else if (mode == 3)
        for (uint32_t t = 0; t < Q; t++)
            for (uint32_t j = 0; j < n; j++) S[(size_t)t * n + j] -= M[j];
    return mode;
}

static inline size_t emit(uint8_t *sym, size_t *ns, uint8_t *esc, size_t ne, int32_t v)
{
    uint32_t z = zz32(v);
    if (z < 255) { sym[(*ns)++] = (uint8_t)z; return ne; }
    sym[(*ns)++] = 255;
    return ne + leb_put(esc + ne, z - 255);
}

int64_t e8c_pack(e8c_ctx *ctx, const e8c_qlayer *q, uint8_t *dst, size_t cap)
{
    const e8c_fingerprint *fp = &ctx->fp;
    uint32_t H = fp->n_kv_heads, n = fp->head_dim, N = q->n_tokens;
    size_t es = e8c_dtype_size((e8c_dtype)fp->src_dtype);
    uint32_t ns = q->method == E8C_METHOD_RAW ? 1 : E8C_N_STREAMS;
    size_t hdr = E8C_FRAME_FIXED + E8C_DESC_SIZE * ns + 4;
    if (cap < hdr) return e8c_fail(ctx, E8C_ERR_DST_SIZE, "frame buffer of %zu bytes too small", cap);
    uint8_t *h = dst;
    memcpy(h, "E8KF", 4);
    h[4] = fp->config.entropy == E8C_ENTROPY_V1 ? 1 : E8C_FORMAT_VERSION; h[5] = (uint8_t)q->kind; h[6] = (uint8_t)q->method;
    h[7] = (uint8_t)fp->src_dtype;
    e8c_put16(h + 8, q->layer); e8c_put16(h + 10, H); e8c_put16(h + 12, n);
    e8c_put16(h + 14, ns);
    e8c_put32(h + 16, N); e8c_put32(h + 20, q->first_pos); e8c_put32(h + 24, q->rope_seq_len);
    e8c_put32(h + 28, q->n_raw_head); e8c_put32(h + 32, q->n_raw_tail);
    e8c_put64(h + 36, fp->config.hadamard_seed);
    memcpy(h + 44, ctx->id, 8);
    size_t off = hdr;
    uint8_t *desc = h + E8C_FRAME_FIXED;
    int64_t rc;
    if (q->method == E8C_METHOD_RAW) {
        rc = put_stream(ctx, q->raw, (size_t)H * N * n * es, dst, cap, &off, desc, 0);
        if (rc) return rc;
    } else {
        uint32_t Q = N - q->n_raw_head - q->n_raw_tail;
        e8c_work *w = &ctx->w;
        size_t nv = (size_t)H * Q;
        for (size_t v = 0; v < nv; v++) {
            w->sbuf[E8C_STREAM_SCALES_HI][v] = (uint8_t)(q->scales[v] >> 8);
            w->sbuf[E8C_STREAM_SCALES_LO][v] = (uint8_t)q->scales[v];
        }
        size_t nb = nv * n / 8;
        for (size_t B = 0; B < (nb + 7) / 8; B++) { /* one byte = 8 blocks, LSB first */
            uint32_t byte = 0;
            for (size_t k = 0; k < 8 && 8 * B + k < nb; k++)
                byte |= (uint32_t)(q->points2[64 * B + 8 * k] & 1) << k;
            w->sbuf[E8C_STREAM_COSETS][B] = (uint8_t)byte;
        }
        size_t nc = 0, nh = 0, ne = 0, ne2 = 0, nm = 0;
        uint8_t *esc2 = w->sbuf[E8C_N_STREAMS];
        int32_t M[E8C_MAX_HEAD_DIM];
        for (uint32_t hh = 0; hh < H; hh++) {
            uint8_t mode = 1;
            int esc = 1; /* 1: emit below, with escapes */
            uint8_t *cs = w->sbuf[E8C_STREAM_COORDS], *hs = w->sbuf[E8C_STREAM_HALVES];
#if defined(__x86_64__)
            if (Q > 0 && ctx->backend == 3) {
                mode = (uint8_t)e8c_pack_head_avx2(q->points2 + (size_t)hh * Q * n, Q, n,
                                                   fp->config.decorrelation, w->ints, M, cs + nc,
                                                   hs + nh, &esc);
                if (!esc) { nc += (size_t)Q * n / 8 * 7; nh += (size_t)Q * n / 8; }
            } else
#endif
            if (Q > 0) {
                head_ints(q->points2 + (size_t)hh * Q * n, Q, n, w->ints);
                mode = decorrelate(w->ints, Q, n, fp->config.decorrelation, M);
            }
            w->sbuf[E8C_STREAM_MODES][nm++] = mode;
            if (mode == 3)
                for (uint32_t j = 0; j < n; j++) nm += leb_put(w->sbuf[E8C_STREAM_MODES] + nm, zz(M[j]));
            uint8_t *es1 = w->sbuf[E8C_STREAM_ESCAPES];
            for (size_t b = 0; esc && b < (size_t)Q * n; b += 8) {
                const int32_t *R = w->ints + b;
                uint32_t z[8], big = 0;
                for (int i = 0; i < 8; i++) { z[i] = zz32(R[i]); big |= z[i] >= 255; }
                if (!big) { /* the common case: no escape */
                    for (int i = 0; i < 7; i++) cs[nc + i] = (uint8_t)z[i];
                    nc += 7;
                    hs[nh++] = (uint8_t)z[7];
                    continue;
                }
                for (int i = 0; i < 7; i++) ne = emit(cs, &nc, es1, ne, R[i]);
                ne2 = emit(hs, &nh, esc2, ne2, R[7]);
            }
        }
        memcpy(w->sbuf[E8C_STREAM_ESCAPES] + ne, esc2, ne2);
        size_t lens[E8C_N_STREAMS] = {nv, nv, (nb + 7) / 8, nc, nh, ne + ne2, nm,
                                      (size_t)H * (N - Q) * n * es};
        for (uint32_t s = 0; s < E8C_N_STREAMS; s++) {
            const uint8_t *src = s == E8C_STREAM_RAW ? (const uint8_t *)q->raw : w->sbuf[s];
            if ((s == E8C_STREAM_COORDS || s == E8C_STREAM_SCALES_HI) && fp->config.entropy == E8C_ENTROPY_RANS32 &&
                ctx->backend == 3 && lens[s] > 0 && lens[s + 1] > 0) {
                rc = put_pair(ctx, src, lens[s], w->sbuf[s + 1], lens[s + 1], dst, cap, &off,
                              desc + E8C_DESC_SIZE * s);
                if (rc) return rc;
                s++;
                continue;
            }
            rc = put_stream(ctx, src, lens[s], dst, cap, &off, desc + E8C_DESC_SIZE * s,
                            s <= E8C_STREAM_HALVES);
            if (rc) return rc;
        }
    }
    e8c_put32(dst + hdr - 4, e8c_crc32c(dst, hdr - 4));
    return (int64_t)off;
}

/* ------------------------------------------------------------- decoder */

int64_t e8c_frame_parse(const uint8_t *p, size_t size, e8c_frame_info *fi,
                        const uint8_t **streams, uint32_t desc[][4], int check_crc)
{
    if (size < E8C_FRAME_FIXED) return E8C_ERR_TRUNCATED;
    if (memcmp(p, "E8KF", 4) != 0) return E8C_ERR_MAGIC;
    if (p[4] < E8C_FORMAT_VERSION_MIN || p[4] > E8C_FORMAT_VERSION) return E8C_ERR_VERSION;
    uint32_t ns = e8c_get16(p + 14);
    memset(fi, 0, sizeof *fi);
    fi->version = p[4]; fi->kind = p[5]; fi->method = p[6]; fi->src_dtype = p[7];
    fi->layer = e8c_get16(p + 8); fi->n_kv_heads = e8c_get16(p + 10);
    fi->head_dim = e8c_get16(p + 12); fi->n_tokens = e8c_get32(p + 16);
    fi->first_pos = e8c_get32(p + 20); fi->rope_seq_len = e8c_get32(p + 24);
    fi->n_raw_head = e8c_get32(p + 28); fi->n_raw_tail = e8c_get32(p + 32);
    fi->hadamard_seed = e8c_get64(p + 36);
    memcpy(fi->id_prefix, p + 44, 8);
    if (ns != (fi->method == E8C_METHOD_RAW ? 1u : E8C_N_STREAMS) || fi->method > 1)
        return E8C_ERR_CORRUPT;
    size_t hdr = E8C_FRAME_FIXED + E8C_DESC_SIZE * ns + 4;
    if (size < hdr) return E8C_ERR_TRUNCATED;
    if (e8c_get32(p + hdr - 4) != e8c_crc32c(p, hdr - 4)) return E8C_ERR_CHECKSUM;
    if (fi->kind > 1 || e8c_dtype_size((e8c_dtype)fi->src_dtype) == 0 ||
        fi->n_kv_heads == 0 || fi->n_kv_heads > E8C_MAX_KV_HEADS || fi->head_dim < 8 ||
        fi->head_dim % 8 || fi->head_dim > E8C_MAX_HEAD_DIM || fi->n_tokens == 0 ||
        fi->n_tokens > E8C_MAX_TOKENS ||
        (uint64_t)fi->first_pos + fi->n_tokens > E8C_MAX_POSITION ||
        (uint64_t)fi->n_raw_head + fi->n_raw_tail > fi->n_tokens ||
        (fi->method == E8C_METHOD_RAW && (fi->n_raw_head || fi->n_raw_tail)))
        return E8C_ERR_CORRUPT;
    size_t off = hdr;
    for (uint32_t s = 0; s < ns; s++) {
        const uint8_t *d = p + E8C_FRAME_FIXED + E8C_DESC_SIZE * s;
        uint32_t coding = d[0], rl = e8c_get32(d + 1), sl = e8c_get32(d + 5);
        uint32_t maxc = fi->version == 1 ? E8C_CODING_RANS : E8C_CODING_RANS32;
        if (coding > maxc || (coding == 0 && rl != sl)) return E8C_ERR_CORRUPT;
        if (size - off < sl) return E8C_ERR_TRUNCATED;
        if (check_crc && e8c_crc32c(p + off, sl) != e8c_get32(d + 9)) return E8C_ERR_CHECKSUM;
        if (streams) streams[s] = p + off;
        if (desc) { desc[s][0] = coding; desc[s][1] = rl; desc[s][2] = sl; }
        off += sl;
    }
    fi->frame_size = off;
    return 0;
}

static int64_t get_stream(e8c_ctx *ctx, const uint8_t *src, const uint32_t d[4],
                          uint8_t *out, size_t want)
{
    if (d[1] != want) return e8c_fail(ctx, E8C_ERR_CORRUPT, "stream length %u, expected %zu", d[1], want);
    if (d[0] == E8C_CODING_STORED) { if (want) memcpy(out, src, want); return 0; }
    if (d[0] == E8C_CODING_RANS32) {
        int bad = want == 0 || (ctx->backend == 1 ? e8c_rans32_decode_ref(src, d[2], out, want)
                                                  : e8c_rans32_decode_ex(src, d[2], out, want, ctx->r32tab, ctx->backend == 3));
        if (bad) return e8c_fail(ctx, E8C_ERR_CORRUPT, "rans32 stream does not decode to %zu bytes", want);
        return 0;
    }
    if (d[0] == E8C_CODING_RANS) {
        if (want == 0 || e8c_rans_decode(src, d[2], out, want))
            return e8c_fail(ctx, E8C_ERR_CORRUPT, "rANS stream does not decode to %zu bytes", want);
        return 0;
    }
    size_t r = ZSTD_decompressDCtx(ctx->zd, out, want, src, d[2]);
    if (ZSTD_isError(r) || r != want)
        return e8c_fail(ctx, E8C_ERR_CORRUPT, "zstd stream does not decode to %zu bytes", want);
    return 0;
}

static int raw_finite(const uint8_t *raw, size_t count, uint32_t dtype)
{
    for (size_t i = 0; i < count; i++) {
        uint32_t u;
        if (dtype == E8C_DTYPE_F32) { memcpy(&u, raw + 4 * i, 4); if ((u & 0x7f800000u) == 0x7f800000u) return 0; }
        else {
            uint32_t h = (uint32_t)raw[2 * i] | ((uint32_t)raw[2 * i + 1] << 8);
            uint32_t m = dtype == E8C_DTYPE_F16 ? 0x7c00u : 0x7f80u;
            if ((h & m) == m) return 0;
        }
    }
    return 1;
}

/* Undoes decorrelation and the S_7 halving for one head (in ints). */
static int64_t head_points(e8c_ctx *ctx, int32_t *R, uint32_t Q, uint32_t n, uint8_t mode,
                           const int32_t *M, const uint8_t *cos_bits, size_t b0, int16_t *p2)
{
    for (size_t t = 0; t < Q; t++)
        for (uint32_t j = 0; j < n; j++) {
            int64_t v = R[t * n + j];
            if (mode == 2 && t) v += R[(t - 1) * n + j];
            else if (mode == 3) v += M[j];
            if (v < -16384 || v > 16383) return e8c_fail(ctx, E8C_ERR_CORRUPT, "coordinate out of range");
            R[t * n + j] = (int32_t)v;
        }
    for (size_t b = 0; b < (size_t)Q * n / 8; b++) {
        int32_t *S = R + 8 * b, par = 0;
        int c = (cos_bits[(b0 + b) / 8] >> ((b0 + b) % 8)) & 1;
        for (int i = 0; i < 7; i++) par += S[i];
        int64_t q7 = 2 * (int64_t)S[7] + (par & 1);
        for (int i = 0; i < 8; i++) {
            int64_t qi = i < 7 ? S[i] : q7, v = 2 * qi + c;
            if (v < -32768 || v > 32767) return e8c_fail(ctx, E8C_ERR_CORRUPT, "point out of range");
            p2[8 * b + i] = (int16_t)v;
        }
    }
    return 0;
}

/* head_points for a frame without escapes, fused with reading the symbols:
 * one pass, no branch per element (a 255 symbol, i.e. an escape that the
 * empty escape stream cannot hold, or a value out of range marks the frame
 * corrupt at the end of the head).  prev: n ints of scratch. */
static int64_t head_fast(e8c_ctx *ctx, const uint8_t *restrict cs, const uint8_t *restrict hs,
                         uint32_t Q, uint32_t n, uint8_t mode, const int32_t *M,
                         const uint8_t *cos_bits, size_t b0, int32_t *restrict prev,
                         int16_t *restrict p2)
{
    uint32_t bad = 0;
    for (uint32_t j = 0; j < n; j++) prev[j] = 0;
    size_t blk = b0;
    for (size_t t = 0; t < Q; t++)
        for (uint32_t j = 0; j < n; j += 8, cs += 7, hs++, p2 += 8, blk++) {
            int32_t S[8];
            for (int i = 0; i < 8; i++) {
                uint32_t z = i < 7 ? cs[i] : hs[0];
                bad |= z == 255;
                S[i] = (int32_t)(z >> 1) ^ -(int32_t)(z & 1);
            }
            if (mode == 2)
                for (int i = 0; i < 8; i++) { S[i] += prev[j + i]; prev[j + i] = S[i]; }
            else if (mode == 3)
                for (int i = 0; i < 8; i++) S[i] += M[j + i];
            int32_t c = (cos_bits[blk >> 3] >> (blk & 7)) & 1, par = 0;
            for (int i = 0; i < 8; i++) bad |= (uint32_t)(S[i] + 16384) > 32767u;
            for (int i = 0; i < 7; i++) { par += S[i]; p2[i] = (int16_t)(2 * S[i] + c); }
            int32_t v7 = 2 * (2 * S[7] + (par & 1)) + c;
            bad |= (uint32_t)(v7 + 32768) > 65535u;
            p2[7] = (int16_t)v7;
        }
    return bad ? e8c_fail(ctx, E8C_ERR_CORRUPT, "coordinate out of range or escape without escape bytes") : 0;
}

int64_t e8c_unpack(e8c_ctx *ctx, const uint8_t *src, size_t size, e8c_qlayer *q,
                   const e8c_frame_info *fi)
{
    const e8c_fingerprint *fp = &ctx->fp;
    const uint8_t *st[E8C_N_STREAMS];
    uint32_t d[E8C_N_STREAMS][4];
    e8c_frame_info tmp;
    int64_t rc = e8c_frame_parse(src, size, &tmp, st, d, 1);
    if (rc) return e8c_fail(ctx, rc, "frame header");
    (void)fi;
    uint32_t H = fp->n_kv_heads, n = fp->head_dim, N = tmp.n_tokens;
    size_t es = e8c_dtype_size((e8c_dtype)fp->src_dtype);
    if (tmp.n_kv_heads != H || tmp.head_dim != n || tmp.src_dtype != fp->src_dtype ||
        tmp.layer >= fp->n_layers)
        return e8c_fail(ctx, E8C_ERR_FINGERPRINT, "frame geometry %ux%u (dtype %u, layer %u) is not the model's",
                        tmp.n_kv_heads, tmp.head_dim, tmp.src_dtype, tmp.layer);
    if (memcmp(tmp.id_prefix, ctx->id, 8) != 0 || tmp.hadamard_seed != fp->config.hadamard_seed)
        return e8c_fail(ctx, E8C_ERR_FINGERPRINT, "frame fingerprint id differs from the context's");
    if (N > ctx->w.tokens && (rc = e8c_work_reserve(ctx, N))) return rc;
    q->kind = tmp.kind; q->layer = tmp.layer; q->n_tokens = N; q->first_pos = tmp.first_pos;
    q->rope_seq_len = tmp.rope_seq_len; q->method = tmp.method;
    q->n_raw_head = tmp.n_raw_head; q->n_raw_tail = tmp.n_raw_tail;
    if (tmp.method == E8C_METHOD_RAW) {
        if ((rc = get_stream(ctx, st[0], d[0], q->raw, (size_t)H * N * n * es))) return rc;
        if (!raw_finite(q->raw, (size_t)H * N * n, fp->src_dtype))
            return e8c_fail(ctx, E8C_ERR_CORRUPT, "raw stream holds NaN/inf");
        return 0;
    }
    uint32_t Q = N - tmp.n_raw_head - tmp.n_raw_tail;
    e8c_work *w = &ctx->w;
    size_t lens[E8C_N_STREAMS];
    expected_lens(H, Q, n, lens);
    lens[E8C_STREAM_RAW] = (size_t)H * (N - Q) * n * es;
    if (d[E8C_STREAM_ESCAPES][1] > lens[E8C_STREAM_ESCAPES] || d[E8C_STREAM_MODES][1] > lens[E8C_STREAM_MODES])
        return e8c_fail(ctx, E8C_ERR_CORRUPT, "escape or mode stream too long");
    lens[E8C_STREAM_ESCAPES] = d[E8C_STREAM_ESCAPES][1];
    lens[E8C_STREAM_MODES] = d[E8C_STREAM_MODES][1];
    /* the two scale streams side by side where both are rans32 and well
     * formed; anything else (or a corrupt stream) goes the usual way below,
     * which reports it */
    int scales_done = ctx->backend != 1 && lens[0] > 0 && d[0][0] == E8C_CODING_RANS32 &&
                      d[1][0] == E8C_CODING_RANS32 && d[0][1] == lens[0] && d[1][1] == lens[1] &&
                      e8c_rans32_decode2(st[0], d[0][2], w->sbuf[0], lens[0], st[1], d[1][2], w->sbuf[1],
                                         lens[1], ctx->r32tab, ctx->backend == 3) == 0;
    for (uint32_t s = scales_done ? 2 : 0; s < E8C_N_STREAMS; s++) {
        uint8_t *out = s == E8C_STREAM_RAW ? (uint8_t *)q->raw : w->sbuf[s];
        if (s == E8C_STREAM_COORDS && ctx->backend != 1 && d[s][0] == E8C_CODING_RANS32 &&
            d[s + 1][0] == E8C_CODING_RANS32 && d[s][1] == lens[s] && d[s + 1][1] == lens[s + 1]) {
            /* coords and halves side by side (the halves' lone lane hides
             * in the coords' eight) */
            if (lens[s] == 0 || lens[s + 1] == 0 ||
                e8c_rans32_decode2(st[s], d[s][2], out, lens[s], st[s + 1], d[s + 1][2],
                                   w->sbuf[s + 1], lens[s + 1], ctx->r32tab, ctx->backend == 3))
                return e8c_fail(ctx, E8C_ERR_CORRUPT, "rans32 coords/halves streams do not decode to %zu/%zu bytes",
                                lens[s], lens[s + 1]);
            s++;
            continue;
        }
        if ((rc = get_stream(ctx, st[s], d[s], out, lens[s]))) return rc;
    }
    if (!raw_finite(q->raw, (size_t)H * (N - Q) * n, fp->src_dtype))
        return e8c_fail(ctx, E8C_ERR_CORRUPT, "raw stream holds NaN/inf");
    size_t nv = (size_t)H * Q;
    for (size_t v = 0; v < nv; v++) {
        uint16_t s = (uint16_t)((w->sbuf[E8C_STREAM_SCALES_HI][v] << 8) | w->sbuf[E8C_STREAM_SCALES_LO][v]);
        if (s > 0x7300) /* sign set, inf/NaN, or above 2^103: the encoder never writes it */
            return e8c_fail(ctx, E8C_ERR_CORRUPT, "scale 0x%04x out of range", s);
        q->scales[v] = s;
    }
    /* escapes: stream-2 ones first; count stream-2 escapes to find stream 3's */
    size_t eoff = 0, eoff2 = 0, n2 = 0, nm = 0, ic = 0, ih = 0;
    const uint8_t *E = w->sbuf[E8C_STREAM_ESCAPES], *MS = w->sbuf[E8C_STREAM_MODES];
    size_t elen = lens[E8C_STREAM_ESCAPES], mlen = lens[E8C_STREAM_MODES];
    for (size_t i = 0; elen && i < nv * n / 8 * 7; i++) n2 += w->sbuf[E8C_STREAM_COORDS][i] == 255;
    for (size_t k = 0; k < n2; k++) {
        uint32_t v;
        if (leb_get(E, elen, &eoff2, &v)) return e8c_fail(ctx, E8C_ERR_CORRUPT, "escape stream");
    }
    size_t e3 = eoff2; /* stream-3 escapes start here */
    for (uint32_t hh = 0; hh < H; hh++) {
        if (nm >= mlen) return e8c_fail(ctx, E8C_ERR_CORRUPT, "mode stream short");
        uint8_t mode = MS[nm++];
        int32_t M[E8C_MAX_HEAD_DIM];
        if (mode < 1 || mode > 3) return e8c_fail(ctx, E8C_ERR_CORRUPT, "mode %u", mode);
        for (uint32_t j = 0; mode == 3 && j < n; j++) {
            uint32_t z;
            if (leb_get(MS, mlen, &nm, &z)) return e8c_fail(ctx, E8C_ERR_CORRUPT, "mode stream");
            int64_t m = unzz(z);
            if (m < -16384 || m > 16383) /* a mean of coordinates in that range */
                return e8c_fail(ctx, E8C_ERR_CORRUPT, "mean %lld out of range", (long long)m);
            M[j] = (int32_t)m;
        }
        const uint8_t *cs = w->sbuf[E8C_STREAM_COORDS], *hs = w->sbuf[E8C_STREAM_HALVES];
        if (elen == 0) { /* no escapes in the frame: symbols straight to points */
#if defined(__x86_64__)
            if (ctx->backend == 3) {
                if (e8c_head_points_avx2(cs + ic, hs + ih, Q, n, mode, M, w->sbuf[E8C_STREAM_COSETS],
                                         (size_t)hh * Q * n / 8, w->ints, q->points2 + (size_t)hh * Q * n))
                    return e8c_fail(ctx, E8C_ERR_CORRUPT, "coordinate out of range or escape without escape bytes");
            } else
#endif
            {
                rc = head_fast(ctx, cs + ic, hs + ih, Q, n, mode, M, w->sbuf[E8C_STREAM_COSETS],
                               (size_t)hh * Q * n / 8, w->ints, q->points2 + (size_t)hh * Q * n);
                if (rc) return rc;
            }
            ic += (size_t)Q * n / 8 * 7;
            ih += (size_t)Q * n / 8;
            continue;
        }
        for (size_t i = 0; i < (size_t)Q * n; i++) {
            int half = (i & 7) == 7;
            uint32_t z = half ? hs[ih++] : cs[ic++];
            if (z == 255) {
                uint32_t extra;
                if (leb_get(E, elen, half ? &eoff2 : &eoff, &extra) || extra > 0x10000u)
                    return e8c_fail(ctx, E8C_ERR_CORRUPT, "escape stream");
                z = 255 + extra;
            }
            w->ints[i] = (int32_t)((z >> 1) ^ (0u - (z & 1)));
        }
        rc = head_points(ctx, w->ints, Q, n, mode, M, w->sbuf[E8C_STREAM_COSETS],
                         (size_t)hh * Q * n / 8, q->points2 + (size_t)hh * Q * n);
        if (rc) return rc;
    }
    if (nm != mlen || eoff2 != elen || eoff != e3) return e8c_fail(ctx, E8C_ERR_CORRUPT, "trailing bytes in mode/escape stream");
    return 0;
}
