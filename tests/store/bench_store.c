/* bench_store.c: `make bench-store`. The store's write and read throughput and latency for
 * 1 MiB records, one fdatasync per put call of BATCH records, against fio on the same
 * directory with the same pattern, in the same run. The fio jobs are bench/store/store.fio,
 * whose header puts each store pattern next to its fio job:
 *   write, 1 writer : 1 caller of e8s_put(BATCH)      vs fio write-1 (psync, fdatasync=BATCH)
 *   write, W writers: W callers of e8s_put(BATCH)     vs fio write-W (W psync jobs) and
 *                     (group commit, pipeline)           fio write-uring (io_uring, iodepth=BATCH)
 *   read            : e8s_get, one record at a time   vs fio read-1 (psync, 1 MiB)
 * Reads are cold: the segment files are dropped from the page cache first (posix_fadvise
 * DONTNEED), as fio does for its file (invalidate=1); both read through the page cache (psync,
 * buffered: the store has no O_DIRECT path). Cold reads on this shared virtio disk swing 3x
 * between seconds, so each side reads READ_PASSES times and keeps its median. Each side reads
 * right after its own write (store write, store reads, fio write-1, fio reads): data written
 * last reads faster here (the host caches recent writes), so a store read of its newest data
 * against a fio read of an older file, as an alternating order had it, favours the store
 * 2-4x.
 * build/bench/store.json: {"record_bytes", "write_GBps", "read_GBps", "write_p99_ms",
 * "read_p99_ms", "fio_write_GBps", "fio_read_GBps", "engine"} where write_* is the W-writer
 * store run and fio_write_GBps the fio job with the same parallelism that writes fastest
 * (write-W or write-uring); the other pairs are there too under their own names ("write1_*",
 * "fio_write1_GBps", "fio_writeW_GBps", "fio_write_uring_GBps", "writers", "batch",
 * "rounds", "load1_max", "read_pattern"). GB = 1e9 bytes of payload (fio: data bytes).
 * Write latency is per put call (acknowledged = on disk and indexed); read latency per record.
 * Every removal of files is followed by a syncfs before the next timed job: the filesystem is
 * mounted with online discard, and the discards of freed blocks go out at the journal commit,
 * which would otherwise land in whichever job runs next (store or fio).
 * The machine is shared and noisy: ROUNDS rounds run every pair back to back on fresh files,
 * the store first in even rounds and fio first in odd ones (so neither side always follows
 * the other on the disk); throughputs are medians over rounds, and the per-round (paired)
 * store/fio ratios are reported with their median and spread ("write_ratio_median", "_min",
 * "_max", "_rounds"; the same for write1 and read): a pair sees the same minute of a disk
 * whose speed moves 3-10x between minutes. Latency percentiles are over all samples of all
 * rounds. The store's time is broken down by stage
 * (e8s_test_put_times_get).
 * Usage: bench_store DIR RECORDS BATCH OUT.json [io_uring|pwrite] [WRITERS] [ROUNDS] [FIO_JOB] */
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
#include "store/e8store_test.h"

#define REC (1u << 20)
#define CT 256
#define MAXR 16

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
  if (!n) return 0;
  qsort(v, n, sizeof *v, cmp_d);
  size_t i = (size_t)(p * (double)(n - 1) + 0.5);
  return v[i < n ? i : n - 1];
}

static void die(const char *what, int rc) {
  fprintf(stderr, "bench_store: %s: %s %s\n", what, e8s_error_name(rc), e8s_last_error_detail());
  exit(1);
}

static void sh(const char *cmd) {
  if (system(cmd) != 0) {
    fprintf(stderr, "bench_store: failed: %s\n", cmd);
    exit(1);
  }
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

/* ---------------------------------------------------------------- fio */
typedef struct fio_cfg { const char *dir, *job; size_t mb, batch; int writers; } fio_cfg;

/* Runs one section of the job file; returns its (group) bandwidth in GB/s, or exits. */
static double run_fio(const fio_cfg *f, const char *section, const char *rw, size_t mb) {
  char out[1100], cmd[4096], v[64];
  snprintf(out, sizeof out, "%s/fio.json", f->dir);
  setenv("E8S_FIO_DIR", f->dir, 1);
  snprintf(v, sizeof v, "%zu", mb);
  setenv("E8S_FIO_MB", v, 1);
  snprintf(v, sizeof v, "%zu", f->batch);
  setenv("E8S_FIO_BATCH", v, 1);
  snprintf(v, sizeof v, "%d", f->writers);
  setenv("E8S_FIO_WRITERS", v, 1);
  snprintf(cmd, sizeof cmd, "fio --section=%s %s --output-format=json --output=%s >/dev/null",
           section, f->job, out);
  sh(cmd);
  json_error_t err;
  json_t *root = json_load_file(out, 0, &err);
  json_t *job = root ? json_array_get(json_object_get(root, "jobs"), 0) : NULL;
  json_t *side = job ? json_object_get(job, rw) : NULL;
  double bw = side ? (double)json_integer_value(json_object_get(side, "bw_bytes")) : -1;
  json_decref(root);
  unlink(out);
  if (bw <= 0) {
    fprintf(stderr, "bench_store: no %s bandwidth in fio's output (%s)\n", rw, section);
    exit(1);
  }
  return bw / 1e9;
}

/* ---------------------------------------------------------------- store */
typedef struct wctx {
  e8s_store *st;
  const e8s_ns_info *ns;
  const uint8_t *fp;
  uint8_t *pay;          /* BATCH records of this writer */
  size_t first, count, batch; /* records [first, first + count) */
  double *lat;           /* ms per put call */
  int rc;
} wctx;

/* One writer: chains of records (each record's parent is the previous one of this writer). */
static void *writer(void *vp) {
  wctx *a = vp;
  e8s_put_rec *r = calloc(a->batch, sizeof *r);
  uint32_t *tok = malloc(a->batch * CT * sizeof *tok);
  uint8_t parent[32] = {0};
  for (size_t b = 0; b < a->count / a->batch && !a->rc; b++) {
    for (size_t j = 0; j < a->batch; j++) {
      size_t i = a->first + b * a->batch + j;
      for (size_t t = 0; t < CT; t++) tok[j * CT + t] = (uint32_t)(i * CT + t);
      memset(&r[j], 0, sizeof r[j]);
      memcpy(r[j].parent, parent, 32);
      e8s_chunk_key(a->ns->salt, a->fp, parent, tok + j * CT, CT, r[j].key);
      memcpy(parent, r[j].key, 32);
      r[j].tokens = tok + j * CT;
      r[j].n_tokens = CT;
      memcpy(a->pay + j * REC, &i, sizeof i); /* distinct payloads */
      r[j].payload = a->pay + j * REC;
      r[j].payload_bytes = REC;
    }
    double t = now_s();
    a->rc = e8s_put(a->st, a->ns->id, a->fp, r, a->batch);
    a->lat[b] = (now_s() - t) * 1e3;
  }
  free(r);
  free(tok);
  return NULL;
}

#define READ_PASSES 3 /* cold read passes per round, store and fio alternating */

typedef struct store_out {
  double w_gbps, r_gbps; /* r_gbps: median of READ_PASSES cold passes */
  e8s_test_put_times pt;
  const char *engine;
} store_out;

static uint8_t key_fp[32] = {1};

static double median(const double *v, int n);

/* Fresh store in data/: `writers` threads put n records in batches (latencies to wl), then, if
 * rl, READ_PASSES times: every record is read back cold in write order (latencies of the last
 * pass to rl). */
static store_out store_run(const char *data, size_t n, size_t batch, int pw, int writers,
                           double *wl, double *rl) {
  char cmd[1300], segdir[1200];
  snprintf(cmd, sizeof cmd, "rm -rf %s && sync -f $(dirname %s)", data, data);
  sh(cmd);
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
  if ((rc = e8s_fp_register(st, key_fp, "bench", 5))) die("fp", rc);
  pthread_t th[MAXR];
  wctx a[MAXR];
  size_t per = n / (size_t)writers / batch * batch, nb = per / batch;
  for (int t = 0; t < writers; t++) {
    uint8_t *pay = malloc((size_t)REC * batch);
    for (size_t i = 0; i < (size_t)REC * batch; i++) pay[i] = (uint8_t)(i * 131 + (i >> 12) + t);
    a[t] = (wctx){st, &ns, key_fp, pay, (size_t)t * per, per, batch, wl + (size_t)t * nb, 0};
  }
  double t0 = now_s();
  for (int t = 0; t < writers; t++) pthread_create(&th[t], NULL, writer, &a[t]);
  for (int t = 0; t < writers; t++) pthread_join(th[t], NULL);
  store_out o = {0};
  o.w_gbps = (double)per * (double)writers * REC / (now_s() - t0) / 1e9;
  for (int t = 0; t < writers; t++) {
    if (a[t].rc) die("put", a[t].rc);
    free(a[t].pay);
  }
  e8s_test_put_times_get(st, &o.pt);
  double sr[READ_PASSES];
  for (int pass = 0; rl && pass < READ_PASSES; pass++) {
    drop_cache(segdir);
    uint8_t *buf = malloc(REC), parent[32] = {0}, key[32];
    uint32_t tok[CT];
    t0 = now_s();
    for (size_t i = 0; i < per; i++) { /* writer 0's chain, in order */
      for (size_t t = 0; t < CT; t++) tok[t] = (uint32_t)(i * CT + t);
      e8s_chunk_key(ns.salt, key_fp, parent, tok, CT, key);
      memcpy(parent, key, 32);
      double s = now_s();
      uint64_t got;
      if ((rc = e8s_get(st, ns.id, key, buf, REC, &got))) die("get", rc);
      rl[i] = (now_s() - s) * 1e3;
    }
    sr[pass] = (double)per * REC / (now_s() - t0) / 1e9;
    free(buf);
  }
  if (rl) o.r_gbps = median(sr, READ_PASSES);
  o.engine = e8s_io_engine_used(st) == E8S_IO_URING ? "io_uring" : "pwrite";
  e8s_close(st);
  sh(cmd);
  return o;
}

static void print_times(const char *what, const e8s_test_put_times *p, double gbps, size_t n) {
  double wall = (double)n * REC / (gbps * 1e9) * 1e3;
  printf("  %-10s per GiB: prep (CRC, digests) %6.1f ms | data stage %6.1f | fdatasync %6.1f | "
         "LMDB stage %6.1f | wall %6.1f ms; %llu groups of %.2f calls, %llu LMDB commits, "
         "%llu fdatasyncs (%llu covered by another's)\n", what,
         (double)p->prep_ns / 1e6 * 1024 / (double)n, (double)p->write_ns / 1e6 * 1024 / (double)n,
         (double)p->sync_ns / 1e6 * 1024 / (double)n, (double)p->index_ns / 1e6 * 1024 / (double)n,
         wall * 1024 / (double)n, p->groups,
         p->groups ? (double)p->group_calls / (double)p->groups : 0, p->index_commits, p->syncs,
         p->syncs_covered);
}

static double median(const double *v, int n) {
  double c[MAXR];
  memcpy(c, v, (size_t)n * sizeof *v);
  return pct(c, (size_t)n, 0.5);
}

static double vmin(const double *v, int n) {
  double m = v[0];
  for (int i = 1; i < n; i++) m = v[i] < m ? v[i] : m;
  return m;
}

static double vmax(const double *v, int n) {
  double m = v[0];
  for (int i = 1; i < n; i++) m = v[i] > m ? v[i] : m;
  return m;
}

/* name_median, name_min, name_max, name_rounds (the list) */
static void ratio_set(json_t *o, const char *name, const double *q, int n) {
  char k[64];
  json_t *a = json_array();
  for (int i = 0; i < n; i++) json_array_append_new(a, json_real(q[i]));
  snprintf(k, sizeof k, "%s_rounds", name);
  json_object_set_new(o, k, a);
  snprintf(k, sizeof k, "%s_median", name);
  json_object_set_new(o, k, json_real(median(q, n)));
  snprintf(k, sizeof k, "%s_min", name);
  json_object_set_new(o, k, json_real(vmin(q, n)));
  snprintf(k, sizeof k, "%s_max", name);
  json_object_set_new(o, k, json_real(vmax(q, n)));
}

static double load1(void) {
  double l = -1;
  FILE *f = fopen("/proc/loadavg", "r");
  if (f && fscanf(f, "%lf", &l) != 1) l = -1;
  if (f) fclose(f);
  return l;
}

int main(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: bench_store DIR RECORDS BATCH OUT.json [io_uring|pwrite] [WRITERS] "
                    "[ROUNDS] [FIO_JOB]\n");
    return 2;
  }
  const char *dir = argv[1], *outp = argv[4];
  size_t n = (size_t)atol(argv[2]), batch = (size_t)atol(argv[3]);
  int pw = argc > 5 && strcmp(argv[5], "pwrite") == 0;
  int writers = argc > 6 ? atoi(argv[6]) : 2;
  int rounds = argc > 7 ? atoi(argv[7]) : 1;
  const char *job = argc > 8 ? argv[8] : "bench/store/store.fio";
  if (writers < 1 || writers > MAXR) writers = 2;
  if (rounds < 1 || rounds > MAXR) rounds = 1;
  if (n == 0 || batch == 0 || n % ((size_t)writers * batch))
    return fprintf(stderr, "RECORDS must be a multiple of WRITERS * BATCH\n"), 2;
  if (access(job, R_OK) != 0) return fprintf(stderr, "no fio job file %s\n", job), 2;
  char cmd[1200], data[1100];
  snprintf(cmd, sizeof cmd, "rm -rf %s && mkdir -p %s", dir, dir);
  sh(cmd);
  snprintf(data, sizeof data, "%s/store", dir);
  fio_cfg fc = {dir, job, n, batch, writers};

  size_t nb = n / batch;
  double *wl1 = malloc(rounds * nb * sizeof *wl1), *wlw = malloc(rounds * nb * sizeof *wlw);
  double *rl = malloc(rounds * n * sizeof *rl);
  double s1[MAXR], sw[MAXR], sr[MAXR], f1[MAXR], fw[MAXR], fu[MAXR], fr[MAXR], ld[MAXR];
  double q1[MAXR], qw[MAXR], qr[MAXR]; /* per-round store/fio ratios (same round) */
  e8s_test_put_times pt1 = {0}, ptw = {0};
  const char *engine = "pwrite";
  double lmax = 0;
  for (int k = 0; k < rounds; k++) {
    ld[k] = load1();
    if (ld[k] > lmax) lmax = ld[k];
    /* odd rounds run fio first: neither side always gets the disk right after the other */
    int fio_first = k % 2;
    store_out o;
    for (int side = 0; side < 2; side++) {
      if (side == fio_first) {
        o = store_run(data, n, batch, pw, 1, wl1 + k * nb, rl + k * n);
        s1[k] = o.w_gbps, sr[k] = o.r_gbps, engine = o.engine;
        if (k == rounds / 2) pt1 = o.pt;
      } else {
        f1[k] = run_fio(&fc, "write-1", "write", n); /* its file is read-1's */
        double frp[READ_PASSES];
        for (int pass = 0; pass < READ_PASSES; pass++) frp[pass] = run_fio(&fc, "read-1", "read", n);
        fr[k] = median(frp, READ_PASSES);
        snprintf(cmd, sizeof cmd, "rm -f %s/fio.* && sync -f %s", dir, dir);
        sh(cmd);
      }
    }
    for (int side = 0; side < 2; side++) {
      if (side == fio_first) {
        o = store_run(data, n, batch, pw, writers, wlw + k * nb, NULL);
        sw[k] = o.w_gbps;
        if (k == rounds / 2) ptw = o.pt;
      } else {
        fw[k] = run_fio(&fc, "write-W", "write", n / (size_t)writers);
        sh(cmd);
        fu[k] = run_fio(&fc, "write-uring", "write", n);
        sh(cmd);
      }
    }
    q1[k] = s1[k] / f1[k], qw[k] = sw[k] / (fw[k] > fu[k] ? fw[k] : fu[k]), qr[k] = sr[k] / fr[k];
    fprintf(stderr, "round %d (load %.1f, %s first): write 1 writer store %.3f fio %.3f (%.0f%%) | "
            "%d writers store %.3f fio psync %.3f (%.0f%%) fio io_uring %.3f (%.0f%%) | read "
            "store %.3f fio %.3f (%.0f%%) GB/s\n", k + 1, ld[k], fio_first ? "fio" : "store",
            s1[k], f1[k], 100 * q1[k], writers, sw[k], fw[k], 100 * sw[k] / fw[k], fu[k],
            100 * sw[k] / fu[k], sr[k], fr[k], 100 * qr[k]);
  }
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  sh(cmd);

  double m1 = median(s1, rounds), mw = median(sw, rounds), mr = median(sr, rounds);
  double mf1 = median(f1, rounds), mfw = median(fw, rounds), mfu = median(fu, rounds);
  double mfr = median(fr, rounds), mfbest = mfw > mfu ? mfw : mfu;
  double w1_p50 = pct(wl1, rounds * nb, 0.5), w1_p99 = pct(wl1, rounds * nb, 0.99);
  double ww_p50 = pct(wlw, rounds * nb, 0.5), ww_p99 = pct(wlw, rounds * nb, 0.99);
  double r_p50 = pct(rl, rounds * n, 0.5), r_p99 = pct(rl, rounds * n, 0.99);

  json_t *o = json_object();
  json_object_set_new(o, "record_bytes", json_integer(REC));
  json_object_set_new(o, "write_GBps", json_real(mw));
  json_object_set_new(o, "read_GBps", json_real(mr));
  json_object_set_new(o, "write_p99_ms", json_real(ww_p99));
  json_object_set_new(o, "read_p99_ms", json_real(r_p99));
  json_object_set_new(o, "fio_write_GBps", json_real(mfbest));
  json_object_set_new(o, "fio_read_GBps", json_real(mfr));
  json_object_set_new(o, "engine", json_string(engine));
  json_object_set_new(o, "writers", json_integer(writers));
  json_object_set_new(o, "batch", json_integer((json_int_t)batch));
  json_object_set_new(o, "rounds", json_integer(rounds));
  json_object_set_new(o, "fio_writeW_GBps", json_real(mfw));
  json_object_set_new(o, "fio_write_uring_GBps", json_real(mfu));
  json_object_set_new(o, "write1_GBps", json_real(m1));
  json_object_set_new(o, "write1_p99_ms", json_real(w1_p99));
  json_object_set_new(o, "fio_write1_GBps", json_real(mf1));
  json_object_set_new(o, "load1_max", json_real(lmax));
  /* paired ratios: each round's store run against the fio runs next to it (the disk's speed
   * moves 3-10x between minutes; a pair sees the same minute), median and spread */
  ratio_set(o, "write_ratio", qw, rounds);
  ratio_set(o, "write1_ratio", q1, rounds);
  ratio_set(o, "read_ratio", qr, rounds);
  json_object_set_new(o, "read_pattern",
                      json_string("both buffered (page cache, no O_DIRECT), cold: store e8s_get "
                                  "of 1 MiB records in write order after POSIX_FADV_DONTNEED of "
                                  "the segments; fio read-1 psync bs=1M invalidate=1 direct=0; "
                                  "each side reads right after its own write, median of 3 "
                                  "passes per round"));
  if (json_dump_file(o, outp, JSON_INDENT(2)) != 0) return fprintf(stderr, "write %s\n", outp), 1;
  json_decref(o);

  printf("store bench: %zu records of %u bytes, one fdatasync per put of %zu records, engine %s, "
         "directory %s, medians of %d round(s), 1-min load %.1f..%.1f\n", n, REC, batch, engine,
         dir, rounds, ld[0], lmax);
  printf("%-24s %10s %10s %9s %12s %12s\n", "", "store GB/s", "fio GB/s", "store/fio",
         "store p50 ms", "store p99 ms");
  printf("%-24s %10.3f %10.3f %8.0f%% %12.2f %12.2f   fio write-1\n", "write, 1 writer", m1, mf1,
         100 * m1 / mf1, w1_p50, w1_p99);
  printf("%-22s%2d %10.3f %10.3f %8.0f%% %12.2f %12.2f   fio write-W (%d psync jobs)\n",
         "write, writers:", writers, mw, mfw, 100 * mw / mfw, ww_p50, ww_p99, writers);
  printf("%-22s%2d %10.3f %10.3f %8.0f%%                             fio write-uring "
         "(iodepth %zu)\n", "write, writers:", writers, mw, mfu, 100 * mw / mfu, batch);
  printf("%-24s %10.3f %10.3f %8.0f%% %12.2f %12.2f   fio read-1 (per record; cold)\n", "read",
         mr, mfr, 100 * mr / mfr, r_p50, r_p99);
  printf("paired per-round store/fio ratios, median [min..max] over %d rounds: write %d writers "
         "%.0f%% [%.0f..%.0f] (vs the faster fio job of the round), write 1 writer %.0f%% "
         "[%.0f..%.0f], read %.0f%% [%.0f..%.0f]\n", rounds, writers, 100 * median(qw, rounds),
         100 * vmin(qw, rounds), 100 * vmax(qw, rounds), 100 * median(q1, rounds),
         100 * vmin(q1, rounds), 100 * vmax(q1, rounds), 100 * median(qr, rounds),
         100 * vmin(qr, rounds), 100 * vmax(qr, rounds));
  printf("store time by stage (middle round; stages overlap with several writers):\n");
  print_times("1 writer", &pt1, s1[rounds / 2], n);
  char lbl[32];
  snprintf(lbl, sizeof lbl, "%d writers", writers);
  print_times(lbl, &ptw, sw[rounds / 2], n);
  printf("wrote %s\n", outp);
  free(wl1), free(wlw), free(rl);
  return 0;
}
