/* store_wpipe.c: the write pipeline shared by puts and compaction (see store_int.h).
 *
 * Each lane (store_int.h) has its own active segment, data stage and sync stage; puts use
 * whichever lane is free, compaction and the index stage's rare stragglers use lane 0.
 * Data stage (the lane's dlock): space is reserved in the lane's active segment (a new segment is created, with
 * its header fdatasynced and the directory fsynced, when needed), every record is written
 * through the io engine (io_uring: one wave of WRITEV SQEs; pwrite: pwritev per record), each
 * followed by the start of its writeback (sync_file_range WRITE; io_uring: a linked SQE that
 * io_uring's worker runs while the next records are copied), so the disk already works on a
 * record while the next ones are copied. It is a hint: it waits for nothing and reports
 * nothing; durability comes from the fdatasync of the sync stage. The batch takes the next ticket and leaves dlock, so the next batch can be written
 * while this one waits for the disk.
 *
 * Sync stage (the lane's sync_mu, in ticket order): one fdatasync per touched segment through the sync
 * io engine, unless an fdatasync of the same (single) segment that succeeded began after this
 * batch's writes had completed: batches that finished their data stage while an earlier one's
 * fdatasync ran share the next one (sync coalescing; `make bench-store-small`, 4 KiB puts of
 * one record, A/B against the build without it alternating 6 rounds on this 2-core VM's
 * virtio ext4 disk at load 4-6: 16 writers x1.32 median puts/s (x1.11..x1.84), 8 writers
 * x1.25 (x0.90..x1.55); one writer cannot share and is unchanged). The data stage publishes `written` (all tickets
 * below it have their writes complete) after taking its ticket; the sync stage reads it before
 * it calls fdatasync, so every ticket below it is covered by that call. Serialising the fdatasyncs of one file matters for errors: Linux reports a
 * writeback error to one fdatasync only, and pages are shared between neighbouring records
 * (records are not page aligned), so a failure is recorded on the segment (sync_failed) and
 * every later sync stage fails the records it has in that segment. The index stage belongs to
 * the caller, who then calls store_wp_release. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "store/store_int.h"

static uint64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* After a failed write in the batch (dlock held): the active segment is cut back to the end
 * of what is kept in it (the batch's start, or past its last record written whole unless `all`
 * fails the whole batch), so a partial record gives its blocks back and the segment's append
 * offset never runs past its file; then it is sealed. A segment this batch created that keeps
 * nothing is retired (its file goes when its pending records are released): it was never
 * indexed. With `all`, every record of the batch fails. */
static void cut_after_failure(e8s_store *st, store_lane *l, store_wrec *r, const size_t *map,
                              size_t nw, store_seg *seg0, uint64_t pos0, int all, int code) {
  store_seg *s = l->wseg;
  if (all) /* the detail stays the failed write's */
    for (size_t j = 0; j < nw; j++)
      if (!r[map[j]].err) r[map[j]].err = code;
  if (s) {
    uint64_t cut = s == seg0 ? pos0 : l->wfirst;
    for (size_t j = 0; j < nw; j++) {
      const store_wrec *x = &r[map[j]];
      if (x->seg == s && !x->err && x->off + x->bytes > cut) cut = x->off + x->bytes;
    }
    if (ftruncate(s->fd, (off_t)cut) == 0) {
      l->wpos = cut;
      l->wprealloc = 0; /* nothing allocated past the cut: seal truncates nothing more */
    }
    if (cut <= l->wfirst) store_seg_retire(st, s->id);
  }
  store_seg_seal_active(st, l);
}

static uint64_t wp_write(e8s_store *st, int lane, store_wrec *r, size_t n, int all) {
  store_lane *l = &st->lanes[lane];
  uint64_t t0 = mono_ns();
  store_iow *w = calloc(n ? n : 1, sizeof *w);
  size_t *map = calloc(n ? n : 1, sizeof *map);
  pthread_mutex_lock(&l->dlock);
  l->wpre_off = 0; /* the records of earlier batches are written: they have their blocks */
  store_seg *seg0 = l->wseg;
  uint64_t pos0 = l->wpos;
  size_t nw = 0;
  for (size_t i = 0; i < n; i++) {
    r[i].seg = NULL;
    if (r[i].err) continue;
    if (!w || !map) {
      r[i].err = E8S_ERR_NOMEM;
      continue;
    }
    store_seg *seg;
    int e = store_seg_reserve(st, l, r[i].bytes, &seg, &r[i].off);
    if (e) {
      r[i].err = e;
      continue;
    }
    store_seg_pending_add(st, seg);
    r[i].seg = seg;
    r[i].seg_id = seg->id;
    w[nw] = (store_iow){.fd = seg->fd, .off = r[i].off, .niov = 2, .len = r[i].bytes, .kick = 1};
    w[nw].iov[0] = r[i].iov[0];
    w[nw].iov[1] = r[i].iov[1];
    map[nw++] = i;
  }
  if (nw) l->io->ops->write_batch(l->io, w, nw);
  int failed = 0;
  for (size_t j = 0; j < nw; j++) {
    store_wrec *x = &r[map[j]];
    if (!w[j].res) continue;
    x->err = store_err_errno(w[j].res);
    if (failed) continue; /* the detail names the first failed record */
    failed = store_err(x->err, "segment %llu offset %llu: write: %s",
                       (unsigned long long)x->seg_id, (unsigned long long)x->off,
                       strerror(-w[j].res));
  }
  /* a failed write leaves the segment's tail unknown: cut it, seal it, append elsewhere */
  if (failed) cut_after_failure(st, l, r, map, nw, seg0, pos0, all, failed);
  uint64_t ticket = l->next_ticket++;
  atomic_store(&l->written, l->next_ticket);
  pthread_mutex_unlock(&l->dlock);
  free(w);
  free(map);
  atomic_fetch_add(&st->t_write_ns, mono_ns() - t0);
  return ticket;
}

uint64_t store_wp_write(e8s_store *st, int lane, store_wrec *r, size_t n) {
  return wp_write(st, lane, r, n, 0);
}

uint64_t store_wp_write_all(e8s_store *st, int lane, store_wrec *r, size_t n) {
  return wp_write(st, lane, r, n, 1);
}

/* The index of r's segment in segs[0..nf), or nf. */
static size_t seg_slot(store_seg *const *segs, size_t nf, const store_seg *s) {
  size_t f = 0;
  while (f < nf && segs[f] != s) f++;
  return f;
}

void store_wp_sync(e8s_store *st, int lane, uint64_t ticket, store_wrec *r, size_t n) {
  store_lane *l = &st->lanes[lane];
  size_t cap = n ? n : 1;
  int *fds = malloc(cap * sizeof *fds), *res = malloc(cap * sizeof *res);
  store_seg **segs = malloc(cap * sizeof *segs);
  pthread_mutex_lock(&l->sync_mu);
  while (l->serving != ticket) pthread_cond_wait(&l->sync_cv, &l->sync_mu);
  uint64_t t0 = mono_ns();
  size_t nf = 0;
  for (size_t i = 0; i < n; i++) {
    if (r[i].err || !r[i].seg) continue;
    if (!fds || !res || !segs) {
      r[i].err = E8S_ERR_NOMEM;
      continue;
    }
    if (seg_slot(segs, nf, r[i].seg) == nf) segs[nf] = r[i].seg, fds[nf++] = r[i].seg->fd;
  }
  /* Covered: an fdatasync of this one segment that began after this batch's writes completed
   * has succeeded (another batch's, while this one waited for its turn): the bytes are on disk
   * already, a second flush would only wait for the device again. */
  int covered = nf == 1 && segs[0]->id == l->cov_seg && ticket < l->cov_upto;
  if (covered) {
    res[0] = 0;
    atomic_fetch_add(&st->n_syncs_covered, 1);
  } else if (nf) {
    uint64_t upto = atomic_load(&l->written); /* writes of the tickets below are complete */
    l->sio->ops->sync_batch(l->sio, fds, res, nf);
    atomic_fetch_add(&st->n_syncs, 1);
    l->cov_upto = 0;
    if (nf == 1 && !res[0]) l->cov_seg = segs[0]->id, l->cov_upto = upto;
  }
  for (size_t f = 0; f < nf; f++)
    if (res[f]) store_seg_set_sync_failed(st, segs[f]);
  for (size_t i = 0; i < n; i++) {
    if (r[i].err || !r[i].seg) continue;
    size_t f = seg_slot(segs, nf, r[i].seg);
    if (res[f]) { /* what the kernel dropped is unknown: nothing since the last good sync */
      int code = store_err_errno(res[f]) == E8S_ERR_NOSPC ? E8S_ERR_NOSPC : E8S_ERR_IO;
      r[i].err = store_err(code, "segment %llu: fdatasync: %s",
                           (unsigned long long)r[i].seg_id, strerror(-res[f]));
    } else if (store_seg_sync_failed(st, r[i].seg)) {
      r[i].err = store_err(E8S_ERR_IO, "segment %llu: an earlier fdatasync of this segment "
                           "failed after this record was written",
                           (unsigned long long)r[i].seg_id);
    }
  }
  l->serving++;
  pthread_cond_broadcast(&l->sync_cv);
  pthread_mutex_unlock(&l->sync_mu);
  atomic_fetch_add(&st->t_sync_ns, mono_ns() - t0);
  free(fds), free(res), free(segs);
}

void store_wp_release(e8s_store *st, store_wrec *r, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (r[i].seg) {
      store_seg_pending_done(st, r[i].seg);
      r[i].seg = NULL;
    }
}
