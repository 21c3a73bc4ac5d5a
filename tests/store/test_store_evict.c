/* test_store_evict.c: budgets and pins. LRU eviction order, session pins, a read in flight
 * pins its chunk, lookup leases expire and are capped, namespace quotas, fully dead segments are removed,
 * per-namespace counters (chunks, bytes, tokens, raw bytes).
 * Runs on both io engines. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "tests/store/store_test_util.h"

#define CT 16
#define PB 1000 /* payload bytes; a record is PB + 64 bytes */
#define RB (PB + E8S_RECORD_HEADER_BYTES)

/* Reopens env with a store budget of n records. */
static void with_capacity(tu_env *env, uint64_t n_records) {
  env->cfg.capacity_bytes = n_records * RB;
  tu_reopen(env);
}

/* Puts a one-chunk chain number i; returns its key in key. */
static int put1(tu_env *env, uint32_t i, uint8_t key[32]) {
  uint32_t tok[CT];
  tu_tokens(tok, CT, 1000 + i);
  uint8_t k[1][32];
  int rc = tu_put_chain(env, tok, 1, CT, 1000 + i, PB, k);
  memcpy(key, k[0], 32);
  return rc;
}

static int present(tu_env *env, const uint8_t key[32]) {
  e8s_chunk_info ci;
  return e8s_chunk_stat(env->st, env->ns, key, &ci) == E8S_OK;
}

static void test_lru_order(void **state) {
  tu_env *env = *state;
  with_capacity(env, 5);
  uint8_t k[8][32];
  for (uint32_t i = 0; i < 5; i++) assert_int_equal(put1(env, i, k[i]), E8S_OK);
  /* use 0 and 2: now 1 is the least recently used, then 3, 4, 0, 2 */
  assert_int_equal(tu_check(env, k[0], 1000, PB), E8S_OK);
  assert_int_equal(tu_check(env, k[2], 1002, PB), E8S_OK);
  assert_int_equal(put1(env, 5, k[5]), E8S_OK);
  assert_false(present(env, k[1]));
  assert_true(present(env, k[0]) && present(env, k[2]) && present(env, k[3]));
  assert_int_equal(put1(env, 6, k[6]), E8S_OK);
  assert_false(present(env, k[3]));
  assert_true(present(env, k[4]));
  /* the order survives a restart (touches are persisted with the next write) */
  tu_reopen(env);
  assert_int_equal(put1(env, 7, k[7]), E8S_OK);
  assert_false(present(env, k[4]));
  assert_true(present(env, k[0]) && present(env, k[2]) && present(env, k[5]));
  e8s_stats s;
  assert_int_equal(e8s_stats_get(env->st, &s), 0);
  assert_int_equal(s.chunks, 5);
  assert_true(s.used_bytes <= 5 * RB);
}

static void test_session_pins(void **state) {
  tu_env *env = *state;
  with_capacity(env, 4);
  uint32_t tok[2 * CT];
  tu_tokens(tok, 2 * CT, 50);
  uint8_t chain[2][32], k[8][32];
  assert_int_equal(tu_put_chain(env, tok, 2, CT, 50, PB, chain), E8S_OK);
  assert_int_equal(e8s_session_create(env->st, env->ns, "pin", env->fp, NULL, 0, 0), 0);
  assert_int_equal(e8s_session_append(env->st, env->ns, "pin", (const uint8_t(*)[32])chain, 2), 0);
  for (uint32_t i = 0; i < 6; i++) assert_int_equal(put1(env, i, k[i]), E8S_OK);
  /* the session's chunks are older than everything, yet kept */
  assert_true(present(env, chain[0]) && present(env, chain[1]));
  assert_false(present(env, k[0]));
  assert_true(present(env, k[4]) && present(env, k[5]));
  /* pin everything: a put that needs room fails with FULL and stores nothing */
  assert_int_equal(e8s_session_create(env->st, env->ns, "pin2", env->fp, NULL, 0, 0), 0);
  uint8_t one[1][32];
  memcpy(one[0], k[4], 32);
  assert_int_equal(e8s_session_create(env->st, env->ns, "p4", env->fp, NULL, 0, 0), 0);
  assert_int_equal(e8s_session_append(env->st, env->ns, "p4", (const uint8_t(*)[32])one, 1), 0);
  memcpy(one[0], k[5], 32);
  assert_int_equal(e8s_session_create(env->st, env->ns, "p5", env->fp, NULL, 0, 0), 0);
  assert_int_equal(e8s_session_append(env->st, env->ns, "p5", (const uint8_t(*)[32])one, 1), 0);
  assert_int_equal(put1(env, 6, k[6]), E8S_ERR_FULL);
  assert_false(present(env, k[6]));
  /* deleting a session makes its chunks evictable again */
  assert_int_equal(e8s_session_delete(env->st, env->ns, "pin"), 0);
  assert_int_equal(put1(env, 6, k[6]), E8S_OK);
  assert_false(present(env, chain[0]) && present(env, chain[1]));
  assert_true(present(env, k[4]) && present(env, k[5]));
}

/* A reader that has a chunk open (a slow read) keeps it from eviction until it closes. */
static void test_evict_during_slow_read(void **state) {
  tu_env *env = *state;
  with_capacity(env, 3);
  uint8_t k[8][32];
  for (uint32_t i = 0; i < 3; i++) assert_int_equal(put1(env, i, k[i]), E8S_OK);
  e8s_chunk *ch;
  e8s_chunk_info info;
  assert_int_equal(e8s_chunk_open(env->st, env->ns, k[0], &ch, &info), E8S_OK);
  /* k0 was just used, make it the oldest again by using the others */
  assert_int_equal(tu_check(env, k[1], 1001, PB), 0);
  assert_int_equal(tu_check(env, k[2], 1002, PB), 0);
  for (uint32_t i = 3; i < 6; i++) assert_int_equal(put1(env, i, k[i]), E8S_OK);
  assert_true(present(env, k[0])); /* pinned by the open reader */
  assert_false(present(env, k[1]));
  uint8_t *buf = malloc(PB), *want = malloc(PB);
  tu_payload(want, PB, 1000);
  assert_int_equal(e8s_chunk_read(ch, buf, PB), E8S_OK);
  assert_memory_equal(buf, want, PB);
  e8s_chunk_close(ch);
  for (uint32_t i = 6; i < 9 && i < 8; i++) assert_int_equal(put1(env, i, k[i]), E8S_OK);
  assert_false(present(env, k[0])); /* after close it is the oldest and goes */
  free(buf);
  free(want);
}

static void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&ts, NULL);
}

static void test_lease_expiry(void **state) {
  tu_env *env = *state;
  /* the lease must outlive the steps from the lookup to the "both leased" put and to the
   * release below: 4 s is 100x what they take on a loaded machine (1.5 s was a stall away) */
  env->cfg.lease_ms = 4000;
  with_capacity(env, 2);
  uint32_t tok[2 * CT];
  tu_tokens(tok, 2 * CT, 60);
  uint8_t chain[2][32], got[2][32], k[4][32];
  assert_int_equal(tu_put_chain(env, tok, 2, CT, 60, PB, chain), E8S_OK);
  e8s_lookup_result res;
  assert_int_equal(e8s_lookup(env->st, env->ns, env->fp, tok, 2 * CT, CT, E8S_LOOKUP_PIN, got, 2,
                              &res), 0);
  assert_int_equal(res.n_chunks, 2);
  assert_true(res.lease_id != 0);
  assert_int_equal(put1(env, 0, k[0]), E8S_ERR_FULL); /* both leased */
  sleep_ms(4100); /* past the lease, whatever the machine: a sleep never ends early */
  assert_int_equal(put1(env, 0, k[0]), E8S_OK); /* lease expired: evictable */
  assert_false(present(env, chain[0]));
  assert_int_equal(e8s_lease_release(env->st, res.lease_id), E8S_ERR_NOTFOUND);
  /* explicit release frees at once */
  uint32_t t1[CT];
  tu_tokens(t1, CT, 1000);
  assert_int_equal(e8s_lookup(env->st, env->ns, env->fp, t1, CT, CT, E8S_LOOKUP_PIN, got, 2,
                              &res), 0);
  assert_int_equal(res.n_chunks, 1);
  e8s_lookup_result r2;
  assert_int_equal(e8s_lookup(env->st, env->ns, env->fp, tok + CT, CT, CT, 0, got, 2, &r2), 0);
  assert_int_equal(put1(env, 1, k[1]), E8S_OK); /* evicts chain[1], not leased k0 */
  assert_true(present(env, k[0]));
  assert_int_equal(put1(env, 2, k[2]), E8S_OK); /* evicts k1, newer than leased k0 */
  assert_true(present(env, k[0]));
  assert_false(present(env, k[1]));
  assert_int_equal(e8s_lease_release(env->st, res.lease_id), E8S_OK);
  assert_int_equal(put1(env, 3, k[3]), E8S_OK);
  assert_false(present(env, k[0]));
  assert_true(present(env, k[2]));
}

static uint64_t lease1(tu_env *env, uint32_t i) {
  uint32_t tok[CT];
  tu_tokens(tok, CT, 1000 + i);
  uint8_t got[1][32];
  e8s_lookup_result res;
  assert_int_equal(e8s_lookup(env->st, env->ns, env->fp, tok, CT, CT, E8S_LOOKUP_PIN, got, 1,
                              &res), E8S_OK);
  assert_int_equal(res.n_chunks, 1);
  assert_true(res.lease_id != 0);
  return res.lease_id;
}

static void lease_counts(tu_env *env, uint64_t chunks, uint64_t dropped) {
  e8s_stats s;
  assert_int_equal(e8s_stats_get(env->st, &s), E8S_OK);
  assert_int_equal(s.lease_chunks, chunks);
  assert_int_equal(s.leases_dropped, dropped);
}

/* Lookup leases are capped per namespace and per store: the oldest end first (of the
 * namespace for its cap), a match over a cap alone is FULL with nothing leased. */
static void test_lease_caps(void **state) {
  tu_env *env = *state;
  env->cfg.lease_ms = 600000;
  env->cfg.lease_max_chunks = 6;
  env->cfg.lease_ns_max_chunks = 4;
  tu_reopen(env);
  uint8_t k[8][32];
  uint64_t id[8];
  for (uint32_t i = 0; i < 5; i++) assert_int_equal(put1(env, i, k[i]), E8S_OK);
  for (uint32_t i = 0; i < 4; i++) id[i] = lease1(env, i);
  lease_counts(env, 4, 0);
  id[4] = lease1(env, 4); /* namespace cap: its oldest lease ends */
  lease_counts(env, 4, 1);
  assert_int_equal(e8s_lease_release(env->st, id[0]), E8S_ERR_NOTFOUND);
  /* another namespace fills the store cap: the store's oldest lease (id[1]) ends */
  e8s_ns_info o;
  assert_int_equal(e8s_ns_create(env->st, "other", env->salt, 0, &o), E8S_OK);
  uint32_t t_ns = env->ns;
  env->ns = o.id;
  uint8_t ko[2][32];
  uint64_t oid[3];
  for (uint32_t i = 0; i < 2; i++) assert_int_equal(put1(env, 100 + i, ko[i]), E8S_OK);
  oid[0] = lease1(env, 100);
  oid[1] = lease1(env, 101);
  lease_counts(env, 6, 1);
  oid[2] = lease1(env, 100);
  lease_counts(env, 6, 2);
  env->ns = t_ns;
  assert_int_equal(e8s_lease_release(env->st, id[1]), E8S_ERR_NOTFOUND);
  assert_int_equal(e8s_lease_release(env->st, id[2]), E8S_OK);
  assert_int_equal(e8s_lease_release(env->st, oid[0]), E8S_OK);
  lease_counts(env, 4, 2);
  /* a match larger than the namespace cap: FULL, the result filled, nothing leased */
  uint32_t tok[5 * CT];
  tu_tokens(tok, 5 * CT, 77);
  assert_int_equal(tu_put_chain(env, tok, 5, CT, 77, PB, NULL), E8S_OK);
  uint8_t got[5][32];
  e8s_lookup_result res;
  assert_int_equal(e8s_lookup(env->st, env->ns, env->fp, tok, 5 * CT, CT, E8S_LOOKUP_PIN, got,
                              5, &res), E8S_ERR_FULL);
  assert_int_equal(res.n_chunks, 5);
  assert_int_equal(res.lease_id, 0);
  lease_counts(env, 4, 2);
  (void)oid;
}

static void test_quota(void **state) {
  tu_env *env = *state;
  e8s_ns_info q;
  assert_int_equal(e8s_ns_create(env->st, "quota", NULL, 3 * RB, &q), 0);
  /* fill the default namespace; it has no quota and no store budget */
  uint8_t k[8][32], qk[8][32];
  for (uint32_t i = 0; i < 3; i++) assert_int_equal(put1(env, i, k[i]), E8S_OK);
  tu_env qe = *env;
  qe.ns = q.id;
  memcpy(qe.salt, q.salt, 32);
  for (uint32_t i = 0; i < 5; i++) assert_int_equal(put1(&qe, 10 + i, qk[i]), E8S_OK);
  e8s_chunk_info ci;
  assert_int_equal(e8s_chunk_stat(env->st, q.id, qk[0], &ci), E8S_ERR_NOTFOUND);
  assert_int_equal(e8s_chunk_stat(env->st, q.id, qk[1], &ci), E8S_ERR_NOTFOUND);
  for (int i = 2; i < 5; i++) assert_int_equal(e8s_chunk_stat(env->st, q.id, qk[i], &ci), 0);
  for (int i = 0; i < 3; i++) assert_true(present(env, k[i])); /* other tenant untouched */
  assert_int_equal(e8s_ns_get_by_id(env->st, q.id, &q), 0);
  assert_int_equal(q.used_bytes, 3 * RB);
  assert_int_equal(q.chunks, 3);
  /* a record larger than the quota */
  uint32_t tok[CT];
  tu_tokens(tok, CT, 77);
  assert_int_equal(tu_put_chain(&qe, tok, 1, CT, 77, 4 * RB, NULL), E8S_ERR_QUOTA);
  /* everything of the namespace pinned: QUOTA */
  for (int i = 2; i < 5; i++) {
    char name[16];
    snprintf(name, sizeof name, "s%d", i);
    assert_int_equal(e8s_session_create(env->st, q.id, name, env->fp, NULL, 0, 0), 0);
    assert_int_equal(e8s_session_append(env->st, q.id, name, (const uint8_t(*)[32])qk + i, 1), 0);
  }
  assert_int_equal(put1(&qe, 20, qk[5]), E8S_ERR_QUOTA);
}

static int count_segments(const char *dir) {
  char p[300];
  snprintf(p, sizeof p, "%s/segments", dir);
  DIR *d = opendir(p);
  int n = 0;
  for (struct dirent *de; d && (de = readdir(d));) n += strstr(de->d_name, ".seg") != NULL;
  if (d) closedir(d);
  return n;
}

/* Evicting every record of a sealed segment deletes its file. */
static void test_dead_segment_removed(void **state) {
  tu_env *env = *state;
  env->cfg.segment_bytes = 1 << 20;
  with_capacity(env, 0); /* unlimited */
  uint32_t tok[CT];
  uint8_t k[12][32];
  for (uint32_t i = 0; i < 12; i++) {
    tu_tokens(tok, CT, 300 + i);
    uint8_t kk[1][32];
    assert_int_equal(tu_put_chain(env, tok, 1, CT, 300 + i, 200000, kk), E8S_OK);
    memcpy(k[i], kk[0], 32);
  }
  int before = count_segments(env->dir);
  assert_true(before >= 3);
  for (int i = 0; i < 6; i++) assert_int_equal(e8s_chunk_delete(env->st, env->ns, k[i]), 0);
  int after = count_segments(env->dir);
  assert_true(after < before);
  for (int i = 6; i < 12; i++) assert_int_equal(tu_check(env, k[i], 300 + i, 200000), 0);
  tu_reopen(env);
  assert_int_equal(count_segments(env->dir), after);
  for (int i = 6; i < 12; i++) assert_int_equal(tu_check(env, k[i], 300 + i, 200000), 0);
}

/* Puts chunk i alone, with raw_bytes = RAW(i) and CT tokens. */
#define RAW(i) (4096ull * ((i) + 1))
static int put_raw(tu_env *env, uint32_t i, uint8_t key[32]) {
  uint32_t tok[CT];
  uint8_t pl[PB], zero[32] = {0};
  tu_tokens(tok, CT, 500 + i);
  tu_payload(pl, PB, 500 + i);
  e8s_put_rec r = {.tokens = tok, .n_tokens = CT, .payload = pl, .payload_bytes = PB,
                   .raw_bytes = RAW(i)};
  assert_int_equal(e8s_chunk_key(env->salt, env->fp, zero, tok, CT, r.key), 0);
  memcpy(key, r.key, 32);
  return e8s_put(env->st, env->ns, env->fp, &r, 1);
}

static void expect_ns(tu_env *env, uint64_t chunks, uint64_t tokens, uint64_t raw) {
  e8s_ns_info ni;
  assert_int_equal(e8s_ns_get_by_id(env->st, env->ns, &ni), 0);
  assert_int_equal(ni.chunks, chunks);
  assert_int_equal(ni.used_bytes, chunks * RB);
  assert_int_equal(ni.tokens, tokens);
  assert_int_equal(ni.raw_bytes, raw);
  size_t n = 0; /* the list reports the same */
  e8s_ns_info all[4];
  assert_int_equal(e8s_ns_list(env->st, all, 4, &n), 0);
  for (size_t i = 0; i < n && i < 4; i++)
    if (all[i].id == env->ns) assert_true(all[i].tokens == tokens && all[i].raw_bytes == raw);
}

/* Namespace tokens/raw_bytes follow puts, a duplicate put, eviction, delete and compaction,
 * and persist across a reopen. */
static void test_ns_counters(void **state) {
  tu_env *env = *state;
  with_capacity(env, 3);
  uint8_t k[5][32];
  expect_ns(env, 0, 0, 0);
  for (uint32_t i = 0; i < 3; i++) assert_int_equal(put_raw(env, i, k[i]), E8S_OK);
  expect_ns(env, 3, 3 * CT, RAW(0) + RAW(1) + RAW(2));
  assert_int_equal(put_raw(env, 1, k[1]), E8S_OK); /* existed: nothing changes */
  expect_ns(env, 3, 3 * CT, RAW(0) + RAW(1) + RAW(2));
  assert_int_equal(put_raw(env, 3, k[3]), E8S_OK); /* evicts chunk 0 (least recently used) */
  assert_false(present(env, k[0]));
  expect_ns(env, 3, 3 * CT, RAW(1) + RAW(2) + RAW(3));
  assert_int_equal(e8s_chunk_delete(env->st, env->ns, k[2]), 0);
  expect_ns(env, 2, 2 * CT, RAW(1) + RAW(3));
  e8s_compact_report cr;
  assert_int_equal(e8s_compact(env->st, 0.0, &cr, NULL, NULL), 0);
  expect_ns(env, 2, 2 * CT, RAW(1) + RAW(3));
  tu_reopen(env);
  expect_ns(env, 2, 2 * CT, RAW(1) + RAW(3));
  assert_int_equal(put_raw(env, 4, k[4]), E8S_OK);
  expect_ns(env, 3, 3 * CT, RAW(1) + RAW(3) + RAW(4));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_lru_order, tu_setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_session_pins, tu_setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_evict_during_slow_read, tu_setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_lease_expiry, tu_setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_lease_caps, tu_setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_quota, tu_setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_dead_segment_removed, tu_setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_ns_counters, tu_setup, tu_teardown),
  };
  return TU_RUN_BOTH("store_evict", tests);
}
