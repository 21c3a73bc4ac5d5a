/*
 * test_libe8kv_e2e.c: libe8kv against a real e8kvd (address in $E8KV_TEST_ADDR;
 * started by tests/clients/test_ctl_e2e.py, which runs this program). Every
 * RPC of e8kv.v1 once, through the library's public API only:
 *   - client-side encoding (libe8codec) -> PutChunks in small pieces -> the
 *     daemon accepts the frames under the same fingerprint id;
 *   - GetChunks (by range and by keys, E8 frames) returns those bytes exactly;
 *     RAW fp16 from the daemon equals our own decode to fp16, and is close to
 *     the input (the codec's error, measured through encode -> bytes -> decode);
 *   - Lookup, CreateSession, AppendSession, GetSession, ListSessions (pages),
 *     DeleteSession, GetStats, Verify, Compact, health;
 *   - errors: unknown session (NOT_FOUND), frames under another fingerprint,
 *     NaN input (refused locally), a callback that stops the stream.
 */
#include <math.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "clients/c/e8kv.h"

#define L 2
#define H 2
#define D 64
#define CT 64                 /* chunk tokens */
#define NCH 4                 /* chunks: 3 full + 1 short */
#define LAST 20               /* tokens of the short last chunk */
#define NTOK (3 * CT + LAST)

static e8kv_client *cli;
static e8c_fingerprint fp;
static e8c_ctx *cctx;
static uint32_t tokens[NTOK];
static float *raw[NCH];        /* input of each chunk, fp32 */
static uint8_t *frame[NCH];    /* what we encoded */
static size_t frame_len[NCH];
static char sess[64];

/* Fails with the library's message when a call does not return E8KV_OK. */
#define EXPECT_OK(call)                                                                    \
  do {                                                                                     \
    e8kv_status s_ = (call);                                                               \
    if (s_ != E8KV_OK) fail_msg("%s -> %s: %s", #call, e8kv_status_name(s_), err.message); \
  } while (0)

static uint32_t chunk_n(int c) { return c == NCH - 1 ? LAST : CT; }

static int setup(void **state) {
  (void)state;
  const char *addr = getenv("E8KV_TEST_ADDR");
  if (!addr) {
    fprintf(stderr, "E8KV_TEST_ADDR is not set (run through tests/clients/test_ctl_e2e.py)\n");
    return -1;
  }
  e8kv_options o;
  e8kv_options_init(&o);
  o.address = addr;
  o.token = getenv("E8KV_TEST_TOKEN");
  e8kv_error err;
  if (e8kv_client_open(&o, &cli, &err)) return -1;
  memset(&fp, 0, sizeof fp);
  snprintf(fp.model_id, sizeof fp.model_id, "libe8kv-e2e");
  fp.n_layers = L;
  fp.n_kv_heads = H;
  fp.head_dim = D;
  fp.src_dtype = E8C_DTYPE_F16;
  fp.rope.type = E8C_ROPE_DEFAULT;
  fp.rope.layout = E8C_ROPE_LAYOUT_SPLIT_HALF;
  fp.rope.rotary_dim = D;
  fp.rope.theta = 10000;
  e8c_config_default(&fp.config);
  int64_t e = 0;
  cctx = e8c_ctx_create(&fp, &e);
  if (!cctx) return -1;
  uint64_t s = 12345;
  for (int i = 0; i < NTOK; i++) tokens[i] = (uint32_t)(1000 + i * 7 % 5003);
  for (int c = 0; c < NCH; c++) {
    size_t n = (size_t)L * 2 * H * chunk_n(c) * D;
    raw[c] = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) { /* smooth-ish values in about [-2, 2] */
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      raw[c][i] = (float)((double)(s >> 11) / 9007199254740992.0 * 4.0 - 2.0);
    }
  }
  snprintf(sess, sizeof sess, "libe2e-%d", (int)getpid());
  return 0;
}

static int teardown(void **state) {
  (void)state;
  for (int c = 0; c < NCH; c++) { free(raw[c]); free(frame[c]); }
  e8c_ctx_free(cctx);
  e8kv_client_close(cli);
  return 0;
}

static void test_health(void **state) {
  (void)state;
  int serving = 0;
  e8kv_error err;
  EXPECT_OK(e8kv_health_check(cli, "", &serving, &err));
  assert_int_equal(serving, GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING);
  EXPECT_OK(e8kv_health_check(cli, "e8kv.v1.KVStore", &serving, &err));
}

static void header_for(E8kv__V1__PutHeader *h, e8kv_fingerprint_pb *fpb) {
  e8kv_fingerprint_to_pb(&fp, fpb);
  E8kv__V1__PutHeader init = E8KV__V1__PUT_HEADER__INIT;
  *h = init;
  h->fingerprint = &fpb->m;
  h->chunk_tokens = CT;
  h->encoding = E8KV__V1__ENCODING__ENCODING_E8_FRAME;
}

static void test_put_encoded(void **state) {
  (void)state;
  e8kv_fingerprint_pb fpb;
  E8kv__V1__PutHeader h;
  header_for(&h, &fpb);
  h.session = sess;
  h.create_session = 1;
  E8kv__V1__PutHeader__SessionMetadataEntry me = E8KV__V1__PUT_HEADER__SESSION_METADATA_ENTRY__INIT;
  me.key = "owner";
  me.value = "libe8kv-e2e";
  E8kv__V1__PutHeader__SessionMetadataEntry *mep = &me;
  h.n_session_metadata = 1;
  h.session_metadata = &mep;
  e8kv_put *p = NULL;
  e8kv_error err;
  EXPECT_OK(e8kv_put_begin(cli, &h, &p, &err));
  e8kv_put_set_piece_bytes(p, 4096); /* many pieces per chunk */
  for (int c = 0; c < NCH; c++) {
    /* Encode locally too, to compare with what comes back. */
    e8c_chunk_params cp = {chunk_n(c), (uint32_t)(c * CT), NTOK, 0};
    int64_t cap = e8c_chunk_max_size(cctx, chunk_n(c));
    frame[c] = malloc((size_t)cap);
    int64_t n = e8c_chunk_encode(cctx, &cp, raw[c], E8C_DTYPE_F32, frame[c], (size_t)cap);
    assert_false(e8c_is_error(n));
    frame_len[c] = (size_t)n;
    EXPECT_OK(e8kv_put_chunk_encode(p, cctx, &cp, raw[c], E8C_DTYPE_F32, tokens + c * CT,
                                           chunk_n(c), &err));
  }
  E8kv__V1__PutChunksResponse *r = NULL;
  EXPECT_OK(e8kv_put_finish(p, &r, &err));
  assert_int_equal(r->n_chunk_keys, NCH);
  assert_int_equal(r->tokens, NTOK);
  assert_int_equal(r->chunks_stored + r->chunks_deduplicated, NCH);
  assert_int_equal(r->fingerprint_id.len, 32);
  assert_memory_equal(r->fingerprint_id.data, e8c_ctx_id(cctx), 32);
  assert_int_equal(r->raw_fp16_bytes, (uint64_t)2 * L * H * D * NTOK * 2);
  assert_non_null(r->session);
  assert_int_equal(r->session->n_tokens, NTOK);
  e8kv_msg_free(r);
}

static void test_get_session_and_list(void **state) {
  (void)state;
  E8kv__V1__GetSessionRequest req = E8KV__V1__GET_SESSION_REQUEST__INIT;
  req.name = sess;
  req.include_chunk_keys = 1;
  E8kv__V1__GetSessionResponse *r = NULL;
  e8kv_error err;
  EXPECT_OK(e8kv_get_session(cli, &req, &r, &err));
  E8kv__V1__SessionInfo *s = r->session;
  assert_string_equal(s->name, sess);
  assert_int_equal(s->n_tokens, NTOK);
  assert_int_equal(s->n_chunks, NCH);
  assert_int_equal(s->chunk_tokens, CT);
  assert_int_equal(s->n_chunk_keys, NCH);
  assert_memory_equal(s->fingerprint_id.data, e8c_ctx_id(cctx), 32);
  assert_int_equal(s->n_metadata, 1);
  assert_string_equal(s->metadata[0]->key, "owner");
  size_t total = 0;
  for (int c = 0; c < NCH; c++) total += frame_len[c];
  assert_true(s->stored_bytes >= total); /* frames + the daemon's token trailer */
  assert_string_equal(s->fingerprint->model_id, "libe8kv-e2e");
  e8kv_msg_free(r);

  req.name = "no-such-session";
  r = (E8kv__V1__GetSessionResponse *)1;
  assert_int_equal(e8kv_get_session(cli, &req, &r, &err), E8KV_NOT_FOUND);
  assert_null(r);
  assert_non_null(strstr(err.message, "no-such-session"));

  E8kv__V1__ListSessionsRequest lr = E8KV__V1__LIST_SESSIONS_REQUEST__INIT;
  lr.model_id = "libe8kv-e2e";
  E8kv__V1__ListSessionsResponse *l = NULL;
  EXPECT_OK(e8kv_list_sessions(cli, &lr, &l, &err));
  int found = 0;
  for (size_t i = 0; i < l->n_sessions; i++) found += strcmp(l->sessions[i]->name, sess) == 0;
  assert_int_equal(found, 1);
  e8kv_msg_free(l);
}

typedef struct got {
  int n;
  int same[NCH];
  uint64_t start[NCH];
  uint8_t *raw16[NCH];
  int stop_after;
} got;

static int on_chunk(void *arg, const e8kv_chunk *ch) {
  got *g = arg;
  int c = g->n++;
  if (c >= NCH) return 1;
  g->start[c] = ch->start_token;
  if (ch->encoding == E8KV__V1__ENCODING__ENCODING_E8_FRAME) {
    g->same[c] = ch->bytes == frame_len[c] && memcmp(ch->data, frame[c], ch->bytes) == 0 &&
                 ch->n_token_ids == chunk_n(c) &&
                 memcmp(ch->token_ids, tokens + c * CT, chunk_n(c) * 4) == 0;
  } else {
    g->raw16[c] = malloc(ch->bytes);
    memcpy(g->raw16[c], ch->data, ch->bytes);
    g->same[c] = ch->bytes == (uint64_t)L * 2 * H * chunk_n(c) * D * 2;
  }
  return g->stop_after && g->n >= g->stop_after;
}

static void test_get_chunks(void **state) {
  (void)state;
  E8kv__V1__SessionRange range = E8KV__V1__SESSION_RANGE__INIT;
  range.session = sess;
  E8kv__V1__GetChunksRequest req = E8KV__V1__GET_CHUNKS_REQUEST__INIT;
  req.selection_case = E8KV__V1__GET_CHUNKS_REQUEST__SELECTION_RANGE;
  req.range = &range;
  req.encoding = E8KV__V1__ENCODING__ENCODING_E8_FRAME;
  req.max_piece_bytes = 4096;
  got g;
  memset(&g, 0, sizeof g);
  e8kv_error err;
  EXPECT_OK(e8kv_get_chunks(cli, &req, on_chunk, &g, &err));
  assert_int_equal(g.n, NCH);
  for (int c = 0; c < NCH; c++) {
    assert_true(g.same[c]);
    assert_int_equal(g.start[c], (uint64_t)c * CT);
  }
  /* RAW fp16 from the daemon == our decode of the same frame to fp16, close to the input. */
  memset(&g, 0, sizeof g);
  req.encoding = E8KV__V1__ENCODING__ENCODING_RAW;
  req.dtype = E8KV__V1__DTYPE__DTYPE_FP16;
  req.max_piece_bytes = 0;
  EXPECT_OK(e8kv_get_chunks(cli, &req, on_chunk, &g, &err));
  assert_int_equal(g.n, NCH);
  for (int c = 0; c < NCH; c++) {
    assert_true(g.same[c]);
    size_t n = (size_t)L * 2 * H * chunk_n(c) * D;
    uint16_t *mine = malloc(n * 2);
    float *back = malloc(n * 4);
    e8kv_chunk ch = {.index = (uint32_t)c, .encoding = E8KV__V1__ENCODING__ENCODING_E8_FRAME,
                     .data = frame[c], .bytes = frame_len[c]};
    EXPECT_OK(e8kv_chunk_decode(cctx, &ch, 0, L, mine, E8C_DTYPE_F16, n * 2, &err));
    assert_memory_equal(mine, g.raw16[c], n * 2);
    EXPECT_OK(e8kv_chunk_decode(cctx, &ch, 0, L, back, E8C_DTYPE_F32, n * 4, &err));
    double se = 0, ss = 0;
    for (size_t i = 0; i < n; i++) {
      se += (back[i] - raw[c][i]) * (back[i] - raw[c][i]);
      ss += raw[c][i] * raw[c][i];
    }
    assert_true(sqrt(se / ss) < 0.35); /* K3V2 on uniform noise: relative RMS error well below */
    free(mine);
    free(back);
    free(g.raw16[c]);
  }
  /* A decode with a too small buffer is the codec's error, not a crash. */
  e8kv_chunk ch = {.index = 0, .encoding = E8KV__V1__ENCODING__ENCODING_E8_FRAME,
                   .data = frame[0], .bytes = frame_len[0]};
  uint16_t small[8];
  assert_int_equal(e8kv_chunk_decode(cctx, &ch, 0, L, small, E8C_DTYPE_F16, sizeof small, &err),
                   E8KV_E_CODEC);
  /* Stopping early cancels the stream. */
  memset(&g, 0, sizeof g);
  g.stop_after = 1;
  req.encoding = E8KV__V1__ENCODING__ENCODING_E8_FRAME;
  req.dtype = 0;
  assert_int_equal(e8kv_get_chunks(cli, &req, on_chunk, &g, &err), E8KV_E_ABORTED_BY_CALLER);
  assert_int_equal(g.n, 1);
}

/* A layer range asked as E8 frames comes as those layers' frames only (E8_LAYER_FRAMES);
 * e8kv_chunk_decode decodes them to what the whole frame decodes to for that range. */
typedef struct lf_got {
  int n, bad;
  uint8_t *data[NCH];
  size_t len[NCH];
  e8kv_chunk ch[NCH];
} lf_got;

static int on_layer_frames(void *ctx, const e8kv_chunk *c) {
  lf_got *g = ctx;
  if (g->n >= NCH || c->encoding != E8KV__V1__ENCODING__ENCODING_E8_LAYER_FRAMES ||
      c->layer_begin != 1 || c->layer_end != 2) {
    g->bad = 1;
    return 1;
  }
  g->data[g->n] = malloc(c->bytes);
  memcpy(g->data[g->n], c->data, c->bytes);
  g->ch[g->n] = *c;
  g->ch[g->n].data = g->data[g->n];
  g->len[g->n++] = c->bytes;
  return 0;
}

static void test_get_layer_frames(void **state) {
  (void)state;
  E8kv__V1__SessionRange range = E8KV__V1__SESSION_RANGE__INIT;
  range.session = sess;
  E8kv__V1__GetChunksRequest req = E8KV__V1__GET_CHUNKS_REQUEST__INIT;
  req.selection_case = E8KV__V1__GET_CHUNKS_REQUEST__SELECTION_RANGE;
  req.range = &range;
  req.encoding = E8KV__V1__ENCODING__ENCODING_E8_FRAME;
  req.layer_begin = 1;
  req.layer_end = 2;
  lf_got g;
  memset(&g, 0, sizeof g);
  e8kv_error err;
  EXPECT_OK(e8kv_get_chunks(cli, &req, on_layer_frames, &g, &err));
  assert_false(g.bad);
  assert_int_equal(g.n, NCH);
  for (int c = 0; c < NCH; c++) {
    assert_true(g.len[c] < frame_len[c]);
    size_t n = (size_t)2 * H * chunk_n(c) * D; /* one layer, K and V */
    uint16_t *want = malloc(n * 2), *have = malloc(n * 2);
    e8kv_chunk whole = {.index = (uint32_t)c, .encoding = E8KV__V1__ENCODING__ENCODING_E8_FRAME,
                        .data = frame[c], .bytes = frame_len[c]};
    EXPECT_OK(e8kv_chunk_decode(cctx, &whole, 1, 2, want, E8C_DTYPE_F16, n * 2, &err));
    EXPECT_OK(e8kv_chunk_decode(cctx, &g.ch[c], 1, 2, have, E8C_DTYPE_F16, n * 2, &err));
    assert_memory_equal(want, have, n * 2);
    /* a range the answer does not hold is the caller's error */
    assert_int_equal(e8kv_chunk_decode(cctx, &g.ch[c], 0, 2, have, E8C_DTYPE_F16, n * 2, &err),
                     E8KV_E_USAGE);
    free(want);
    free(have);
    free(g.data[c]);
  }
}

static void test_lookup_append_delete(void **state) {
  (void)state;
  e8kv_fingerprint_pb fpb;
  e8kv_fingerprint_to_pb(&fp, &fpb);
  E8kv__V1__LookupRequest lq = E8KV__V1__LOOKUP_REQUEST__INIT;
  lq.fingerprint = &fpb.m;
  lq.chunk_tokens = CT;
  lq.n_token_ids = NTOK;
  lq.token_ids = tokens;
  E8kv__V1__LookupResponse *lr = NULL;
  e8kv_error err;
  EXPECT_OK(e8kv_lookup(cli, &lq, &lr, &err));
  assert_int_equal(lr->matched_tokens, NTOK);
  assert_int_equal(lr->n_chunk_keys, NCH);
  e8kv_msg_free(lr);
  uint32_t other[2 * CT];
  memcpy(other, tokens, sizeof other);
  other[CT + 5] ^= 1; /* second chunk differs: only the first matches */
  lq.n_token_ids = 2 * CT;
  lq.token_ids = other;
  EXPECT_OK(e8kv_lookup(cli, &lq, &lr, &err));
  assert_int_equal(lr->matched_tokens, CT);
  e8kv_msg_free(lr);

  char name2[80];
  snprintf(name2, sizeof name2, "%s-b", sess);
  E8kv__V1__CreateSessionRequest cq = E8KV__V1__CREATE_SESSION_REQUEST__INIT;
  cq.name = name2;
  cq.fingerprint = &fpb.m;
  cq.chunk_tokens = CT;
  E8kv__V1__CreateSessionResponse *cr = NULL;
  EXPECT_OK(e8kv_create_session(cli, &cq, &cr, &err));
  assert_true(cr->created);
  e8kv_msg_free(cr);
  assert_int_equal(e8kv_create_session(cli, &cq, &cr, &err), E8KV_ALREADY_EXISTS);

  E8kv__V1__AppendSessionRequest aq = E8KV__V1__APPEND_SESSION_REQUEST__INIT;
  aq.name = name2;
  aq.n_token_ids = 2 * CT;
  aq.token_ids = tokens;
  E8kv__V1__AppendSessionResponse *ar = NULL;
  EXPECT_OK(e8kv_append_session(cli, &aq, &ar, &err));
  assert_int_equal(ar->session->n_tokens, 2 * CT);
  assert_int_equal(ar->n_chunk_keys, 2);
  e8kv_msg_free(ar);

  /* Two pages of one session each. */
  E8kv__V1__ListSessionsRequest lsq = E8KV__V1__LIST_SESSIONS_REQUEST__INIT;
  lsq.page_size = 1;
  lsq.name_prefix = sess;
  E8kv__V1__ListSessionsResponse *p1 = NULL, *p2 = NULL;
  EXPECT_OK(e8kv_list_sessions(cli, &lsq, &p1, &err));
  assert_int_equal(p1->n_sessions, 1);
  assert_true(p1->next_page_token[0] != '\0');
  lsq.page_token = p1->next_page_token;
  EXPECT_OK(e8kv_list_sessions(cli, &lsq, &p2, &err));
  assert_int_equal(p2->n_sessions, 1);
  assert_string_not_equal(p1->sessions[0]->name, p2->sessions[0]->name);
  e8kv_msg_free(p1);
  e8kv_msg_free(p2);

  E8kv__V1__DeleteSessionRequest dq = E8KV__V1__DELETE_SESSION_REQUEST__INIT;
  dq.name = name2;
  E8kv__V1__DeleteSessionResponse *dr = NULL;
  EXPECT_OK(e8kv_delete_session(cli, &dq, &dr, &err));
  e8kv_msg_free(dr);
  assert_int_equal(e8kv_delete_session(cli, &dq, &dr, &err), E8KV_NOT_FOUND);
  dq.name = sess;
  EXPECT_OK(e8kv_delete_session(cli, &dq, &dr, &err));
  e8kv_msg_free(dr);
}

static void test_bad_input(void **state) {
  (void)state;
  /* Frames of another fingerprint under this header: refused, nothing committed. */
  e8c_fingerprint fp2 = fp;
  fp2.config.hadamard_seed ^= 1;
  int64_t e = 0;
  e8c_ctx *c2 = e8c_ctx_create(&fp2, &e);
  assert_non_null(c2);
  e8kv_fingerprint_pb fpb;
  E8kv__V1__PutHeader h;
  header_for(&h, &fpb);
  e8kv_put *p = NULL;
  e8kv_error err;
  EXPECT_OK(e8kv_put_begin(cli, &h, &p, &err));
  e8c_chunk_params cp = {CT, 0, CT, 0};
  e8kv_status s = e8kv_put_chunk_encode(p, c2, &cp, raw[0], E8C_DTYPE_F32, tokens, CT, &err);
  E8kv__V1__PutChunksResponse *r = NULL;
  if (s == E8KV_OK) s = e8kv_put_finish(p, &r, &err);
  else e8kv_put_abort(p);
  assert_true(s == E8KV_INVALID_ARGUMENT || s == E8KV_FAILED_PRECONDITION);
  assert_null(r);
  e8c_ctx_free(c2);
  /* NaN input: the codec refuses it here, before anything is sent. */
  EXPECT_OK(e8kv_put_begin(cli, &h, &p, &err));
  float saved = raw[0][3];
  raw[0][3] = NAN;
  assert_int_equal(e8kv_put_chunk_encode(p, cctx, &cp, raw[0], E8C_DTYPE_F32, tokens, CT, &err),
                   E8KV_E_CODEC);
  raw[0][3] = saved;
  e8kv_put_abort(p);
  /* An aborted stream commits nothing: the session it would have created never appears. */
  char name[80];
  snprintf(name, sizeof name, "%s-aborted", sess);
  h.session = name;
  h.create_session = 1;
  EXPECT_OK(e8kv_put_begin(cli, &h, &p, &err));
  cp.first_pos = 0;
  EXPECT_OK(e8kv_put_chunk_encode(p, cctx, &cp, raw[0], E8C_DTYPE_F32, tokens, CT, &err));
  e8kv_put_abort(p);
  E8kv__V1__GetSessionRequest gq = E8KV__V1__GET_SESSION_REQUEST__INIT;
  gq.name = name;
  E8kv__V1__GetSessionResponse *gr = NULL;
  assert_int_equal(e8kv_get_session(cli, &gq, &gr, &err), E8KV_NOT_FOUND);
}

static void test_stats_verify_compact(void **state) {
  (void)state;
  e8kv_error err;
  E8kv__V1__GetStatsResponse *st = NULL;
  EXPECT_OK(e8kv_get_stats(cli, &st, &err));
  assert_non_null(st->namespace_stats);
  e8kv_msg_free(st);
  E8kv__V1__VerifyRequest vq = E8KV__V1__VERIFY_REQUEST__INIT;
  E8kv__V1__VerifyResponse *vr = NULL;
  EXPECT_OK(e8kv_verify(cli, &vq, &vr, &err));
  assert_true(vr->complete);
  e8kv_msg_free(vr);
  E8kv__V1__CompactRequest kq = E8KV__V1__COMPACT_REQUEST__INIT;
  E8kv__V1__CompactResponse *kr = NULL;
  EXPECT_OK(e8kv_compact(cli, &kq, &kr, &err));
  e8kv_msg_free(kr);
}

static int slow_chunk(void *arg, const e8kv_chunk *ch) {
  (void)ch;
  (*(int *)arg)++;
  usleep(2500 * 1000); /* longer than the stream's whole deadline */
  return 0;
}

/* A stream that outlives its deadline ends with DEADLINE_EXCEEDED, not a hang or a
 * silently short answer. The deadline (2 s) leaves a loaded machine ample time for the first
 * chunk (200 ms did not always: 0 calls); the first callback outlasts it, and the status cannot
 * be OK on a fast machine either: gRPC gives a status only after the messages before it are
 * read, so the deadline passes with chunks unread. */
static void test_stream_deadline(void **state) {
  (void)state;
  e8kv_options o;
  e8kv_options_init(&o);
  o.address = getenv("E8KV_TEST_ADDR");
  o.token = getenv("E8KV_TEST_TOKEN");
  o.stream_deadline_ms = 2000;
  e8kv_client *c = NULL;
  e8kv_error err;
  EXPECT_OK(e8kv_client_open(&o, &c, &err));
  E8kv__V1__SessionRange range = E8KV__V1__SESSION_RANGE__INIT;
  range.session = sess;
  E8kv__V1__GetChunksRequest req = E8KV__V1__GET_CHUNKS_REQUEST__INIT;
  req.selection_case = E8KV__V1__GET_CHUNKS_REQUEST__SELECTION_RANGE;
  req.range = &range;
  req.encoding = E8KV__V1__ENCODING__ENCODING_RAW; /* larger: many pieces */
  req.dtype = E8KV__V1__DTYPE__DTYPE_FP32;
  req.max_piece_bytes = 4096;
  int calls = 0;
  e8kv_status s = e8kv_get_chunks(c, &req, slow_chunk, &calls, &err);
  assert_int_equal(s, E8KV_DEADLINE_EXCEEDED);
  assert_true(calls >= 1 && calls < NCH);
  e8kv_client_close(c);
}

/* One client shared by threads (e8kv.h: thread-safe after open). */
static void *stats_worker(void *arg) {
  (void)arg;
  intptr_t bad = 0;
  for (int i = 0; i < 25; i++) {
    E8kv__V1__GetStatsResponse *r = NULL;
    E8kv__V1__GetSessionRequest q = E8KV__V1__GET_SESSION_REQUEST__INIT;
    q.name = "no-such-session";
    E8kv__V1__GetSessionResponse *g = NULL;
    if (e8kv_get_stats(cli, &r, NULL) != E8KV_OK || !r->namespace_stats) bad++;
    if (e8kv_get_session(cli, &q, &g, NULL) != E8KV_NOT_FOUND || g) bad++;
    e8kv_msg_free(r);
  }
  return (void *)bad;
}

static void test_shared_client_threads(void **state) {
  (void)state;
  pthread_t t[4];
  for (int i = 0; i < 4; i++) assert_int_equal(pthread_create(&t[i], NULL, stats_worker, NULL), 0);
  for (int i = 0; i < 4; i++) {
    void *bad = NULL;
    pthread_join(t[i], &bad);
    assert_int_equal((intptr_t)bad, 0);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_health),
      cmocka_unit_test(test_put_encoded),
      cmocka_unit_test(test_get_session_and_list),
      cmocka_unit_test(test_get_chunks),
      cmocka_unit_test(test_get_layer_frames),
      cmocka_unit_test(test_stream_deadline),
      cmocka_unit_test(test_lookup_append_delete),
      cmocka_unit_test(test_bad_input),
      cmocka_unit_test(test_stats_verify_compact),
      cmocka_unit_test(test_shared_client_threads),
  };
  return cmocka_run_group_tests_name("libe8kv_e2e", tests, setup, teardown);
}
