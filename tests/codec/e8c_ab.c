/*
 * e8c_ab.c: two builds of libe8codec in one process, timed alternately on
 * the same frames, and their bytes compared (old vs new on a loaded,
 * shared machine: each trial times A then B back to back, best of N).
 *
 *   e8c_ab OLD.so NEW.so [--data DIR] [--trials N]
 *
 * Each .so is a -Wl,-Bsymbolic build (its own calls bind inside it; see
 * tests/codec/NOTES.md for the two-line build of an older commit's).
 * Frames: layer 1's K and V at K3V2 of the SmolLM2 fixture (3 heads x 256
 * tokens x hd64) and of Gaussian data at hd64 (3 heads) and hd128 (8
 * heads), 256 tokens.  Prints ns per element of frame encode (fp16 ->
 * bytes) and decode (bytes -> fp16) for A and B, and fails if B's frames
 * or decoded fp16 differ from A's.
 */
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec/e8codec.h"

typedef struct lib {
    void *h;
    e8c_ctx *(*create)(const e8c_fingerprint *, int64_t *);
    void (*ctx_free)(e8c_ctx *);
    int64_t (*reserve)(e8c_ctx *, uint32_t);
    void (*config_default)(e8c_config *);
    int64_t (*preset)(const char *, e8c_config *);
    int64_t (*max_size)(const e8c_ctx *, uint32_t);
    int64_t (*encode)(e8c_ctx *, const e8c_frame_params *, const e8c_tensor *, void *, size_t);
    int64_t (*decode)(e8c_ctx *, const void *, size_t, const e8c_decode_params *, const e8c_tensor *);
} lib;

static int lib_open(const char *path, lib *l)
{
    l->h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!l->h) { fprintf(stderr, "%s\n", dlerror()); return -1; }
    *(void **)&l->create = dlsym(l->h, "e8c_ctx_create");
    *(void **)&l->ctx_free = dlsym(l->h, "e8c_ctx_free");
    *(void **)&l->reserve = dlsym(l->h, "e8c_ctx_reserve");
    *(void **)&l->config_default = dlsym(l->h, "e8c_config_default");
    *(void **)&l->preset = dlsym(l->h, "e8c_preset_apply");
    *(void **)&l->max_size = dlsym(l->h, "e8c_frame_max_size");
    *(void **)&l->encode = dlsym(l->h, "e8c_frame_encode");
    *(void **)&l->decode = dlsym(l->h, "e8c_frame_decode");
    if (!l->create || !l->ctx_free || !l->reserve || !l->config_default || !l->preset || !l->max_size ||
        !l->encode || !l->decode) {
        fprintf(stderr, "%s: missing symbols\n", path);
        return -1;
    }
    return 0;
}

/* e8c_tensor_contiguous, without linking a library (both are dlopen'ed) */
static e8c_tensor ten(void *data, uint32_t T, uint32_t n)
{
    e8c_tensor t = {data, E8C_DTYPE_F16, (int64_t)T * n, n, 1};
    return t;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint16_t f2h(float f)
{
    /* round to nearest even fp16 (finite, |f| < 65504 here) */
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t s = (u >> 16) & 0x8000, e = (u >> 23) & 0xff, m = u & 0x7fffff;
    if (e < 103) return (uint16_t)s;
    if (e < 113) { /* subnormal fp16 */
        m |= 0x800000;
        uint32_t sh = 126 - e, r = m >> sh, rem = m & ((1u << sh) - 1), half = 1u << (sh - 1);
        if (rem > half || (rem == half && (r & 1))) r++;
        return (uint16_t)(s | r);
    }
    uint32_t r = ((e - 112) << 10) | (m >> 13), rem = m & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (r & 1))) r++;
    return (uint16_t)(s | r);
}

static void fingerprint(const lib *l, e8c_fingerprint *fp, uint32_t H, uint32_t n)
{
    memset(fp, 0, sizeof *fp);
    strcpy(fp->model_id, "HuggingFaceTB/SmolLM2-135M-Instruct");
    fp->n_layers = 4; fp->n_kv_heads = H; fp->head_dim = n; fp->src_dtype = E8C_DTYPE_F16;
    l->config_default(&fp->config);
    l->preset("K3V2", &fp->config);
    fp->rope.type = E8C_ROPE_DEFAULT;
    fp->rope.layout = E8C_ROPE_LAYOUT_SPLIT_HALF;
    fp->rope.rotary_dim = n;
    fp->rope.theta = 100000;
}

/* One data set: [2][H][T][n] fp16 (layer 1's K then V). */
static int ab(const char *name, const lib L[2], const uint16_t *kv, uint32_t H, uint32_t T, uint32_t n,
              int trials)
{
    e8c_ctx *ctx[2];
    uint8_t *buf[2];
    uint16_t *out[2];
    size_t ne = (size_t)H * T * n;
    for (int b = 0; b < 2; b++) {
        e8c_fingerprint fp;
        fingerprint(&L[b], &fp, H, n);
        ctx[b] = L[b].create(&fp, NULL);
        if (!ctx[b] || L[b].reserve(ctx[b], T)) return -1;
        buf[b] = malloc((size_t)L[b].max_size(ctx[b], T));
        out[b] = malloc(2 * ne);
        if (!buf[b] || !out[b]) return -1;
    }
    int64_t cap = L[0].max_size(ctx[0], T);
    double best[2][2][2] = {{{1e30, 1e30}, {1e30, 1e30}}, {{1e30, 1e30}, {1e30, 1e30}}}; /* [kind][lib][enc,dec] */
    int reps = 20, rc = 0;
    for (uint32_t kind = 0; kind < 2; kind++) {
        e8c_tensor t = ten((void *)(uintptr_t)(kv + kind * ne), T, n);
        e8c_frame_params p = {1, kind, T, T, 0, 0};
        int64_t sz[2];
        for (int b = 0; b < 2; b++) {
            e8c_tensor o = ten(out[b], T, n);
            sz[b] = L[b].encode(ctx[b], &p, &t, buf[b], (size_t)cap);
            if (sz[b] < 0 || L[b].decode(ctx[b], buf[b], (size_t)sz[b], NULL, &o)) return -1;
        }
        if (sz[0] != sz[1] || memcmp(buf[0], buf[1], (size_t)sz[0]) || memcmp(out[0], out[1], 2 * ne)) {
            fprintf(stderr, "%s %c: the two libraries' bytes differ\n", name, kind ? 'V' : 'K');
            return -1;
        }
        for (int tr = 0; tr < trials; tr++)
            for (int b = 0; b < 2; b++) {
                e8c_tensor o = ten(out[b], T, n);
                double a = now();
                for (int k = 0; k < reps; k++) rc |= L[b].encode(ctx[b], &p, &t, buf[b], (size_t)cap) != sz[b];
                double m = now();
                for (int k = 0; k < reps; k++) rc |= L[b].decode(ctx[b], buf[b], (size_t)sz[b], NULL, &o) != 0;
                double e = now();
                if (m - a < best[kind][b][0]) best[kind][b][0] = m - a;
                if (e - m < best[kind][b][1]) best[kind][b][1] = e - m;
            }
    }
    double s = 1e9 / reps / (double)ne;
    for (uint32_t kind = 0; kind < 2; kind++)
        printf("%-9s hd%-4u %c  encode A %6.3f  B %6.3f  (%.2fx)   decode A %6.3f  B %6.3f  (%.2fx)  ns/element\n",
               name, n, kind ? 'V' : 'K', best[kind][0][0] * s, best[kind][1][0] * s,
               best[kind][0][0] / best[kind][1][0], best[kind][0][1] * s, best[kind][1][1] * s,
               best[kind][0][1] / best[kind][1][1]);
    for (int b = 0; b < 2; b++) { L[b].ctx_free(ctx[b]); free(buf[b]); free(out[b]); }
    return rc ? -1 : 0;
}

int main(int argc, char **argv)
{
    const char *dir = "tests/data/smollm2_kv";
    int trials = 15;
    if (argc < 3) { fprintf(stderr, "usage: %s OLD.so NEW.so [--data DIR] [--trials N]\n", argv[0]); return 2; }
    for (int i = 3; i < argc; i++) {
        if (!strcmp(argv[i], "--data") && i + 1 < argc) dir = argv[++i];
        else if (!strcmp(argv[i], "--trials") && i + 1 < argc) trials = atoi(argv[++i]);
        else { fprintf(stderr, "unknown argument %s\n", argv[i]); return 2; }
    }
    lib L[2];
    if (lib_open(argv[1], &L[0]) || lib_open(argv[2], &L[1])) return 1;
    printf("A = %s, B = %s; best of %d alternating trials, thread CPU time\n", argv[1], argv[2], trials);
    /* SmolLM2 layer 1 (the fixture's second file pair) */
    uint32_t T = 256;
    size_t per = (size_t)3 * T * 64;
    uint16_t *kv = malloc(2 * 2 * per);
    int ok = kv != NULL;
    for (int k = 0; ok && k < 2; k++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/layer01.%c.f16", dir, k ? 'v' : 'k');
        FILE *f = fopen(path, "rb");
        ok = f && fread(kv + k * per, 2, per, f) == per;
        if (f) fclose(f);
    }
    if (ok && ab("smollm2", L, kv, 3, T, 64, trials)) return 1;
    if (!ok) fprintf(stderr, "no SmolLM2 fixture in %s: Gaussian only\n", dir);
    free(kv);
    static const uint32_t dims[2] = {64, 128}, heads[2] = {3, 8};
    for (int d = 0; d < 2; d++) {
        size_t ne = (size_t)heads[d] * T * dims[d];
        uint16_t *g = malloc(2 * 2 * ne);
        if (!g) return 1;
        uint64_t s = 12345 + (uint64_t)d;
        for (size_t i = 0; i < 2 * ne; i += 2) { /* Box-Muller on splitmix64 */
            uint64_t z[2];
            for (int j = 0; j < 2; j++) {
                s += 0x9E3779B97F4A7C15ull;
                uint64_t x = s;
                x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
                x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
                z[j] = x ^ (x >> 31);
            }
            double u = (double)(z[0] >> 11) * 0x1p-53 + 1e-300, v = (double)(z[1] >> 11) * 0x1p-53;
            double r = sqrt(-2 * log(u));
            g[i] = f2h((float)(r * cos(6.283185307179586 * v)));
            g[i + 1] = f2h((float)(r * sin(6.283185307179586 * v)));
        }
        if (ab("gaussian", L, g, heads[d], T, dims[d], trials)) return 1;
        free(g);
    }
    return 0;
}
