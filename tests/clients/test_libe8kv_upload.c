/*
 * test_libe8kv_upload.c: libe8kv's background upload (e8kv_upload_*) against a real e8kvd
 * (started here on a temp dir through tests/daemon's kvt_daemon helpers).
 *   - chunks queued from caller buffers arrive as sent: GetChunks returns the same bytes,
 *     with small pieces (a chunk cut in many messages) and with the default (several chunks
 *     per message); a second upload of the same chunks is deduplicated; a session is
 *     created and grows; the reply packs with e8kv_msg_pack;
 *   - errors: an unknown session without create_session (NOT_FOUND, also from add once
 *     known), frames of another fingerprint (refused), the daemon killed mid-stream (an
 *     error, no hang), an aborted upload leaves its session empty, bad arguments (E_USAGE).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "clients/c/e8kv.h"
#include "tests/daemon/kvt_util.h"

#define CT 64  /* chunk tokens */
#define NCH 6  /* chunks: 5 full + 1 short */
#define LAST 9

typedef struct chain {
  uint32_t tokens[NCH * CT];
  uint8_t *frame[NCH];
  size_t len[NCH];
} chain;

static kvt_fp g_fp, g_other;

static uint32_t chunk_n(int c) { return c == NCH - 1 ? LAST : CT; }

static void chain_make(chain *ch, const kvt_fp *f, uint32_t seed) {
  kvt_tokens(ch->tokens, NCH * CT, seed, 0);
  for (int c = 0; c < NCH; c++) {
    size_t raw_bytes;
    uint16_t *raw = kvt_kv_make(f, chunk_n(c), seed * 100 + (uint32_t)c, &raw_bytes);
    ch->frame[c] = kvt_encode(f, raw, chunk_n(c), (uint32_t)c * CT, &ch->len[c]);
    free(raw);
    assert_non_null(ch->frame[c]);
  }
}

static void chain_free(chain *ch) {
  for (int c = 0; c < NCH; c++) free(ch->frame[c]);
}

static e8kv_client *open_client(const kvt_daemon *d) {
  e8kv_options o;
  e8kv_options_init(&o);
  o.address = d->target;
  e8kv_client *c = NULL;
  e8kv_error err;
  if (e8kv_client_open(&o, &c, &err)) fail_msg("open: %s", err.message);
  return c;
}

static E8kv__V1__PutHeader header(const kvt_fp *f, const char *session, int create) {
  E8kv__V1__PutHeader h = E8KV__V1__PUT_HEADER__INIT;
  h.fingerprint = (E8kv__V1__ModelFingerprint *)&f->pb;
  h.chunk_tokens = CT;
  h.encoding = E8KV__V1__ENCODING__ENCODING_E8_FRAME;
  h.session = (char *)(session ? session : "");
  h.create_session = create;
  return h;
}

/* Uploads chunks [0, n) of ch; returns finish's status, *out the reply (or NULL). */
static e8kv_status upload(e8kv_client *c, const E8kv__V1__PutHeader *h, const chain *ch, int n,
                          size_t piece, E8kv__V1__PutChunksResponse **out, e8kv_error *err) {
  e8kv_upload *u;
  e8kv_status st = e8kv_upload_start(c, h, piece, &u, err);
  if (st) return st;
  for (int i = 0; i < n && !st; i++)
    st = e8kv_upload_add(u, ch->tokens + (size_t)i * CT, chunk_n(i), ch->frame[i], ch->len[i],
                         i % 2 ? "alias-of-chunk" : NULL, i % 2 ? 14 : 0, err);
  if (st) {
    e8kv_upload_abort(u);
    return st;
  }
  return e8kv_upload_finish(u, out, err);
}

typedef struct got {
  int n;
  int same;
} got;

static int on_chunk(void *ctx, const e8kv_chunk *c) {
  struct { got g; const chain *ch; } *x = ctx;
  int i = (int)c->index;
  if (i < NCH && c->bytes == x->ch->len[i] && memcmp(c->data, x->ch->frame[i], c->bytes) == 0)
    x->g.same++;
  x->g.n++;
  return 0;
}

/* GetChunks of the reply's keys returns the very frames of ch. */
static void expect_stored(e8kv_client *c, const E8kv__V1__PutChunksResponse *r, const chain *ch) {
  E8kv__V1__ChunkKeys ck = E8KV__V1__CHUNK_KEYS__INIT;
  ck.n_keys = r->n_chunk_keys;
  ck.keys = r->chunk_keys;
  E8kv__V1__GetChunksRequest q = E8KV__V1__GET_CHUNKS_REQUEST__INIT;
  q.selection_case = E8KV__V1__GET_CHUNKS_REQUEST__SELECTION_KEYS;
  q.keys = &ck;
  q.encoding = E8KV__V1__ENCODING__ENCODING_E8_FRAME;
  struct { got g; const chain *ch; } x = {{0, 0}, ch};
  e8kv_error err;
  e8kv_status st = e8kv_get_chunks(c, &q, on_chunk, &x, &err);
  if (st) fail_msg("get_chunks: %s", err.message);
  assert_int_equal(x.g.n, NCH);
  assert_int_equal(x.g.same, NCH);
}

static void test_upload_stores_the_bytes(void **state) {
  (void)state;
  kvt_daemon d;
  assert_int_equal(kvt_daemon_init(&d), 0);
  assert_int_equal(kvt_daemon_start(&d, 0, NULL), 0);
  e8kv_client *c = open_client(&d);
  e8kv_error err;
  for (int variant = 0; variant < 2; variant++) {
    chain ch;
    chain_make(&ch, &g_fp, 10 + (uint32_t)variant);
    /* 4 KiB pieces: every chunk in several messages; default: chunks share messages */
    size_t piece = variant == 0 ? 4096 : 0;
    E8kv__V1__PutHeader h = header(&g_fp, NULL, 0);
    E8kv__V1__PutChunksResponse *r = NULL;
    e8kv_status st = upload(c, &h, &ch, NCH, piece, &r, &err);
    if (st) fail_msg("upload: %s: %s", e8kv_status_name(st), err.message);
    assert_int_equal(r->n_chunk_keys, NCH);
    assert_int_equal(r->chunks_stored, NCH);
    assert_int_equal(r->tokens, (NCH - 1) * CT + LAST);
    expect_stored(c, r, &ch);
    /* the reply serializes for bindings: size first, then the bytes, which parse back */
    size_t n = e8kv_msg_pack(r, NULL, 0);
    uint8_t *b = malloc(n);
    assert_int_equal(e8kv_msg_pack(r, b, n), n);
    E8kv__V1__PutChunksResponse *back = e8kv__v1__put_chunks_response__unpack(NULL, n, b);
    assert_non_null(back);
    assert_int_equal(back->chunks_stored, NCH);
    e8kv__v1__put_chunks_response__free_unpacked(back, NULL);
    free(b);
    e8kv_msg_free(r);
    /* the same chunks again: deduplicated, the same keys */
    st = upload(c, &h, &ch, NCH, piece, &r, &err);
    if (st) fail_msg("second upload: %s", err.message);
    assert_int_equal(r->chunks_stored, 0);
    assert_int_equal(r->chunks_deduplicated, NCH);
    e8kv_msg_free(r);
    chain_free(&ch);
  }
  /* a session created by the upload, then grown by a second one */
  chain ch;
  chain_make(&ch, &g_fp, 20);
  E8kv__V1__PutHeader h = header(&g_fp, "up-sess", 1);
  E8kv__V1__PutChunksResponse *r = NULL;
  if (upload(c, &h, &ch, 2, 0, &r, &err)) fail_msg("session upload: %s", err.message);
  assert_non_null(r->session);
  assert_int_equal(r->session->n_tokens, 2 * CT);
  e8kv_msg_free(r);
  E8kv__V1__PutChunksResponse *r2 = NULL;
  e8kv_upload *u;
  h.create_session = 0;
  assert_int_equal(e8kv_upload_start(c, &h, 0, &u, &err), E8KV_OK);
  for (int i = 2; i < NCH; i++)
    assert_int_equal(e8kv_upload_add(u, ch.tokens + (size_t)i * CT, chunk_n(i), ch.frame[i],
                                     ch.len[i], NULL, 0, &err), E8KV_OK);
  if (e8kv_upload_finish(u, &r2, &err)) fail_msg("session append: %s", err.message);
  assert_int_equal(r2->session->n_tokens, (NCH - 1) * CT + LAST);
  e8kv_msg_free(r2);
  chain_free(&ch);
  e8kv_client_close(c);
  assert_int_equal(kvt_daemon_stop(&d), 0);
  kvt_daemon_cleanup(&d);
}

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + t.tv_nsec / 1e9;
}

static void test_upload_errors(void **state) {
  (void)state;
  kvt_daemon d;
  assert_int_equal(kvt_daemon_init(&d), 0);
  assert_int_equal(kvt_daemon_start(&d, 0, NULL), 0);
  e8kv_client *c = open_client(&d);
  e8kv_error err;
  chain ch;
  chain_make(&ch, &g_fp, 30);
  /* an unknown session, not created: NOT_FOUND from finish, and from add once known */
  E8kv__V1__PutHeader h = header(&g_fp, "nobody-made-me", 0);
  E8kv__V1__PutChunksResponse *r = NULL;
  e8kv_upload *u;
  assert_int_equal(e8kv_upload_start(c, &h, 0, &u, &err), E8KV_OK);
  e8kv_status st = E8KV_OK;
  /* until the daemon's refusal reaches the uploader; 60 s only bounds a hang (500 polls of
   * 10 ms were ~5 s, not much on a loaded machine) */
  for (double t0 = now_s(); !st && now_s() - t0 < 60;) {
    st = e8kv_upload_add(u, ch.tokens, CT, ch.frame[0], ch.len[0], NULL, 0, &err);
    if (!st) usleep(10000);
  }
  assert_int_equal(st, E8KV_NOT_FOUND);
  assert_non_null(strstr(err.message, "PutChunks"));
  memset(&err, 0, sizeof err);
  assert_int_equal(e8kv_upload_finish(u, &r, &err), E8KV_NOT_FOUND);
  assert_null(r);
  assert_non_null(strstr(err.message, "nobody-made-me"));
  /* frames of another fingerprint than the header's: refused, nothing stored */
  h = header(&g_other, NULL, 0);
  st = upload(c, &h, &ch, NCH, 0, &r, &err);
  assert_true(st == E8KV_INVALID_ARGUMENT || st == E8KV_FAILED_PRECONDITION);
  assert_null(r);
  assert_non_null(strstr(err.message, "fingerprint"));
  /* an aborted upload to a new session: the session holds nothing */
  h = header(&g_fp, "aborted", 1);
  assert_int_equal(e8kv_upload_start(c, &h, 4096, &u, &err), E8KV_OK);
  for (int i = 0; i < NCH; i++)
    e8kv_upload_add(u, ch.tokens + (size_t)i * CT, chunk_n(i), ch.frame[i], ch.len[i], NULL, 0,
                    &err);
  e8kv_upload_abort(u);
  E8kv__V1__GetSessionRequest gq = E8KV__V1__GET_SESSION_REQUEST__INIT;
  gq.name = "aborted";
  E8kv__V1__GetSessionResponse *gs = NULL;
  st = e8kv_get_session(c, &gq, &gs, &err);
  assert_true(st == E8KV_NOT_FOUND || (st == E8KV_OK && gs->session->n_tokens == 0));
  e8kv_msg_free(gs);
  /* bad arguments */
  assert_int_equal(e8kv_upload_start(NULL, &h, 0, &u, &err), E8KV_E_USAGE);
  assert_null(u);
  assert_int_equal(e8kv_upload_start(c, &h, 100, &u, &err), E8KV_E_USAGE);
  assert_non_null(strstr(err.message, "piece_bytes"));
  const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 0x0f};
  assert_int_equal(e8kv_upload_start_packed(c, junk, sizeof junk, 0, &u, &err), E8KV_E_USAGE);
  E8kv__V1__PutHeader empty = E8KV__V1__PUT_HEADER__INIT;
  assert_int_equal(e8kv_upload_start(c, &empty, 0, &u, &err), E8KV_E_USAGE);
  h = header(&g_fp, NULL, 0);
  assert_int_equal(e8kv_upload_start(c, &h, 0, &u, &err), E8KV_OK);
  assert_int_equal(e8kv_upload_add(u, NULL, 1, ch.frame[0], 1, NULL, 0, &err), E8KV_E_USAGE);
  assert_int_equal(e8kv_upload_add(u, ch.tokens, 1, ch.frame[0], 0, NULL, 0, &err), E8KV_E_USAGE);
  char alias[65] = {0};
  assert_int_equal(e8kv_upload_add(u, ch.tokens, 1, ch.frame[0], 1, alias, 65, &err),
                   E8KV_E_USAGE);
  /* no chunk at all: the daemon refuses the call, and finish says so */
  assert_int_equal(e8kv_upload_finish(u, NULL, &err), E8KV_INVALID_ARGUMENT);
  assert_non_null(strstr(err.message, "no chunks"));
  assert_int_equal(e8kv_upload_finish(NULL, &r, &err), E8KV_E_USAGE);
  e8kv_upload_abort(NULL);
  chain_free(&ch);
  e8kv_client_close(c);
  assert_int_equal(kvt_daemon_stop(&d), 0);
  kvt_daemon_cleanup(&d);
}


static void test_upload_daemon_gone_mid_stream(void **state) {
  (void)state;
  kvt_daemon d;
  assert_int_equal(kvt_daemon_init(&d), 0);
  assert_int_equal(kvt_daemon_start(&d, 0, NULL), 0);
  e8kv_client *c = open_client(&d);
  e8kv_error err;
  chain ch;
  chain_make(&ch, &g_fp, 40);
  E8kv__V1__PutHeader h = header(&g_fp, NULL, 0);
  e8kv_upload *u;
  assert_int_equal(e8kv_upload_start(c, &h, 4096, &u, &err), E8KV_OK);
  assert_int_equal(e8kv_upload_add(u, ch.tokens, CT, ch.frame[0], ch.len[0], NULL, 0, &err),
                   E8KV_OK);
  size_t sent = 0;
  for (double t0 = now_s(); sent < 1 && now_s() - t0 < 60;) { /* bounds a hang only */
    e8kv_upload_stats(u, NULL, &sent, NULL);
    if (sent < 1) usleep(10000);
  }
  assert_int_equal(sent, 1); /* the stream is live: the daemon took chunk 0 */
  kvt_daemon_kill9(&d);
  double t0 = now_s();
  e8kv_status st = E8KV_OK;
  for (int i = 1; i < NCH && !st; i++)
    st = e8kv_upload_add(u, ch.tokens + (size_t)i * CT, chunk_n(i), ch.frame[i], ch.len[i], NULL,
                         0, &err);
  E8kv__V1__PutChunksResponse *r = NULL;
  memset(&err, 0, sizeof err);
  st = e8kv_upload_finish(u, &r, &err);
  assert_true(e8kv_is_error(st));
  assert_null(r);
  assert_true(st == E8KV_UNAVAILABLE || st == E8KV_CANCELLED || st == E8KV_UNKNOWN ||
              st == E8KV_INTERNAL);
  assert_true(strlen(err.message) > 0);
  assert_true(now_s() - t0 < 30);
  fprintf(stderr, "daemon killed mid-stream: %s: %s (after %.2f s)\n", e8kv_status_name(st),
          err.message, now_s() - t0);
  chain_free(&ch);
  e8kv_client_close(c);
  kvt_daemon_cleanup(&d);
}

int main(int argc, char **argv) {
  (void)argc;
  kvt_set_binary_from_argv0(argv[0]);
  kvt_fp_make(&g_fp, "test/upload", 2, 2, 64);
  kvt_fp_make(&g_other, "test/upload-other", 2, 2, 64);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_upload_stores_the_bytes),
      cmocka_unit_test(test_upload_errors),
      cmocka_unit_test(test_upload_daemon_gone_mid_stream),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
