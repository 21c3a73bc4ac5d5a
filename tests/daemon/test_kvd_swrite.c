/* test_kvd_swrite.c: the session change of PutChunks is all or nothing (daemon/kvd_swrite.h).
 * On a real libe8store in a temp dir, each change (CREATE, APPEND with metadata, CUT) is made
 * to fail late inside its one store transaction (a key that is not stored, or does not
 * continue the chain, after the create / metadata / cut part was applied), and a change of
 * a session that someone else changed since it was loaded: the session must read back
 * exactly as before (chain, tokens, metadata, pins), and the right change must succeed. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "daemon/kvd_swrite.h"

typedef struct fx {
  char dir[64];
  e8s_store *s;
  uint32_t ns;
  kvd_fp fp;
  uint8_t salt[E8S_SALT_BYTES];
} fx;

static int fx_setup(void **state) {
  fx *f = calloc(1, sizeof *f);
  snprintf(f->dir, sizeof f->dir, "/tmp/kvd_swrite.XXXXXX");
  assert_non_null(mkdtemp(f->dir));
  e8s_config c;
  e8s_config_init(&c);
  c.dir = f->dir;
  c.flags = E8S_OPEN_CREATE;
  c.io_engine = E8S_IO_PWRITE;
  c.segment_bytes = 1 << 20;
  assert_int_equal(e8s_open(&c, &f->s), E8S_OK);
  e8s_ns_info ni;
  assert_int_equal(e8s_ns_create(f->s, "t", NULL, 0, &ni), E8S_OK);
  f->ns = ni.id;
  memcpy(f->salt, ni.salt, sizeof f->salt);
  E8kv__V1__ModelFingerprint m;
  E8kv__V1__RopeConfig r;
  e8kv__v1__model_fingerprint__init(&m);
  e8kv__v1__rope_config__init(&r);
  m.model_id = "swrite-test";
  m.n_layers = 2;
  m.n_kv_heads = 1;
  m.head_dim = 8;
  m.source_dtype = E8KV__V1__DTYPE__DTYPE_FP16;
  m.rope = &r;
  kvd_status st;
  assert_int_equal(kvd_fp_resolve(&m, &f->fp, &st), 0);
  assert_int_equal(kvd_fp_register(f->s, &f->fp, &st), 0);
  *state = f;
  return 0;
}

static int fx_teardown(void **state) {
  fx *f = *state;
  e8s_close(f->s);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", f->dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", f->dir);
  free(f);
  return 0;
}

/* Stores n chunks of 4 tokens continuing parent (NULL: a sequence start); keys into out. */
static void put_chain(fx *f, const uint8_t *parent, uint32_t seed, size_t n,
                      uint8_t (*out)[E8S_KEY_BYTES]) {
  uint8_t prev[E8S_KEY_BYTES] = {0};
  if (parent) memcpy(prev, parent, sizeof prev);
  for (size_t i = 0; i < n; i++) {
    uint32_t tok[4] = {seed, (uint32_t)i, 7, 9};
    static const uint8_t zero[E8S_KEY_BYTES];
    e8s_put_rec r = {.tokens = tok, .n_tokens = 4, .payload = "payload", .payload_bytes = 7};
    memcpy(r.parent, prev, sizeof prev);
    assert_int_equal(e8s_chunk_key(f->salt, f->fp.id, memcmp(prev, zero, 32) ? prev : NULL,
                                   tok, 4, r.key), E8S_OK);
    assert_int_equal(e8s_put(f->s, f->ns, f->fp.id, &r, 1), E8S_OK);
    memcpy(out[i], r.key, E8S_KEY_BYTES);
    memcpy(prev, r.key, sizeof prev);
  }
}

static uint8_t *meta_of(const char *k, const char *v, size_t *len) {
  char *keys[] = {(char *)k}, *vals[] = {(char *)v};
  uint8_t *b;
  kvd_status st;
  assert_int_equal(kvd_sess_meta_pack(4, NULL, k ? 1 : 0, keys, vals, &b, len, &st), 0);
  return b;
}

/* The session as it reads now: chain, token count, metadata entries, pins of each chunk. */
typedef struct snap {
  int exists;
  uint64_t n_chunks, n_tokens;
  uint8_t keys[16][E8S_KEY_BYTES];
  char meta[256];
  uint32_t refs[16];
} snap;

static void take(fx *f, const char *name, snap *o) {
  memset(o, 0, sizeof *o);
  kvd_sess s;
  kvd_status st;
  if (kvd_sess_load(f->s, f->ns, name, 1, &s, &st) != 0) {
    assert_int_equal(st.code, KVD_NOT_FOUND);
    return;
  }
  o->exists = 1;
  o->n_chunks = s.info.n_chunks;
  o->n_tokens = s.info.n_tokens;
  assert_true(o->n_chunks <= 16);
  for (uint64_t i = 0; i < o->n_chunks; i++) {
    memcpy(o->keys[i], s.keys[i], E8S_KEY_BYTES);
    e8s_chunk_info ci;
    assert_int_equal(e8s_chunk_stat(f->s, f->ns, s.keys[i], &ci), E8S_OK);
    o->refs[i] = ci.session_refs;
  }
  for (size_t i = 0; i < s.meta->n_metadata; i++) {
    size_t n = strlen(o->meta);
    snprintf(o->meta + n, sizeof o->meta - n, "%s=%s;", s.meta->metadata[i]->key,
             s.meta->metadata[i]->value);
  }
  kvd_sess_free(&s);
}

static void same(const snap *a, const snap *b) {
  assert_int_equal(a->exists, b->exists);
  assert_int_equal(a->n_chunks, b->n_chunks);
  assert_int_equal(a->n_tokens, b->n_tokens);
  assert_memory_equal(a->keys, b->keys, sizeof a->keys);
  assert_string_equal(a->meta, b->meta);
  assert_memory_equal(a->refs, b->refs, sizeof a->refs);
}

/* Runs w, which must fail with code want and leave the session exactly as before. */
static void failing(fx *f, const kvd_swrite *w, kvd_code want) {
  snap before, after;
  take(f, w->name, &before);
  kvd_status st;
  assert_int_equal(kvd_swrite_commit(f->s, w, &st), -1);
  assert_int_equal(st.code, want);
  assert_non_null(strstr(st.msg, "unchanged"));
  take(f, w->name, &after);
  same(&before, &after);
}

static void load(fx *f, const char *name, kvd_sess *s) {
  kvd_status st;
  assert_int_equal(kvd_sess_load(f->s, f->ns, name, 1, s, &st), 0);
}

static uint32_t refs_of(fx *f, const uint8_t *key) {
  e8s_chunk_info ci;
  assert_int_equal(e8s_chunk_stat(f->s, f->ns, key, &ci), E8S_OK);
  return ci.session_refs;
}

static void test_create(void **state) {
  fx *f = *state;
  uint8_t k[3][E8S_KEY_BYTES], bad[3][E8S_KEY_BYTES];
  put_chain(f, NULL, 1, 3, k);
  memcpy(bad, k, sizeof bad);
  memset(bad[2], 0x5a, E8S_KEY_BYTES); /* not stored: fails after create + 2 appends */
  size_t ml;
  uint8_t *meta = meta_of("who", "create", &ml);
  kvd_swrite w = {.ns = f->ns, .name = "c", .fp_id = f->fp.id, .meta = meta, .meta_len = ml,
                  .keys = (const uint8_t(*)[E8S_KEY_BYTES])bad, .n_keys = 3};
  failing(f, &w, KVD_NOT_FOUND);
  snap s;
  take(f, "c", &s);
  assert_false(s.exists);
  assert_int_equal(refs_of(f, k[0]) + refs_of(f, k[1]), 0); /* no pin stayed */
  w.keys = (const uint8_t(*)[E8S_KEY_BYTES])k;
  kvd_status st;
  assert_int_equal(kvd_swrite_commit(f->s, &w, &st), 0);
  take(f, "c", &s);
  assert_int_equal(s.n_chunks, 3);
  assert_int_equal(s.n_tokens, 12);
  assert_string_equal(s.meta, "who=create;");
  failing(f, &w, KVD_ABORTED); /* a second CREATE: it exists now */
  free(meta);
}

static void test_append_with_metadata(void **state) {
  fx *f = *state;
  uint8_t k[5][E8S_KEY_BYTES], bad[2][E8S_KEY_BYTES];
  put_chain(f, NULL, 2, 5, k);
  size_t ml;
  uint8_t *meta = meta_of("a", "1", &ml);
  kvd_status st;
  kvd_swrite w0 = {.ns = f->ns, .name = "a", .fp_id = f->fp.id, .meta = meta, .meta_len = ml,
                   .keys = (const uint8_t(*)[E8S_KEY_BYTES])k, .n_keys = 3};
  assert_int_equal(kvd_swrite_commit(f->s, &w0, &st), 0);
  free(meta);
  kvd_sess old;
  load(f, "a", &old);
  char *nk[] = {"b"}, *nv[] = {"2"};
  uint8_t *nmeta;
  assert_int_equal(kvd_sess_meta_pack(4, old.meta, 1, nk, nv, &nmeta, &ml, &st), 0);
  memcpy(bad[0], k[3], E8S_KEY_BYTES);
  memcpy(bad[1], k[0], E8S_KEY_BYTES); /* does not continue k[3]: fails after set_meta */
  kvd_swrite w = {.ns = f->ns, .name = "a", .fp_id = f->fp.id, .old = &old, .keep_chunks = 3,
                  .meta = nmeta, .meta_len = ml, .set_meta = 1,
                  .keys = (const uint8_t(*)[E8S_KEY_BYTES])bad, .n_keys = 2};
  failing(f, &w, KVD_ABORTED);
  w.keys = (const uint8_t(*)[E8S_KEY_BYTES])k[3];
  assert_int_equal(kvd_swrite_commit(f->s, &w, &st), 0);
  snap s;
  take(f, "a", &s);
  assert_int_equal(s.n_chunks, 5);
  assert_int_equal(s.n_tokens, 20);
  assert_string_equal(s.meta, "a=1;b=2;");
  failing(f, &w, KVD_ABORTED); /* old is stale now (3 chunks, the session has 5) */
  free(nmeta);
  kvd_sess_free(&old);
}

static void test_cut(void **state) {
  fx *f = *state;
  uint8_t k[5][E8S_KEY_BYTES], n[2][E8S_KEY_BYTES], m[1][E8S_KEY_BYTES], bad[2][E8S_KEY_BYTES];
  put_chain(f, NULL, 3, 5, k);
  put_chain(f, k[1], 33, 2, n); /* another continuation after chunk 1 */
  put_chain(f, k[0], 44, 1, m); /* and one after chunk 0 */
  size_t ml;
  uint8_t *meta = meta_of("v", "old", &ml);
  kvd_status st;
  kvd_swrite w0 = {.ns = f->ns, .name = "x", .fp_id = f->fp.id, .meta = meta, .meta_len = ml,
                   .keys = (const uint8_t(*)[E8S_KEY_BYTES])k, .n_keys = 5};
  assert_int_equal(kvd_swrite_commit(f->s, &w0, &st), 0);
  free(meta);
  kvd_sess old;
  load(f, "x", &old);
  meta = meta_of("v", "new", &ml);
  memcpy(bad[0], n[0], E8S_KEY_BYTES);
  memcpy(bad[1], k[4], E8S_KEY_BYTES); /* does not continue n[0]: fails after the cut */
  kvd_swrite w = {.ns = f->ns, .name = "x", .fp_id = f->fp.id, .old = &old, .keep_chunks = 2,
                  .meta = meta, .meta_len = ml,
                  .keys = (const uint8_t(*)[E8S_KEY_BYTES])bad, .n_keys = 2};
  failing(f, &w, KVD_ABORTED); /* old chain, pins (k[2..4] still 1), metadata */
  w.keys = (const uint8_t(*)[E8S_KEY_BYTES])n;
  assert_int_equal(kvd_swrite_commit(f->s, &w, &st), 0);
  snap s;
  take(f, "x", &s);
  assert_int_equal(s.n_chunks, 4);
  assert_int_equal(s.n_tokens, 16);
  assert_memory_equal(s.keys[1], k[1], E8S_KEY_BYTES);
  assert_memory_equal(s.keys[2], n[0], E8S_KEY_BYTES);
  assert_string_equal(s.meta, "v=new;");
  assert_int_equal(refs_of(f, k[4]), 0); /* the cut-off chunks are cache entries now */
  assert_int_equal(refs_of(f, k[1]), 1); /* kept: still pinned once */
  kvd_sess_free(&old);
  load(f, "x", &old); /* cut at chunk 1 onto m */
  kvd_swrite w2 = {.ns = f->ns, .name = "x", .fp_id = f->fp.id, .old = &old, .keep_chunks = 1,
                   .meta = meta, .meta_len = ml,
                   .keys = (const uint8_t(*)[E8S_KEY_BYTES])m, .n_keys = 1};
  assert_int_equal(kvd_swrite_commit(f->s, &w2, &st), 0);
  take(f, "x", &s);
  assert_int_equal(s.n_chunks, 2);
  assert_memory_equal(s.keys[1], m[0], E8S_KEY_BYTES);
  assert_int_equal(refs_of(f, k[1]) + refs_of(f, n[0]) + refs_of(f, n[1]), 0);
  kvd_sess_free(&old);
  free(meta);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_create, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_append_with_metadata, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_cut, fx_setup, fx_teardown),
  };
  return cmocka_run_group_tests_name("e8kvd session commit (all or nothing)", tests, NULL,
                                     NULL);
}
