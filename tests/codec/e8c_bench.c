/*
 * e8c_bench.c: `make bench-codec` — rate, quality and speed of every preset.
 *
 * For each preset and data set it encodes whole chunks (all layers, K and
 * V, 256 tokens) through the public API, decodes the bytes back, and
 * reports (timing: see run(), the steady state of a stream of chunks):
 * bpe = chunk bytes * 8 / elements (every byte: chunk header,
 * embedded fingerprint, index, frame headers, scales, CRCs); SNR of K and
 * V in dB (K measured with RoPE applied, as the engine sees it); encode and
 * decode GB/s of fp16 input/output on one core; memcpy GB/s of the same
 * buffers (the encoder's fp16 input copied into the decoder's fp16 output,
 * same bytes) in the same run, per row, and the median of the rows.
 *
 * Data: "smollm2" = tests/data/smollm2_kv (real SmolLM2-135M KV, 4 layers x
 * 3 KV heads x 256 tokens x head_dim 64, fp16), "gaussian" = N(0,1) at
 * head_dim 64 and 128.  Output: build/bench/codec.json (format in issue 2)
 * and a table on stdout.
 *   e8c_bench [--quick] [--out FILE] [--data DIR]
 *   e8c_bench --sweep       step sizes vs bpe/SNR (to pick presets)
 *   e8c_bench --stages      K3V2 ns per element of the four halves of a frame's
 *                           path (quantize, pack, unpack, dequantize to fp16)
 *   e8c_bench --floors      every stage alone (now) and its tightest loop
 *                           (floor) against the 10 %-of-memcpy budget
 *                           (tests/codec/e8c_floors.c, tests/codec/NOTES.md)
 */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec/e8codec.h"
#include "tests/codec/e8c_floors.h"
#include "tests/codec/e8c_testgen.h"

typedef struct dataset {
    const char *name;
    uint32_t L, H, n, T;
    uint16_t *raw;   /* [L][2][H][T][n] fp16 */
    float *ref;      /* same, fp32 (the reference for SNR) */
} dataset;

/* CPU time of this thread: "GB/s on one core" stays honest on a shared,
 * loaded machine (memcpy is timed the same way in the same run). */
static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void fingerprint_for(const dataset *d, e8c_fingerprint *fp)
{
    e8t_fingerprint(fp, d->L, d->H, d->n, E8C_ROPE_DEFAULT, 0);
    strcpy(fp->model_id, "HuggingFaceTB/SmolLM2-135M-Instruct");
    fp->src_dtype = E8C_DTYPE_F16;
}

static int load_smollm2(const char *dir, dataset *d)
{
    static const int layers[4] = {0, 1, 15, 29};
    d->name = "smollm2"; d->L = 4; d->H = 3; d->n = 64; d->T = 256;
    size_t per = (size_t)d->H * d->T * d->n;
    d->raw = malloc(2 * per * 2 * d->L);
    d->ref = malloc(4 * per * 2 * d->L);
    if (!d->raw || !d->ref) return -1;
    for (uint32_t l = 0; l < d->L; l++)
        for (int kv = 0; kv < 2; kv++) {
            char path[1024];
            snprintf(path, sizeof path, "%s/layer%02d.%c.f16", dir, layers[l], kv ? 'v' : 'k');
            FILE *f = fopen(path, "rb");
            if (!f) { perror(path); return -1; }
            size_t got = fread(d->raw + (2 * l + kv) * per, 2, per, f);
            fclose(f);
            if (got != per) { fprintf(stderr, "%s: short file\n", path); return -1; }
        }
    /* fp32 reference = the fp16 values (what the engine holds) */
    e8c_fingerprint fp;
    fingerprint_for(d, &fp);
    e8c_ctx *ctx = e8c_ctx_create(&fp, NULL);
    for (size_t i = 0; i < per * 2 * d->L; i++) {
        uint16_t h = d->raw[i];
        uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff;
        float v = e ? ldexpf((float)(m | 0x400), (int)e - 25) : ldexpf((float)m, -24);
        d->ref[i] = sign ? -v : v;
    }
    e8c_ctx_free(ctx);
    return 0;
}

static int make_gaussian(dataset *d, uint32_t n, uint32_t L, uint32_t T)
{
    d->name = "gaussian"; d->L = L; d->H = n == 64 ? 3 : 2; d->n = n; d->T = T;
    size_t ne = (size_t)L * 2 * d->H * T * n;
    d->raw = malloc(2 * ne);
    d->ref = malloc(4 * ne);
    if (!d->raw || !d->ref) return -1;
    e8t_rng r = {n};
    for (size_t i = 0; i < ne; i++) d->ref[i] = (float)e8t_gauss(&r);
    e8t_convert(d->ref, d->raw, ne, E8C_DTYPE_F16);
    for (size_t i = 0; i < ne; i++) { /* reference = the fp16 input */
        uint16_t h = d->raw[i];
        uint32_t sign = (uint32_t)(h & 0x8000) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ff;
        float v = e ? ldexpf((float)(m | 0x400), (int)e - 25) : ldexpf((float)m, -24);
        d->ref[i] = sign ? -v : v;
    }
    return 0;
}

typedef struct result { double bpe, snr_k, snr_v, enc_gbps, dec_gbps, memcpy_gbps; } result;

static int run(const dataset *d, float k_step, float v_step, const char *preset, int reps, result *res)
{
    e8c_fingerprint fp;
    fingerprint_for(d, &fp);
    if (preset && e8c_preset_apply(preset, &fp.config)) return -1;
    if (!preset) { fp.config.k_step = k_step; fp.config.v_step = v_step; }
    int64_t err;
    e8c_ctx *ctx = e8c_ctx_create(&fp, &err);
    if (!ctx) { fprintf(stderr, "ctx: %s\n", e8c_error_name(err)); return -1; }
    e8c_ctx_reserve(ctx, d->T);
    int64_t cap = e8c_chunk_max_size(ctx, d->T), rs = e8c_chunk_raw_size(ctx, 0, d->L, d->T, E8C_DTYPE_F16);
    uint8_t *buf[2] = {malloc((size_t)cap), malloc((size_t)cap)};
    uint16_t *out = malloc((size_t)rs);
    /* Steady state of a stream of chunks: chunk A at positions 0..T-1 (its
     * bytes give bpe and SNR) and chunk B at T..2T-1, alternately, so that
     * every timed call pays the per-chunk RoPE table as a real stream does
     * (the context caches one position range); one untimed encode and
     * decode of each first, so that first-touch page faults of the buffers
     * and one-time table set-up are not timed (memcpy below also runs on
     * buffers already written). */
    e8c_chunk_params cp[2] = {{d->T, 0, 0, 0}, {d->T, d->T, 0, 0}};
    int64_t n[2] = {0, 0}, rc = 0;
    for (int k = 0; k < 2; k++) {
        n[k] = e8c_chunk_encode(ctx, &cp[k], d->raw, E8C_DTYPE_F16, buf[k], (size_t)cap);
        if (n[k] < 0) { fprintf(stderr, "encode: %s\n", e8c_ctx_last_error(ctx)); return -1; }
        rc |= e8c_chunk_decode(ctx, buf[k], (size_t)n[k], 0, d->L, NULL, out, E8C_DTYPE_F16, (size_t)rs);
    }
    double t0 = now();
    for (int k = 0; k < reps; k++) {
        int64_t r = e8c_chunk_encode(ctx, &cp[k & 1], d->raw, E8C_DTYPE_F16, buf[k & 1], (size_t)cap);
        if (r != n[k & 1]) rc = -1;
    }
    double t1 = now();
    if (rc) { fprintf(stderr, "encode: %s\n", e8c_ctx_last_error(ctx)); return -1; }
    for (int k = 0; k < reps; k++)
        rc |= e8c_chunk_decode(ctx, buf[k & 1], (size_t)n[k & 1], 0, d->L, NULL, out, E8C_DTYPE_F16, (size_t)rs);
    double t2 = now();
    if (!rc) /* untimed: A's output for the SNR */
        rc = e8c_chunk_decode(ctx, buf[0], (size_t)n[0], 0, d->L, NULL, out, E8C_DTYPE_F16, (size_t)rs);
    if (rc) { fprintf(stderr, "decode: %s\n", e8c_ctx_last_error(ctx)); return -1; }
    size_t per = (size_t)d->H * d->T * d->n;
    double se[2] = {0, 0}, sx[2] = {0, 0};
    for (uint32_t l = 0; l < d->L; l++)
        for (int kv = 0; kv < 2; kv++)
            for (size_t i = 0; i < per; i++) {
                size_t at = (2 * l + kv) * per + i;
                uint16_t h = out[at];
                uint32_t e = (h >> 10) & 0x1f, m = h & 0x3ff;
                float v = e ? ldexpf((float)(m | 0x400), (int)e - 25) : ldexpf((float)m, -24);
                if (h & 0x8000) v = -v;
                double x = d->ref[at];
                se[kv] += (x - v) * (x - v);
                sx[kv] += x * x;
            }
    /* memcpy of the same input buffer into the same output buffer the
     * decoder wrote, same sizes, right after: the baseline of this row */
    int mreps = 20 * reps;
    double t3 = now();
    for (int k = 0; k < mreps; k++) {
        memcpy(out, d->raw, (size_t)rs);
        __asm__ volatile("" : : "r"(out) : "memory");
    }
    double t4 = now();
    if (memcmp(out, d->raw, (size_t)rs) != 0) return -1;
    res->bpe = (double)n[0] * 8 / ((double)per * 2 * d->L);
    res->snr_k = 10 * log10(sx[0] / se[0]);
    res->snr_v = 10 * log10(sx[1] / se[1]);
    res->enc_gbps = (double)rs * reps / (t1 - t0) / 1e9;
    res->dec_gbps = (double)rs * reps / (t2 - t1) / 1e9;
    res->memcpy_gbps = (double)rs * mreps / (t4 - t3) / 1e9;
    free(buf[0]);
    free(buf[1]);
    free(out);
    e8c_ctx_free(ctx);
    return 0;
}

/* var = best of 9 timings of reps calls of expr, in ns per element. */
#define STAGE_NS(var, expr)                                                         \
    do {                                                                            \
        double best_ = 1e30;                                                        \
        for (int t_ = 0; t_ < 9; t_++) {                                            \
            double a_ = now();                                                      \
            for (int k_ = 0; k_ < reps; k_++) rc |= (expr) < 0;                     \
            double b_ = (now() - a_) / reps;                                        \
            if (b_ < best_) best_ = b_;                                             \
        }                                                                           \
        (var) = best_ * 1e9 / (double)ne;                                           \
    } while (0)

/* --stages: layer 1's K and V frames of each data set at K3V2 through the
 * public halves of the codec (e8c_quantize, e8c_qlayer_pack,
 * e8c_qlayer_unpack, e8c_dequantize to fp16), so that a change can be
 * placed; perf names the functions inside each half. */
static int stages(const dataset *d)
{
    e8c_fingerprint fp;
    fingerprint_for(d, &fp);
    if (e8c_preset_apply("K3V2", &fp.config)) return -1;
    e8c_ctx *ctx = e8c_ctx_create(&fp, NULL);
    if (!ctx || e8c_ctx_reserve(ctx, d->T)) return -1;
    size_t ne = (size_t)d->H * d->T * d->n, per = ne;
    int64_t cap = e8c_frame_max_size(ctx, d->T), rc = 0;
    e8c_qlayer_sizes qs;
    e8c_qlayer_size(ctx, d->T, &qs);
    e8c_qlayer q = {0};
    q.scales = malloc(qs.scales); q.points2 = malloc(qs.points2); q.raw = malloc(qs.raw + 16);
    q.n_tokens = d->T;
    uint8_t *buf = malloc((size_t)cap);
    uint16_t *out = malloc(2 * ne);
    int reps = 20;
    for (uint32_t kind = 0; kind < 2 && q.scales && q.points2 && q.raw && buf && out; kind++) {
        e8c_tensor t = e8c_tensor_contiguous(d->raw + (2 * 1 + kind) * per, E8C_DTYPE_F16, d->T, d->n);
        e8c_tensor o = e8c_tensor_contiguous(out, E8C_DTYPE_F16, d->T, d->n);
        e8c_frame_params p = {1, kind, d->T, d->T, 0, 0};
        int64_t fs = e8c_frame_encode(ctx, &p, &t, buf, (size_t)cap);
        if (fs < 0 || e8c_frame_decode(ctx, buf, (size_t)fs, NULL, &o)) { rc = -1; break; }
        double qn, pk, up, dq;
        STAGE_NS(qn, e8c_quantize(ctx, &p, &t, &q));
        STAGE_NS(pk, e8c_qlayer_pack(ctx, &q, buf, (size_t)cap));
        STAGE_NS(up, e8c_qlayer_unpack(ctx, buf, (size_t)fs, &q));
        STAGE_NS(dq, e8c_dequantize(ctx, &q, NULL, &o));
        printf("%-9s hd%-4u %c  quantize %6.3f  pack %6.3f  | unpack %6.3f  dequantize %6.3f  ns/element"
               "  (encode %.3f, decode %.3f)\n", d->name, d->n, kind ? 'V' : 'K', qn, pk, up, dq, qn + pk, up + dq);
    }
    free(q.scales); free(q.points2); free(q.raw); free(buf); free(out);
    e8c_ctx_free(ctx);
    return rc ? -1 : 0;
}

static void machine_name(char *out, size_t cap)
{
    snprintf(out, cap, "unknown x86-64");
    FILE *f = fopen("/proc/cpuinfo", "r");
    char line[512];
    while (f && fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) == 0) {
            char *c = strchr(line, ':');
            if (c) { c += 2; c[strcspn(c, "\n")] = 0; snprintf(out, cap, "%s, 1 core", c); }
            break;
        }
    }
    if (f) fclose(f);
}

int main(int argc, char **argv)
{
    int quick = 0, sweep = 0, stage = 0, floors = 0;
    const char *out = "build/bench/codec.json", *dir = "tests/data/smollm2_kv";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) quick = 1;
        else if (!strcmp(argv[i], "--sweep")) sweep = 1;
        else if (!strcmp(argv[i], "--stages")) stage = 1;
        else if (!strcmp(argv[i], "--floors")) floors = 1;
        else if (!strcmp(argv[i], "--out") && i + 1 < argc) out = argv[++i];
        else if (!strcmp(argv[i], "--data") && i + 1 < argc) dir = argv[++i];
        else { fprintf(stderr, "usage: %s [--quick] [--sweep] [--stages] [--floors] [--out FILE] [--data DIR]\n", argv[0]); return 2; }
    }
    dataset ds[3];
    int nds = 0;
    if (load_smollm2(dir, &ds[nds]) == 0) nds++;
    else fprintf(stderr, "e8c_bench: no SmolLM2 fixture in %s, Gaussian data only\n", dir);
    if (make_gaussian(&ds[nds++], 64, quick ? 4 : 8, 256) || make_gaussian(&ds[nds++], 128, quick ? 4 : 8, 256))
        return 1;
    int reps = quick ? 2 : 5;
    if (floors) {
        for (int di = 0; di < nds; di++) {
            /* the budget's memcpy: the data set's whole fp16 buffer, as run() times it
             * (100 copies in a row, the mean) */
            const dataset *d = &ds[di];
            size_t ne = (size_t)d->L * 2 * d->H * d->T * d->n, per = (size_t)d->H * d->T * d->n;
            uint16_t *cp = malloc(2 * ne);
            if (!cp) return 1;
            memcpy(cp, d->raw, 2 * ne);
            double a = now();
            for (int k = 0; k < 100; k++) {
                memcpy(cp, d->raw, 2 * ne);
                __asm__ volatile("" : : "r"(cp) : "memory");
            }
            double best = (now() - a) / 100;
            free(cp);
            e8c_fingerprint fp;
            fingerprint_for(d, &fp);
            if (e8c_floors(d->name, &fp, d->raw + 2 * 1 * per, d->T, best * 1e9 / (double)ne)) return 1;
        }
        for (int di = 0; di < nds; di++) { free(ds[di].raw); free(ds[di].ref); }
        return 0;
    }
    if (stage) {
        for (int di = 0; di < nds; di++)
            if (stages(&ds[di])) return 1;
        return 0;
    }
    if (sweep) {
        static const float steps[] = {0.25f, 0.3f, 0.35f, 0.4f, 0.45f, 0.5f, 0.6f, 0.7f, 0.8f, 0.9f, 1.0f, 1.2f, 1.4f};
        for (int di = 0; di < nds; di++)
            for (size_t s = 0; s < sizeof steps / sizeof steps[0]; s++) {
                result r;
                if (run(&ds[di], steps[s], steps[s], NULL, 1, &r)) return 1;
                printf("%-8s hd%-3u step %.2f  bpe(K+V)/2 %.3f  snrK %.2f snrV %.2f\n", ds[di].name, ds[di].n,
                       (double)steps[s], r.bpe, r.snr_k, r.snr_v);
            }
        return 0;
    }
    char machine[256];
    machine_name(machine, sizeof machine);
    json_t *root = json_object(), *configs = json_array();
    json_object_set_new(root, "machine", json_string(machine));
    printf("machine: %s; memcpy = the same fp16 buffers copied, same run, per row\n", machine);
    printf("%-6s %-9s %4s %7s %8s %8s %8s %8s %8s %6s %6s\n", "preset", "data", "hd", "bpe", "snrK_dB", "snrV_dB",
           "enc_GB/s", "dec_GB/s", "memcpy", "enc%", "dec%");
    double mcs[64];
    int nmc = 0;
    for (unsigned p = 0; e8c_preset_name(p); p++)
        for (int di = 0; di < nds; di++) {
            result r;
            if (run(&ds[di], 0, 0, e8c_preset_name(p), reps, &r)) return 1;
            if (nmc < 64) mcs[nmc++] = r.memcpy_gbps;
            printf("%-6s %-9s %4u %7.3f %8.2f %8.2f %8.3f %8.3f %8.2f %5.1f%% %5.1f%%\n", e8c_preset_name(p), ds[di].name,
                   ds[di].n, r.bpe, r.snr_k, r.snr_v, r.enc_gbps, r.dec_gbps, r.memcpy_gbps,
                   100 * r.enc_gbps / r.memcpy_gbps, 100 * r.dec_gbps / r.memcpy_gbps);
            json_t *c = json_object();
            json_object_set_new(c, "name", json_string(e8c_preset_name(p)));
            json_object_set_new(c, "data", json_string(ds[di].name));
            json_object_set_new(c, "head_dim", json_integer(ds[di].n));
            json_object_set_new(c, "bpe", json_real(r.bpe));
            json_object_set_new(c, "snr_k_db", json_real(r.snr_k));
            json_object_set_new(c, "snr_v_db", json_real(r.snr_v));
            json_object_set_new(c, "encode_GBps", json_real(r.enc_gbps));
            json_object_set_new(c, "decode_GBps", json_real(r.dec_gbps));
            json_object_set_new(c, "memcpy_GBps", json_real(r.memcpy_gbps));
            json_array_append_new(configs, c);
        }
    for (int i = 1; i < nmc; i++) /* median of the rows' memcpy */
        for (int j = i; j > 0 && mcs[j - 1] > mcs[j]; j--) { double t = mcs[j]; mcs[j] = mcs[j - 1]; mcs[j - 1] = t; }
    json_object_set_new(root, "memcpy_GBps", json_real(nmc ? mcs[nmc / 2] : 0));
    printf("memcpy median %.2f GB/s\n", nmc ? mcs[nmc / 2] : 0);
    json_object_set_new(root, "configs", configs);
    if (json_dump_file(root, out, JSON_INDENT(2))) { fprintf(stderr, "cannot write %s\n", out); return 1; }
    printf("wrote %s\n", out);
    json_decref(root);
    for (int di = 0; di < nds; di++) { free(ds[di].raw); free(ds[di].ref); }
    return 0;
}
