/*
 * e8c_fuzz_frame.c: libFuzzer target for every decoder of untrusted bytes:
 * frame info, frame decode, qlayer unpack, chunk info, chunk fingerprint,
 * chunk decode (whole and a layer range).  The first input byte picks the
 * context's geometry (bits 0-1), its entropy config (bits 4-5: rans32,
 * best, v1, rans32), the reference decoders instead of the fast ones
 * (bit 3), chunk mode (bit 7), and (bit 6) whether
 * the frame's CRCs are recomputed first, so mutations reach the stream
 * decoders (rans32, rANS, zstd, escapes, modes) instead of stopping at a CRC.  Built with clang by
 * `make fuzz`; its corpus (tests/codec/corpus) is replayed by
 * e8c_replay_main.c in `make test`.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "codec/e8c_internal.h"
#include "tests/codec/e8c_testgen.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static e8c_ctx *fuzz_ctx(unsigned sel)
{
    static e8c_ctx *ctx[16];
    unsigned which = sel & 3, ent = (sel >> 4) & 3;
    if (!ctx[4 * ent + which]) {
        static const uint32_t hd[4] = {64, 80, 64, 16};
        static const uint32_t rope[4] = {E8C_ROPE_DEFAULT, E8C_ROPE_YARN, E8C_ROPE_NONE, E8C_ROPE_LONGROPE};
        e8c_fingerprint fp;
        e8t_fingerprint(&fp, 4, 2, hd[which], rope[which], which == 2 ? 0 : (int)(which & 1));
        if (which == 2) { fp.config.sink_tokens = 2; fp.config.recent_tokens = 3; fp.config.protect_first = 1; }
        fp.config.entropy = ent == 3 ? E8C_ENTROPY_RANS32 : ent;
        ctx[4 * ent + which] = e8c_ctx_create(&fp, NULL);
        if (!ctx[4 * ent + which]) abort();
    }
    return ctx[4 * ent + which];
}

static void decode_frame(e8c_ctx *ctx, int ref, const uint8_t *d, size_t n)
{
    e8c_frame_info fi;
    if (e8c_frame_info_get(d, n, &fi) != 0) return;
    const e8c_fingerprint *fp = e8c_ctx_fingerprint(ctx);
    if (fi.n_tokens > 4096) return;
    /* the reference decoders are fuzzed too (selector bit 3) */
    e8c_ctx_set_backend(ctx, ref ? E8C_BACKEND_REF : E8C_BACKEND_AUTO);
    size_t ne = (size_t)fp->n_kv_heads * fi.n_tokens * fp->head_dim;
    float *out = malloc(ne * sizeof(float));
    uint16_t *scales = malloc(2 * (size_t)fp->n_kv_heads * fi.n_tokens);
    int16_t *p2 = malloc(2 * ne);
    void *raw = malloc(4 * ne);
    if (out && scales && p2 && raw) {
        e8c_tensor t = e8c_tensor_contiguous(out, E8C_DTYPE_F32, fi.n_tokens, fp->head_dim);
        e8c_decode_params dp = {1, 77, 0};
        if (e8c_frame_decode_into(ctx, d, n, (d[0] & 1) ? &dp : NULL, &t, fi.n_tokens) == 0)
            for (size_t i = 0; i < ne; i++)
                if (!(out[i] == out[i]) || out[i] > 3.4e38f || out[i] < -3.4e38f) abort();
        e8c_qlayer q = {0};
        q.n_tokens = fi.n_tokens; q.scales = scales; q.points2 = p2; q.raw = raw;
        e8c_qlayer_unpack(ctx, d, n, &q);
    }
    free(out); free(scales); free(p2); free(raw);
}

static void decode_chunk(const uint8_t *d, size_t n)
{
    e8c_chunk_info ci;
    e8c_fingerprint fp;
    int ok_info = e8c_chunk_info_get(d, n, &ci) == 0;
    if (e8c_chunk_fingerprint(d, n, &fp) != 0) return;
    e8c_ctx *ctx = e8c_ctx_create(&fp, NULL);
    if (!ctx) return;
    e8c_chunk_info ci2;
    if (ok_info || e8c_chunk_info_get(d, n, &ci2) != 0) ci2.n_tokens = 0;
    uint32_t N = ok_info ? ci.n_tokens : 0;
    if (N && N <= 2048) {
        int64_t sz = e8c_chunk_raw_size(ctx, 0, fp.n_layers, N, E8C_DTYPE_F16);
        if (sz > 0 && sz < (64 << 20)) {
            void *out = malloc((size_t)sz);
            if (out) {
                e8c_chunk_decode(ctx, d, n, 0, fp.n_layers, NULL, out, E8C_DTYPE_F16, (size_t)sz);
                e8c_chunk_decode(ctx, d, n, fp.n_layers - 1, fp.n_layers, NULL, out, E8C_DTYPE_BF16, (size_t)sz);
                free(out);
            }
        }
    }
    e8c_ctx_free(ctx);
}

/* Rewrites every CRC of a frame (copy) so that it checks. */
static void fix_crcs(uint8_t *f, size_t n)
{
    if (n < E8C_FRAME_FIXED) return;
    uint32_t ns = e8c_get16(f + 14);
    size_t hdr = E8C_FRAME_FIXED + (size_t)E8C_DESC_SIZE * ns + 4, off = hdr;
    if (ns > 64 || n < hdr) return;
    for (uint32_t s = 0; s < ns; s++) {
        uint8_t *d = f + E8C_FRAME_FIXED + E8C_DESC_SIZE * s;
        size_t sl = e8c_get32(d + 5);
        if (sl > n - off) break;
        e8c_put32(d + 9, e8c_crc32c(f + off, sl));
        off += sl;
    }
    e8c_put32(f + hdr - 4, e8c_crc32c(f, hdr - 4));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1) return 0;
    unsigned sel = data[0];
    if (sel & 0x80) { decode_chunk(data + 1, size - 1); return 0; }
    if (!(sel & 0x40)) { decode_frame(fuzz_ctx(sel), sel & 8, data + 1, size - 1); return 0; }
    uint8_t *copy = malloc(size);
    if (!copy) return 0;
    memcpy(copy, data + 1, size - 1);
    fix_crcs(copy, size - 1);
    decode_frame(fuzz_ctx(sel), sel & 8, copy, size - 1);
    free(copy);
    return 0;
}
