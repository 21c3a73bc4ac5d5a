/* store_put.c: e8s_put, the write path.
 *
 * Outside the writer mutex: argument checks, token digests, payload CRC32C (the expensive
 * parts, so writer threads overlap them). Under the writer mutex, inside one LMDB write txn:
 *   1. plan: per record, existed (same key, same token digest: idempotent, first writer wins)
 *      or conflict (same key, other digest), else make room: evict LRU unpinned chunks of the
 *      namespace (quota) and of the store (budget), in this same transaction;
 *   2. write the planned records through the io engine (one batch), fdatasync every segment
 *      touched (a new segment was already fsynced with its directory when created); a record
 *      whose write or sync failed is dropped from the plan and its segment sealed;
 *   3. insert the survivors into the index and commit; then reply.
 * MDB_MAP_FULL anywhere: abort, grow the map, redo 1 and 3 (records already on disk are not
 * written again). A failed record's bytes are dead space that no index entry points at. */
#include <stdlib.h>
#include <string.h>

#include "store/store_int.h"

typedef struct put_item {
  uint8_t digest[32];
  uint8_t hdr[E8S_RECORD_HEADER_BYTES];
  uint64_t bytes;     /* record bytes: header + payload */
  uint32_t crc;
  int dup_of;         /* index of an earlier record of the batch with the same key, or -1 */
  int planned;        /* to be inserted in this attempt */
  int written;        /* on disk and synced */
  uint64_t seg_id, off;
  int fd;
} put_item;

typedef struct put_ctx {
  uint32_t ns_id;
  const uint8_t *fp;
  e8s_put_rec *r;
  put_item *it;
  size_t n;
  store_retire_list retire;
} put_ctx;

static int prepare(e8s_put_rec *r, put_item *it, uint32_t ns_id) {
  it->dup_of = -1;
  if (!r->tokens || r->n_tokens == 0 || r->n_tokens > E8S_CHUNK_TOKENS_MAX)
    return store_err(E8S_ERR_INVAL, "put: %u tokens (1..%u)", r->n_tokens, E8S_CHUNK_TOKENS_MAX);
  if (!r->payload || r->payload_bytes == 0 || r->payload_bytes > STORE_PAYLOAD_MAX)
    return store_err(E8S_ERR_INVAL, "put: payload of %llu bytes (1..2^40)",
                     (unsigned long long)r->payload_bytes);
  int e = e8s_token_digest(r->parent, r->tokens, r->n_tokens, it->digest);
  if (e) return e;
  it->crc = store_crc32c(r->payload, r->payload_bytes);
  it->bytes = store_rec_bytes(r->payload_bytes);
  store_rec_hdr_encode(it->hdr, r->key, r->payload_bytes, it->crc, r->n_tokens, ns_id);
  return E8S_OK;
}

/* Budget check for one record given `pending` bytes already planned in this batch. */
static int make_room(MDB_txn *txn, e8s_store *st, put_ctx *c, uint64_t bytes, uint64_t pending) {
  store_ns_val ns;
  int e = store_ns_load(txn, st, c->ns_id, &ns);
  if (e) return e;
  uint64_t freed, need;
  if (ns.quota) {
    if (bytes > ns.quota) return store_err(E8S_ERR_QUOTA, "put: record larger than the quota");
    if (ns.used + pending + bytes > ns.quota) {
      need = ns.used + pending + bytes - ns.quota;
      if ((e = store_evict(txn, st, c->ns_id, need, &freed, &c->retire))) return e;
      if (freed < need)
        return store_err(E8S_ERR_QUOTA, "namespace %s: quota %llu bytes reached, the rest is "
                         "pinned", ns.name, (unsigned long long)ns.quota);
    }
  }
  uint64_t cap = st->cfg.capacity_bytes, used;
  if (!cap) return E8S_OK;
  if (bytes > cap) return store_err(E8S_ERR_FULL, "put: record larger than the store budget");
  if ((e = store_meta_get_u64(txn, st, "used", &used))) return e;
  if (used + pending + bytes > cap) {
    need = used + pending + bytes - cap;
    if ((e = store_evict(txn, st, 0, need, &freed, &c->retire))) return e;
    if (freed < need)
      return store_err(E8S_ERR_FULL, "store budget %llu bytes reached, the rest is pinned",
                       (unsigned long long)cap);
  }
  return E8S_OK;
}

static int plan(MDB_txn *txn, e8s_store *st, put_ctx *c) {
  uint64_t pending = 0;
  for (size_t i = 0; i < c->n; i++) {
    e8s_put_rec *r = &c->r[i];
    put_item *it = &c->it[i];
    it->planned = 0;
    if (r->result != E8S_OK || it->dup_of >= 0) continue;
    store_chunk_val v;
    int e = store_chunk_get(txn, st, r->key, &v);
    if (e == E8S_OK) {
      if (memcmp(v.digest, it->digest, 32) != 0 || v.ns_id != c->ns_id)
        r->result = store_err(E8S_ERR_CONFLICT, "put: key stored with another token digest");
      else r->existed = 1;
      continue;
    }
    if (e != E8S_ERR_NOTFOUND) return e;
    e = make_room(txn, st, c, it->bytes, pending);
    if (e == STORE_MAPFULL_RETRY || e == E8S_ERR_CORRUPT || e == E8S_ERR_NOMEM) return e;
    if (e) {
      r->result = e;
      continue;
    }
    it->planned = 1;
    pending += it->bytes;
  }
  return E8S_OK;
}

/* Writes and syncs planned records not yet on disk. */
static int write_planned(e8s_store *st, put_ctx *c) {
  store_iow *w = calloc(c->n, sizeof *w);
  size_t *idx = calloc(c->n, sizeof *idx);
  int *fds = calloc(c->n, sizeof *fds), *res = calloc(c->n, sizeof *res);
  if (!w || !idx || !fds || !res) {
    free(w), free(idx), free(fds), free(res);
    return E8S_ERR_NOMEM;
  }
  size_t nw = 0, nf = 0;
  for (size_t i = 0; i < c->n; i++) {
    put_item *it = &c->it[i];
    if (!it->planned || it->written) continue;
    store_seg *seg;
    int e = store_seg_reserve(st, it->bytes, &seg, &it->off);
    if (e) {
      c->r[i].result = e;
      it->planned = 0;
      continue;
    }
    it->seg_id = seg->id;
    it->fd = seg->fd;
    w[nw] = (store_iow){.fd = seg->fd, .off = it->off, .niov = 2, .len = it->bytes};
    w[nw].iov[0] = (struct iovec){it->hdr, E8S_RECORD_HEADER_BYTES};
    w[nw].iov[1] = (struct iovec){(void *)c->r[i].payload, c->r[i].payload_bytes};
    idx[nw++] = i;
  }
  if (nw) st->io->ops->write_batch(st->io, w, nw);
  int write_failed = 0;
  for (size_t j = 0; j < nw; j++) {
    put_item *it = &c->it[idx[j]];
    if (w[j].res) {
      c->r[idx[j]].result = store_err(store_err_errno(w[j].res), "segment %llu offset %llu: "
                                      "write: %s", (unsigned long long)it->seg_id,
                                      (unsigned long long)it->off, strerror(-w[j].res));
      it->planned = 0;
      write_failed = 1;
      continue;
    }
    size_t f = 0;
    while (f < nf && fds[f] != it->fd) f++;
    if (f == nf) fds[nf++] = it->fd;
  }
  if (nf) st->io->ops->sync_batch(st->io, fds, res, nf);
  int sync_failed = 0;
  for (size_t j = 0; j < nw; j++) {
    put_item *it = &c->it[idx[j]];
    if (!it->planned) continue;
    size_t f = 0;
    while (fds[f] != it->fd) f++;
    if (res[f]) { /* what the kernel dropped is unknown: nothing since the last good sync */
      c->r[idx[j]].result = store_err(store_err_errno(res[f]) == E8S_ERR_NOSPC ? E8S_ERR_NOSPC
                                      : E8S_ERR_IO, "segment %llu: fdatasync: %s",
                                      (unsigned long long)it->seg_id, strerror(-res[f]));
      it->planned = 0;
      sync_failed = 1;
    } else it->written = 1;
  }
  /* a failed write or sync leaves the segment's tail unknown: seal it, append elsewhere */
  if (write_failed || sync_failed) store_seg_seal_active(st);
  free(w), free(idx), free(fds), free(res);
  return E8S_OK;
}

static int insert_planned(MDB_txn *txn, e8s_store *st, put_ctx *c) {
  uint64_t now = store_now_ns();
  for (size_t i = 0; i < c->n; i++) {
    put_item *it = &c->it[i];
    if (!it->planned) continue;
    e8s_put_rec *r = &c->r[i];
    store_chunk_val v = {.seg_id = it->seg_id, .offset = it->off,
                         .payload_bytes = r->payload_bytes, .created_ns = now,
                         .tick = atomic_fetch_add(&st->tick, 1) + 1, .crc = it->crc,
                         .n_tokens = r->n_tokens, .ns_id = c->ns_id};
    memcpy(v.fp, c->fp, 32);
    memcpy(v.parent, r->parent, 32);
    memcpy(v.digest, it->digest, 32);
    int e = store_chunk_insert(txn, st, r->key, &v);
    if (e) return e;
  }
  return E8S_OK;
}

static int check_owner(MDB_txn *txn, e8s_store *st, put_ctx *c) {
  store_ns_val ns;
  int e = store_ns_load(txn, st, c->ns_id, &ns);
  if (e == E8S_ERR_NOTFOUND) return store_err(e, "put: namespace %u unknown", c->ns_id);
  if (e) return e;
  MDB_val k = {32, (void *)c->fp}, v;
  int rc = mdb_get(txn, st->db_fp, &k, &v);
  if (rc == MDB_NOTFOUND) return store_err(E8S_ERR_NOTFOUND, "put: fingerprint not registered");
  return rc ? store_err_mdb(rc, "get fp") : E8S_OK;
}

static int run_locked(e8s_store *st, put_ctx *c) {
  for (;;) {
    MDB_txn *txn;
    int rc = mdb_txn_begin(st->env, NULL, 0, &txn);
    if (rc) return store_err_mdb(rc, "write txn_begin");
    int e = store_touch_flush(st, txn);
    if (!e) e = check_owner(txn, st, c);
    if (!e) e = plan(txn, st, c);
    if (!e) e = write_planned(st, c);
    if (!e) e = insert_planned(txn, st, c);
    if (!e) e = store_txn_commit(st, txn);
    else mdb_txn_abort(txn);
    if (e == E8S_OK) return E8S_OK;
    free(c->retire.ids);
    memset(&c->retire, 0, sizeof c->retire);
    if (e == STORE_MAPFULL_RETRY) e = store_map_grow(st);
    if (e) {
      /* the whole attempt is void: nothing it planned is visible */
      for (size_t i = 0; i < c->n; i++) {
        if (c->it[i].planned || (c->r[i].result == E8S_OK && !c->r[i].existed &&
                                 c->it[i].dup_of < 0))
          c->r[i].result = e;
      }
      return e;
    }
    for (size_t i = 0; i < c->n; i++) c->r[i].existed = 0;
  }
}

int e8s_put(e8s_store *st, uint32_t ns_id, const uint8_t fp_id[E8S_KEY_BYTES],
            e8s_put_rec *recs, size_t n_recs) {
  if (!st || !fp_id || (!recs && n_recs)) return store_err(E8S_ERR_INVAL, "put: NULL argument");
  for (size_t i = 0; i < n_recs; i++) recs[i].result = E8S_OK, recs[i].existed = 0;
  if (st->readonly) {
    for (size_t i = 0; i < n_recs; i++) recs[i].result = E8S_ERR_READONLY;
    return store_err(E8S_ERR_READONLY, "put: store opened read-only");
  }
  put_ctx c = {.ns_id = ns_id, .fp = fp_id, .r = recs, .n = n_recs};
  c.it = calloc(n_recs ? n_recs : 1, sizeof *c.it);
  if (!c.it) return E8S_ERR_NOMEM;
  for (size_t i = 0; i < n_recs; i++) {
    recs[i].result = prepare(&recs[i], &c.it[i], ns_id);
    for (size_t j = 0; j < i && recs[i].result == E8S_OK; j++)
      if (c.it[j].dup_of < 0 && memcmp(recs[j].key, recs[i].key, 32) == 0) {
        c.it[i].dup_of = (int)j;
        break;
      }
  }
  pthread_mutex_lock(&st->wlock);
  int e = run_locked(st, &c);
  pthread_mutex_unlock(&st->wlock);
  if (e == E8S_OK) store_retire_apply(st, &c.retire);
  else free(c.retire.ids);
  int first = E8S_OK;
  for (size_t i = 0; i < n_recs; i++) {
    put_item *it = &c.it[i];
    if (e != E8S_OK && recs[i].result == E8S_OK) recs[i].result = e;
    if (it->dup_of >= 0 && recs[i].result == E8S_OK) {
      int d = it->dup_of;
      recs[i].result = recs[d].result;
      recs[i].existed = recs[d].result == E8S_OK &&
                        memcmp(c.it[d].digest, it->digest, 32) == 0;
      if (recs[d].result == E8S_OK && !recs[i].existed)
        recs[i].result = E8S_ERR_CONFLICT;
    }
    if (recs[i].result == E8S_OK && recs[i].existed) {
      store_touch(st, recs[i].key);
      atomic_fetch_add(&st->c_existed, 1);
    } else if (recs[i].result == E8S_OK) atomic_fetch_add(&st->c_stored, 1);
    if (first == E8S_OK) first = recs[i].result;
  }
  free(c.it);
  return first;
}
