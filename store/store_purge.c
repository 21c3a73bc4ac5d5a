/* store_purge.c: e8s_purge_unlisted (see e8store.h): deletes a namespace's chunks that no
 * session lists. Those are exactly its entries in the per-namespace LRU (db "nslru": a chunk
 * enters it when its session refs drop to 0 and leaves it when a session lists it again), so
 * the scan walks that range in batches, each in its own write transaction. */
#include <stdlib.h>
#include <string.h>

#include "store/store_int.h"

#define PURGE_BATCH 1024 /* chunks looked at per write transaction */
#define NSLRU_KEY 44     /* ns (be32) || tick (be64) || key[32] */

typedef struct purge_ctx {
  uint32_t ns_id;
  uint8_t from[NSLRU_KEY]; /* where this batch starts: the ns prefix, or the last key seen */
  size_t from_len;
  /* filled by one attempt of purge_fn (reset first: the run may be retried on map full) */
  uint8_t next[NSLRU_KEY];
  int done;
  uint64_t purged, bytes;
  uint8_t (*held)[32];
  size_t n_held;
  store_retire_list rs;
} purge_ctx;

static int purge_one(e8s_store *st, MDB_txn *txn, purge_ctx *c, const uint8_t key[32]) {
  store_chunk_val v;
  int e = store_chunk_get(txn, st, key, &v);
  if (e == E8S_ERR_NOTFOUND) return E8S_OK;
  if (e) return e;
  if (v.ns_id != c->ns_id || v.refs) return E8S_OK; /* not this one's to delete */
  uint64_t retire;
  if ((e = store_chunk_remove(txn, st, key, &v, 0, 0, &retire))) return e;
  if ((e = store_retire_add(&c->rs, retire))) return e;
  c->purged++;
  c->bytes += store_rec_bytes(v.payload_bytes);
  return E8S_OK;
}

static int purge_fn(e8s_store *st, MDB_txn *txn, void *vc) {
  purge_ctx *c = vc;
  c->done = 0;
  c->purged = c->bytes = 0;
  c->n_held = 0;
  c->rs.n = 0;
  memcpy(c->next, c->from, c->from_len);
  MDB_cursor *cur;
  int rc = mdb_cursor_open(txn, st->db_nslru, &cur);
  if (rc) return store_err_mdb(rc, "cursor");
  uint8_t at[NSLRU_KEY];
  memcpy(at, c->from, c->from_len);
  size_t at_len = c->from_len; /* 44: `at` is a key already seen, step past it if still there */
  uint64_t now = store_mono_ms();
  int e = E8S_OK;
  for (size_t seen = 0; seen < PURGE_BATCH; seen++) {
    MDB_val k = {at_len, at}, v;
    rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
    if (rc == 0 && at_len == NSLRU_KEY && k.mv_size == NSLRU_KEY &&
        memcmp(k.mv_data, at, NSLRU_KEY) == 0)
      rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT);
    if (rc == MDB_NOTFOUND ||
        (rc == 0 && (k.mv_size != NSLRU_KEY || memcmp(k.mv_data, c->from, 4) != 0))) {
      c->done = 1;
      break;
    }
    if (rc) {
      e = store_err_mdb(rc, "cursor_get");
      break;
    }
    memcpy(at, k.mv_data, NSLRU_KEY); /* copy first: a removal deletes the entry under it */
    at_len = NSLRU_KEY;
    memcpy(c->next, at, NSLRU_KEY);
    if (store_pin_is_pinned(st, at + 12, now)) memcpy(c->held[c->n_held++], at + 12, 32);
    else if ((e = purge_one(st, txn, c, at + 12))) break;
  }
  mdb_cursor_close(cur);
  return e;
}

int e8s_purge_unlisted(e8s_store *st, uint32_t ns_id, e8s_key_fn held, void *ctx,
                       e8s_purge_report *rep) {
  if (rep) memset(rep, 0, sizeof *rep);
  if (!st || !ns_id) return store_err(E8S_ERR_INVAL, "purge_unlisted: NULL store or ns 0");
  purge_ctx c = {.ns_id = ns_id, .from_len = 4};
  store_be32(c.from, ns_id);
  if (!(c.held = malloc(PURGE_BATCH * sizeof *c.held)))
    return store_err(E8S_ERR_NOMEM, "purge_unlisted: no memory");
  int e = E8S_OK;
  while (e == E8S_OK) {
    e = store_wtxn_run(st, purge_fn, &c);
    if (e != E8S_OK) break;
    store_retire_apply(st, &c.rs); /* frees and resets the list */
    if (rep) {
      rep->chunks_purged += c.purged;
      rep->bytes_purged += c.bytes;
      rep->chunks_held += c.n_held;
    }
    for (size_t i = 0; held && i < c.n_held; i++) held(ctx, c.held[i]);
    if (c.done) break;
    memcpy(c.from, c.next, NSLRU_KEY);
    c.from_len = NSLRU_KEY;
  }
  free(c.rs.ids);
  free(c.held);
  return e;
}

/* ---------------------------------------------------------------- e8s_chunks_delete */
typedef struct mdel_ctx {
  const uint32_t *ns;
  const uint8_t (*keys)[32];
  size_t n;
  int *res;
  uint32_t *refs;
  store_retire_list rs;
} mdel_ctx;

static int mdel_fn(e8s_store *st, MDB_txn *txn, void *vc) {
  mdel_ctx *c = vc;
  c->rs.n = 0;
  uint64_t now = store_mono_ms();
  for (size_t i = 0; i < c->n; i++) {
    int e = store_chunk_delete_unpinned(txn, st, c->ns[i], c->keys[i], now,
                                        c->refs ? &c->refs[i] : NULL, &c->rs);
    c->res[i] = e;
    if (e && e != E8S_ERR_NOTFOUND && e != E8S_ERR_BUSY) return e;
  }
  return E8S_OK;
}

int e8s_chunks_delete(e8s_store *st, const uint32_t *ns_ids, const uint8_t (*keys)[E8S_KEY_BYTES],
                      size_t n, int *results, uint32_t *session_refs) {
  if (!st || (n && (!ns_ids || !keys || !results)))
    return store_err(E8S_ERR_INVAL, "chunks_delete: NULL argument");
  int e = E8S_OK;
  mdel_ctx c = {0};
  for (size_t at = 0; at < n && e == E8S_OK; at += PURGE_BATCH) {
    c.ns = ns_ids + at;
    c.keys = keys + at;
    c.n = n - at < PURGE_BATCH ? n - at : PURGE_BATCH;
    c.res = results + at;
    c.refs = session_refs ? session_refs + at : NULL;
    e = store_wtxn_run(st, mdel_fn, &c);
    if (e == E8S_OK) store_retire_apply(st, &c.rs); /* frees and resets the list */
    else
      for (size_t i = at; i < n; i++) results[i] = e; /* this batch was rolled back */
  }
  free(c.rs.ids);
  return e;
}
