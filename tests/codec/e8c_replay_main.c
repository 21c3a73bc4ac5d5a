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

/* Seeds: valid frames of each fuzz context, and a small valid chunk. */
static int write_corpus(const char *dir)
{
    static const uint32_t hd[4] = {64, 80, 64, 16};
    static const uint32_t rope[4] = {E8C_ROPE_DEFAULT, E8C_ROPE_YARN, E8C_ROPE_NONE, E8C_ROPE_LONGROPE};
    static uint8_t buf[1 << 20];
    e8t_rng r = {2026};
    char name[64];
    for (unsigned w = 0; w < 4; w++) {
        e8c_fingerprint fp;
        e8t_fingerprint(&fp, 4, 2, hd[w], rope[w], w == 2 ? 0 : (int)(w & 1));
        if (w == 2) { fp.config.sink_tokens = 2; fp.config.recent_tokens = 3; fp.config.protect_first = 1; }
        e8c_ctx *ctx = e8c_ctx_create(&fp, NULL);
        if (!ctx) return -1;
        for (int k = 0; k < 3; k++) {
            int64_t n = e8t_random_frame(ctx, &r, 12, buf, sizeof buf);
            if (n < 0) return -1;
            snprintf(name, sizeof name, "frame-%u-%d", w, k);
            if (write_file(dir, name, (uint8_t)(w | (k << 2) | (k == 1 ? 0x40 : 0)), buf, (size_t)n)) return -1;
        }
        if (w == 2) {
            float x[4 * 2 * 2 * 5 * 64];
            uint16_t h[sizeof x / sizeof x[0]];
            e8t_kv(&r, x, 16, 5, 64);
            e8t_convert(x, h, sizeof x / sizeof x[0], E8C_DTYPE_F16);
            e8c_chunk_params cp = {5, 0, 0, 0};
            int64_t n = e8c_chunk_encode(ctx, &cp, h, E8C_DTYPE_F16, buf, sizeof buf);
            if (n < 0 || write_file(dir, "chunk-0", 0x80, buf, (size_t)n)) return -1;
        }
        e8c_ctx_free(ctx);
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
