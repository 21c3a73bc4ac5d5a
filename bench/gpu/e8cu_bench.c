/*
 * e8cu_bench.c: throughput of the CUDA codec on an 8B-class KV cache (make bench-gpu).
 *
 * Cache: 32 layers, 8 KV heads, head_dim 128, 32768 tokens, fp16, K and V (4 GiB), cut into
 * frames of 256 tokens (the store's chunk) per layer and K/V: 8192 frames, one batch.
 * Fingerprint: Llama-3-8B's RoPE (llama3 scaling, theta 500000, split-half), preset K3V2,
 * everything else default. Data: KV-like random values (tests/codec e8c_testgen), two
 * different layer patterns alternating (4 GiB of distinct random data would take minutes of
 * host time; the kernels' work does not depend on repetition, and every frame is entropy-coded
 * on its own).
 *
 * Measured in one run, each the median of several repetitions, GB/s = fp16 KV bytes / time:
 *   d2d_copy      cudaMemcpyAsync device-to-device of the whole 4 GiB cache (bytes copied / time)
 *   quant_*       e8cu_quantize_async / e8cu_dequantize_async alone (device time, CUDA events)
 *   e2e_*         encode: quantize + e8cu_pack_frames (entropy coding on the GPU with the default
 *                 config, entropy = rans32; one copy back; headers and CRC32C on host threads) into
 *                 one pinned buffer; e2e_encode_pack_GBps: the same through e8cu_pack (frames copied
 *                 into per-frame buffers); decode: e8cu_decode_async (header and CRC checks on host
 *                 threads, one copy, rans32 decode, un-layout and dequantize on the GPU); wall time
 *   cpu_*         the CPU path (e8c_frame_encode / e8c_frame_decode, AVX2 backend) on all host
 *                 threads, one context each, on a 1/8 subset of the frames; wall time
 * Before timing, a sample of frames is checked byte-identical to the CPU path's.
 * --sweep: the quantization stage again under each tuning knob of codec/cuda (quant_sweep).
 * Writes --out FILE (JSON, keys fixed by issue 8, plus quant_sweep) and prints a table.
 */
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "codec/cuda/e8codec_cuda.h"
#include "tests/codec/e8c_testgen.h"

#define L_ 32
#define H_ 8
#define D_ 128
#define T_ 32768

#define CK(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { \
    fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); exit(1); } } while (0)
#define RC(ctx, x) do { int64_t r_ = (x); if (r_) { \
    fprintf(stderr, "%s:%d %s: %s: %s\n", __FILE__, __LINE__, #x, e8cu_error_name(r_), e8cu_ctx_last_error(ctx)); exit(1); } } while (0)

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmpd(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof *v, cmpd);
    return v[n / 2];
}

typedef struct {
    const e8c_fingerprint *fp;
    size_t n, next;
    pthread_mutex_t mu;
    const e8cu_item *items; /* host tensors */
    uint8_t **frames;
    size_t *sizes, cap;
    int decode;
    uint16_t **outs;
    int failed;
} cpu_job;

static void *cpu_worker(void *p)
{
    cpu_job *J = p;
    e8c_ctx *ctx = e8c_ctx_create(J->fp, NULL);
    e8c_ctx_reserve(ctx, 256);
    for (;;) {
        pthread_mutex_lock(&J->mu);
        size_t i = J->next++;
        pthread_mutex_unlock(&J->mu);
        if (i >= J->n) break;
        int64_t r;
        if (!J->decode) {
            r = e8c_frame_encode(ctx, &J->items[i].p, &J->items[i].t, J->frames[i], J->cap);
            if (r > 0) J->sizes[i] = (size_t)r;
        } else {
            e8c_tensor t = e8c_tensor_contiguous(J->outs[i], E8C_DTYPE_F16, J->items[i].p.n_tokens, D_);
            r = e8c_frame_decode(ctx, J->frames[i], J->sizes[i], NULL, &t);
        }
        if (r < 0) J->failed = 1;
    }
    e8c_ctx_free(ctx);
    return NULL;
}

static double cpu_run(cpu_job *J, int nthreads)
{
    pthread_t th[256];
    J->next = 0;
    J->failed = 0;
    double t0 = now();
    for (int k = 0; k < nthreads; k++) pthread_create(&th[k], NULL, cpu_worker, J);
    for (int k = 0; k < nthreads; k++) pthread_join(th[k], NULL);
    double t = now() - t0;
    if (J->failed) { fprintf(stderr, "CPU path failed\n"); exit(1); }
    return t;
}

/* Device time of one quantize (dir 0) or dequantize (dir 1) of the whole batch: median of reps. */
static double time_quant(e8cu_ctx *gpu, int dir, size_t n, const e8cu_item *items, const e8cu_item *oitems,
                         e8cu_qmeta *meta, void *d_q, size_t qbytes, int reps, cudaStream_t st)
{
    cudaEvent_t e0, e1;
    double *tv = malloc(sizeof(double) * (size_t)(reps + 2));
    float ms;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    for (int r = 0; r < reps + 2; r++) {
        CK(cudaEventRecord(e0, st));
        if (dir == 0) RC(gpu, e8cu_quantize_async(gpu, n, items, meta, d_q, qbytes, NULL, st));
        else RC(gpu, e8cu_dequantize_async(gpu, n, oitems, meta, NULL, d_q, qbytes, NULL, st));
        CK(cudaEventRecord(e1, st));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&ms, e0, e1));
        tv[r] = ms * 1e-3;
    }
    double t = median(tv + 2, reps);
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    free(tv);
    return t;
}

/* Sets (on = 1) or clears the environment of one sweep entry: "NAME=VALUE", several joined
 * by '+', or "default" (nothing set: the default kernels again, for a same-neighbourhood
 * baseline). */
static void sweep_env(const char *spec, int on)
{
    char buf[256];
    snprintf(buf, sizeof buf, "%s", spec);
    if (!strcmp(buf, "default")) return;
    for (char *save = NULL, *kv = strtok_r(buf, "+", &save); kv; kv = strtok_r(NULL, "+", &save)) {
        char *eq = strchr(kv, '=');
        if (!eq) { fprintf(stderr, "sweep: bad entry '%s' (NAME=VALUE[+NAME=VALUE], or default)\n", spec); exit(2); }
        *eq = 0;
        if (on) setenv(kv, eq + 1, 1);
        else unsetenv(kv);
    }
}

/* --sweep: the quantization stage again under each kernel tuning knob of codec/cuda (residency
 * of the fast and general kernels, the general kernels alone, one 8-block per lane, the fast
 * kernel's fp32-capable loads, waves of blocks per launch of the fast quantize kernel, plain
 * launches instead of overlapping ones, launch constants in registers (session 5's kernel)),
 * or the entries of --sweep-knobs (space-separated). Every
 * setting's qbatch and decoded cache must equal the default's byte for byte (the knobs change
 * speed only); enc_only (--sweep-enc-only, for encode-side knobs): the qbatch alone, no decode
 * (quant_decode_GBps 0). Returns [{"env", "quant_encode_GBps", "quant_decode_GBps", "identical"}]. */
static json_t *quant_sweep(e8cu_ctx *gpu, size_t n, const e8cu_item *items, const e8cu_item *oitems,
                           e8cu_qmeta *meta, void *d_q, size_t qbytes, void *d_out, size_t bytes,
                           int reps, cudaStream_t st, const char *only, int enc_only)
{
    static const char *const knobs[] = {
        "E8CU_FAST_Q_MINBLOCKS=2", "E8CU_FAST_Q_MINBLOCKS=3", "E8CU_FAST_Q_MINBLOCKS=4",
        "E8CU_FAST_DQ_MINBLOCKS=2", "E8CU_FAST_DQ_MINBLOCKS=3", "E8CU_FAST_DQ_MINBLOCKS=4",
        "E8CU_FAST=0", "E8CU_NARROW=1", "E8CU_W16=0",
        "E8CU_Q_GRID=1", "E8CU_Q_GRID=4", "E8CU_Q_GRID=16", "E8CU_PDL=0",
        "E8CU_CREGS=0",
    };
    const char *list[64];
    size_t nk = 0;
    char obuf[1024];
    if (only) {
        snprintf(obuf, sizeof obuf, "%s", only);
        for (char *save = NULL, *e = strtok_r(obuf, " ", &save); e && nk < 64; e = strtok_r(NULL, " ", &save)) list[nk++] = e;
    } else {
        for (size_t k = 0; k < sizeof knobs / sizeof knobs[0]; k++) list[nk++] = knobs[k];
    }
    const double gb = (double)bytes / 1e9;
    unsigned char *ref_q = malloc(qbytes), *ref_o = malloc(bytes), *buf = malloc(bytes > qbytes ? bytes : qbytes);
    if (!ref_q || !ref_o || !buf) { fprintf(stderr, "sweep: out of host memory\n"); exit(1); }
    /* both buffers filled with 0xa5 first, here and before each entry: an entry whose kernels
     * left bytes unwritten cannot pass (bytes no kernel writes, if any, read 0xa5 in both) */
    CK(cudaMemset(d_q, 0xa5, qbytes));
    CK(cudaMemset(d_out, 0xa5, bytes));
    RC(gpu, e8cu_quantize_async(gpu, n, items, meta, d_q, qbytes, NULL, st));
    CK(cudaStreamSynchronize(st));
    CK(cudaMemcpy(ref_q, d_q, qbytes, cudaMemcpyDeviceToHost));
    RC(gpu, e8cu_dequantize_async(gpu, n, oitems, meta, NULL, d_q, qbytes, NULL, st));
    CK(cudaStreamSynchronize(st));
    CK(cudaMemcpy(ref_o, d_out, bytes, cudaMemcpyDeviceToHost));
    json_t *arr = json_array();
    printf("%-28s %10s %10s %10s\n", "sweep (env)", "q enc GB/s", "q dec GB/s", "bytes");
    for (size_t k = 0; k < nk; k++) {
        CK(cudaMemset(d_q, 0xa5, qbytes));
        sweep_env(list[k], 1);
        double te = time_quant(gpu, 0, n, items, oitems, meta, d_q, qbytes, reps, st);
        CK(cudaMemcpy(buf, d_q, qbytes, cudaMemcpyDeviceToHost));
        int same = !memcmp(buf, ref_q, qbytes);
        double td = INFINITY;
        if (!enc_only) {
            CK(cudaMemset(d_out, 0xa5, bytes));
            td = time_quant(gpu, 1, n, items, oitems, meta, d_q, qbytes, reps, st);
            CK(cudaMemcpy(buf, d_out, bytes, cudaMemcpyDeviceToHost));
            same = same && !memcmp(buf, ref_o, bytes);
        }
        sweep_env(list[k], 0);
        printf("%-28s %10.1f %10.1f %10s\n", list[k], gb / te, gb / td, same ? "identical" : "DIFFER");
        json_array_append_new(arr, json_pack("{s:s, s:f, s:f, s:b}", "env", list[k], "quant_encode_GBps", gb / te,
                                             "quant_decode_GBps", gb / td, "identical", same));
        if (!same) { fprintf(stderr, "sweep: %s changes the bytes\n", list[k]); exit(1); }
    }
    free(ref_q);
    free(ref_o);
    free(buf);
    return arr;
}

int main(int argc, char **argv)
{
    const char *out = "build/bench/gpu.json";
    int reps = 5, chunk = 256, quant_only = 0, sweep = 0;
    const char *sweep_only = NULL;
    int sweep_enc_only = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--out") && i + 1 < argc) out = argv[++i];
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--chunk") && i + 1 < argc) chunk = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quant-only")) quant_only = 1;
        else if (!strcmp(argv[i], "--sweep")) sweep = 1;
        else if (!strcmp(argv[i], "--sweep-knobs") && i + 1 < argc) { sweep = 1; sweep_only = argv[++i]; }
        else if (!strcmp(argv[i], "--sweep-enc-only")) sweep_enc_only = 1;
        else {
            fprintf(stderr, "usage: e8cu_bench [--out FILE] [--reps N] [--chunk TOKENS] [--quant-only] [--sweep] "
                            "[--sweep-knobs 'NAME=V[+NAME=V] ... | default'] [--sweep-enc-only]\n");
            return 2;
        }
    }
    if (reps < 1 || chunk < 1 || T_ % chunk) { fprintf(stderr, "bad --reps/--chunk\n"); return 2; }
    struct cudaDeviceProp prop;
    CK(cudaGetDeviceProperties(&prop, 0));
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);

    e8c_fingerprint fp;
    e8t_fingerprint(&fp, L_, H_, D_, E8C_ROPE_LLAMA3, 0);
    strcpy(fp.model_id, "bench/llama-3-8b-class");
    fp.src_dtype = E8C_DTYPE_F16;

    /* data: two patterns per kind, [H][T][D] fp16 each */
    const size_t per = (size_t)H_ * T_ * D_, total = per * 2 * L_, bytes = total * 2;
    uint16_t *pat[2][2];
    float *tmp = malloc(per * sizeof(float));
    e8t_rng rng = {20261129};
    for (int v = 0; v < 2; v++)
        for (int k = 0; k < 2; k++) {
            e8t_kv(&rng, tmp, H_, T_, D_);
            pat[v][k] = malloc(per * 2);
            e8t_convert(tmp, pat[v][k], per, E8C_DTYPE_F16);
        }
    free(tmp);
    uint16_t *d_kv, *d_out, *d_copy;
    CK(cudaMalloc((void **)&d_kv, bytes));
    CK(cudaMalloc((void **)&d_out, bytes));
    for (int l = 0; l < L_; l++)
        for (int k = 0; k < 2; k++)
            CK(cudaMemcpy(d_kv + ((size_t)l * 2 + k) * per, pat[l % 2][k], per * 2, cudaMemcpyHostToDevice));

    /* items: chunk c of layer l, kind k: a view into the layer's [H][T][D] tensor */
    const size_t nchunks = T_ / chunk, n = (size_t)L_ * 2 * nchunks;
    e8cu_item *items = calloc(n, sizeof *items), *hitems = calloc(n, sizeof *hitems);
    for (int l = 0; l < L_; l++)
        for (int k = 0; k < 2; k++)
            for (size_t c = 0; c < nchunks; c++) {
                size_t i = ((size_t)l * 2 + k) * nchunks + c;
                e8c_frame_params p = {.layer = (uint32_t)l, .kind = (uint32_t)k, .n_tokens = (uint32_t)chunk,
                                      .first_pos = (uint32_t)(c * chunk), .seq_len = T_};
                items[i].p = hitems[i].p = p;
                items[i].t = (e8c_tensor){d_kv + ((size_t)l * 2 + k) * per + c * chunk * D_, E8C_DTYPE_F16,
                                          (int64_t)T_ * D_, D_, 1};
                hitems[i].t = items[i].t;
                hitems[i].t.data = pat[l % 2][k] + c * chunk * D_;
            }

    int64_t err;
    e8cu_ctx *gpu = e8cu_ctx_create(&fp, 0, &err);
    if (!gpu) { fprintf(stderr, "e8cu_ctx_create: %s\n", e8cu_error_name(err)); return 1; }
    size_t qbytes;
    RC(gpu, e8cu_qbatch_size(gpu, n, items, &qbytes));
    void *d_q, *h_q;
    CK(cudaMalloc(&d_q, qbytes));
    CK(cudaMallocHost(&h_q, qbytes));
    RC(gpu, e8cu_ctx_reserve_positions(gpu, 0, T_, T_));
    e8cu_qmeta *meta = calloc(n, sizeof *meta);
    size_t cap = (size_t)chunk * H_ * D_ * 2, *caps = malloc(n * sizeof *caps), *sizes = calloc(n, sizeof *sizes);
    uint8_t *fbuf = malloc(cap * n), **frames = malloc(n * sizeof *frames);
    for (size_t i = 0; i < n; i++) { frames[i] = fbuf + cap * i; caps[i] = cap; }
    cudaStream_t st;
    cudaEvent_t e0, e1;
    CK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    double *tv = malloc(sizeof(double) * (size_t)(reps + 2));
    float ms;

    /* 1. device-to-device copy */
    CK(cudaMalloc((void **)&d_copy, bytes));
    for (int r = 0; r < reps + 2; r++) {
        CK(cudaEventRecord(e0, st));
        CK(cudaMemcpyAsync(d_copy, d_kv, bytes, cudaMemcpyDeviceToDevice, st));
        CK(cudaEventRecord(e1, st));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&ms, e0, e1));
        tv[r] = ms * 1e-3;
    }
    double t_copy = median(tv + 2, reps);
    CK(cudaFree(d_copy));

    /* correctness sample before timing: frames equal the CPU path's */
    RC(gpu, e8cu_quantize_async(gpu, n, items, meta, d_q, qbytes, NULL, st));
    RC(gpu, e8cu_pack(gpu, n, items, meta, d_q, h_q, qbytes, (void *const *)frames, caps, sizes, st));
    {
        e8c_ctx *cpu = e8c_ctx_create(&fp, NULL);
        uint8_t *fr = malloc(cap);
        int bad = 0;
        for (size_t i = 0; i < n; i += n / 37 + 1) {
            int64_t r = e8c_frame_encode(cpu, &hitems[i].p, &hitems[i].t, fr, cap);
            if (r < 0 || (size_t)r != sizes[i] || memcmp(fr, frames[i], sizes[i])) bad++;
        }
        printf("byte identity, sampled frames vs CPU path: %s\n", bad ? "MISMATCH" : "identical");
        free(fr);
        e8c_ctx_free(cpu);
        if (bad) return 1;
    }
    size_t fbytes = 0;
    for (size_t i = 0; i < n; i++) fbytes += sizes[i];

    /* 2. quantization stage alone */
    for (int r = 0; r < reps + 2; r++) {
        CK(cudaEventRecord(e0, st));
        RC(gpu, e8cu_quantize_async(gpu, n, items, meta, d_q, qbytes, NULL, st));
        CK(cudaEventRecord(e1, st));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&ms, e0, e1));
        tv[r] = ms * 1e-3;
    }
    double t_qenc = median(tv + 2, reps);
    e8cu_item *oitems = malloc(n * sizeof *oitems);
    for (size_t i = 0; i < n; i++) {
        oitems[i] = items[i];
        oitems[i].t.data = d_out + ((uint16_t *)items[i].t.data - d_kv);
    }
    for (int r = 0; r < reps + 2; r++) {
        CK(cudaEventRecord(e0, st));
        RC(gpu, e8cu_dequantize_async(gpu, n, oitems, meta, NULL, d_q, qbytes, NULL, st));
        CK(cudaEventRecord(e1, st));
        CK(cudaEventSynchronize(e1));
        CK(cudaEventElapsedTime(&ms, e0, e1));
        tv[r] = ms * 1e-3;
    }
    double t_qdec = median(tv + 2, reps);
    json_t *jsweep = sweep ? quant_sweep(gpu, n, items, oitems, meta, d_q, qbytes, d_out, bytes, reps, st, sweep_only, sweep_enc_only) : NULL;
    if (quant_only) {
        double gb = (double)bytes / 1e9;
        printf("quant only: d2d %.1f GB/s, quant encode %.1f GB/s (%.0f%%), quant decode %.1f GB/s (%.0f%%)\n",
               gb / t_copy, gb / t_qenc, 100 * t_copy / t_qenc, gb / t_qdec, 100 * t_copy / t_qdec);
        return 0;
    }

    /* 3. end to end */
    int ereps = reps < 3 ? reps : 3;
    for (int r = 0; r < ereps + 1; r++) {
        CK(cudaStreamSynchronize(st));
        double t0 = now();
        RC(gpu, e8cu_quantize_async(gpu, n, items, meta, d_q, qbytes, NULL, st));
        RC(gpu, e8cu_pack(gpu, n, items, meta, d_q, h_q, qbytes, (void *const *)frames, caps, sizes, st));
        tv[r] = now() - t0;
    }
    double t_eenc = median(tv + 1, ereps);
    /* the same into one pinned buffer, frames back to back (e8cu_pack_frames: no per-frame copy) */
    double t_eenc2 = 0;
    size_t ftotal = 0;
    {
        size_t *fs2 = calloc(n, sizeof *fs2);
        uint64_t *fo2 = calloc(n, sizeof *fo2);
        for (int r = 0; r < ereps + 1; r++) {
            CK(cudaStreamSynchronize(st));
            double t0 = now();
            RC(gpu, e8cu_quantize_async(gpu, n, items, meta, d_q, qbytes, NULL, st));
            RC(gpu, e8cu_pack_frames(gpu, n, items, meta, d_q, qbytes, h_q, qbytes, fo2, fs2, &ftotal, st));
            tv[r] = now() - t0;
        }
        t_eenc2 = median(tv + 1, ereps);
        for (size_t i = 0; i < n; i += n / 37 + 1)
            if (fs2[i] != sizes[i] || memcmp((uint8_t *)h_q + fo2[i], frames[i], sizes[i])) {
                fprintf(stderr, "e8cu_pack_frames: frame %zu differs from e8cu_pack's\n", i);
                return 1;
            }
        free(fs2);
        free(fo2);
    }
    for (int r = 0; r < ereps + 1; r++) {
        CK(cudaStreamSynchronize(st));
        double t0 = now();
        RC(gpu, e8cu_decode_async(gpu, n, oitems, (const void *const *)frames, sizes, NULL, meta, h_q, d_q, qbytes,
                                  NULL, st));
        CK(cudaStreamSynchronize(st));
        tv[r] = now() - t0;
    }
    double t_edec = median(tv + 1, ereps);
    { /* sampled frames: the GPU decode equals the CPU decoder's bits */
        e8c_ctx *cpu = e8c_ctx_create(&fp, NULL);
        size_t cnt = (size_t)H_ * chunk * D_;
        uint16_t *hc = malloc(cnt * 2), *hg = malloc(cnt * 2);
        int bad = 0;
        for (size_t i = 0; i < n; i += n / 29 + 1) {
            e8c_tensor t = e8c_tensor_contiguous(hc, E8C_DTYPE_F16, (uint32_t)chunk, D_);
            if (e8c_frame_decode(cpu, frames[i], sizes[i], NULL, &t)) { bad++; continue; }
            for (int h = 0; h < H_; h++)
                CK(cudaMemcpy(hg + (size_t)h * chunk * D_, (uint16_t *)oitems[i].t.data + (size_t)h * T_ * D_,
                              (size_t)chunk * D_ * 2, cudaMemcpyDeviceToHost));
            if (memcmp(hc, hg, cnt * 2)) bad++;
        }
        printf("decode, sampled frames vs CPU decoder: %s\n", bad ? "MISMATCH" : "identical");
        free(hc);
        free(hg);
        e8c_ctx_free(cpu);
        if (bad) return 1;
    }

    /* 4. CPU path on all host threads, 1/8 of the frames */
    size_t ncpu_items = n / 8;
    cpu_job J = {.fp = &fp, .n = ncpu_items, .items = hitems, .cap = cap, .decode = 0};
    pthread_mutex_init(&J.mu, NULL);
    uint8_t *cbuf = malloc(cap * ncpu_items);
    J.frames = malloc(ncpu_items * sizeof *J.frames);
    J.sizes = calloc(ncpu_items, sizeof *J.sizes);
    J.outs = malloc(ncpu_items * sizeof *J.outs);
    uint16_t *obuf = malloc((size_t)chunk * H_ * D_ * 2 * ncpu_items);
    for (size_t i = 0; i < ncpu_items; i++) {
        J.frames[i] = cbuf + cap * i;
        J.outs[i] = obuf + (size_t)chunk * H_ * D_ * i;
    }
    int nth = ncpu > 0 ? (int)ncpu : 1;
    double t_cenc = 1e30, t_cdec = 1e30;
    for (int r = 0; r < 2; r++) {
        double t = cpu_run(&J, nth);
        if (t < t_cenc) t_cenc = t;
    }
    J.decode = 1;
    for (int r = 0; r < 2; r++) {
        double t = cpu_run(&J, nth);
        if (t < t_cdec) t_cdec = t;
    }
    double cpu_bytes = (double)bytes / 8;

    double gb = (double)bytes / 1e9;
    double r_copy = gb / t_copy, r_qe = gb / t_qenc, r_qd = gb / t_qdec, r_ee = gb / t_eenc2, r_ed = gb / t_edec;
    double r_ep = gb / t_eenc;
#if E8C_FORMAT_VERSION >= 2
    const char *ge0 = getenv("E8CU_GPU_ENTROPY");
    const char *stage = fp.config.entropy == E8C_ENTROPY_RANS32 && !(ge0 && *ge0 == '0') ? "rans32-gpu" : "host-packer";
#else
    const char *stage = "libzstd";
#endif
    double r_ce = cpu_bytes / 1e9 / t_cenc, r_cd = cpu_bytes / 1e9 / t_cdec;
    printf("GPU %s, %ld host threads; cache %d layers x %d KV heads x head_dim %d x %d tokens, fp16 K+V = %.2f GB, "
           "%zu frames of %d tokens; K3V2 bpe %.3f\n", prop.name, ncpu, L_, H_, D_, T_, gb, n, chunk,
           fbytes * 8.0 / ((double)total));
    printf("%-28s %10s %12s\n", "stage", "GB/s", "vs d2d copy");
    printf("%-28s %10.1f %11.0f%%\n", "d2d cudaMemcpy", r_copy, 100.0);
    printf("%-28s %10.1f %11.0f%%\n", "quant encode (device)", r_qe, 100 * r_qe / r_copy);
    printf("%-28s %10.1f %11.0f%%\n", "quant decode (device)", r_qd, 100 * r_qd / r_copy);
    printf("%-28s %10.2f %11.1f%%   (entropy stage: %s; %.3f GB of frames)\n", "e2e encode (pack_frames)", r_ee,
           100 * r_ee / r_copy, stage, ftotal / 1e9);
    printf("%-28s %10.2f %11.1f%%\n", "e2e encode (e8cu_pack)", r_ep, 100 * r_ep / r_copy);
    printf("%-28s %10.2f %11.1f%%\n", "e2e decode (decode_async)", r_ed, 100 * r_ed / r_copy);
    printf("%-28s %10.2f   (GPU e2e x%.1f)\n", "CPU path encode, all cores", r_ce, r_ee / r_ce);
    printf("%-28s %10.2f   (GPU e2e x%.1f)\n", "CPU path decode, all cores", r_cd, r_ed / r_cd);

    const char *ge = getenv("E8CU_GROUP_ELEMS");
    json_t *j = json_pack("{s:s, s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:s, s:f, s:f, s:s}", "gpu", prop.name,
                          "d2d_copy_GBps", r_copy, "quant_encode_GBps", r_qe, "quant_decode_GBps", r_qd,
                          "e2e_encode_GBps", r_ee, "e2e_decode_GBps", r_ed, "cpu_encode_GBps", r_ce,
                          "cpu_decode_GBps", r_cd, "entropy_stage", stage, "e2e_encode_pack_GBps", r_ep,
                          "bpe", fbytes * 8.0 / ((double)total), "group_elems", ge && *ge ? ge : "default (2^26)");
    if (j && jsweep) json_object_set_new(j, "quant_sweep", jsweep);
    if (!j || json_dump_file(j, out, JSON_INDENT(2)) != 0) { fprintf(stderr, "cannot write %s\n", out); return 1; }
    json_decref(j);
    printf("wrote %s\n", out);
    return 0;
}
