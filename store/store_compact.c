/* store_compact.c: compaction. A sealed segment whose dead fraction (bytes no index entry points
 * at) reaches the threshold is rewritten: its live records are read (CRC checked; failures are
 * quarantined), appended to the active segment through the io engine and fsynced, then, in one
 * LMDB transaction, every chunk that still points at its old place is pointed at the copy.
 * When the old segment has no live record left its index entry goes in that same transaction
 * and its file is unlinked once no reader holds it (store_seg_retire). A crash at any point
 * leaves either the old location indexed (the copies are an unindexed tail, cut at open) or the
 * new one. Candidates go emptiest first (fewest live bytes), each only when its live records
 * fit in what the disk has free now: on a full disk the index reserve but its last quarter is
 * lent for the copies (store_space_lend; the quarter kept keeps the compaction's commit and deletes possible)
 * and taken back after; a segment that does not fit is skipped, and a Compact that could do
 * none fails E8S_ERR_NOSPC saying so. Full-disk admission of a put runs the same step
 * (store_compact_for_room) after eviction freed no whole segment. Work is done in pieces of at most 64 MiB under the writer mutex, so puts wait at
 * most one piece. */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "store/store_int.h"

#define COMPACT_PIECE_BYTES (64ull << 20)

typedef struct cand { uint64_t id, end, live; } cand;

static int list_candidates(e8s_store *st, double min_dead, cand **out, size_t *n) {
  *out = NULL;
  *n = 0;
  MDB_txn *txn;
  int e = store_rtxn_begin(st, &txn);
  if (e) return e;
  MDB_cursor *c;
  int rc = mdb_cursor_open(txn, st->db_segs, &c);
  size_t cap = 0;
  MDB_val k, v;
  for (rc = rc ? rc : mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
       rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
    store_seg_val sv;
    if (k.mv_size != 8 || v.mv_size != sizeof sv) continue;
    memcpy(&sv, v.mv_data, sizeof sv);
    uint64_t id = store_rd_be64(k.mv_data);
    uint64_t body = sv.end > STORE_SEG_HDR_BYTES ? sv.end - STORE_SEG_HDR_BYTES : 0;
    double dead = body ? (double)(body - (sv.live < body ? sv.live : body)) / (double)body : 1.0;
    if (dead < min_dead || store_seg_busy(st, id)) continue; /* appended or pending */
    if (*n == cap) {
      cap = cap ? cap * 2 : 16;
      cand *p = realloc(*out, cap * sizeof *p);
      if (!p) {
        e = E8S_ERR_NOMEM;
        break;
      }
      *out = p;
    }
    (*out)[(*n)++] = (cand){id, sv.end, sv.live};
  }
  if (c) mdb_cursor_close(c);
  store_rtxn_end(st, txn);
  return e;
}

typedef struct move {
  uint8_t key[32];
  store_chunk_val rec;   /* where it was */
  void *payload;
  uint8_t hdr[E8S_RECORD_HEADER_BYTES];
  uint64_t new_seg, new_off;
  int written;
} move;

typedef struct piece_ctx {
  move *m;
  size_t n;
  uint64_t seg_id;
  int last;              /* drop the old segment's entry if nothing live is left */
  store_retire_list retire;
  uint64_t moved, moved_bytes;
} piece_ctx;

static int piece_index(e8s_store *st, MDB_txn *txn, void *vc) {
  piece_ctx *c = vc;
  c->retire.n = 0;
  c->moved = c->moved_bytes = 0;
  for (size_t i = 0; i < c->n; i++) {
    move *m = &c->m[i];
    if (!m->written) continue;
    /* the copy is below the index end even when it is not used (replay never revives it) */
    int e = store_seg_cover(txn, st, m->new_seg, m->new_off, store_rec_bytes(m->rec.payload_bytes));
    if (e) return e;
    store_chunk_val v;
    e = store_chunk_get(txn, st, m->key, &v);
    if (e == E8S_ERR_NOTFOUND) continue; /* evicted meanwhile: the copy is dead */
    if (e) return e;
    if (v.seg_id != m->rec.seg_id || v.offset != m->rec.offset) continue;
    uint64_t retire;
    if ((e = store_chunk_relocate(txn, st, m->key, &v, m->new_seg, m->new_off, &retire)) ||
        (e = store_retire_add(&c->retire, retire)))
      return e;
    c->moved++;
    c->moved_bytes += store_rec_bytes(v.payload_bytes);
  }
  if (c->last) {
    uint8_t sk[8];
    store_be64(sk, c->seg_id);
    store_seg_val sv;
    int e = store_get_fixed(txn, st->db_segs, sk, 8, &sv, sizeof sv);
    if (e == E8S_OK && sv.live == 0) {
      if ((e = store_seg_index_drop(txn, st, c->seg_id))) return e;
      return store_retire_add(&c->retire, c->seg_id);
    }
    if (e != E8S_ERR_NOTFOUND) return e;
  }
  return E8S_OK;
}

/* Writes the piece's copies (write pipeline) and points the index at them. */
static int move_piece(e8s_store *st, piece_ctx *c) {
  store_wrec *w = calloc(c->n ? c->n : 1, sizeof *w);
  size_t *map = calloc(c->n ? c->n : 1, sizeof *map);
  if (!w || !map) {
    free(w), free(map);
    return E8S_ERR_NOMEM;
  }
  pthread_mutex_lock(&st->wlock);
  int e = E8S_OK;
  size_t nw = 0;
  for (size_t i = 0; i < c->n; i++) {
    move *m = &c->m[i];
    if (!m->payload) continue;
    store_rec_hdr_encode(m->hdr, m->key, &m->rec);
    w[nw].iov[0] = (struct iovec){m->hdr, sizeof m->hdr};
    w[nw].iov[1] = (struct iovec){m->payload, m->rec.payload_bytes};
    w[nw].bytes = store_rec_bytes(m->rec.payload_bytes);
    map[nw++] = i;
  }
  if (nw) {
    uint64_t t = store_wp_write_all(st, 0, w, nw); /* a failed piece leaves nothing */
    store_wp_sync(st, 0, t, w, nw);
  }
  for (size_t j = 0; j < nw && !e; j++) {
    if (w[j].err) {
      e = w[j].err; /* the detail was set in this thread */
      break;
    }
    c->m[map[j]].new_seg = w[j].seg_id;
    c->m[map[j]].new_off = w[j].off;
  }
  for (size_t i = 0; i < c->n && !e; i++) c->m[i].written = c->m[i].payload != NULL;
  if (!e) e = store_wtxn_run_locked(st, piece_index, c);
  pthread_mutex_unlock(&st->wlock);
  store_wp_release(st, w, nw);
  free(w), free(map);
  if (e == E8S_OK) store_retire_apply(st, &c->retire);
  else free(c->retire.ids);
  memset(&c->retire, 0, sizeof c->retire);
  return e;
}

/* Collects the live records of segment id (index scan) and moves them piece by piece. */
static int compact_one(e8s_store *st, uint64_t id, e8s_compact_report *rep) {
  enum { PAGE = 512 };
  scan_item *page = malloc(PAGE * sizeof *page);
  move *m = calloc(PAGE, sizeof *m);
  if (!page || !m) {
    free(page), free(m);
    return E8S_ERR_NOMEM;
  }
  piece_ctx c = {.m = m, .seg_id = id};
  uint64_t piece_bytes = 0;
  uint8_t after[32];
  int have_after = 0, e = E8S_OK;
  for (;;) {
    size_t n;
    if ((e = store_scan_page(st, have_after ? after : NULL, page, PAGE, &n))) break;
    int end = n == 0;
    for (size_t i = 0; i < n && !e; i++) {
      if (page[i].rec.seg_id != id) continue;
      move *mv = &m[c.n];
      memset(mv, 0, sizeof *mv);
      memcpy(mv->key, page[i].key, 32);
      mv->rec = page[i].rec;
      mv->payload = malloc(mv->rec.payload_bytes);
      if (!mv->payload) {
        e = E8S_ERR_NOMEM;
        break;
      }
      uint32_t found;
      int r = store_seg_read_payload(st, &mv->rec, mv->key, mv->payload, &found);
      if (r == E8S_ERR_DATALOSS) store_quarantine(st, mv->key, &mv->rec, found);
      if (r != E8S_OK) {
        free(mv->payload);
        if (r != E8S_ERR_DATALOSS && r != E8S_ERR_NOTFOUND) e = r;
        continue;
      }
      piece_bytes += mv->rec.payload_bytes;
      c.n++;
      if (c.n == PAGE || piece_bytes >= COMPACT_PIECE_BYTES) {
        e = move_piece(st, &c);
        rep->records_moved += c.moved;
        rep->bytes_moved += c.moved_bytes;
        for (size_t j = 0; j < c.n; j++) free(m[j].payload);
        c.n = 0;
        piece_bytes = 0;
      }
    }
    if (e || end) break;
    memcpy(after, page[n - 1].key, 32);
    have_after = 1;
  }
  if (!e) {
    c.last = 1;
    e = move_piece(st, &c);
    rep->records_moved += c.moved;
    rep->bytes_moved += c.moved_bytes;
  }
  for (size_t j = 0; j < c.n; j++) free(m[j].payload);
  free(page);
  free(m);
  return e;
}

static int by_live(const void *a, const void *b) {
  const cand *x = a, *y = b;
  if (x->live != y->live) return x->live < y->live ? -1 : 1;
  return x->id < y->id ? -1 : x->id > y->id;
}

/* Room a segment's copies take beyond their bytes: a new segment's header page, page ends. */
#define COMPACT_SLACK (16ull << 10)

/* Compacts c if its live records fit in what is free (borrowing the index reserve on a
 * full disk); *fit = 0 and nothing done if they do not. */
static int compact_fit(e8s_store *st, const cand *c, e8s_compact_report *rep, int *fit,
                       uint64_t *need_out, uint64_t *room_out) {
  uint64_t need = c->live ? c->live + COMPACT_SLACK : 0, r = store_space_room(st), lent = 0;
  *need_out = need, *room_out = r;
  if (r < need && (lent = store_space_lend(st, need - r)) == 0) {
    *fit = 0;
    return E8S_OK;
  }
  *fit = 1;
  int e = compact_one(st, c->id, rep);
  if (lent) store_space_lend_end(st);
  return e;
}

/* Bytes of blocks segment id's file holds (0 if it cannot be stat'ed). */
static uint64_t file_blocks(e8s_store *st, uint64_t id) {
  char *p = store_seg_path(st, id);
  struct stat sb;
  uint64_t b = p && stat(p, &sb) == 0 ? (uint64_t)sb.st_blocks * 512 : 0;
  free(p);
  return b;
}

uint64_t store_compact_for_room(e8s_store *st, uint64_t need) {
  if (st->readonly) return 0;
  cand *cs;
  size_t n;
  if (list_candidates(st, 0.01, &cs, &n) != E8S_OK) return 0;
  if (n) qsort(cs, n, sizeof *cs, by_live); /* cs is NULL when n is 0 */
  e8s_compact_report rep = {0};
  uint64_t skipped = 0;
  for (size_t i = 0, done = 0; i < n && done < 4 && store_space_room(st) < need; i++) {
    int fit;
    uint64_t nd, r;
    if (file_blocks(st, cs[i].id) <= cs[i].live + COMPACT_SLACK / 2)
      continue; /* a copy gains nothing: its dead blocks were given back (store_punch.c) */
    if (compact_fit(st, &cs[i], &rep, &fit, &nd, &r) != E8S_OK) break;
    done += fit;
    if (!fit) { /* the next ones have more live records */
      skipped = nd;
      break;
    }
  }
  free(cs);
  return skipped;
}

/* Compacts the candidates cs[0..n) that fit, in order; counts the skipped ones, and what the
 * first skipped one needed and found free. */
static int compact_pass(e8s_store *st, const cand *cs, size_t n, e8s_compact_report *rep,
                        e8s_progress_fn fn, void *ctx, size_t *skipped, uint64_t *need0,
                        uint64_t *room0) {
  int e = E8S_OK;
  *skipped = 0;
  for (size_t i = 0; i < n && !e; i++) {
    uint64_t before = rep->bytes_moved, need, r;
    int fit;
    e = compact_fit(st, &cs[i], rep, &fit, &need, &r);
    if (e) break;
    if (!fit) { /* its copies do not fit on the disk now: the later ones have more */
      if (!(*skipped)++) *need0 = need, *room0 = r;
      continue;
    }
    rep->segments_compacted++;
    uint64_t moved = rep->bytes_moved - before;
    rep->bytes_reclaimed += cs[i].end > moved ? cs[i].end - moved : 0;
    if (fn && fn(ctx, i + 1, n)) break;
  }
  return e;
}

int e8s_compact(e8s_store *st, double min_dead_ratio, e8s_compact_report *rep,
                e8s_progress_fn fn, void *ctx) {
  if (!st || !rep || !(min_dead_ratio >= 0.0 && min_dead_ratio <= 1.0))
    return store_err(E8S_ERR_INVAL, "compact: bad argument");
  memset(rep, 0, sizeof *rep);
  if (st->readonly) return store_err(E8S_ERR_READONLY, "compact: store opened read-only");
  cand *cs;
  size_t n;
  int e = list_candidates(st, min_dead_ratio, &cs, &n);
  if (!e && n) qsort(cs, n, sizeof *cs, by_live); /* emptiest first: the most room for the least copying */
  size_t skipped = 0;
  uint64_t need0 = 0, room0 = 0;
  if (!e) e = compact_pass(st, cs, n, rep, fn, ctx, &skipped, &need0, &room0);
  if (!e && skipped && !rep->segments_compacted) {
    /* a full disk: give the dead records' blocks back (store_punch.c), then try again */
    uint64_t punched = store_space_punch(st);
    rep->bytes_reclaimed += punched;
    if (punched) e = compact_pass(st, cs, n, rep, fn, ctx, &skipped, &need0, &room0);
    if (!e && punched && !rep->segments_compacted) skipped = 0; /* space came back anyway */
  }
  free(cs);
  if (!e && skipped && !rep->segments_compacted)
    e = store_err(E8S_ERR_NOSPC, "compact: disk full: the emptiest segment's live records need "
                  "%llu bytes, %llu free (with the index reserve lent but %llu bytes)%s; delete "
                  "sessions (the next put evicts their chunks) or free disk space",
                  (unsigned long long)need0, (unsigned long long)room0,
                  (unsigned long long)(st->ix_reserve / 4),
                  atomic_load(&st->punch_off) || store_fault_no_punch()
                      ? "; this file system does not punch holes: deleted chunks give space "
                        "back only with their whole segment"
                      : "");
  return e;
}

static int noop_fn(e8s_store *st, MDB_txn *txn, void *ctx) {
  (void)st, (void)txn, (void)ctx;
  return E8S_OK;
}

int e8s_maintain(e8s_store *st) {
  if (!st) return store_err(E8S_ERR_INVAL, "maintain: NULL store");
  store_lease_expire(st, store_mono_ms());
  if (st->readonly) return E8S_OK;
  pthread_mutex_lock(&st->pin_mu);
  size_t touches = st->n_touches;
  pthread_mutex_unlock(&st->pin_mu);
  if (touches) { /* apply pending LRU touches (no commit, no fsync when idle) */
    int e = store_wtxn_run(st, noop_fn, NULL);
    if (e) return e;
  }
  /* fully dead sealed segments: compaction with nothing to move just drops them */
  e8s_compact_report rep;
  return e8s_compact(st, 1.0, &rep, NULL, NULL);
}
