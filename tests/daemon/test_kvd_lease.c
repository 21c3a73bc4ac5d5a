/* test_kvd_lease.c: end to end against a real e8kvd with a small byte budget:
 *   - Lookup pins what it matched under a lease: chunks a later put would evict survive until
 *     GetChunks' release_lease (or the lease's end); with no_lease they are evicted;
 *   - lease tokens are refused when forged or damaged;
 *   - GetChunks of a layer range as E8 frames sends only that range's frames, as stored
 *     (ENCODING_E8_LAYER_FRAMES), and they decode to what the whole chunk decodes to;
 *   - GetStats counts namespaces; Verify with max_bytes stops early and says so. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "tests/daemon/kvt_util.h"

#define CT 64
#define CAPACITY "120K" /* about five chunks of the tiny fingerprint */

static kvt_daemon g_d;
static kvt_conn *g_c;
static kvt_fp g_fp;

static int setup(void **state) {
  (void)state;
  kvt_fp_make(&g_fp, "test/lease", 4, 2, 64);
  const char *extra[] = {"--capacity-bytes=" CAPACITY, NULL};
  if (kvt_daemon_init(&g_d) || kvt_daemon_start(&g_d, 0, extra)) return -1;
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

/* Puts one chunk of CT tokens (its own sequence, tokens from seed); its key into key. */
static void put_one(uint32_t seed, uint32_t tok[CT], uint8_t key[32]) {
  kvt_tokens(tok, CT, seed, 0);
  size_t rl, fl;
  uint16_t *raw = kvt_kv_make(&g_fp, CT, seed, &rl);
  uint8_t *frame = kvt_encode(&g_fp, raw, CT, 0, &fl);
  kvt_chunk ch = {tok, CT, frame, fl};
  E8kv__V1__PutHeader h;
  e8kv__v1__put_header__init(&h);
  h.fingerprint = &g_fp.pb;
  h.chunk_tokens = CT;
  h.encoding = E8KV__V1__ENCODING__ENCODING_E8_FRAME;
  E8kv__V1__PutChunksResponse *r;
  kvt_status st;
  int code = kvt_put(g_c, &h, &ch, 1, 0, &r, &st);
  if (code) print_error("put %u: %d %s\n", seed, code, st.msg);
  assert_int_equal(code, 0);
  memcpy(key, r->chunk_keys[0].data, 32);
  e8kv__v1__put_chunks_response__free_unpacked(r, NULL);
  free(raw);
  free(frame);
}

static E8kv__V1__LookupResponse *lookup(const uint32_t tok[CT], int no_lease) {
  E8kv__V1__LookupRequest q;
  e8kv__v1__lookup_request__init(&q);
  q.fingerprint = &g_fp.pb;
  q.chunk_tokens = CT;
  q.token_ids = (uint32_t *)tok;
  q.n_token_ids = CT;
  q.no_lease = no_lease;
  ProtobufCMessage *m = NULL;
  kvt_status st;
  assert_int_equal(kvt_unary(g_c, KVT_SVC "Lookup", &q.base,
                             &e8kv__v1__lookup_response__descriptor, &m, &st, 10000), 0);
  return (E8kv__V1__LookupResponse *)m;
}

/* GetChunks of one key (encoded), optionally releasing a lease. Returns the status code. */
static int get_key(const uint8_t key[32], ProtobufCBinaryData lease, kvt_status *st) {
  E8kv__V1__GetChunksRequest q;
  E8kv__V1__ChunkKeys ck;
  e8kv__v1__get_chunks_request__init(&q);
  e8kv__v1__chunk_keys__init(&ck);
  ProtobufCBinaryData kb = {32, (uint8_t *)key};
  ck.keys = &kb;
  ck.n_keys = 1;
  q.selection_case = E8KV__V1__GET_CHUNKS_REQUEST__SELECTION_KEYS;
  q.keys = &ck;
  q.release_lease = lease;
  kvt_got g[1];
  size_t n = 0;
  int code = kvt_get(g_c, &q, g, 1, &n, st, 10000);
  kvt_got_free(g, n);
  return code;
}

/* Puts `count` other chunks: more than the budget, so unpinned old chunks are evicted. */
static void churn(uint32_t seed0, int count) {
  uint32_t tok[CT];
  uint8_t key[32];
  for (int i = 0; i < count; i++) put_one(seed0 + (uint32_t)i, tok, key);
}

static void test_lease_pins_until_released(void **state) {
  (void)state;
  uint32_t tok[CT];
  uint8_t key[32];
  kvt_status st;
  put_one(1, tok, key);
  E8kv__V1__LookupResponse *lr = lookup(tok, 0);
  assert_int_equal(lr->matched_tokens, CT);
  assert_int_equal(lr->lease.len, 16);
  assert_int_equal(lr->lease_ms, 30000); /* --lookup-lease-ms default */
  churn(100, 12);
  /* still there, although a dozen newer chunks went through a five-chunk budget */
  ProtobufCBinaryData bad = {lr->lease.len, malloc(lr->lease.len)};
  memcpy(bad.data, lr->lease.data, bad.len);
  bad.data[12] ^= 1; /* damaged token: refused before anything is sent */
  assert_int_equal(get_key(key, bad, &st), 3 /* INVALID_ARGUMENT */);
  assert_non_null(strstr(st.msg, "release_lease"));
  bad.len = 5;
  assert_int_equal(get_key(key, bad, &st), 3);
  free(bad.data);
  assert_int_equal(get_key(key, lr->lease, &st), 0); /* read, and the lease ends */
  protobuf_c_message_free_unpacked(&lr->base, NULL);
  churn(200, 12);
  assert_int_equal(get_key(key, (ProtobufCBinaryData){0, NULL}, &st), 5 /* NOT_FOUND */);
  lr = lookup(tok, 0);
  assert_int_equal(lr->matched_tokens, 0);
  assert_int_equal(lr->lease.len, 0); /* nothing matched: no lease */
  protobuf_c_message_free_unpacked(&lr->base, NULL);
}

static void test_no_lease_is_evicted(void **state) {
  (void)state;
  uint32_t tok[CT];
  uint8_t key[32];
  kvt_status st;
  put_one(2, tok, key);
  E8kv__V1__LookupResponse *lr = lookup(tok, 1);
  assert_int_equal(lr->matched_tokens, CT);
  assert_int_equal(lr->lease.len, 0);
  protobuf_c_message_free_unpacked(&lr->base, NULL);
  churn(300, 12);
  assert_int_equal(get_key(key, (ProtobufCBinaryData){0, NULL}, &st), 5 /* NOT_FOUND */);
}

static void test_layer_frames(void **state) {
  (void)state;
  uint32_t tok[CT];
  uint8_t key[32];
  put_one(3, tok, key);
  E8kv__V1__GetChunksRequest q;
  E8kv__V1__ChunkKeys ck;
  e8kv__v1__get_chunks_request__init(&q);
  e8kv__v1__chunk_keys__init(&ck);
  ProtobufCBinaryData kb = {32, key};
  ck.keys = &kb;
  ck.n_keys = 1;
  q.selection_case = E8KV__V1__GET_CHUNKS_REQUEST__SELECTION_KEYS;
  q.keys = &ck;
  kvt_got full[1], part[1];
  size_t n;
  kvt_status st;
  assert_int_equal(kvt_get(g_c, &q, full, 1, &n, &st, 10000), 0);
  assert_int_equal(full[0].encoding, E8KV__V1__ENCODING__ENCODING_E8_FRAME);
  q.layer_begin = 1;
  q.layer_end = 3;
  q.max_piece_bytes = 4096;
  assert_int_equal(kvt_get(g_c, &q, part, 1, &n, &st, 10000), 0);
  assert_int_equal(part[0].encoding, E8KV__V1__ENCODING__ENCODING_E8_LAYER_FRAMES);
  assert_true(part[0].len < full[0].len);
  assert_non_null(memmem(full[0].data, full[0].len, part[0].data, part[0].len)); /* as stored */
  int64_t err;
  e8c_ctx *ctx = e8c_ctx_create(&g_fp.fp, &err);
  int64_t need = e8c_chunk_raw_size(ctx, 1, 3, CT, E8C_DTYPE_F32);
  float *want = malloc((size_t)need), *got = malloc((size_t)need);
  assert_int_equal(e8c_chunk_decode(ctx, full[0].data, full[0].len, 1, 3, NULL, want,
                                    E8C_DTYPE_F32, (size_t)need), 0);
  size_t one = (size_t)need / 4, off = 0; /* [2 layers][K, V] frames, back to back */
  for (int i = 0; i < 4; i++) {
    e8c_frame_info fi;
    assert_int_equal(e8c_frame_info_get(part[0].data + off, part[0].len - off, &fi), 0);
    assert_int_equal(fi.layer, 1 + i / 2);
    assert_int_equal(fi.kind, i % 2);
    e8c_tensor t = e8c_tensor_contiguous((uint8_t *)got + one * (size_t)i, E8C_DTYPE_F32, CT,
                                         64);
    assert_int_equal(e8c_frame_decode_into(ctx, part[0].data + off, (size_t)fi.frame_size,
                                           NULL, &t, CT), 0);
    off += (size_t)fi.frame_size;
  }
  assert_int_equal(off, part[0].len);
  assert_memory_equal(got, want, (size_t)need);
  free(want);
  free(got);
  e8c_ctx_free(ctx);
  kvt_got_free(full, 1);
  kvt_got_free(part, 1);
}

static void test_stats_and_bounded_verify(void **state) {
  (void)state;
  E8kv__V1__GetStatsResponse *sr;
  kvt_status st;
  assert_int_equal(kvt_stats(g_c, &sr, &st), 0);
  assert_non_null(sr->store_stats);
  assert_int_equal(sr->store_stats->namespaces, 1); /* open mode: "default" */
  uint64_t chunks = sr->store_stats->chunks;
  assert_true(chunks >= 2);
  e8kv__v1__get_stats_response__free_unpacked(sr, NULL);
  ProtobufCMessage *m = NULL;
  E8kv__V1__VerifyRequest vq;
  e8kv__v1__verify_request__init(&vq);
  vq.max_bytes = 1; /* the first record reaches the bound */
  assert_int_equal(kvt_unary(g_c, KVT_SVC "Verify", &vq.base,
                             &e8kv__v1__verify_response__descriptor, &m, &st, 10000), 0);
  E8kv__V1__VerifyResponse *vr = (E8kv__V1__VerifyResponse *)m;
  assert_int_equal(vr->records_checked, 1);
  assert_false(vr->complete);
  protobuf_c_message_free_unpacked(m, NULL);
  vq.max_bytes = 0;
  assert_int_equal(kvt_unary(g_c, KVT_SVC "Verify", &vq.base,
                             &e8kv__v1__verify_response__descriptor, &m, &st, 10000), 0);
  vr = (E8kv__V1__VerifyResponse *)m;
  assert_int_equal(vr->records_checked, chunks);
  assert_true(vr->complete);
  protobuf_c_message_free_unpacked(m, NULL);
}

int main(int argc, char **argv) {
  (void)argc;
  kvt_set_binary_from_argv0(argv[0]);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_lease_pins_until_released),
      cmocka_unit_test(test_no_lease_is_evicted),
      cmocka_unit_test(test_layer_frames),
      cmocka_unit_test(test_stats_and_bounded_verify),
  };
  return cmocka_run_group_tests_name("e8kvd leases, layer frames, stats", tests, setup,
                                     teardown);
}
