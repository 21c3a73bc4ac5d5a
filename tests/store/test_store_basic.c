/* test_store_basic.c: round trips, restart, longest-prefix lookup with digest check (a forged
 * key collision is refused), chunk key layout, sessions, namespaces, fingerprints, read-only
 * open beside a writer, 64-bit offsets. Runs on both io engines. */
#include <fcntl.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "store/e8store_test.h"
#include "tests/store/store_test_util.h"

#define CT 256

static void test_roundtrip(void **state) {
  tu_env *env = *state;
  uint32_t tok[4 * CT];
  tu_tokens(tok, 4 * CT, 1);
  uint8_t keys[4][32];
  assert_int_equal(tu_put_chain(env, tok, 4, CT, 10, 10000, keys), E8S_OK);
  for (int i = 0; i < 4; i++) assert_int_equal(tu_check(env, keys[i], 10 + i, 10000), E8S_OK);
  /* identical content again: idempotent */
  assert_int_equal(tu_put_chain(env, tok, 4, CT, 10, 10000, NULL), E8S_OK);
  e8s_stats s;
  assert_int_equal(e8s_stats_get(env->st, &s), E8S_OK);
  assert_int_equal(s.chunks, 4);
  assert_int_equal(s.puts_stored, 4);
  assert_int_equal(s.puts_existed, 4);
  assert_int_equal(s.used_bytes, 4 * (10000 + E8S_RECORD_HEADER_BYTES));
  /* info, RANGE, unknown key */
  e8s_chunk_info info;
  assert_int_equal(e8s_chunk_stat(env->st, env->ns, keys[1], &info), E8S_OK);
  assert_memory_equal(info.parent, keys[0], 32);
  assert_int_equal(info.n_tokens, CT);
  assert_int_equal(info.payload_bytes, 10000);
  uint8_t small[10];
  uint64_t n = 0;
  assert_int_equal(e8s_get(env->st, env->ns, keys[0], small, sizeof small, &n), E8S_ERR_RANGE);
  assert_int_equal(n, 10000);
  uint8_t nokey[32] = {1};
  assert_int_equal(e8s_get(env->st, env->ns, nokey, small, 10, &n), E8S_ERR_NOTFOUND);
  /* another namespace cannot read it */
  e8s_ns_info other;
  assert_int_equal(e8s_ns_create(env->st, "other", NULL, 0, &other), E8S_OK);
  assert_int_equal(e8s_chunk_stat(env->st, other.id, keys[0], &info), E8S_ERR_NOTFOUND);
}

static void test_restart(void **state) {
  tu_env *env = *state;
  uint32_t tok[3 * CT];
  tu_tokens(tok, 3 * CT, 2);
  uint8_t keys[3][32], got[3][32];
  assert_int_equal(tu_put_chain(env, tok, 3, CT, 20, 5000, keys), E8S_OK);
  e8s_lookup_result r1, r2;
  assert_int_equal(e8s_lookup(env->st, env->ns, env->fp, tok, 3 * CT, CT, 0, got, 3, &r1), 0);
  tu_reopen(env);
  uint8_t got2[3][32];
  assert_int_equal(e8s_lookup(env->st, env->ns, env->fp, tok, 3 * CT, CT, 0, got2, 3, &r2), 0);
  assert_int_equal(r1.n_chunks, 3);
  assert_int_equal(r2.n_chunks, 3);
  assert_int_equal(r2.tokens_matched, 3 * CT);
  assert_memory_equal(got, got2, sizeof got);
  assert_memory_equal(got, keys, sizeof got);
  for (int i = 0; i < 3; i++) assert_int_equal(tu_check(env, keys[i], 20 + i, 5000), E8S_OK);
  /* writes after a restart go on working, and survive another one */
  uint32_t tok2[CT];
  tu_tokens(tok2, CT, 3);
  uint8_t k2[1][32];
  assert_int_equal(tu_put_chain(env, tok2, 1, CT, 30, 777, k2), E8S_OK);
  tu_reopen(env);
  assert_int_equal(tu_check(env, k2[0], 30, 777), E8S_OK);
  assert_int_equal(tu_check(env, keys[2], 22, 5000), E8S_OK);
}

static void test_lookup_prefix(void **state) {
  tu_env *env = *state;
  enum { N = 600 }; /* chunks of 256, 256, 88 */
  uint32_t tok[N + 200];
  tu_tokens(tok, N + 200, 4);
  e8s_put_rec r[3];
  memset(r, 0, sizeof r);
  uint8_t parent[32] = {0}, pl[100];
  tu_payload(pl, sizeof pl, 4);
  for (int i = 0; i < 3; i++) {
    size_t m = i < 2 ? CT : N - 2 * CT;
    assert_int_equal(e8s_chunk_key(env->salt, env->fp, parent, tok + i * CT, m, r[i].key), 0);
    memcpy(r[i].parent, parent, 32);
    memcpy(parent, r[i].key, 32);
    r[i].tokens = tok + i * CT;
    r[i].n_tokens = (uint32_t)m;
    r[i].payload = pl;
    r[i].payload_bytes = sizeof pl;
  }
  assert_int_equal(e8s_put(env->st, env->ns, env->fp, r, 3), E8S_OK);
  uint8_t keys[8][32];
  e8s_lookup_result res;
  assert_int_equal(e8s_lookup(env->st, env->ns, env->fp, tok, N, CT, 0, keys, 8, &res), 0);
  assert_int_equal(res.n_chunks, 3);
  assert_int_equal(res.tokens_matched, N);
  /* longer query: its third chunk has 256 tokens, not the stored 88 -> prefix of 512 */
  assert_int_equal(e8s_lookup(env->st, env->ns, env->fp, tok, N + 200, CT, 0, keys, 8, &res), 0);
  assert_int_equal(res.n_chunks, 2);
  assert_int_equal(res.tokens_matched, 2 * CT);
  /* a change inside chunk 1 -> only chunk 0 */
  uint32_t alt[N];
  memcpy(alt, tok, sizeof alt);
  alt[CT + 5] ^= 1;
  assert_int_equal(e8s_lookup(env->st, env->ns, env->fp, alt, N, CT, 0, keys, 8, &res), 0);
  assert_int_equal(res.n_chunks, 1);
  /* max_keys bounds it */
  assert_int_equal(e8s_lookup(env->st, env->ns, env->fp, tok, N, CT, 0, keys, 2, &res), 0);
  assert_int_equal(res.n_chunks, 2);
  /* other fingerprint, other namespace (other salt): nothing */
  uint8_t fp2[32] = {9};
  assert_int_equal(e8s_lookup(env->st, env->ns, fp2, tok, N, CT, 0, keys, 8, &res), 0);
  assert_int_equal(res.n_chunks, 0);
  e8s_ns_info o;
  assert_int_equal(e8s_ns_create(env->st, "o", NULL, 0, &o), E8S_OK);
  assert_int_equal(e8s_lookup(env->st, o.id, env->fp, tok, N, CT, 0, keys, 8, &res), 0);
  assert_int_equal(res.n_chunks, 0);
  assert_int_equal(e8s_lookup(env->st, 999, env->fp, tok, N, CT, 0, keys, 8, &res),
                   E8S_ERR_NOTFOUND);
  e8s_stats s;
  assert_int_equal(e8s_stats_get(env->st, &s), 0);
  assert_true(s.lookup_hit_chunks >= 8);
  assert_true(s.lookup_misses >= 3);
}

/* A record stored under the key of tokens T but holding other tokens (a collision, or a
 * foreign hash scheme) must never be served for T, and T cannot overwrite it silently. */
static void test_collision_refused(void **state) {
  tu_env *env = *state;
  uint32_t t[CT], forged[CT];
  tu_tokens(t, CT, 5);
  tu_tokens(forged, CT, 6);
  e8s_put_rec r = {0};
  assert_int_equal(e8s_chunk_key(env->salt, env->fp, NULL, t, CT, r.key), 0);
  r.tokens = forged; /* key of t, tokens of forged: digest of forged is stored */
  r.n_tokens = CT;
  r.payload = "evil";
  r.payload_bytes = 4;
  assert_int_equal(e8s_put(env->st, env->ns, env->fp, &r, 1), E8S_OK);
  uint8_t keys[1][32];
  e8s_lookup_result res;
  assert_int_equal(e8s_lookup(env->st, env->ns, env->fp, t, CT, CT, 0, keys, 1, &res), 0);
  assert_int_equal(res.n_chunks, 0);
  assert_int_equal(res.tokens_matched, 0);
  /* the honest put of t under the same key is a conflict, not a silent overwrite */
  e8s_put_rec h = r;
  h.tokens = t;
  h.payload = "good";
  assert_int_equal(e8s_put(env->st, env->ns, env->fp, &h, 1), E8S_ERR_CONFLICT);
  assert_int_equal(h.result, E8S_ERR_CONFLICT);
  /* a short token count with the right digest prefix is refused too */
  assert_int_equal(e8s_lookup(env->st, env->ns, env->fp, forged, CT, CT, 0, keys, 1, &res), 0);
  assert_int_equal(res.n_chunks, 0);
}

/* e8s_chunk_key follows the documented byte layout exactly. */
typedef struct hbuf { uint8_t b[512]; size_t n; } hbuf;

static void field(hbuf *c, uint8_t tag, const void *p, uint64_t n) {
  c->b[c->n++] = tag;
  for (int i = 0; i < 8; i++) c->b[c->n++] = (uint8_t)(n >> (8 * i));
  if (n) memcpy(c->b + c->n, p, n);
  c->n += n;
}

static void test_chunk_key_layout(void **state) {
  (void)state;
  uint8_t salt[32], fp[32], parent[32], key[32], want[32], key0[32];
  for (int i = 0; i < 32; i++) salt[i] = (uint8_t)i, fp[i] = (uint8_t)(i + 100), parent[i] = 7;
  uint32_t tok[3] = {1, 0x01020304u, 0xFFFFFFFFu};
  uint8_t tb[12] = {1, 0, 0, 0, 4, 3, 2, 1, 0xFF, 0xFF, 0xFF, 0xFF};
  hbuf c = {.n = 0};
  field(&c, 0x45, "e8kv.chunk.v1", 13);
  field(&c, 0x01, salt, 32);
  field(&c, 0x02, fp, 32);
  field(&c, 0x03, parent, 32);
  field(&c, 0x04, tb, 12);
  SHA256(c.b, c.n, want);
  assert_int_equal(e8s_chunk_key(salt, fp, parent, tok, 3, key), 0);
  assert_memory_equal(key, want, 32);
  /* first chunk: parent NULL and all-zero parent are the same (empty field) */
  uint8_t zero[32] = {0};
  c.n = 0;
  field(&c, 0x45, "e8kv.chunk.v1", 13);
  field(&c, 0x01, salt, 32);
  field(&c, 0x02, fp, 32);
  field(&c, 0x03, NULL, 0);
  field(&c, 0x04, tb, 12);
  SHA256(c.b, c.n, want);
  assert_int_equal(e8s_chunk_key(salt, fp, NULL, tok, 3, key0), 0);
  assert_memory_equal(key0, want, 32);
  assert_int_equal(e8s_chunk_key(salt, fp, zero, tok, 3, key), 0);
  assert_memory_equal(key, key0, 32);
  /* digest is domain-separated from the key */
  assert_int_equal(e8s_token_digest(NULL, tok, 3, key), 0);
  assert_memory_not_equal(key, key0, 32);
  assert_int_equal(e8s_chunk_key(salt, fp, NULL, tok, 0, key), E8S_ERR_INVAL);
}

static void test_sessions(void **state) {
  tu_env *env = *state;
  uint32_t tok[5 * CT];
  tu_tokens(tok, 5 * CT, 7);
  uint8_t keys[5][32];
  assert_int_equal(tu_put_chain(env, tok, 5, CT, 70, 300, keys), E8S_OK);
  assert_int_equal(e8s_session_create(env->st, env->ns, "s1", env->fp, "meta", 4, 0), E8S_OK);
  assert_int_equal(e8s_session_create(env->st, env->ns, "s1", env->fp, NULL, 0, 0),
                   E8S_ERR_EXISTS);
  /* not a continuation: chunk 1 cannot come first */
  assert_int_equal(e8s_session_append(env->st, env->ns, "s1", (const uint8_t(*)[32])keys + 1, 1),
                   E8S_ERR_CONFLICT);
  assert_int_equal(e8s_session_append(env->st, env->ns, "s1", (const uint8_t(*)[32])keys, 3), 0);
  assert_int_equal(e8s_session_append(env->st, env->ns, "s1", (const uint8_t(*)[32])keys + 3, 2),
                   0);
  uint8_t nokey[1][32] = {{3}};
  assert_int_equal(e8s_session_append(env->st, env->ns, "s1", (const uint8_t(*)[32])nokey, 1),
                   E8S_ERR_NOTFOUND);
  assert_int_equal(e8s_session_append(env->st, env->ns, "nope", (const uint8_t(*)[32])keys, 1),
                   E8S_ERR_NOTFOUND);
  e8s_session_info info;
  uint8_t got[5][32];
  char meta[8] = {0};
  assert_int_equal(e8s_session_get(env->st, env->ns, "s1", &info, got, 5, meta, 8), E8S_OK);
  assert_int_equal(info.n_chunks, 5);
  assert_int_equal(info.n_tokens, 5 * CT);
  assert_int_equal(info.meta_bytes, 4);
  assert_memory_equal(meta, "meta", 4);
  assert_memory_equal(got, keys, sizeof got);
  assert_string_equal(info.name, "s1");
  assert_int_equal(e8s_session_get(env->st, env->ns, "s1", &info, got, 2, NULL, 0),
                   E8S_ERR_RANGE);
  e8s_chunk_info ci;
  assert_int_equal(e8s_chunk_stat(env->st, env->ns, keys[4], &ci), 0);
  assert_int_equal(ci.session_refs, 1);
  assert_int_equal(e8s_session_set_meta(env->st, env->ns, "s1", "xy", 2), 0);
  assert_int_equal(e8s_session_get(env->st, env->ns, "s1", &info, NULL, 0, meta, 8), 0);
  assert_memory_equal(meta, "xy", 2);
  /* list: names, prefix, pagination, fingerprint filter */
  const char *names[] = {"a/1", "a/2", "a/3", "b/1"};
  for (int i = 0; i < 4; i++)
    assert_int_equal(e8s_session_create(env->st, env->ns, names[i], env->fp, NULL, 0, 0), 0);
  e8s_session_info li[8];
  size_t n;
  int more;
  e8s_session_filter f = {.name_prefix = "a/"};
  assert_int_equal(e8s_session_list(env->st, env->ns, &f, NULL, li, 2, &n, &more), 0);
  assert_int_equal(n, 2);
  assert_true(more);
  assert_string_equal(li[0].name, "a/1");
  assert_string_equal(li[1].name, "a/2");
  assert_int_equal(e8s_session_list(env->st, env->ns, &f, li[1].name, li, 2, &n, &more), 0);
  assert_int_equal(n, 1);
  assert_false(more);
  assert_string_equal(li[0].name, "a/3");
  assert_int_equal(e8s_session_list(env->st, env->ns, NULL, NULL, li, 8, &n, &more), 0);
  assert_int_equal(n, 5);
  uint8_t fp2[32] = {1};
  f = (e8s_session_filter){.fp_id = fp2};
  assert_int_equal(e8s_session_list(env->st, env->ns, &f, NULL, li, 8, &n, &more), 0);
  assert_int_equal(n, 0);
  /* delete drops pins; REPLACE too */
  assert_int_equal(e8s_session_create(env->st, env->ns, "s2", env->fp, NULL, 0, 0), 0);
  assert_int_equal(e8s_session_append(env->st, env->ns, "s2", (const uint8_t(*)[32])keys, 2), 0);
  assert_int_equal(e8s_chunk_stat(env->st, env->ns, keys[0], &ci), 0);
  assert_int_equal(ci.session_refs, 2);
  assert_int_equal(e8s_session_create(env->st, env->ns, "s2", env->fp, NULL, 0,
                                      E8S_SESSION_REPLACE), 0);
  assert_int_equal(e8s_chunk_stat(env->st, env->ns, keys[0], &ci), 0);
  assert_int_equal(ci.session_refs, 1);
  assert_int_equal(e8s_session_delete(env->st, env->ns, "s1"), 0);
  assert_int_equal(e8s_chunk_stat(env->st, env->ns, keys[0], &ci), 0);
  assert_int_equal(ci.session_refs, 0);
  assert_int_equal(e8s_session_delete(env->st, env->ns, "s1"), E8S_ERR_NOTFOUND);
  assert_int_equal(e8s_chunk_delete(env->st, env->ns, keys[0]), E8S_OK);
  assert_int_equal(e8s_chunk_stat(env->st, env->ns, keys[0], &ci), E8S_ERR_NOTFOUND);
  /* persistence of sessions */
  tu_reopen(env);
  assert_int_equal(e8s_session_get(env->st, env->ns, "a/2", &info, NULL, 0, NULL, 0), 0);
}

static void test_ns_fp(void **state) {
  tu_env *env = *state;
  e8s_ns_info a, b;
  assert_int_equal(e8s_ns_create(env->st, "t", NULL, 0, &a), E8S_ERR_EXISTS);
  assert_int_equal(a.id, env->ns);
  assert_memory_equal(a.salt, env->salt, 32);
  assert_int_equal(e8s_ns_create(env->st, "", NULL, 0, NULL), E8S_ERR_INVAL);
  assert_int_equal(e8s_ns_create(env->st, "q", NULL, 12345, &b), E8S_OK);
  assert_int_not_equal(b.id, a.id);
  assert_int_equal(e8s_ns_set_quota(env->st, b.id, 999), 0);
  assert_int_equal(e8s_ns_get(env->st, "q", &b), 0);
  assert_int_equal(b.quota_bytes, 999);
  assert_int_equal(e8s_ns_get_by_id(env->st, 4242, &b), E8S_ERR_NOTFOUND);
  e8s_ns_info l[4];
  size_t n;
  assert_int_equal(e8s_ns_list(env->st, l, 4, &n), 0);
  assert_int_equal(n, 2);
  assert_string_equal(l[1].name, "q");
  /* fingerprints */
  char buf[32];
  size_t bl;
  assert_int_equal(e8s_fp_register(env->st, env->fp, "fingerprint-blob", 16), E8S_OK);
  assert_int_equal(e8s_fp_register(env->st, env->fp, "other", 5), E8S_ERR_CONFLICT);
  assert_int_equal(e8s_fp_get(env->st, env->fp, buf, 4, &bl), E8S_ERR_RANGE);
  assert_int_equal(bl, 16);
  assert_int_equal(e8s_fp_get(env->st, env->fp, buf, sizeof buf, &bl), 0);
  assert_memory_equal(buf, "fingerprint-blob", 16);
  /* a put with an unregistered fingerprint or namespace is refused */
  uint8_t fp2[32] = {5};
  uint32_t tok[4] = {1, 2, 3, 4};
  e8s_put_rec r = {.tokens = tok, .n_tokens = 4, .payload = "x", .payload_bytes = 1};
  assert_int_equal(e8s_put(env->st, env->ns, fp2, &r, 1), E8S_ERR_NOTFOUND);
  assert_int_equal(e8s_put(env->st, 77, env->fp, &r, 1), E8S_ERR_NOTFOUND);
  /* the all-zero key is reserved for "no parent" */
  assert_int_equal(e8s_put(env->st, env->ns, env->fp, &r, 1), E8S_ERR_INVAL);
  /* bad records fail alone */
  e8s_put_rec rr[2] = {r, r};
  rr[0].n_tokens = 0;
  rr[1].key[0] = 1;
  assert_int_equal(e8s_put(env->st, env->ns, env->fp, rr, 2), E8S_ERR_INVAL);
  assert_int_equal(rr[0].result, E8S_ERR_INVAL);
  assert_int_equal(rr[1].result, E8S_OK);
  assert_string_equal(e8s_error_name(E8S_ERR_DATALOSS), "E8S_ERR_DATALOSS");
  assert_true(e8s_is_error(E8S_ERR_IO));
  assert_false(e8s_is_error(E8S_OK));
}

/* A read-only opener (another process, like e8kvctl) sees the writer's committed data. */
static void test_readonly_beside_writer(void **state) {
  tu_env *env = *state;
  uint32_t tok[2 * CT];
  tu_tokens(tok, 2 * CT, 8);
  uint8_t keys[2][32];
  assert_int_equal(tu_put_chain(env, tok, 2, CT, 80, 4096, keys), E8S_OK);
  pid_t pid = fork();
  if (pid == 0) {
    e8s_config c = env->cfg;
    e8s_store *ro = NULL, *rw = NULL;
    int bad = 0;
    c.flags = E8S_OPEN_READONLY;
    if (e8s_open(&c, &ro) != E8S_OK) _exit(10);
    c.flags = 0;
    if (e8s_open(&c, &rw) != E8S_ERR_LOCKED) bad |= 1; /* one writer at a time */
    uint8_t got[2][32];
    e8s_lookup_result res;
    if (e8s_lookup(ro, env->ns, env->fp, tok, 2 * CT, CT, 0, got, 2, &res) || res.n_chunks != 2)
      bad |= 2;
    uint8_t *buf = malloc(4096), *want = malloc(4096);
    uint64_t n;
    tu_payload(want, 4096, 81);
    if (e8s_get(ro, env->ns, keys[1], buf, 4096, &n) || memcmp(buf, want, 4096)) bad |= 4;
    e8s_put_rec r = {.tokens = tok, .n_tokens = 1, .payload = "x", .payload_bytes = 1};
    if (e8s_put(ro, env->ns, env->fp, &r, 1) != E8S_ERR_READONLY) bad |= 8;
    if (e8s_session_create(ro, env->ns, "x", env->fp, NULL, 0, 0) != E8S_ERR_READONLY) bad |= 16;
    e8s_close(ro);
    _exit(bad);
  }
  int status;
  assert_int_equal(waitpid(pid, &status, 0), pid);
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 0);
  /* the writer keeps working */
  assert_int_equal(tu_check(env, keys[0], 80, 4096), E8S_OK);
}

/* Records beyond 4 GiB in a segment (sparse file) index, read, survive restart. */
static void test_offsets_past_4gib(void **state) {
  tu_env *env = *state;
  e8s_test_segment_start(5ull << 30);
  uint32_t tok[2 * CT];
  tu_tokens(tok, 2 * CT, 9);
  uint8_t keys[2][32];
  int rc = tu_put_chain(env, tok, 2, CT, 90, 3000, keys);
  e8s_test_segment_start(0);
  assert_int_equal(rc, E8S_OK);
  e8s_chunk_info ci;
  assert_int_equal(e8s_chunk_stat(env->st, env->ns, keys[1], &ci), 0);
  assert_true(ci.offset >= (5ull << 30));
  tu_reopen(env);
  assert_int_equal(tu_check(env, keys[0], 90, 3000), E8S_OK);
  assert_int_equal(tu_check(env, keys[1], 91, 3000), E8S_OK);
  e8s_verify_report vr;
  assert_int_equal(e8s_verify(env->st, &vr, NULL, NULL), 0);
  assert_int_equal(vr.newly_quarantined, 0);
}

/* A batch larger than the io_uring queue (64 entries) goes in several waves. */
/* A store that holds little keeps the configured index reserve (16 MiB, plus a quarter
 * allocated ahead) on a large file system: the ceiling that holds a whole segment (1 GiB here)
 * comes only once a segment is that big. Raising it at every open made every test store and
 * leftover test directory take 1.25 GiB and filled the shared disk. */
static void test_small_store_small_reserve(void **state) {
  tu_env *env = *state;
  uint32_t toks[16];
  tu_tokens(toks, 16, 7);
  assert_int_equal(tu_put_chain(env, toks, 1, 16, 7, 4096, NULL), E8S_OK);
  tu_reopen(env);
  char p[400];
  snprintf(p, sizeof p, "%s/index/data.mdb", env->dir);
  struct stat sb;
  assert_int_equal(stat(p, &sb), 0);
  unsigned long long alloc = (unsigned long long)sb.st_blocks * 512;
  if (alloc > (21ull << 20))
    fail_msg("a store of one 4 KiB chunk allocates %llu bytes for its index", alloc);
}

static void test_batch_larger_than_ring(void **state) {
  tu_env *env = *state;
  enum { N = 150, T = 8 };
  uint32_t tok[N * T];
  tu_tokens(tok, N * T, 13);
  uint8_t(*keys)[32] = malloc(N * 32);
  assert_int_equal(tu_put_chain(env, tok, N, T, 1300, 777, keys), E8S_OK);
  tu_reopen(env);
  for (int i = 0; i < N; i++) assert_int_equal(tu_check(env, keys[i], 1300 + i, 777), 0);
  e8s_lookup_result res;
  uint8_t(*got)[32] = malloc(N * 32);
  assert_int_equal(e8s_lookup(env->st, env->ns, env->fp, tok, N * T, T, 0, got, N, &res), 0);
  assert_int_equal(res.n_chunks, N);
  free(keys);
  free(got);
}

/* The same key twice in one batch: the second is idempotent, a different digest conflicts. */
static void test_batch_duplicates(void **state) {
  tu_env *env = *state;
  uint32_t t[CT], t2[CT];
  tu_tokens(t, CT, 11);
  tu_tokens(t2, CT, 12);
  e8s_put_rec r[3];
  memset(r, 0, sizeof r);
  assert_int_equal(e8s_chunk_key(env->salt, env->fp, NULL, t, CT, r[0].key), 0);
  r[0].tokens = t;
  r[0].n_tokens = CT;
  r[0].payload = "abc";
  r[0].payload_bytes = 3;
  r[1] = r[0];
  r[2] = r[0];
  r[2].tokens = t2;
  assert_int_equal(e8s_put(env->st, env->ns, env->fp, r, 3), E8S_ERR_CONFLICT);
  assert_int_equal(r[0].result, E8S_OK);
  assert_int_equal(r[0].existed, 0);
  assert_int_equal(r[1].result, E8S_OK);
  assert_int_equal(r[1].existed, 1);
  assert_int_equal(r[2].result, E8S_ERR_CONFLICT);
  e8s_stats s;
  assert_int_equal(e8s_stats_get(env->st, &s), 0);
  assert_int_equal(s.chunks, 1);
  assert_int_equal(s.used_bytes, 3 + E8S_RECORD_HEADER_BYTES);
  assert_int_equal(e8s_maintain(env->st), E8S_OK);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_roundtrip, tu_setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_restart, tu_setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_lookup_prefix, tu_setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_collision_refused, tu_setup, tu_teardown),
      cmocka_unit_test(test_chunk_key_layout),
      cmocka_unit_test_setup_teardown(test_sessions, tu_setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_ns_fp, tu_setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_readonly_beside_writer, tu_setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_offsets_past_4gib, tu_setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_batch_duplicates, tu_setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_batch_larger_than_ring, tu_setup, tu_teardown),
      cmocka_unit_test_setup_teardown(test_small_store_small_reserve, tu_setup, tu_teardown),
  };
  return TU_RUN_BOTH("store_basic", tests);
}
