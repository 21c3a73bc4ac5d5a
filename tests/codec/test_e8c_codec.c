/*
 * test_e8c_codec.c: frames and chunks end to end.
 *  - reference == fast (scalar and AVX2) byte for byte over random shapes,
 *    dtypes, head_dims, RoPE variants, strides, policies, positions near
 *    and past 4096 / 8192 / 131072;
 *  - decode(encode(x)) == the reference quantizer's dequantized output,
 *    bit for bit; qlayer pack/unpack agree with frame encode/decode;
 *  - zero / tiny / huge / NaN / inf inputs; raw-kept tokens exact;
 *  - truncated, bit-flipped and hostile frames and chunks return errors;
 *  - chunk layer ranges.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/e8c_internal.h"
#include "tests/codec/e8c_testgen.h"

#define BUF (4u << 20)
static uint8_t *g_a, *g_b;

static int setup(void **state) { (void)state; g_a = malloc(BUF); g_b = malloc(BUF); return !g_a || !g_b; }
static int teardown(void **state) { (void)state; free(g_a); free(g_b); return 0; }

typedef struct tcase {
    uint32_t n, H, T, rope, il, first, kind, layer;
    e8c_dtype dt;
    int strided;      /* input as [T][H][n] instead of [H][T][n] */
    uint32_t sinks, recent, protect, decor, entropy;
    int tiny_step;    /* step 1/64: coordinates beyond 127, escapes */
} tcase;

static void make_ctxs(const tcase *c, e8c_ctx *ctx[3])
{
    e8c_fingerprint fp;
    e8t_fingerprint(&fp, 4, c->H, c->n, c->rope, (int)c->il);
    fp.config.sink_tokens = c->sinks;
    fp.config.recent_tokens = c->recent;
    fp.config.protect_first = c->protect;
    fp.config.decorrelation = c->decor;
    fp.config.entropy = c->entropy;
    if (c->tiny_step) fp.config.k_step = fp.config.v_step = 1.0f / 64;
    for (int b = 0; b < 3; b++) {
        int64_t err;
        ctx[b] = e8c_ctx_create(&fp, &err);
        assert_non_null(ctx[b]);
    }
    assert_int_equal(e8c_ctx_set_backend(ctx[0], E8C_BACKEND_REF), 0);
    assert_int_equal(e8c_ctx_set_backend(ctx[1], E8C_BACKEND_FAST_SCALAR), 0);
    assert_int_equal(e8c_ctx_set_backend(ctx[2], E8C_BACKEND_AUTO), 0);
}

/* Input tensor for a case (data in *buf, freed by caller). */
static e8c_tensor make_input(const tcase *c, e8t_rng *r, void **buf)
{
    size_t ne = (size_t)c->H * c->T * c->n;
    float *x = malloc(sizeof(float) * ne), *y = malloc(sizeof(float) * ne);
    *buf = malloc(4 * ne);
    assert_true(x && y && *buf);
    e8t_kv(r, x, c->H, c->T, c->n);
    e8c_tensor t = e8c_tensor_contiguous(*buf, c->dt, c->T, c->n);
    if (c->strided) { /* [T][H][n] storage */
        for (uint32_t h = 0; h < c->H; h++)
            for (uint32_t k = 0; k < c->T; k++)
                memcpy(&y[((size_t)k * c->H + h) * c->n], &x[((size_t)h * c->T + k) * c->n], sizeof(float) * c->n);
        memcpy(x, y, sizeof(float) * ne);
        t.stride_head = c->n;
        t.stride_token = (int64_t)c->H * c->n;
    }
    e8t_convert(x, *buf, ne, c->dt);
    free(x);
    free(y);
    return t;
}

static void run_case(const tcase *c, e8t_rng *r)
{
    e8c_ctx *ctx[3];
    make_ctxs(c, ctx);
    void *in;
    e8c_tensor t = make_input(c, r, &in);
    e8c_frame_params p = {c->layer, c->kind, c->T, c->first, 0, 0};
    int64_t na = e8c_frame_encode(ctx[0], &p, &t, g_a, BUF);
    assert_true(na > 0);
    if (c->tiny_step && c->T > 8 && !c->protect) /* the escape stream is used */
        assert_true(e8c_get32(g_a + E8C_FRAME_FIXED + E8C_DESC_SIZE * E8C_STREAM_ESCAPES + 1) > 0);
    assert_true(na <= e8c_frame_max_size(ctx[0], c->T));
    for (int b = 1; b < 3; b++) {
        int64_t nb = e8c_frame_encode(ctx[b], &p, &t, g_b, BUF);
        assert_int_equal(na, nb);
        assert_memory_equal(g_a, g_b, (size_t)na);
    }
    /* decode(encode(x)) == dequantize(quantize(x)) with the reference */
    size_t ne = (size_t)c->H * c->T * c->n;
    float *d1 = malloc(4 * ne), *d2 = malloc(4 * ne);
    e8c_qlayer_sizes qs;
    assert_int_equal(e8c_qlayer_size(ctx[0], c->T, &qs), 0);
    e8c_qlayer q = {0};
    q.scales = malloc(qs.scales); q.points2 = malloc(qs.points2); q.raw = malloc(qs.raw);
    assert_int_equal(e8c_quantize(ctx[0], &p, &t, &q), 0);
    e8c_tensor o1 = e8c_tensor_contiguous(d1, E8C_DTYPE_F32, c->T, c->n);
    e8c_tensor o2 = e8c_tensor_contiguous(d2, E8C_DTYPE_F32, c->T, c->n);
    assert_int_equal(e8c_dequantize(ctx[0], &q, NULL, &o1), 0);
    for (int b = 0; b < 3; b++) {
        memset(d2, 0xff, 4 * ne);
        assert_int_equal(e8c_frame_decode_into(ctx[b], g_a, (size_t)na, NULL, &o2, c->T), 0);
        assert_memory_equal(d1, d2, 4 * ne);
    }
    /* qlayer pack == frame bytes; unpack == quantize arrays */
    assert_int_equal(e8c_qlayer_pack(ctx[2], &q, g_b, BUF), na);
    assert_memory_equal(g_a, g_b, (size_t)na);
    e8c_qlayer u = {0};
    u.scales = malloc(qs.scales); u.points2 = malloc(qs.points2); u.raw = malloc(qs.raw);
    u.n_tokens = c->T;
    assert_int_equal(e8c_qlayer_unpack(ctx[1], g_a, (size_t)na, &u), 0);
    uint32_t Q = u.method ? c->T - u.n_raw_head - u.n_raw_tail : 0;
    assert_int_equal(u.n_raw_head, q.n_raw_head);
    assert_int_equal(u.n_raw_tail, q.n_raw_tail);
    assert_memory_equal(u.scales, q.scales, 2 * (size_t)c->H * Q);
    assert_memory_equal(u.points2, q.points2, 2 * (size_t)c->H * Q * c->n);
    /* frame info agrees */
    e8c_frame_info fi;
    assert_int_equal(e8c_frame_info_get(g_a, (size_t)na, &fi), 0);
    assert_int_equal(fi.frame_size, na);
    assert_int_equal(fi.n_tokens, c->T);
    assert_int_equal(fi.first_pos, c->first);
    free(u.scales); free(u.points2); free(u.raw);
    free(q.scales); free(q.points2); free(q.raw);
    free(d1); free(d2); free(in);
    for (int b = 0; b < 3; b++) e8c_ctx_free(ctx[b]);
}

static void test_ref_equals_fast_random(void **state)
{
    (void)state;
    static const uint32_t dims[] = {8, 16, 24, 64, 80, 96, 112, 128, 192, 256};
    static const uint32_t ropes[] = {E8C_ROPE_NONE, E8C_ROPE_DEFAULT, E8C_ROPE_LINEAR, E8C_ROPE_DYNAMIC,
                                     E8C_ROPE_YARN, E8C_ROPE_LLAMA3, E8C_ROPE_LONGROPE};
    static const uint32_t firsts[] = {0, 4090, 4096, 8180, 8192, 131060, 131072, 200000, 3};
    e8t_rng r = {99};
    for (int k = 0; k < 60; k++) {
        tcase c = {0};
        c.n = dims[k % 10];
        c.H = 1 + (uint32_t)(e8t_u64(&r) % 3);
        c.T = 1 + (uint32_t)(e8t_u64(&r) % 24);
        c.rope = ropes[(k / 2) % 7];
        c.il = (uint32_t)(e8t_u64(&r) & 1);
        c.first = firsts[e8t_u64(&r) % 9];
        c.kind = (uint32_t)(k % 4 != 3 ? E8C_K : E8C_V);
        c.layer = (uint32_t)(e8t_u64(&r) % 4);
        c.dt = (e8c_dtype)(1 + e8t_u64(&r) % 3);
        c.strided = (int)(e8t_u64(&r) & 1);
        c.sinks = (k % 5 == 1) ? 4 : 0;
        c.recent = (k % 7 == 2) ? 5 : 0;
        c.protect = (k % 11 == 3) ? 2 : 0;
        c.decor = (uint32_t)(e8t_u64(&r) % 4);
        c.entropy = (uint32_t)(k % 3); /* rans32, best, v1 */
        c.tiny_step = k % 6 == 4;
        if (k % 10 == 9) c.T = 150 + (uint32_t)(e8t_u64(&r) % 100); /* rans32 with 8 lanes */
        if (c.sinks) c.first = (uint32_t)(e8t_u64(&r) % 3);
        run_case(&c, &r);
    }
}

/* The fast path's fp16 rows at head_dim 64 and 128 (the whole front and
 * back of the pipeline in registers where RoPE is none or full split-half):
 * frames and fp16 decodes equal the reference's, for K and V, every RoPE
 * layout (interleaved and partial rotary take the general path), positions
 * past 4096, strided heads; a NaN, an inf or a value above 65504 is not
 * possible in fp16 rows except NaN/inf, which both refuse alike. */
static void test_fast_f16_rows(void **state)
{
    (void)state;
    e8t_rng r = {77};
    for (int k = 0; k < 16; k++) {
        tcase c = {0};
        c.n = k & 1 ? 128 : 64;
        c.H = 2; c.T = 37 + (uint32_t)k;
        c.rope = (k & 6) == 0 ? E8C_ROPE_NONE : E8C_ROPE_DEFAULT;
        c.il = (k & 6) == 4;
        c.kind = (k & 8) ? E8C_V : E8C_K;
        c.first = k * 1000u;
        c.dt = E8C_DTYPE_F16;
        c.strided = (k & 6) == 6;
        e8c_ctx *ctx[3];
        make_ctxs(&c, ctx);
        if (k % 7 == 3) /* partial rotary */
            for (int b = 0; b < 3; b++) {
                e8c_fingerprint fp = *e8c_ctx_fingerprint(ctx[b]);
                e8c_ctx_free(ctx[b]);
                fp.rope.rotary_dim = c.n / 2;
                ctx[b] = e8c_ctx_create(&fp, NULL);
                assert_non_null(ctx[b]);
            }
        assert_int_equal(e8c_ctx_set_backend(ctx[0], E8C_BACKEND_REF), 0);
        assert_int_equal(e8c_ctx_set_backend(ctx[1], E8C_BACKEND_FAST_SCALAR), 0);
        void *in;
        e8c_tensor t = make_input(&c, &r, &in);
        e8c_frame_params p = {1, c.kind, c.T, c.first, 0, 0};
        int64_t na = e8c_frame_encode(ctx[0], &p, &t, g_a, BUF);
        assert_true(na > 0);
        size_t ne = (size_t)c.H * c.T * c.n;
        uint16_t *o[3];
        for (int b = 0; b < 3; b++) {
            assert_int_equal(e8c_frame_encode(ctx[b], &p, &t, g_b, BUF), na);
            assert_memory_equal(g_a, g_b, (size_t)na);
            o[b] = malloc(2 * ne);
            memset(o[b], 0xA5, 2 * ne);
            e8c_tensor ot = e8c_tensor_contiguous(o[b], E8C_DTYPE_F16, c.T, c.n);
            assert_int_equal(e8c_frame_decode(ctx[b], g_a, (size_t)na, NULL, &ot), 0);
            if (b) assert_memory_equal(o[0], o[b], 2 * ne);
        }
        /* a NaN or inf row element: the same error from every backend */
        uint16_t *h16 = in;
        h16[(size_t)(k % 3) * c.n + (size_t)k % c.n] = k & 1 ? 0x7E00 : 0xFC00;
        for (int b = 0; b < 3; b++)
            assert_int_equal(e8c_frame_encode(ctx[b], &p, &t, g_b, BUF), E8C_ERR_NONFINITE);
        for (int b = 0; b < 3; b++) { free(o[b]); e8c_ctx_free(ctx[b]); }
        free(in);
    }
}

/* Gaussian K/V at the default preset: quality floor through the bytes. */
/* Ties on purpose: constant, alternating, integer and half-integer
 * patterns make many coordinates share |d| and round at .5, so the E8
 * search's tie rules (first largest |d|, ties to D8, round-half-even) decide
 * the bytes; every backend must agree. */
static void test_ref_equals_fast_ties(void **state)
{
    (void)state;
    static const uint32_t dims[] = {64, 128, 80, 8};
    e8t_rng r = {31};
    for (int di = 0; di < 4; di++) {
        uint32_t n = dims[di], H = 2, T = 40;
        tcase c = {0};
        c.n = n; c.H = H; c.T = T; c.rope = E8C_ROPE_NONE; c.kind = E8C_V; c.dt = E8C_DTYPE_F32;
        c.decor = 1;
        e8c_ctx *ctx[3];
        make_ctxs(&c, ctx);
        size_t ne = (size_t)H * T * n;
        float *x = malloc(4 * ne);
        for (size_t i = 0; i < ne; i++) {
            size_t t = i / n, j = i % n;
            switch (t % 8) {
            case 0: x[i] = 1.0f; break;
            case 1: x[i] = (j & 1) ? -1.0f : 1.0f; break;
            case 2: x[i] = (float)((int)(j % 5) - 2); break;
            case 3: x[i] = 0.5f + (float)(j % 3); break;
            case 4: x[i] = (j % 8 == 0) ? 8.0f : 0.0f; break;
            case 5: x[i] = (float)((int)(e8t_u64(&r) % 9) - 4) * 0.25f; break;
            case 6: x[i] = (j % 16 < 8) ? 0.75f : -0.25f; break;
            default: x[i] = (float)(e8t_u64(&r) % 4) - 1.5f; break;
            }
        }
        e8c_tensor t = e8c_tensor_contiguous(x, E8C_DTYPE_F32, T, n);
        for (uint32_t kind = 0; kind < 2; kind++) {
            e8c_frame_params p = {0, kind, T, 0, 0, 0};
            int64_t na = e8c_frame_encode(ctx[0], &p, &t, g_a, BUF);
            assert_true(na > 0);
            for (int b = 1; b < 3; b++) {
                assert_int_equal(e8c_frame_encode(ctx[b], &p, &t, g_b, BUF), na);
                assert_memory_equal(g_a, g_b, (size_t)na);
            }
        }
        free(x);
        for (int b = 0; b < 3; b++) e8c_ctx_free(ctx[b]);
    }
}

/* FORMAT.md 5.2: which coding each stream gets under each entropy config,
 * the version byte, and that best is never larger than rans32 or v1. */
static void test_entropy_selection(void **state)
{
    (void)state;
    size_t size[3];
    for (uint32_t e = 0; e < 3; e++) {
        e8c_fingerprint fp;
        e8t_fingerprint(&fp, 2, 3, 64, E8C_ROPE_DEFAULT, 0);
        fp.config.entropy = e;
        fp.config.sink_tokens = 2;
        e8c_ctx *ctx = e8c_ctx_create(&fp, NULL);
        assert_non_null(ctx);
        e8t_rng r = {21};
        uint32_t T = 256;
        size_t ne = 3 * (size_t)T * 64;
        float *x = malloc(4 * ne);
        uint16_t *h = malloc(2 * ne);
        e8t_kv(&r, x, 3, T, 64);
        for (size_t i = 64 * 50; i < 64 * 60; i++) x[i] = x[i - 64]; /* a repeat for zstd */
        e8t_convert(x, h, ne, E8C_DTYPE_F16);
        e8c_tensor t = e8c_tensor_contiguous(h, E8C_DTYPE_F16, T, 64);
        e8c_frame_params p = {0, E8C_K, T, 0, 0, 0};
        int64_t n = e8c_frame_encode(ctx, &p, &t, g_a, BUF);
        assert_true(n > 0);
        size[e] = (size_t)n;
        assert_int_equal(g_a[4], e == E8C_ENTROPY_V1 ? 1 : 2);
        int seen3 = 0, seen_zstd_or_2 = 0;
        for (uint32_t s = 0; s < E8C_N_STREAMS; s++) {
            const uint8_t *d = g_a + E8C_FRAME_FIXED + E8C_DESC_SIZE * s;
            uint32_t coding = d[0], rl = e8c_get32(d + 1), sl = e8c_get32(d + 5);
            if (coding) assert_true(sl < rl);
            if (rl == 0) assert_int_equal(coding, 0);
            seen3 |= coding == 3;
            seen_zstd_or_2 |= coding == 1 || coding == 2;
            if (e == E8C_ENTROPY_RANS32) {
                if (s >= E8C_STREAM_ESCAPES) assert_int_equal(coding, 0);
                else assert_true(coding == 0 || coding == 3);
                if (s == E8C_STREAM_COORDS) { /* 3 x 254 x 56 symbols: 8 lanes */
                    assert_int_equal(coding, 3);
                    assert_int_equal(g_a[E8C_FRAME_FIXED + E8C_DESC_SIZE * 8 + 4 +
                                         e8c_get32(g_a + E8C_FRAME_FIXED + 5) +
                                         e8c_get32(g_a + E8C_FRAME_FIXED + 13 + 5) +
                                         e8c_get32(g_a + E8C_FRAME_FIXED + 26 + 5)], 8);
                }
            }
            if (e == E8C_ENTROPY_V1) assert_true(coding <= 2);
        }
        if (e == E8C_ENTROPY_RANS32) assert_true(seen3 && !seen_zstd_or_2);
        if (e == E8C_ENTROPY_V1) assert_true(!seen3);
        float *y = malloc(4 * ne);
        e8c_tensor o = e8c_tensor_contiguous(y, E8C_DTYPE_F32, T, 64);
        for (int b = 0; b < 3; b++) {
            e8c_ctx_set_backend(ctx, (e8c_backend)b);
            assert_int_equal(e8c_frame_decode_into(ctx, g_a, (size_t)n, NULL, &o, T), 0);
        }
        e8c_frame_info fi;
        assert_int_equal(e8c_frame_info_get(g_a, (size_t)n, &fi), 0);
        assert_int_equal(fi.version, e == E8C_ENTROPY_V1 ? 1 : 2);
        /* coding 3 in a version-1 frame is refused */
        if (e == E8C_ENTROPY_RANS32) {
            memcpy(g_b, g_a, (size_t)n);
            g_b[4] = 1;
            size_t hdr = E8C_FRAME_FIXED + E8C_DESC_SIZE * E8C_N_STREAMS + 4;
            e8c_put32(g_b + hdr - 4, e8c_crc32c(g_b, hdr - 4));
            assert_int_equal(e8c_frame_info_get(g_b, (size_t)n, &fi), E8C_ERR_CORRUPT);
        }
        free(x); free(h); free(y);
        e8c_ctx_free(ctx);
    }
    print_message("frame bytes: rans32 %zu, best %zu, v1 %zu\n", size[0], size[1], size[2]);
    assert_true(size[1] <= size[0] && size[1] <= size[2]);
}

/* Version-1 data: the seeds in tests/codec/corpus/v1-* are the bytes the
 * version-1 library wrote (the same generator, run before format 2).  An
 * entropy = v1 config writes them again byte for byte and decodes them, and
 * a version-1 chunk's own fingerprint (format 1) recreates its id. */
static void test_version1_compat(void **state)
{
    (void)state;
    FILE *f = fopen("tests/codec/corpus/v1-frame-0-0", "rb");
    assert_non_null(f);
    size_t n = fread(g_b, 1, BUF, f);
    fclose(f);
    e8c_fingerprint fp;
    e8t_fingerprint(&fp, 4, 2, 64, E8C_ROPE_DEFAULT, 0);
    fp.config.entropy = E8C_ENTROPY_V1;
    e8c_ctx *ctx = e8c_ctx_create(&fp, NULL);
    e8t_rng r = {2026};
    int64_t m = e8t_random_frame(ctx, &r, 12, g_a, BUF);
    assert_int_equal(m, (int64_t)n - 1);
    assert_memory_equal(g_a, g_b + 1, n - 1);
    assert_int_equal(g_a[4], 1);
    e8c_frame_info fi;
    assert_int_equal(e8c_frame_info_get(g_a, (size_t)m, &fi), 0);
    float *y = malloc(4 * 2 * 64 * (size_t)fi.n_tokens);
    e8c_tensor o = e8c_tensor_contiguous(y, E8C_DTYPE_F32, fi.n_tokens, 64);
    for (int b = 0; b < 3; b++) {
        e8c_ctx_set_backend(ctx, (e8c_backend)b);
        assert_int_equal(e8c_frame_decode_into(ctx, g_a, (size_t)m, NULL, &o, fi.n_tokens), 0);
    }
    /* the default (rans32) context is another fingerprint */
    e8c_fingerprint fd = fp;
    fd.config.entropy = E8C_ENTROPY_RANS32;
    e8c_ctx *c2 = e8c_ctx_create(&fd, NULL);
    assert_int_equal(e8c_frame_decode_into(c2, g_a, (size_t)m, NULL, &o, fi.n_tokens), E8C_ERR_FINGERPRINT);
    e8c_ctx_free(c2);
    free(y);
    e8c_ctx_free(ctx);
    /* a version-1 chunk decodes from its own bytes */
    f = fopen("tests/codec/corpus/v1-chunk-0", "rb");
    assert_non_null(f);
    n = fread(g_b, 1, BUF, f);
    fclose(f);
    e8c_chunk_info ci;
    assert_int_equal(e8c_chunk_info_get(g_b + 1, n - 1, &ci), 0);
    assert_int_equal(ci.version, 1);
    e8c_fingerprint fc;
    assert_int_equal(e8c_chunk_fingerprint(g_b + 1, n - 1, &fc), 0);
    assert_int_equal(fc.config.entropy, E8C_ENTROPY_V1);
    e8c_ctx *c3 = e8c_ctx_create(&fc, NULL);
    assert_memory_equal(e8c_ctx_id(c3), ci.fingerprint_id, 32);
    int64_t rs = e8c_chunk_raw_size(c3, 0, fc.n_layers, ci.n_tokens, E8C_DTYPE_F16);
    uint8_t *out = malloc((size_t)rs);
    assert_int_equal(e8c_chunk_decode(c3, g_b + 1, n - 1, 0, fc.n_layers, NULL, out, E8C_DTYPE_F16, (size_t)rs), 0);
    free(out);
    e8c_ctx_free(c3);
}

static void test_quality_floor(void **state)
{
    (void)state;
    e8c_fingerprint fp;
    e8t_fingerprint(&fp, 2, 2, 64, E8C_ROPE_DEFAULT, 0);
    fp.src_dtype = E8C_DTYPE_F32;
    fp.config.sink_tokens = 0; /* the quantizer alone */
    e8c_ctx *ctx = e8c_ctx_create(&fp, NULL);
    e8t_rng r = {3};
    uint32_t T = 128;
    size_t ne = 2 * T * 64;
    float *x = malloc(4 * ne), *y = malloc(4 * ne);
    for (size_t i = 0; i < ne; i++) x[i] = (float)e8t_gauss(&r);
    e8c_tensor t = e8c_tensor_contiguous(x, E8C_DTYPE_F32, T, 64), o = e8c_tensor_contiguous(y, E8C_DTYPE_F32, T, 64);
    for (uint32_t kind = 0; kind < 2; kind++) {
        e8c_frame_params p = {0, kind, T, 0, 0, 0};
        int64_t n = e8c_frame_encode(ctx, &p, &t, g_a, BUF);
        assert_true(n > 0);
        assert_int_equal(e8c_frame_decode_into(ctx, g_a, (size_t)n, NULL, &o, T), 0);
        double se = 0, sx = 0;
        for (size_t i = 0; i < ne; i++) { se += (double)(x[i] - y[i]) * (x[i] - y[i]); sx += (double)x[i] * x[i]; }
        double snr = 10 * log10(sx / se), bpe = n * 8.0 / ne;
        print_message("kind %u: %.2f dB at %.3f bits/element\n", kind, snr, bpe);
        assert_true(snr > (kind == E8C_K ? 16.5 : 9.5));
        assert_true(bpe < (kind == E8C_K ? 3.25 : 2.25));
    }
    free(x); free(y);
    e8c_ctx_free(ctx);
}

static void test_special_values(void **state)
{
    (void)state;
    e8c_fingerprint fp;
    e8t_fingerprint(&fp, 2, 1, 64, E8C_ROPE_DEFAULT, 0);
    fp.src_dtype = E8C_DTYPE_F32;
    e8c_ctx *ctx = e8c_ctx_create(&fp, NULL);
    uint32_t T = 4;
    float x[4 * 64], y[4 * 64];
    uint16_t h[4 * 64];
    e8t_rng r = {8};
    for (int i = 0; i < 256; i++) x[i] = (float)e8t_gauss(&r);
    for (int j = 0; j < 64; j++) { x[j] = 0; x[64 + j] *= 1e-30f; x[128 + j] *= 1e15f; }
    x[192 + 5] = 3e4f; /* outlier */
    e8c_tensor t = e8c_tensor_contiguous(x, E8C_DTYPE_F32, T, 64), o = e8c_tensor_contiguous(y, E8C_DTYPE_F32, T, 64);
    e8c_frame_params p = {0, E8C_K, T, 100, 0, 0};
    int64_t n = e8c_frame_encode(ctx, &p, &t, g_a, BUF);
    assert_true(n > 0);
    assert_int_equal(e8c_frame_decode_into(ctx, g_a, (size_t)n, NULL, &o, T), 0);
    for (int j = 0; j < 64; j++) assert_true(y[j] == 0.0f); /* exact zeros */
    for (int v = 1; v < 4; v++) {
        double se = 0, sx = 0;
        for (int j = 0; j < 64; j++) {
            assert_true(isfinite(y[64 * v + j]));
            se += pow(x[64 * v + j] - y[64 * v + j], 2);
            sx += pow(x[64 * v + j], 2);
        }
        assert_true(sx > 0 && se < 0.1 * sx); /* relative error like any vector */
    }
    /* into fp16: huge saturates, never inf */
    e8c_tensor oh = e8c_tensor_contiguous(h, E8C_DTYPE_F16, T, 64);
    assert_int_equal(e8c_frame_decode_into(ctx, g_a, (size_t)n, NULL, &oh, T), 0);
    for (int i = 0; i < 256; i++) assert_true((h[i] & 0x7c00) != 0x7c00);
    /* NaN, inf, |x| > 2^64 refused with a message */
    const float bad[3] = {NAN, INFINITY, 1e30f};
    const int64_t code[3] = {E8C_ERR_NONFINITE, E8C_ERR_NONFINITE, E8C_ERR_RANGE};
    for (int b = 0; b < 3; b++) {
        float keep = x[200];
        x[200] = bad[b];
        for (int be = 0; be < 3; be++) {
            e8c_ctx_set_backend(ctx, (e8c_backend)be);
            assert_int_equal(e8c_frame_encode(ctx, &p, &t, g_a, BUF), code[b]);
            assert_true(strlen(e8c_ctx_last_error(ctx)) > 10);
        }
        x[200] = keep;
    }
    /* tiny inputs below fp16 subnormals in an fp16 model's frame */
    e8c_frame_params p2 = {1, E8C_V, T, 0, 0, 0};
    for (int i = 0; i < 256; i++) x[i] = (float)e8t_gauss(&r) * 1e-9f;
    n = e8c_frame_encode(ctx, &p2, &t, g_a, BUF);
    assert_true(n > 0);
    assert_int_equal(e8c_frame_decode_into(ctx, g_a, (size_t)n, NULL, &o, T), 0);
    double se = 0, sx = 0;
    for (int i = 0; i < 256; i++) { se += pow(y[i] - x[i], 2); sx += pow(x[i], 2); }
    assert_true(sx > 0 && se < 0.2 * sx);
    e8c_ctx_free(ctx);
}

static void test_raw_policies_exact(void **state)
{
    (void)state;
    e8c_fingerprint fp;
    e8t_fingerprint(&fp, 4, 2, 64, E8C_ROPE_DEFAULT, 0);
    fp.config.sink_tokens = 3;
    fp.config.recent_tokens = 4;
    fp.config.protect_last = 1;
    e8c_ctx *ctx = e8c_ctx_create(&fp, NULL);
    e8t_rng r = {4};
    uint32_t T = 16;
    size_t ne = 2 * T * 64;
    float *x = malloc(4 * ne);
    uint16_t *hin = malloc(2 * ne), *hout = malloc(2 * ne);
    e8t_kv(&r, x, 2, T, 64);
    e8t_convert(x, hin, ne, E8C_DTYPE_F16);
    e8c_tensor t = e8c_tensor_contiguous(hin, E8C_DTYPE_F16, T, 64), o = e8c_tensor_contiguous(hout, E8C_DTYPE_F16, T, 64);
    /* layer 3 protected: bit exact */
    e8c_frame_params p = {3, E8C_K, T, 0, 100, 0};
    int64_t n = e8c_frame_encode(ctx, &p, &t, g_a, BUF);
    assert_int_equal(e8c_frame_decode_into(ctx, g_a, (size_t)n, NULL, &o, T), 0);
    assert_memory_equal(hin, hout, 2 * ne);
    /* layer 0 at positions 0..15 of a 17-token sequence: 3 sinks, tokens 13..15 recent */
    e8c_frame_params p0 = {0, E8C_K, T, 0, 17, 0};
    n = e8c_frame_encode(ctx, &p0, &t, g_a, BUF);
    e8c_frame_info fi;
    assert_int_equal(e8c_frame_info_get(g_a, (size_t)n, &fi), 0);
    assert_int_equal(fi.n_raw_head, 3);
    assert_int_equal(fi.n_raw_tail, 3);
    assert_int_equal(e8c_frame_decode_into(ctx, g_a, (size_t)n, NULL, &o, T), 0);
    for (uint32_t h = 0; h < 2; h++)
        for (uint32_t k = 0; k < T; k++) {
            int raw = k < 3 || k >= 13;
            int same = memcmp(&hin[(h * T + k) * 64], &hout[(h * T + k) * 64], 128) == 0;
            if (raw) assert_true(same);
        }
    /* new positions: raw keys are re-rotated like quantized ones */
    e8c_decode_params dp = {1, 1000, 0};
    float *y = malloc(4 * ne);
    e8c_tensor of = e8c_tensor_contiguous(y, E8C_DTYPE_F32, T, 64);
    assert_int_equal(e8c_frame_decode_into(ctx, g_a, (size_t)n, &dp, &of, T), 0);
    float c[32], s[32], k0[64];
    for (uint32_t j = 0; j < 64; j++) k0[j] = e8c_f16_to_f32(hin[j]);
    e8c_rope_cos_sin(&fp, 17, 0, 1, c, s);
    e8c_rope_remove(&fp.rope, k0, c, s);
    e8c_rope_cos_sin(&fp, 17, 1000, 1, c, s);
    e8c_rope_apply(&fp.rope, k0, c, s);
    for (uint32_t j = 0; j < 64; j++) assert_true(fabsf(k0[j] - y[j]) < 1e-4f * (1 + fabsf(k0[j])));
    free(y); free(x); free(hin); free(hout);
    e8c_ctx_free(ctx);
}

static void test_hostile_frames(void **state)
{
    (void)state;
    e8c_fingerprint fp;
    e8t_fingerprint(&fp, 4, 2, 64, E8C_ROPE_DEFAULT, 0);
    fp.config.sink_tokens = 2;
    e8c_ctx *ctx = e8c_ctx_create(&fp, NULL);
    e8t_rng r = {77};
    int64_t n = e8t_random_frame(ctx, &r, 20, g_a, BUF);
    assert_true(n > 0);
    e8c_frame_info fi;
    assert_int_equal(e8c_frame_info_get(g_a, (size_t)n, &fi), 0);
    uint32_t T = fi.n_tokens;
    float *y = malloc(4 * 2 * 64 * (size_t)T);
    e8c_tensor o = e8c_tensor_contiguous(y, E8C_DTYPE_F32, T, 64);
    for (int64_t k = 0; k < n; k++) /* every truncation */
        assert_true(e8c_is_error(e8c_frame_decode_into(ctx, g_a, (size_t)k, NULL, &o, T)));
    for (int64_t k = 0; k < n; k++) /* a bit flip anywhere */
        for (int bit = 0; bit < 8; bit += 3) {
            memcpy(g_b, g_a, (size_t)n);
            g_b[k] ^= (uint8_t)(1u << bit);
            int64_t rc = e8c_frame_decode_into(ctx, g_b, (size_t)n, NULL, &o, T);
            assert_true(e8c_is_error(rc));
        }
    /* hostile but checksummed: random header fields with a valid CRC */
    for (int it = 0; it < 3000; it++) {
        memcpy(g_b, g_a, (size_t)n);
        size_t hdr = E8C_FRAME_FIXED + E8C_DESC_SIZE * E8C_N_STREAMS + 4;
        size_t at = e8t_u64(&r) % (hdr - 4);
        g_b[at] = (uint8_t)e8t_u64(&r);
        e8c_put32(g_b + hdr - 4, e8c_crc32c(g_b, hdr - 4));
        int64_t rc = e8c_frame_decode_into(ctx, g_b, (size_t)n, NULL, &o, T);
        if (rc == 0) for (size_t i = 0; i < 2 * 64 * (size_t)T; i++) assert_true(isfinite(y[i]));
    }
    /* wrong model, wrong token count, wrong magic */
    e8c_fingerprint fp2 = fp;
    fp2.rope.theta = 10000;
    e8c_ctx *other = e8c_ctx_create(&fp2, NULL);
    assert_int_equal(e8c_frame_decode_into(other, g_a, (size_t)n, NULL, &o, T), E8C_ERR_FINGERPRINT);
    assert_int_equal(e8c_frame_decode_into(ctx, g_a, (size_t)n, NULL, &o, T + 1), E8C_ERR_SHAPE);
    memcpy(g_b, g_a, (size_t)n);
    g_b[0] = 'X';
    assert_int_equal(e8c_frame_decode_into(ctx, g_b, (size_t)n, NULL, &o, T), E8C_ERR_MAGIC);
    g_b[0] = 'E'; g_b[4] = 9;
    assert_int_equal(e8c_frame_decode_into(ctx, g_b, (size_t)n, NULL, &o, T), E8C_ERR_VERSION);
    free(y);
    e8c_ctx_free(other);
    e8c_ctx_free(ctx);
}

static void test_chunk(void **state)
{
    (void)state;
    e8c_fingerprint fp;
    e8t_fingerprint(&fp, 6, 3, 64, E8C_ROPE_DEFAULT, 0);
    fp.config.protect_first = 1;
    e8c_ctx *ctx = e8c_ctx_create(&fp, NULL);
    e8t_rng r = {55};
    uint32_t T = 32, L = 6;
    int64_t rs = e8c_chunk_raw_size(ctx, 0, L, T, E8C_DTYPE_F16);
    assert_int_equal(rs, (int64_t)L * 2 * 3 * T * 64 * 2);
    size_t ne = (size_t)rs / 2;
    float *x = malloc(4 * ne);
    uint16_t *raw = malloc((size_t)rs), *out = malloc((size_t)rs), *out2 = malloc((size_t)rs);
    e8t_kv(&r, x, (uint32_t)(ne / (T * 64)), T, 64);
    e8t_convert(x, raw, ne, E8C_DTYPE_F16);
    e8c_chunk_params cp = {T, 4096, 8192, 0};
    int64_t cmax = e8c_chunk_max_size(ctx, T);
    int64_t n = e8c_chunk_encode(ctx, &cp, raw, E8C_DTYPE_F16, g_a, BUF);
    assert_true(n > 0 && n <= cmax);
    assert_int_equal(e8c_chunk_encode(ctx, &cp, raw, E8C_DTYPE_F16, g_b, (size_t)n - 1), E8C_ERR_DST_SIZE);
    e8c_chunk_info ci;
    assert_int_equal(e8c_chunk_info_get(g_a, (size_t)n, &ci), 0);
    assert_int_equal(ci.chunk_size, n);
    assert_int_equal(ci.n_tokens, T);
    assert_int_equal(ci.first_pos, 4096);
    assert_int_equal(ci.seq_len, 8192);
    assert_memory_equal(ci.fingerprint_id, e8c_ctx_id(ctx), 32);
    assert_int_equal(e8c_chunk_decode(ctx, g_a, (size_t)n, 0, L, NULL, out, E8C_DTYPE_F16, (size_t)rs), 0);
    assert_memory_equal(raw, out, (size_t)rs / L); /* layer 0 protected: exact */
    /* a layer range equals the same slice of the whole */
    assert_int_equal(e8c_chunk_decode(ctx, g_a, (size_t)n, 2, 4, NULL, out2, E8C_DTYPE_F16, (size_t)rs), 0);
    assert_memory_equal(out2, out + 2 * (ne / L), 2 * (size_t)rs / L);
    /* a chunk decodes from its own bytes */
    e8c_fingerprint fb;
    assert_int_equal(e8c_chunk_fingerprint(g_a, (size_t)n, &fb), 0);
    e8c_ctx *c2 = e8c_ctx_create(&fb, NULL);
    assert_int_equal(e8c_chunk_decode(c2, g_a, (size_t)n, 0, L, NULL, out2, E8C_DTYPE_F16, (size_t)rs), 0);
    assert_memory_equal(out, out2, (size_t)rs);
    /* corrupt layer 5: layers 0..4 still decode, info and layer 5 fail */
    memcpy(g_b, g_a, (size_t)n);
    g_b[n - 3] ^= 0x10;
    assert_int_equal(e8c_chunk_info_get(g_b, (size_t)n, &ci), E8C_ERR_CHECKSUM);
    assert_int_equal(e8c_chunk_decode(ctx, g_b, (size_t)n, 0, 5, NULL, out2, E8C_DTYPE_F16, (size_t)rs), 0);
    assert_true(e8c_is_error(e8c_chunk_decode(ctx, g_b, (size_t)n, 5, 6, NULL, out2, E8C_DTYPE_F16, (size_t)rs)));
    /* errors: range, size, truncation, header flips */
    assert_int_equal(e8c_chunk_decode(ctx, g_a, (size_t)n, 3, 3, NULL, out2, E8C_DTYPE_F16, (size_t)rs), E8C_ERR_LAYER_RANGE);
    assert_int_equal(e8c_chunk_decode(ctx, g_a, (size_t)n, 0, 7, NULL, out2, E8C_DTYPE_F16, (size_t)rs), E8C_ERR_LAYER_RANGE);
    assert_int_equal(e8c_chunk_decode(ctx, g_a, (size_t)n, 0, 6, NULL, out2, E8C_DTYPE_F16, (size_t)rs - 1), E8C_ERR_DST_SIZE);
    for (int64_t k = 0; k < n; k += 1 + k / 16)
        assert_true(e8c_is_error(e8c_chunk_info_get(g_a, (size_t)k, &ci)));
    for (int k = 0; k < 400; k++) {
        memcpy(g_b, g_a, (size_t)n);
        g_b[k] ^= 0x04;
        assert_true(e8c_is_error(e8c_chunk_info_get(g_b, (size_t)n, &ci)));
    }
    e8c_fingerprint fo = fp;
    fo.config.hadamard_seed++;
    e8c_ctx *c3 = e8c_ctx_create(&fo, NULL);
    assert_int_equal(e8c_chunk_decode(c3, g_a, (size_t)n, 0, 1, NULL, out2, E8C_DTYPE_F16, (size_t)rs), E8C_ERR_FINGERPRINT);
    e8c_ctx_free(c3);
    e8c_ctx_free(c2);
    e8c_ctx_free(ctx);
    free(x); free(raw); free(out); free(out2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ref_equals_fast_random),
        cmocka_unit_test(test_ref_equals_fast_ties),
        cmocka_unit_test(test_fast_f16_rows),
        cmocka_unit_test(test_entropy_selection),
        cmocka_unit_test(test_version1_compat),
        cmocka_unit_test(test_quality_floor),
        cmocka_unit_test(test_special_values),
        cmocka_unit_test(test_raw_policies_exact),
        cmocka_unit_test(test_hostile_frames),
        cmocka_unit_test(test_chunk),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
