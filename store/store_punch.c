/* store_punch.c: on a full disk, gives the blocks of dead records in sealed segments back to
 * the file system (fallocate FALLOC_FL_PUNCH_HOLE), so that deleting sessions frees disk in
 * proportion to what was deleted, without a copy: on a full disk a copy may not fit (segments
 * larger than the index reserve can lend, e.g. written before the segment size was bounded,
 * store_space.c), and when few records are dead a segment is not worth compacting.
 *
 * Why it is safe (no live byte is ever punched, no reader ever sees a punched live record):
 *   - only sealed segments with no pending record (store_seg_busy false) are punched, and that
 *     is checked BEFORE the index snapshot is taken: such a segment never gets a record again
 *     (new records go to new active segments), so its live set only shrinks: a range dead in
 *     the snapshot stays dead;
 *   - a range is dead when no chunk of the snapshot points into it, within [segment header,
 *     index end of the segment); only whole file-system blocks inside it are punched (records
 *     are not block aligned: the blocks a live record shares with a dead one stay);
 *   - a chunk value of a size the store does not know stops the whole pass (nothing punched);
 *   - the index is flushed (store_index_sync) after the snapshot and before any punch, so a
 *     power loss cannot bring back a commit older than the removal that made a range dead
 *     (a lazy put commit that evicted to make room, store_put.c);
 *   - a segment is punched under the segment table's mutex and only while no in-process reader
 *     holds it (store_seg_punch); e8s_chunk_open checks the index again once it holds the
 *     segment, so a reader with an older snapshot never reads a punched range as its record;
 *     a reader elsewhere (read-only process) that does gets a CRC mismatch, and e8s_chunk_read
 *     and e8s_verify report it as NOTFOUND (moved or evicted meanwhile) when the index no
 *     longer points at that record, DATALOSS only when it still does.
 * Replay at open reads only past the index end, verify and compaction only live records: no
 * reader of the format looks at a dead range. A file system without hole punching
 * (EOPNOTSUPP) turns the pass off for the rest of the open; deleting then frees space only by
 * emptying or compacting whole segments (e8store.h FULL DISK). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "store/store_int.h"

typedef struct pext { uint64_t seg, off, end; } pext;
typedef struct pseg { uint64_t id, end; } pseg;

static int by_seg_off(const void *a, const void *b) {
  const pext *x = a, *y = b;
  if (x->seg != y->seg) return x->seg < y->seg ? -1 : 1;
  return x->off < y->off ? -1 : x->off > y->off;
}

static int by_id(const void *a, const void *b) {
  const pseg *x = a, *y = b;
  return x->id < y->id ? -1 : x->id > y->id;
}

static pseg *seg_find(pseg *s, size_t n, uint64_t id) {
  pseg k = {.id = id};
  return n ? bsearch(&k, s, n, sizeof *s, by_id) : NULL;
}

static int push(void **arr, size_t *n, size_t *cap, size_t sz, const void *item) {
  if (*n == *cap) {
    size_t c = *cap ? *cap * 2 : 64;
    void *p = realloc(*arr, c * sz);
    if (!p) return -1;
    *arr = p, *cap = c;
  }
  memcpy((char *)*arr + *n * sz, item, sz);
  (*n)++;
  return 0;
}

/* Sealed segments with nothing pending now (index order = id order). */
static int idle_segments(e8s_store *st, pseg **out, size_t *n) {
  size_t cap = 0;
  MDB_txn *txn;
  int e = store_rtxn_begin(st, &txn);
  if (e) return e;
  MDB_cursor *c = NULL;
  int rc = mdb_cursor_open(txn, st->db_segs, &c);
  MDB_val k, v;
  for (rc = rc ? rc : mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0 && !e;
       rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
    if (k.mv_size != 8) continue;
    pseg s = {.id = store_rd_be64(k.mv_data)};
    if (!store_seg_busy(st, s.id) && push((void **)out, n, &cap, sizeof s, &s)) e = E8S_ERR_NOMEM;
  }
  if (c) mdb_cursor_close(c);
  store_rtxn_end(st, txn);
  return e;
}

/* One snapshot: the index end of each segment in segs and the live extents in them. */
static int snapshot(e8s_store *st, pseg *segs, size_t ns, pext **out, size_t *n) {
  size_t cap = 0;
  MDB_txn *txn;
  int e = store_rtxn_begin(st, &txn);
  if (e) return e;
  for (size_t i = 0; i < ns && !e; i++) {
    uint8_t sk[8];
    store_be64(sk, segs[i].id);
    store_seg_val sv;
    int r = store_get_fixed(txn, st->db_segs, sk, 8, &sv, sizeof sv);
    if (r == E8S_OK) segs[i].end = sv.end;
    else if (r != E8S_ERR_NOTFOUND) e = r; /* NOTFOUND: dropped meanwhile, end 0 */
  }
  MDB_cursor *c = NULL;
  int rc = e ? 0 : mdb_cursor_open(txn, st->db_chunks, &c);
  MDB_val k, v;
  for (rc = (rc || e) ? rc : mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0 && !e;
       rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
    if (k.mv_size != 32 ||
        (v.mv_size != sizeof(store_chunk_val) && v.mv_size != STORE_CHUNK_VAL_V1)) {
      e = store_err(E8S_ERR_CORRUPT, "punch: chunk value of %zu bytes", v.mv_size);
      break; /* a value not understood: its record's place is unknown, punch nothing */
    }
    store_chunk_val cv;
    memset(&cv, 0, sizeof cv);
    memcpy(&cv, v.mv_data, v.mv_size);
    if (!seg_find(segs, ns, cv.seg_id)) continue;
    pext x = {cv.seg_id, cv.offset, cv.offset + store_rec_bytes(cv.payload_bytes)};
    if (push((void **)out, n, &cap, sizeof x, &x)) e = E8S_ERR_NOMEM;
  }
  if (rc && rc != MDB_NOTFOUND && !e) e = store_err_mdb(rc, "punch: cursor");
  if (c) mdb_cursor_close(c);
  store_rtxn_end(st, txn);
  return e;
}

/* Dead ranges of segment s given its live extents x[0..n) (sorted by offset); punches them. */
static uint64_t punch_segment(e8s_store *st, const pseg *s, const pext *x, size_t n,
                              int *missed) {
  uint64_t(*gaps)[2] = malloc((n + 1) * sizeof *gaps);
  if (!gaps) return 0;
  size_t ng = 0;
  uint64_t at = STORE_SEG_HDR_BYTES;
  for (size_t i = 0; i < n && at < s->end; i++) {
    if (x[i].off > at) gaps[ng][0] = at, gaps[ng][1] = x[i].off < s->end ? x[i].off : s->end, ng++;
    if (x[i].end > at) at = x[i].end;
  }
  if (at < s->end) gaps[ng][0] = at, gaps[ng][1] = s->end, ng++;
  uint64_t freed = 0;
  int rc = 0;
  /* readers hold a segment for one chunk's read: wait for a moment without one (a reader
   * that keeps an e8s_chunk open holds it longer: its segment is skipped this time) */
  for (int t = 0; ng && t < 50; t++) {
    rc = store_seg_punch(st, s->id, (const uint64_t(*)[2])gaps, ng, &freed);
    if (rc != 2) break;
    nanosleep(&(struct timespec){0, 200000}, NULL);
  }
  if (rc == -EOPNOTSUPP) atomic_store(&st->punch_off, 1);
  if (rc) *missed = 1; /* a reader held it, it became busy, or an error: look again later */
  free(gaps);
  return freed;
}

uint64_t store_space_punch(e8s_store *st) {
  if (st->readonly || atomic_load(&st->punch_off) || store_fault_no_punch()) return 0;
  /* nothing became dead since a pass that missed nothing (a full disk refusing every put of
   * a client that retries would otherwise scan the index and flush it at every put). Read
   * under the writer mutex: every removal counted is committed before the snapshot. */
  pthread_mutex_lock(&st->wlock);
  uint64_t gen = atomic_load(&st->dead_gen);
  pthread_mutex_unlock(&st->wlock);
  if (gen == atomic_load(&st->punched_gen)) return 0;
  pseg *segs = NULL;
  pext *x = NULL;
  size_t ns = 0, nx = 0;
  uint64_t freed = 0;
  int missed = 0;
  int e = idle_segments(st, &segs, &ns);
  if (!e && ns) {
    qsort(segs, ns, sizeof *segs, by_id);
    e = snapshot(st, segs, ns, &x, &nx);
  }
  if (!e && ns) {
    pthread_mutex_lock(&st->wlock); /* no commit half done: every removal seen is flushed */
    e = store_index_sync(st);
    pthread_mutex_unlock(&st->wlock);
  }
  if (!e && ns) {
    if (nx) qsort(x, nx, sizeof *x, by_seg_off);
    size_t j = 0;
    for (size_t i = 0; i < ns && !atomic_load(&st->punch_off); i++) {
      while (j < nx && x[j].seg < segs[i].id) j++;
      size_t k = j;
      while (k < nx && x[k].seg == segs[i].id) k++;
      if (segs[i].end > STORE_SEG_HDR_BYTES)
        freed += punch_segment(st, &segs[i], x + j, k - j, &missed);
      j = k;
    }
  }
  if (!e && !missed) atomic_store(&st->punched_gen, gen);
  free(segs);
  free(x);
  return freed;
}
