/* test_kvd_e2e.c: end-to-end tests of e8kvd through gRPC against a real daemon process on a
 * temporary data directory: health, unknown methods, put/lookup/get round trips (encoded
 * frames byte-identical, raw uploads equal to the local codec's bytes and within codec error),
 * streams over 4 MiB, sessions, stats/verify/compact, metrics, clean restart, kill -9. */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "grpc/health/v1/health.pb-c.h"
#include "tests/daemon/kvt_util.h"

#define CT 64 /* chunk_tokens of the small fingerprint */

static kvt_daemon g_d;
static kvt_conn *g_c;
static kvt_fp g_fp;

static int setup(void **state) {
  (void)state;
  kvt_fp_make(&g_fp, "test/tiny", 4, 2, 64);
  if (kvt_daemon_init(&g_d) || kvt_daemon_start(&g_d, 1, NULL)) return -1;
  g_c = kvt_connect(g_d.target, NULL, 64 << 20);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  kvt_close(g_c);
  int rc = kvt_daemon_stop(&g_d);
  kvt_daemon_cleanup(&g_d);
  return rc == 0 ? 0 : -1;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* A sequence of n_chunks chunks (the last with last_tokens tokens), encoded locally. */
typedef struct seq {
  uint32_t tokens[16 * CT];
  size_t n_tokens;
  kvt_chunk ch[16];
  uint8_t *frames[16];
  uint16_t *raw[16];
  size_t raw_len[16];
  size_t n;
} seq;

static void seq_make(seq *s, size_t n_chunks, uint32_t last_tokens, uint32_t seed) {
  memset(s, 0, sizeof *s);
  s->n = n_chunks;
  for (size_t i = 0; i < n_chunks; i++) {
    uint32_t nt = i + 1 == n_chunks ? last_tokens : CT;
    kvt_tokens(s->tokens + s->n_tokens, nt, seed, s->n_tokens);
    s->raw[i] = kvt_kv_make(&g_fp, nt, seed * 100 + (uint32_t)i, &s->raw_len[i]);
    size_t len = 0;
    s->frames[i] = kvt_encode(&g_fp, s->raw[i], nt, (uint32_t)s->n_tokens, &len);
    assert_non_null(s->frames[i]);
    s->ch[i] = (kvt_chunk){s->tokens + s->n_tokens, nt, s->frames[i], len};
    s->n_tokens += nt;
  }
}

static void seq_free(seq *s) {
  for (size_t i = 0; i < s->n; i++) { free(s->frames[i]); free(s->raw[i]); }
}

static E8kv__V1__PutHeader header(const char *session, int create) {
  E8kv__V1__PutHeader h;
  e8kv__v1__put_header__init(&h);
  h.fingerprint = &g_fp.pb;
  h.chunk_tokens = CT;
  h.encoding = E8KV__V1__ENCODING__ENCODING_E8_FRAME;
  h.session = (char *)(session ? session : "");
  h.create_session = create;
  return h;
}

/* ------------------------------------------------------------------ health, unknown */

static void test_health(void **state) {
  (void)state;
  Grpc__Health__V1__HealthCheckRequest rq;
  grpc__health__v1__health_check_request__init(&rq);
  const char *names[] = {"", "e8kv.v1.KVStore"};
  for (int i = 0; i < 2; i++) {
    rq.service = (char *)names[i];
    ProtobufCMessage *r = NULL;
    kvt_status st;
    assert_int_equal(kvt_unary(g_c, "/grpc.health.v1.Health/Check", &rq.base,
                               &grpc__health__v1__health_check_response__descriptor, &r, &st,
                               5000), 0);
    assert_int_equal(((Grpc__Health__V1__HealthCheckResponse *)r)->status,
                     GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
    protobuf_c_message_free_unpacked(r, NULL);
  }
  rq.service = "no.such.Service";
  ProtobufCMessage *r = NULL;
  kvt_status st;
  assert_int_equal(kvt_unary(g_c, "/grpc.health.v1.Health/Check", &rq.base,
                             &grpc__health__v1__health_check_response__descriptor, &r, &st,
                             5000), 5 /* NOT_FOUND */);
  /* Watch: the first message comes at once; the stream stays open until we cancel. */
  rq.service = "";
  kvt_stream *s = kvt_open(g_c, "/grpc.health.v1.Health/Watch", 60000);
  assert_int_equal(kvt_send(s, &rq.base), 0);
  assert_int_equal(kvt_close_send(s), 0);
  uint8_t *b;
  size_t n;
  assert_int_equal(kvt_recv(s, &b, &n), 1);
  Grpc__Health__V1__HealthCheckResponse *w =
      grpc__health__v1__health_check_response__unpack(NULL, n, b);
  assert_non_null(w);
  assert_int_equal(w->status, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
  grpc__health__v1__health_check_response__free_unpacked(w, NULL);
  free(b);
  kvt_cancel(s);
  kvt_free(s);
}

static void test_unknown_method(void **state) {
  (void)state;
  const char *paths[] = {"/e8kv.v1.KVStore/NoSuchMethod", "/foo.Bar/Baz"};
  for (int i = 0; i < 2; i++) {
    double t0 = now_s();
    E8kv__V1__GetStatsRequest rq;
    e8kv__v1__get_stats_request__init(&rq);
    ProtobufCMessage *r;
    kvt_status st;
    assert_int_equal(kvt_unary(g_c, paths[i], &rq.base, &e8kv__v1__get_stats_response__descriptor,
                               &r, &st, 120000), 12 /* UNIMPLEMENTED */);
    assert_non_null(strstr(st.msg, "unknown method"));
    /* at once, not at the deadline: 20 s is 6x below the 120 s deadline and far above an
     * answer on a loaded machine (2 s against a 20 s deadline raced a loaded machine's
     * scheduler) */
    assert_true(now_s() - t0 < 20.0);
  }
}

/* ------------------------------------------------------------------ round trips */

static void check_got_frames(const seq *s, const kvt_got *g, size_t first, size_t n) {
  for (size_t i = 0; i < n; i++) {
    const kvt_chunk *c = &s->ch[first + i];
    assert_int_equal(g[i].len, c->len);
    assert_memory_equal(g[i].data, c->data, c->len);
    assert_int_equal(g[i].n_tokens, c->n_tokens);
    assert_memory_equal(g[i].token_ids, c->tokens, c->n_tokens * 4);
    assert_int_equal(g[i].start_token, (uint64_t)(c->tokens - s->tokens));
  }
}

static void test_frames_roundtrip(void **state) {
  (void)state;
  static seq s;
  seq_make(&s, 4, 20, 1);
  E8kv__V1__PutHeader h = header("rt1", 1);
  E8kv__V1__PutChunksResponse *r;
  kvt_status st;
  assert_int_equal(kvt_put(g_c, &h, s.ch, s.n, 10000, &r, &st), 0);
  assert_int_equal(r->n_chunk_keys, 4);
  assert_int_equal(r->chunks_stored, 4);
  assert_int_equal(r->tokens, 3 * CT + 20);
  assert_non_null(r->session);
  assert_int_equal(r->session->n_tokens, 3 * CT + 20);
  uint8_t keys[4][32];
  for (int i = 0; i < 4; i++) memcpy(keys[i], r->chunk_keys[i].data, 32);
  e8kv__v1__put_chunks_response__free_unpacked(r, NULL);

  /* lookup: the whole sequence, plus more tokens that are not stored */
  uint32_t q[4 * CT + 10];
  memcpy(q, s.tokens, s.n_tokens * 4);
  kvt_tokens(q + s.n_tokens, 10, 99, 0);
  E8kv__V1__LookupRequest lq;
  e8kv__v1__lookup_request__init(&lq);
  lq.fingerprint = &g_fp.pb;
  lq.chunk_tokens = CT;
  lq.token_ids = q;
  lq.n_token_ids = 2 * CT + 5; /* a prefix: two whole chunks */
  ProtobufCMessage *m;
  assert_int_equal(kvt_unary(g_c, KVT_SVC "Lookup", &lq.base,
                             &e8kv__v1__lookup_response__descriptor, &m, &st, 5000), 0);
  E8kv__V1__LookupResponse *lr = (E8kv__V1__LookupResponse *)m;
  assert_int_equal(lr->matched_tokens, 2 * CT);
  assert_int_equal(lr->n_chunk_keys, 2);
  assert_memory_equal(lr->chunk_keys[1].data, keys[1], 32);
  protobuf_c_message_free_unpacked(m, NULL);
  lq.n_token_ids = s.n_tokens; /* the full sequence with its short last chunk */
  assert_int_equal(kvt_unary(g_c, KVT_SVC "Lookup", &lq.base,
                             &e8kv__v1__lookup_response__descriptor, &m, &st, 5000), 0);
  assert_int_equal(((E8kv__V1__LookupResponse *)m)->matched_tokens, s.n_tokens);
  protobuf_c_message_free_unpacked(m, NULL);

  /* get by keys: bytes identical, pieces of 4 KiB */
  E8kv__V1__GetChunksRequest gq;
  E8kv__V1__ChunkKeys ck;
  e8kv__v1__get_chunks_request__init(&gq);
  e8kv__v1__chunk_keys__init(&ck);
  ProtobufCBinaryData kb[4];
  for (int i = 0; i < 4; i++) kb[i] = (ProtobufCBinaryData){32, keys[i]};
  ck.keys = kb;
  ck.n_keys = 4;
  gq.selection_case = E8KV__V1__GET_CHUNKS_REQUEST__SELECTION_KEYS;
  gq.keys = &ck;
  gq.max_piece_bytes = 4096;
  kvt_got g[8];
  size_t n;
  assert_int_equal(kvt_get(g_c, &gq, g, 8, &n, &st, 10000), 0);
  assert_int_equal(n, 4);
  check_got_frames(&s, g, 0, 4);
  kvt_got_free(g, n);

  /* get by session range [70, 150): chunks 1 and 2 */
  E8kv__V1__SessionRange sr;
  e8kv__v1__session_range__init(&sr);
  sr.session = "rt1";
  sr.start_token = 70;
  sr.end_token = 150;
  gq.selection_case = E8KV__V1__GET_CHUNKS_REQUEST__SELECTION_RANGE;
  gq.range = &sr;
  gq.max_piece_bytes = 0;
  assert_int_equal(kvt_get(g_c, &gq, g, 8, &n, &st, 10000), 0);
  assert_int_equal(n, 2);
  check_got_frames(&s, g, 1, 2);
  kvt_got_free(g, n);

  /* decoded, layers [1, 3), fp32: equal to the local decode of the same frame */
  sr.start_token = 0;
  sr.end_token = 0;
  gq.encoding = E8KV__V1__ENCODING__ENCODING_RAW;
  gq.dtype = E8KV__V1__DTYPE__DTYPE_FP32;
  gq.layer_begin = 1;
  gq.layer_end = 3;
  assert_int_equal(kvt_get(g_c, &gq, g, 8, &n, &st, 10000), 0);
  assert_int_equal(n, 4);
  int64_t err;
  e8c_ctx *ctx = e8c_ctx_create(&g_fp.fp, &err);
  for (size_t i = 0; i < 4; i++) {
    int64_t need = e8c_chunk_raw_size(ctx, 1, 3, s.ch[i].n_tokens, E8C_DTYPE_F32);
    assert_int_equal(g[i].len, (size_t)need);
    float *loc = malloc((size_t)need);
    assert_int_equal(e8c_chunk_decode(ctx, s.ch[i].data, s.ch[i].len, 1, 3, NULL, loc,
                                      E8C_DTYPE_F32, (size_t)need), 0);
    assert_memory_equal(g[i].data, loc, (size_t)need);
    free(loc);
  }
  e8c_ctx_free(ctx);
  kvt_got_free(g, n);

  /* the same chunks again, without a session: all deduplicated */
  h = header(NULL, 0);
  assert_int_equal(kvt_put(g_c, &h, s.ch, s.n, 0, &r, &st), 0);
  assert_int_equal(r->chunks_stored, 0);
  assert_int_equal(r->chunks_deduplicated, 4);
  e8kv__v1__put_chunks_response__free_unpacked(r, NULL);
  seq_free(&s);
}

/* Raw fp16 uploads of a bigger shape: one message per chunk is over 4 MiB, the daemon encodes
 * with the CPU codec; the stored frame equals the local codec's bytes, and the decoded values
 * are within the codec's error of the input. */
static void test_raw_big(void **state) {
  (void)state;
  kvt_fp fp;
  kvt_fp_make(&fp, "test/big", 8, 4, 128);
  const uint32_t ct = 256;
  uint32_t tok[2 * 256];
  kvt_tokens(tok, 2 * ct, 7, 0);
  uint16_t *raw[2];
  size_t rl[2];
  kvt_chunk ch[2];
  for (int i = 0; i < 2; i++) {
    raw[i] = kvt_kv_make(&fp, ct, 70 + (uint32_t)i, &rl[i]);
    assert_true(rl[i] >= 4u << 20);
    ch[i] = (kvt_chunk){tok + i * ct, ct, (uint8_t *)raw[i], rl[i]};
  }
  E8kv__V1__PutHeader h;
  e8kv__v1__put_header__init(&h);
  h.fingerprint = &fp.pb;
  h.chunk_tokens = ct;
  h.encoding = E8KV__V1__ENCODING__ENCODING_RAW;
  h.raw_dtype = E8KV__V1__DTYPE__DTYPE_FP16;
  h.session = "big";
  h.create_session = 1;
  E8kv__V1__PutChunksResponse *r;
  kvt_status st;
  assert_int_equal(kvt_put(g_c, &h, ch, 2, 0, &r, &st), 0);
  assert_int_equal(r->chunks_stored, 2);
  assert_int_equal(r->raw_fp16_bytes, rl[0] + rl[1]);
  e8kv__v1__put_chunks_response__free_unpacked(r, NULL);

  E8kv__V1__GetChunksRequest gq;
  E8kv__V1__SessionRange sr;
  e8kv__v1__get_chunks_request__init(&gq);
  e8kv__v1__session_range__init(&sr);
  sr.session = "big";
  gq.selection_case = E8KV__V1__GET_CHUNKS_REQUEST__SELECTION_RANGE;
  gq.range = &sr;
  kvt_got g[2];
  size_t n;
  assert_int_equal(kvt_get(g_c, &gq, g, 2, &n, &st, 30000), 0);
  assert_int_equal(n, 2);
  for (int i = 0; i < 2; i++) {
    size_t len;
    uint8_t *loc = kvt_encode(&fp, raw[i], ct, (uint32_t)(i * ct), &len);
    assert_int_equal(g[i].len, len);
    assert_memory_equal(g[i].data, loc, len);
    free(loc);
  }
  kvt_got_free(g, n);
  /* decoded to fp16 (the stream moves 8 MiB in 3 MiB pieces) */
  gq.encoding = E8KV__V1__ENCODING__ENCODING_RAW;
  assert_int_equal(kvt_get(g_c, &gq, g, 2, &n, &st, 30000), 0);
  assert_int_equal(n, 2);
  for (int i = 0; i < 2; i++) {
    assert_int_equal(g[i].len, rl[i]);
    const uint16_t *d = (const uint16_t *)g[i].data;
    double se = 0, ss = 0;
    for (size_t k = 0; k < rl[i] / 2; k++) {
      double a = kvt_h2f(raw[i][k]), b = kvt_h2f(d[k]);
      se += (a - b) * (a - b);
      ss += a * a;
    }
    double rel = sqrt(se / ss);
    print_message("raw chunk %d: relative RMS error %.4f\n", i, rel);
    assert_true(rel > 0.0 && rel < 0.25); /* lossy, and within the default preset's error */
  }
  kvt_got_free(g, n);
  free(raw[0]);
  free(raw[1]);
}

/* ------------------------------------------------------------------ sessions */

static ProtobufCMessage *call_ok(const char *m, const ProtobufCMessage *rq,
                                 const ProtobufCMessageDescriptor *d) {
  ProtobufCMessage *r = NULL;
  kvt_status st;
  int code = kvt_unary(g_c, m, rq, d, &r, &st, 10000);
  if (code) print_error("%s: %d %s\n", m, code, st.msg);
  assert_int_equal(code, 0);
  return r;
}

static int call_code(const char *m, const ProtobufCMessage *rq,
                     const ProtobufCMessageDescriptor *d, kvt_status *st) {
  ProtobufCMessage *r = NULL;
  int code = kvt_unary(g_c, m, rq, d, &r, st, 10000);
  if (r) protobuf_c_message_free_unpacked(r, NULL);
  return code;
}

static void test_sessions(void **state) {
  (void)state;
  static seq s;
  seq_make(&s, 3, CT, 3);
  E8kv__V1__PutHeader h = header(NULL, 0);
  E8kv__V1__PutChunksResponse *r;
  kvt_status st;
  assert_int_equal(kvt_put(g_c, &h, s.ch, 3, 0, &r, &st), 0); /* cache entries, no session */
  e8kv__v1__put_chunks_response__free_unpacked(r, NULL);

  E8kv__V1__CreateSessionRequest cq;
  e8kv__v1__create_session_request__init(&cq);
  E8kv__V1__CreateSessionRequest__MetadataEntry me, *mp = &me;
  e8kv__v1__create_session_request__metadata_entry__init(&me);
  me.key = "user";
  me.value = "alice";
  cq.name = "sess/a";
  cq.fingerprint = &g_fp.pb;
  cq.chunk_tokens = CT;
  cq.n_metadata = 1;
  cq.metadata = &mp;
  E8kv__V1__CreateSessionResponse *cr = (E8kv__V1__CreateSessionResponse *)call_ok(
      KVT_SVC "CreateSession", &cq.base, &e8kv__v1__create_session_response__descriptor);
  assert_true(cr->created);
  assert_int_equal(cr->session->n_metadata, 1);
  protobuf_c_message_free_unpacked(&cr->base, NULL);
  assert_int_equal(call_code(KVT_SVC "CreateSession", &cq.base,
                             &e8kv__v1__create_session_response__descriptor, &st), 6);
  cq.if_not_exists = 1;
  cr = (E8kv__V1__CreateSessionResponse *)call_ok(
      KVT_SVC "CreateSession", &cq.base, &e8kv__v1__create_session_response__descriptor);
  assert_false(cr->created);
  protobuf_c_message_free_unpacked(&cr->base, NULL);

  /* append the stored prefix (two chunks) by token ids */
  E8kv__V1__AppendSessionRequest aq;
  e8kv__v1__append_session_request__init(&aq);
  aq.name = "sess/a";
  aq.token_ids = s.tokens;
  aq.n_token_ids = 2 * CT;
  E8kv__V1__AppendSessionResponse *ar = (E8kv__V1__AppendSessionResponse *)call_ok(
      KVT_SVC "AppendSession", &aq.base, &e8kv__v1__append_session_response__descriptor);
  assert_int_equal(ar->n_chunk_keys, 2);
  assert_int_equal(ar->session->n_tokens, 2 * CT);
  protobuf_c_message_free_unpacked(&ar->base, NULL);
  /* tokens not stored: NOT_FOUND names the range */
  uint32_t other[CT];
  kvt_tokens(other, CT, 555, 0);
  aq.token_ids = other;
  aq.n_token_ids = CT;
  assert_int_equal(call_code(KVT_SVC "AppendSession", &aq.base,
                             &e8kv__v1__append_session_response__descriptor, &st), 5);
  assert_non_null(strstr(st.msg, "[128, 192)"));

  /* put the third chunk into the session: it continues at token 128 */
  h = header("sess/a", 0);
  h.session_expect_case = E8KV__V1__PUT_HEADER__SESSION_EXPECT_EXPECT_SESSION_TOKENS;
  h.expect_session_tokens = 2 * CT;
  assert_int_equal(kvt_put(g_c, &h, &s.ch[2], 1, 0, &r, &st), 0);
  assert_int_equal(r->chunks_deduplicated, 1);
  assert_int_equal(r->session->n_tokens, 3 * CT);
  e8kv__v1__put_chunks_response__free_unpacked(r, NULL);
  /* a stale expectation is refused */
  assert_int_not_equal(kvt_put(g_c, &h, &s.ch[2], 1, 0, &r, &st), 0);
  assert_int_equal(st.code, 9 /* FAILED_PRECONDITION */);

  /* get with keys */
  E8kv__V1__GetSessionRequest gq;
  e8kv__v1__get_session_request__init(&gq);
  gq.name = "sess/a";
  gq.include_chunk_keys = 1;
  E8kv__V1__GetSessionResponse *gr = (E8kv__V1__GetSessionResponse *)call_ok(
      KVT_SVC "GetSession", &gq.base, &e8kv__v1__get_session_response__descriptor);
  assert_int_equal(gr->session->n_chunk_keys, 3);
  assert_int_equal(gr->session->chunk_tokens, CT);
  assert_string_equal(gr->session->fingerprint->model_id, "test/tiny");
  assert_true(gr->session->stored_bytes > 0);
  protobuf_c_message_free_unpacked(&gr->base, NULL);

  /* list: page by page, filtered by model */
  E8kv__V1__ListSessionsRequest lq;
  e8kv__v1__list_sessions_request__init(&lq);
  lq.page_size = 1;
  lq.model_id = "test/tiny";
  size_t seen = 0, pages = 0;
  char tok[300] = "";
  do {
    lq.page_token = tok;
    E8kv__V1__ListSessionsResponse *l = (E8kv__V1__ListSessionsResponse *)call_ok(
        KVT_SVC "ListSessions", &lq.base, &e8kv__v1__list_sessions_response__descriptor);
    assert_true(l->n_sessions <= 1);
    for (size_t i = 0; i < l->n_sessions; i++)
      assert_string_equal(l->sessions[i]->fingerprint->model_id, "test/tiny");
    seen += l->n_sessions;
    snprintf(tok, sizeof tok, "%s", l->next_page_token);
    protobuf_c_message_free_unpacked(&l->base, NULL);
    pages++;
  } while (*tok && pages < 50);
  assert_true(seen >= 2); /* rt1 and sess/a */
  lq.model_id = "no/such-model";
  lq.page_token = "";
  lq.page_size = 0;
  E8kv__V1__ListSessionsResponse *l = (E8kv__V1__ListSessionsResponse *)call_ok(
      KVT_SVC "ListSessions", &lq.base, &e8kv__v1__list_sessions_response__descriptor);
  assert_int_equal(l->n_sessions, 0);
  protobuf_c_message_free_unpacked(&l->base, NULL);

  /* delete */
  E8kv__V1__DeleteSessionRequest dq;
  e8kv__v1__delete_session_request__init(&dq);
  dq.name = "sess/a";
  E8kv__V1__DeleteSessionResponse *dr = (E8kv__V1__DeleteSessionResponse *)call_ok(
      KVT_SVC "DeleteSession", &dq.base, &e8kv__v1__delete_session_response__descriptor);
  assert_int_equal(dr->chunks_unpinned, 3);
  protobuf_c_message_free_unpacked(&dr->base, NULL);
  assert_int_equal(call_code(KVT_SVC "GetSession", &gq.base,
                             &e8kv__v1__get_session_response__descriptor, &st), 5);
  assert_int_equal(call_code(KVT_SVC "DeleteSession", &dq.base,
                             &e8kv__v1__delete_session_response__descriptor, &st), 5);
  seq_free(&s);
}

/* parent_key continues a sequence found by Lookup; session_start_token replaces a short tail */
static void test_parent_and_replace(void **state) {
  (void)state;
  static seq s;
  seq_make(&s, 3, CT, 4);
  E8kv__V1__PutHeader h = header(NULL, 0);
  E8kv__V1__PutChunksResponse *r;
  kvt_status st;
  assert_int_equal(kvt_put(g_c, &h, s.ch, 1, 0, &r, &st), 0);
  uint8_t k0[32];
  memcpy(k0, r->chunk_keys[0].data, 32);
  e8kv__v1__put_chunks_response__free_unpacked(r, NULL);
  h.parent_key = (ProtobufCBinaryData){32, k0};
  h.parent_end_token = CT;
  assert_int_equal(kvt_put(g_c, &h, &s.ch[1], 2, 0, &r, &st), 0);
  e8kv__v1__put_chunks_response__free_unpacked(r, NULL);
  E8kv__V1__LookupRequest lq;
  e8kv__v1__lookup_request__init(&lq);
  lq.fingerprint = &g_fp.pb;
  lq.chunk_tokens = CT;
  lq.token_ids = s.tokens;
  lq.n_token_ids = 3 * CT;
  E8kv__V1__LookupResponse *lr = (E8kv__V1__LookupResponse *)call_ok(
      KVT_SVC "Lookup", &lq.base, &e8kv__v1__lookup_response__descriptor);
  assert_int_equal(lr->matched_tokens, 3 * CT);
  protobuf_c_message_free_unpacked(&lr->base, NULL);
  h.parent_end_token = 2 * CT; /* wrong position */
  assert_int_equal(kvt_put(g_c, &h, &s.ch[1], 1, 0, &r, &st), 9);

  /* a session ending in a short chunk, then that chunk grown to full size */
  static seq t;
  seq_make(&t, 2, 10, 5);
  h = header("grow", 1);
  assert_int_equal(kvt_put(g_c, &h, t.ch, 2, 0, &r, &st), 0);
  assert_int_equal(r->session->n_tokens, CT + 10);
  e8kv__v1__put_chunks_response__free_unpacked(r, NULL);
  h = header("grow", 0);
  assert_int_equal(kvt_put(g_c, &h, &s.ch[0], 1, 0, &r, &st), 9); /* ends inside a chunk */
  assert_non_null(strstr(st.msg, "session_start_token"));
  uint16_t *raw = kvt_kv_make(&g_fp, CT, 77, &(size_t){0});
  size_t flen;
  uint8_t *fr = kvt_encode(&g_fp, raw, CT, CT, &flen);
  uint32_t tk[CT];
  memcpy(tk, t.tokens + CT, 10 * 4);
  kvt_tokens(tk + 10, CT - 10, 6, 10);
  kvt_chunk grown = {tk, CT, fr, flen};
  h.session_position_case = E8KV__V1__PUT_HEADER__SESSION_POSITION_SESSION_START_TOKEN;
  h.session_start_token = CT;
  assert_int_equal(kvt_put(g_c, &h, &grown, 1, 0, &r, &st), 0);
  assert_int_equal(r->session->n_tokens, 2 * CT);
  assert_int_equal(r->session->n_chunks, 2);
  e8kv__v1__put_chunks_response__free_unpacked(r, NULL);
  free(raw);
  free(fr);
  seq_free(&s);
  seq_free(&t);
}

/* Concurrent writers of different sequences: group commit merges their store writes; every
 * chunk must come back byte-identical under its own key. */
typedef struct cw_arg {
  int id;
  seq s;
  uint8_t keys[3][32];
  int code;
} cw_arg;

static void *cw_main(void *p) {
  cw_arg *a = p;
  kvt_conn *c = kvt_connect(g_d.target, NULL, 64 << 20);
  for (int i = 0; i < 3 && !a->code; i++) {
    E8kv__V1__PutHeader h = header(NULL, 0);
    E8kv__V1__PutChunksResponse *r;
    kvt_status st;
    a->code = kvt_put(c, &h, &a->s.ch[i], 1, 0, &r, &st);
    if (!a->code) {
      memcpy(a->keys[i], r->chunk_keys[0].data, 32);
      e8kv__v1__put_chunks_response__free_unpacked(r, NULL);
    }
    h = header(NULL, 0); /* the next chunk continues the sequence after this one */
  }
  kvt_close(c);
  return NULL;
}

static void test_concurrent_puts(void **state) {
  (void)state;
  enum { N = 6 };
  static cw_arg a[N];
  pthread_t th[N];
  for (int i = 0; i < N; i++) {
    a[i].id = i;
    a[i].code = 0;
    seq_make(&a[i].s, 3, CT, 200 + (uint32_t)i);
    /* each chunk on its own: re-encode chunks 1, 2 as first chunks (position 0) */
    for (int k = 1; k < 3; k++) {
      free(a[i].s.frames[k]);
      size_t len;
      a[i].s.frames[k] = kvt_encode(&g_fp, a[i].s.raw[k], CT, 0, &len);
      a[i].s.ch[k].data = a[i].s.frames[k];
      a[i].s.ch[k].len = len;
    }
  }
  for (int i = 0; i < N; i++) pthread_create(&th[i], NULL, cw_main, &a[i]);
  for (int i = 0; i < N; i++) pthread_join(th[i], NULL);
  for (int i = 0; i < N; i++) {
    assert_int_equal(a[i].code, 0);
    E8kv__V1__GetChunksRequest gq;
    E8kv__V1__ChunkKeys ck;
    e8kv__v1__get_chunks_request__init(&gq);
    e8kv__v1__chunk_keys__init(&ck);
    ProtobufCBinaryData kb[3];
    for (int k = 0; k < 3; k++) kb[k] = (ProtobufCBinaryData){32, a[i].keys[k]};
    ck.keys = kb;
    ck.n_keys = 3;
    gq.selection_case = E8KV__V1__GET_CHUNKS_REQUEST__SELECTION_KEYS;
    gq.keys = &ck;
    kvt_got g[3];
    size_t n;
    kvt_status st;
    assert_int_equal(kvt_get(g_c, &gq, g, 3, &n, &st, 10000), 0);
    assert_int_equal(n, 3);
    for (int k = 0; k < 3; k++) {
      assert_int_equal(g[k].len, a[i].s.ch[k].len);
      assert_memory_equal(g[k].data, a[i].s.ch[k].data, g[k].len);
      assert_memory_equal(g[k].token_ids, a[i].s.ch[k].tokens, CT * 4);
    }
    kvt_got_free(g, n);
    seq_free(&a[i].s);
  }
  char *page = kvt_http_get(g_d.metrics_port, "/metrics");
  assert_non_null(page);
  const char *w = strstr(page, "\ne8kvd_store_writes_total "), *c = strstr(page, "\ne8kvd_store_written_chunks_total ");
  assert_non_null(w);
  assert_non_null(c);
  long long writes = atoll(strchr(w + 1, ' ') + 1), chunks = atoll(strchr(c + 1, ' ') + 1);
  print_message("store writes %lld for %lld chunks\n", writes, chunks);
  assert_true(writes > 0 && writes <= chunks);
  free(page);
}

/* ------------------------------------------------------------------ admin, metrics */

static void test_stats_verify_compact(void **state) {
  (void)state;
  E8kv__V1__GetStatsRequest sq;
  e8kv__v1__get_stats_request__init(&sq);
  E8kv__V1__GetStatsResponse *sr = (E8kv__V1__GetStatsResponse *)call_ok(
      KVT_SVC "GetStats", &sq.base, &e8kv__v1__get_stats_response__descriptor);
  assert_string_equal(sr->namespace_stats->namespace_name, "default");
  assert_true(sr->namespace_stats->chunks >= 4);
  { /* tokens, raw fp16 bytes and bpe from the store's namespace counters; the chunks here are
       of test/tiny (2048 fp16 K+V bytes a token) or test/big (16384) */
    const E8kv__V1__NamespaceStats *ns = sr->namespace_stats;
    print_message("namespace: %llu chunks %llu tokens %llu stored %llu raw bpe %.3f\n",
                  (unsigned long long)ns->chunks, (unsigned long long)ns->tokens,
                  (unsigned long long)ns->stored_bytes, (unsigned long long)ns->raw_fp16_bytes,
                  ns->bpe);
    assert_true(ns->tokens >= ns->chunks);
    assert_true(ns->raw_fp16_bytes >= ns->tokens * 2048 && ns->raw_fp16_bytes <= ns->tokens * 16384);
    assert_int_equal(ns->raw_fp16_bytes % 2048, 0);
    double want = (double)ns->stored_bytes * 8.0 / (double)(ns->raw_fp16_bytes / 2);
    assert_true(ns->bpe > 0 && fabs(ns->bpe - want) <= 1e-9 * want);
  }
  assert_non_null(sr->store_stats); /* open mode = admin */
  assert_true(sr->store_stats->live_bytes > 0);
  protobuf_c_message_free_unpacked(&sr->base, NULL);
  E8kv__V1__VerifyRequest vq;
  e8kv__v1__verify_request__init(&vq);
  E8kv__V1__VerifyResponse *vr = (E8kv__V1__VerifyResponse *)call_ok(
      KVT_SVC "Verify", &vq.base, &e8kv__v1__verify_response__descriptor);
  assert_true(vr->records_checked >= 4);
  assert_int_equal(vr->corrupt_records, 0);
  protobuf_c_message_free_unpacked(&vr->base, NULL);
  E8kv__V1__CompactRequest cq;
  e8kv__v1__compact_request__init(&cq);
  protobuf_c_message_free_unpacked(
      call_ok(KVT_SVC "Compact", &cq.base, &e8kv__v1__compact_response__descriptor), NULL);
}

static void test_metrics(void **state) {
  (void)state;
  char *page = kvt_http_get(g_d.metrics_port, "/metrics");
  assert_non_null(page);
  assert_non_null(strstr(page, "200 OK"));
  assert_non_null(strstr(page, "e8kvd_requests_total{method=\"PutChunks\"}"));
  assert_null(strstr(page, "e8kvd_requests_total{method=\"PutChunks\"} 0\n"));
  assert_non_null(strstr(page, "e8kvd_request_seconds_bucket{method=\"Lookup\",le=\"+Inf\"}"));
  assert_non_null(strstr(page, "e8kvd_errors_total{method=\"unknown\",code=\"UNIMPLEMENTED\"}"));
  assert_non_null(strstr(page, "e8kvd_store_chunks"));
  assert_non_null(strstr(page, "process_resident_memory_bytes"));
  free(page);
  page = kvt_http_get(g_d.metrics_port, "/nope");
  assert_non_null(page);
  assert_non_null(strstr(page, "404"));
  free(page);
}

/* ------------------------------------------------------------------ restart, kill -9 */

static void get_session_frames(const char *name, const seq *s) {
  E8kv__V1__GetChunksRequest gq;
  E8kv__V1__SessionRange sr;
  e8kv__v1__get_chunks_request__init(&gq);
  e8kv__v1__session_range__init(&sr);
  sr.session = (char *)name;
  gq.selection_case = E8KV__V1__GET_CHUNKS_REQUEST__SELECTION_RANGE;
  gq.range = &sr;
  kvt_got g[16];
  size_t n;
  kvt_status st;
  assert_int_equal(kvt_get(g_c, &gq, g, 16, &n, &st, 10000), 0);
  assert_int_equal(n, s->n);
  check_got_frames(s, g, 0, n);
  kvt_got_free(g, n);
}

static void test_restart_and_kill9(void **state) {
  (void)state;
  static seq s, t;
  seq_make(&s, 3, 33, 8);
  E8kv__V1__PutHeader h = header("persist", 1);
  E8kv__V1__PutChunksResponse *r;
  kvt_status st;
  assert_int_equal(kvt_put(g_c, &h, s.ch, s.n, 0, &r, &st), 0);
  e8kv__v1__put_chunks_response__free_unpacked(r, NULL);
  /* clean restart */
  kvt_close(g_c);
  assert_int_equal(kvt_daemon_stop(&g_d), 0);
  assert_int_equal(kvt_daemon_start(&g_d, 1, NULL), 0);
  g_c = kvt_connect(g_d.target, NULL, 64 << 20);
  get_session_frames("persist", &s);
  /* acknowledged chunks survive kill -9: every put below got its reply before the kill */
  seq_make(&t, 8, CT, 9);
  for (size_t i = 0; i < t.n; i++) {
    h = header("crash", i == 0);
    assert_int_equal(kvt_put(g_c, &h, &t.ch[i], 1, 0, &r, &st), 0);
    e8kv__v1__put_chunks_response__free_unpacked(r, NULL);
  }
  kvt_close(g_c);
  kvt_daemon_kill9(&g_d);
  assert_int_equal(kvt_daemon_start(&g_d, 1, NULL), 0);
  g_c = kvt_connect(g_d.target, NULL, 64 << 20);
  get_session_frames("crash", &t);
  get_session_frames("persist", &s);
  seq_free(&s);
  seq_free(&t);
}

/* A daemon started through kvt dies with the process that started it, even when that
 * process ends without kvt_daemon_stop/cleanup (a crash, an assertion, a timeout kill). */
static void test_daemon_dies_with_its_starter(void **state) {
  (void)state;
  int fds[2];
  assert_int_equal(pipe(fds), 0);
  pid_t starter = fork();
  assert_true(starter >= 0);
  if (starter == 0) {
    kvt_daemon d;
    if (kvt_daemon_init(&d) || kvt_daemon_start(&d, 0, NULL)) _exit(1);
    if (write(fds[1], &d, sizeof d) != (ssize_t)sizeof d) _exit(1);
    _exit(0); /* no stop, no cleanup */
  }
  kvt_daemon d;
  assert_int_equal(read(fds[0], &d, sizeof d), (ssize_t)sizeof d);
  close(fds[0]);
  close(fds[1]);
  int st;
  assert_int_equal(waitpid(starter, &st, 0), starter);
  assert_true(d.pid > 0);
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%d/stat", (int)d.pid);
  int dead = 0;
  /* the kernel kills it at once; 60 s only bounds a hang (100 polls of 50 ms = 5 s were not
   * much for a loaded machine to tear down a process with a mapped store) */
  for (double t0 = now_s(); !dead && now_s() - t0 < 60;) {
    FILE *f = fopen(path, "r");
    char *rp = f ? strrchr(fgets(line, sizeof line, f) ? line : "", ')') : NULL;
    dead = !f || (rp && (rp[2] == 'Z' || rp[2] == 'X')); /* gone, or a zombie of init */
    if (f) fclose(f);
    if (!dead) usleep(50000);
  }
  if (!dead) kill(d.pid, SIGKILL);
  d.pid = 0;
  kvt_daemon_cleanup(&d);
  assert_true(dead);
}

int main(int argc, char **argv) {
  (void)argc;
  kvt_set_binary_from_argv0(argv[0]);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_health),
      cmocka_unit_test(test_unknown_method),
      cmocka_unit_test(test_frames_roundtrip),
      cmocka_unit_test(test_raw_big),
      cmocka_unit_test(test_sessions),
      cmocka_unit_test(test_parent_and_replace),
      cmocka_unit_test(test_concurrent_puts),
      cmocka_unit_test(test_stats_verify_compact),
      cmocka_unit_test(test_metrics),
      cmocka_unit_test(test_restart_and_kill9),
      cmocka_unit_test(test_daemon_dies_with_its_starter),
  };
  return cmocka_run_group_tests_name("e8kvd end-to-end", tests, setup, teardown);
}
