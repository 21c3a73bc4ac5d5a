/* kvd_bench.c: `make bench-daemon` -> build/bench/daemon.json.
 *
 * What it measures. Put and get of 256-token chunks of an 8B-class KV shape (32 layers, 8 KV
 * heads, head_dim 128, fp16: 32 MiB raw per chunk) through a real e8kvd on loopback TCP
 * (127.0.0.1, data on the local disk, every put fsynced before its reply), with 1, 4 and 16
 * concurrent clients; and, in the same run, redis-server (Debian, started here on a free
 * loopback port, persistence off) storing the same chunks uncompressed (raw fp16) and once
 * more as our encoded frames, with SET/GET (hiredis).
 *
 * Load generator: this C program, one thread and one gRPC channel (or Redis connection) per
 * client, gRPC core client API (tests/daemon/kvt_client.c). Chunks are encoded with the CPU
 * codec once, before timing, as an engine's GPU codec would hand them over; each put uses
 * fresh token ids, so nothing is deduplicated. One chunk per call; latency per chunk is per
 * call (p50/p99). tokens/s = 256 x chunks / wall time of the phase.
 *
 * Usage: kvd_bench --e8kvd PATH --out FILE [--quick] [--redis-server PATH]
 */
#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <jansson.h>

#include "tests/daemon/kvt_util.h"

#define CT 256
#define L 32
#define H 8
#define D 128

typedef struct bench {
  int quick;
  int per_client;            /* chunks per client per phase */
  kvt_fp fp;
  uint8_t **frames;          /* pool of encoded chunks (position 0) */
  size_t *frame_len;
  uint16_t **raws;           /* the same chunks raw */
  size_t raw_len;
  int n_pool;
  char target[64];
  int redis_port;
} bench;

typedef struct worker {
  bench *b;
  int id, kind;              /* kind: 0 e8kvd put, 1 e8kvd get, 2 redis raw set, 3 redis raw
                                get, 4 redis enc set, 5 redis enc get */
  int clients;
  double *lat_ms;            /* per chunk */
  uint8_t (*keys)[32];       /* e8kvd keys of this worker's chunks (put fills, get reads) */
  int errors;
  pthread_barrier_t *bar;
} worker;

/* Gaussian KV (unit variance, fp16): the codec's presets are specified on Gaussian data and
 * real KV compresses at least as well, so the encoded sizes here are not flattering. */
static uint16_t *kv_gauss(size_t n, uint32_t seed) {
  uint16_t *v = malloc(n * 2);
  uint64_t x = seed * 0x9e3779b97f4a7c15ull + 12345;
  for (size_t i = 0; i < n; i += 2) {
    double u[2];
    for (int k = 0; k < 2; k++) {
      x ^= x << 13; x ^= x >> 7; x ^= x << 17;
      u[k] = ((double)(x >> 11) + 0.5) / 9007199254740992.0;
    }
    double r = sqrt(-2 * log(u[0])), t = 2 * M_PI * u[1];
    v[i] = kvt_f2h((float)(r * cos(t)));
    if (i + 1 < n) v[i + 1] = kvt_f2h((float)(r * sin(t)));
  }
  return v;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void e8kvd_put(worker *w) {
  bench *b = w->b;
  kvt_conn *c = kvt_connect(b->target, NULL, 64 << 20);
  E8kv__V1__PutHeader h;
  e8kv__v1__put_header__init(&h);
  h.fingerprint = &b->fp.pb;
  h.chunk_tokens = CT;
  h.encoding = E8KV__V1__ENCODING__ENCODING_E8_FRAME;
  uint32_t tok[CT];
  pthread_barrier_wait(w->bar);
  for (int i = 0; i < b->per_client; i++) {
    kvt_tokens(tok, CT, (uint32_t)(w->clients * 100000 + w->id * 1000 + i), 0);
    int p = (w->id + i) % b->n_pool;
    kvt_chunk ch = {tok, CT, b->frames[p], b->frame_len[p]};
    E8kv__V1__PutChunksResponse *r;
    kvt_status st;
    double t0 = now_s();
    int code = kvt_put(c, &h, &ch, 1, 0, &r, &st);
    w->lat_ms[i] = (now_s() - t0) * 1e3;
    if (code || !r || r->n_chunk_keys != 1) {
      fprintf(stderr, "bench: put failed: %d %s\n", code, st.msg);
      w->errors++;
    } else {
      memcpy(w->keys[i], r->chunk_keys[0].data, 32);
    }
    if (r) e8kv__v1__put_chunks_response__free_unpacked(r, NULL);
  }
  kvt_close(c);
}

static void e8kvd_get(worker *w) {
  bench *b = w->b;
  kvt_conn *c = kvt_connect(b->target, NULL, 64 << 20);
  pthread_barrier_wait(w->bar);
  for (int i = 0; i < b->per_client; i++) {
    E8kv__V1__GetChunksRequest gq;
    E8kv__V1__ChunkKeys ck;
    e8kv__v1__get_chunks_request__init(&gq);
    e8kv__v1__chunk_keys__init(&ck);
    ProtobufCBinaryData kb = {32, w->keys[i]};
    ck.keys = &kb;
    ck.n_keys = 1;
    gq.selection_case = E8KV__V1__GET_CHUNKS_REQUEST__SELECTION_KEYS;
    gq.keys = &ck;
    kvt_got g[1];
    size_t n = 0;
    kvt_status st;
    double t0 = now_s();
    int code = kvt_get(c, &gq, g, 1, &n, &st, 60000);
    w->lat_ms[i] = (now_s() - t0) * 1e3;
    int p = (w->id + i) % b->n_pool;
    if (code || n != 1 || g[0].len != b->frame_len[p]) {
      fprintf(stderr, "bench: get failed: %d %s\n", code, st.msg);
      w->errors++;
    }
    kvt_got_free(g, n);
  }
  kvt_close(c);
}

static void redis_run(worker *w) {
  bench *b = w->b;
  redisContext *rc = redisConnect("127.0.0.1", b->redis_port);
  if (!rc || rc->err) {
    fprintf(stderr, "bench: redis connect: %s\n", rc ? rc->errstr : "out of memory");
    w->errors++;
    pthread_barrier_wait(w->bar);
    return;
  }
  int set = w->kind == 2 || w->kind == 4, raw = w->kind == 2 || w->kind == 3;
  pthread_barrier_wait(w->bar);
  for (int i = 0; i < b->per_client; i++) {
    char key[64];
    /* two keys per client, overwritten: Redis memory stays bounded */
    snprintf(key, sizeof key, "kv:%s:%d:%d", raw ? "raw" : "enc", w->id, i % 2);
    int p = (w->id + i % 2) % b->n_pool; /* what this key holds */
    const void *data = raw ? (const void *)b->raws[p] : b->frames[p];
    size_t len = raw ? b->raw_len : b->frame_len[p];
    double t0 = now_s();
    redisReply *r = set ? redisCommand(rc, "SET %s %b", key, data, len)
                        : redisCommand(rc, "GET %s", key);
    w->lat_ms[i] = (now_s() - t0) * 1e3;
    if (!r || r->type == REDIS_REPLY_ERROR || (!set && (size_t)r->len != len)) {
      fprintf(stderr, "bench: redis %s: %s\n", set ? "SET" : "GET",
              !r ? rc->errstr : r->type == REDIS_REPLY_ERROR ? r->str : "wrong length");
      w->errors++;
    }
    if (r) freeReplyObject(r);
  }
  redisFree(rc);
}

static void *worker_main(void *arg) {
  worker *w = arg;
  if (w->kind == 0) e8kvd_put(w);
  else if (w->kind == 1) e8kvd_get(w);
  else redis_run(w);
  return NULL;
}

static int cmp_d(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

typedef struct phase_res {
  double tokens_per_s, p50_ms, p99_ms, seconds;
  int errors;
} phase_res;

/* Runs one phase with `clients` threads; workers[] keep their keys between put and get. */
static phase_res run_phase(bench *b, worker *ws, int clients, int kind) {
  pthread_t th[64];
  pthread_barrier_t bar;
  pthread_barrier_init(&bar, NULL, (unsigned)clients + 1);
  for (int i = 0; i < clients; i++) {
    ws[i].kind = kind;
    ws[i].bar = &bar;
    ws[i].errors = 0;
    pthread_create(&th[i], NULL, worker_main, &ws[i]);
  }
  pthread_barrier_wait(&bar);
  double t0 = now_s();
  for (int i = 0; i < clients; i++) pthread_join(th[i], NULL);
  double dt = now_s() - t0;
  pthread_barrier_destroy(&bar);
  int n = clients * b->per_client;
  double *all = malloc((size_t)n * sizeof *all);
  phase_res r = {.seconds = dt};
  for (int i = 0; i < clients; i++) {
    memcpy(all + i * b->per_client, ws[i].lat_ms, (size_t)b->per_client * sizeof *all);
    r.errors += ws[i].errors;
  }
  qsort(all, (size_t)n, sizeof *all, cmp_d);
  r.p50_ms = all[(n - 1) / 2];
  r.p99_ms = all[(int)ceil(0.99 * n) - 1];
  r.tokens_per_s = (double)n * CT / dt;
  free(all);
  return r;
}

/* ------------------------------------------------------------------ processes */

static pid_t start_redis(const char *bin, const char *dir, int *port) {
  for (int attempt = 0; attempt < 20; attempt++) {
    *port = 20000 + (int)((unsigned)getpid() * 7919u + (unsigned)attempt * 104729u) % 30000;
    char ps[16];
    snprintf(ps, sizeof ps, "%d", *port);
    pid_t pid = fork();
    if (pid == 0) {
      int fd = open("/dev/null", O_WRONLY);
      if (fd >= 0) { dup2(fd, 1); dup2(fd, 2); }
      execl(bin, bin, "--port", ps, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", dir, "--protected-mode", "yes",
            "--proto-max-bulk-len", "1gb", "--client-query-buffer-limit", "1gb",
            "--daemonize", "no", (char *)NULL);
      _exit(127);
    }
    for (int i = 0; i < 100; i++) {
      usleep(50 * 1000);
      redisContext *c = redisConnect("127.0.0.1", *port);
      int ok = c && !c->err;
      if (ok) {
        redisReply *r = redisCommand(c, "PING");
        ok = r && r->type == REDIS_REPLY_STATUS;
        if (r) freeReplyObject(r);
      }
      if (c) redisFree(c);
      if (ok) return pid;
      int st;
      if (waitpid(pid, &st, WNOHANG) == pid) break; /* port taken: try another */
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
  }
  return -1;
}

static double vm_hwm_mb(pid_t pid) {
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
  FILE *f = fopen(path, "r");
  double mb = 0;
  while (f && fgets(line, sizeof line, f))
    if (strncmp(line, "VmHWM:", 6) == 0) mb = strtod(line + 6, NULL) / 1024.0;
  if (f) fclose(f);
  return mb;
}

/* ------------------------------------------------------------------ main */

static json_t *run_json(int clients, const phase_res *pe, const phase_res *ge,
                        const phase_res *rr[2], const phase_res *re[2], double enc_bytes,
                        double raw_bytes) {
  json_t *o = json_object();
  json_object_set_new(o, "clients", json_integer(clients));
  json_object_set_new(o, "put_tokens_per_s", json_real(pe->tokens_per_s));
  json_object_set_new(o, "get_tokens_per_s", json_real(ge->tokens_per_s));
  json_object_set_new(o, "put_p50_ms", json_real(pe->p50_ms));
  json_object_set_new(o, "put_p99_ms", json_real(pe->p99_ms));
  json_object_set_new(o, "get_p50_ms", json_real(ge->p50_ms));
  json_object_set_new(o, "get_p99_ms", json_real(ge->p99_ms));
  json_object_set_new(o, "put_encoded_gb_s", json_real(pe->tokens_per_s / CT * enc_bytes / 1e9));
  json_object_set_new(o, "get_encoded_gb_s", json_real(ge->tokens_per_s / CT * enc_bytes / 1e9));
  json_object_set_new(o, "put_raw_fp16_gb_s", json_real(pe->tokens_per_s / CT * raw_bytes / 1e9));
  json_object_set_new(o, "get_raw_fp16_gb_s", json_real(ge->tokens_per_s / CT * raw_bytes / 1e9));
  json_object_set_new(o, "redis_raw_put_tokens_per_s", json_real(rr[0]->tokens_per_s));
  json_object_set_new(o, "redis_raw_get_tokens_per_s", json_real(rr[1]->tokens_per_s));
  json_object_set_new(o, "redis_encoded_put_tokens_per_s", json_real(re[0]->tokens_per_s));
  json_object_set_new(o, "redis_encoded_get_tokens_per_s", json_real(re[1]->tokens_per_s));
  json_object_set_new(o, "redis_raw_put_p99_ms", json_real(rr[0]->p99_ms));
  json_object_set_new(o, "redis_raw_get_p99_ms", json_real(rr[1]->p99_ms));
  json_object_set_new(o, "put_vs_redis_raw", json_real(pe->tokens_per_s / rr[0]->tokens_per_s));
  json_object_set_new(o, "get_vs_redis_raw", json_real(ge->tokens_per_s / rr[1]->tokens_per_s));
  int errors = pe->errors + ge->errors + rr[0]->errors + rr[1]->errors + re[0]->errors +
               re[1]->errors;
  json_object_set_new(o, "errors", json_integer(errors));
  return o;
}

static int parse_args(int argc, char **argv, const char **e8kvd, const char **out,
                      const char **redis, int *quick) {
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--quick")) *quick = 1;
    else if (!strcmp(argv[i], "--e8kvd") && i + 1 < argc) *e8kvd = argv[++i];
    else if (!strcmp(argv[i], "--out") && i + 1 < argc) *out = argv[++i];
    else if (!strcmp(argv[i], "--redis-server") && i + 1 < argc) *redis = argv[++i];
    else { fprintf(stderr, "usage: kvd_bench --e8kvd PATH --out FILE [--quick] "
                           "[--redis-server PATH]\n"); return -1; }
  }
  return *e8kvd && *out ? 0 : -1;
}

int main(int argc, char **argv) {
  const char *e8kvd = NULL, *out = NULL, *redis_bin = "/usr/bin/redis-server";
  static bench b;
  if (parse_args(argc, argv, &e8kvd, &out, &redis_bin, &b.quick) != 0) return 2;
  setenv("E8KVD", e8kvd, 1);
  kvt_set_binary_from_argv0(argv[0]);
  kvt_fp_make(&b.fp, "bench/llama-8b-shape", L, H, D);
  b.fp.rope.theta = b.fp.fp.rope.theta = 500000;
  b.n_pool = b.quick ? 2 : 4;
  b.per_client = b.quick ? 3 : 6;
  const int levels_full[] = {1, 4, 16}, levels_quick[] = {1, 4};
  const int *levels = b.quick ? levels_quick : levels_full;
  int n_levels = b.quick ? 2 : 3;
  /* the chunk pool, encoded before timing */
  b.frames = calloc((size_t)b.n_pool, sizeof *b.frames);
  b.frame_len = calloc((size_t)b.n_pool, sizeof *b.frame_len);
  b.raws = calloc((size_t)b.n_pool, sizeof *b.raws);
  double enc_total = 0, t0 = now_s();
  for (int i = 0; i < b.n_pool; i++) {
    b.raw_len = (size_t)L * 2 * H * CT * D * 2;
    b.raws[i] = kv_gauss(b.raw_len / 2, 1000 + (uint32_t)i);
    b.frames[i] = kvt_encode(&b.fp, b.raws[i], CT, 0, &b.frame_len[i]);
    if (!b.frames[i]) { fprintf(stderr, "bench: encode failed\n"); return 1; }
    enc_total += (double)b.frame_len[i];
  }
  double enc_s = now_s() - t0, enc_bytes = enc_total / b.n_pool, raw_bytes = (double)b.raw_len;
  fprintf(stderr, "bench: %d chunks encoded in %.1f s: %.2f MiB raw -> %.2f MiB (%.3f bpe)\n",
          b.n_pool, enc_s, raw_bytes / 1048576, enc_bytes / 1048576,
          enc_bytes * 8 / ((double)L * 2 * H * D * CT));
  kvt_daemon d;
  if (kvt_daemon_init(&d) != 0) return 1;
  const char *extra[] = {"--threads=16", NULL};
  if (kvt_daemon_start(&d, 1, extra) != 0) return 1;
  snprintf(b.target, sizeof b.target, "127.0.0.1:%d", d.tcp_port);
  char rdir[320];
  snprintf(rdir, sizeof rdir, "%s/redis", d.dir);
  mkdir(rdir, 0700);
  pid_t rpid = start_redis(redis_bin, rdir, &b.redis_port);
  if (rpid < 0) { fprintf(stderr, "bench: cannot start %s\n", redis_bin); kvt_daemon_cleanup(&d); return 1; }
  json_t *runs = json_array();
  int best = 0;
  double best_score = -1;
  phase_res res[3][6];
  for (int li = 0; li < n_levels; li++) {
    int clients = levels[li];
    worker *ws = calloc((size_t)clients, sizeof *ws);
    for (int i = 0; i < clients; i++) {
      ws[i] = (worker){.b = &b, .id = i, .clients = clients};
      ws[i].lat_ms = calloc((size_t)b.per_client, sizeof(double));
      ws[i].keys = calloc((size_t)b.per_client, 32);
    }
    for (int k = 0; k < 6; k++) res[li][k] = run_phase(&b, ws, clients, k);
    const phase_res *rr[2] = {&res[li][2], &res[li][3]}, *re[2] = {&res[li][4], &res[li][5]};
    json_array_append_new(runs, run_json(clients, &res[li][0], &res[li][1], rr, re, enc_bytes,
                                         raw_bytes));
    double score = sqrt(res[li][0].tokens_per_s * res[li][1].tokens_per_s);
    if (score > best_score) { best_score = score; best = li; }
    fprintf(stderr, "bench: %2d clients: e8kvd put %.0f get %.0f tok/s | redis raw set %.0f "
                    "get %.0f | redis encoded set %.0f get %.0f\n", clients,
            res[li][0].tokens_per_s, res[li][1].tokens_per_s, res[li][2].tokens_per_s,
            res[li][3].tokens_per_s, res[li][4].tokens_per_s, res[li][5].tokens_per_s);
    for (int i = 0; i < clients; i++) { free(ws[i].lat_ms); free(ws[i].keys); }
    free(ws);
  }
  double rss = vm_hwm_mb(d.pid);
  kill(rpid, SIGTERM);
  waitpid(rpid, NULL, 0);
  int stop_rc = kvt_daemon_stop(&d);
  kvt_daemon_cleanup(&d);
  const phase_res *rr[2] = {&res[best][2], &res[best][3]}, *re[2] = {&res[best][4], &res[best][5]};
  json_t *top = run_json(levels[best], &res[best][0], &res[best][1], rr, re, enc_bytes,
                         raw_bytes);
  json_object_set_new(top, "runs", runs);
  json_object_set_new(top, "rss_peak_mb", json_real(rss));
  json_object_set_new(top, "quick", json_boolean(b.quick));
  json_object_set_new(top, "chunks_per_client_per_phase", json_integer(b.per_client));
  json_object_set_new(top, "chunk_tokens", json_integer(CT));
  json_object_set_new(top, "shape", json_string("32 layers x 8 KV heads x head_dim 128, fp16"));
  json_object_set_new(top, "raw_fp16_bytes_per_chunk", json_real(raw_bytes));
  json_object_set_new(top, "encoded_bytes_per_chunk", json_real(enc_bytes));
  json_object_set_new(top, "bpe", json_real(enc_bytes * 8 / ((double)L * 2 * H * D * CT)));
  json_object_set_new(top, "transport", json_string("loopback TCP 127.0.0.1, one connection per client"));
  json_object_set_new(top, "load_generator",
                      json_string("tests/daemon/kvd_bench.c: C threads, gRPC core client "
                                  "(kvt_client.c) / hiredis; one chunk per call"));
  json_object_set_new(top, "baseline", json_string("redis-server (Debian), persistence off, "
                                                   "SET/GET of raw fp16 chunks and of encoded "
                                                   "frames, same run, same machine"));
  json_object_set_new(top, "e8kvd_durability", json_string("every put fdatasync'ed and indexed "
                                                           "before its reply"));
  int rc = json_dump_file(top, out, JSON_INDENT(2)) == 0 ? 0 : 1;
  json_decref(top);
  int errors = 0;
  for (int li = 0; li < n_levels; li++)
    for (int k = 0; k < 6; k++) errors += res[li][k].errors;
  if (errors || stop_rc != 0) {
    fprintf(stderr, "bench: %d errors, e8kvd exit %d\n", errors, stop_rc);
    return 1;
  }
  fprintf(stderr, "bench: wrote %s (rss_peak_mb %.0f)\n", out, rss);
  return rc;
}
