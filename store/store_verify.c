/* store_verify.c: quarantine of records that fail their CRC, the full verify scan, and the
 * quarantine list. A quarantined chunk leaves the chunks database (so lookups stop at it and
 * budgets no longer count it) and enters "quar" with where it was and the CRC found; a later
 * put of the same key stores it afresh and clears the entry. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "store/store_int.h"

typedef struct quar_ctx {
  const uint8_t *key;
  const store_chunk_val *rec;
  uint32_t found_crc;
  store_retire_list retire;
} quar_ctx;

static int quar_fn(e8s_store *st, MDB_txn *txn, void *vc) {
  quar_ctx *c = vc;
  store_chunk_val v;
  int e = store_chunk_get(txn, st, c->key, &v);
  if (e == E8S_ERR_NOTFOUND) return E8S_OK;
  if (e) return e;
  if (v.seg_id != c->rec->seg_id || v.offset != c->rec->offset) return E8S_OK; /* moved */
  uint64_t retire;
  c->retire.n = 0;
  e = store_chunk_remove(txn, st, c->key, &v, 1, c->found_crc, &retire);
  return e ? e : store_retire_add(&c->retire, retire);
}

void store_quarantine(e8s_store *st, const uint8_t key[32], const store_chunk_val *rec,
                      uint32_t found_crc) {
  if (st->readonly) return;
  quar_ctx c = {.key = key, .rec = rec, .found_crc = found_crc};
  if (store_wtxn_run(st, quar_fn, &c) == E8S_OK) store_retire_apply(st, &c.retire);
  else free(c.retire.ids);
}

int store_index_points_at(e8s_store *st, const uint8_t key[32], const store_chunk_val *rec) {
  MDB_txn *txn;
  if (store_rtxn_begin(st, &txn)) return 0;
  store_chunk_val v;
  int same = store_chunk_get(txn, st, key, &v) == E8S_OK && v.seg_id == rec->seg_id &&
             v.offset == rec->offset;
  store_rtxn_end(st, txn);
  return same;
}

int store_seg_lost(e8s_store *st, const uint8_t key[32], const store_chunk_val *rec) {
  if (!store_index_points_at(st, key, rec)) return 0;
  char *p = store_seg_path(st, rec->seg_id);
  struct stat sb;
  int missing = p && stat(p, &sb) != 0 && errno == ENOENT;
  free(p);
  return missing && store_index_points_at(st, key, rec);
}

int store_scan_page(e8s_store *st, const uint8_t *after, scan_item *out, size_t max,
                     size_t *n) {
  *n = 0;
  MDB_txn *txn;
  int e = store_rtxn_begin(st, &txn);
  if (e) return e;
  MDB_cursor *c;
  int rc = mdb_cursor_open(txn, st->db_chunks, &c);
  if (rc) {
    store_rtxn_end(st, txn);
    return store_err_mdb(rc, "cursor");
  }
  MDB_val k = {32, (void *)after}, v;
  rc = mdb_cursor_get(c, &k, &v, after ? MDB_SET_RANGE : MDB_FIRST);
  if (rc == 0 && after && memcmp(k.mv_data, after, 32) == 0)
    rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
  while (rc == 0 && *n < max) {
    if (k.mv_size == 32 &&
        (v.mv_size == sizeof(store_chunk_val) || v.mv_size == STORE_CHUNK_VAL_V1)) {
      memcpy(out[*n].key, k.mv_data, 32);
      memset(&out[*n].rec, 0, sizeof(store_chunk_val));
      memcpy(&out[*n].rec, v.mv_data, v.mv_size);
      (*n)++;
    }
    rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
  }
  mdb_cursor_close(c);
  store_rtxn_end(st, txn);
  return rc == 0 || rc == MDB_NOTFOUND ? E8S_OK : store_err_mdb(rc, "cursor_get");
}

int e8s_verify(e8s_store *st, e8s_verify_report *rep, e8s_progress_fn fn, void *ctx) {
  if (!st || !rep) return store_err(E8S_ERR_INVAL, "verify: NULL argument");
  memset(rep, 0, sizeof *rep);
  e8s_stats s0;
  int e = e8s_stats_get(st, &s0);
  if (e) return e;
  enum { PAGE = 256 };
  scan_item *page = malloc(PAGE * sizeof *page);
  if (!page) return E8S_ERR_NOMEM;
  void *buf = NULL;
  uint64_t cap = 0;
  uint8_t after[32];
  int have_after = 0;
  for (;;) {
    size_t n;
    if ((e = store_scan_page(st, have_after ? after : NULL, page, PAGE, &n)) || n == 0) break;
    for (size_t i = 0; i < n && !e; i++) {
      scan_item *it = &page[i];
      if (it->rec.payload_bytes > cap) {
        void *nb = realloc(buf, it->rec.payload_bytes);
        if (!nb) {
          e = E8S_ERR_NOMEM;
          break;
        }
        buf = nb;
        cap = it->rec.payload_bytes;
      }
      uint32_t found;
      int r = store_seg_read_payload(st, &it->rec, it->key, buf, &found);
      rep->chunks_checked++;
      rep->bytes_checked += it->rec.payload_bytes;
      if (r == E8S_ERR_NOTFOUND && store_seg_lost(st, it->key, &it->rec)) {
        r = E8S_ERR_DATALOSS; /* its segment file is missing: "unreadable" (found = stored) */
        found = it->rec.crc;
      }
      if (r == E8S_ERR_DATALOSS && !store_index_points_at(st, it->key, &it->rec))
        r = E8S_ERR_NOTFOUND; /* evicted or moved since the scan (its blocks may be punched) */
      if (r == E8S_ERR_DATALOSS) {
        rep->newly_quarantined++;
        atomic_fetch_add(&st->c_crc_failures, 1);
        store_quarantine(st, it->key, &it->rec, found);
      } else if (r != E8S_OK && r != E8S_ERR_NOTFOUND) e = r; /* NOTFOUND: compacted away */
      if (fn && fn(ctx, rep->chunks_checked, s0.chunks)) goto done;
    }
    memcpy(after, page[n - 1].key, 32);
    have_after = 1;
  }
done:
  free(page);
  free(buf);
  e8s_stats s1;
  if (!e && !(e = e8s_stats_get(st, &s1))) rep->quarantined = s1.quarantined;
  return e;
}

int e8s_quarantine_list(e8s_store *st, const uint8_t *after, e8s_quarantine_entry *out,
                        size_t max, size_t *n_out, int *more) {
  if (!st || !n_out || (!out && max)) return store_err(E8S_ERR_INVAL, "quarantine_list: NULL");
  *n_out = 0;
  if (more) *more = 0;
  MDB_txn *txn;
  int e = store_rtxn_begin(st, &txn);
  if (e) return e;
  MDB_cursor *c;
  int rc = mdb_cursor_open(txn, st->db_quar, &c);
  if (rc) {
    store_rtxn_end(st, txn);
    return store_err_mdb(rc, "cursor");
  }
  MDB_val k = {32, (void *)after}, v;
  rc = mdb_cursor_get(c, &k, &v, after ? MDB_SET_RANGE : MDB_FIRST);
  if (rc == 0 && after && memcmp(k.mv_data, after, 32) == 0)
    rc = mdb_cursor_get(c, &k, &v, MDB_NEXT);
  for (; rc == 0; rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
    if (*n_out == max) {
      if (more) *more = 1;
      break;
    }
    store_quar_val q;
    if (k.mv_size != 32 || v.mv_size != sizeof q) continue;
    memcpy(&q, v.mv_data, sizeof q);
    e8s_quarantine_entry *o = &out[(*n_out)++];
    memcpy(o->key, k.mv_data, 32);
    o->ns_id = q.rec.ns_id;
    o->segment_id = q.rec.seg_id;
    o->offset = q.rec.offset;
    o->payload_bytes = q.rec.payload_bytes;
    o->stored_crc = q.rec.crc;
    o->found_crc = q.found_crc;
    o->when_ns = q.when_ns;
  }
  mdb_cursor_close(c);
  store_rtxn_end(st, txn);
  return rc == 0 || rc == MDB_NOTFOUND ? E8S_OK : store_err_mdb(rc, "cursor_get");
}
