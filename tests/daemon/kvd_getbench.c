/* kvd_getbench.c: `make bench-daemon-get` -> build/bench/daemon_get.json.
 *
 * The large-transfer case of an end-to-end restore: a client fetching the chunks of a
 * 32K-token prefix of an 8B-class model (32 layers, 8 KV heads, head_dim 128, fp16, 256-token
 * chunks = 128 chunks, about 5.2 MB each encoded at K3V2: ~660 MB) with GetChunks from a real
 * e8kvd, through libe8kv (the C client: reassembly included, as an engine would run it).
 * Measured for 1 and P parallel calls (each fetching its contiguous slice of the key list),
 * over the unix socket and loopback TCP, and for two piece sizes (the default 3 MiB and the
 * largest a client may ask). Reported: GB/s of encoded bytes (1 GB = 1e9 bytes), best and
 * median of --reps runs, CPU seconds per GB on each side (the daemon's from /proc, the
 * client's from getrusage: on a shared, loaded machine wall-clock GB/s mostly measures the
 * other tenants, CPU per GB measures us), and the daemon's peak RSS.
 *
 * Setup cost is kept low: one chunk is encoded once and put --chunks times, each as the first
 * chunk of its own sequence (other token ids, so another key and another stored record).
 *
 * Usage: kvd_getbench --e8kvd PATH --out FILE [--chunks N] [--reps R] [--parallel 1,4,8]
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/resource.h>

#include <jansson.h>

#include "clients/c/e8kv.h"
#include "tests/daemon/kvt_util.h"

typedef struct gb_slice {
  e8kv_client *c;
  uint8_t (*keys)[32];
  size_t n;
  uint32_t piece;
  uint64_t bytes;
  e8kv_status rc;
  char msg[E8KV_ERROR_MESSAGE_MAX];
} gb_slice;

static double gb_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int gb_on_chunk(void *ctx, const e8kv_chunk *ch) {
  ((gb_slice *)ctx)->bytes += ch->bytes;
  return 0;
}

static void *gb_fetch(void *arg) {
  gb_slice *s = arg;
  ProtobufCBinaryData *kb = calloc(s->n, sizeof *kb);
  E8kv__V1__ChunkKeys ck;
  e8kv__v1__chunk_keys__init(&ck);
  for (size_t i = 0; i < s->n; i++) kb[i] = (ProtobufCBinaryData){32, s->keys[i]};
  ck.keys = kb;
  ck.n_keys = s->n;
  E8kv__V1__GetChunksRequest rq;
  e8kv__v1__get_chunks_request__init(&rq);
  rq.selection_case = E8KV__V1__GET_CHUNKS_REQUEST__SELECTION_KEYS;
  rq.keys = &ck;
  rq.encoding = E8KV__V1__ENCODING__ENCODING_E8_FRAME;
  rq.max_piece_bytes = s->piece;
  e8kv_error err = {0};
  s->bytes = 0;
  s->rc = e8kv_get_chunks(s->c, &rq, gb_on_chunk, s, &err);
  if (s->rc) snprintf(s->msg, sizeof s->msg, "%s", err.message);
  free(kb);
  return NULL;
}

/* One run: P threads, each its slice. Returns seconds, or -1 on an error. */
static double gb_run(e8kv_client *c, uint8_t (*keys)[32], size_t n, int p, uint32_t piece,
                     uint64_t *bytes) {
  gb_slice s[64];
  pthread_t th[64];
  double t0 = gb_now();
  for (int i = 0; i < p; i++) {
    size_t a = n * (size_t)i / (size_t)p, b = n * (size_t)(i + 1) / (size_t)p;
    s[i] = (gb_slice){.c = c, .keys = keys + a, .n = b - a, .piece = piece};
    pthread_create(&th[i], NULL, gb_fetch, &s[i]);
  }
  *bytes = 0;
  int bad = 0;
  for (int i = 0; i < p; i++) {
    pthread_join(th[i], NULL);
    *bytes += s[i].bytes;
    if (s[i].rc) {
      fprintf(stderr, "getbench: call %d: %s: %s\n", i, e8kv_status_name(s[i].rc), s[i].msg);
      bad = 1;
    }
  }
  return bad ? -1 : gb_now() - t0;
}

/* CPU seconds (user + system) used so far by process pid (0: this process). */
static double gb_cpu_s(pid_t pid) {
  if (pid == 0) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 +
           (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6;
  }
  char path[64], buf[1024];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
  FILE *f = fopen(path, "r");
  size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
  if (f) fclose(f);
  buf[n] = 0;
  char *p = strrchr(buf, ')'); /* fields after the command name: state is field 3 */
  unsigned long ut = 0, stime = 0;
  if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut,
                  &stime) == 2)
    return (double)(ut + stime) / (double)sysconf(_SC_CLK_TCK);
  return 0;
}

static int gb_cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* Puts the encoded chunk n times (distinct token ids); keys into keys[]. */
static int gb_fill(const char *addr, const kvt_fp *fp, const uint8_t *frame, size_t len,
                   size_t n, uint8_t (*keys)[32]) {
  e8kv_options o;
  e8kv_options_init(&o);
  o.address = addr;
  e8kv_client *c;
  e8kv_error err;
  if (e8kv_client_open(&o, &c, &err)) return -1;
  uint32_t tok[256];
  int rc = 0;
  for (size_t i = 0; i < n && !rc; i++) {
    kvt_tokens(tok, 256, (uint32_t)(i + 1), 0);
    E8kv__V1__PutHeader h;
    e8kv__v1__put_header__init(&h);
    h.fingerprint = (E8kv__V1__ModelFingerprint *)&fp->pb;
    h.chunk_tokens = 256;
    h.encoding = E8KV__V1__ENCODING__ENCODING_E8_FRAME;
    e8kv_put *p;
    E8kv__V1__PutChunksResponse *r = NULL;
    if (e8kv_put_begin(c, &h, &p, &err) || e8kv_put_chunk(p, tok, 256, frame, len, NULL, 0,
                                                          &err) ||
        e8kv_put_finish(p, &r, &err) || r->n_chunk_keys != 1) {
      fprintf(stderr, "getbench: put %zu: %s\n", i, err.message);
      rc = -1;
    } else {
      memcpy(keys[i], r->chunk_keys[0].data, 32);
    }
    e8kv_msg_free(r);
  }
  e8kv_client_close(c);
  return rc;
}

static long gb_rss_peak_kb(pid_t pid) {
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
  FILE *f = fopen(path, "r");
  long kb = -1;
  while (f && fgets(line, sizeof line, f))
    if (!strncmp(line, "VmHWM:", 6)) kb = strtol(line + 6, NULL, 10);
  if (f) fclose(f);
  return kb;
}

int main(int argc, char **argv) {
  const char *bin = NULL, *out = NULL, *par = "1,4,8";
  size_t n = 128;
  int reps = 3;
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--e8kvd") && i + 1 < argc) bin = argv[++i];
    else if (!strcmp(argv[i], "--out") && i + 1 < argc) out = argv[++i];
    else if (!strcmp(argv[i], "--chunks") && i + 1 < argc) n = strtoul(argv[++i], NULL, 10);
    else if (!strcmp(argv[i], "--reps") && i + 1 < argc) reps = atoi(argv[++i]);
    else if (!strcmp(argv[i], "--parallel") && i + 1 < argc) par = argv[++i];
    else bin = NULL, i = argc;
  }
  if (!bin || !out || n < 1 || reps < 1 || reps > 20) {
    fprintf(stderr, "usage: kvd_getbench --e8kvd PATH --out FILE [--chunks N] [--reps R] "
                    "[--parallel 1,4,8]\n");
    return 2;
  }
  setenv("E8KVD", bin, 1);
  kvt_set_binary_from_argv0(argv[0]);
  kvt_daemon d;
  const char *extra[] = {"--threads", "16", "--max-message-bytes", "64M", NULL};
  if (kvt_daemon_init(&d) || kvt_daemon_start(&d, 1, extra)) return 1;
  kvt_fp fp;
  kvt_fp_make(&fp, "getbench-8b", 32, 8, 128);
  size_t raw_bytes, len;
  uint16_t *raw = kvt_kv_make(&fp, 256, 7, &raw_bytes);
  uint8_t *frame = kvt_encode(&fp, raw, 256, 0, &len);
  uint8_t(*keys)[32] = calloc(n, 32);
  char tcp[64];
  snprintf(tcp, sizeof tcp, "127.0.0.1:%d", d.tcp_port);
  double t0 = gb_now();
  int rc = frame && keys ? gb_fill(d.target, &fp, frame, len, n, keys) : -1;
  fprintf(stderr, "getbench: %zu chunks of %zu bytes stored in %.1f s\n", n, len,
          gb_now() - t0);
  json_t *runs = json_array();
  const char *addrs[2] = {d.target, tcp}, *names[2] = {"unix", "tcp"};
  uint32_t pieces[2] = {0, 60u << 20};
  for (int a = 0; a < 2 && !rc; a++) {
    e8kv_options o;
    e8kv_options_init(&o);
    o.address = addrs[a];
    e8kv_client *c;
    e8kv_error err;
    if (e8kv_client_open(&o, &c, &err)) { rc = -1; break; }
    for (int pc = 0; pc < 2 && !rc; pc++)
      for (const char *q = par; *q && !rc; q = strchr(q, ',') ? strchr(q, ',') + 1 : "") {
        int p = atoi(q);
        if (p < 1 || p > 64) continue;
        double t[20], d0 = gb_cpu_s(d.pid), c0 = gb_cpu_s(0);
        uint64_t bytes = 0;
        for (int r = 0; r < reps && !rc; r++)
          if ((t[r] = gb_run(c, keys, n, p, pieces[pc], &bytes)) < 0) rc = -1;
        if (rc) break;
        double gbs = (double)bytes * reps / 1e9; /* CPU seconds per GB moved, both sides */
        double dcpu = (gb_cpu_s(d.pid) - d0) / gbs, ccpu = (gb_cpu_s(0) - c0) / gbs;
        qsort(t, (size_t)reps, sizeof t[0], gb_cmp);
        double best = (double)bytes / t[0] / 1e9, med = (double)bytes / t[reps / 2] / 1e9;
        fprintf(stderr, "getbench: %-4s piece %-8s %2d calls: %.0f MB in %.3f s best: %.2f GB/s "
                        "(median %.2f); CPU s/GB daemon %.2f client %.2f\n", names[a],
                pc ? "60MiB" : "default", p, (double)bytes / 1e6, t[0], best, med, dcpu, ccpu);
        json_t *j = json_pack("{s:s,s:I,s:i,s:I,s:f,s:f,s:f,s:f,s:f}", "transport", names[a],
                              "piece_bytes", (json_int_t)(pc ? pieces[pc] : 3u << 20),
                              "calls", p, "bytes", (json_int_t)bytes, "best_s", t[0],
                              "best_gb_per_s", best, "median_gb_per_s", med,
                              "daemon_cpu_s_per_gb", dcpu, "client_cpu_s_per_gb", ccpu);
        json_array_append_new(runs, j);
      }
    e8kv_client_close(c);
  }
  long rss = gb_rss_peak_kb(d.pid);
  int stop = kvt_daemon_stop(&d);
  kvt_daemon_cleanup(&d);
  json_t *top = json_pack("{s:s,s:I,s:I,s:i,s:f,s:o}", "shape",
                          "32 layers x 8 KV heads x 128 head_dim, fp16, 256-token chunks, K3V2",
                          "chunks", (json_int_t)n, "chunk_bytes", (json_int_t)len, "reps", reps,
                          "daemon_rss_peak_mb", rss / 1024.0, "runs", runs);
  if (!rc && json_dump_file(top, out, JSON_INDENT(2)) != 0) rc = -1;
  json_decref(top);
  free(raw);
  free(frame);
  free(keys);
  fprintf(stderr, "getbench: daemon peak RSS %.0f MB, exit %d\n", rss / 1024.0, stop);
  return rc || stop ? 1 : 0;
}
