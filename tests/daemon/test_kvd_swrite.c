/* test_kvd_swrite.c: the session change of PutChunks is all or nothing (daemon/kvd_swrite.h).
 * On a real libe8store in a temp dir, every store step of each change (CREATE, APPEND with
 * metadata, CUT) is made to fail in turn, and the undo too: the session must read back exactly
 * as before (chain, tokens, metadata, pins), and the change must succeed once the fault is
 * off. */
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
  kvd_swrite_test_fault(0, 0);
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

/* Runs w with the first `skip` steps passing and `count` failing; checks the session is as
 * before and the error code. */
static void faulted(fx *f, const kvd_swrite *w, unsigned skip, unsigned count, kvd_code want) {
  snap before, after;
  take(f, w->name, &before);
  kvd_status st;
  kvd_swrite_test_fault(skip, count);
  assert_int_equal(kvd_swrite_commit(f->s, w, &st), -1);
  kvd_swrite_test_fault(0, 0);
  assert_int_equal(st.code, want);
  if (want != KVD_INTERNAL) { /* an undo that worked: exactly as before */
    assert_non_null(strstr(st.msg, "unchanged"));
    take(f, w->name, &after);
    same(&before, &after);
  }
}

static void load(fx *f, const char *name, kvd_sess *s) {
  kvd_status st;
  assert_int_equal(kvd_sess_load(f->s, f->ns, name, 1, s, &st), 0);
}

static void test_create(void **state) {
  fx *f = *state;
  uint8_t k[3][E8S_KEY_BYTES];
  put_chain(f, NULL, 1, 3, k);
  size_t ml;
  uint8_t *meta = meta_of("who", "create", &ml);
  kvd_swrite w = {.ns = f->ns, .name = "c", .fp_id = f->fp.id, .meta = meta, .meta_len = ml,
                  .keys = (const uint8_t(*)[E8S_KEY_BYTES])k, .n_keys = 3};
  faulted(f, &w, 0, 1, KVD_RESOURCE);
  snap s;
  take(f, "c", &s);
  assert_false(s.exists); /* the create step failed: nothing */
  faulted(f, &w, 1, 1, KVD_RESOURCE);
  take(f, "c", &s);
  assert_false(s.exists); /* append failed, the undo (delete) worked */
  faulted(f, &w, 1, 2, KVD_INTERNAL); /* undo fails too: said so */
  take(f, "c", &s);
  assert_true(s.exists);
  assert_int_equal(s.n_chunks, 0);
  kvd_status st;
  assert_int_equal(e8s_session_delete(f->s, f->ns, "c"), E8S_OK);
  assert_int_equal(kvd_swrite_commit(f->s, &w, &st), 0);
  take(f, "c", &s);
  assert_int_equal(s.n_chunks, 3);
  assert_string_equal(s.meta, "who=create;");
  free(meta);
}

static void test_append_with_metadata(void **state) {
  fx *f = *state;
  uint8_t k[5][E8S_KEY_BYTES];
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
  kvd_swrite w = {.ns = f->ns, .name = "a", .fp_id = f->fp.id, .old = &old, .keep_chunks = 3,
                  .meta = nmeta, .meta_len = ml, .set_meta = 1,
                  .keys = (const uint8_t(*)[E8S_KEY_BYTES])k[3], .n_keys = 2};
  faulted(f, &w, 0, 1, KVD_RESOURCE); /* set_meta fails */
  faulted(f, &w, 1, 1, KVD_RESOURCE); /* append fails: metadata restored */
  faulted(f, &w, 1, 2, KVD_INTERNAL); /* and the restore fails: said so */
  assert_int_equal(kvd_swrite_commit(f->s, &w, &st), 0);
  snap s;
  take(f, "a", &s);
  assert_int_equal(s.n_chunks, 5);
  assert_int_equal(s.n_tokens, 20);
  assert_string_equal(s.meta, "a=1;b=2;");
  free(nmeta);
  kvd_sess_free(&old);
}

static void test_cut(void **state) {
  fx *f = *state;
  uint8_t k[5][E8S_KEY_BYTES], n[2][E8S_KEY_BYTES], m[1][E8S_KEY_BYTES];
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
  kvd_swrite w = {.ns = f->ns, .name = "x", .fp_id = f->fp.id, .old = &old, .keep_chunks = 2,
                  .meta = meta, .meta_len = ml,
                  .keys = (const uint8_t(*)[E8S_KEY_BYTES])n, .n_keys = 2};
  faulted(f, &w, 0, 1, KVD_RESOURCE); /* the REPLACE step fails */
  faulted(f, &w, 1, 1, KVD_RESOURCE); /* the append fails: old chain, pins, metadata back */
  assert_int_equal(kvd_swrite_commit(f->s, &w, &st), 0);
  snap s;
  take(f, "x", &s);
  assert_int_equal(s.n_chunks, 4);
  assert_int_equal(s.n_tokens, 16);
  assert_memory_equal(s.keys[1], k[1], E8S_KEY_BYTES);
  assert_memory_equal(s.keys[2], n[0], E8S_KEY_BYTES);
  assert_string_equal(s.meta, "v=new;");
  e8s_chunk_info ci;
  assert_int_equal(e8s_chunk_stat(f->s, f->ns, k[4], &ci), E8S_OK);
  assert_int_equal(ci.session_refs, 0); /* the cut-off chunks are cache entries now */
  kvd_sess_free(&old);
  load(f, "x", &old); /* cut at chunk 1; the append and its undo both fail: said so */
  kvd_swrite w2 = {.ns = f->ns, .name = "x", .fp_id = f->fp.id, .old = &old, .keep_chunks = 1,
                   .meta = meta, .meta_len = ml,
                   .keys = (const uint8_t(*)[E8S_KEY_BYTES])m, .n_keys = 1};
  kvd_swrite_test_fault(1, 2);
  assert_int_equal(kvd_swrite_commit(f->s, &w2, &st), -1);
  kvd_swrite_test_fault(0, 0);
  assert_int_equal(st.code, KVD_INTERNAL);
  assert_non_null(strstr(st.msg, "empty"));
  kvd_sess_free(&old);
  free(meta);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_create, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_append_with_metadata, fx_setup, fx_teardown),
      cmocka_unit_test_setup_teardown(test_cut, fx_setup, fx_teardown),
  };
  return cmocka_run_group_tests_name("e8kvd session commit (fault injection)", tests, NULL,
                                     NULL);
}
