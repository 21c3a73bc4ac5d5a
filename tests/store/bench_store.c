/* bench_store.c: `make bench-store`. Store write and read throughput and latency for 1 MiB
 * records, fsync per batch, against fio on the same directory with the same block size and
 * sync pattern, in the same run. `make bench-store` writes build/bench/store.json:
 *   {"record_bytes", "write_GBps", "read_GBps", "write_p99_ms", "read_p99_ms",
 *    "fio_write_GBps", "fio_read_GBps", "engine"}
 * plus a table on stdout. GB = 1e9 bytes; bytes counted are payload bytes (fio: data bytes).
 * Write latency is per put call (one batch, acknowledged = on disk and indexed); read latency
 * per record (e8s_get, CRC checked). Reads are cold: the segment files are dropped from the page
 * cache first (posix_fadvise DONTNEED), as fio does for its file (invalidate=1).
 * fio jobs: write = rw=write bs=1M fdatasync=BATCH, ioengine io_uring with iodepth=BATCH (or
 * psync for the pwrite engine); read = rw=read bs=1M ioengine=psync (the store reads with
 * pread, one record at a time). Buffered I/O on both sides.
 * With THREADS > 1 a second write pass (not in the JSON, printed only) has THREADS callers
 * putting their own batches at once, to show group commit (their puts share fsyncs/commits).
 * The machine may be shared and noisy: ROUNDS rounds run store write, store read, fio write,
 * fio read back to back on fresh files; throughputs are the medians over rounds, store
 * latency percentiles are over all samples of all rounds.
 * Usage: bench_store DIR RECORDS BATCH OUT.json [io_uring|pwrite] [THREADS] [ROUNDS] */
#include <dirent.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "store/e8store.h"

#define REC (1u << 20)
#define CT 256

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double pct(double *v, size_t n, double p) {
  qsort(v, n, sizeof *v, cmp_d);
  size_t i = (size_t)(p * (double)(n - 1) + 0.5);
  return v[i < n ? i : n - 1];
}

static void die(const char *what, int rc) {
  fprintf(stderr, "bench_store: %s: %s %s\n", what, e8s_error_name(rc), e8s_last_error_detail());
  exit(1);
}

static void drop_cache(const char *segdir) {
  DIR *d = opendir(segdir);
  char p[2048];
  for (struct dirent *de; d && (de = readdir(d));) {
    if (!strstr(de->d_name, ".seg")) continue;
    snprintf(p, sizeof p, "%s/%s", segdir, de->d_name);
    int fd = open(p, O_RDONLY);
    if (fd >= 0) fdatasync(fd), posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), close(fd);
  }
  if (d) closedir(d);
}

/* Runs fio with args, returns bw_bytes of jobs[0].<rw>, or -1. */
static double run_fio(const char *dir, const char *args, const char *rw, double *p99_ms) {
  char out[1100], cmd[4096];
  snprintf(out, sizeof out, "%s/fio.json", dir);
  snprintf(cmd, sizeof cmd, "fio --name=e8s --directory=%s --filename=fio.dat %s "
           "--output-format=json --output=%s >/dev/null 2>&1", dir, args, out);
  if (system(cmd) != 0) {
    fprintf(stderr, "bench_store: fio failed: %s\n", cmd);
    return -1;
  }
  json_error_t err;
  json_t *root = json_load_file(out, 0, &err);
  json_t *job = root ? json_array_get(json_object_get(root, "jobs"), 0) : NULL;
  json_t *side = job ? json_object_get(job, rw) : NULL;
  double bw = side ? (double)json_integer_value(json_object_get(side, "bw_bytes")) : -1;
  json_t *pc = side ? json_object_get(json_object_get(json_object_get(side, "clat_ns"),
                                                      "percentile"), "99.000000") : NULL;
  *p99_ms = pc ? (double)json_integer_value(pc) / 1e6 : -1;
  json_decref(root);
  unlink(out);
  return bw;
}

typedef struct mt_arg {
  e8s_store *st;
  uint32_t ns;
  const uint8_t *salt, *fp;
  const uint8_t *pay;
  size_t first, count, batch; /* records [first, first + count) */
  int rc;
} mt_arg;

static void *mt_writer(void *vp) {
  mt_arg *a = vp;
  e8s_put_rec *r = calloc(a->batch, sizeof *r);
  uint32_t *tok = malloc(a->batch * CT * sizeof *tok);
  for (size_t b = 0; b < a->count / a->batch && !a->rc; b++) {
    for (size_t j = 0; j < a->batch; j++) {
      size_t i = a->first + b * a->batch + j;
      for (size_t t = 0; t < CT; t++) tok[j * CT + t] = (uint32_t)(i * CT + t) ^ 0x5a5a0000u;
      memset(&r[j], 0, sizeof r[j]);
      e8s_chunk_key(a->salt, a->fp, NULL, tok + j * CT, CT, r[j].key);
      r[j].tokens = tok + j * CT;
      r[j].n_tokens = CT;
      r[j].payload = a->pay + j * REC;
      r[j].payload_bytes = REC;
    }
    a->rc = e8s_put(a->st, a->ns, a->fp, r, a->batch);
  }
  free(r);
  free(tok);
  return NULL;
}

/* THREADS concurrent writers, RECORDS in all; returns GB/s. */
static double mt_write(e8s_store *st, const e8s_ns_info *ns, const uint8_t *fp,
                       const uint8_t *pay, size_t n, size_t batch, int threads) {
  pthread_t th[64];
  mt_arg a[64];
  size_t per = n / (size_t)threads / batch * batch;
  double t0 = now_s();
  for (int t = 0; t < threads; t++) {
    a[t] = (mt_arg){st, ns->id, ns->salt, fp, pay, (size_t)t * per, per, batch, 0};
    pthread_create(&th[t], NULL, mt_writer, &a[t]);
  }
  for (int t = 0; t < threads; t++) pthread_join(th[t], NULL);
  double dt = now_s() - t0;
  for (int t = 0; t < threads; t++)
    if (a[t].rc) die("threaded put", a[t].rc);
  return (double)per * threads * REC / dt / 1e9;
}

typedef struct round_out { double w_gbps, r_gbps, mt_gbps; const char *engine; } round_out;

/* One store round on a fresh directory: write n records in batches, cold read them back,
 * then (threads > 1) a concurrent write pass. Latencies (ms) are appended to wl/rl. */
static round_out store_round(const char *data, size_t n, size_t batch, int pw, int threads,
                             double *wl, double *rl) {
  char cmd[1300], segdir[1200];
  snprintf(cmd, sizeof cmd, "rm -rf %s", data);
  if (system(cmd) != 0) exit(1);
  snprintf(segdir, sizeof segdir, "%s/segments", data);
  e8s_config cfg;
  e8s_config_init(&cfg);
  cfg.dir = data;
  cfg.flags = E8S_OPEN_CREATE;
  cfg.io_engine = pw ? E8S_IO_PWRITE : E8S_IO_AUTO;
  cfg.uring_entries = (uint32_t)(batch < 64 ? 64 : batch);
  e8s_store *st;
  int rc = e8s_open(&cfg, &st);
  if (rc) die("open", rc);
  e8s_ns_info ns;
  if ((rc = e8s_ns_create(st, "bench", NULL, 0, &ns))) die("ns", rc);
  uint8_t fp[32] = {1};
  if ((rc = e8s_fp_register(st, fp, "bench", 5))) die("fp", rc);
  uint8_t *pay = malloc((size_t)REC * batch);
  for (size_t i = 0; i < (size_t)REC * batch; i++) pay[i] = (uint8_t)(i * 131 + (i >> 12));
  uint32_t *tok = malloc(n * CT * sizeof *tok);
  for (size_t i = 0; i < n * CT; i++) tok[i] = (uint32_t)i;
  uint8_t (*keys)[32] = malloc(n * 32);
  e8s_put_rec *r = calloc(batch, sizeof *r);
  double t0 = now_s();
  for (size_t b = 0; b < n / batch; b++) {
    for (size_t j = 0; j < batch; j++) {
      size_t i = b * batch + j;
      memset(&r[j], 0, sizeof r[j]);
      if (i) memcpy(r[j].parent, keys[i - 1], 32);
      e8s_chunk_key(ns.salt, fp, r[j].parent, tok + i * CT, CT, keys[i]);
      memcpy(r[j].key, keys[i], 32);
      r[j].tokens = tok + i * CT;
      r[j].n_tokens = CT;
      pay[j * REC] = (uint8_t)i; /* distinct payloads */
      r[j].payload = pay + j * REC;
      r[j].payload_bytes = REC;
    }
    double a = now_s();
    if ((rc = e8s_put(st, ns.id, fp, r, batch))) die("put", rc);
    wl[b] = (now_s() - a) * 1e3;
  }
  round_out o = {0};
  o.w_gbps = (double)n * REC / (now_s() - t0) / 1e9;
  drop_cache(segdir);
  uint8_t *buf = malloc(REC);
  t0 = now_s();
  for (size_t i = 0; i < n; i++) {
    double a = now_s();
    uint64_t got;
    if ((rc = e8s_get(st, ns.id, keys[i], buf, REC, &got))) die("get", rc);
    rl[i] = (now_s() - a) * 1e3;
  }
  o.r_gbps = (double)n * REC / (now_s() - t0) / 1e9;
  o.engine = e8s_io_engine_used(st) == E8S_IO_URING ? "io_uring" : "pwrite";
  if (threads > 1) o.mt_gbps = mt_write(st, &ns, fp, pay, n, batch, threads);
  e8s_close(st);
  if (system(cmd) != 0) exit(1);
  free(pay), free(tok), free(keys), free(r), free(buf);
  return o;
}

static double median(double *v, size_t n) { return pct(v, n, 0.5); }

int main(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: bench_store DIR RECORDS BATCH OUT.json [io_uring|pwrite] [THREADS] "
                    "[ROUNDS]\n");
    return 2;
  }
  const char *dir = argv[1], *outp = argv[4];
  size_t n = (size_t)atol(argv[2]), batch = (size_t)atol(argv[3]);
  int pw = argc > 5 && strcmp(argv[5], "pwrite") == 0;
  int threads = argc > 6 ? atoi(argv[6]) : 1;
  int rounds = argc > 7 ? atoi(argv[7]) : 1;
  if (threads < 1 || threads > 64) threads = 1;
  if (rounds < 1 || rounds > 16) rounds = 1;
  if (n == 0 || batch == 0 || n % batch) return fprintf(stderr, "RECORDS %% BATCH != 0\n"), 2;
  char cmd[1200], data[1100];
  snprintf(cmd, sizeof cmd, "rm -rf %s && mkdir -p %s", dir, dir);
  if (system(cmd) != 0) return 1;
  snprintf(data, sizeof data, "%s/store", dir);

  size_t nb = n / batch;
  double *wl = malloc(rounds * nb * sizeof *wl), *rl = malloc(rounds * n * sizeof *rl);
  double sw[16], sr[16], smt[16], fw[16], fr[16], fw_p99 = 0, fr_p99 = 0;
  const char *engine = "pwrite";
  for (int k = 0; k < rounds; k++) {
    round_out o = store_round(data, n, batch, pw, threads, wl + k * nb, rl + k * n);
    sw[k] = o.w_gbps, sr[k] = o.r_gbps, smt[k] = o.mt_gbps, engine = o.engine;
    char args[512];
    int ur = strcmp(engine, "io_uring") == 0;
    snprintf(args, sizeof args, "--rw=write --bs=1M --size=%zuM --fdatasync=%zu --ioengine=%s "
             "--iodepth=%zu", n, batch, ur ? "io_uring" : "psync", ur ? batch : (size_t)1);
    fw[k] = run_fio(dir, args, "write", &fw_p99) / 1e9;
    snprintf(args, sizeof args, "--rw=read --bs=1M --size=%zuM --ioengine=psync --invalidate=1", n);
    fr[k] = run_fio(dir, args, "read", &fr_p99) / 1e9;
    char rm[1300];
    snprintf(rm, sizeof rm, "rm -f %s/fio.dat", dir);
    if (system(rm) != 0) return 1;
    if (fw[k] < 0 || fr[k] < 0) return 1;
    fprintf(stderr, "round %d: store write %.3f read %.3f GB/s, fio write %.3f read %.3f GB/s\n",
            k + 1, sw[k], sr[k], fw[k], fr[k]);
  }
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  if (system(cmd) != 0) fprintf(stderr, "bench_store: could not remove %s\n", dir);

  double w_gbps = median(sw, rounds), r_gbps = median(sr, rounds), mt = median(smt, rounds);
  double fwm = median(fw, rounds), frm = median(fr, rounds);
  double w_p50 = pct(wl, rounds * nb, 0.5), w_p99 = pct(wl, rounds * nb, 0.99);
  double r_p50 = pct(rl, rounds * n, 0.5), r_p99 = pct(rl, rounds * n, 0.99);

  json_t *o = json_object();
  json_object_set_new(o, "record_bytes", json_integer(REC));
  json_object_set_new(o, "write_GBps", json_real(w_gbps));
  json_object_set_new(o, "read_GBps", json_real(r_gbps));
  json_object_set_new(o, "write_p99_ms", json_real(w_p99));
  json_object_set_new(o, "read_p99_ms", json_real(r_p99));
  json_object_set_new(o, "fio_write_GBps", json_real(fwm));
  json_object_set_new(o, "fio_read_GBps", json_real(frm));
  json_object_set_new(o, "engine", json_string(engine));
  if (json_dump_file(o, outp, JSON_INDENT(2)) != 0) return fprintf(stderr, "write %s\n", outp), 1;
  json_decref(o);

  printf("store bench: %zu records of %u bytes, fsync every %zu records (one put call), "
         "engine %s, directory %s, median of %d round(s)\n", n, REC, batch, engine, dir, rounds);
  printf("%-8s %12s %12s %12s %12s %12s\n", "", "store GB/s", "fio GB/s", "store/fio",
         "store p50 ms", "store p99 ms");
  printf("%-8s %12.3f %12.3f %11.0f%% %12.2f %12.2f   (latency per batch of %zu)\n", "write",
         w_gbps, fwm, 100 * w_gbps / fwm, w_p50, w_p99, batch);
  printf("%-8s %12.3f %12.3f %11.0f%% %12.2f %12.2f   (latency per record; page cache dropped)\n",
         "read", r_gbps, frm, 100 * r_gbps / frm, r_p50, r_p99);
  if (threads > 1)
    printf("%-8s %12.3f   (%d writer threads, batches of %zu each, group commit)\n", "write",
           mt, threads, batch);
  printf("fio p99 completion latency (last round): write %.2f ms per 1 MiB, read %.2f ms\n",
         fw_p99, fr_p99);
  printf("wrote %s\n", outp);
  free(wl), free(rl);
  return 0;
}
