/*
 * e8c_chunk.c: the chunk container (FORMAT.md section 7): header, embedded
 * fingerprint, index of 2 x n_layers frames, header CRC, then the frames.
 * A layer range is decoded by following the index; nothing else is read.
 */
#include <string.h>

#include "codec/e8c_internal.h"

typedef struct chunk_hdr {
    uint32_t version, src_dtype, n_layers, H, n, N, first_pos, seq_len, rope_seq_len, fp_len;
    const uint8_t *id, *fp, *index;
    size_t hdr_size, payload_size;
} chunk_hdr;

static int64_t chunk_parse(const uint8_t *p, size_t size, chunk_hdr *c)
{
    if (size < E8C_CHUNK_FIXED) return E8C_ERR_TRUNCATED;
    if (memcmp(p, "E8KC", 4) != 0) return E8C_ERR_MAGIC;
    if (p[4] < E8C_FORMAT_VERSION_MIN || p[4] > E8C_FORMAT_VERSION) return E8C_ERR_VERSION;
    c->version = p[4];
    c->src_dtype = p[5]; c->n_layers = e8c_get16(p + 6); c->H = e8c_get16(p + 8);
    c->n = e8c_get16(p + 10); c->N = e8c_get32(p + 12); c->first_pos = e8c_get32(p + 16);
    c->seq_len = e8c_get32(p + 20); c->rope_seq_len = e8c_get32(p + 24);
    c->id = p + 28; c->fp_len = e8c_get32(p + 60); c->fp = p + 64;
    if (c->fp_len > E8C_FP_MAX || c->n_layers == 0 || c->n_layers > E8C_MAX_LAYERS)
        return E8C_ERR_CORRUPT;
    size_t hdr = E8C_CHUNK_FIXED + (size_t)c->fp_len + 16 * (size_t)c->n_layers + 4;
    if (size < hdr) return E8C_ERR_TRUNCATED;
    if (e8c_get32(p + hdr - 4) != e8c_crc32c(p, hdr - 4)) return E8C_ERR_CHECKSUM;
    c->index = p + E8C_CHUNK_FIXED + c->fp_len;
    c->hdr_size = hdr;
    uint64_t off = 0;
    for (uint32_t i = 0; i < 2 * c->n_layers; i++) {
        if (e8c_get32(c->index + 8 * i) != off) return E8C_ERR_CORRUPT;
        off += e8c_get32(c->index + 8 * i + 4);
    }
    if (size - hdr < off) return E8C_ERR_TRUNCATED;
    c->payload_size = off;
    if (c->N == 0 || c->N > E8C_MAX_TOKENS || (uint64_t)c->first_pos + c->N > E8C_MAX_POSITION ||
        c->seq_len < c->first_pos + c->N || c->seq_len > E8C_MAX_POSITION)
        return E8C_ERR_CORRUPT;
    return 0;
}

/* Frame i of the chunk; checks it agrees with the chunk header. */
static int64_t chunk_frame(const uint8_t *p, const chunk_hdr *c, uint32_t i, const uint8_t **f,
                           size_t *fs, int check_crc)
{
    *f = p + c->hdr_size + e8c_get32(c->index + 8 * i);
    *fs = e8c_get32(c->index + 8 * i + 4);
    e8c_frame_info fi;
    int64_t rc = e8c_frame_parse(*f, *fs, &fi, NULL, NULL, check_crc);
    if (rc) return rc;
    if (fi.frame_size != *fs || fi.layer != i / 2 || fi.kind != i % 2 || fi.n_kv_heads != c->H ||
        fi.head_dim != c->n || fi.n_tokens != c->N || fi.first_pos != c->first_pos ||
        fi.src_dtype != c->src_dtype || memcmp(fi.id_prefix, c->id, 8) != 0)
        return E8C_ERR_CORRUPT;
    return 0;
}

int64_t e8c_chunk_raw_size(const e8c_ctx *ctx, uint32_t lb, uint32_t le, uint32_t N, e8c_dtype dtype)
{
    if (!ctx) return E8C_ERR_ARG;
    if (lb >= le || le > ctx->fp.n_layers) return E8C_ERR_LAYER_RANGE;
    if (N == 0 || N > E8C_MAX_TOKENS) return E8C_ERR_LIMIT;
    size_t es = e8c_dtype_size(dtype);
    if (!es) return E8C_ERR_DTYPE;
    return (int64_t)((size_t)(le - lb) * 2 * ctx->fp.n_kv_heads * N * ctx->fp.head_dim * es);
}

int64_t e8c_chunk_max_size(const e8c_ctx *ctx, uint32_t N)
{
    if (!ctx) return E8C_ERR_ARG;
    if (N == 0 || N > E8C_MAX_TOKENS) return E8C_ERR_LIMIT;
    int64_t fl = e8c_fingerprint_serialize(&ctx->fp, NULL, 0);
    if (fl < 0) return fl;
    size_t L = ctx->fp.n_layers;
    return (int64_t)(E8C_CHUNK_FIXED + (size_t)fl + 16 * L + 4 + 2 * L * e8c_frame_bound(&ctx->fp, N));
}

int64_t e8c_chunk_encode(e8c_ctx *ctx, const e8c_chunk_params *p, const void *raw,
                         e8c_dtype dtype, void *dst, size_t cap)
{
    if (!ctx) return E8C_ERR_ARG;
    ctx->err[0] = 0;
    if (!p || !raw || !dst) return e8c_fail(ctx, E8C_ERR_ARG, "params, raw or dst NULL");
    size_t es = e8c_dtype_size(dtype);
    if (!es) return e8c_fail(ctx, E8C_ERR_DTYPE, "dtype %d", (int)dtype);
    const e8c_fingerprint *fp = &ctx->fp;
    uint32_t L = fp->n_layers, H = fp->n_kv_heads, n = fp->head_dim, N = p->n_tokens;
    int64_t fl = e8c_fingerprint_serialize(fp, NULL, 0);
    if (fl < 0) return e8c_fail(ctx, fl, "fingerprint");
    size_t hdr = E8C_CHUNK_FIXED + (size_t)fl + 16 * (size_t)L + 4;
    if (cap < hdr) return e8c_fail(ctx, E8C_ERR_DST_SIZE, "chunk buffer of %zu bytes too small", cap);
    uint8_t *o = dst;
    e8c_frame_params fpar = {0, 0, N, p->first_pos, p->seq_len, p->rope_seq_len};
    size_t off = hdr;
    for (uint32_t i = 0; i < 2 * L; i++) {
        fpar.layer = i / 2;
        fpar.kind = i % 2;
        size_t el = (size_t)i * H * N * n;
        e8c_tensor t = e8c_tensor_contiguous((void *)((const uint8_t *)raw + el * es), dtype, N, n);
        int64_t r = e8c_frame_encode(ctx, &fpar, &t, o + off, cap - off);
        if (r < 0) return r;
        if (off - hdr + (size_t)r > 0xffffffffu)
            return e8c_fail(ctx, E8C_ERR_LIMIT, "chunk payload above 4 GiB");
        e8c_put32(o + E8C_CHUNK_FIXED + fl + 8 * i, (uint32_t)(off - hdr));
        e8c_put32(o + E8C_CHUNK_FIXED + fl + 8 * i + 4, (uint32_t)r);
        off += (size_t)r;
    }
    uint32_t seq = p->seq_len ? p->seq_len : p->first_pos + N;
    memcpy(o, "E8KC", 4);
    o[4] = fp->config.entropy == E8C_ENTROPY_V1 ? 1 : E8C_FORMAT_VERSION; o[5] = (uint8_t)fp->src_dtype;
    e8c_put16(o + 6, L); e8c_put16(o + 8, H); e8c_put16(o + 10, n);
    e8c_put32(o + 12, N); e8c_put32(o + 16, p->first_pos); e8c_put32(o + 20, seq);
    e8c_put32(o + 24, p->rope_seq_len ? p->rope_seq_len : seq);
    memcpy(o + 28, ctx->id, E8C_ID_SIZE);
    e8c_put32(o + 60, (uint32_t)fl);
    e8c_fingerprint_serialize(fp, o + 64, (size_t)fl);
    e8c_put32(o + hdr - 4, e8c_crc32c(o, hdr - 4));
    return (int64_t)off;
}

int64_t e8c_chunk_fingerprint(const void *chunk, size_t size, e8c_fingerprint *fp)
{
    if (!chunk || !fp) return E8C_ERR_ARG;
    chunk_hdr c;
    int64_t rc = chunk_parse(chunk, size, &c);
    if (rc) return rc;
    if ((rc = e8c_fingerprint_parse(c.fp, c.fp_len, fp))) return rc == E8C_ERR_VERSION ? rc : E8C_ERR_CORRUPT;
    uint8_t id[E8C_ID_SIZE];
    if ((rc = e8c_fingerprint_id(fp, id))) return rc;
    if (memcmp(id, c.id, E8C_ID_SIZE) != 0 || fp->n_layers != c.n_layers || fp->n_kv_heads != c.H ||
        fp->head_dim != c.n || fp->src_dtype != c.src_dtype)
        return E8C_ERR_CORRUPT;
    return 0;
}

int64_t e8c_chunk_info_get(const void *chunk, size_t size, e8c_chunk_info *info)
{
    if (!chunk || !info) return E8C_ERR_ARG;
    e8c_fingerprint fp;
    int64_t rc = e8c_chunk_fingerprint(chunk, size, &fp);
    if (rc) return rc;
    chunk_hdr c;
    chunk_parse(chunk, size, &c);
    for (uint32_t i = 0; i < 2 * c.n_layers; i++) {
        const uint8_t *f;
        size_t fs;
        if ((rc = chunk_frame(chunk, &c, i, &f, &fs, 1))) return rc;
    }
    memset(info, 0, sizeof *info);
    info->version = c.version;
    memcpy(info->fingerprint_id, c.id, E8C_ID_SIZE);
    info->n_layers = c.n_layers; info->n_kv_heads = c.H; info->head_dim = c.n;
    info->src_dtype = c.src_dtype; info->n_tokens = c.N; info->first_pos = c.first_pos;
    info->seq_len = c.seq_len; info->rope_seq_len = c.rope_seq_len;
    info->chunk_size = c.hdr_size + c.payload_size;
    info->payload_size = c.payload_size;
    return 0;
}

int64_t e8c_chunk_decode(e8c_ctx *ctx, const void *chunk, size_t size, uint32_t lb, uint32_t le,
                         const e8c_decode_params *dp, void *raw_dst, e8c_dtype dtype,
                         size_t dst_size)
{
    if (!ctx) return E8C_ERR_ARG;
    ctx->err[0] = 0;
    if (!chunk || !raw_dst) return e8c_fail(ctx, E8C_ERR_ARG, "chunk or raw_dst NULL");
    chunk_hdr c;
    int64_t rc = chunk_parse(chunk, size, &c);
    if (rc) return e8c_fail(ctx, rc, "chunk header");
    if (memcmp(c.id, ctx->id, E8C_ID_SIZE) != 0)
        return e8c_fail(ctx, E8C_ERR_FINGERPRINT, "chunk fingerprint id differs from the context's");
    if (c.n_layers != ctx->fp.n_layers || c.H != ctx->fp.n_kv_heads || c.n != ctx->fp.head_dim)
        return e8c_fail(ctx, E8C_ERR_CORRUPT, "chunk geometry differs from its fingerprint");
    if (lb >= le || le > c.n_layers)
        return e8c_fail(ctx, E8C_ERR_LAYER_RANGE, "layers [%u, %u) of %u", lb, le, c.n_layers);
    int64_t need = e8c_chunk_raw_size(ctx, lb, le, c.N, dtype);
    if (need < 0) return e8c_fail(ctx, need, "dtype %d", (int)dtype);
    if (dst_size < (size_t)need)
        return e8c_fail(ctx, E8C_ERR_DST_SIZE, "raw_dst holds %zu bytes, needs %lld", dst_size, (long long)need);
    size_t es = e8c_dtype_size(dtype), per = (size_t)c.H * c.N * c.n;
    for (uint32_t i = 2 * lb; i < 2 * le; i++) {
        const uint8_t *f;
        size_t fs;
        if ((rc = chunk_frame(chunk, &c, i, &f, &fs, 0))) return e8c_fail(ctx, rc, "frame %u of the chunk", i);
        e8c_tensor t = e8c_tensor_contiguous((uint8_t *)raw_dst + (size_t)(i - 2 * lb) * per * es, dtype, c.N, c.n);
        if ((rc = e8c_frame_decode_into(ctx, f, fs, dp, &t, c.N))) return rc;
    }
    return 0;
}
