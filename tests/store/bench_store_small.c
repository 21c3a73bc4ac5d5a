/* bench_store_small.c: `make bench-store-small`. Puts of many small groups: W writer threads,
 * each calling e8s_put with ONE record of R bytes, N times (distinct keys), on a fresh store in
 * DIR (io_uring). Prints puts/s and where the put time went (e8s_test_put_times_get): data
 * stage groups and their calls, LMDB commits (groups merged into one index transaction),
 * fdatasyncs called and those skipped because another batch's fdatasync of the same segment
 * covered them (store_wpipe.c). This is the pattern of a daemon serving many small PutChunks
 * calls at once; each call is acknowledged only once durable, so its cost is fdatasyncs and
 * LMDB commits, which concurrent calls share.
 * Usage: bench_store_small DIR WRITERS CALLS_PER_WRITER RECORD_BYTES
 * For an A/B of two builds, link this file against each build's libe8store.a and alternate
 * the two binaries a few times on the same disk (the machine and its disk are noisy). */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "store/e8store.h"
#include "store/e8store_test.h"

typedef struct bench {
  e8s_store *st;
  uint32_t ns;
  uint8_t fp[32], salt[32];
  int calls;
  size_t rec;
  _Atomic int failed;
} bench;

typedef struct warg { bench *b; uint32_t id; } warg;

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void *writer(void *p) {
  warg *a = p;
  bench *b = a->b;
  uint8_t *buf = malloc(b->rec);
  if (!buf) {
    b->failed = E8S_ERR_NOMEM;
    return NULL;
  }
  memset(buf, (int)a->id, b->rec);
  for (int i = 0; i < b->calls && !b->failed; i++) {
    uint32_t tok[4] = {a->id, (uint32_t)i, 7, 9};
    e8s_put_rec r;
    memset(&r, 0, sizeof r);
    e8s_chunk_key(b->salt, b->fp, NULL, tok, 4, r.key);
    r.tokens = tok;
    r.n_tokens = 4;
    r.payload = buf;
    r.payload_bytes = b->rec;
    int e = e8s_put(b->st, b->ns, b->fp, &r, 1);
    if (e) {
      fprintf(stderr, "put: %s (%s)\n", e8s_error_name(e), e8s_last_error_detail());
      b->failed = e;
    }
  }
  free(buf);
  return NULL;
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: %s DIR WRITERS CALLS_PER_WRITER RECORD_BYTES\n", argv[0]);
    return 2;
  }
  int w = atoi(argv[2]);
  bench b = {.calls = atoi(argv[3]), .rec = (size_t)strtoull(argv[4], NULL, 10)};
  if (w < 1 || w > 256 || b.calls < 1 || b.rec < 1) {
    fprintf(stderr, "bench_store_small: WRITERS 1..256, CALLS >= 1, RECORD_BYTES >= 1\n");
    return 2;
  }
  e8s_config c;
  e8s_config_init(&c);
  c.dir = argv[1];
  c.flags = E8S_OPEN_CREATE;
  e8s_ns_info ni;
  int e = e8s_open(&c, &b.st);
  if (!e) e = e8s_ns_create(b.st, "bench", NULL, 0, &ni);
  memset(b.fp, 1, 32);
  if (!e) e = e8s_fp_register(b.st, b.fp, "bench", 5);
  if (e) {
    fprintf(stderr, "bench_store_small: %s (%s)\n", e8s_error_name(e), e8s_last_error_detail());
    return 1;
  }
  b.ns = ni.id;
  memcpy(b.salt, ni.salt, 32);
  pthread_t *th = calloc((size_t)w, sizeof *th);
  warg *a = calloc((size_t)w, sizeof *a);
  double t0 = now_s();
  for (int i = 0; i < w; i++) {
    a[i] = (warg){&b, (uint32_t)i};
    pthread_create(&th[i], NULL, writer, &a[i]);
  }
  for (int i = 0; i < w; i++) pthread_join(th[i], NULL);
  double dt = now_s() - t0;
  e8s_test_put_times pt;
  e8s_test_put_times_get(b.st, &pt);
  long calls = (long)w * b.calls;
  printf("writers %d, %ld puts of 1 record of %zu bytes, %s: %.0f puts/s, %.3f ms per put; "
         "%llu groups (%.2f calls each), %llu LMDB commits (%.2f calls each), %llu fdatasyncs, "
         "%llu covered by another's\n", w, calls, b.rec,
         e8s_io_engine_used(b.st) == E8S_IO_URING ? "io_uring" : "pwrite", (double)calls / dt,
         dt * 1e3 * w / (double)calls, pt.groups,
         pt.groups ? (double)pt.group_calls / (double)pt.groups : 0.0, pt.index_commits,
         pt.index_commits ? (double)pt.group_calls / (double)pt.index_commits : 0.0, pt.syncs,
         pt.syncs_covered);
  e8s_close(b.st);
  free(th);
  free(a);
  return b.failed ? 1 : 0;
}
