/* store_seg.c: segment files. The table of open segments (lazy opens, reader refcounts,
 * retirement: a segment removed from the index is unlinked only when its last reader leaves),
 * creation of a new segment for the writer (header, fdatasync, directory fsync), record reads
 * with CRC check. Open-time recovery is store_replay.c. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "store/store_int.h"

char *store_seg_path(const e8s_store *st, uint64_t id) {
  size_t n = strlen(st->segdir) + 32;
  char *p = malloc(n);
  if (p) snprintf(p, n, "%s/%016llx.seg", st->segdir, (unsigned long long)id);
  return p;
}

/* 1 if s is some lane's active segment (seg_mu held). */
static int active(const e8s_store *st, const store_seg *s) {
  for (int i = 0; i < STORE_LANES; i++)
    if (st->lanes[i].wseg == s) return 1;
  return 0;
}

static store_seg *find(e8s_store *st, uint64_t id) {
  for (store_seg *s = st->segs; s; s = s->next)
    if (s->id == id) return s;
  return NULL;
}

static void unlink_seg(e8s_store *st, store_seg *s) {
  char *p = store_seg_path(st, s->id);
  if (p) unlink(p);
  free(p);
}

static void drop(e8s_store *st, store_seg *s) { /* seg_mu held */
  store_seg **pp = &st->segs;
  while (*pp != s) pp = &(*pp)->next;
  *pp = s->next;
  if (s->fd >= 0) close(s->fd);
  if (!st->readonly) unlink_seg(st, s);
  free(s);
}

store_seg *store_seg_acquire(e8s_store *st, uint64_t id) {
  pthread_mutex_lock(&st->seg_mu);
  store_seg *s = find(st, id);
  if (s && s->retired) s = NULL;
  else if (!s) {
    char *p = store_seg_path(st, id);
    int fd = p ? open(p, O_RDONLY | O_CLOEXEC) : -1;
    if (fd < 0) store_err(E8S_ERR_NOTFOUND, "segment %s: %s", p ? p : "?", strerror(errno));
    /* records are read whole and chains were written in order: a larger readahead window */
    else posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
    free(p);
    if (fd >= 0 && (s = calloc(1, sizeof *s)) == NULL) close(fd);
    if (s) {
      s->id = id;
      s->fd = fd;
      s->next = st->segs;
      st->segs = s;
    }
  }
  if (s) s->refs++;
  pthread_mutex_unlock(&st->seg_mu);
  return s;
}

void store_seg_release(e8s_store *st, store_seg *s) {
  if (!s) return;
  pthread_mutex_lock(&st->seg_mu);
  if (--s->refs == 0 && s->retired) drop(st, s);
  pthread_mutex_unlock(&st->seg_mu);
}

void store_seg_retire(e8s_store *st, uint64_t id) {
  pthread_mutex_lock(&st->seg_mu);
  store_seg *s = find(st, id);
  if (s) {
    s->retired = 1;
    if (s->refs == 0 && !active(st, s)) drop(st, s);
  } else if (!st->readonly) {
    store_seg tmp = {.id = id};
    unlink_seg(st, &tmp);
  }
  pthread_mutex_unlock(&st->seg_mu);
}

void store_seg_table_free(e8s_store *st) {
  store_seg *s = st->segs;
  while (s) {
    store_seg *n = s->next;
    if (s->fd >= 0) close(s->fd);
    free(s);
    s = n;
  }
  st->segs = NULL;
  for (int i = 0; i < STORE_LANES; i++) st->lanes[i].wseg = NULL;
}

void store_seg_seal_active(e8s_store *st, store_lane *l) {
  /* give back the preallocated tail (the records all lie below wpos) */
  if (l->wseg && l->wprealloc > l->wpos) (void)ftruncate(l->wseg->fd, (off_t)l->wpos);
  if (l->wseg) store_space_seg_grew(st, l->wpos); /* a full segment: the reserve's ceiling */
  l->wprealloc = 0;
  atomic_store(&l->ahead, 0);
  pthread_mutex_lock(&st->seg_mu);
  store_seg *s = l->wseg;
  l->wseg = NULL;
  atomic_fetch_add(&st->dead_gen, 1); /* sealed: its dead records may be punched now */
  /* the fd stays open for readers; a sealed segment with nothing indexed is removed
   * by recovery at the next open (its file is not in the index) */
  if (s && s->retired && s->refs == 0) drop(st, s);
  pthread_mutex_unlock(&st->seg_mu);
}

static int create_segment(e8s_store *st, store_lane *l) {
  pthread_mutex_lock(&st->seg_mu);
  uint64_t id = st->next_seg_id++;
  pthread_mutex_unlock(&st->seg_mu);
  char *p = store_seg_path(st, id);
  if (!p) return E8S_ERR_NOMEM;
  int fd = open(p, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) {
    int e = errno;
    int rc = store_err(store_err_errno(-e), "create %s: %s", p, strerror(e));
    free(p);
    return rc;
  }
  uint8_t hdr[STORE_SEG_HDR_BYTES] = {0};
  uint32_t magic = STORE_SEG_MAGIC;
  memcpy(hdr, &magic, 4);
  hdr[4] = STORE_HDR_VERSION;
  memcpy(hdr + 8, &id, 8);
  uint32_t crc = store_crc32c(hdr, 60);
  memcpy(hdr + 60, &crc, 4);
  int e = store_pwrite_all(fd, hdr, sizeof hdr, 0);
  if (!e) e = fdatasync(fd) ? -errno : 0;
  if (!e) e = fsync(st->segdirfd) ? -errno : 0;
  if (e) {
    int rc = store_err(store_err_errno(e), "new segment %s: %s", p, strerror(-e));
    close(fd);
    unlink(p);
    free(p);
    return rc;
  }
  free(p);
  posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL); /* it also serves reads */
  store_seg *s = calloc(1, sizeof *s);
  if (!s) {
    close(fd);
    return E8S_ERR_NOMEM;
  }
  s->id = id;
  s->fd = fd;
  pthread_mutex_lock(&st->seg_mu);
  s->next = st->segs;
  st->segs = s;
  l->wseg = s;
  pthread_mutex_unlock(&st->seg_mu);
  l->wpos = store_fault_segment_start();
  l->wfirst = l->wpos;
  l->wprealloc = 0;
  return E8S_OK;
}

/* Allocates the active segment ahead of the writes, STORE_PREALLOC_STEP bytes at a time (up
 * to the segment size, or `need`): appending into allocated blocks inside the file size spares
 * each fdatasync the block allocation and size update of a growing file (measured on ext4: a
 * 1 MiB buffered append costs 0.4-6 ms into a growing file, 0.2-0.3 ms into an allocated one).
 * The file is longer than its records meanwhile; the tail is cut at seal and at open. A
 * refusal (ENOSPC, EOPNOTSUPP) just means appending to a growing file, for the rest of the
 * batch (the data stage clears l->wpre_off): the records reserved after a refusal have no
 * blocks until they are written, and a later fallocate of the batch that succeeded (smaller,
 * or of the next segment) would give the disk's last blocks to the range past them, so that
 * their own writes fail ENOSPC though the space was free (seen on a full disk: a
 * compaction's copy of 3 to 7 records failed at its first). */
#define STORE_PREALLOC_STEP (64ull << 20)

/* 1 on a nearly full disk: allocating `bytes` ahead would leave less than the index reserve
 * free, i.e. take the blocks the reserve needs to be refilled after a compaction lent it or a
 * delete used it (the store would stay "short" and refuse puts with the space sitting unused
 * at the end of the active segment). */
static int tight(e8s_store *st, uint64_t bytes) {
  if (atomic_load(&st->ix_short)) return 1;
  struct statvfs v;
  if (statvfs(st->segdir, &v) != 0) return 0;
  return (uint64_t)v.f_bavail * v.f_frsize < bytes + atomic_load(&st->ix_reserve);
}
static void prealloc(e8s_store *st, store_lane *l, uint64_t need) {
  uint64_t from = l->wprealloc > l->wpos ? l->wprealloc : l->wpos;
  uint64_t to = from + STORE_PREALLOC_STEP;
  if (to > st->seg_bytes) to = st->seg_bytes;
  if (to < need) to = need;
  if (!l->wpre_off && tight(st, to - from)) l->wpre_off = 1;
  if (!l->wpre_off && fallocate(l->wseg->fd, 0, (off_t)from, (off_t)(to - from)) == 0) {
    l->wprealloc = to;
    return;
  }
  l->wpre_off = 1;
  l->wprealloc = need;
}

int store_seg_punch(e8s_store *st, uint64_t id, const uint64_t (*gaps)[2], size_t n,
                    uint64_t *freed) {
  *freed = 0;
  pthread_mutex_lock(&st->seg_mu); /* a reader acquires the segment before or after, not during */
  store_seg *s = find(st, id);
  int rc = 1;
  if (s && (s->retired || s->pending > 0 || active(st, s))) goto out;
  if (s && s->refs > 0) { /* a reader inside a read: the caller may try again */
    rc = 2;
    goto out;
  }
  char *p = store_seg_path(st, id);
  int fd = p ? open(p, O_WRONLY | O_CLOEXEC) : -1;
  free(p);
  struct stat sb;
  if (fd < 0) goto out;
  if (fstat(fd, &sb) != 0) goto out_fd;
  uint64_t bs = sb.st_blksize > 0 ? (uint64_t)sb.st_blksize : 4096, before = (uint64_t)sb.st_blocks;
  atomic_fetch_add(&st->n_punches, 1); /* before any block goes: readers look again */
  rc = 0;
  for (size_t i = 0; i < n && !rc; i++) {
    uint64_t a = (gaps[i][0] + bs - 1) / bs * bs, b = gaps[i][1] / bs * bs;
    if (a >= b) continue;
    if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)a, (off_t)(b - a)) != 0)
      rc = errno == EOPNOTSUPP || errno == ENOSYS ? -EOPNOTSUPP : -errno;
  }
  if (fstat(fd, &sb) == 0 && before > (uint64_t)sb.st_blocks)
    *freed = (before - (uint64_t)sb.st_blocks) * 512;
out_fd:
  close(fd);
out:
  pthread_mutex_unlock(&st->seg_mu);
  return rc;
}

int store_seg_busy(e8s_store *st, uint64_t id) {
  pthread_mutex_lock(&st->seg_mu);
  store_seg *s = find(st, id);
  int busy = (s && (active(st, s) || s->pending > 0));
  pthread_mutex_unlock(&st->seg_mu);
  return busy;
}

void store_seg_pending_add(e8s_store *st, store_seg *s) {
  pthread_mutex_lock(&st->seg_mu);
  s->pending++;
  s->refs++;
  pthread_mutex_unlock(&st->seg_mu);
}

void store_seg_pending_done(e8s_store *st, store_seg *s) {
  pthread_mutex_lock(&st->seg_mu);
  if (--s->pending == 0 && !active(st, s)) atomic_fetch_add(&st->dead_gen, 1);
  if (--s->refs == 0 && s->retired && !active(st, s)) drop(st, s);
  pthread_mutex_unlock(&st->seg_mu);
}

void store_seg_set_sync_failed(e8s_store *st, store_seg *s) {
  pthread_mutex_lock(&st->seg_mu);
  s->sync_failed = 1;
  pthread_mutex_unlock(&st->seg_mu);
}

int store_seg_sync_failed(e8s_store *st, store_seg *s) {
  pthread_mutex_lock(&st->seg_mu);
  int f = s->sync_failed;
  pthread_mutex_unlock(&st->seg_mu);
  return f;
}

int store_seg_reserve(e8s_store *st, store_lane *l, uint64_t bytes, store_seg **seg,
                      uint64_t *off) {
  if (l->wseg && (store_seg_sync_failed(st, l->wseg) ||
                  (l->wpos > STORE_SEG_HDR_BYTES && l->wpos + bytes > st->seg_bytes)))
    store_seg_seal_active(st, l);
  if (!l->wseg) {
    int e = create_segment(st, l);
    if (e) return e;
  }
  if (l->wpos + bytes > l->wprealloc) prealloc(st, l, l->wpos + bytes);
  *seg = l->wseg;
  *off = l->wpos;
  l->wpos += bytes;
  atomic_store(&l->ahead, l->wprealloc > l->wpos ? l->wprealloc - l->wpos : 0);
  return E8S_OK;
}

int store_seg_read_payload(e8s_store *st, const store_chunk_val *rec, const uint8_t key[32],
                           void *buf, uint32_t *found_crc) {
  store_seg *s = store_seg_acquire(st, rec->seg_id);
  if (!s) return store_err(E8S_ERR_NOTFOUND, "segment %llu is gone",
                           (unsigned long long)rec->seg_id);
  int e = store_seg_read_from(s, rec, key, buf, found_crc);
  store_seg_release(st, s);
  return e;
}

int store_seg_read_from(store_seg *s, const store_chunk_val *rec, const uint8_t key[32],
                        void *buf, uint32_t *found_crc) {
  uint8_t hdr[E8S_RECORD_HEADER_BYTES], hkey[32];
  store_chunk_val h;
  struct iovec iov[2] = {{hdr, sizeof hdr}, {buf, rec->payload_bytes}};
  int e = store_preadv_all(s->fd, iov, 2, rec->offset); /* header and payload in one call */
  int bad_hdr = e == 0 && (store_rec_hdr_decode(hdr, hkey, &h) != 0 ||
                           memcmp(hkey, key, 32) != 0 || h.payload_bytes != rec->payload_bytes);
  *found_crc = 0;
  if (e < 0) return store_err(store_err_errno(e), "segment %llu offset %llu: read: %s",
                              (unsigned long long)rec->seg_id, (unsigned long long)rec->offset,
                              strerror(-e));
  if (e == 1 || bad_hdr)
    return store_err(E8S_ERR_DATALOSS, "segment %llu offset %llu: %s",
                     (unsigned long long)rec->seg_id, (unsigned long long)rec->offset,
                     e == 1 ? "record cut short (file ends early)" : "bad record header");
  uint32_t crc = store_crc32c(buf, rec->payload_bytes);
  *found_crc = crc;
  if (crc != rec->crc)
    return store_err(E8S_ERR_DATALOSS, "segment %llu offset %llu: payload CRC32C 0x%08x, stored "
                     "0x%08x", (unsigned long long)rec->seg_id,
                     (unsigned long long)rec->offset, crc, rec->crc);
  return E8S_OK;
}
