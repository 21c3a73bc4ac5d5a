/*
 * e8c_replay_main.c: replays a libFuzzer corpus directory through
 * LLVMFuzzerTestOneInput with any compiler (make test uses gcc), so the
 * fuzz corpus is a regression test.  Fails on an empty or missing corpus.
 *   e8c_corpus_replay [DIR]          replay every file (default
 *                                    tests/codec/corpus, run from the repo root)
 *   e8c_corpus_replay --write DIR    (re)generate the seed corpus
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec/e8codec.h"
#include "tests/codec/e8c_testgen.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int write_file(const char *dir, const char *name, uint8_t sel, const uint8_t *b, size_t n)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    fputc(sel, f);
    fwrite(b, 1, n, f);
    return fclose(f);
}

/* A frame of exactly T tokens (T large enough for rans32's 8 and 32 lanes). */
static int64_t big_frame(e8c_ctx *ctx, e8t_rng *r, uint32_t T, uint8_t *dst, size_t cap)
{
    const e8c_fingerprint *fp = e8c_ctx_fingerprint(ctx);
    size_t ne = (size_t)fp->n_kv_heads * T * fp->head_dim;
    float *x = malloc(4 * ne);
    uint16_t *h = malloc(2 * ne);
    int64_t n = E8C_ERR_NOMEM;
    if (x && h) {
        e8t_kv(r, x, fp->n_kv_heads, T, fp->head_dim);
        e8t_convert(x, h, ne, E8C_DTYPE_F16);
        e8c_frame_params p = {1, E8C_K, T, 10, 0, 0};
        e8c_tensor t = e8c_tensor_contiguous(h, E8C_DTYPE_F16, T, fp->head_dim);
        n = e8c_frame_encode(ctx, &p, &t, dst, cap);
    }
    free(x);
    free(h);
    return n;
}

/* Seeds: valid frames of each fuzz context and entropy config (prefix ""
 * rans32, "best-", "v1-"; the v1 ones are byte for byte the version-1
 * library's seeds), two large rans32 frames (8 and 32 lanes), and a small
 * valid chunk per config. */
static int write_corpus(const char *dir)
{
    static const uint32_t hd[4] = {64, 80, 64, 16};
    static const uint32_t rope[4] = {E8C_ROPE_DEFAULT, E8C_ROPE_YARN, E8C_ROPE_NONE, E8C_ROPE_LONGROPE};
    static const char *pfx[3] = {"", "best-", "v1-"};
    static uint8_t buf[1 << 20];
    char name[64];
    for (unsigned e = 0; e < 3; e++) {
        e8t_rng r = {2026};
        for (unsigned w = 0; w < 4; w++) {
            e8c_fingerprint fp;
            e8t_fingerprint(&fp, 4, 2, hd[w], rope[w], w == 2 ? 0 : (int)(w & 1));
            if (w == 2) { fp.config.sink_tokens = 2; fp.config.recent_tokens = 3; fp.config.protect_first = 1; }
            fp.config.entropy = e;
            e8c_ctx *ctx = e8c_ctx_create(&fp, NULL);
            if (!ctx) return -1;
            for (int k = 0; k < 3; k++) {
                int64_t n = e8t_random_frame(ctx, &r, 12, buf, sizeof buf);
                if (n < 0) return -1;
                snprintf(name, sizeof name, "%sframe-%u-%d", pfx[e], w, k);
                if (write_file(dir, name, (uint8_t)(w | (k << 2) | (k == 1 ? 0x40 : 0) | (e << 4)), buf, (size_t)n))
                    return -1;
            }
            if (w == 2) {
                float x[4 * 2 * 2 * 5 * 64];
                uint16_t h[sizeof x / sizeof x[0]];
                e8t_kv(&r, x, 16, 5, 64);
                e8t_convert(x, h, sizeof x / sizeof x[0], E8C_DTYPE_F16);
                e8c_chunk_params cp = {5, 0, 0, 0};
                int64_t n = e8c_chunk_encode(ctx, &cp, h, E8C_DTYPE_F16, buf, sizeof buf);
                snprintf(name, sizeof name, "%schunk-0", pfx[e]);
                if (n < 0 || write_file(dir, name, 0x80, buf, (size_t)n)) return -1;
            }
            if (w == 0 && e == 0) {
                static const uint32_t T[2] = {80, 600}; /* coords: 8960 and 67088 symbols */
                for (int k = 0; k < 2; k++) {
                    int64_t n = big_frame(ctx, &r, T[k], buf, sizeof buf);
                    snprintf(name, sizeof name, "frame-lanes%d", k ? 32 : 8);
                    if (n < 0 || write_file(dir, name, (uint8_t)(k ? 0x48 : 0x40), buf, (size_t)n)) return -1;
                }
            }
            e8c_ctx_free(ctx);
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--write") == 0) return write_corpus(argv[2]) ? 1 : 0;
    if (argc > 2) { fprintf(stderr, "usage: %s [DIR] | --write DIR\n", argv[0]); return 2; }
    const char *dir = argc == 2 ? argv[1] : "tests/codec/corpus";
    DIR *d = opendir(dir);
    if (!d) { perror(dir); return 1; }
    int count = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (e->d_name[0] == '.') continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        FILE *f = fopen(path, "rb");
        if (!f) { perror(path); return 1; }
        static uint8_t buf[1 << 22];
        size_t n = fread(buf, 1, sizeof buf, f);
        fclose(f);
        LLVMFuzzerTestOneInput(buf, n);
        count++;
    }
    closedir(d);
    printf("e8c_corpus_replay: %d inputs replayed from %s\n", count, dir);
    return count > 0 ? 0 : 1;
}
