/*
 * test_kvc_asm.c: libe8kv's reassembly of GetChunks pieces, fed broken
 * streams on purpose: every way a daemon (or a man in the middle) could get
 * the pieces wrong must be E8KV_E_PROTOCOL, never a wrong chunk handed to the
 * caller; well-formed streams give back exactly the bytes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "clients/c/e8kv_int.h"

/* A heap piece as protobuf-c would unpack it (freed by the assembler). */
static E8kv__V1__GetChunksResponse *piece(uint32_t idx, uint64_t chunk_bytes, uint64_t off,
                                          const char *data, int last) {
  E8kv__V1__GetChunksResponse m = E8KV__V1__GET_CHUNKS_RESPONSE__INIT;
  uint8_t key[32];
  memset(key, (int)idx, sizeof key);
  uint32_t toks[3] = {7, 8, 9};
  m.chunk_index = idx;
  m.chunk_key.data = key;
  m.chunk_key.len = 32;
  m.start_token = 3ull * idx;
  m.n_tokens = 3;
  m.chunk_bytes = chunk_bytes;
  m.offset = off;
  m.data.data = (uint8_t *)data;
  m.data.len = strlen(data);
  m.last_piece = last;
  m.encoding = E8KV__V1__ENCODING__ENCODING_E8_FRAME;
  if (off == 0) {
    m.n_token_ids = 3;
    m.token_ids = toks;
  }
  size_t n = protobuf_c_message_get_packed_size(&m.base);
  uint8_t *buf = malloc(n);
  protobuf_c_message_pack(&m.base, buf);
  E8kv__V1__GetChunksResponse *out = (E8kv__V1__GetChunksResponse *)protobuf_c_message_unpack(
      &e8kv__v1__get_chunks_response__descriptor, NULL, n, buf);
  free(buf);
  return out;
}

typedef struct seen {
  int chunks;
  char data[4][64];
} seen;

static int on_chunk(void *arg, const e8kv_chunk *ch) {
  seen *s = arg;
  assert_true(s->chunks < 4);
  assert_int_equal(ch->n_token_ids, 3);
  assert_int_equal(ch->token_ids[2], 9);
  memcpy(s->data[s->chunks], ch->data, ch->bytes);
  s->data[s->chunks][ch->bytes] = '\0';
  s->chunks++;
  return 0;
}

static void test_good_stream(void **state) {
  (void)state;
  kvc_asm a = {0};
  seen s = {0};
  e8kv_error err;
  assert_int_equal(kvc_asm_piece(&a, piece(0, 10, 0, "hello", 0), on_chunk, &s, &err), E8KV_OK);
  assert_int_equal(kvc_asm_piece(&a, piece(0, 10, 5, "world", 1), on_chunk, &s, &err), E8KV_OK);
  assert_int_equal(kvc_asm_piece(&a, piece(1, 3, 0, "abc", 1), on_chunk, &s, &err), E8KV_OK);
  assert_int_equal(kvc_asm_end(&a, &err), E8KV_OK);
  assert_int_equal(s.chunks, 2);
  assert_string_equal(s.data[0], "helloworld");
  assert_string_equal(s.data[1], "abc");
  kvc_asm_free(&a);
}

/* Runs a list of pieces; returns the first error (or OK), with the chunks delivered. */
static e8kv_status run(E8kv__V1__GetChunksResponse **ps, int n, seen *s) {
  kvc_asm a = {0};
  e8kv_error err;
  e8kv_status st = E8KV_OK;
  int i = 0;
  for (; i < n && !st; i++) st = kvc_asm_piece(&a, ps[i], on_chunk, s, &err);
  for (; i < n; i++) e8kv_msg_free(ps[i]); /* not consumed after an error */
  if (!st) st = kvc_asm_end(&a, &err);
  if (st) assert_true(strlen(err.message) > 0);
  kvc_asm_free(&a);
  return st;
}

static void test_broken_streams(void **state) {
  (void)state;
  seen s = {0};
  E8kv__V1__GetChunksResponse *gap[] = {piece(0, 10, 0, "hello", 0), piece(0, 10, 6, "orld", 1)};
  assert_int_equal(run(gap, 2, &s), E8KV_E_PROTOCOL);
  E8kv__V1__GetChunksResponse *overlap[] = {piece(0, 10, 0, "hello", 0), piece(0, 10, 4, "oworld", 1)};
  assert_int_equal(run(overlap, 2, &s), E8KV_E_PROTOCOL);
  E8kv__V1__GetChunksResponse *too_long[] = {piece(0, 8, 0, "hello", 0), piece(0, 8, 5, "world", 1)};
  assert_int_equal(run(too_long, 2, &s), E8KV_E_PROTOCOL);
  E8kv__V1__GetChunksResponse *too_short[] = {piece(0, 12, 0, "hello", 0), piece(0, 12, 5, "world", 1)};
  assert_int_equal(run(too_short, 2, &s), E8KV_E_PROTOCOL);
  E8kv__V1__GetChunksResponse *switched[] = {piece(0, 10, 0, "hello", 0), piece(1, 10, 5, "world", 1)};
  assert_int_equal(run(switched, 2, &s), E8KV_E_PROTOCOL);
  E8kv__V1__GetChunksResponse *late_start[] = {piece(0, 10, 5, "world", 1)};
  assert_int_equal(run(late_start, 1, &s), E8KV_E_PROTOCOL);
  E8kv__V1__GetChunksResponse *unfinished[] = {piece(0, 10, 0, "hello", 0)};
  assert_int_equal(run(unfinished, 1, &s), E8KV_E_PROTOCOL);
  E8kv__V1__GetChunksResponse *huge[] = {piece(0, (1ull << 30) + 1, 0, "x", 0)};
  assert_int_equal(run(huge, 1, &s), E8KV_E_PROTOCOL);
  assert_int_equal(s.chunks, 0); /* nothing wrong was ever delivered */
}

static int stop_now(void *arg, const e8kv_chunk *ch) {
  (void)arg;
  (void)ch;
  return 1;
}

static void test_callback_stops(void **state) {
  (void)state;
  kvc_asm a = {0};
  e8kv_error err;
  assert_int_equal(kvc_asm_piece(&a, piece(0, 3, 0, "abc", 1), stop_now, NULL, &err),
                   E8KV_E_ABORTED_BY_CALLER);
  kvc_asm_free(&a);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_good_stream),
      cmocka_unit_test(test_broken_streams),
      cmocka_unit_test(test_callback_stops),
  };
  return cmocka_run_group_tests_name("kvc_asm", tests, NULL, NULL);
}
