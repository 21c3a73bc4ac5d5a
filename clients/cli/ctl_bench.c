/*
 * ctl_bench.c: `e8kvctl bench`: put/get throughput and per-chunk latency
 * against a daemon with a synthetic model shape. Each chunk is one PutChunks
 * call (raw fp16 for the daemon's CPU codec to encode, as an engine without a
 * client-side codec would send it) and one GetChunks call by key (encoded
 * frames back), so the latencies are per chunk. Data: pseudo-random values
 * (xorshift, roughly Gaussian), the same bytes for every chunk; token ids
 * differ, so every chunk has its own key and is stored. The session is deleted
 * at the end.
 */
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clients/cli/ctl_exit.h"
#include "clients/cli/ctl_out.h"
#include "clients/cli/ctl_progress.h"
#include "clients/cli/ctl_runs.h"

static double ctl_bench_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* IEEE binary16 bits of f, round to nearest even (finite |f| < 65504 here). */
static uint16_t ctl_f2h(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u, absx = x & 0x7fffffffu;
  if (absx < 0x38800000u) { /* subnormal or zero in fp16 */
    float a = fabsf(f) * 16777216.0f; /* 2^24 */
    return (uint16_t)(sign | (uint32_t)lrintf(a));
  }
  uint32_t h = ((absx - 0x38000000u) >> 13);
  uint32_t rest = absx & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1))) h++;
  return (uint16_t)(sign | h);
}

static void ctl_bench_fill(uint16_t *p, size_t n) {
  uint64_t s = 0x9e3779b97f4a7c15ull;
  for (size_t i = 0; i < n; i++) {
    float acc = 0;
    for (int k = 0; k < 4; k++) {
      s ^= s << 13; s ^= s >> 7; s ^= s << 17;
      acc += (float)(s >> 40) / 16777216.0f;
    }
    p[i] = ctl_f2h((acc - 2.0f) * 1.7f);
  }
}

static int ctl_cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static double ctl_pct(double *v, size_t n, double q) {
  qsort(v, n, sizeof *v, ctl_cmp_double);
  size_t i = (size_t)ceil(q * (double)n) - 1;
  return v[i < n ? i : n - 1] * 1e3;
}

typedef struct ctl_bench_get {
  uint64_t bytes;
  uint32_t chunks;
} ctl_bench_get;

static int ctl_bench_on_chunk(void *arg, const e8kv_chunk *ch) {
  ctl_bench_get *g = arg;
  g->bytes += ch->bytes;
  g->chunks++;
  return 0;
}

/* e8kvd's --max-chunk-bytes: its default and bounds (daemon/kvd_config.c). */
#define CTL_BENCH_CHUNK_BYTES_DEFAULT (256ull << 20)
#define CTL_BENCH_CHUNK_BYTES_MIN (4ull << 10)
#define CTL_BENCH_CHUNK_BYTES_MAX (16ull << 30)

/* Checks the whole shape against what e8kvd and the codec accept, before anything is
 * allocated (each flag alone is within the codec's bounds already): one chunk of fp16 KV,
 * [L][2][H][T][D] x 2 bytes, within max_chunk (e8kvd's --max-chunk-bytes: it refuses a
 * larger chunk, after the bench would have allocated, filled and sent it), and the
 * session's N x T tokens within the codec's positions (e8kvd refuses a chunk past
 * E8C_MAX_POSITION). Products are overflow-checked. 0, or a usage error naming the flag. */
static int ctl_bench_check_shape(ctl_ctx *ctx, uint64_t L, uint64_t H, uint64_t D, uint64_t T,
                                 uint64_t N, uint64_t max_chunk) {
  uint64_t per_token, bytes, tokens;
  int over = __builtin_mul_overflow(L * H * D, 4, &per_token) ||
             __builtin_mul_overflow(per_token, T, &bytes);
  if (over || bytes > max_chunk) {
    uint64_t fit = max_chunk / per_token;
    char most[160];
    if (fit)
      snprintf(most, sizeof most, "at most %" PRIu64 " token%s per chunk for this shape", fit,
               fit == 1 ? "" : "s");
    else snprintf(most, sizeof most, "not even one token fits: lower --layers, --kv-heads or --head-dim");
    char size[32] = "more than 2^64";
    if (!over) snprintf(size, sizeof size, "%" PRIu64, bytes);
    return ctl_error(ctx, CTL_EXIT_USAGE, "usage",
                     "--chunk-tokens %" PRIu64 " at --layers %" PRIu64 " x --kv-heads %" PRIu64
                     " x --head-dim %" PRIu64 ": one chunk is %s bytes of fp16 KV (K and V, 2 "
                     "bytes per element), above --max-chunk-bytes %" PRIu64 " (e8kvd's "
                     "--max-chunk-bytes, default %llu: it refuses a larger chunk; give the "
                     "daemon's value if it differs): %s",
                     T, L, H, D, size, max_chunk, CTL_BENCH_CHUNK_BYTES_DEFAULT, most);
  }
  if (__builtin_mul_overflow(N, T, &tokens) || tokens > E8C_MAX_POSITION)
    return ctl_error(ctx, CTL_EXIT_USAGE, "usage",
                     "--chunks %" PRIu64 " x --chunk-tokens %" PRIu64 " tokens in one session go "
                     "past the codec's last position (%u, E8C_MAX_POSITION; e8kvd refuses "
                     "chunks beyond it): at most %" PRIu64 " chunks of this size",
                     N, T, E8C_MAX_POSITION, (uint64_t)E8C_MAX_POSITION / T);
  return 0;
}

int ctl_on_bench(ctl_ctx *ctx, int argc, char **argv) {
  (void)argc;
  (void)argv;
  uint64_t L, H, D, T, N, max_chunk;
  if (ctl_opt_u64(ctx, CTL_O_LAYERS, 32, 1, E8C_MAX_LAYERS, &L) ||
      ctl_opt_u64(ctx, CTL_O_KV_HEADS, 8, 1, E8C_MAX_KV_HEADS, &H) ||
      ctl_opt_u64(ctx, CTL_O_HEAD_DIM, 128, 8, E8C_MAX_HEAD_DIM, &D) ||
      ctl_opt_u64(ctx, CTL_O_CHUNK_TOKENS, 256, 1, E8C_MAX_TOKENS, &T) ||
      ctl_opt_u64(ctx, CTL_O_CHUNKS, 16, 1, 100000, &N) ||
      ctl_opt_size(ctx, CTL_O_MAX_CHUNK_BYTES, CTL_BENCH_CHUNK_BYTES_DEFAULT,
                   CTL_BENCH_CHUNK_BYTES_MIN, CTL_BENCH_CHUNK_BYTES_MAX, &max_chunk))
    return CTL_EXIT_USAGE;
  if (D % 8) return ctl_error(ctx, CTL_EXIT_USAGE, "usage", "--head-dim must be a multiple of 8");
  if (ctl_bench_check_shape(ctx, L, H, D, T, N, max_chunk)) return CTL_EXIT_USAGE;
  /* The fingerprint is built on the codec's side and sent with every value explicit, so
   * RAW uploads (the daemon encodes) and E8 frames (we encode) share one fingerprint id. */
  e8c_fingerprint cfp;
  memset(&cfp, 0, sizeof cfp);
  snprintf(cfp.model_id, sizeof cfp.model_id, "e8kvctl-bench");
  cfp.n_layers = (uint32_t)L;
  cfp.n_kv_heads = (uint32_t)H;
  cfp.head_dim = (uint32_t)D;
  cfp.src_dtype = E8C_DTYPE_F16;
  cfp.rope.type = E8C_ROPE_DEFAULT;
  cfp.rope.layout = E8C_ROPE_LAYOUT_SPLIT_HALF;
  cfp.rope.rotary_dim = (uint32_t)D;
  cfp.rope.theta = 10000;
  e8c_config_default(&cfp.config);
  const char *preset = ctx->opt[CTL_O_PRESET];
  if (preset && e8c_is_error(e8c_preset_apply(preset, &cfp.config)))
    return ctl_error(ctx, CTL_EXIT_USAGE, "usage", "--preset: unknown preset \"%s\"", preset);
  int client_encode = ctx->opt[CTL_O_CLIENT_ENCODE] != NULL;
  int64_t cerr = 0;
  e8c_ctx *cctx = client_encode ? e8c_ctx_create(&cfp, &cerr) : NULL;
  if (client_encode && !cctx)
    return ctl_error(ctx, CTL_EXIT_USAGE, "usage", "bench shape refused by the codec: %s",
                     e8c_error_string(cerr));
  e8kv_fingerprint_pb fpb;
  e8kv_fingerprint_to_pb(&cfp, &fpb);
  size_t elems = (size_t)(2 * L * H * D * T), raw_bytes = elems * 2;
  uint16_t *raw = malloc(raw_bytes);
  uint32_t *tok = malloc(T * sizeof *tok);
  uint8_t (*keys)[32] = calloc(N, 32);
  double *put_s = malloc(N * sizeof *put_s), *get_s = malloc(N * sizeof *get_s);
  double *enc_s = calloc(N, sizeof *enc_s);
  int64_t fcap = cctx ? e8c_chunk_max_size(cctx, (uint32_t)T) : 1;
  uint8_t *fbuf = malloc(fcap > 0 ? (size_t)fcap : 1);
  if (!raw || !tok || !keys || !put_s || !get_s || !enc_s || !fbuf) {
    free(raw); free(tok); free(keys); free(put_s); free(get_s); free(enc_s); free(fbuf);
    e8c_ctx_free(cctx);
    return ctl_error(ctx, CTL_EXIT_FAILURE, "nomem", "out of memory for a %zu-byte chunk", raw_bytes);
  }
  ctl_bench_fill(raw, elems);
  uint32_t run_salt = (uint32_t)(time(NULL) * 2654435761u) ^ ((uint32_t)getpid() << 16);
  char session[128];
  if (ctx->opt[CTL_O_NAME]) snprintf(session, sizeof session, "%s", ctx->opt[CTL_O_NAME]);
  else snprintf(session, sizeof session, "e8kvctl-bench-%d-%ld", (int)getpid(), (long)time(NULL));
  ctl_prog prog;
  ctl_prog_begin(&prog, ctx->progress, "bench", 2 * N, 0);
  e8kv_error err;
  int rc = CTL_EXIT_OK;
  uint64_t stored = 0, got_bytes = 0, wire = 0;
  double put_total = 0, get_total = 0;
  for (uint64_t i = 0; i < N && !rc; i++) {
    /* Token ids unique to this run, so no chunk is deduplicated against an earlier run
     * (a deduplicated put writes nothing and would flatter the figures). */
    for (uint64_t t = 0; t < T; t++) tok[t] = (uint32_t)(run_salt + i * T + t);
    E8kv__V1__PutHeader h = E8KV__V1__PUT_HEADER__INIT;
    h.fingerprint = &fpb.m;
    h.chunk_tokens = (uint32_t)T;
    h.encoding = cctx ? E8KV__V1__ENCODING__ENCODING_E8_FRAME : E8KV__V1__ENCODING__ENCODING_RAW;
    h.raw_dtype = cctx ? E8KV__V1__DTYPE__DTYPE_UNSPECIFIED : E8KV__V1__DTYPE__DTYPE_FP16;
    h.session = session;
    h.create_session = i == 0;
    if (i == 0) { /* a new session: refuse to append to an existing one */
      h.session_expect_case = E8KV__V1__PUT_HEADER__SESSION_EXPECT_EXPECT_SESSION_TOKENS;
      h.expect_session_tokens = 0;
    }
    double t0 = ctl_bench_now();
    const void *data = raw;
    size_t data_len = raw_bytes;
    if (cctx) { /* encode here, as an engine with the codec does; timed on its own */
      e8c_chunk_params cp = {(uint32_t)T, (uint32_t)(i * T), (uint32_t)((i + 1) * T), 0};
      int64_t n = e8c_chunk_encode(cctx, &cp, raw, E8C_DTYPE_F16, fbuf, (size_t)fcap);
      if (e8c_is_error(n)) {
        rc = ctl_error(ctx, CTL_EXIT_FAILURE, "E_CODEC", "encode: %s", e8c_ctx_last_error(cctx));
        break;
      }
      data = fbuf;
      data_len = (size_t)n;
      enc_s[i] = ctl_bench_now() - t0;
    }
    e8kv_put *p = NULL;
    E8kv__V1__PutChunksResponse *r = NULL;
    if (e8kv_put_begin(ctx->client, &h, &p, &err)) {
      rc = ctl_error_e8kv(ctx, &err);
    } else if (e8kv_put_chunk(p, tok, T, data, data_len, NULL, 0, &err)) {
      e8kv_put_abort(p);
      rc = ctl_error_e8kv(ctx, &err);
    } else if (e8kv_put_finish(p, &r, &err)) {
      rc = ctl_error_e8kv(ctx, &err);
    } else if (r->n_chunk_keys != 1 || r->chunk_keys[0].len != 32) {
      rc = ctl_error(ctx, CTL_EXIT_FAILURE, "E_PROTOCOL", "PutChunks: expected one 32-byte key");
    } else {
      put_s[i] = ctl_bench_now() - t0;
      put_total += put_s[i];
      memcpy(keys[i], r->chunk_keys[0].data, 32);
      wire += data_len;
    }
    e8kv_msg_free(r);
    ctl_prog_add(&prog, 1);
  }
  for (uint64_t i = 0; i < N && !rc; i++) {
    ProtobufCBinaryData key = {32, keys[i]};
    E8kv__V1__ChunkKeys ck = E8KV__V1__CHUNK_KEYS__INIT;
    ck.n_keys = 1;
    ck.keys = &key;
    E8kv__V1__GetChunksRequest req = E8KV__V1__GET_CHUNKS_REQUEST__INIT;
    req.selection_case = E8KV__V1__GET_CHUNKS_REQUEST__SELECTION_KEYS;
    req.keys = &ck;
    req.encoding = E8KV__V1__ENCODING__ENCODING_E8_FRAME;
    ctl_bench_get g = {0, 0};
    double t0 = ctl_bench_now();
    if (e8kv_get_chunks(ctx->client, &req, ctl_bench_on_chunk, &g, &err)) {
      rc = ctl_error_e8kv(ctx, &err);
    } else if (g.chunks != 1) {
      rc = ctl_error(ctx, CTL_EXIT_FAILURE, "E_PROTOCOL", "GetChunks: %u chunks for one key", g.chunks);
    } else {
      get_s[i] = ctl_bench_now() - t0;
      get_total += get_s[i];
      got_bytes += g.bytes;
    }
    ctl_prog_add(&prog, 1);
  }
  ctl_prog_end(&prog);
  /* bpe from the session's stored bytes: its chunks' encoded frames, as `show` (record
   * headers not counted: `stat` counts them, ctl_view.c). */
  if (!rc) {
    E8kv__V1__GetSessionRequest gq = E8KV__V1__GET_SESSION_REQUEST__INIT;
    gq.name = session;
    E8kv__V1__GetSessionResponse *gr = NULL;
    if (e8kv_get_session(ctx->client, &gq, &gr, &err)) rc = ctl_error_e8kv(ctx, &err);
    else stored = gr->session ? gr->session->stored_bytes : 0;
    e8kv_msg_free(gr);
  }
  /* The throwaway session goes whatever happened (it may not exist if the first put failed),
   * and its chunks with it: random KV never deduplicates, so a kept chunk would only fill the
   * store (16 chunks of the default shape: 79 MiB per run). */
  E8kv__V1__DeleteSessionRequest dreq = E8KV__V1__DELETE_SESSION_REQUEST__INIT;
  dreq.name = session;
  dreq.purge_chunks = 1;
  E8kv__V1__DeleteSessionResponse *dr = NULL;
  e8kv_error derr;
  e8kv_status ds = ctx->opt[CTL_O_NAME] ? E8KV_OK : e8kv_delete_session(ctx->client, &dreq, &dr, &derr);
  e8kv_msg_free(dr);
  if (!rc && ds) rc = ctl_error_e8kv(ctx, &derr);
  if (!rc) {
    double tokens = (double)(N * T), fp16 = (double)raw_bytes * (double)N;
    char host[256] = "?";
    gethostname(host, sizeof host - 1);
    json_t *o = json_pack(
        "{s:{s:I,s:I,s:I,s:I},s:I,s:I,s:s,s:s,s:f,s:f,s:f,s:f,s:f,s:I,s:f,s:f,s:f,s:f,s:f}",
        "shape", "layers", (json_int_t)L, "kv_heads", (json_int_t)H, "head_dim", (json_int_t)D,
        "chunk_tokens", (json_int_t)T, "chunks", (json_int_t)N, "tokens", (json_int_t)(N * T),
        "client_host", host, "put_encoding",
        cctx ? "E8 frames (encoded here, libe8codec; put time includes it)" : "RAW fp16 (daemon encodes)",
        "put_tokens_per_s", tokens / put_total, "get_tokens_per_s", tokens / get_total,
        "put_raw_fp16_gb_per_s", fp16 / put_total / 1e9, "get_encoded_gb_per_s",
        (double)got_bytes / get_total / 1e9, "get_raw_fp16_equiv_gb_per_s", fp16 / get_total / 1e9,
        "stored_bytes", (json_int_t)stored, "bpe", (double)stored * 8.0 / ((double)elems * (double)N),
        "put_p50_ms", ctl_pct(put_s, N, 0.50), "put_p99_ms", ctl_pct(put_s, N, 0.99),
        "get_p50_ms", ctl_pct(get_s, N, 0.50), "get_p99_ms", ctl_pct(get_s, N, 0.99));
    json_object_set_new(o, "put_wire_bytes", json_integer((json_int_t)wire));
    if (cctx) {
      double enc_total = 0;
      for (uint64_t i = 0; i < N; i++) enc_total += enc_s[i];
      json_object_set_new(o, "client_encode_tokens_per_s", json_real(tokens / enc_total));
      json_object_set_new(o, "client_encode_p50_ms", json_real(ctl_pct(enc_s, N, 0.50)));
    }
    if (ctx->json) {
      ctl_out_json(stdout, o);
    } else {
      static const ctl_col cols[] = {
          {"tokens", "tokens", CTL_F_INT, 0},
          {"put_encoding", "put", CTL_F_STR, 0},
          {"put_tokens_per_s", "put tokens/s", CTL_F_FLOAT, 0},
          {"client_encode_tokens_per_s", "encode tokens/s (here)", CTL_F_FLOAT, 0},
          {"put_wire_bytes", "put bytes sent", CTL_F_BYTES, 0},
          {"get_tokens_per_s", "get tokens/s", CTL_F_FLOAT, 0},
          {"put_raw_fp16_gb_per_s", "put GB/s (fp16 KV)", CTL_F_FLOAT, 0},
          {"get_encoded_gb_per_s", "get GB/s (encoded)", CTL_F_FLOAT, 0},
          {"get_raw_fp16_equiv_gb_per_s", "get GB/s (fp16 equiv)", CTL_F_FLOAT, 0},
          {"bpe", "bpe (frames)", CTL_F_FLOAT, 0},
          {"put_p50_ms", "put p50 ms", CTL_F_FLOAT, 0},
          {"put_p99_ms", "put p99 ms", CTL_F_FLOAT, 0},
          {"get_p50_ms", "get p50 ms", CTL_F_FLOAT, 0},
          {"get_p99_ms", "get p99 ms", CTL_F_FLOAT, 0},
          {NULL, NULL, CTL_F_STR, 0}};
      printf("shape: %llu layers x %llu kv heads x head_dim %llu, %llu tokens/chunk, %llu chunks, "
             "client %s\n", (unsigned long long)L, (unsigned long long)H, (unsigned long long)D,
             (unsigned long long)T, (unsigned long long)N, host);
      ctl_out_fields(stdout, cols, o);
    }
    json_decref(o);
  }
  free(raw); free(tok); free(keys); free(put_s); free(get_s); free(enc_s); free(fbuf);
  e8c_ctx_free(cctx);
  return rc;
}
