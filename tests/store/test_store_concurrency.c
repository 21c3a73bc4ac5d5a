/* test_store_concurrency.c: several writer and reader threads on the same chains, one store.
 * Writers race to put identical chains (first writer wins, the rest see existed=1), a session
 * thread creates/appends/deletes sessions, readers look up and read and must only ever see
 * committed chunks with the exact bytes. A second run adds a small budget so eviction runs
 * concurrently with the readers (NOTFOUND allowed, wrong bytes or DATALOSS never).
 * Runs on both io engines; also built under ThreadSanitizer by `make tsan`. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/store/store_test_util.h"

#define CT 64
#define CHAINS 8
#define LEN 4
#define WRITERS 3
#define READERS 3
#define ROUNDS 20

static size_t pbytes(uint32_t seed) { return 1500 + (seed % 7) * 100; }

typedef struct shared {
  tu_env *env;
  uint32_t tok[CHAINS][LEN * CT];
  _Atomic int writers_done;
  _Atomic int failures;
  _Atomic long reads_ok, existed, stored;
  int evicting;
} shared;

static void note_fail(shared *sh, const char *what, int rc) {
  fprintf(stderr, "concurrency: %s: %s (%s)\n", what, e8s_error_name(rc), e8s_last_error_detail());
  atomic_fetch_add(&sh->failures, 1);
}

static void *writer(void *arg) {
  shared *sh = arg;
  tu_env *env = sh->env;
  unsigned seed = (unsigned)(uintptr_t)pthread_self();
  for (int r = 0; r < ROUNDS; r++) {
    int c = (int)(rand_r(&seed) % CHAINS);
    e8s_put_rec rec[LEN];
    uint8_t *pl[LEN];
    uint8_t parent[32] = {0};
    memset(rec, 0, sizeof rec);
    for (int j = 0; j < LEN; j++) {
      uint32_t s = (uint32_t)(c * 100 + j);
      e8s_chunk_key(env->salt, env->fp, parent, sh->tok[c] + j * CT, CT, rec[j].key);
      memcpy(rec[j].parent, parent, 32);
      memcpy(parent, rec[j].key, 32);
      rec[j].tokens = sh->tok[c] + j * CT;
      rec[j].n_tokens = CT;
      pl[j] = malloc(pbytes(s));
      tu_payload(pl[j], pbytes(s), s);
      rec[j].payload = pl[j];
      rec[j].payload_bytes = pbytes(s);
    }
    int rc = e8s_put(env->st, env->ns, env->fp, rec, LEN);
    if (rc != E8S_OK) note_fail(sh, "put", rc);
    for (int j = 0; j < LEN; j++) {
      if (rec[j].result == E8S_OK) atomic_fetch_add(rec[j].existed ? &sh->existed : &sh->stored, 1);
      free(pl[j]);
    }
  }
  atomic_fetch_add(&sh->writers_done, 1);
  return NULL;
}

static void *reader(void *arg) {
  shared *sh = arg;
  tu_env *env = sh->env;
  unsigned seed = (unsigned)(uintptr_t)pthread_self() ^ 77u;
  uint8_t *buf = malloc(4096), *want = malloc(4096);
  while (atomic_load(&sh->writers_done) < WRITERS) {
    int c = (int)(rand_r(&seed) % CHAINS);
    uint8_t keys[LEN][32];
    e8s_lookup_result res;
    int rc = e8s_lookup(env->st, env->ns, env->fp, sh->tok[c], LEN * CT, CT, 0, keys, LEN, &res);
    if (rc) note_fail(sh, "lookup", rc);
    for (size_t j = 0; j < res.n_chunks; j++) {
      uint32_t s = (uint32_t)(c * 100 + (int)j);
      uint64_t n = 0;
      rc = e8s_get(env->st, env->ns, keys[j], buf, 4096, &n);
      if (rc == E8S_ERR_NOTFOUND && sh->evicting) continue;
      if (rc) {
        note_fail(sh, "get", rc);
        continue;
      }
      tu_payload(want, pbytes(s), s);
      if (n != pbytes(s) || memcmp(buf, want, n) != 0) note_fail(sh, "bytes differ", 0);
      else atomic_fetch_add(&sh->reads_ok, 1);
    }
  }
  free(buf);
  free(want);
  return NULL;
}

/* Sessions over the same chains while they are being written. */
static void *sessioner(void *arg) {
  shared *sh = arg;
  tu_env *env = sh->env;
  char name[32];
  for (int r = 0; atomic_load(&sh->writers_done) < WRITERS; r++) {
    int c = r % CHAINS;
    /* with a budget of 10 records, pin at most 2 (2 sessions of 1 chunk) so puts find room */
    snprintf(name, sizeof name, "s%d", r % (sh->evicting ? 2 : 5));
    uint8_t keys[LEN][32];
    e8s_lookup_result res;
    if (e8s_lookup(env->st, env->ns, env->fp, sh->tok[c], LEN * CT, CT, 0, keys, LEN, &res))
      note_fail(sh, "session lookup", -1);
    int rc = e8s_session_create(env->st, env->ns, name, env->fp, "m", 1, E8S_SESSION_REPLACE);
    if (rc) note_fail(sh, "session_create", rc);
    size_t n = sh->evicting && res.n_chunks > 1 ? 1 : res.n_chunks;
    rc = e8s_session_append(env->st, env->ns, name, (const uint8_t(*)[32])keys, n);
    if (rc && !(sh->evicting && rc == E8S_ERR_NOTFOUND)) note_fail(sh, "session_append", rc);
    if (r % 3 == 0 && (rc = e8s_session_delete(env->st, env->ns, name))) note_fail(sh, "delete", rc);
  }
  return NULL;
}

static void run(tu_env *env, int evicting) {
  shared *sh = calloc(1, sizeof *sh);
  sh->env = env;
  sh->evicting = evicting;
  for (int c = 0; c < CHAINS; c++) tu_tokens(sh->tok[c], LEN * CT, 5000 + (uint32_t)c);
  pthread_t w[WRITERS], r[READERS], s;
  for (int i = 0; i < WRITERS; i++) pthread_create(&w[i], NULL, writer, sh);
  for (int i = 0; i < READERS; i++) pthread_create(&r[i], NULL, reader, sh);
  pthread_create(&s, NULL, sessioner, sh);
  for (int i = 0; i < WRITERS; i++) pthread_join(w[i], NULL);
  for (int i = 0; i < READERS; i++) pthread_join(r[i], NULL);
  pthread_join(s, NULL);
  assert_int_equal(atomic_load(&sh->failures), 0);
  assert_int_equal(atomic_load(&sh->stored) + atomic_load(&sh->existed), WRITERS * ROUNDS * LEN);
  e8s_stats st;
  assert_int_equal(e8s_stats_get(env->st, &st), 0);
  if (!evicting) {
    /* every distinct chunk stored exactly once, all the rest were idempotent */
    assert_int_equal(st.chunks, atomic_load(&sh->stored));
    assert_true(st.chunks <= CHAINS * LEN);
  } else {
    assert_true(st.used_bytes <= env->cfg.capacity_bytes);
  }
  e8s_verify_report vr;
  assert_int_equal(e8s_verify(env->st, &vr, NULL, NULL), 0);
  assert_int_equal(vr.newly_quarantined, 0);
  free(sh);
}

static void test_threads_same_chains(void **state) { run(*state, 0); }

static void test_threads_with_eviction(void **state) {
  tu_env *env = *state;
  env->cfg.capacity_bytes = 10 * (2100 + E8S_RECORD_HEADER_BYTES);
  tu_reopen(env);
  run(env, 1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_threads_same_chains, tu_setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_threads_with_eviction, tu_setup, tu_teardown),
  };
  return TU_RUN_BOTH("store_concurrency", tests);
}
