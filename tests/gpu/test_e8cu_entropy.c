/*
 * test_e8cu_entropy.c: the GPU entropy stage (FORMAT v2, coding 3 "rans32") against the CPU
 * library (needs an NVIDIA GPU; run by `make test-gpu`, compiled by `make`).
 *
 * Byte for byte: frames of e8cu_pack and e8cu_pack_frames equal e8c_frame_encode's (reference
 * backend) where the streams need escapes (lattice steps of 1/64), in every decorrelation mode,
 * with 32-, 8- and 1-lane streams, Q = 0 frames (all tokens sinks), protected layers and huge
 * fp32 outliers; GPU decoding (e8cu_decode_async) gives the CPU decoder's bits; and damaged
 * frames whose CRCs were recomputed (so only the decoders' own checks can catch them) get the
 * same answer from both decoders: the same error, or the same output.
 * GPU_QUICK=1 runs a reduced set (for compute-sanitizer).
 */
#include <isa-l/crc.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "codec/cuda/e8codec_cuda.h"
#include "tests/gpu/e8cu_testmain.h"
#include "tests/codec/e8c_testgen.h"

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) fail_msg("%s: %s", #x, cudaGetErrorString(e_)); } while (0)

static int quick;

typedef struct {
    e8c_fingerprint fp;
    size_t n;
    e8cu_item *items;           /* device tensors, contiguous [H][N][hd] */
    void **h_in;                /* host copies */
    e8cu_ctx *gpu;
    e8c_ctx *cpu;
    void *d_q, *h_q;
    size_t qb;
    e8cu_qmeta *meta;
    uint8_t **cf, **gf;         /* CPU and GPU frames */
    size_t *cs, *gs, *caps;
} tcase;

static uint32_t crc32c(const void *p, size_t n) { return crc32_iscsi((unsigned char *)p, (int)n, 0xFFFFFFFFu) ^ 0xFFFFFFFFu; }
static uint32_t get32(const uint8_t *p) { return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24); }
static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }

/* Builds the items (random KV-like data, outliers if asked), encodes on both sides. */
static void tcase_make(tcase *c, const e8c_fingerprint *fp, e8c_dtype in, size_t n, const e8c_frame_params *ps,
                       uint64_t seed, float outlier)
{
    memset(c, 0, sizeof *c);
    c->fp = *fp;
    c->n = n;
    uint32_t H = fp->n_kv_heads, hd = fp->head_dim;
    e8t_rng rng = {seed};
    c->items = calloc(n, sizeof *c->items);
    c->h_in = calloc(n, sizeof *c->h_in);
    c->cpu = e8c_ctx_create(fp, NULL);
    assert_non_null(c->cpu);
    e8c_ctx_set_backend(c->cpu, E8C_BACKEND_REF);
    c->cf = calloc(n, sizeof *c->cf);
    c->gf = calloc(n, sizeof *c->gf);
    c->cs = calloc(n, sizeof *c->cs);
    c->gs = calloc(n, sizeof *c->gs);
    c->caps = calloc(n, sizeof *c->caps);
    for (size_t i = 0; i < n; i++) {
        uint32_t N = ps[i].n_tokens;
        size_t cnt = (size_t)H * N * hd, bytes = cnt * e8c_dtype_size(in);
        float *f = malloc(cnt * sizeof(float));
        e8t_kv(&rng, f, H, N, hd);
        if (outlier != 0)
            for (size_t k = 0; k < cnt; k += 997) f[k] = (k & 1) ? outlier : -outlier;
        c->h_in[i] = malloc(bytes);
        e8t_convert(f, c->h_in[i], cnt, in);
        free(f);
        void *d;
        CK(cudaMalloc(&d, bytes));
        CK(cudaMemcpy(d, c->h_in[i], bytes, cudaMemcpyHostToDevice));
        c->items[i].p = ps[i];
        c->items[i].t = e8c_tensor_contiguous(d, in, N, hd);
        c->caps[i] = (size_t)e8c_frame_max_size(c->cpu, N);
        c->cf[i] = malloc(c->caps[i]);
        c->gf[i] = malloc(c->caps[i]);
        e8c_tensor ht = e8c_tensor_contiguous(c->h_in[i], in, N, hd);
        int64_t r = e8c_frame_encode(c->cpu, &ps[i], &ht, c->cf[i], c->caps[i]);
        if (r < 0) fail_msg("CPU encode of item %zu: %s: %s", i, e8c_error_name(r), e8c_ctx_last_error(c->cpu));
        c->cs[i] = (size_t)r;
    }
    CK(cudaDeviceSynchronize()); /* the uploads (pageable cudaMemcpy) are done */
    int64_t e;
    c->gpu = e8cu_ctx_create(fp, quick ? 4 : 0, &e);
    assert_non_null(c->gpu);
    assert_int_equal(e8cu_qbatch_size(c->gpu, n, c->items, &c->qb), 0);
    CK(cudaMalloc(&c->d_q, c->qb));
    CK(cudaMallocHost(&c->h_q, c->qb));
    c->meta = calloc(n, sizeof *c->meta);
    int64_t r = e8cu_quantize_async(c->gpu, n, c->items, c->meta, c->d_q, c->qb, NULL, 0);
    if (!r) r = e8cu_pack(c->gpu, n, c->items, c->meta, c->d_q, c->h_q, c->qb, (void *const *)c->gf, c->caps, c->gs, 0);
    if (r) fail_msg("GPU encode: %s: %s", e8cu_error_name(r), e8cu_ctx_last_error(c->gpu));
}

static void tcase_free(tcase *c)
{
    for (size_t i = 0; i < c->n; i++) {
        cudaFree(c->items[i].t.data);
        free(c->h_in[i]); free(c->cf[i]); free(c->gf[i]);
    }
    free(c->items); free(c->h_in); free(c->cf); free(c->gf); free(c->cs); free(c->gs); free(c->caps); free(c->meta);
    cudaFree(c->d_q);
    cudaFreeHost(c->h_q);
    e8cu_ctx_free(c->gpu);
    e8c_ctx_free(c->cpu);
}

static void same_frames(const char *what, const tcase *c)
{
    for (size_t i = 0; i < c->n; i++)
        if (c->cs[i] != c->gs[i] || memcmp(c->cf[i], c->gf[i], c->cs[i]) != 0) {
            size_t k = 0;
            while (k < c->cs[i] && k < c->gs[i] && c->cf[i][k] == c->gf[i][k]) k++;
            const char *dump = getenv("E8CU_TEST_DUMP"); /* a directory: both frames go there */
            if (dump) {
                char path[512];
                snprintf(path, sizeof path, "%s/cpu_frame", dump);
                FILE *fh = fopen(path, "wb");
                if (fh) { fwrite(c->cf[i], 1, c->cs[i], fh); fclose(fh); }
                snprintf(path, sizeof path, "%s/gpu_frame", dump);
                fh = fopen(path, "wb");
                if (fh) { fwrite(c->gf[i], 1, c->gs[i], fh); fclose(fh); }
            }
            fail_msg("%s: item %zu (layer %u kind %u, %u tokens): CPU %zu bytes, GPU %zu, first difference at %zu",
                     what, i, c->items[i].p.layer, c->items[i].p.kind, c->items[i].p.n_tokens, c->cs[i], c->gs[i], k);
        }
}

/* Decodes frames[0..n) on both sides into fp16; returns the common error (0 = identical output). */
static int64_t decode_both(const char *what, tcase *c, size_t n0, size_t n, uint8_t *const *fr, const size_t *fs)
{
    uint32_t H = c->fp.n_kv_heads, hd = c->fp.head_dim;
    int64_t rc_cpu = 0;
    uint8_t **hc = calloc(n, sizeof *hc);
    e8cu_item *items = calloc(n, sizeof *items);
    for (size_t i = 0; i < n; i++) {
        uint32_t N = c->items[n0 + i].p.n_tokens;
        size_t bytes = (size_t)H * N * hd * 2;
        hc[i] = malloc(bytes);
        e8c_tensor t = e8c_tensor_contiguous(hc[i], E8C_DTYPE_F16, N, hd);
        int64_t r = e8c_frame_decode_into(c->cpu, fr[i], fs[i], NULL, &t, N);
        if (r && !rc_cpu) rc_cpu = r;
        void *d;
        CK(cudaMalloc(&d, bytes));
        CK(cudaMemset(d, 0xa5, bytes));
        items[i].p = c->items[n0 + i].p;
        items[i].t = e8c_tensor_contiguous(d, E8C_DTYPE_F16, N, hd);
    }
    int64_t rc_gpu = e8cu_decode_async(c->gpu, n, items, (const void *const *)fr, fs, NULL, c->meta, c->h_q, c->d_q,
                                       c->qb, NULL, 0);
    CK(cudaDeviceSynchronize());
    if (rc_gpu != rc_cpu)
        fail_msg("%s: CPU decoder says %s, GPU %s (%s)", what, e8c_error_name(rc_cpu), e8cu_error_name(rc_gpu),
                 e8cu_ctx_last_error(c->gpu));
    for (size_t i = 0; i < n; i++) {
        size_t bytes = (size_t)H * c->items[n0 + i].p.n_tokens * hd * 2;
        if (!rc_cpu) {
            uint8_t *hg = malloc(bytes);
            CK(cudaMemcpy(hg, items[i].t.data, bytes, cudaMemcpyDeviceToHost));
            if (memcmp(hg, hc[i], bytes)) fail_msg("%s: item %zu decodes differently", what, n0 + i);
            free(hg);
        }
        cudaFree(items[i].t.data);
        free(hc[i]);
    }
    free(hc);
    free(items);
    return rc_cpu;
}

/* A fingerprint with fine lattice steps (coordinates beyond 127: escapes). */
static void fine_fp(e8c_fingerprint *fp, uint32_t H, uint32_t hd, uint32_t decor)
{
    e8t_fingerprint(fp, 4, H, hd, E8C_ROPE_LLAMA3, 0);
    fp->config.k_step = 1.0f / 64; /* keys: escapes (coordinates spread over ~±256) */
    fp->config.decorrelation = decor;
    fp->config.protect_last = 1;  /* layer 3: method 0 */
    fp->config.sink_tokens = 4;   /* the 3-token frame at position 0: Q = 0 */
    fp->src_dtype = E8C_DTYPE_F16;
}

static void test_escapes_and_lanes(void **state)
{
    (void)state;
    for (uint32_t decor = 0; decor <= 3; decor++) {
        e8c_fingerprint fp;
        fine_fp(&fp, quick ? 2 : 8, 128, decor);
        uint32_t N = quick ? 96 : 256;
        e8c_frame_params ps[5] = {
            {.layer = 0, .kind = 0, .n_tokens = N, .first_pos = 0, .seq_len = 4096},
            {.layer = 1, .kind = 1, .n_tokens = N, .first_pos = N, .seq_len = 4096},
            {.layer = 2, .kind = 0, .n_tokens = 3, .first_pos = 0},
            {.layer = 3, .kind = 1, .n_tokens = 40, .first_pos = 100},
            {.layer = 1, .kind = 0, .n_tokens = 17, .first_pos = 9},
        };
        tcase c;
        tcase_make(&c, &fp, E8C_DTYPE_F16, 5, ps, 100 + decor, 0);
        char what[64];
        snprintf(what, sizeof what, "fine steps, decorrelation %u", decor);
        same_frames(what, &c);
        /* the case does what it claims: escapes (keys), coding 3 with 32 lanes (values, not QUICK) */
        const uint8_t *f0 = c.cf[0], *f1 = c.cf[1];
        if (get32(f0 + 52 + 13 * 5 + 1) == 0) fail_msg("%s: no escapes in frame 0", what);
        if (!quick && (f1[52 + 13 * 3] != 3 || f1[160 + get32(f1 + 52 + 5) + get32(f1 + 52 + 13 + 5) +
                                                    get32(f1 + 52 + 26 + 5)] != 32))
            fail_msg("%s: coords stream of frame 1 is not coding 3 with 32 lanes", what);
        assert_int_equal(decode_both(what, &c, 0, c.n, c.gf, c.gs), 0);
        tcase_free(&c);
    }
}

static void test_outliers(void **state)
{
    (void)state;
    e8c_fingerprint fp;
    e8t_fingerprint(&fp, 4, 4, 96, E8C_ROPE_DEFAULT, 1);
    fp.src_dtype = E8C_DTYPE_F32;
    fp.config.recent_tokens = 8;
    e8c_frame_params ps[2] = {{.layer = 1, .kind = 0, .n_tokens = 200, .first_pos = 50, .seq_len = 250},
                              {.layer = 2, .kind = 1, .n_tokens = 200, .first_pos = 50, .seq_len = 250}};
    tcase c;
    tcase_make(&c, &fp, E8C_DTYPE_F32, 2, ps, 5, 1e18f); /* < 2^64 */
    same_frames("fp32 outliers", &c);
    assert_int_equal(decode_both("fp32 outliers", &c, 0, c.n, c.gf, c.gs), 0);
    tcase_free(&c);
}

/* e8cu_pack_frames: the same frames, back to back, offsets right; too small a buffer says so. */
static void test_pack_frames(void **state)
{
    (void)state;
    e8c_fingerprint fp;
    fine_fp(&fp, 2, 64, 0);
    e8c_frame_params ps[4] = {{.layer = 0, .kind = 0, .n_tokens = 64}, {.layer = 0, .kind = 1, .n_tokens = 64},
                              {.layer = 3, .kind = 0, .n_tokens = 30, .first_pos = 64},
                              {.layer = 2, .kind = 1, .n_tokens = 2, .first_pos = 0}};
    tcase c;
    tcase_make(&c, &fp, E8C_DTYPE_BF16, 4, ps, 9, 0);
    same_frames("pack_frames setup", &c);
    size_t total = 0, sizes[4];
    uint64_t offs[4];
    assert_int_equal(e8cu_quantize_async(c.gpu, 4, c.items, c.meta, c.d_q, c.qb, NULL, 0), 0);
    int64_t r = e8cu_pack_frames(c.gpu, 4, c.items, c.meta, c.d_q, c.qb, c.h_q, 40, offs, sizes, &total, 0);
    assert_int_equal(r, E8C_ERR_DST_SIZE);
    size_t want = c.cs[0] + c.cs[1] + c.cs[2] + c.cs[3];
    assert_int_equal(total, want);
    assert_int_equal(e8cu_quantize_async(c.gpu, 4, c.items, c.meta, c.d_q, c.qb, NULL, 0), 0);
    r = e8cu_pack_frames(c.gpu, 4, c.items, c.meta, c.d_q, c.qb, c.h_q, c.qb, offs, sizes, &total, 0);
    if (r) fail_msg("e8cu_pack_frames: %s: %s", e8cu_error_name(r), e8cu_ctx_last_error(c.gpu));
    assert_int_equal(total, want);
    for (size_t i = 0, o = 0; i < 4; i++) {
        assert_int_equal(offs[i], o);
        assert_int_equal(sizes[i], c.cs[i]);
        assert_memory_equal((uint8_t *)c.h_q + o, c.cf[i], c.cs[i]);
        o += c.cs[i];
    }
    tcase_free(&c);
}

/* Damaged stream bytes with valid CRCs: both decoders agree (same error, or same output). */
static void test_damaged_frames(void **state)
{
    (void)state;
    e8c_fingerprint fp;
    fine_fp(&fp, 2, 64, 0);
    e8c_frame_params ps[3] = {{.layer = 0, .kind = 0, .n_tokens = 48, .first_pos = 0, .seq_len = 100},
                              {.layer = 1, .kind = 1, .n_tokens = 48, .first_pos = 48, .seq_len = 100},
                              {.layer = 3, .kind = 1, .n_tokens = 8, .first_pos = 8}};
    tcase c;
    tcase_make(&c, &fp, E8C_DTYPE_F16, 3, ps, 21, 0);
    same_frames("damage setup", &c);
    e8t_rng rng = {77};
    int trials = quick ? 20 : 300, agreed_err = 0;
    for (int t = 0; t < trials; t++) {
        size_t i = (size_t)(e8t_u64(&rng) % 3), fs = c.gs[i];
        uint8_t *fr = malloc(fs);
        memcpy(fr, c.gf[i], fs);
        uint32_t ns = fr[6] ? 8 : 1, hdr = 52 + 13 * ns + 4;
        int flips = 1 + (int)(e8t_u64(&rng) % 3);
        for (int k = 0; k < flips && fs > hdr; k++) {
            size_t at = hdr + (size_t)(e8t_u64(&rng) % (fs - hdr));
            fr[at] ^= (uint8_t)(1u << (e8t_u64(&rng) % 8));
        }
        size_t o = hdr; /* recompute the CRCs: only the decoders' own checks remain */
        for (uint32_t s = 0; s < ns; s++) {
            uint32_t sl = get32(fr + 52 + 13 * s + 5);
            put32(fr + 52 + 13 * s + 9, crc32c(fr + o, sl));
            o += sl;
        }
        put32(fr + hdr - 4, crc32c(fr, hdr - 4));
        char what[64];
        snprintf(what, sizeof what, "damage trial %d (item %zu)", t, i);
        size_t one = fs;
        if (decode_both(what, &c, i, 1, &fr, &one)) agreed_err++;
        free(fr);
    }
    print_message("damaged frames: %d of %d refused by both decoders, the rest decoded identically\n", agreed_err,
                  trials);
    tcase_free(&c);
}

int main(void)
{
    quick = e8cu_test_start("test_e8cu_entropy");
    if (quick < 0) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escapes_and_lanes),
        cmocka_unit_test(test_outliers),
        cmocka_unit_test(test_pack_frames),
        cmocka_unit_test(test_damaged_frames),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
