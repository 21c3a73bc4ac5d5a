/* store_session.c: sessions, named mutable pointers (namespace, name) to a chain of chunk keys.
 * One LMDB value per session: store_sess_hdr, then meta_bytes of user metadata, then n_chunks
 * keys of 32 bytes. Each listed chunk carries one session ref (its persistent pin); creating
 * with REPLACE, and deleting, drop the refs of the old chain. */
#include <stdlib.h>
#include <string.h>

#include "store/store_int.h"

static int sess_key(uint32_t ns_id, const char *name, uint8_t k[4 + E8S_NAME_MAX], size_t *kl) {
  size_t l = name ? strlen(name) : 0;
  if (l == 0 || l > E8S_NAME_MAX)
    return store_err(E8S_ERR_INVAL, "session name of %zu bytes (1..%d)", l, E8S_NAME_MAX);
  store_be32(k, ns_id);
  memcpy(k + 4, name, l);
  *kl = 4 + l;
  return E8S_OK;
}

/* Disk a session write of n keys may take outside the index reserve: its 32-byte keys, twice
 * (the value is copied on write; the old copy's pages are reused only after the commit), and
 * the B-tree paths its commit copies. */
#define SESS_GROW(n) ((uint64_t)(n) * 64 + STORE_IX_TXN_BYTES)

typedef struct sess_ctx {
  uint32_t ns_id;
  const char *name;
  const uint8_t *fp;
  const void *meta;
  size_t meta_bytes;
  uint32_t flags;
  const uint8_t (*keys)[32];
  size_t n_keys;
  int set_meta;
} sess_ctx;

/* Loads a session value (a copy the caller frees). */
static int load(MDB_txn *txn, e8s_store *st, const uint8_t *k, size_t kl, store_sess_hdr *h,
                uint8_t **val, size_t *vl) {
  MDB_val key = {kl, (void *)k}, v;
  int rc = mdb_get(txn, st->db_sess, &key, &v);
  if (rc == MDB_NOTFOUND) return store_err(E8S_ERR_NOTFOUND, "session not found");
  if (rc) return store_err_mdb(rc, "get session");
  if (v.mv_size < sizeof *h) return store_err(E8S_ERR_CORRUPT, "session value too short");
  memcpy(h, v.mv_data, sizeof *h);
  if (v.mv_size != sizeof *h + h->meta_bytes + h->n_chunks * 32)
    return store_err(E8S_ERR_CORRUPT, "session value of %zu bytes, header says otherwise",
                     v.mv_size);
  if (val) {
    *val = malloc(v.mv_size);
    if (!*val) return E8S_ERR_NOMEM;
    memcpy(*val, v.mv_data, v.mv_size);
    *vl = v.mv_size;
  }
  return E8S_OK;
}

static int save(MDB_txn *txn, e8s_store *st, const uint8_t *k, size_t kl,
                const store_sess_hdr *h, const void *meta, const void *keys) {
  size_t vl = sizeof *h + h->meta_bytes + h->n_chunks * 32;
  MDB_val key = {kl, (void *)k}, v = {vl, NULL};
  int rc = mdb_put(txn, st->db_sess, &key, &v, MDB_RESERVE);
  if (rc) return store_err_mdb(rc, "put session");
  uint8_t *p = v.mv_data;
  memcpy(p, h, sizeof *h);
  if (h->meta_bytes) memcpy(p + sizeof *h, meta, h->meta_bytes);
  if (h->n_chunks) memcpy(p + sizeof *h + h->meta_bytes, keys, h->n_chunks * 32);
  return E8S_OK;
}

static int unref_all(MDB_txn *txn, e8s_store *st, const uint8_t *val) {
  store_sess_hdr h;
  memcpy(&h, val, sizeof h);
  const uint8_t *keys = val + sizeof h + h.meta_bytes;
  for (uint64_t i = 0; i < h.n_chunks; i++) {
    int e = store_chunk_ref(txn, st, keys + 32 * i, -1);
    if (e) return e;
  }
  return E8S_OK;
}

static int create_fn(e8s_store *st, MDB_txn *txn, void *vc) {
  sess_ctx *c = vc;
  uint8_t k[4 + E8S_NAME_MAX];
  size_t kl;
  int e = sess_key(c->ns_id, c->name, k, &kl);
  if (e) return e;
  store_ns_val ns;
  if ((e = store_ns_load(txn, st, c->ns_id, &ns)))
    return e == E8S_ERR_NOTFOUND ? store_err(e, "namespace %u not found", c->ns_id) : e;
  MDB_val fk = {32, (void *)c->fp}, fv;
  int rc = mdb_get(txn, st->db_fp, &fk, &fv);
  if (rc == MDB_NOTFOUND) return store_err(E8S_ERR_NOTFOUND, "fingerprint not registered");
  if (rc) return store_err_mdb(rc, "get fp");
  store_sess_hdr old;
  uint8_t *oldv = NULL;
  size_t ol;
  e = load(txn, st, k, kl, &old, &oldv, &ol);
  if (e == E8S_OK) {
    if (!(c->flags & E8S_SESSION_REPLACE)) {
      free(oldv);
      return store_err(E8S_ERR_EXISTS, "session %s exists", c->name);
    }
    e = unref_all(txn, st, oldv);
    free(oldv);
    if (e) return e;
  } else if (e != E8S_ERR_NOTFOUND) return e;
  store_sess_hdr h = {.meta_bytes = c->meta_bytes};
  memcpy(h.fp, c->fp, 32);
  h.created_ns = h.updated_ns = store_now_ns();
  return save(txn, st, k, kl, &h, c->meta, NULL);
}

int e8s_session_create(e8s_store *st, uint32_t ns_id, const char *name,
                       const uint8_t fp_id[E8S_KEY_BYTES], const void *meta, size_t meta_bytes,
                       uint32_t flags) {
  if (!st || !fp_id || (!meta && meta_bytes) || meta_bytes > E8S_META_MAX)
    return store_err(E8S_ERR_INVAL, "session_create: bad argument (meta %zu bytes, max %u)",
                     meta_bytes, E8S_META_MAX);
  sess_ctx c = {.ns_id = ns_id, .name = name, .fp = fp_id, .meta = meta,
                .meta_bytes = meta_bytes, .flags = flags};
  int g = store_space_grow_ok(st, meta_bytes + SESS_GROW(0)); /* before the index grows */
  if (g) return g;
  return store_wtxn_run(st, create_fn, &c);
}

static int append_fn(e8s_store *st, MDB_txn *txn, void *vc) {
  sess_ctx *c = vc;
  uint8_t k[4 + E8S_NAME_MAX];
  size_t kl, vl;
  int e = sess_key(c->ns_id, c->name, k, &kl);
  if (e) return e;
  store_sess_hdr h;
  uint8_t *val;
  if ((e = load(txn, st, k, kl, &h, &val, &vl))) return e;
  uint8_t *keys = malloc((h.n_chunks + c->n_keys) * 32 + 1);
  if (!keys) {
    free(val);
    return E8S_ERR_NOMEM;
  }
  memcpy(keys, val + sizeof h + h.meta_bytes, h.n_chunks * 32);
  uint8_t last[32] = {0};
  if (h.n_chunks) memcpy(last, keys + (h.n_chunks - 1) * 32, 32);
  for (size_t i = 0; i < c->n_keys && !e; i++) {
    store_chunk_val v;
    e = store_chunk_get(txn, st, c->keys[i], &v);
    if (e == E8S_OK && v.ns_id != c->ns_id) e = E8S_ERR_NOTFOUND;
    if (e == E8S_ERR_NOTFOUND) {
      store_quar_val q;
      e = store_get_fixed(txn, st->db_quar, c->keys[i], 32, &q, sizeof q) == E8S_OK
              ? store_err(E8S_ERR_DATALOSS, "session_append: chunk %zu was quarantined", i)
              : store_err(E8S_ERR_NOTFOUND, "session_append: chunk %zu not stored", i);
    } else if (e == E8S_OK && memcmp(v.fp, h.fp, 32) != 0)
      e = store_err(E8S_ERR_CONFLICT, "session_append: chunk %zu has another fingerprint", i);
    else if (e == E8S_OK && memcmp(v.parent, last, 32) != 0)
      e = store_err(E8S_ERR_CONFLICT, "session_append: chunk %zu does not continue the chain",
                    i);
    if (e == E8S_OK) e = store_chunk_ref(txn, st, c->keys[i], +1);
    if (e == E8S_OK) {
      memcpy(keys + (h.n_chunks + i) * 32, c->keys[i], 32);
      memcpy(last, c->keys[i], 32);
      h.n_tokens += v.n_tokens;
    }
  }
  if (e == E8S_OK) {
    h.n_chunks += c->n_keys;
    h.updated_ns = store_now_ns();
    e = save(txn, st, k, kl, &h, val + sizeof h, keys);
  }
  free(keys);
  free(val);
  return e;
}

int e8s_session_append(e8s_store *st, uint32_t ns_id, const char *name,
                       const uint8_t (*keys)[E8S_KEY_BYTES], size_t n_keys) {
  if (!st || (!keys && n_keys)) return store_err(E8S_ERR_INVAL, "session_append: NULL");
  sess_ctx c = {.ns_id = ns_id, .name = name, .keys = keys, .n_keys = n_keys};
  int g = store_space_grow_ok(st, SESS_GROW(n_keys)); /* before the index grows */
  if (g) return g;
  return store_wtxn_run(st, append_fn, &c);
}

static int meta_fn(e8s_store *st, MDB_txn *txn, void *vc) {
  sess_ctx *c = vc;
  uint8_t k[4 + E8S_NAME_MAX];
  size_t kl, vl;
  int e = sess_key(c->ns_id, c->name, k, &kl);
  if (e) return e;
  store_sess_hdr h;
  uint8_t *val;
  if ((e = load(txn, st, k, kl, &h, &val, &vl))) return e;
  const uint8_t *keys = val + sizeof h + h.meta_bytes;
  h.meta_bytes = c->meta_bytes;
  h.updated_ns = store_now_ns();
  e = save(txn, st, k, kl, &h, c->meta, keys);
  free(val);
  return e;
}

int e8s_session_set_meta(e8s_store *st, uint32_t ns_id, const char *name, const void *meta,
                         size_t meta_bytes) {
  if (!st || (!meta && meta_bytes) || meta_bytes > E8S_META_MAX)
    return store_err(E8S_ERR_INVAL, "session_set_meta: bad argument");
  sess_ctx c = {.ns_id = ns_id, .name = name, .meta = meta, .meta_bytes = meta_bytes};
  return store_wtxn_run(st, meta_fn, &c);
}

static void to_info(e8s_session_info *info, uint32_t ns_id, const char *name, size_t nl,
                    const store_sess_hdr *h) {
  if (!info) return;
  memset(info, 0, sizeof *info);
  info->ns_id = ns_id;
  memcpy(info->name, name, nl);
  memcpy(info->fp_id, h->fp, 32);
  info->n_tokens = h->n_tokens;
  info->n_chunks = h->n_chunks;
  info->meta_bytes = h->meta_bytes;
  info->created_ns = h->created_ns;
  info->updated_ns = h->updated_ns;
}

int e8s_session_get(e8s_store *st, uint32_t ns_id, const char *name, e8s_session_info *info,
                    uint8_t (*keys)[E8S_KEY_BYTES], size_t max_keys, void *meta,
                    size_t meta_cap) {
  if (!st || (!keys && max_keys) || (!meta && meta_cap))
    return store_err(E8S_ERR_INVAL, "session_get: NULL");
  uint8_t k[4 + E8S_NAME_MAX];
  size_t kl;
  int e = sess_key(ns_id, name, k, &kl);
  if (e) return e;
  MDB_txn *txn;
  if ((e = store_rtxn_begin(st, &txn))) return e;
  MDB_val key = {kl, k}, v;
  int rc = mdb_get(txn, st->db_sess, &key, &v);
  store_sess_hdr h;
  if (rc == MDB_NOTFOUND) e = store_err(E8S_ERR_NOTFOUND, "session %s not found", name);
  else if (rc) e = store_err_mdb(rc, "get session");
  else if (v.mv_size < sizeof h) e = store_err(E8S_ERR_CORRUPT, "session value too short");
  else {
    memcpy(&h, v.mv_data, sizeof h);
    const uint8_t *p = (const uint8_t *)v.mv_data + sizeof h;
    to_info(info, ns_id, name, kl - 4, &h);
    if (meta && meta_cap) memcpy(meta, p, h.meta_bytes < meta_cap ? h.meta_bytes : meta_cap);
    uint64_t nk = h.n_chunks < max_keys ? h.n_chunks : max_keys;
    if (keys && nk) memcpy(keys, p + h.meta_bytes, nk * 32);
    if ((meta && meta_cap < h.meta_bytes) || (keys && max_keys < h.n_chunks))
      e = store_err(E8S_ERR_RANGE, "session_get: %llu keys, %llu meta bytes",
                    (unsigned long long)h.n_chunks, (unsigned long long)h.meta_bytes);
  }
  store_rtxn_end(st, txn);
  return e;
}

/* e8s_session_write on an existing session: CUT (REPLACE + append of kept + new keys) or
 * APPEND (set_meta, append), reusing the single-step functions inside one transaction. */
static int change_existing(e8s_store *st, MDB_txn *txn, const sess_ctx *c, uint64_t expect,
                           uint64_t keep, const uint8_t *fp) {
  uint8_t k[4 + E8S_NAME_MAX];
  size_t kl, vl;
  int e = sess_key(c->ns_id, c->name, k, &kl);
  if (e) return e;
  store_sess_hdr h;
  uint8_t *val;
  if ((e = load(txn, st, k, kl, &h, &val, &vl))) return e;
  if (fp && memcmp(fp, h.fp, 32) != 0)
    e = store_err(E8S_ERR_CONFLICT, "session_write: session %s has another fingerprint", c->name);
  else if (expect != h.n_chunks || keep > h.n_chunks)
    e = store_err(E8S_ERR_CONFLICT, "session_write: session %s has %llu chunks, the change "
                  "expects %llu and keeps %llu", c->name, (unsigned long long)h.n_chunks,
                  (unsigned long long)expect, (unsigned long long)keep);
  if (e) goto out;
  if (keep == h.n_chunks) { /* APPEND */
    if (c->set_meta && (e = meta_fn(st, txn, (void *)c))) goto out;
    if (c->n_keys) e = append_fn(st, txn, (void *)c);
    goto out;
  }
  size_t n = (size_t)keep + c->n_keys; /* CUT */
  uint8_t(*chain)[32] = malloc(n * 32 + 1);
  if (!chain) { e = E8S_ERR_NOMEM; goto out; }
  memcpy(chain, val + sizeof h + h.meta_bytes, (size_t)keep * 32);
  if (c->n_keys) memcpy(chain[keep], c->keys, c->n_keys * 32);
  sess_ctx r = *c;
  r.fp = h.fp;
  r.flags = E8S_SESSION_REPLACE;
  if (!c->set_meta) { r.meta = val + sizeof h; r.meta_bytes = h.meta_bytes; }
  e = create_fn(st, txn, &r);
  r.keys = (const uint8_t(*)[32])chain;
  r.n_keys = n;
  if (!e && n) e = append_fn(st, txn, &r);
  free(chain);
out:
  free(val);
  return e;
}

typedef struct write_ctx { sess_ctx c; uint64_t expect, keep; int create; } write_ctx;

static int write_fn(e8s_store *st, MDB_txn *txn, void *vc) {
  write_ctx *w = vc;
  if (!w->create) return change_existing(st, txn, &w->c, w->expect, w->keep, w->c.fp);
  int e = create_fn(st, txn, &w->c); /* flags 0: EXISTS if it exists */
  return e || !w->c.n_keys ? e : append_fn(st, txn, &w->c);
}

int e8s_session_write(e8s_store *st, uint32_t ns_id, const char *name,
                      const e8s_session_change *chg) {
  if (!st || !chg || (chg->create && !chg->fp_id) || (!chg->meta && chg->meta_bytes) ||
      chg->meta_bytes > E8S_META_MAX || (!chg->keys && chg->n_keys))
    return store_err(E8S_ERR_INVAL, "session_write: bad argument");
  write_ctx w = {.c = {.ns_id = ns_id, .name = name, .fp = chg->fp_id, .meta = chg->meta,
                       .meta_bytes = chg->meta_bytes, .keys = chg->keys, .n_keys = chg->n_keys,
                       .set_meta = chg->set_meta},
                 .expect = chg->expect_chunks, .keep = chg->keep_chunks,
                 .create = chg->create != 0};
  if (chg->create || chg->n_keys) { /* the index grows: not on a full disk */
    int g = store_space_grow_ok(st, chg->meta_bytes + SESS_GROW(chg->n_keys));
    if (g) return g;
  }
  return store_wtxn_run(st, write_fn, &w);
}

static int delete_fn(e8s_store *st, MDB_txn *txn, void *vc) {
  sess_ctx *c = vc;
  uint8_t k[4 + E8S_NAME_MAX];
  size_t kl, vl;
  int e = sess_key(c->ns_id, c->name, k, &kl);
  if (e) return e;
  store_sess_hdr h;
  uint8_t *val;
  if ((e = load(txn, st, k, kl, &h, &val, &vl))) return e;
  e = unref_all(txn, st, val);
  free(val);
  return e ? e : store_del(txn, st->db_sess, k, kl);
}

/* A delete in steps (a large session, or one whose single transaction did not fit on a full
 * disk): one transaction removes the session and keeps its chain as pending unref pieces in
 * the meta table ('U' + be64 id + be32 piece: up to DEL_PIECE keys each); then each step drops
 * the refs of the first m keys of one piece and deletes or cuts the piece, m halved down to 1
 * while a step's commit fails E8S_ERR_NOSPC. So the session goes at once (to readers as in one
 * transaction), every transaction stays small enough for the index reserve, and a crash in
 * between leaves pieces that the next open (store_session_unref_pending) finishes: a chunk's
 * refs never drop while a session lists it, and never stay for a session that is gone. */
#define DEL_PIECE 1024
#define UNREF_KEY_BYTES 13

typedef struct move_ctx { sess_ctx c; uint64_t id; } move_ctx;

static int move_fn(e8s_store *st, MDB_txn *txn, void *vc) {
  move_ctx *m = vc;
  uint8_t k[4 + E8S_NAME_MAX], uk[UNREF_KEY_BYTES];
  size_t kl, vl;
  int e = sess_key(m->c.ns_id, m->c.name, k, &kl);
  if (e) return e;
  store_sess_hdr h;
  uint8_t *val;
  if ((e = load(txn, st, k, kl, &h, &val, &vl))) return e;
  const uint8_t *keys = val + sizeof h + h.meta_bytes;
  uk[0] = 'U';
  store_be64(uk + 1, m->id);
  for (uint64_t at = 0, p = 0; at < h.n_chunks && !e; at += DEL_PIECE, p++) {
    uint64_t n = h.n_chunks - at < DEL_PIECE ? h.n_chunks - at : DEL_PIECE;
    store_be32(uk + 9, (uint32_t)p);
    e = store_put(txn, st->db_meta, uk, sizeof uk, keys + 32 * at, (size_t)n * 32);
  }
  free(val);
  return e ? e : store_del(txn, st->db_sess, k, kl);
}

typedef struct unref_ctx { size_t step; int found, drop; store_retire_list rs; } unref_ctx;

/* Drops one session ref of key; with u->drop (a full disk) a chunk left with no ref and no pin
 * is removed at once rather than entering the LRU: its index entries and record give room
 * back instead of taking more (the LRU entries of every chunk a delete unpins would grow the
 * index by about as much as the reserve holds). */
static int unref_one(MDB_txn *txn, e8s_store *st, unref_ctx *u, const uint8_t key[32]) {
  store_chunk_val v;
  if (!u->drop || store_chunk_get(txn, st, key, &v) != E8S_OK || v.refs != 1 ||
      store_pin_is_pinned(st, key, store_mono_ms()))
    return store_chunk_ref(txn, st, key, -1);
  uint64_t retire = 0;
  int e = store_chunk_remove(txn, st, key, &v, 0, 0, &retire);
  return e ? e : store_retire_add(&u->rs, retire);
}

/* Drops the refs of the first u->step keys of the first pending piece; u->found = 0 if none. */
static int unref_step_fn(e8s_store *st, MDB_txn *txn, void *vc) {
  unref_ctx *u = vc;
  MDB_cursor *cur;
  int rc = mdb_cursor_open(txn, st->db_meta, &cur);
  if (rc) return store_err_mdb(rc, "cursor meta");
  uint8_t first[1] = {'U'}, uk[UNREF_KEY_BYTES];
  MDB_val k = {1, first}, v;
  rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
  u->found = rc == 0 && k.mv_size == sizeof uk && ((uint8_t *)k.mv_data)[0] == 'U';
  if (!u->found || v.mv_size % 32) {
    mdb_cursor_close(cur);
    if (!u->found) return rc == 0 || rc == MDB_NOTFOUND ? E8S_OK : store_err_mdb(rc, "get unref");
    return store_err(E8S_ERR_CORRUPT, "pending unref piece of %zu bytes", v.mv_size);
  }
  memcpy(uk, k.mv_data, sizeof uk);
  size_t n = v.mv_size / 32, m = u->step < n ? u->step : n;
  uint8_t *rest = malloc(v.mv_size + 1);
  if (!rest) {
    mdb_cursor_close(cur);
    return E8S_ERR_NOMEM;
  }
  memcpy(rest, v.mv_data, v.mv_size); /* the value's pages may move as the txn writes */
  mdb_cursor_close(cur);
  int e = E8S_OK;
  for (size_t i = 0; i < m && !e; i++) e = unref_one(txn, st, u, rest + 32 * i);
  if (!e) e = m == n ? store_del(txn, st->db_meta, uk, sizeof uk)
                     : store_put(txn, st->db_meta, uk, sizeof uk, rest + 32 * m, (n - m) * 32);
  free(rest);
  return e;
}

int store_session_unref_pending(e8s_store *st) {
  unref_ctx u = {.step = DEL_PIECE, .found = 1};
  while (u.found) {
    u.drop = atomic_load(&st->ix_short) != 0;
    int e = store_wtxn_run_untouched(st, unref_step_fn, &u);
    if (e == E8S_OK) store_fault_crash_in_delete();
    if (e == E8S_OK) store_retire_apply(st, &u.rs); /* frees the list */
    else free(u.rs.ids);
    u.rs = (store_retire_list){0};
    if (e == E8S_ERR_NOSPC && (store_space_evict_room(st) || u.step > 1)) {
      /* too many new index pages for what is left: the chunks unpinned so far make room (they
       * are cache entries now), else smaller steps */
      if (u.step > 1) u.step /= 2;
      u.found = 1;
      continue;
    }
    if (e) return e;
  }
  return E8S_OK;
}

int e8s_session_delete(e8s_store *st, uint32_t ns_id, const char *name) {
  if (!st) return store_err(E8S_ERR_INVAL, "session_delete: NULL");
  move_ctx m = {.c = {.ns_id = ns_id, .name = name}};
  store_sess_hdr h;
  uint8_t k[4 + E8S_NAME_MAX];
  size_t kl;
  MDB_txn *txn;
  int e = sess_key(ns_id, name, k, &kl);
  if (!e && !(e = store_rtxn_begin(st, &txn))) {
    e = load(txn, st, k, kl, &h, NULL, NULL);
    store_rtxn_end(st, txn);
  }
  if (e) return e;
  if (h.n_chunks <= DEL_PIECE) { /* one transaction, unless it does not fit on a full disk */
    e = store_wtxn_run_untouched(st, delete_fn, &m.c);
    if (e != E8S_ERR_NOSPC) return e;
  }
  m.id = atomic_fetch_add(&st->tick, 1) + 1;
  e = store_wtxn_run_untouched(st, move_fn, &m);
  if (e == E8S_ERR_NOSPC && store_space_evict_room(st)) e = store_wtxn_run_untouched(st, move_fn, &m);
  if (!e) store_fault_crash_in_delete();
  return e ? e : store_session_unref_pending(st);
}

int e8s_session_list(e8s_store *st, uint32_t ns_id, const e8s_session_filter *filter,
                     const char *after, e8s_session_info *out, size_t max, size_t *n_out,
                     int *more) {
  if (!st || !n_out || (!out && max)) return store_err(E8S_ERR_INVAL, "session_list: NULL");
  *n_out = 0;
  if (more) *more = 0;
  const char *pre = filter && filter->name_prefix ? filter->name_prefix : "";
  size_t pl = strlen(pre), al = after ? strlen(after) : 0;
  if (pl > E8S_NAME_MAX || al > E8S_NAME_MAX) return store_err(E8S_ERR_INVAL, "name too long");
  uint8_t start[4 + E8S_NAME_MAX];
  store_be32(start, ns_id);
  /* start at max(after, prefix) */
  const char *from = al && strcmp(after, pre) > 0 ? after : pre;
  size_t fl = strlen(from);
  memcpy(start + 4, from, fl);
  MDB_txn *txn;
  int e = store_rtxn_begin(st, &txn);
  if (e) return e;
  MDB_cursor *c;
  int rc = mdb_cursor_open(txn, st->db_sess, &c);
  if (rc) {
    store_rtxn_end(st, txn);
    return store_err_mdb(rc, "cursor");
  }
  MDB_val k = {4 + fl, start}, v;
  for (rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); rc == 0;
       rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
    const uint8_t *kb = k.mv_data;
    if (k.mv_size < 4 || memcmp(kb, start, 4) != 0) break;
    const char *nm = (const char *)kb + 4;
    size_t nl = k.mv_size - 4;
    if (nl < pl || memcmp(nm, pre, pl) != 0) break; /* past the prefix range */
    if (al && nl == al && memcmp(nm, after, al) == 0) continue;
    store_sess_hdr h;
    if (v.mv_size < sizeof h) continue;
    memcpy(&h, v.mv_data, sizeof h);
    if (filter && filter->fp_id && memcmp(h.fp, filter->fp_id, 32) != 0) continue;
    if (filter && h.updated_ns <= filter->updated_after_ns) continue;
    if (*n_out == max) {
      if (more) *more = 1;
      break;
    }
    to_info(&out[(*n_out)++], ns_id, nm, nl, &h);
  }
  mdb_cursor_close(c);
  store_rtxn_end(st, txn);
  return rc == 0 || rc == MDB_NOTFOUND ? E8S_OK : store_err_mdb(rc, "session_list");
}
