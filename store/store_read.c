/* store_read.c: the read side: lookup of the longest stored prefix, chunk stat/open/read/close,
 * e8s_get, chunk delete. Readers never take the writer mutex (except to quarantine a record
 * that failed its CRC, after their read transaction ended). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "store/store_int.h"

struct e8s_chunk {
  e8s_store *st;
  uint8_t key[32];
  store_chunk_val rec;
  store_seg *seg;      /* held from open to close: compaction cannot remove the file */
};

static void fill_info(e8s_chunk_info *info, const uint8_t key[32], const store_chunk_val *v) {
  if (!info) return;
  memset(info, 0, sizeof *info);
  memcpy(info->key, key, 32);
  memcpy(info->parent, v->parent, 32);
  memcpy(info->fp_id, v->fp, 32);
  memcpy(info->token_digest, v->digest, 32);
  info->ns_id = v->ns_id;
  info->n_tokens = v->n_tokens;
  info->payload_bytes = v->payload_bytes;
  info->crc32c = v->crc;
  info->session_refs = v->refs;
  info->segment_id = v->seg_id;
  info->offset = v->offset;
  info->created_ns = v->created_ns;
  info->last_access = v->tick;
}

/* Chunk record of (ns_id, key) in txn: OK, NOTFOUND, DATALOSS (quarantined). */
static int find(MDB_txn *txn, e8s_store *st, uint32_t ns_id, const uint8_t key[32],
                store_chunk_val *v) {
  int e = store_chunk_get(txn, st, key, v);
  if (e == E8S_OK && v->ns_id != ns_id) e = E8S_ERR_NOTFOUND;
  if (e != E8S_ERR_NOTFOUND) return e;
  store_quar_val q;
  if (store_get_fixed(txn, st->db_quar, key, 32, &q, sizeof q) == E8S_OK && q.rec.ns_id == ns_id) {
    time_t t = (time_t)(q.when_ns / 1000000000ull);
    struct tm tm;
    char when[32] = "?";
    if (gmtime_r(&t, &tm)) strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return store_err(E8S_ERR_DATALOSS, "chunk was quarantined at %s (segment %llu offset %llu: "
                     "%s)", when, (unsigned long long)q.rec.seg_id,
                     (unsigned long long)q.rec.offset,
                     q.found_crc != q.rec.crc ? "CRC mismatch" : "unreadable");
  }
  return store_err(E8S_ERR_NOTFOUND, "chunk not found");
}

int e8s_chunk_stat(e8s_store *st, uint32_t ns_id, const uint8_t key[E8S_KEY_BYTES],
                   e8s_chunk_info *info) {
  if (!st || !key) return store_err(E8S_ERR_INVAL, "chunk_stat: NULL argument");
  MDB_txn *txn;
  int e = store_rtxn_begin(st, &txn);
  if (e) return e;
  store_chunk_val v;
  e = find(txn, st, ns_id, key, &v);
  store_rtxn_end(st, txn);
  if (e == E8S_OK) fill_info(info, key, &v);
  return e;
}

/* With ch's segment held: the index must still point at ch->rec. A reader whose transaction
 * began before a removal or a compaction's move would otherwise read a range that may have
 * been punched since (store_punch.c: never while the segment is held). Asked only when a
 * segment was punched between the look-up and the acquire (st->n_punches moved, read before
 * the look-up; the punch bumps it under seg_mu, which the acquire takes): a punch before the
 * look-up gave back only ranges dead in an older snapshot, dead in the reader's too; one after
 * the acquire skips the held segment. E8S_OK with ch->seg
 * set: it does; E8S_OK with ch->seg released and NULL: it moved, look again; else the error
 * (NOTFOUND: evicted meanwhile; DATALOSS: quarantined), segment released. */
static int still_there(e8s_store *st, uint32_t ns_id, e8s_chunk *ch) {
  MDB_txn *txn;
  store_chunk_val v;
  int e = store_rtxn_begin(st, &txn);
  if (e == E8S_OK) {
    e = find(txn, st, ns_id, ch->key, &v);
    store_rtxn_end(st, txn);
  }
  if (e == E8S_OK && v.seg_id == ch->rec.seg_id && v.offset == ch->rec.offset) return E8S_OK;
  store_seg_release(st, ch->seg);
  ch->seg = NULL;
  return e;
}

int e8s_chunk_open(e8s_store *st, uint32_t ns_id, const uint8_t key[E8S_KEY_BYTES],
                   e8s_chunk **out, e8s_chunk_info *info) {
  if (!st || !key || !out) return store_err(E8S_ERR_INVAL, "chunk_open: NULL argument");
  *out = NULL;
  e8s_chunk *ch = calloc(1, sizeof *ch);
  if (!ch) return E8S_ERR_NOMEM;
  ch->st = st;
  memcpy(ch->key, key, 32);
  /* pin first, then look: eviction that runs after the pin skips it; one that ran before is
   * visible to our transaction as "not found". Then hold the record's segment; if it was
   * retired meanwhile (compacted), the record moved: look again. */
  store_pin_reader_add(st, key);
  int e = E8S_OK, seg_gone = 0;
  for (int attempt = 0; attempt < 4 && !ch->seg; attempt++) {
    uint64_t punches = atomic_load(&st->n_punches);
    MDB_txn *txn;
    if ((e = store_rtxn_begin(st, &txn))) break;
    e = find(txn, st, ns_id, key, &ch->rec);
    store_rtxn_end(st, txn);
    seg_gone = 0;
    if (e) break;
    ch->seg = store_seg_acquire(st, ch->rec.seg_id);
    seg_gone = !ch->seg;
    if (seg_gone) e = store_err(E8S_ERR_NOTFOUND, "chunk's segment %llu is gone",
                                (unsigned long long)ch->rec.seg_id);
    else if (atomic_load(&st->n_punches) != punches && /* else nothing was punched since */
             ((e = still_there(st, ns_id, ch)) != E8S_OK || !ch->seg)) {
      if (e) break;
      e = store_err(E8S_ERR_NOTFOUND, "chunk moved while it was opened");
    }
  }
  /* the index still points into a segment file that is not there: the bytes are lost */
  if (seg_gone && e == E8S_ERR_NOTFOUND && store_seg_lost(st, key, &ch->rec)) {
    atomic_fetch_add(&st->c_crc_failures, 1);
    store_quarantine(st, key, &ch->rec, ch->rec.crc); /* found = stored: "unreadable" */
    e = store_err(E8S_ERR_DATALOSS, "segment %llu offset %llu: segment file missing; chunk "
                  "quarantined", (unsigned long long)ch->rec.seg_id,
                  (unsigned long long)ch->rec.offset);
  }
  if (e) {
    store_pin_reader_drop(st, key);
    free(ch);
    return e;
  }
  fill_info(info, key, &ch->rec);
  store_touch(st, key);
  *out = ch;
  return E8S_OK;
}

int e8s_chunk_read(e8s_chunk *ch, void *buf, uint64_t cap) {
  if (!ch || !buf) return store_err(E8S_ERR_INVAL, "chunk_read: NULL argument");
  e8s_store *st = ch->st;
  if (cap < ch->rec.payload_bytes)
    return store_err(E8S_ERR_RANGE, "chunk_read: buffer of %llu bytes, payload is %llu",
                     (unsigned long long)cap, (unsigned long long)ch->rec.payload_bytes);
  uint32_t found = 0;
  int e = store_seg_read_from(ch->seg, &ch->rec, ch->key, buf, &found);
  if (e == E8S_ERR_DATALOSS && !store_index_points_at(st, ch->key, &ch->rec))
    /* read-only opener: the writer evicted or moved it meanwhile and gave the blocks back */
    return store_err(E8S_ERR_NOTFOUND, "chunk was evicted or moved while it was read; look "
                     "it up again");
  if (e == E8S_ERR_DATALOSS) {
    atomic_fetch_add(&st->c_crc_failures, 1);
    char msg[512];
    snprintf(msg, sizeof msg, "%s", e8s_last_error_detail());
    store_quarantine(st, ch->key, &ch->rec, found);
    store_err(E8S_ERR_DATALOSS, "%s; chunk quarantined", msg);
  }
  if (e == E8S_OK) {
    atomic_fetch_add(&st->c_reads, 1);
    atomic_fetch_add(&st->c_read_bytes, ch->rec.payload_bytes);
  }
  return e;
}

void e8s_chunk_close(e8s_chunk *ch) {
  if (!ch) return;
  store_seg_release(ch->st, ch->seg);
  store_pin_reader_drop(ch->st, ch->key);
  free(ch);
}

int e8s_get(e8s_store *st, uint32_t ns_id, const uint8_t key[E8S_KEY_BYTES], void *buf,
            uint64_t cap, uint64_t *payload_bytes) {
  e8s_chunk *ch;
  e8s_chunk_info info;
  int e = e8s_chunk_open(st, ns_id, key, &ch, &info);
  if (e) return e;
  if (payload_bytes) *payload_bytes = info.payload_bytes;
  e = e8s_chunk_read(ch, buf, cap);
  e8s_chunk_close(ch);
  return e;
}

/* ---------------------------------------------------------------- lookup */
int e8s_lookup(e8s_store *st, uint32_t ns_id, const uint8_t fp_id[E8S_KEY_BYTES],
               const uint32_t *tokens, size_t n_tokens, uint32_t chunk_tokens, uint32_t flags,
               uint8_t (*keys_out)[E8S_KEY_BYTES], size_t max_keys, e8s_lookup_result *res) {
  if (!st || !fp_id || !res || (!tokens && n_tokens) || (!keys_out && max_keys))
    return store_err(E8S_ERR_INVAL, "lookup: NULL argument");
  if (chunk_tokens == 0 || chunk_tokens > E8S_CHUNK_TOKENS_MAX)
    return store_err(E8S_ERR_INVAL, "lookup: chunk_tokens %u (1..%u)", chunk_tokens,
                     E8S_CHUNK_TOKENS_MAX);
  memset(res, 0, sizeof *res);
  MDB_txn *txn;
  int e = store_rtxn_begin(st, &txn);
  if (e) return e;
  store_ns_val ns;
  e = store_ns_load(txn, st, ns_id, &ns);
  if (e) {
    store_rtxn_end(st, txn);
    return e == E8S_ERR_NOTFOUND ? store_err(e, "lookup: namespace %u unknown", ns_id) : e;
  }
  uint8_t parent[32] = {0}, key[32], digest[32];
  size_t pos = 0;
  while (pos < n_tokens && res->n_chunks < max_keys) {
    size_t m = n_tokens - pos < chunk_tokens ? n_tokens - pos : chunk_tokens;
    if ((e = e8s_chunk_key(ns.salt, fp_id, parent, tokens + pos, m, key))) break;
    store_chunk_val v;
    int g = store_chunk_get(txn, st, key, &v);
    if (g != E8S_OK) break;
    if ((e = e8s_token_digest(parent, tokens + pos, m, digest))) break;
    /* the key alone is not trusted: the stored digest must be this chunk's tokens */
    if (v.ns_id != ns_id || v.n_tokens != m || memcmp(v.digest, digest, 32) != 0 ||
        memcmp(v.fp, fp_id, 32) != 0)
      break;
    memcpy(keys_out[res->n_chunks++], key, 32);
    memcpy(parent, key, 32);
    pos += m;
  }
  store_rtxn_end(st, txn);
  if (e) return e;
  res->tokens_matched = pos;
  atomic_fetch_add(&st->c_lookups, 1);
  atomic_fetch_add(&st->c_hit_chunks, res->n_chunks);
  if (pos < n_tokens) atomic_fetch_add(&st->c_misses, 1);
  for (size_t i = 0; i < res->n_chunks; i++) store_touch(st, keys_out[i]);
  if ((flags & E8S_LOOKUP_PIN) && res->n_chunks > 0) {
    res->lease_id = store_lease_create(st, ns_id, (const uint8_t(*)[32])keys_out,
                                       res->n_chunks);
    if (!res->lease_id) return E8S_ERR_NOMEM;
    if (res->lease_id == UINT64_MAX) {
      res->lease_id = 0;
      return store_err(E8S_ERR_FULL, "lookup: a lease on %zu chunks is over the lease caps "
                       "(lease_max_chunks %llu, lease_ns_max_chunks %llu)", res->n_chunks,
                       (unsigned long long)st->cfg.lease_max_chunks,
                       (unsigned long long)st->cfg.lease_ns_max_chunks);
    }
  }
  return E8S_OK;
}

int e8s_lease_release(e8s_store *st, uint64_t lease_id) {
  if (!st) return store_err(E8S_ERR_INVAL, "lease_release: NULL store");
  return store_lease_drop(st, lease_id);
}

/* ---------------------------------------------------------------- delete */
typedef struct del_ctx {
  uint32_t ns_id;
  const uint8_t *key;
  store_retire_list retire;
} del_ctx;

int store_chunk_delete_unpinned(MDB_txn *txn, e8s_store *st, uint32_t ns_id,
                                const uint8_t key[32], uint64_t now_ms, uint32_t *refs_out,
                                store_retire_list *rs) {
  store_chunk_val v;
  int e = store_chunk_get(txn, st, key, &v);
  if (e == E8S_OK && v.ns_id != ns_id) e = E8S_ERR_NOTFOUND;
  if (refs_out) *refs_out = e == E8S_OK ? v.refs : 0;
  if (e) return e;
  if (v.refs || store_pin_is_pinned(st, key, now_ms)) return E8S_ERR_BUSY;
  uint64_t retire;
  if ((e = store_chunk_remove(txn, st, key, &v, 0, 0, &retire))) return e;
  return store_retire_add(rs, retire);
}

static int del_fn(e8s_store *st, MDB_txn *txn, void *vc) {
  del_ctx *c = vc;
  c->retire.n = 0;
  uint32_t refs;
  int e = store_chunk_delete_unpinned(txn, st, c->ns_id, c->key, store_mono_ms(), &refs,
                                      &c->retire);
  if (e == E8S_ERR_NOTFOUND) return store_err(e, "chunk_delete: not found");
  if (e == E8S_ERR_BUSY)
    return store_err(e, "chunk_delete: pinned (%u sessions, or a reader/lease)", refs);
  return e;
}

int e8s_chunk_delete(e8s_store *st, uint32_t ns_id, const uint8_t key[E8S_KEY_BYTES]) {
  if (!st || !key) return store_err(E8S_ERR_INVAL, "chunk_delete: NULL argument");
  del_ctx c = {.ns_id = ns_id, .key = key};
  int e = store_wtxn_run(st, del_fn, &c);
  if (e == E8S_OK) store_retire_apply(st, &c.retire);
  else free(c.retire.ids);
  return e;
}
