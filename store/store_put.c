/* store_put.c: e8s_put, the write path, with group commit and a three-stage pipeline.
 *
 * Outside any lock: argument checks, token digests, payload CRC32C (the expensive parts, so
 * writer threads overlap them). Then the call joins a queue. A caller that finds a write lane
 * free (store_int.h: STORE_LANES lanes, each an active segment with its own data and sync
 * stages) leads a group: every queued call, up to the group limits, and
 *   1. data stage: in a read transaction, picks the records to write (not already indexed, not
 *      a duplicate of an earlier record of the group, namespace and fingerprint known), and
 *      writes them through the lane's write pipeline (store_wpipe.c: space in the active
 *      segment, io engine, writeback started). Then it frees the lane for the next leader, so
 *      the next group's bytes are copied while this group waits for the disk;
 *   2. sync stage: fdatasync of each segment touched, in the lane's data-stage order;
 *   3. index stage: the group joins the index queue; one thread at a time takes the queued
 *      groups (up to the group limits) into one LMDB write transaction under the writer mutex
 *      (a thread that finds another group in its sync stage first waits for it, at most a
 *      running mean of the index stage's duration, so both share the commit and its flush):
 *      plan each call: existed (same key, same token digest: idempotent, first writer wins) or
 *      conflict (same key, other digest), else make room: evict LRU unpinned chunks of the
 *      namespace (quota) and of the store (budget), in this same transaction; a planned record
 *      that the data stage skipped (it was indexed then, and evicted since) is written and
 *      synced now (lane 0); insert, raise the segments' index end over every record the group
 *      wrote (store_seg_cover), commit, wake the callers. The commit is lazy (one LMDB flush,
 *      the meta page's flush deferred: store_index_commit_lazy) unless a caller will hear of a
 *      record that was written and failed, or a segment file goes: then it is flushed whole
 *      first. A lost lazy commit is replayed from the segments at open (store_replay.c).
 * So concurrent callers share fdatasyncs and LMDB commits, and several groups are in flight at
 * once (one per lane in the data stage, one per lane in the sync stage, one in the index
 * stage). The order payload written -> fdatasync -> LMDB commit -> reply holds for every
 * record. MDB_MAP_FULL in stage 3: abort, grow the map, redo stage 3 (records already on disk
 * are not written again). A record that was written but is not indexed (the key was indexed
 * meanwhile, the budget said no, a later failure) is dead space that no index entry points at,
 * reclaimed by compaction or cut at open. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "store/store_int.h"

typedef struct put_item {
  uint8_t digest[32];
  uint8_t hdr[E8S_RECORD_HEADER_BYTES];
  uint64_t bytes;     /* record bytes: header + payload */
  uint32_t crc;
  int dup_of;         /* index of an earlier record of the same call with the same key, or -1 */
  struct put_item *xdup;  /* same key planned by an earlier call of the group */
  e8s_put_rec *xdup_rec;
  uint64_t created_ns;
  int planned;        /* to be inserted in this attempt */
  int written;        /* on disk and synced */
  uint64_t seg_id, off;
} put_item;

typedef struct put_ctx {
  uint32_t ns_id;
  const uint8_t *fp;
  e8s_put_rec *r;
  put_item *it;
  size_t n;
  uint64_t bytes;     /* record bytes of the call */
  int rc;             /* call-level error (unknown namespace/fingerprint), else E8S_OK */
  int done;
  struct put_ctx *next;
} put_ctx;

typedef struct wref { put_ctx *c; size_t i; } wref;

typedef struct put_group {
  put_ctx **c;
  size_t n;
  store_retire_list retire;
  store_wrec *wr;     /* records written for the group (data stage, then stragglers) */
  wref *ref;          /* wr[k] is ref[k].c->it[ref[k].i] */
  size_t nwr, cap;
  uint64_t bytes;     /* record bytes of its calls */
  struct put_group *next; /* index stage queue (gc_mu) */
  struct put_group *src;  /* index stage: the queued groups merged into this one */
  int ix_rc, ix_done;
  int must_sync;      /* index stage: the commit must be durable before anyone hears of it */
} put_group;

static int prepare(e8s_put_rec *r, put_item *it, uint32_t ns_id, const uint8_t *fp) {
  it->dup_of = -1;
  if (!r->tokens || r->n_tokens == 0 || r->n_tokens > E8S_CHUNK_TOKENS_MAX)
    return store_err(E8S_ERR_INVAL, "put: %u tokens (1..%u)", r->n_tokens, E8S_CHUNK_TOKENS_MAX);
  if (store_key_is_zero(r->key))
    return store_err(E8S_ERR_INVAL, "put: all-zero key (reserved: 'no parent')");
  if (!r->payload || r->payload_bytes == 0 || r->payload_bytes > STORE_PAYLOAD_MAX)
    return store_err(E8S_ERR_INVAL, "put: payload of %llu bytes (1..2^40)",
                     (unsigned long long)r->payload_bytes);
  int e = e8s_token_digest(r->parent, r->tokens, r->n_tokens, it->digest);
  if (e) return e;
  it->crc = store_crc32c(r->payload, r->payload_bytes);
  it->bytes = store_rec_bytes(r->payload_bytes);
  it->created_ns = store_now_ns();
  store_chunk_val v = {.payload_bytes = r->payload_bytes, .created_ns = it->created_ns,
                       .crc = it->crc, .n_tokens = r->n_tokens, .ns_id = ns_id,
                       .raw_bytes = r->raw_bytes};
  memcpy(v.fp, fp, 32);
  memcpy(v.parent, r->parent, 32);
  memcpy(v.digest, it->digest, 32);
  store_rec_hdr_encode(it->hdr, r->key, &v);
  return E8S_OK;
}

int store_make_room(MDB_txn *txn, e8s_store *st, store_retire_list *rs, uint32_t ns_id,
                    uint64_t bytes, uint64_t pending, uint64_t pending_ns) {
  store_ns_val ns;
  int e = store_ns_load(txn, st, ns_id, &ns);
  if (e) return e;
  uint64_t freed, need;
  if (ns.quota) {
    if (bytes > ns.quota) return store_err(E8S_ERR_QUOTA, "put: record larger than the quota");
    if (ns.used + pending_ns + bytes > ns.quota) {
      need = ns.used + pending_ns + bytes - ns.quota;
      if ((e = store_evict(txn, st, ns_id, need, &freed, rs))) return e;
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
    if ((e = store_evict(txn, st, 0, need, &freed, rs))) return e;
    if (freed < need)
      return store_err(E8S_ERR_FULL, "store budget %llu bytes reached, the rest is pinned",
                       (unsigned long long)cap);
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

/* An item of an earlier call of the group planned under the same key, or NULL. */
static put_item *planned_before(put_group *g, size_t ci, const uint8_t key[32],
                                e8s_put_rec **rec) {
  for (size_t k = 0; k < ci; k++) {
    put_ctx *o = g->c[k];
    for (size_t i = 0; i < o->n; i++)
      if (o->it[i].planned && memcmp(o->r[i].key, key, 32) == 0) {
        *rec = &o->r[i];
        return &o->it[i];
      }
  }
  return NULL;
}

static int plan(MDB_txn *txn, e8s_store *st, put_group *g, size_t ci, uint64_t *pending) {
  put_ctx *c = g->c[ci];
  uint64_t pending_ns = 0;
  for (size_t k = 0; k < ci; k++)
    if (g->c[k]->ns_id == c->ns_id)
      for (size_t i = 0; i < g->c[k]->n; i++)
        if (g->c[k]->it[i].planned) pending_ns += g->c[k]->it[i].bytes;
  for (size_t i = 0; i < c->n; i++) {
    e8s_put_rec *r = &c->r[i];
    put_item *it = &c->it[i];
    it->planned = 0;
    it->xdup = NULL;
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
    it->xdup = planned_before(g, ci, r->key, &it->xdup_rec);
    if (it->xdup) continue; /* settled after the commit, from the other call's result */
    e = store_make_room(txn, st, &g->retire, c->ns_id, it->bytes, *pending, pending_ns);
    if (e == STORE_MAPFULL_RETRY || e == E8S_ERR_CORRUPT || e == E8S_ERR_NOMEM) return e;
    if (e) {
      r->result = e;
      continue;
    }
    it->planned = 1;
    *pending += it->bytes;
    pending_ns += it->bytes;
  }
  return E8S_OK;
}

/* Adds record i of call c to the group's write list. */
static void wr_add(put_group *g, put_ctx *c, size_t i) {
  put_item *it = &c->it[i];
  store_wrec *w = &g->wr[g->nwr];
  memset(w, 0, sizeof *w);
  w->iov[0] = (struct iovec){it->hdr, E8S_RECORD_HEADER_BYTES};
  w->iov[1] = (struct iovec){(void *)c->r[i].payload, c->r[i].payload_bytes};
  w->bytes = it->bytes;
  g->ref[g->nwr++] = (wref){c, i};
}

/* Results of the write list from index `from` on, after the sync stage. */
static void wr_settle(put_group *g, size_t from) {
  for (size_t k = from; k < g->nwr; k++) {
    put_ctx *c = g->ref[k].c;
    put_item *it = &c->it[g->ref[k].i];
    if (g->wr[k].err) {
      c->r[g->ref[k].i].result = g->wr[k].err;
      it->planned = 0;
      continue;
    }
    it->written = 1;
    it->seg_id = g->wr[k].seg_id;
    it->off = g->wr[k].off;
  }
}

/* Index stage: writes and syncs the group's planned records not yet on disk (the data stage
 * found them indexed; they were evicted since). Rare. */
static int write_planned(e8s_store *st, put_group *g) {
  if (!g->wr) return E8S_ERR_NOMEM;
  size_t from = g->nwr;
  for (size_t k = 0; k < g->n; k++)
    for (size_t i = 0; i < g->c[k]->n; i++)
      if (g->c[k]->it[i].planned && !g->c[k]->it[i].written && g->nwr < g->cap)
        wr_add(g, g->c[k], i);
  if (g->nwr == from) return E8S_OK;
  uint64_t t = store_wp_write(st, 0, g->wr + from, g->nwr - from);
  store_wp_sync(st, 0, t, g->wr + from, g->nwr - from);
  wr_settle(g, from);
  return E8S_OK;
}

/* Data stage, in a read transaction: picks the records worth writing now. */
static void pick(e8s_store *st, put_group *g) {
  MDB_txn *txn;
  if (!g->wr || store_rtxn_begin(st, &txn) != E8S_OK) return;
  for (size_t k = 0; k < g->n; k++) {
    put_ctx *c = g->c[k];
    if (check_owner(txn, st, c) != E8S_OK) continue; /* the index stage says why */
    for (size_t i = 0; i < c->n; i++) {
      e8s_put_rec *r = &c->r[i];
      put_item *it = &c->it[i];
      if (r->result != E8S_OK || it->dup_of >= 0) continue;
      store_chunk_val v;
      if (store_chunk_get(txn, st, r->key, &v) != E8S_ERR_NOTFOUND) continue;
      int dup = 0;
      for (size_t q = 0; q < g->nwr && !dup; q++)
        dup = memcmp(g->ref[q].c->r[g->ref[q].i].key, r->key, 32) == 0;
      if (dup) continue;
      wr_add(g, c, i);
    }
  }
  store_rtxn_end(st, txn);
}

static int insert_planned(MDB_txn *txn, e8s_store *st, put_ctx *c) {
  for (size_t i = 0; i < c->n; i++) {
    put_item *it = &c->it[i];
    if (!it->planned) continue;
    e8s_put_rec *r = &c->r[i];
    store_chunk_val v = {.seg_id = it->seg_id, .offset = it->off,
                         .payload_bytes = r->payload_bytes, .created_ns = it->created_ns,
                         .tick = atomic_fetch_add(&st->tick, 1) + 1, .crc = it->crc,
                         .n_tokens = r->n_tokens, .ns_id = c->ns_id,
                         .raw_bytes = r->raw_bytes};
    memcpy(v.fp, c->fp, 32);
    memcpy(v.parent, r->parent, 32);
    memcpy(v.digest, it->digest, 32);
    int e = store_chunk_insert(txn, st, r->key, &v);
    if (e) return e;
  }
  return E8S_OK;
}

/* Raises the index end of the segments over every record the group wrote, indexed or not, so
 * replay at open revives only records of commits that were lost. A written record that is not
 * indexed and whose call hears of a failure makes the commit a durable one (must_sync): else a
 * lost commit would leave it past the end, and replay would revive what the caller was told
 * failed. */
static int cover(MDB_txn *txn, e8s_store *st, put_group *g) {
  for (size_t k = 0; k < g->nwr; k++) {
    store_wrec *w = &g->wr[k];
    if (!w->seg) continue;
    int e = store_seg_cover(txn, st, w->seg_id, w->off, w->bytes);
    if (e) return e;
    put_ctx *c = g->ref[k].c;
    put_item *it = &c->it[g->ref[k].i];
    if (!it->planned && (w->err || c->rc || c->r[g->ref[k].i].result != E8S_OK))
      g->must_sync = 1;
  }
  return E8S_OK;
}

static int attempt(MDB_txn *txn, e8s_store *st, put_group *g) {
  int e = store_touch_flush(st, txn);
  uint64_t pending = 0;
  for (size_t k = 0; k < g->n && !e; k++) {
    put_ctx *c = g->c[k];
    for (size_t i = 0; i < c->n; i++) c->r[i].existed = 0;
    if (c->rc) continue;
    int o = check_owner(txn, st, c);
    if (o == E8S_ERR_NOTFOUND) c->rc = o;
    else if (o) e = o;
    else e = plan(txn, st, g, k, &pending);
  }
  if (!e) e = write_planned(st, g);
  for (size_t k = 0; k < g->n && !e; k++)
    if (!g->c[k]->rc) e = insert_planned(txn, st, g->c[k]);
  g->must_sync = g->retire.n > 0; /* files are unlinked after the commit */
  for (put_group *s = g->src; s && !e; s = s->next) e = cover(txn, st, s);
  if (!e) e = cover(txn, st, g); /* stragglers */
  return e;
}

/* The leader's work for a group; writer mutex held. */
static int run_group(e8s_store *st, put_group *g) {
  for (;;) {
    MDB_txn *txn;
    int rc = mdb_txn_begin(st->env, NULL, 0, &txn);
    if (rc) return store_err_mdb(rc, "write txn_begin");
    int e = attempt(txn, st, g);
    if (!e && !g->must_sync && store_fault_index_lost()) { /* test: a lost lazy commit */
      mdb_txn_abort(txn);
      g->retire.n = 0; /* nothing it evicted is gone */
      return E8S_OK;
    }
    if (!e) e = store_index_commit_lazy(st, txn, !g->must_sync);
    else mdb_txn_abort(txn);
    if (e == E8S_OK) return E8S_OK;
    free(g->retire.ids);
    memset(&g->retire, 0, sizeof g->retire);
    if (e == STORE_MAPFULL_RETRY) e = store_map_grow(st);
    if (e) return e; /* the whole attempt is void: nothing it planned is visible */
  }
}

/* Sets final results of call c after the group finished with group_rc. */
static int settle(e8s_store *st, put_ctx *c, int group_rc) {
  int first = E8S_OK;
  for (size_t i = 0; i < c->n; i++) {
    e8s_put_rec *r = &c->r[i];
    put_item *it = &c->it[i];
    if (c->rc && r->result == E8S_OK) r->result = c->rc;
    if (group_rc && r->result == E8S_OK && !r->existed) r->result = group_rc;
    if (it->dup_of >= 0 && r->result == E8S_OK) {
      int d = it->dup_of;
      r->result = c->r[d].result;
      r->existed = r->result == E8S_OK;
      if (r->existed && memcmp(c->it[d].digest, it->digest, 32) != 0)
        r->result = E8S_ERR_CONFLICT, r->existed = 0;
    }
    if (r->result == E8S_OK && r->existed) {
      store_touch(st, r->key);
      atomic_fetch_add(&st->c_existed, 1);
    } else if (r->result == E8S_OK) atomic_fetch_add(&st->c_stored, 1);
    if (first == E8S_OK) first = r->result;
  }
  return c->rc ? c->rc : first;
}

#define GROUP_MAX_CALLS 64

/* A group never holds more than a quarter of the budget, so that calls that fit the budget
 * alone are not refused for the company they arrived in; 1 GiB without a budget. */
static uint64_t group_bytes_max(const e8s_store *st) {
  uint64_t cap = st->cfg.capacity_bytes;
  return cap ? cap / 4 : (1ull << 30);
}

static uint64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Takes the queued calls that fit one group (gc_mu held, queue not empty). */
static put_ctx *take_group(e8s_store *st, size_t *n_out, size_t *recs_out, uint64_t *bytes_out) {
  size_t n = 0, recs = 0;
  uint64_t bytes = 0;
  put_ctx *head = st->gc_head, *last = NULL;
  for (put_ctx *p = head; p; p = p->next) {
    if (n && (n == GROUP_MAX_CALLS || bytes + p->bytes > group_bytes_max(st))) break;
    n++, bytes += p->bytes, recs += p->n, last = p;
  }
  st->gc_head = last->next;
  if (!st->gc_head) st->gc_tail = NULL;
  last->next = NULL;
  *n_out = n;
  *recs_out = recs;
  *bytes_out = bytes;
  return head;
}

/* Records whose key an earlier call of the same index transaction planned take that record's
 * outcome (existed, or its error; CONFLICT for another token digest). Done by the index
 * stage's thread while every call of the transaction is still waiting. */
static void settle_xdups(put_group *m, int group_rc) {
  for (size_t k = 0; k < m->n; k++) {
    put_ctx *c = m->c[k];
    for (size_t i = 0; i < c->n; i++) {
      e8s_put_rec *r = &c->r[i];
      put_item *it = &c->it[i];
      if (!it->xdup) continue;
      if (r->result == E8S_OK) {
        e8s_put_rec *o = it->xdup_rec;
        int src = o->result;
        if (src == E8S_OK && group_rc && !o->existed) src = group_rc;
        r->result = src;
        r->existed = src == E8S_OK;
        if (r->existed && memcmp(it->xdup->digest, it->digest, 32) != 0)
          r->result = E8S_ERR_CONFLICT, r->existed = 0;
      }
      it->xdup = NULL;
    }
  }
}

/* Takes the head of the index queue: groups up to the group limits (gc_mu held). */
static put_group *take_index_groups(e8s_store *st) {
  put_group *head = st->ix_head, *last = head;
  size_t calls = head->n;
  uint64_t bytes = head->bytes;
  while (last->next && calls + last->next->n <= GROUP_MAX_CALLS &&
         bytes + last->next->bytes <= group_bytes_max(st)) {
    last = last->next;
    calls += last->n, bytes += last->bytes;
  }
  st->ix_head = last->next;
  if (!st->ix_head) st->ix_tail = NULL;
  last->next = NULL;
  return head;
}

static int cover_fn(e8s_store *st, MDB_txn *txn, void *ctx) {
  put_group *m = ctx;
  int e = E8S_OK;
  for (put_group *s = m->src; s && !e; s = s->next) e = cover(txn, st, s);
  return e ? e : cover(txn, st, m);
}

/* Index stage for the groups of list `head`, merged into one LMDB transaction (they all waited
 * for the writer mutex meanwhile: one commit instead of several). */
static int index_groups(e8s_store *st, put_group *head) {
  size_t calls = 0, recs = 0;
  for (put_group *g = head; g; g = g->next)
    for (size_t k = 0; k < g->n; k++) calls++, recs += g->c[k]->n;
  put_group m = {0};
  m.c = malloc((calls ? calls : 1) * sizeof *m.c);
  m.wr = malloc((recs ? recs : 1) * sizeof *m.wr); /* room for stragglers */
  m.ref = malloc((recs ? recs : 1) * sizeof *m.ref);
  int e = E8S_ERR_NOMEM;
  if (m.c && m.wr && m.ref) {
    m.cap = recs;
    for (put_group *g = head; g; g = g->next)
      for (size_t k = 0; k < g->n; k++) m.c[m.n++] = g->c[k];
    m.src = head;
    pthread_mutex_lock(&st->wlock);
    e = run_group(st, &m);
    if (e) { /* nothing indexed: the written records must still never be revived at open */
      char msg[512];
      snprintf(msg, sizeof msg, "%s", e8s_last_error_detail());
      store_wtxn_run_locked(st, cover_fn, &m);
      store_err(e, "%s", msg);
    }
    pthread_mutex_unlock(&st->wlock);
    atomic_fetch_add(&st->n_index_commits, 1);
    store_wp_release(st, m.wr, m.nwr);
    settle_xdups(&m, e);
  }
  if (e == E8S_OK) store_retire_apply(st, &m.retire);
  else free(m.retire.ids);
  free(m.c), free(m.wr), free(m.ref);
  return e;
}

/* Stages 2 and 3 for a group whose data stage took `ticket` of `lane`; returns the group's
 * result. Stage 3: the group joins the index queue; one thread at a time takes the whole
 * queue into one transaction. */
static int finish_group(e8s_store *st, put_group *g, int lane, uint64_t ticket) {
  store_wp_sync(st, lane, ticket, g->wr, g->nwr);
  store_fault_crash_after_sync();
  wr_settle(g, 0);
  int e = E8S_ERR_NOMEM;
  uint64_t t0 = mono_ns();
  if (g->c) {
    pthread_mutex_lock(&st->gc_mu);
    g->next = NULL;
    if (st->ix_tail) st->ix_tail->next = g;
    else st->ix_head = g;
    st->ix_tail = g;
    st->n_syncing--;
    pthread_cond_broadcast(&st->gc_cv); /* a lingering index stage may take it along */
    uint64_t linger_until = 0;
    while (!g->ix_done) {
      if (st->ix_busy) {
        pthread_cond_wait(&st->gc_cv, &st->gc_mu);
        continue;
      }
      /* Group commit across lanes: another group is in its fdatasync and will want an index
       * commit right after; waiting for it (at most as long as a commit takes, which is what
       * the wait saves) lets both share one LMDB commit and its flush. */
      if (st->n_syncing > 0) {
        uint64_t now = mono_ns();
        if (!linger_until) linger_until = now + st->commit_ns;
        if (now < linger_until) {
          struct timespec ts;
          clock_gettime(CLOCK_REALTIME, &ts);
          uint64_t d = linger_until - now;
          ts.tv_sec += (time_t)(d / 1000000000u);
          ts.tv_nsec += (long)(d % 1000000000u);
          if (ts.tv_nsec >= 1000000000L) ts.tv_sec++, ts.tv_nsec -= 1000000000L;
          pthread_cond_timedwait(&st->gc_cv, &st->gc_mu, &ts);
          continue;
        }
      }
      st->ix_busy = 1;
      put_group *head = take_index_groups(st);
      if (head->next) atomic_fetch_add(&st->n_lingers, linger_until != 0);
      pthread_mutex_unlock(&st->gc_mu);
      uint64_t c0 = mono_ns();
      int r = index_groups(st, head);
      uint64_t dt = mono_ns() - c0;
      pthread_mutex_lock(&st->gc_mu);
      st->commit_ns = st->commit_ns ? (st->commit_ns * 7 + dt) / 8 : dt;
      for (put_group *p = head, *nx; p; p = nx) { /* p's owner may return once done is set */
        nx = p->next;
        p->ix_rc = r;
        p->ix_done = 1;
      }
      st->ix_busy = 0;
      pthread_cond_broadcast(&st->gc_cv);
    }
    e = g->ix_rc;
    pthread_mutex_unlock(&st->gc_mu);
  }
  atomic_fetch_add(&st->t_index_ns, mono_ns() - t0);
  store_wp_release(st, g->wr, g->nwr);
  return e;
}

/* Queues c and returns when a leader (maybe this thread) has processed it. */
static int group_commit(e8s_store *st, put_ctx *c) {
  pthread_mutex_lock(&st->gc_mu);
  c->next = NULL;
  if (st->gc_tail) st->gc_tail->next = c;
  else st->gc_head = c;
  st->gc_tail = c;
  while (!c->done) {
    int lane = 0;
    while (lane < STORE_LANES && st->lanes[lane].led) lane++;
    if (lane == STORE_LANES || !st->gc_head) { /* queued behind the leaders, or in flight */
      pthread_cond_wait(&st->gc_cv, &st->gc_mu);
      continue;
    }
    st->lanes[lane].led = 1; /* lead a data stage: what is queued, up to the group limits */
    size_t n, recs;
    uint64_t bytes;
    put_ctx *head = take_group(st, &n, &recs, &bytes);
    pthread_mutex_unlock(&st->gc_mu);
    put_group g = {.bytes = bytes};
    g.c = malloc(n * sizeof *g.c);
    g.wr = malloc((recs ? recs : 1) * sizeof *g.wr);
    g.ref = malloc((recs ? recs : 1) * sizeof *g.ref);
    if (!g.c || !g.wr || !g.ref) {
      free(g.c), free(g.wr), free(g.ref);
      g.c = NULL, g.wr = NULL, g.ref = NULL;
    } else {
      g.cap = recs;
      for (put_ctx *p = head; p; p = p->next) g.c[g.n++] = p;
      pick(st, &g);
    }
    uint64_t ticket = store_wp_write(st, lane, g.wr, g.nwr);
    pthread_mutex_lock(&st->gc_mu); /* the next group may start its data stage here */
    st->lanes[lane].led = 0;
    if (g.c) st->n_syncing++; /* finish_group counts it down when it joins the index queue */
    pthread_cond_broadcast(&st->gc_cv);
    pthread_mutex_unlock(&st->gc_mu);
    int e = finish_group(st, &g, lane, ticket);
    pthread_mutex_lock(&st->gc_mu);
    for (put_ctx *p = head, *nx; p; p = nx) {
      nx = p->next;
      p->rc = settle(st, p, e);
      p->done = 1;
    }
    atomic_fetch_add(&st->n_groups, 1);
    atomic_fetch_add(&st->n_group_calls, n);
    free(g.c), free(g.wr), free(g.ref);
    pthread_cond_broadcast(&st->gc_cv);
  }
  pthread_mutex_unlock(&st->gc_mu);
  return c->rc;
}

/* Disk bytes a put of n new chunks of `bytes` record bytes needs: the records plus the index
 * growth (STORE_IX_CHUNK_BYTES each: chunk, LRU and session entries with LMDB's page overhead;
 * STORE_IX_TXN_BYTES for the put's commit and as much for the session write that lists the
 * chunks), so that what the index writes never comes out of its reserve (store_space.c). */
static uint64_t disk_need(uint64_t bytes, uint64_t n) {
  return n ? bytes + n * STORE_IX_CHUNK_BYTES + 2 * STORE_IX_TXN_BYTES : bytes;
}

/* Disk bytes of the call's records whose key is not stored yet (what a put would write). */
static uint64_t fresh_need(e8s_store *st, put_ctx *c) {
  MDB_txn *txn;
  if (store_rtxn_begin(st, &txn) != E8S_OK) return disk_need(c->bytes, c->n);
  uint64_t b = 0, n = 0;
  for (size_t i = 0; i < c->n; i++) {
    store_chunk_val v;
    if (c->r[i].result == E8S_OK && c->it[i].dup_of < 0 &&
        store_chunk_get(txn, st, c->r[i].key, &v) != E8S_OK)
      b += c->it[i].bytes, n++;
  }
  store_rtxn_end(st, txn);
  return disk_need(b, n);
}

/* Full-disk admission (store_space.c): the call's records fail E8S_ERR_NOSPC before anything
 * is written when the disk cannot take them and the index growth they bring. Records already
 * stored are not counted. */
static int admit(e8s_store *st, put_ctx *c) {
  uint64_t n_ok = 0;
  for (size_t i = 0; i < c->n; i++) n_ok += c->r[i].result == E8S_OK && c->it[i].dup_of < 0;
  uint64_t need = disk_need(c->bytes, n_ok);
  int e = store_space_admit(st, need);
  if (e == E8S_ERR_NOSPC) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", e8s_last_error_detail());
    uint64_t fresh = fresh_need(st, c);
    e = fresh < need ? store_space_admit(st, fresh) : store_err(e, "%s", msg);
  }
  if (e == E8S_OK) return E8S_OK;
  for (size_t i = 0; i < c->n; i++)
    if (c->r[i].result == E8S_OK) c->r[i].result = e;
  return e;
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
  uint64_t t0 = mono_ns();
  for (size_t i = 0; i < n_recs; i++) {
    recs[i].result = prepare(&recs[i], &c.it[i], ns_id, fp_id);
    if (recs[i].result == E8S_OK) c.bytes += c.it[i].bytes;
    for (size_t j = 0; j < i && recs[i].result == E8S_OK; j++)
      if (c.it[j].dup_of < 0 && recs[j].result == E8S_OK &&
          memcmp(recs[j].key, recs[i].key, 32) == 0) {
        c.it[i].dup_of = (int)j;
        break;
      }
  }
  atomic_fetch_add(&st->t_prep_ns, mono_ns() - t0);
  int e = admit(st, &c);
  if (e == E8S_OK) e = group_commit(st, &c);
  free(c.it);
  return e;
}
