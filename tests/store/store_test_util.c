/* store_test_util.c: see store_test_util.h. */
#include "tests/store/store_test_util.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

e8s_io_engine tu_engine = E8S_IO_URING;

int tu_group_uring(void **state) {
  (void)state;
  tu_engine = E8S_IO_URING;
  return 0;
}

int tu_group_pwrite(void **state) {
  (void)state;
  tu_engine = E8S_IO_PWRITE;
  return 0;
}

void tu_mkdtemp(char *dir, size_t n) {
  const char *t = getenv("TMPDIR");
  snprintf(dir, n, "%s/e8s-test-XXXXXX", t && *t ? t : "/tmp");
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    abort();
  }
}

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw) {
  (void)sb, (void)flag, (void)ftw;
  return remove(p);
}

void tu_rmtree(const char *dir) { nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS); }

void tu_config(tu_env *env) {
  e8s_config_init(&env->cfg);
  env->cfg.dir = env->dir;
  env->cfg.io_engine = tu_engine;
  env->cfg.flags = E8S_OPEN_CREATE;
}

void tu_reopen(tu_env *env) {
  e8s_close(env->st);
  env->st = NULL;
  int rc = e8s_open(&env->cfg, &env->st);
  if (rc) fprintf(stderr, "reopen: %s: %s\n", e8s_error_name(rc), e8s_last_error_detail());
  assert_int_equal(rc, E8S_OK);
  assert_int_equal(e8s_io_engine_used(env->st), tu_engine);
}

int tu_setup(void **state) {
  tu_env *env = calloc(1, sizeof *env);
  tu_mkdtemp(env->dir, sizeof env->dir);
  tu_config(env);
  int rc = e8s_open(&env->cfg, &env->st);
  if (rc) {
    fprintf(stderr, "open: %s: %s\n", e8s_error_name(rc), e8s_last_error_detail());
    return -1;
  }
  e8s_ns_info ns;
  for (int i = 0; i < 32; i++) env->salt[i] = (uint8_t)(i * 7 + 1), env->fp[i] = (uint8_t)(200 - i);
  if (e8s_ns_create(env->st, "t", env->salt, 0, &ns) != E8S_OK) return -1;
  env->ns = ns.id;
  if (e8s_fp_register(env->st, env->fp, "fingerprint-blob", 16) != E8S_OK) return -1;
  *state = env;
  return 0;
}

int tu_teardown(void **state) {
  tu_env *env = *state;
  e8s_close(env->st);
  tu_rmtree(env->dir);
  free(env);
  return 0;
}

void tu_tokens(uint32_t *out, size_t n, uint32_t seed) {
  for (size_t i = 0; i < n; i++) out[i] = seed * 1000003u + (uint32_t)i;
}

void tu_payload(uint8_t *out, size_t n, uint32_t seed) {
  uint64_t x = 0x9E3779B97F4A7C15ull * (seed + 1);
  for (size_t i = 0; i < n; i++) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    out[i] = (uint8_t)x;
  }
}

int tu_put_chain(tu_env *env, const uint32_t *tokens, size_t n_chunks, uint32_t chunk_tokens,
                 uint32_t seed, size_t bytes, uint8_t (*keys_out)[32]) {
  e8s_put_rec *r = calloc(n_chunks, sizeof *r);
  uint8_t **pl = calloc(n_chunks, sizeof *pl);
  uint8_t parent[32] = {0};
  for (size_t i = 0; i < n_chunks; i++) {
    const uint32_t *t = tokens + i * chunk_tokens;
    assert_int_equal(e8s_chunk_key(env->salt, env->fp, parent, t, chunk_tokens, r[i].key), 0);
    memcpy(r[i].parent, parent, 32);
    memcpy(parent, r[i].key, 32);
    r[i].tokens = t;
    r[i].n_tokens = chunk_tokens;
    pl[i] = malloc(bytes);
    tu_payload(pl[i], bytes, seed + (uint32_t)i);
    r[i].payload = pl[i];
    r[i].payload_bytes = bytes;
    if (keys_out) memcpy(keys_out[i], r[i].key, 32);
  }
  int rc = e8s_put(env->st, env->ns, env->fp, r, n_chunks);
  for (size_t i = 0; i < n_chunks; i++) free(pl[i]);
  free(pl);
  free(r);
  return rc;
}

int tu_check(tu_env *env, const uint8_t key[32], uint32_t seed, size_t bytes) {
  uint8_t *got = malloc(bytes + 1), *want = malloc(bytes);
  uint64_t n = 0;
  int rc = e8s_get(env->st, env->ns, key, got, bytes + 1, &n);
  if (rc == E8S_OK) {
    tu_payload(want, bytes, seed);
    if (n != bytes || memcmp(got, want, bytes) != 0) rc = -100;
  }
  free(got);
  free(want);
  return rc;
}
