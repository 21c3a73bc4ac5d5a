/*
 * test_e8cu_codec.c: the CUDA codec against the CPU reference (needs an NVIDIA GPU; run by
 * `make test-gpu`, compiled by `make`).
 *
 * Every check is byte for byte: frames from e8cu_quantize_async + e8cu_pack equal
 * e8c_frame_encode's (reference backend), and tensors from e8cu_decode_async equal
 * e8c_frame_decode's, bit for bit, in every output dtype. Covered: the real SmolLM2 KV
 * fixture (tests/data/smollm2_kv), random shapes over every input dtype, head_dims (powers of
 * two and not), every RoPE variant and layout, partial rotary, positions near 4096, 8192 and
 * 131072, sinks / recent window / protected layers, strided views, new positions on decode;
 * input errors (NaN, out of range, bad layout) reported as the CPU path reports them; and the
 * stream/event contract with a producer kernel that writes the KV late (on another stream, or
 * on the quantize stream itself).
 * GPU_QUICK=1 runs a reduced set (for compute-sanitizer).
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
#include "tests/codec/e8c_testgen.h"

int e8cu_test_late_copy(void *dst, const void *src, size_t bytes, unsigned long long delay_ns,
                        cudaStream_t stream);

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) fail_msg("%s: %s", #x, cudaGetErrorString(e_)); } while (0)

static int quick;

typedef struct {
    e8c_frame_params p;
    int view; /* 0: [heads][tokens][dim]; 1: [tokens][heads][dim] */
} case_item;

typedef struct {
    size_t n;
    const e8c_fingerprint *fp;
    e8c_dtype in;
    /* host inputs and device copies */
    void **h_in, **d_in;
    size_t *in_bytes;
    e8cu_item *items;
} batch;

/* fp16 bits to fp32, exactly (fp16 fixture files; never inf/NaN there). */
static float h2f(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
    float v;
    if (e == 0) {
        v = (float)m * 0x1p-24f;
        return sign ? -v : v;
    }
    uint32_t u = sign | ((e + 112u) << 23) | (m << 13);
    memcpy(&v, &u, 4);
    return v;
}

static size_t dsz(e8c_dtype d) { return e8c_dtype_size(d); }

static e8c_tensor tensor_for(void *data, e8c_dtype dt, uint32_t H, uint32_t N, uint32_t hd, int view)
{
    e8c_tensor t = {data, dt, (int64_t)N * hd, hd, 1};
    if (view) { t.stride_head = hd; t.stride_token = (int64_t)H * hd; }
    return t;
}

/* Host data from floats f[H][N][hd] into the case's layout and dtype. */
static void *make_input(const float *f, e8c_dtype dt, uint32_t H, uint32_t N, uint32_t hd, int view)
{
    size_t cnt = (size_t)H * N * hd;
    float *g = malloc(cnt * sizeof(float));
    for (uint32_t h = 0; h < H; h++)
        for (uint32_t t = 0; t < N; t++)
            for (uint32_t j = 0; j < hd; j++) {
                size_t src = ((size_t)h * N + t) * hd + j;
                size_t dst = view ? ((size_t)t * H + h) * hd + j : src;
                g[dst] = f[src];
            }
    void *out = malloc(cnt * dsz(dt));
    e8t_convert(g, out, cnt, dt);
    free(g);
    return out;
}

static void batch_free(batch *b)
{
    for (size_t i = 0; i < b->n; i++) {
        free(b->h_in[i]);
        cudaFree(b->d_in[i]);
    }
    free(b->h_in); free(b->d_in); free(b->in_bytes); free(b->items);
}

/* Builds a batch from float data per item (NULL: random KV-like data). */
static void batch_make(batch *b, const e8c_fingerprint *fp, e8c_dtype in, size_t n, const case_item *ci,
                       float *const *data, e8t_rng *rng)
{
    uint32_t H = fp->n_kv_heads, hd = fp->head_dim;
    memset(b, 0, sizeof *b);
    b->n = n; b->fp = fp; b->in = in;
    b->h_in = calloc(n, sizeof(void *));
    b->d_in = calloc(n, sizeof(void *));
    b->in_bytes = calloc(n, sizeof(size_t));
    b->items = calloc(n, sizeof(e8cu_item));
    for (size_t i = 0; i < n; i++) {
        uint32_t N = ci[i].p.n_tokens;
        size_t cnt = (size_t)H * N * hd;
        float *f = data ? data[i] : malloc(cnt * sizeof(float));
        if (!data) e8t_kv(rng, f, H, N, hd);
        b->h_in[i] = make_input(f, in, H, N, hd, ci[i].view);
        if (!data) free(f);
        b->in_bytes[i] = cnt * dsz(in);
        CK(cudaMalloc(&b->d_in[i], b->in_bytes[i]));
        CK(cudaMemcpy(b->d_in[i], b->h_in[i], b->in_bytes[i], cudaMemcpyHostToDevice));
        b->items[i].p = ci[i].p;
        b->items[i].t = tensor_for(b->d_in[i], in, H, N, hd, ci[i].view);
    }
    /* a cudaMemcpy from pageable memory may return before its DMA is done, and the codec's
     * (non-blocking) streams do not wait for the legacy stream */
    CK(cudaDeviceSynchronize());
}

/* CPU reference frames. */
static void cpu_frames(e8c_ctx *cpu, const batch *b, uint8_t **fr, size_t *fs, int64_t *rc)
{
    uint32_t H = b->fp->n_kv_heads, hd = b->fp->head_dim;
    for (size_t i = 0; i < b->n; i++) {
        const e8cu_item *it = &b->items[i];
        int64_t cap = e8c_frame_max_size(cpu, it->p.n_tokens);
        assert_true(cap > 0);
        fr[i] = malloc((size_t)cap);
        e8c_tensor t = tensor_for(b->h_in[i], b->in, H, it->p.n_tokens, hd,
                                  it->t.stride_token != (int64_t)hd);
        int64_t r = e8c_frame_encode(cpu, &it->p, &t, fr[i], (size_t)cap);
        rc[i] = r;
        fs[i] = r > 0 ? (size_t)r : 0;
    }
}

typedef struct {
    e8cu_ctx *gpu;
    void *d_q, *h_q;
    size_t qbytes;
    e8cu_qmeta *meta;
    uint8_t **fr;
    size_t *fs, *caps;
} gpu_out;

static int64_t gpu_frames(const batch *b, gpu_out *g, cudaStream_t st, cudaEvent_t ev)
{
    int64_t e;
    g->gpu = e8cu_ctx_create(b->fp, quick ? 4 : 0, &e);
    assert_non_null(g->gpu);
    assert_int_equal(e8cu_qbatch_size(g->gpu, b->n, b->items, &g->qbytes), 0);
    CK(cudaMalloc(&g->d_q, g->qbytes));
    CK(cudaMallocHost(&g->h_q, g->qbytes));
    g->meta = calloc(b->n, sizeof *g->meta);
    g->fr = calloc(b->n, sizeof *g->fr);
    g->fs = calloc(b->n, sizeof *g->fs);
    g->caps = calloc(b->n, sizeof *g->caps);
    e8c_ctx *cpu = e8c_ctx_create(b->fp, NULL);
    for (size_t i = 0; i < b->n; i++) {
        g->caps[i] = (size_t)e8c_frame_max_size(cpu, b->items[i].p.n_tokens);
        g->fr[i] = malloc(g->caps[i]);
    }
    e8c_ctx_free(cpu);
    e = e8cu_quantize_async(g->gpu, b->n, b->items, g->meta, g->d_q, g->qbytes, ev, st);
    if (e) return e;
    return e8cu_pack(g->gpu, b->n, b->items, g->meta, g->d_q, g->h_q, g->qbytes, (void *const *)g->fr, g->caps,
                     g->fs, st);
}

static void gpu_out_free(gpu_out *g, size_t n)
{
    for (size_t i = 0; i < n && g->fr; i++) free(g->fr[i]);
    free(g->fr); free(g->fs); free(g->caps); free(g->meta);
    cudaFree(g->d_q);
    cudaFreeHost(g->h_q);
    e8cu_ctx_free(g->gpu);
}

static void compare_frames(const char *what, const batch *b, uint8_t **cf, const size_t *cs, const gpu_out *g)
{
    const char *dump = getenv("E8CU_TEST_DUMP"); /* a directory: every frame of a failing batch */
    for (size_t i = 0; dump && i < b->n; i++)
        if (cs[i] != g->fs[i] || memcmp(cf[i], g->fr[i], cs[i]) != 0) {
            char path[512];
            snprintf(path, sizeof path, "%s/frames_%zu", dump, b->n);
            FILE *fh = fopen(path, "wb");
            for (size_t k = 0; fh && k < b->n; k++) {
                uint64_t sz[2] = {cs[k], g->fs[k]};
                fwrite(sz, 8, 2, fh);
                fwrite(cf[k], 1, cs[k], fh);
                fwrite(g->fr[k], 1, g->fs[k], fh);
            }
            if (fh) fclose(fh);
            break;
        }
    for (size_t i = 0; i < b->n; i++) {
        if (cs[i] != g->fs[i] || memcmp(cf[i], g->fr[i], cs[i]) != 0) {
            size_t k = 0;
            while (k < cs[i] && k < g->fs[i] && cf[i][k] == g->fr[i][k]) k++;
            fail_msg("%s: item %zu (layer %u kind %u, %u tokens at %u): frame differs: CPU %zu bytes, GPU %zu, "
                     "first difference at byte %zu", what, i, b->items[i].p.layer, b->items[i].p.kind,
                     b->items[i].p.n_tokens, b->items[i].p.first_pos, cs[i], g->fs[i], k);
        }
    }
}

/* Decodes the frames on the GPU and on the CPU into out dtype; compares bits. */
static void compare_decode(const char *what, const batch *b, gpu_out *g, e8c_dtype out, const e8c_decode_params *dp,
                           cudaStream_t st)
{
    uint32_t H = b->fp->n_kv_heads, hd = b->fp->head_dim;
    e8c_ctx *cpu = e8c_ctx_create(b->fp, NULL);
    e8c_ctx_set_backend(cpu, E8C_BACKEND_REF);
    e8cu_item *items = calloc(b->n, sizeof *items);
    void **d_out = calloc(b->n, sizeof(void *));
    for (size_t i = 0; i < b->n; i++) {
        uint32_t N = b->items[i].p.n_tokens;
        size_t bytes = (size_t)H * N * hd * dsz(out);
        CK(cudaMalloc(&d_out[i], bytes));
        CK(cudaMemset(d_out[i], 0xa5, bytes)); /* poison: every element must be written */
        items[i].p = b->items[i].p;
        items[i].t = tensor_for(d_out[i], out, H, N, hd, 0);
    }
    CK(cudaDeviceSynchronize()); /* the poison is in place before the decode (stream st) starts */
    int64_t r = e8cu_decode_async(g->gpu, b->n, items, (const void *const *)g->fr, g->fs, dp, g->meta, g->h_q,
                                  g->d_q, g->qbytes, NULL, st);
    if (r) fail_msg("%s: e8cu_decode_async: %s: %s", what, e8cu_error_name(r), e8cu_ctx_last_error(g->gpu));
    CK(cudaStreamSynchronize(st));
    for (size_t i = 0; i < b->n; i++) {
        uint32_t N = b->items[i].p.n_tokens;
        size_t bytes = (size_t)H * N * hd * dsz(out);
        uint8_t *hg = malloc(bytes), *hc = malloc(bytes);
        CK(cudaMemcpy(hg, d_out[i], bytes, cudaMemcpyDeviceToHost));
        e8c_tensor t = tensor_for(hc, out, H, N, hd, 0);
        r = e8c_frame_decode(cpu, g->fr[i], g->fs[i], dp, &t);
        if (r) fail_msg("%s: CPU decode of item %zu: %s", what, i, e8c_error_name(r));
        if (memcmp(hg, hc, bytes) != 0) {
            size_t k = 0;
            while (hg[k] == hc[k]) k++;
            fail_msg("%s: item %zu decodes differently (dtype %d): first difference at element %zu", what, i,
                     (int)out, k / dsz(out));
        }
        free(hg); free(hc);
        cudaFree(d_out[i]);
    }
    free(d_out); free(items);
    e8c_ctx_free(cpu);
}

/* Encode on both, compare frames; decode on both in every dtype, compare. */
static void check_case(const char *what, const e8c_fingerprint *fp, e8c_dtype in, size_t n, const case_item *ci,
                       float *const *data, uint64_t seed, const e8c_decode_params *dp)
{
    e8t_rng rng = {seed};
    batch b;
    batch_make(&b, fp, in, n, ci, data, &rng);
    e8c_ctx *cpu = e8c_ctx_create(fp, NULL);
    assert_non_null(cpu);
    e8c_ctx_set_backend(cpu, E8C_BACKEND_REF);
    uint8_t **cf = calloc(n, sizeof *cf);
    size_t *cs = calloc(n, sizeof *cs);
    int64_t *crc = calloc(n, sizeof *crc);
    cpu_frames(cpu, &b, cf, cs, crc);
    for (size_t i = 0; i < n; i++)
        if (crc[i] < 0) fail_msg("%s: CPU encode of item %zu failed: %s", what, i, e8c_error_name(crc[i]));
    cudaStream_t st;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    gpu_out g = {0};
    int64_t r = gpu_frames(&b, &g, st, NULL);
    if (r) fail_msg("%s: GPU encode: %s: %s", what, e8cu_error_name(r), e8cu_ctx_last_error(g.gpu));
    compare_frames(what, &b, cf, cs, &g);
    e8c_dtype outs[3] = {E8C_DTYPE_F16, E8C_DTYPE_BF16, E8C_DTYPE_F32};
    for (int k = 0; k < 3; k++) {
        if (quick && outs[k] != in) continue;
        compare_decode(what, &b, &g, outs[k], dp, st);
    }
    gpu_out_free(&g, n);
    CK(cudaStreamDestroy(st));
    for (size_t i = 0; i < n; i++) free(cf[i]);
    free(cf); free(cs); free(crc);
    e8c_ctx_free(cpu);
    batch_free(&b);
}

/* ------------------------------------------------------------------ tests */

static void test_fixture(void **state)
{
    (void)state;
    static const int layers[4] = {0, 1, 15, 29};
    const uint32_t H = 3, N = 256, hd = 64;
    e8c_fingerprint fp;
    e8t_fingerprint(&fp, 30, H, hd, E8C_ROPE_DEFAULT, 0);
    strcpy(fp.model_id, "HuggingFaceTB/SmolLM2-135M-Instruct");
    fp.rope.theta = 100000;
    fp.config.protect_first = 1; /* layer 0 stays raw: method 0 covered */
    fp.config.sink_tokens = 4;
    for (int f32 = 1; f32 >= 0; f32--) {
        fp.src_dtype = f32 ? E8C_DTYPE_F32 : E8C_DTYPE_F16;
        float *data[8];
        case_item ci[8];
        for (int l = 0; l < 4; l++)
            for (int kv = 0; kv < 2; kv++) {
                char path[256];
                snprintf(path, sizeof path, "tests/data/smollm2_kv/layer%02d.%c.%s", layers[l], kv ? 'v' : 'k',
                         f32 ? "f32" : "f16");
                FILE *fh = fopen(path, "rb");
                if (!fh) fail_msg("fixture %s missing (run from the repository root)", path);
                size_t cnt = (size_t)H * N * hd, es = f32 ? 4 : 2;
                uint8_t *raw = malloc(cnt * es);
                assert_int_equal(fread(raw, es, cnt, fh), cnt);
                fclose(fh);
                float *x = malloc(cnt * sizeof(float));
                for (size_t i = 0; i < cnt; i++) {
                    if (f32) memcpy(&x[i], raw + 4 * i, 4);
                    else {
                        uint16_t hb;
                        memcpy(&hb, raw + 2 * i, 2);
                        x[i] = h2f(hb);
                    }
                }
                free(raw);
                int k = 2 * l + kv;
                data[k] = x;
                memset(&ci[k], 0, sizeof ci[k]);
                ci[k].p = (e8c_frame_params){.layer = (uint32_t)layers[l], .kind = (uint32_t)kv, .n_tokens = N,
                                             .first_pos = 0, .seq_len = 300};
                ci[k].view = kv; /* V through a [tokens][heads][dim] view */
            }
        fp.config.recent_tokens = f32 ? 0 : 64;
        check_case(f32 ? "fixture f32" : "fixture f16", &fp, f32 ? E8C_DTYPE_F32 : E8C_DTYPE_F16, 8, ci, data, 1, NULL);
        for (int k = 0; k < 8; k++) free(data[k]);
    }
}

static void test_random_shapes(void **state)
{
    (void)state;
    static const uint32_t dims[] = {64, 128, 80, 96, 112, 192, 256, 8, 24, 512};
    static const uint32_t ropes[] = {E8C_ROPE_DEFAULT, E8C_ROPE_LINEAR, E8C_ROPE_DYNAMIC, E8C_ROPE_YARN,
                                     E8C_ROPE_LLAMA3, E8C_ROPE_LONGROPE, E8C_ROPE_NONE};
    static const uint32_t bases[] = {0, 4000, 8150, 131000, 5};
    e8t_rng rng = {42};
    int cases = quick ? 6 : 40;
    for (int c = 0; c < cases; c++) {
        uint32_t hd = dims[c % 10], rt = ropes[(c / 2) % 7];
        int inter = (c / 3) % 2;
        uint32_t H = 1 + (uint32_t)(e8t_u64(&rng) % 4), L = 6;
        e8c_fingerprint fp;
        e8t_fingerprint(&fp, L, H, hd, rt, inter);
        fp.src_dtype = 1 + (uint32_t)(e8t_u64(&rng) % 3);
        if (rt != E8C_ROPE_NONE && c % 4 == 1 && hd >= 16) {
            fp.rope.rotary_dim = hd / 2 + ((hd / 2) % 2); /* partial rotary, not always a multiple of 16 */
            if (rt == E8C_ROPE_LONGROPE) fp.rope.n_longrope = fp.rope.rotary_dim / 2;
        }
        if (rt == E8C_ROPE_LONGROPE)
            for (uint32_t i = fp.rope.n_longrope; i < E8C_MAX_ROPE_FACTORS; i++)
                fp.rope.short_factor[i] = fp.rope.long_factor[i] = 0;
        static const char *presets[] = {"K4V4", "K3V2", "K2V2", "K4V2"};
        e8c_preset_apply(presets[c % 4], &fp.config);
        fp.config.decorrelation = (uint32_t)(c % 4);
        fp.config.sink_tokens = c % 3 == 0 ? 4 : 0;
        fp.config.recent_tokens = c % 5 == 0 ? 16 : 0;
        fp.config.protect_last = c % 6 == 0 ? 1 : 0;
        fp.config.hadamard_seed = e8t_u64(&rng);
        char msg[200];
        if (e8c_fingerprint_validate(&fp, msg, sizeof msg)) fail_msg("case %d: fingerprint: %s", c, msg);
        size_t n = 1 + (size_t)(e8t_u64(&rng) % (quick ? 3 : 6));
        case_item ci[8];
        for (size_t i = 0; i < n; i++) {
            memset(&ci[i], 0, sizeof ci[i]);
            uint32_t N = 1 + (uint32_t)(e8t_u64(&rng) % (quick ? 40 : 300));
            uint32_t pos = bases[(c + i) % 5] + (uint32_t)(e8t_u64(&rng) % 200);
            ci[i].p = (e8c_frame_params){.layer = (uint32_t)(e8t_u64(&rng) % L), .kind = (uint32_t)(i % 2),
                                         .n_tokens = N, .first_pos = pos,
                                         .seq_len = pos + N + (uint32_t)(e8t_u64(&rng) % 20)};
            if (rt == E8C_ROPE_DYNAMIC || rt == E8C_ROPE_LONGROPE) ci[i].p.rope_seq_len = c % 2 ? 5000 : 0;
            ci[i].view = (int)(e8t_u64(&rng) % 2);
        }
        e8c_dtype in = (e8c_dtype)(1 + c % 3);
        char what[96];
        snprintf(what, sizeof what, "case %d (head_dim %u, rope %u%s, rotary %u, in dtype %d)", c, hd, rt,
                 inter ? " interleaved" : "", fp.rope.rotary_dim, (int)in);
        e8c_decode_params dp = {1, 77 + (uint32_t)c, 0};
        check_case(what, &fp, in, n, ci, NULL, e8t_u64(&rng), c % 3 == 2 ? &dp : NULL);
    }
}

/* Many small frames of different sizes in one call: more than one launch (192 frames each),
 * items found by binary search, positions far apart (separate RoPE tables) and, for dynamic
 * NTK, different rope_seq_len per frame (separate table keys). */
static void many_items(int r0, int r1, const char *packer)
{
    static const uint32_t ropes[2] = {E8C_ROPE_DEFAULT, E8C_ROPE_DYNAMIC};
    for (int r = r0; r < r1; r++) {
        e8c_fingerprint fp;
        e8t_fingerprint(&fp, 8, 2, 64, ropes[r], r);
        fp.config.sink_tokens = 3;
        e8t_rng rng = {1234 + (uint64_t)r};
        size_t n = quick ? 200 : 420;
        case_item *ci = calloc(n, sizeof *ci);
        for (size_t i = 0; i < n; i++) {
            uint32_t N = 1 + (uint32_t)(e8t_u64(&rng) % 40);
            uint32_t pos = (i % 7 == 3) ? 1000000000u + (uint32_t)(e8t_u64(&rng) % 1000)
                                        : (uint32_t)(e8t_u64(&rng) % 9000);
            ci[i].p = (e8c_frame_params){.layer = (uint32_t)(i % 8), .kind = (uint32_t)(e8t_u64(&rng) % 2),
                                         .n_tokens = N, .first_pos = pos, .seq_len = pos + N};
            if (ropes[r] == E8C_ROPE_DYNAMIC) ci[i].p.rope_seq_len = i % 3 ? 0 : 6000;
            ci[i].view = (int)(i % 2);
        }
        e8c_decode_params dp = {1, 500, 0};
        char what[96];
        snprintf(what, sizeof what, "many items (%s, %s)", r ? "dynamic NTK, interleaved" : "default RoPE", packer);
        check_case(what, &fp, E8C_DTYPE_F16, n, ci, NULL, 77 + (uint64_t)r, r ? &dp : NULL);
        free(ci);
    }
}

static void test_many_items(void **state)
{
    (void)state;
    many_items(0, 2, "GPU entropy stage");
}

/* The same batch through the host packer and unpacker (E8CU_GPU_ENTROPY=0, read when a context
 * is created): the path of configs other than rans32. */
static void test_many_items_host_packer(void **state)
{
    (void)state;
    const char *was = getenv("E8CU_GPU_ENTROPY");
    char keep[8];
    snprintf(keep, sizeof keep, "%s", was ? was : "");
    setenv("E8CU_GPU_ENTROPY", "0", 1);
    many_items(0, 1, "host packer");
    if (was) setenv("E8CU_GPU_ENTROPY", keep, 1);
    else unsetenv("E8CU_GPU_ENTROPY");
}

/* A frame of another model is refused with E8C_ERR_FINGERPRINT, as by the CPU decoder. */
static void test_foreign_frame(void **state)
{
    (void)state;
    e8c_fingerprint fa, fb;
    e8t_fingerprint(&fa, 4, 2, 64, E8C_ROPE_DEFAULT, 0);
    fb = fa;
    fb.config.hadamard_seed ^= 1;
    const uint32_t H = 2, N = 32, hd = 64;
    float *x = malloc(sizeof(float) * H * N * hd);
    e8t_rng rng = {5};
    e8t_kv(&rng, x, H, N, hd);
    case_item ci = {{.layer = 0, .kind = 1, .n_tokens = N}, 0};
    batch b;
    batch_make(&b, &fa, E8C_DTYPE_F32, 1, &ci, &x, &rng);
    e8c_ctx *cpu = e8c_ctx_create(&fa, NULL);
    size_t cap = (size_t)e8c_frame_max_size(cpu, N);
    uint8_t *fr = malloc(cap);
    e8c_tensor ht = tensor_for(b.h_in[0], E8C_DTYPE_F32, H, N, hd, 0);
    int64_t fs = e8c_frame_encode(cpu, &b.items[0].p, &ht, fr, cap);
    assert_true(fs > 0);
    int64_t e;
    e8cu_ctx *gpu = e8cu_ctx_create(&fb, 2, &e);
    assert_non_null(gpu);
    size_t qb;
    assert_int_equal(e8cu_qbatch_size(gpu, 1, b.items, &qb), 0);
    void *d_q, *h_q;
    CK(cudaMalloc(&d_q, qb));
    CK(cudaMallocHost(&h_q, qb));
    const void *frames[1] = {fr};
    size_t sizes[1] = {(size_t)fs};
    e8cu_qmeta m;
    assert_int_equal(e8cu_decode_async(gpu, 1, b.items, frames, sizes, NULL, &m, h_q, d_q, qb, NULL, 0),
                     E8C_ERR_FINGERPRINT);
    cudaFree(d_q);
    cudaFreeHost(h_q);
    free(fr);
    e8cu_ctx_free(gpu);
    e8c_ctx_free(cpu);
    batch_free(&b);
    free(x);
}

/* NaN, inf and out-of-range input: the same error as the CPU path; bad layouts refused. */
static void test_errors(void **state)
{
    (void)state;
    e8c_fingerprint fp;
    e8t_fingerprint(&fp, 4, 2, 64, E8C_ROPE_DEFAULT, 0);
    fp.src_dtype = E8C_DTYPE_F16;
    fp.config.sink_tokens = 2;
    const uint32_t H = 2, N = 16, hd = 64;
    float *x = malloc(sizeof(float) * H * N * hd);
    struct { size_t at; float v; int64_t want; } bad[] = {
        {5 * 64 + 3, __builtin_nanf(""), E8C_ERR_NONFINITE},       /* quantized token */
        {1 * 64 + 9, __builtin_inff(), E8C_ERR_NONFINITE},         /* sink (raw) token */
        {9 * 64 + 1, 4e19f, E8C_ERR_RANGE},                        /* > 2^64 */
        {0 * 64 + 2, 70000.0f, E8C_ERR_RANGE},                     /* raw token beyond fp16 */
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        e8t_rng rng = {7};
        e8t_kv(&rng, x, H, N, hd);
        x[bad[k].at] = bad[k].v;
        case_item ci = {{.layer = 1, .kind = 0, .n_tokens = N, .first_pos = 0}, 0};
        batch b;
        batch_make(&b, &fp, E8C_DTYPE_F32, 1, &ci, &x, &rng);
        e8c_ctx *cpu = e8c_ctx_create(&fp, NULL);
        uint8_t *cf[1];
        size_t cs[1];
        int64_t crc[1];
        cpu_frames(cpu, &b, cf, cs, crc);
        assert_int_equal(crc[0], bad[k].want);
        gpu_out g = {0};
        int64_t r = gpu_frames(&b, &g, 0, NULL);
        if (r != bad[k].want) fail_msg("bad input %zu: GPU says %s, CPU %s", k, e8cu_error_name(r), e8c_error_name(crc[0]));
        free(cf[0]);
        gpu_out_free(&g, 1);
        e8c_ctx_free(cpu);
        batch_free(&b);
    }
    /* layouts the kernels refuse */
    e8t_rng rng = {8};
    e8t_kv(&rng, x, H, N, hd);
    case_item ci = {{.layer = 1, .kind = 1, .n_tokens = N}, 0};
    batch b;
    batch_make(&b, &fp, E8C_DTYPE_F32, 1, &ci, &x, &rng);
    int64_t e;
    e8cu_ctx *gpu = e8cu_ctx_create(&fp, 2, &e);
    size_t qb;
    e8cu_item it = b.items[0];
    it.t.stride_dim = 2;
    assert_int_equal(e8cu_qbatch_size(gpu, 1, &it, &qb), E8C_ERR_SHAPE);
    it = b.items[0];
    it.t.data = (char *)it.t.data + 4;
    assert_int_equal(e8cu_qbatch_size(gpu, 1, &it, &qb), E8C_ERR_SHAPE);
    it = b.items[0];
    it.p.layer = 4;
    assert_int_equal(e8cu_qbatch_size(gpu, 1, &it, &qb), E8C_ERR_LAYER_RANGE);
    it = b.items[0];
    it.t.dtype = 9;
    assert_int_equal(e8cu_qbatch_size(gpu, 1, &it, &qb), E8C_ERR_DTYPE);
    /* qbatch too small: refused before anything is enqueued */
    e8cu_qmeta m;
    assert_int_equal(e8cu_qbatch_size(gpu, 1, b.items, &qb), 0);
    void *d_q;
    CK(cudaMalloc(&d_q, qb));
    assert_int_equal(e8cu_quantize_async(gpu, 1, b.items, &m, d_q, 64, NULL, 0), E8C_ERR_DST_SIZE);
    /* a corrupted frame is refused by the decoder with the CPU's error */
    e8c_ctx *cpu = e8c_ctx_create(&fp, NULL);
    size_t cap = (size_t)e8c_frame_max_size(cpu, N);
    uint8_t *fr = malloc(cap);
    e8c_tensor ht = tensor_for(b.h_in[0], E8C_DTYPE_F32, H, N, hd, 0);
    int64_t fs = e8c_frame_encode(cpu, &b.items[0].p, &ht, fr, cap);
    assert_true(fs > 0);
    fr[fs / 2] ^= 0x10;
    void *h_q;
    CK(cudaMallocHost(&h_q, qb));
    const void *frames[1] = {fr};
    size_t sizes[1] = {(size_t)fs};
    assert_int_equal(e8cu_decode_async(gpu, 1, b.items, frames, sizes, NULL, &m, h_q, d_q, qb, NULL, 0),
                     E8C_ERR_CHECKSUM);
    sizes[0] = 20;
    assert_int_equal(e8cu_decode_async(gpu, 1, b.items, frames, sizes, NULL, &m, h_q, d_q, qb, NULL, 0),
                     E8C_ERR_TRUNCATED);
    free(fr);
    cudaFreeHost(h_q);
    cudaFree(d_q);
    e8c_ctx_free(cpu);
    e8cu_ctx_free(gpu);
    batch_free(&b);
    free(x);
}

/* The stream/event contract: the KV is written by a kernel that finishes late, on another
 * stream (quantize waits on its event) or on the quantize stream itself (same_stream: stream
 * order; the quantize call's first kernel must not overlap it, see e8cu_launch_pdl), so the
 * frame is the one of the final data (the buffer held NaN before the producer ran: reading
 * early would give E8C_ERR_NONFINITE or other bytes). first_pos 0: the attention sink is kept
 * raw, so the raw kernel runs first. */
static void event_case(int same_stream, uint32_t first_pos)
{
    e8c_fingerprint fp;
    e8t_fingerprint(&fp, 4, 4, 128, E8C_ROPE_DEFAULT, 0);
    const uint32_t H = 4, N = 512, hd = 128;
    e8t_rng rng = {99};
    case_item ci[2] = {{{.layer = 2, .kind = 0, .n_tokens = N, .first_pos = first_pos}, 0},
                       {{.layer = 2, .kind = 1, .n_tokens = N, .first_pos = first_pos}, 0}};
    batch b;
    batch_make(&b, &fp, E8C_DTYPE_F16, 2, ci, NULL, &rng);
    e8c_ctx *cpu = e8c_ctx_create(&fp, NULL);
    uint8_t *cf[2];
    size_t cs[2];
    int64_t crc[2];
    cpu_frames(cpu, &b, cf, cs, crc);
    /* the real data moves to a staging buffer; the item buffers are poisoned with NaN */
    void *stage[2];
    for (int i = 0; i < 2; i++) {
        CK(cudaMalloc(&stage[i], b.in_bytes[i]));
        CK(cudaMemcpy(stage[i], b.d_in[i], b.in_bytes[i], cudaMemcpyDeviceToDevice));
        CK(cudaMemset(b.d_in[i], 0xff, b.in_bytes[i])); /* fp16 0xffff is NaN */
    }
    CK(cudaDeviceSynchronize()); /* the poison is in place before the late copy (stream prod) */
    (void)H;
    cudaStream_t prod, cons;
    cudaEvent_t ev;
    CK(cudaStreamCreateWithFlags(&prod, cudaStreamNonBlocking));
    CK(cudaStreamCreateWithFlags(&cons, cudaStreamNonBlocking));
    CK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
    for (int i = 0; i < 2; i++)
        assert_int_equal(e8cu_test_late_copy(b.d_in[i], stage[i], b.in_bytes[i], 50ull * 1000 * 1000,
                                             same_stream ? cons : prod), 0);
    CK(cudaEventRecord(ev, prod));
    gpu_out g = {0};
    int64_t r = gpu_frames(&b, &g, cons, same_stream ? NULL : ev);
    const char *what = same_stream ? "producer on the same stream" : "event contract";
    if (r) fail_msg("%s: %s: %s", what, e8cu_error_name(r), e8cu_ctx_last_error(g.gpu));
    compare_frames(what, &b, cf, cs, &g);
    CK(cudaStreamSynchronize(prod));
    gpu_out_free(&g, 2);
    for (int i = 0; i < 2; i++) { cudaFree(stage[i]); free(cf[i]); }
    cudaEventDestroy(ev);
    cudaStreamDestroy(prod);
    cudaStreamDestroy(cons);
    e8c_ctx_free(cpu);
    batch_free(&b);
    (void)hd;
}

static void test_event_contract(void **state)
{
    (void)state;
    event_case(0, 1000);
}

static void test_same_stream_producer(void **state)
{
    (void)state;
    event_case(1, 1000);
    event_case(1, 0);
}

int main(void)
{
    quick = e8cu_test_start("test_e8cu_codec");
    if (quick < 0) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixture),
        cmocka_unit_test(test_random_shapes),
        cmocka_unit_test(test_many_items),
        cmocka_unit_test(test_many_items_host_packer),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_foreign_frame),
        cmocka_unit_test(test_event_contract),
        cmocka_unit_test(test_same_stream_producer),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
