/* kvt_util.c: daemon process control, synthetic KV and call helpers (see kvt_util.h). */
#include "tests/daemon/kvt_util.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static char g_bin[PATH_MAX] = "";

void kvt_set_binary_from_argv0(const char *argv0) {
  const char *env = getenv("E8KVD");
  if (env && *env) { snprintf(g_bin, sizeof g_bin, "%s", env); return; }
  char tmp[PATH_MAX - 64];
  snprintf(tmp, sizeof tmp, "%s", argv0);
  char *slash = strrchr(tmp, '/');
  if (slash) *slash = 0; else snprintf(tmp, sizeof tmp, ".");
  snprintf(g_bin, sizeof g_bin, "%s/../../bin/e8kvd", tmp);
}

int kvt_daemon_init(kvt_daemon *d) {
  memset(d, 0, sizeof *d);
  const char *t = getenv("TMPDIR");
  snprintf(d->dir, sizeof d->dir, "%s/kvdtest.XXXXXX", t && *t ? t : "/tmp");
  if (!mkdtemp(d->dir)) return -1;
  snprintf(d->data, sizeof d->data, "%s/data", d->dir);
  snprintf(d->target, sizeof d->target, "unix:%s/kvd.sock", d->dir);
  snprintf(d->log, sizeof d->log, "%s/kvd.log", d->dir);
  return 0;
}

double kvt_now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void sleep_ms(int ms) {
  struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

/* Scans the log for the last "event=ready" (after `from` bytes) and the ports. */
static int read_ready(kvt_daemon *d, long from, int *ready) {
  FILE *f = fopen(d->log, "r");
  if (!f) return -1;
  fseek(f, from, SEEK_SET);
  char line[4096];
  *ready = 0;
  while (fgets(line, sizeof line, f)) {
    char *p;
    if (strstr(line, "event=listen") && strstr(line, "addr=127.0.0.1:") &&
        (p = strstr(line, " port=")))
      d->tcp_port = atoi(p + 6);
    if (strstr(line, "event=ready")) {
      *ready = 1;
      if ((p = strstr(line, "metrics_port="))) d->metrics_port = atoi(p + 13);
    }
    if (strstr(line, "event=startup_failed")) { fclose(f); return -1; }
  }
  fclose(f);
  return 0;
}

int kvt_daemon_start(kvt_daemon *d, int tcp, const char *const *extra) {
  char listen[400], ddir[320];
  snprintf(listen, sizeof listen, "--listen=%s%s", d->target, tcp ? ",127.0.0.1:0" : "");
  snprintf(ddir, sizeof ddir, "--data-dir=%s", d->data);
  const char *argv[48] = {g_bin, ddir, listen, "--metrics-listen=127.0.0.1:0",
                          "--threads=4", "--shutdown-grace-ms=3000"};
  int n = 6;
  for (int i = 0; extra && extra[i] && n < 46; i++) argv[n++] = extra[i];
  argv[n] = NULL;
  FILE *lf = fopen(d->log, "a");
  if (!lf) return -1;
  fseek(lf, 0, SEEK_END);
  long from = ftell(lf);
  fflush(lf);
  pid_t parent = getpid();
  pid_t pid = fork();
  if (pid == 0) {
    /* The daemon dies with the test that started it: a test that crashes, fails an
     * assertion outside its teardown or is killed by a timeout left e8kvd running (an
     * orphan holding a socket, a data dir and memory on a shared machine). */
    if (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != parent) _exit(127);
    dup2(fileno(lf), 2);
    dup2(fileno(lf), 1);
    execv(g_bin, (char *const *)argv);
    _exit(127);
  }
  fclose(lf);
  if (pid < 0) return -1;
  d->pid = pid;
  /* 60 s only bounds a hang: e8kvd is ready in well under a second on an idle machine, and
   * 300 polls of 50 ms (the old bound, 15 s) were not much on a loaded 2-core one */
  for (double t0 = kvt_now_s(); kvt_now_s() - t0 < 60;) {
    int ready = 0, st;
    if (read_ready(d, from, &ready) != 0 || waitpid(pid, &st, WNOHANG) == pid) {
      fprintf(stderr, "kvt: e8kvd (%s) failed to start, see %s\n", g_bin, d->log);
      d->pid = 0;
      return -1;
    }
    if (ready) return 0;
    sleep_ms(50);
  }
  kvt_daemon_kill9(d);
  return -1;
}

int kvt_daemon_stop(kvt_daemon *d) {
  if (d->pid <= 0) return -1;
  kill(d->pid, SIGTERM);
  for (double t0 = kvt_now_s(); kvt_now_s() - t0 < 60;) { /* bounds a hang only */
    int st;
    if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
      d->pid = 0;
      return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }
    sleep_ms(50);
  }
  kvt_daemon_kill9(d);
  return -1;
}

void kvt_daemon_kill9(kvt_daemon *d) {
  if (d->pid <= 0) return;
  kill(d->pid, SIGKILL);
  int st;
  waitpid(d->pid, &st, 0);
  d->pid = 0;
}

void kvt_daemon_cleanup(kvt_daemon *d) {
  if (d->pid > 0) kvt_daemon_kill9(d);
  char cmd[400];
  if (*d->dir && !getenv("KVT_KEEP")) {
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", d->dir);
    if (system(cmd) != 0) fprintf(stderr, "kvt: could not remove %s\n", d->dir);
  }
}

void kvt_fp_make(kvt_fp *f, const char *model, uint32_t layers, uint32_t heads, uint32_t dim) {
  memset(f, 0, sizeof *f);
  snprintf(f->model, sizeof f->model, "%s", model);
  e8kv__v1__model_fingerprint__init(&f->pb);
  e8kv__v1__rope_config__init(&f->rope);
  e8kv__v1__codec_config__init(&f->codec);
  f->pb.model_id = f->model;
  f->pb.n_layers = layers;
  f->pb.n_kv_heads = heads;
  f->pb.head_dim = dim;
  f->pb.source_dtype = E8KV__V1__DTYPE__DTYPE_FP16;
  f->rope.theta = 100000;
  f->rope.layout = E8KV__V1__ROPE_LAYOUT__ROPE_LAYOUT_SPLIT_HALF;
  f->pb.rope = &f->rope;
  f->pb.codec = &f->codec;
  snprintf(f->fp.model_id, sizeof f->fp.model_id, "%s", model);
  f->fp.n_layers = layers;
  f->fp.n_kv_heads = heads;
  f->fp.head_dim = dim;
  f->fp.src_dtype = E8C_DTYPE_F16;
  f->fp.rope.type = E8C_ROPE_DEFAULT;
  f->fp.rope.layout = E8C_ROPE_LAYOUT_SPLIT_HALF;
  f->fp.rope.rotary_dim = dim;
  f->fp.rope.theta = 100000;
  e8c_config_default(&f->fp.config);
  /* The API's counts mean what they say (0 = none): send the codec's default explicitly. */
  f->codec.sink_tokens = f->fp.config.sink_tokens;
  f->codec.recent_window_tokens = f->fp.config.recent_tokens;
}

float kvt_h2f(uint16_t h) {
  uint32_t s = (uint32_t)(h >> 15) << 31, e = (h >> 10) & 31, m = h & 1023, u;
  if (e == 0) {
    float v = ldexpf((float)m, -24);
    return s ? -v : v;
  }
  if (e == 31) u = s | 0x7f800000u | (m << 13);
  else u = s | ((e + 112) << 23) | (m << 13);
  float f;
  memcpy(&f, &u, 4);
  return f;
}

uint16_t kvt_f2h(float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  uint16_t s = (uint16_t)((u >> 16) & 0x8000);
  float a = fabsf(f);
  if (a >= 65520.0f) return s | 0x7c00;
  if (a < 6.103515625e-05f) return s | (uint16_t)lrintf(a * 16777216.0f);
  int e;
  float m = frexpf(a, &e); /* a = m * 2^e, m in [0.5, 1) */
  uint32_t mant = (uint32_t)lrintf((m * 2 - 1) * 1024);
  if (mant == 1024) { mant = 0; e++; }
  return s | (uint16_t)((uint32_t)(e + 14) << 10) | (uint16_t)mant;
}

uint16_t *kvt_kv_make(const kvt_fp *f, uint32_t n_tokens, uint32_t seed, size_t *bytes) {
  uint32_t L = f->pb.n_layers, H = f->pb.n_kv_heads, D = f->pb.head_dim;
  size_t n = (size_t)L * 2 * H * n_tokens * D;
  uint16_t *v = malloc(n * 2);
  uint64_t x = seed * 0x9e3779b97f4a7c15ull + 1;
  size_t i = 0;
  for (uint32_t l = 0; l < L; l++)
    for (uint32_t kv = 0; kv < 2; kv++)
      for (uint32_t h = 0; h < H; h++)
        for (uint32_t t = 0; t < n_tokens; t++)
          for (uint32_t d = 0; d < D; d++) {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            float noise = (float)((x >> 11) & 0xffff) / 65536.0f - 0.5f;
            float base = sinf(0.05f * (float)t * (float)(d % 7 + 1) + (float)(h + l + d));
            float amp = kv ? 0.5f : 1.0f + (float)(d % 8) * 0.25f;
            v[i++] = kvt_f2h(amp * (base + 0.3f * noise));
          }
  *bytes = n * 2;
  return v;
}

uint8_t *kvt_encode(const kvt_fp *f, const uint16_t *raw, uint32_t n_tokens,
                    uint32_t first_pos, size_t *len) {
  int64_t err = 0;
  e8c_ctx *ctx = e8c_ctx_create(&f->fp, &err);
  if (!ctx) return NULL;
  int64_t max = e8c_chunk_max_size(ctx, n_tokens);
  uint8_t *out = malloc((size_t)max);
  e8c_chunk_params p = {.n_tokens = n_tokens, .first_pos = first_pos};
  int64_t n = e8c_chunk_encode(ctx, &p, raw, E8C_DTYPE_F16, out, (size_t)max);
  e8c_ctx_free(ctx);
  if (e8c_is_error(n)) { free(out); return NULL; }
  *len = (size_t)n;
  return out;
}

void kvt_tokens(uint32_t *out, size_t n, uint32_t seed, size_t t0) {
  for (size_t i = 0; i < n; i++)
    out[i] = (uint32_t)(((t0 + i) * 2654435761u + seed * 40503u) % 49152u);
}

int kvt_put(kvt_conn *c, const E8kv__V1__PutHeader *h, const kvt_chunk *chunks, size_t n,
            size_t piece, E8kv__V1__PutChunksResponse **resp, kvt_status *st) {
  *resp = NULL;
  kvt_stream *s = kvt_open(c, KVT_SVC "PutChunks", 60000);
  E8kv__V1__PutChunksRequest m;
  e8kv__v1__put_chunks_request__init(&m);
  m.header = (E8kv__V1__PutHeader *)h;
  int ok = kvt_send(s, &m.base) == 0;
  m.header = NULL;
  for (size_t i = 0; ok && i < n; i++) {
    size_t step = piece ? piece : chunks[i].len, off = 0;
    do {
      size_t k = chunks[i].len - off < step ? chunks[i].len - off : step;
      E8kv__V1__ChunkPiece p;
      e8kv__v1__chunk_piece__init(&p);
      if (off == 0) {
        p.n_token_ids = chunks[i].n_tokens;
        p.token_ids = (uint32_t *)chunks[i].tokens;
      }
      p.data.data = (uint8_t *)chunks[i].data + off;
      p.data.len = k;
      p.more = off + k < chunks[i].len;
      E8kv__V1__ChunkPiece *pp = &p;
      m.n_pieces = 1;
      m.pieces = &pp;
      ok = kvt_send(s, &m.base) == 0;
      off += k;
    } while (ok && off < chunks[i].len);
  }
  if (ok) kvt_close_send(s);
  uint8_t *b = NULL;
  size_t len = 0;
  if (kvt_recv(s, &b, &len) == 1) {
    *resp = e8kv__v1__put_chunks_response__unpack(NULL, len, b);
    free(b);
  }
  int code = kvt_finish(s, st);
  if (code && *resp) { e8kv__v1__put_chunks_response__free_unpacked(*resp, NULL); *resp = NULL; }
  kvt_free(s);
  return code;
}

int kvt_get(kvt_conn *c, const E8kv__V1__GetChunksRequest *rq, kvt_got *out, size_t max,
            size_t *n_out, kvt_status *st, int timeout_ms) {
  kvt_stream *s = kvt_open(c, KVT_SVC "GetChunks", kvt_hang_ms(timeout_ms));
  *n_out = 0;
  int bad = 0;
  if (kvt_send(s, &rq->base) == 0 && kvt_close_send(s) == 0) {
    uint8_t *b;
    size_t len;
    while (!bad && kvt_recv(s, &b, &len) == 1) {
      E8kv__V1__GetChunksResponse *r = e8kv__v1__get_chunks_response__unpack(NULL, len, b);
      free(b);
      if (!r || r->chunk_index >= max) { bad = 1; if (r) e8kv__v1__get_chunks_response__free_unpacked(r, NULL); break; }
      kvt_got *g = &out[r->chunk_index];
      if (r->offset == 0) {
        memset(g, 0, sizeof *g);
        g->data = malloc(r->chunk_bytes + 1);
        g->start_token = r->start_token;
        g->n_tokens = r->n_tokens;
        g->encoding = r->encoding;
        g->token_ids = calloc(r->n_token_ids + 1, sizeof *g->token_ids);
        memcpy(g->token_ids, r->token_ids, r->n_token_ids * sizeof *g->token_ids);
        if (r->chunk_key.len == 32) memcpy(g->key, r->chunk_key.data, 32);
      }
      if (!g->data || r->offset != g->len || r->offset + r->data.len > r->chunk_bytes) bad = 1;
      else {
        memcpy(g->data + g->len, r->data.data, r->data.len);
        g->len += r->data.len;
        if (r->last_piece) *n_out = r->chunk_index + 1;
      }
      e8kv__v1__get_chunks_response__free_unpacked(r, NULL);
    }
  }
  int code = kvt_finish(s, st);
  kvt_free(s);
  if (bad && code == 0) { st->code = 13; snprintf(st->msg, sizeof st->msg, "bad pieces"); return 13; }
  return code;
}

void kvt_got_free(kvt_got *g, size_t n) {
  for (size_t i = 0; i < n; i++) {
    free(g[i].data);
    free(g[i].token_ids);
    g[i].data = NULL;
    g[i].token_ids = NULL;
  }
}

int kvt_stats(kvt_conn *c, E8kv__V1__GetStatsResponse **resp, kvt_status *st) {
  E8kv__V1__GetStatsRequest q;
  e8kv__v1__get_stats_request__init(&q);
  ProtobufCMessage *m = NULL;
  int code = kvt_unary(c, KVT_SVC "GetStats", &q.base, &e8kv__v1__get_stats_response__descriptor,
                       &m, st, 60000);
  *resp = (E8kv__V1__GetStatsResponse *)m;
  return code;
}

char *kvt_http_get(int port, const char *path) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
    if (fd >= 0) close(fd);
    return NULL;
  }
  char req[256];
  int n = snprintf(req, sizeof req, "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
  if (write(fd, req, (size_t)n) != n) { close(fd); return NULL; }
  size_t cap = 1 << 16, len = 0;
  char *buf = malloc(cap);
  for (;;) {
    if (len + 4096 > cap) buf = realloc(buf, cap *= 2);
    ssize_t r = read(fd, buf + len, cap - len - 1);
    if (r <= 0) break;
    len += (size_t)r;
  }
  close(fd);
  buf[len] = 0;
  return buf;
}
