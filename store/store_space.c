/* store_space.c: a full disk. Keeps the index able to commit deletes on a full disk, refuses
 * puts before the disk is full, evicts cache entries when the disk (not the budget) is short,
 * and tells a full disk from an I/O error when LMDB fails a commit.
 *
 * Index reserve: LMDB writes its pages with pwrite at the end of its data file, so on a full
 * disk every commit that needs a new page fails (short write: LMDB says EIO), deletes and
 * compaction included: space could never be freed through the API. So the data file is kept
 * allocated (fallocate FALLOC_FL_KEEP_SIZE: blocks past the end of the file, its size and
 * LMDB's view unchanged) reserve bytes past the last page in use: after every write commit the
 * allocation is raised again. When that fails (the disk is full) the store is "short": puts
 * and new sessions are refused with E8S_ERR_NOSPC before they write anything, while deletes,
 * evictions, compaction and quarantine commit into the reserve.
 *
 * Sizes (store_space_sizes, at open, from the file system's size FS): the reserve R starts at
 * e8s_config.index_reserve_bytes (at most FS/16, at least 64 KiB); its ceiling Rmax is that
 * raised to one segment (segment_bytes) where that is at most FS/64 (also at most FS/16); the
 * segment size in use is min(segment_bytes, Rmax/2). R becomes Rmax (store_space_seg_grew)
 * once a segment reaches R/2 (sealed, or found at open): until then every segment's copy fits
 * in R's lent part anyway, and a store that holds little (tests, a fresh daemon) does not
 * take Rmax (1 GiB on a large disk) from the disk: raising it at open for every store filled
 * this machine's shared disk with the reserves of the test runs' leftover directories. Why: on a full disk whose segments all stay about half live (every
 * other session deleted) only compaction frees space, and its copy of the emptiest segment
 * must fit in the lent reserve: R less its last quarter, less what deletes on the full disk
 * took from it (measured: 60-80 KiB after 100 deletes and evictions on a 4 MiB disk). Half of
 * an R/2 segment (R/4) plus slack fits in that on file systems of 4 MiB and more. Bounding the
 * segment by R keeps the reserve <= FS/16 on small disks (8 MiB: 256 KiB segments); raising
 * R to a segment on large ones keeps segments large (>= 64 GiB: 512 MiB segments, a 1 GiB
 * reserve once the store holds a segment, <= 1.6 %) rather than 8 MiB ones (131072 open files per TB, a segment start every
 * 8 MiB of puts). Segments written before (or on a larger file system) keep their size.

 * Admission of a put (store_space_admit, before its data stage): the file system's free bytes
 * plus what the write lanes have allocated ahead must cover the call's record bytes plus
 * ADMIT_SLACK; if not, or if the index is short, unpinned chunks are evicted in LRU order (as a
 * budget would) until segment files that became empty give the bytes back, then the check is
 * made again; if no segment became empty, the emptiest sealed segments whose live records fit
 * are compacted (store_compact_for_room: the index reserve but its last quarter is lent for
 * the copies, store_space_lend; a segment whose copy would gain no block is skipped); if that
 * is not enough either (segments too large to copy on this disk, or too live), the dead
 * records' whole blocks are given back where they lie (store_space_punch, store_punch.c); a
 * put that still does not fit fails E8S_ERR_NOSPC without writing, saying what it needs and
 * what is free (and, on a file system without hole punching, why deleting did not help). A
 * put admitted on a disk that fills meanwhile (other writers, other processes) still gets
 * ENOSPC from its write or its fdatasync: E8S_ERR_NOSPC, nothing of it visible. Active
 * segments are not allocated ahead where that would leave less free than the index reserve
 * (store_seg.c: the lent reserve must come back after a compaction).
 *
 * Index files at open (store_space_prealloc, before mdb_env_open): LMDB ftruncates its lock file
 * (sparse) and writes it through a shared mmap, so a page of it with no block behind it is a
 * SIGBUS on a full disk: at open (reader slot on a fresh page) or later (the 65th reader of a
 * running daemon). So every read-write open allocates the whole lock file first (fallocate
 * KEEP_SIZE: blocks only, LMDB sizes it), and the first pages plus the minimum reserve of the
 * data file; a full disk fails the open with E8S_ERR_NOSPC naming the directory. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "store/store_int.h"

#define SPACE_RESERVE_MIN (64ull << 10)

/* Blocks for [0, bytes) of DIR/name (created if missing), its size unchanged; 0 or errno. */
static int prealloc_file(const char *ixdir, const char *name, uint64_t bytes, int *was_new) {
  char path[4200];
  snprintf(path, sizeof path, "%s/%s", ixdir, name);
  int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return errno;
  struct stat sb;
  int e = fstat(fd, &sb) == 0 ? 0 : errno;
  if (!e && (uint64_t)sb.st_size > bytes) bytes = (uint64_t)sb.st_size;
  if (!e) *was_new = sb.st_size == 0;
  if (!e && fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, (off_t)bytes) != 0) e = errno;
  if (e == EOPNOTSUPP || e == ENOSYS) e = 0; /* no fallocate here: nothing to allocate ahead */
  close(fd);
  return e;
}

int store_space_prealloc(e8s_store *st, const char *ixdir) {
  if (st->readonly) return E8S_OK;
  /* LMDB's lock file: a 64-byte slot per reader after a header of a few cache lines */
  uint64_t lock = ((uint64_t)(STORE_MAXREADERS + 8) * 64 + 4095) & ~4095ull;
  int lock_new = 0, data_new = 0;
  int e = prealloc_file(ixdir, "lock.mdb", lock, &lock_new);
  const char *what = "lock.mdb";
  if (!e) {
    e = prealloc_file(ixdir, "data.mdb", SPACE_RESERVE_MIN, &data_new);
    what = "data.mdb";
    /* an existing data file's reserve is store_space_refill's business (short, not failed) */
    if ((e == ENOSPC || e == EDQUOT) && !data_new) e = 0;
  }
  if (!e) return E8S_OK;
  if (e == ENOSPC || e == EDQUOT)
    return store_err(E8S_ERR_NOSPC, "disk full: cannot allocate the index (%s) in %s; free "
                     "disk space", what, st->dir);
  return store_err(store_err_errno(-e), "index: allocate %s/%s: %s", ixdir, what, strerror(e));
}

static uint64_t fs_avail(const char *path, uint64_t *total) {
  struct statvfs v;
  if (statvfs(path, &v) != 0) {
    if (total) *total = 0;
    return UINT64_MAX; /* unknown: don't refuse on a guess */
  }
  if (total) *total = (uint64_t)v.f_blocks * v.f_frsize;
  return (uint64_t)v.f_bavail * v.f_frsize;
}

/* Index pages in use, bytes (the meta's last page). */
static uint64_t index_used_end(e8s_store *st) {
  MDB_envinfo info;
  mdb_env_info(st->env, &info);
  return (uint64_t)(info.me_last_pgno + 1) * st->ix_psize;
}

void store_space_sizes(uint64_t fs_bytes, uint64_t cfg_reserve, uint64_t cfg_segment,
                       uint64_t *reserve, uint64_t *reserve_max, uint64_t *segment) {
  uint64_t fs = fs_bytes ? fs_bytes : UINT64_MAX;
  uint64_t r = cfg_reserve, m = cfg_segment < fs / 64 ? cfg_segment : fs / 64;
  if (m < r) m = r;         /* room for a segment when it costs at most 1/64 of the disk */
  if (r > fs / 16) r = fs / 16;
  if (m > fs / 16) m = fs / 16;
  if (r < SPACE_RESERVE_MIN) r = SPACE_RESERVE_MIN;
  if (m < SPACE_RESERVE_MIN) m = SPACE_RESERVE_MIN;
  *reserve = r;
  *reserve_max = m;
  *segment = cfg_segment < m / 2 ? cfg_segment : m / 2;
}

void store_space_seg_grew(e8s_store *st, uint64_t seg_bytes) {
  uint64_t r = atomic_load(&st->ix_reserve);
  if (seg_bytes >= r / 2 && r < st->ix_reserve_max) atomic_store(&st->ix_reserve, st->ix_reserve_max);
}

/* The largest segment the index knows (bytes covered), 0 if none or on error. */
static uint64_t largest_segment(e8s_store *st) {
  MDB_txn *txn;
  if (store_rtxn_begin(st, &txn)) return 0;
  MDB_cursor *c;
  uint64_t big = 0;
  MDB_val k, v;
  if (mdb_cursor_open(txn, st->db_segs, &c) == 0) {
    for (int rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
      store_seg_val sv;
      if (v.mv_size != sizeof sv) continue;
      memcpy(&sv, v.mv_data, sizeof sv);
      if (sv.end > big) big = sv.end;
    }
    mdb_cursor_close(c);
  }
  store_rtxn_end(st, txn);
  return big;
}

int store_space_open(e8s_store *st) {
  uint64_t total = 0, r;
  fs_avail(st->dir, &total);
  store_space_sizes(total, st->cfg.index_reserve_bytes, st->cfg.segment_bytes, &r,
                    &st->ix_reserve_max, &st->seg_bytes);
  atomic_store(&st->ix_reserve, r);
  atomic_store(&st->punched_gen, UINT64_MAX); /* dead records of before the open: one pass */
  if (store_fault_uncapped_segments()) st->seg_bytes = st->cfg.segment_bytes;
  if (st->readonly) return E8S_OK;
  MDB_stat ms;
  int rc = mdb_env_stat(st->env, &ms);
  if (!rc) rc = mdb_env_get_fd(st->env, &st->ix_fd);
  if (rc) return store_err_mdb(rc, "index: stat");
  st->ix_psize = ms.ms_psize;
  store_space_seg_grew(st, largest_segment(st));
  store_space_refill(st);
  return E8S_OK;
}

void store_space_refill(e8s_store *st) {
  if (st->readonly || st->ix_fd < 0 || !st->ix_psize || atomic_load(&st->ix_lent)) return;
  uint64_t want = index_used_end(st) + st->ix_reserve;
  if (want <= atomic_load(&st->ix_alloc_end) && !atomic_load(&st->ix_short)) return;
  /* refill in steps of a quarter reserve, so a commit costs no fallocate most of the time */
  uint64_t to = want + st->ix_reserve / 4;
  int ok = fallocate(st->ix_fd, FALLOC_FL_KEEP_SIZE, 0, (off_t)to) == 0;
  if (!ok && errno != ENOSPC && errno != EDQUOT) ok = 1; /* no fallocate here: no reserve */
  if (ok) atomic_store(&st->ix_alloc_end, to);
  else if (fallocate(st->ix_fd, FALLOC_FL_KEEP_SIZE, 0, (off_t)want) == 0) {
    atomic_store(&st->ix_alloc_end, want);
    ok = 1;
  }
  atomic_store(&st->ix_short, !ok);
}

static uint64_t room(e8s_store *st);

int store_space_commit_err(e8s_store *st, int mdb_rc) {
  int e = store_err_mdb(mdb_rc, "commit");
  if (e != E8S_ERR_IO && e != E8S_ERR_NOSPC) return e;
  /* LMDB reports a short page write as EIO: on a file system without room it is a full disk */
  uint64_t avail = fs_avail(st->dir, NULL);
  if (mdb_rc == ENOSPC || mdb_rc == EDQUOT || avail < st->ix_reserve + st->ix_psize) {
    atomic_store(&st->ix_short, 1);
    return store_err(E8S_ERR_NOSPC, "index: commit: disk full (%llu bytes free: %s)",
                     (unsigned long long)(avail == UINT64_MAX ? 0 : avail),
                     mdb_strerror(mdb_rc));
  }
  return e;
}

uint64_t store_space_lend(e8s_store *st, uint64_t need) {
  if (st->readonly || st->ix_fd < 0 || !st->ix_psize) return 0;
  int zero = 0;
  if (!atomic_compare_exchange_strong(&st->ix_lent, &zero, 1)) return 0;
  uint64_t lent = 0;
  pthread_mutex_lock(&st->wlock); /* no index write transaction writes pages meanwhile */
  struct stat sb;
  uint64_t keep = index_used_end(st);
  if (fstat(st->ix_fd, &sb) == 0 && (uint64_t)sb.st_size > keep) keep = (uint64_t)sb.st_size;
  keep += st->ix_reserve / 4 > (32u << 10) ? st->ix_reserve / 4 : (32u << 10);
  uint64_t end = atomic_load(&st->ix_alloc_end);
  if (end > keep && end - keep >= need &&
      fallocate(st->ix_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)keep,
                (off_t)(end - keep)) == 0) {
    lent = end - keep;
    atomic_store(&st->ix_alloc_end, keep);
    atomic_store(&st->ix_short, 1); /* puts wait for the reserve to come back */
  }
  pthread_mutex_unlock(&st->wlock);
  if (!lent) atomic_store(&st->ix_lent, 0);
  return lent;
}

void store_space_lend_end(e8s_store *st) {
  pthread_mutex_lock(&st->wlock);
  atomic_store(&st->ix_lent, 0);
  store_space_refill(st);
  pthread_mutex_unlock(&st->wlock);
}

uint64_t store_space_room(e8s_store *st) { return room(st); }

static uint64_t room(e8s_store *st) {
  uint64_t ahead = 0;
  for (int i = 0; i < STORE_LANES; i++) ahead += atomic_load(&st->lanes[i].ahead);
  uint64_t avail = fs_avail(st->segdir, NULL);
  return avail == UINT64_MAX ? UINT64_MAX : avail + ahead;
}

typedef struct evict_ctx {
  uint64_t need, freed;
  store_retire_list rs;
} evict_ctx;

static int evict_fn(e8s_store *st, MDB_txn *txn, void *ctx) {
  evict_ctx *c = ctx;
  return store_evict(txn, st, 0, c->need, &c->freed, &c->rs);
}

/* Bytes of the files of segments in rs (what unlinking them gives back, at most). */
static uint64_t files_bytes(e8s_store *st, const store_retire_list *rs) {
  uint64_t sum = 0;
  for (size_t i = 0; i < rs->n; i++) {
    char *p = store_seg_path(st, rs->ids[i]);
    struct stat sb;
    if (p && stat(p, &sb) == 0) sum += (uint64_t)sb.st_blocks * 512;
    free(p);
  }
  return sum;
}

/* Evicts LRU unpinned chunks until segment files that became empty give back `need` bytes, or
 * nothing is left to evict. Each step is its own (durable) commit into the index reserve. */
static uint64_t evict_for_disk(e8s_store *st, uint64_t need) {
  uint64_t back = 0, freed = 0;
  for (int step = 0; step < 256 && back < need; step++) {
    evict_ctx c = {.need = need};
    int e = store_wtxn_run_untouched(st, evict_fn, &c);
    freed += e ? 0 : c.freed;
    if (e || c.freed == 0) {
      free(c.rs.ids);
      return freed;
    }
    back += files_bytes(st, &c.rs);
    store_retire_apply(st, &c.rs);
    pthread_mutex_lock(&st->wlock);
    store_space_refill(st);
    pthread_mutex_unlock(&st->wlock);
  }
  return freed;
}

int store_space_evict_room(e8s_store *st) { return evict_for_disk(st, st->ix_reserve) > 0; }

static void refill_locked(e8s_store *st) {
  pthread_mutex_lock(&st->wlock);
  store_space_refill(st);
  pthread_mutex_unlock(&st->wlock);
}

/* 1 if `bytes` of records can be written now: the index is not short and the room covers
 * them plus ADMIT_SLACK, two 4 KiB blocks: a record that starts a new segment takes the
 * header's block too, one that does not fit in the active segment's allocated tail leaves the
 * tail's partial block behind (measured: a 16576-byte record in a new segment takes 20480). */
#define ADMIT_SLACK (8ull << 10)
static int fits(e8s_store *st, uint64_t bytes, uint64_t *r) {
  *r = room(st);
  return !atomic_load(&st->ix_short) && (*r == UINT64_MAX || *r >= bytes + ADMIT_SLACK);
}

int store_space_admit(e8s_store *st, uint64_t bytes) {
  if (!bytes) return E8S_OK;
  uint64_t r;
  if (fits(st, bytes, &r)) return E8S_OK;
  refill_locked(st); /* maybe space came back (deletes, another process) */
  if (fits(st, bytes, &r)) return E8S_OK;
  /* 1. evict unpinned chunks until segment files that became empty give the bytes back */
  evict_for_disk(st, bytes + ADMIT_SLACK - (r < bytes + ADMIT_SLACK ? r : 0) + st->ix_reserve);
  if (fits(st, bytes, &r)) return E8S_OK;
  /* 2. no file became empty: compact the emptiest segments whose copy fits (whole segments
   *    come back) */
  uint64_t seg_need = store_compact_for_room(st, bytes + ADMIT_SLACK + st->ix_reserve);
  refill_locked(st);
  if (fits(st, bytes, &r)) return E8S_OK;
  /* 3. none fits (segments too large for what is free, or too live to be worth a copy): give
   *    the dead records' blocks back where they lie (store_punch.c) */
  if (store_space_punch(st)) refill_locked(st);
  if (fits(st, bytes, &r)) return E8S_OK;
  char why[256] = "";
  if (seg_need && (atomic_load(&st->punch_off) || store_fault_no_punch()))
    snprintf(why, sizeof why, "; this file system does not punch holes, so deleted chunks "
             "give space back only with their whole segment: the emptiest one's live records "
             "(%llu bytes) do not fit to be compacted", (unsigned long long)seg_need);
  if (atomic_load(&st->ix_short))
    return store_err(E8S_ERR_NOSPC, "disk full: the index keeps its last %llu bytes for "
                     "deletes (%llu bytes free)%s; delete sessions or free disk space",
                     (unsigned long long)st->ix_reserve,
                     (unsigned long long)(r == UINT64_MAX ? 0 : r), why);
  return store_err(E8S_ERR_NOSPC, "disk full: %llu bytes to write (records and index) need %llu free, %llu are%s; "
                   "delete sessions or free disk space", (unsigned long long)bytes,
                   (unsigned long long)(bytes + ADMIT_SLACK), (unsigned long long)r, why);
}

int store_space_grow_ok(e8s_store *st, uint64_t bytes) {
  uint64_t r = room(st);
  if (!atomic_load(&st->ix_short) && r >= bytes) return E8S_OK;
  pthread_mutex_lock(&st->wlock);
  store_space_refill(st);
  pthread_mutex_unlock(&st->wlock);
  r = room(st);
  if (!atomic_load(&st->ix_short) && r >= bytes) return E8S_OK;
  if (!atomic_load(&st->ix_short))
    return store_err(E8S_ERR_NOSPC, "disk full: the session's index entry grows by %llu bytes, "
                     "%llu are free; delete sessions or free disk space",
                     (unsigned long long)bytes, (unsigned long long)r);
  return store_err(E8S_ERR_NOSPC, "disk full: the index keeps its last %llu bytes for deletes; "
                   "delete sessions or free disk space", (unsigned long long)st->ix_reserve);
}
