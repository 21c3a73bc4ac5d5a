/* store_test_util.h: helpers shared by the store tests: a fresh data directory per test, the
 * io engine under test (each suite runs once per engine), deterministic tokens and payloads. */
#ifndef STORE_TEST_UTIL_H
#define STORE_TEST_UTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "store/e8store.h"

extern e8s_io_engine tu_engine; /* engine of the suite running now */

typedef struct tu_env {
  char dir[256];
  e8s_store *st;
  e8s_config cfg;
  uint32_t ns;
  uint8_t salt[32];
  uint8_t fp[32];
} tu_env;

/* cmocka group setups selecting the engine */
int tu_group_uring(void **state);
int tu_group_pwrite(void **state);
/* per-test setup/teardown: fresh directory, store opened with tu_engine, namespace "t" and a
 * fingerprint registered; *state is the tu_env */
int tu_setup(void **state);
int tu_teardown(void **state);

void tu_config(tu_env *env); /* env->cfg = defaults + dir + engine + CREATE */
void tu_reopen(tu_env *env); /* close and open again with env->cfg */
void tu_mkdtemp(char *dir, size_t n);
void tu_rmtree(const char *dir);

/* tokens[i] = seed * 1000003 + i */
void tu_tokens(uint32_t *out, size_t n, uint32_t seed);
/* deterministic payload bytes for (seed, len) */
void tu_payload(uint8_t *out, size_t n, uint32_t seed);
/* Puts a chain of n_chunks chunks of chunk_tokens tokens from tokens[]; payload i is
 * tu_payload(seed + i, bytes). keys_out (may be NULL) receives the keys. Returns e8s_put rc. */
int tu_put_chain(tu_env *env, const uint32_t *tokens, size_t n_chunks, uint32_t chunk_tokens,
                 uint32_t seed, size_t bytes, uint8_t (*keys_out)[32]);
/* Reads key and compares with tu_payload(seed, bytes). Returns e8s rc, or -100 on mismatch. */
int tu_check(tu_env *env, const uint8_t key[32], uint32_t seed, size_t bytes);

#define TU_RUN_BOTH(name, tests)                                                            \
  (cmocka_run_group_tests_name(name "[io_uring]", tests, tu_group_uring, NULL) |           \
   cmocka_run_group_tests_name(name "[pwrite]", tests, tu_group_pwrite, NULL))

#endif
