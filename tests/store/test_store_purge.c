/* test_store_purge.c: e8s_purge_unlisted (store_purge.c), the store side of PurgeUnlisted /
 * `e8kvctl gc`: deletes every chunk of one namespace that no session lists, across several
 * write transactions (1024 chunks each), keeping (and reporting once each) the chunks a lookup
 * lease holds, and never touching session-listed chunks or another namespace. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "store/e8store_test.h"

#include "tests/store/store_test_util.h"

#define CT 4           /* tokens per chunk */
#define PB 64          /* payload bytes */
#define CHAINS 6
#define PER_CHAIN 450  /* 2700 chunks: three batches of 1024 */

typedef struct held_log {
  uint8_t (*keys)[32];
  size_t n, cap;
} held_log;

static void on_held(void *ctx, const uint8_t key[E8S_KEY_BYTES]) {
  held_log *h = ctx;
  assert_true(h->n < h->cap);
  memcpy(h->keys[h->n++], key, 32);
}

static uint64_t ns_chunks(tu_env *env, uint32_t ns_id) {
  e8s_ns_info ni;
  assert_int_equal(e8s_ns_get_by_id(env->st, ns_id, &ni), E8S_OK);
  return ni.chunks;
}

static void test_purge_unlisted(void **state) {
  tu_env *env = *state;
  static uint32_t tok[CHAINS][PER_CHAIN * CT];
  static uint8_t keys[CHAINS][PER_CHAIN][32];
  for (uint32_t c = 0; c < CHAINS; c++) {
    tu_tokens(tok[c], PER_CHAIN * CT, 10 + c);
    assert_int_equal(tu_put_chain(env, tok[c], PER_CHAIN, CT, 1000 * c, PB, keys[c]), E8S_OK);
  }
  /* another namespace with chunks of its own: untouched */
  e8s_ns_info other;
  uint8_t salt2[32];
  for (int i = 0; i < 32; i++) salt2[i] = (uint8_t)(i + 99);
  assert_int_equal(e8s_ns_create(env->st, "other", salt2, 0, &other), E8S_OK);
  uint32_t ns1 = env->ns;
  uint8_t salt1[32];
  memcpy(salt1, env->salt, 32);
  env->ns = other.id;
  memcpy(env->salt, salt2, 32);
  assert_int_equal(tu_put_chain(env, tok[0], 20, CT, 7, PB, NULL), E8S_OK);
  env->ns = ns1;
  memcpy(env->salt, salt1, 32);
  /* chain 0's first 100 chunks are listed by a session; chunks 0..149 leased by a lookup */
  assert_int_equal(e8s_session_create(env->st, ns1, "s", env->fp, NULL, 0, 0), E8S_OK);
  assert_int_equal(e8s_session_append(env->st, ns1, "s", (const uint8_t(*)[32])keys[0], 100),
                   E8S_OK);
  static uint8_t got[150][32];
  e8s_lookup_result lr;
  assert_int_equal(e8s_lookup(env->st, ns1, env->fp, tok[0], 150 * CT, CT, E8S_LOOKUP_PIN, got,
                              150, &lr), E8S_OK);
  assert_int_equal(lr.n_chunks, 150);
  assert_int_equal(ns_chunks(env, ns1), CHAINS * PER_CHAIN);

  held_log h = {calloc(CHAINS * PER_CHAIN, 32), 0, CHAINS * PER_CHAIN};
  e8s_purge_report rep;
  assert_int_equal(e8s_purge_unlisted(env->st, ns1, on_held, &h, &rep), E8S_OK);
  assert_int_equal(rep.chunks_purged, CHAINS * PER_CHAIN - 150);
  assert_int_equal(rep.chunks_held, 50);
  assert_int_equal(rep.bytes_purged % rep.chunks_purged, 0);
  assert_true(rep.bytes_purged >= rep.chunks_purged * PB);
  /* each held chunk once: exactly chain 0's chunks 100..149 */
  assert_int_equal(h.n, 50);
  for (size_t i = 0; i < h.n; i++) {
    int found = 0;
    for (int j = 100; j < 150; j++) found += memcmp(h.keys[i], keys[0][j], 32) == 0;
    assert_int_equal(found, 1);
    for (size_t k = 0; k < i; k++) assert_memory_not_equal(h.keys[i], h.keys[k], 32);
  }
  assert_int_equal(ns_chunks(env, ns1), 150);
  assert_int_equal(ns_chunks(env, other.id), 20);
  for (int j = 0; j < 100; j++) assert_int_equal(tu_check(env, keys[0][j], j, PB), E8S_OK);
  assert_int_equal(tu_check(env, keys[1][0], 1000, PB), E8S_ERR_NOTFOUND);

  /* the lease ends: the rest goes; the session keeps its 100 */
  assert_int_equal(e8s_lease_release(env->st, lr.lease_id), E8S_OK);
  h.n = 0;
  assert_int_equal(e8s_purge_unlisted(env->st, ns1, on_held, &h, &rep), E8S_OK);
  assert_int_equal(rep.chunks_purged, 50);
  assert_int_equal(rep.chunks_held, 0);
  assert_int_equal(h.n, 0);
  assert_int_equal(ns_chunks(env, ns1), 100);
  /* nothing left to do; then the session goes and its chunks become unlisted */
  assert_int_equal(e8s_purge_unlisted(env->st, ns1, NULL, NULL, &rep), E8S_OK);
  assert_int_equal(rep.chunks_purged, 0);
  assert_int_equal(e8s_session_delete(env->st, ns1, "s"), E8S_OK);
  assert_int_equal(e8s_purge_unlisted(env->st, ns1, NULL, NULL, NULL), E8S_OK);
  assert_int_equal(ns_chunks(env, ns1), 0);
  assert_int_equal(ns_chunks(env, other.id), 20);
  assert_int_equal(e8s_purge_unlisted(env->st, 0, NULL, NULL, &rep), E8S_ERR_INVAL);
  free(h.keys);
}

/* e8s_chunks_delete (the daemon's pending purges, many chunks per write transaction) and
 * e8s_keys_pin (a session put pins its chunks from before they are stored until it lists
 * them): 1500 chunks (two transactions) of which a session lists 100, a lease holds 50, keys
 * pinned 30 (also one never stored, pinned before its put), 20 are of another namespace. */
static void test_chunks_delete_and_keys_pin(void **state) {
  tu_env *env = *state;
  enum { N = 1500 };
  static uint32_t tok[N * CT];
  static uint8_t keys[N + 1][32];
  static uint32_t ns[N + 1], refs[N + 1];
  static int res[N + 1];
  tu_tokens(tok, N * CT, 77);
  assert_int_equal(tu_put_chain(env, tok, N, CT, 0, PB, keys), E8S_OK);
  assert_int_equal(e8s_session_create(env->st, env->ns, "s", env->fp, NULL, 0, 0), E8S_OK);
  assert_int_equal(e8s_session_append(env->st, env->ns, "s", (const uint8_t(*)[32])keys, 100),
                   E8S_OK);
  static uint8_t got[150][32];
  e8s_lookup_result lr;
  assert_int_equal(e8s_lookup(env->st, env->ns, env->fp, tok, 150 * CT, CT, E8S_LOOKUP_PIN, got,
                              150, &lr), E8S_OK);
  /* keys 150..179 pinned, and a key not stored yet (a put about to store it) */
  uint32_t more[CT];
  tu_tokens(more, CT, 78);
  uint8_t fresh[32];
  assert_int_equal(e8s_chunk_key(env->salt, env->fp, keys[N - 1], more, CT, fresh), E8S_OK);
  memcpy(keys[N], fresh, 32);
  assert_int_equal(e8s_keys_pin(env->st, (const uint8_t(*)[32])keys + 150, 30), E8S_OK);
  assert_int_equal(e8s_keys_pin(env->st, (const uint8_t(*)[32])keys + N, 1), E8S_OK);
  e8s_put_rec r = {0};
  memcpy(r.key, fresh, 32);
  memcpy(r.parent, keys[N - 1], 32);
  static uint8_t pay[PB];
  r.tokens = more, r.n_tokens = CT, r.payload = pay, r.payload_bytes = PB;
  assert_int_equal(e8s_put(env->st, env->ns, env->fp, &r, 1), E8S_OK);
  for (int i = 0; i <= N; i++) ns[i] = i >= 1000 && i < 1020 ? env->ns + 1 : env->ns;
  assert_int_equal(e8s_chunks_delete(env->st, ns, (const uint8_t(*)[32])keys, N + 1, res, refs),
                   E8S_OK);
  for (int i = 0; i <= N; i++) {
    int want = i < 180 || i == N ? E8S_ERR_BUSY
               : i >= 1000 && i < 1020 ? E8S_ERR_NOTFOUND : E8S_OK;
    if (res[i] != want) fail_msg("chunk %d: %d, expected %d", i, res[i], want);
    if (want == E8S_ERR_BUSY) assert_int_equal(refs[i], i < 100 ? 1 : 0);
  }
  assert_int_equal(ns_chunks(env, env->ns), 180 + 20 + 1);
  /* pins end: the same call deletes what only they held; gone ones are NOTFOUND */
  e8s_keys_unpin(env->st, (const uint8_t(*)[32])keys + 150, 30);
  e8s_keys_unpin(env->st, (const uint8_t(*)[32])keys + N, 1);
  assert_int_equal(e8s_lease_release(env->st, lr.lease_id), E8S_OK);
  for (int i = 0; i <= N; i++) ns[i] = env->ns;
  assert_int_equal(e8s_chunks_delete(env->st, ns, (const uint8_t(*)[32])keys, N + 1, res, NULL),
                   E8S_OK);
  for (int i = 0; i <= N; i++) {
    int want = i < 100 ? E8S_ERR_BUSY : i < 180 || i == N || (i >= 1000 && i < 1020)
                                            ? E8S_OK : E8S_ERR_NOTFOUND;
    if (res[i] != want) fail_msg("again, chunk %d: %d, expected %d", i, res[i], want);
  }
  assert_int_equal(ns_chunks(env, env->ns), 100);
  for (int j = 0; j < 100; j++) assert_int_equal(tu_check(env, keys[j], j, PB), E8S_OK);
  assert_int_equal(e8s_chunks_delete(env->st, ns, NULL, 1, res, NULL), E8S_ERR_INVAL);
}

/* A session of more than 1024 chunks is deleted in steps (store_session.c): one transaction
 * removes it and keeps its chain as pending pieces, then each step drops refs. A process
 * killed after `skip` of those transactions must leave nothing pinned by the gone session once
 * the store is opened again: every chunk only it listed is deletable (refs 0), the chunks
 * another session shares keep exactly that one ref, and that session reads back. */
#define DEL_CHUNKS 2600 /* three pieces of 1024 */
static void delete_killed_after(tu_env *env, unsigned skip) {
  static uint32_t tok[DEL_CHUNKS * CT];
  static uint8_t keys[DEL_CHUNKS][32];
  static uint32_t nss[DEL_CHUNKS], refs[DEL_CHUNKS];
  static int res[DEL_CHUNKS];
  tu_tokens(tok, DEL_CHUNKS * CT, 77 + skip);
  assert_int_equal(tu_put_chain(env, tok, DEL_CHUNKS, CT, 5000, PB, keys), E8S_OK);
  e8s_session_change big = {.create = 1, .fp_id = env->fp,
                            .keys = (const uint8_t(*)[32])keys, .n_keys = DEL_CHUNKS};
  assert_int_equal(e8s_session_write(env->st, env->ns, "big", &big), E8S_OK);
  e8s_session_change keep = big;
  keep.n_keys = 10;
  assert_int_equal(e8s_session_write(env->st, env->ns, "keep", &keep), E8S_OK);
  e8s_close(env->st);
  env->st = NULL;
  fflush(NULL);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    e8s_store *st;
    if (e8s_open(&env->cfg, &st) != E8S_OK) _exit(3);
    e8s_test_fault_set(E8S_FAULT_CRASH_IN_DELETE, skip, 1);
    e8s_session_delete(st, env->ns, "big");
    _exit(4); /* the fault did not fire */
  }
  int ws = 0;
  assert_int_equal(waitpid(pid, &ws, 0), pid);
  if (!WIFSIGNALED(ws) || WTERMSIG(ws) != SIGKILL)
    fail_msg("the delete was not killed (exit %d)", WIFEXITED(ws) ? WEXITSTATUS(ws) : -1);
  assert_int_equal(e8s_open(&env->cfg, &env->st), E8S_OK); /* finishes the pending pieces */
  e8s_session_info si;
  assert_int_equal(e8s_session_get(env->st, env->ns, "big", &si, NULL, 0, NULL, 0),
                   E8S_ERR_NOTFOUND);
  assert_int_equal(e8s_session_get(env->st, env->ns, "keep", &si, NULL, 0, NULL, 0), E8S_OK);
  assert_int_equal(si.n_chunks, 10);
  for (int i = 0; i < 10; i++)
    assert_int_equal(tu_check(env, keys[i], 5000 + (uint32_t)i, PB), E8S_OK);
  for (int i = 0; i < DEL_CHUNKS; i++) nss[i] = env->ns;
  assert_int_equal(e8s_chunks_delete(env->st, nss, (const uint8_t(*)[32])keys, DEL_CHUNKS, res,
                                     refs), E8S_OK);
  for (int i = 0; i < DEL_CHUNKS; i++) {
    if (i < 10) {
      assert_int_equal(res[i], E8S_ERR_BUSY);
      assert_int_equal(refs[i], 1);
    } else if (res[i] != E8S_OK) {
      fail_msg("chunk %d of the deleted session (killed after %u transactions): %s, %u refs", i,
               skip + 1, e8s_error_name(res[i]), refs[i]);
    }
  }
}

static void test_session_delete_killed_after_move(void **state) { delete_killed_after(*state, 0); }
static void test_session_delete_killed_after_a_step(void **state) {
  delete_killed_after(*state, 1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_purge_unlisted, tu_setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_chunks_delete_and_keys_pin, tu_setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_session_delete_killed_after_move, tu_setup,
                                      tu_teardown),
      cmocka_unit_test_setup_teardown(test_session_delete_killed_after_a_step, tu_setup,
                                      tu_teardown),
  };
  return TU_RUN_BOTH("store_purge", tests);
}
