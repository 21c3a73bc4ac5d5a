/*
 * test_e8cu_groups.c: the GPU entropy stage's grouped pipeline (E8CU_GROUP_ELEMS: a batch cut
 * into groups coded on two kernel streams, records and frames copied per group, headers on the
 * host while later groups run) against the CPU library, repeated, because its failures were
 * intermittent (needs an NVIDIA GPU; run by `make test-gpu` / codec/cuda/gpu-run.sh test).
 *
 * A batch of many small frames of different sizes (1-40 tokens, sinks, a protected layer, keys
 * with escapes that overflow a group's output estimate) is encoded with small groups (the
 * maximum of 8 groups, checked), mid-sized groups and one group, several times on the same
 * context: every frame of e8cu_pack and of e8cu_pack_frames (offsets too) must equal
 * e8c_frame_encode's, and every tensor of e8cu_decode_async must equal the CPU decoder's bits.
 * GPU_QUICK=1 runs a reduced set (for compute-sanitizer). E8CU_STREAMS=1 in the environment
 * runs the same with one kernel stream.
 */
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
#include "codec/cuda/e8cu_entropy.h"
#include "tests/codec/e8c_testgen.h"

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) fail_msg("%s: %s", #x, cudaGetErrorString(e_)); } while (0)

static int quick;

typedef struct {
    e8c_fingerprint fp;
    size_t n, el;
    e8cu_item *items;        /* device inputs, contiguous [H][N][hd] fp16 */
    uint8_t **cf;            /* CPU frames */
    size_t *cs, *caps;
    uint8_t **cdec;          /* CPU decodes (fp16) */
    size_t *dec_bytes;
} gbatch;

static void gbatch_make(gbatch *b, const e8c_fingerprint *fp, size_t n, uint64_t seed)
{
    memset(b, 0, sizeof *b);
    b->fp = *fp;
    b->n = n;
    const uint32_t H = fp->n_kv_heads, hd = fp->head_dim;
    e8t_rng rng = {seed};
    e8c_ctx *cpu = e8c_ctx_create(fp, NULL);
    assert_non_null(cpu);
    e8c_ctx_set_backend(cpu, E8C_BACKEND_REF);
    b->items = calloc(n, sizeof *b->items);
    b->cf = calloc(n, sizeof *b->cf);
    b->cs = calloc(n, sizeof *b->cs);
    b->caps = calloc(n, sizeof *b->caps);
    b->cdec = calloc(n, sizeof *b->cdec);
    b->dec_bytes = calloc(n, sizeof *b->dec_bytes);
    for (size_t i = 0; i < n; i++) {
        uint32_t N = 1 + (uint32_t)(e8t_u64(&rng) % 40), pos = (uint32_t)(e8t_u64(&rng) % 9000);
        e8c_frame_params p = {.layer = (uint32_t)(i % fp->n_layers), .kind = (uint32_t)(e8t_u64(&rng) % 2),
                              .n_tokens = N, .first_pos = i % 5 == 0 ? 0 : pos,
                              .seq_len = (i % 5 == 0 ? 0 : pos) + N};
        size_t cnt = (size_t)H * N * hd;
        float *f = malloc(cnt * sizeof(float));
        uint16_t *h = malloc(cnt * 2);
        e8t_kv(&rng, f, H, N, hd);
        e8t_convert(f, h, cnt, E8C_DTYPE_F16);
        free(f);
        void *d;
        CK(cudaMalloc(&d, cnt * 2));
        CK(cudaMemcpy(d, h, cnt * 2, cudaMemcpyHostToDevice));
        b->items[i].p = p;
        b->items[i].t = e8c_tensor_contiguous(d, E8C_DTYPE_F16, N, hd);
        b->el += cnt;
        b->caps[i] = (size_t)e8c_frame_max_size(cpu, N);
        b->cf[i] = malloc(b->caps[i]);
        e8c_tensor ht = e8c_tensor_contiguous(h, E8C_DTYPE_F16, N, hd);
        int64_t r = e8c_frame_encode(cpu, &p, &ht, b->cf[i], b->caps[i]);
        if (r < 0) fail_msg("CPU encode of item %zu: %s: %s", i, e8c_error_name(r), e8c_ctx_last_error(cpu));
        b->cs[i] = (size_t)r;
        b->dec_bytes[i] = cnt * 2;
        b->cdec[i] = malloc(cnt * 2);
        e8c_tensor dt = e8c_tensor_contiguous(b->cdec[i], E8C_DTYPE_F16, N, hd);
        r = e8c_frame_decode(cpu, b->cf[i], b->cs[i], NULL, &dt);
        if (r) fail_msg("CPU decode of item %zu: %s", i, e8c_error_name(r));
        free(h);
    }
    e8c_ctx_free(cpu);
    /* a cudaMemcpy from pageable memory may return before its DMA is done, and the codec's
     * (non-blocking) streams do not wait for the legacy stream */
    CK(cudaDeviceSynchronize());
}

static void gbatch_free(gbatch *b)
{
    for (size_t i = 0; i < b->n; i++) {
        cudaFree(b->items[i].t.data);
        free(b->cf[i]);
        free(b->cdec[i]);
    }
    free(b->items); free(b->cf); free(b->cs); free(b->caps); free(b->cdec); free(b->dec_bytes);
}

static void frame_differs(const char *what, const gbatch *b, size_t i, const uint8_t *g, size_t gs)
{
    size_t k = 0;
    while (k < b->cs[i] && k < gs && b->cf[i][k] == g[k]) k++;
    fail_msg("%s: item %zu (layer %u kind %u, %u tokens): CPU %zu bytes, GPU %zu, first difference at %zu", what, i,
             b->items[i].p.layer, b->items[i].p.kind, b->items[i].p.n_tokens, b->cs[i], gs, k);
}

/* One round on gpu: quantize + e8cu_pack, quantize + e8cu_pack_frames, e8cu_decode_async;
 * every result against the CPU's. */
static void round_check(const char *what, const gbatch *b, e8cu_ctx *gpu, void *d_q, void *h_q, size_t qb,
                        cudaStream_t st)
{
    const size_t n = b->n;
    e8cu_qmeta *meta = calloc(n, sizeof *meta), *dmeta = calloc(n, sizeof *dmeta);
    uint8_t **gf = calloc(n, sizeof *gf);
    size_t *gs = calloc(n, sizeof *gs), *sizes = calloc(n, sizeof *sizes);
    uint64_t *offs = calloc(n, sizeof *offs);
    for (size_t i = 0; i < n; i++) {
        gf[i] = malloc(b->caps[i]);
        memset(gf[i], 0x5a, b->caps[i]);
    }
    int64_t r = e8cu_quantize_async(gpu, n, b->items, meta, d_q, qb, NULL, st);
    if (!r) r = e8cu_pack(gpu, n, b->items, meta, d_q, h_q, qb, (void *const *)gf, b->caps, gs, st);
    if (r) fail_msg("%s: e8cu_pack: %s: %s", what, e8cu_error_name(r), e8cu_ctx_last_error(gpu));
    for (size_t i = 0; i < n; i++)
        if (gs[i] != b->cs[i] || memcmp(gf[i], b->cf[i], b->cs[i])) frame_differs(what, b, i, gf[i], gs[i]);
    /* the frames back to back: the path a chunk's payload takes */
    size_t total = 0;
    r = e8cu_quantize_async(gpu, n, b->items, meta, d_q, qb, NULL, st);
    if (!r) r = e8cu_pack_frames(gpu, n, b->items, meta, d_q, qb, h_q, qb, offs, sizes, &total, st);
    if (r) fail_msg("%s: e8cu_pack_frames: %s: %s", what, e8cu_error_name(r), e8cu_ctx_last_error(gpu));
    for (size_t i = 0, o = 0; i < n; i++) {
        if (offs[i] != o) fail_msg("%s: e8cu_pack_frames: item %zu at %llu, expected %zu", what, i,
                                   (unsigned long long)offs[i], o);
        if (sizes[i] != b->cs[i] || memcmp((uint8_t *)h_q + o, b->cf[i], b->cs[i]))
            frame_differs(what, b, i, (uint8_t *)h_q + o, sizes[i]);
        o += b->cs[i];
        if (i + 1 == n && total != o) fail_msg("%s: e8cu_pack_frames total %zu, expected %zu", what, total, o);
    }
    /* decode the GPU's frames (equal to the CPU's by now) on the GPU */
    e8cu_item *out = calloc(n, sizeof *out);
    for (size_t i = 0; i < n; i++) {
        void *d;
        CK(cudaMalloc(&d, b->dec_bytes[i]));
        CK(cudaMemset(d, 0xa5, b->dec_bytes[i])); /* poison: every element must be written */
        out[i].p = b->items[i].p;
        out[i].t = e8c_tensor_contiguous(d, E8C_DTYPE_F16, b->items[i].p.n_tokens, b->fp.head_dim);
    }
    CK(cudaDeviceSynchronize()); /* the poison is in place before the decode (stream st) starts */
    r = e8cu_decode_async(gpu, n, out, (const void *const *)gf, gs, NULL, dmeta, h_q, d_q, qb, NULL, st);
    if (r) fail_msg("%s: e8cu_decode_async: %s: %s", what, e8cu_error_name(r), e8cu_ctx_last_error(gpu));
    CK(cudaStreamSynchronize(st));
    for (size_t i = 0; i < n; i++) {
        uint8_t *hg = malloc(b->dec_bytes[i]);
        CK(cudaMemcpy(hg, out[i].t.data, b->dec_bytes[i], cudaMemcpyDeviceToHost));
        if (memcmp(hg, b->cdec[i], b->dec_bytes[i])) {
            size_t k = 0;
            while (hg[k] == b->cdec[i][k]) k++;
            fail_msg("%s: item %zu (%u tokens) decodes differently: first difference at element %zu", what, i,
                     b->items[i].p.n_tokens, k / 2);
        }
        free(hg);
        cudaFree(out[i].t.data);
    }
    for (size_t i = 0; i < n; i++) free(gf[i]);
    free(gf); free(gs); free(sizes); free(offs); free(meta); free(dmeta); free(out);
}

/* group_elems 0: E8CU_GROUP_ELEMS unset (the default). */
static void run_groups(const char *name, const gbatch *b, unsigned long group_elems, size_t want_groups, int reps)
{
    char v[32];
    if (group_elems) {
        snprintf(v, sizeof v, "%lu", group_elems);
        setenv("E8CU_GROUP_ELEMS", v, 1);
    } else {
        unsetenv("E8CU_GROUP_ELEMS");
    }
    size_t ng = e8cu_groups(b->el, b->n);
    if (want_groups && ng != want_groups)
        fail_msg("%s: E8CU_GROUP_ELEMS=%lu cuts %zu elements into %zu groups, the test wants %zu", name, group_elems,
                 b->el, ng, want_groups);
    int64_t e;
    e8cu_ctx *gpu = e8cu_ctx_create(&b->fp, quick ? 4 : 0, &e);
    if (!gpu) fail_msg("e8cu_ctx_create: %s", e8cu_error_name(e));
    size_t qb;
    assert_int_equal(e8cu_qbatch_size(gpu, b->n, b->items, &qb), 0);
    void *d_q, *h_q;
    CK(cudaMalloc(&d_q, qb));
    CK(cudaMallocHost(&h_q, qb));
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    for (int rep = 0; rep < reps; rep++) {
        char what[160];
        snprintf(what, sizeof what, "%s, E8CU_GROUP_ELEMS=%lu (%zu groups), round %d of %d", name, group_elems, ng,
                 rep + 1, reps);
        round_check(what, b, gpu, d_q, h_q, qb, st);
    }
    print_message("%s: E8CU_GROUP_ELEMS=%lu: %zu groups, %d rounds of %zu items identical to the CPU\n", name,
                  group_elems, ng, reps, b->n);
    CK(cudaStreamDestroy(st));
    cudaFree(d_q);
    cudaFreeHost(h_q);
    e8cu_ctx_free(gpu);
    unsetenv("E8CU_GROUP_ELEMS");
}

static void groups_case(const char *name, const e8c_fingerprint *fp, uint64_t seed)
{
    gbatch b;
    gbatch_make(&b, fp, quick ? 64 : 420, seed);
    int reps = quick ? 1 : 6;
    /* small groups: the most groups there are (8, E8CU_MAX_GROUPS), a few items each */
    run_groups(name, &b, 3000, 8, reps);
    if (!quick) {
        run_groups(name, &b, 30000, 8, reps);  /* the size of the failing runs */
        run_groups(name, &b, b.el / 3 + 1, 2, reps);             /* 2 groups: one per kernel stream */
        run_groups(name, &b, 0, 0, 2);                           /* the default */
    }
    gbatch_free(&b);
}

static void test_groups_default_steps(void **state)
{
    (void)state;
    e8c_fingerprint fp;
    e8t_fingerprint(&fp, 8, 2, 64, E8C_ROPE_DEFAULT, 0);
    fp.config.sink_tokens = 3;   /* frames of 1-3 tokens at position 0: Q = 0 */
    fp.config.protect_last = 1;  /* layer 7: method 0 */
    fp.src_dtype = E8C_DTYPE_F16;
    groups_case("default steps", &fp, 4242);
}

static void test_groups_escapes(void **state)
{
    (void)state;
    e8c_fingerprint fp;
    e8t_fingerprint(&fp, 8, 2, 64, E8C_ROPE_LLAMA3, 1);
    fp.config.k_step = 1.0f / 64; /* keys: many escapes, more than a group's output estimate */
    fp.config.sink_tokens = 3;
    fp.config.recent_tokens = 5;
    fp.src_dtype = E8C_DTYPE_F16;
    groups_case("escape-heavy keys", &fp, 777);
}

int main(void)
{
    quick = e8cu_test_start("test_e8cu_groups");
    if (quick < 0) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_groups_default_steps),
        cmocka_unit_test(test_groups_escapes),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
