/* store_evict.c: chunk records and their accounting, session refs, LRU eviction.
 *
 * Every change of a chunk's existence goes through store_chunk_insert / store_chunk_remove, so
 * the counters that budgets use (meta "used", namespace used/chunks, segment live bytes) are
 * updated in the same LMDB transaction as the chunk itself and can never drift.
 * Eviction walks the LRU database (oldest tick first; it holds only chunks no session pins),
 * skips chunks with an in-memory pin (open reader, unexpired lease), and removes the rest until
 * enough bytes are free. A segment whose live bytes reach 0 is dropped from the index and its
 * file retired after the commit (unlinked when no reader uses it). */
#include <stdlib.h>
#include <string.h>

#include "store/store_int.h"

int store_chunk_get(MDB_txn *txn, e8s_store *st, const uint8_t key[32], store_chunk_val *v) {
  return store_get_grown(txn, st->db_chunks, key, 32, v, sizeof *v, STORE_CHUNK_VAL_V1);
}

int store_ns_load(MDB_txn *txn, e8s_store *st, uint32_t ns_id, store_ns_val *v) {
  uint8_t k[4];
  store_be32(k, ns_id);
  return store_get_grown(txn, st->db_ns, k, 4, v, sizeof *v, STORE_NS_VAL_V1);
}

int store_ns_store(MDB_txn *txn, e8s_store *st, uint32_t ns_id, const store_ns_val *v) {
  uint8_t k[4];
  store_be32(k, ns_id);
  return store_put(txn, st->db_ns, k, 4, v, sizeof *v);
}

static int lru_keys(const store_chunk_val *v, const uint8_t key[32], uint8_t k[40],
                    uint8_t nk[44]) {
  store_be64(k, v->tick);
  memcpy(k + 8, key, 32);
  store_be32(nk, v->ns_id);
  store_be64(nk + 4, v->tick);
  memcpy(nk + 12, key, 32);
  return 0;
}

static int lru_add(MDB_txn *txn, e8s_store *st, const uint8_t key[32], const store_chunk_val *v) {
  uint8_t k[40], nk[44], ns[4];
  lru_keys(v, key, k, nk);
  store_be32(ns, v->ns_id);
  int e = store_put(txn, st->db_lru, k, 40, ns, 4);
  return e ? e : store_put(txn, st->db_nslru, nk, 44, "", 0);
}

static int lru_del(MDB_txn *txn, e8s_store *st, const uint8_t key[32], const store_chunk_val *v) {
  uint8_t k[40], nk[44];
  lru_keys(v, key, k, nk);
  int e = store_del(txn, st->db_lru, k, 40);
  return e ? e : store_del(txn, st->db_nslru, nk, 44);
}

/* Adds (sign > 0) or removes a record's bytes to segment seg_id's live bytes; *seg_empty = 1
 * when the segment has no live byte left. */
static int seg_account(MDB_txn *txn, e8s_store *st, uint64_t seg_id, uint64_t off,
                       uint64_t bytes, int sign, int *seg_empty) {
  uint8_t sk[8];
  store_be64(sk, seg_id);
  store_seg_val sv = {0};
  int e = store_get_fixed(txn, st->db_segs, sk, 8, &sv, sizeof sv);
  if (e == E8S_ERR_NOTFOUND) {
    if (sign < 0) return E8S_OK;
    sv.created_ns = store_now_ns();
    sv.end = STORE_SEG_HDR_BYTES;
  } else if (e) return e;
  if (sign > 0) {
    sv.live += bytes;
    if (off + bytes > sv.end) sv.end = off + bytes;
  } else sv.live = sv.live >= bytes ? sv.live - bytes : 0;
  *seg_empty = sv.live == 0;
  return store_put(txn, st->db_segs, sk, 8, &sv, sizeof sv);
}

/* Adds or removes a record's bytes and chunk count to the store, namespace and segment, and its
 * tokens and raw bytes to the namespace. */
static int account(MDB_txn *txn, e8s_store *st, const store_chunk_val *v, int sign,
                   int *seg_empty) {
  uint64_t bytes = store_rec_bytes(v->payload_bytes), used;
  int e = store_meta_get_u64(txn, st, "used", &used);
  if (e) return e;
  used = sign > 0 ? used + bytes : (used >= bytes ? used - bytes : 0);
  if ((e = store_meta_put_u64(txn, st, "used", used))) return e;
  store_ns_val ns;
  e = store_ns_load(txn, st, v->ns_id, &ns);
  if (e == E8S_OK) {
    ns.used = sign > 0 ? ns.used + bytes : (ns.used >= bytes ? ns.used - bytes : 0);
    ns.chunks = sign > 0 ? ns.chunks + 1 : (ns.chunks ? ns.chunks - 1 : 0);
    ns.tokens = sign > 0 ? ns.tokens + v->n_tokens
                         : (ns.tokens >= v->n_tokens ? ns.tokens - v->n_tokens : 0);
    ns.raw_bytes = sign > 0 ? ns.raw_bytes + v->raw_bytes
                            : (ns.raw_bytes >= v->raw_bytes ? ns.raw_bytes - v->raw_bytes : 0);
    if ((e = store_ns_store(txn, st, v->ns_id, &ns))) return e;
  } else if (e != E8S_ERR_NOTFOUND) return e;
  return seg_account(txn, st, v->seg_id, v->offset, bytes, sign, seg_empty);
}

int store_seg_cover(MDB_txn *txn, e8s_store *st, uint64_t seg_id, uint64_t off, uint64_t bytes) {
  uint8_t sk[8];
  store_be64(sk, seg_id);
  store_seg_val sv = {0};
  int e = store_get_fixed(txn, st->db_segs, sk, 8, &sv, sizeof sv);
  if (e == E8S_ERR_NOTFOUND) {
    sv.created_ns = store_now_ns();
    sv.end = STORE_SEG_HDR_BYTES;
  } else if (e) return e;
  if (off + bytes <= sv.end) return E8S_OK;
  sv.end = off + bytes;
  return store_put(txn, st->db_segs, sk, 8, &sv, sizeof sv);
}

/* meta key of segment id's drop marker: 'D' + be64 id */
static void drop_key(uint8_t k[9], uint64_t id) {
  k[0] = 'D';
  store_be64(k + 1, id);
}

int store_seg_index_drop(MDB_txn *txn, e8s_store *st, uint64_t seg_id) {
  uint8_t sk[8], dk[9];
  uint64_t zero = 0;
  store_be64(sk, seg_id);
  drop_key(dk, seg_id);
  int e = store_del(txn, st->db_segs, sk, 8);
  return e ? e : store_put(txn, st->db_meta, dk, 9, &zero, sizeof zero);
}

int store_seg_dropped(MDB_txn *txn, e8s_store *st, uint64_t seg_id) {
  uint8_t dk[9];
  drop_key(dk, seg_id);
  MDB_val k = {9, dk}, v;
  return mdb_get(txn, st->db_meta, &k, &v) == 0;
}

int store_seg_forget_drop(MDB_txn *txn, e8s_store *st, uint64_t seg_id) {
  uint8_t dk[9];
  drop_key(dk, seg_id);
  return store_del(txn, st->db_meta, dk, 9);
}

/* Drops segment seg_id from the index if it is empty, not being appended and holds no record
 * of the write pipeline waiting for its index stage. */
static int seg_maybe_drop(MDB_txn *txn, e8s_store *st, uint64_t seg_id, int empty,
                          uint64_t *retire_out) {
  *retire_out = 0;
  if (!empty || store_seg_busy(st, seg_id)) return E8S_OK;
  *retire_out = seg_id;
  return store_seg_index_drop(txn, st, seg_id);
}

int store_chunk_relocate(MDB_txn *txn, e8s_store *st, const uint8_t key[32],
                         store_chunk_val *v, uint64_t seg_id, uint64_t off,
                         uint64_t *retire_out) {
  uint64_t bytes = store_rec_bytes(v->payload_bytes), old = v->seg_id;
  atomic_fetch_add(&st->dead_gen, 1); /* the old place is dead: a punch pass has work */
  int empty = 0, e = seg_account(txn, st, seg_id, off, bytes, +1, &empty);
  if (!e) e = seg_account(txn, st, old, v->offset, bytes, -1, &empty);
  if (!e) e = seg_maybe_drop(txn, st, old, empty, retire_out);
  v->seg_id = seg_id;
  v->offset = off;
  return e ? e : store_put(txn, st->db_chunks, key, 32, v, sizeof *v);
}

int store_chunk_insert(MDB_txn *txn, e8s_store *st, const uint8_t key[32],
                       const store_chunk_val *v) {
  int empty, e = store_put(txn, st->db_chunks, key, 32, v, sizeof *v);
  if (!e && v->refs == 0) e = lru_add(txn, st, key, v);
  if (!e) e = account(txn, st, v, +1, &empty);
  if (!e) e = store_del(txn, st->db_quar, key, 32); /* a re-put repairs a quarantined key */
  return e;
}

int store_chunk_remove(MDB_txn *txn, e8s_store *st, const uint8_t key[32],
                       const store_chunk_val *v, int quarantine, uint32_t found_crc,
                       uint64_t *retire_out) {
  atomic_fetch_add(&st->dead_gen, 1); /* its record is dead: a punch pass has work */
  int empty = 0, e = store_del(txn, st->db_chunks, key, 32);
  if (!e && v->refs == 0) e = lru_del(txn, st, key, v);
  if (!e) e = account(txn, st, v, -1, &empty);
  if (!e && quarantine) {
    store_quar_val q = {.rec = *v, .found_crc = found_crc, .when_ns = store_now_ns()};
    e = store_put(txn, st->db_quar, key, 32, &q, sizeof q);
  }
  *retire_out = 0;
  return e ? e : seg_maybe_drop(txn, st, v->seg_id, empty, retire_out);
}

int store_chunk_ref(MDB_txn *txn, e8s_store *st, const uint8_t key[32], int delta) {
  store_chunk_val v;
  int e = store_chunk_get(txn, st, key, &v);
  if (e == E8S_ERR_NOTFOUND && delta < 0) { /* quarantined or gone: keep its record's count */
    store_quar_val q;
    if (store_get_fixed(txn, st->db_quar, key, 32, &q, sizeof q) == E8S_OK && q.rec.refs) {
      q.rec.refs--;
      return store_put(txn, st->db_quar, key, 32, &q, sizeof q);
    }
    return E8S_OK;
  }
  if (e) return e;
  if (delta > 0) {
    if (v.refs == 0 && (e = lru_del(txn, st, key, &v))) return e;
    v.refs++;
  } else {
    if (v.refs == 0) return E8S_OK;
    if (--v.refs == 0) {
      v.tick = atomic_fetch_add(&st->tick, 1) + 1;
      if ((e = lru_add(txn, st, key, &v))) return e;
    }
  }
  return store_put(txn, st->db_chunks, key, 32, &v, sizeof v);
}

int store_retire_add(store_retire_list *rs, uint64_t id) {
  if (!id) return E8S_OK;
  if (rs->n == rs->cap) {
    size_t cap = rs->cap ? rs->cap * 2 : 8;
    uint64_t *p = realloc(rs->ids, cap * sizeof *p);
    if (!p) return E8S_ERR_NOMEM;
    rs->ids = p;
    rs->cap = cap;
  }
  rs->ids[rs->n++] = id;
  return E8S_OK;
}

void store_retire_apply(e8s_store *st, store_retire_list *rs) {
  for (size_t i = 0; i < rs->n; i++) store_seg_retire(st, rs->ids[i]);
  free(rs->ids);
  memset(rs, 0, sizeof *rs);
}

int store_evict(MDB_txn *txn, e8s_store *st, uint32_t ns_id, uint64_t need, uint64_t *freed,
                store_retire_list *rs) {
  *freed = 0;
  uint64_t now = store_mono_ms();
  MDB_cursor *c;
  int rc = mdb_cursor_open(txn, ns_id ? st->db_nslru : st->db_lru, &c);
  if (rc) return store_err_mdb(rc, "cursor");
  MDB_val k, v;
  uint8_t start[4];
  int op = MDB_FIRST;
  if (ns_id) {
    store_be32(start, ns_id);
    k.mv_size = 4;
    k.mv_data = start;
    op = MDB_SET_RANGE;
  }
  int e = E8S_OK;
  while (*freed < need) {
    rc = mdb_cursor_get(c, &k, &v, op);
    op = MDB_NEXT;
    if (rc == MDB_NOTFOUND) break;
    if (rc) {
      e = store_err_mdb(rc, "cursor_get");
      break;
    }
    if (ns_id && (k.mv_size != 44 || memcmp(k.mv_data, start, 4) != 0)) break;
    uint8_t key[32];
    memcpy(key, (uint8_t *)k.mv_data + (ns_id ? 12 : 8), 32);
    if (store_pin_is_pinned(st, key, now)) continue;
    store_chunk_val cv;
    if ((e = store_chunk_get(txn, st, key, &cv))) break;
    uint64_t retire;
    /* removal deletes the entry under the cursor; LMDB cursors stay valid across their own
     * txn's deletes, and MDB_NEXT after a delete of the current item would skip one, so
     * re-position by key instead */
    if ((e = store_chunk_remove(txn, st, key, &cv, 0, 0, &retire))) break;
    if ((e = store_retire_add(rs, retire))) break;
    *freed += store_rec_bytes(cv.payload_bytes);
    atomic_fetch_add(&st->c_evictions, 1);
    op = MDB_SET_RANGE;
    if (ns_id) {
      k.mv_size = 4;
      k.mv_data = start;
    } else {
      k.mv_size = 0;
      op = MDB_FIRST;
    }
  }
  mdb_cursor_close(c);
  return e;
}
