/* store_io_uring.c: the io_uring engine (liburing). A batch of record writes is submitted as
 * IORING_OP_WRITEV operations (each linked to a SYNC_FILE_RANGE_WRITE that starts its
 * writeback), up to the ring size at a time, in one io_uring_enter per wave; completions that
 * wrote less than asked are resubmitted for the rest. A sync batch is one fsync SQE
 * (IORING_FSYNC_DATASYNC) per segment. Each ring is used by one thread at a time (a write
 * lane's data stage or sync stage holds its mutex), so it needs no locking of its own. */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdlib.h>
#include <string.h>

#include "store/store_int.h"

typedef struct uring_io {
  store_io base;
  struct io_uring ring;
  unsigned entries;
} uring_io;

#define KICK_TAG (1ull << 63) /* user_data of a writeback-start SQE (never counted) */

/* Queues op i; returns 1 if a write SQE was used, 0 if it failed before submission. A whole
 * record written for the first time with w->kick and room in the ring gets a linked
 * SYNC_FILE_RANGE_WRITE (no CQE on success): writeback of record i starts, in io_uring's
 * worker, while the next records are still being copied. A short write cancels it. */
static int queue_write(uring_io *u, store_iow *w, size_t i) {
  int nv = store_iov_skip(w, w->cur);
  uint64_t want = w->len - w->done;
  int f = store_fault_write(&want);
  if (f < 0) {
    w->res = f;
    return 0;
  }
  if (want < w->len - w->done) { /* injected short write: submit less */
    if (w->cur[0].iov_len > want) {
      w->cur[0].iov_len = want;
      nv = 1;
    } else if (nv == 2) {
      w->cur[1].iov_len = want - w->cur[0].iov_len;
    }
  }
  int kick = w->kick && w->done == 0 && want == w->len && w->len <= 0xffffffffu &&
             io_uring_sq_space_left(&u->ring) >= 2;
  struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
  io_uring_prep_writev(sqe, w->fd, w->cur, (unsigned)nv, w->off + w->done);
  io_uring_sqe_set_data64(sqe, i);
  if (kick) {
    sqe->flags |= IOSQE_IO_LINK;
    struct io_uring_sqe *k = io_uring_get_sqe(&u->ring);
    io_uring_prep_sync_file_range(k, w->fd, (unsigned)w->len, w->off, SYNC_FILE_RANGE_WRITE);
    k->flags |= IOSQE_CQE_SKIP_SUCCESS;
    io_uring_sqe_set_data64(k, KICK_TAG | i);
  }
  return 1;
}

static void fail_all(store_iow *w, size_t n, int err) {
  for (size_t i = 0; i < n; i++)
    if (w[i].res == 0 && w[i].done < w[i].len) w[i].res = err;
}

static void ur_write_batch(store_io *io, store_iow *w, size_t n) {
  uring_io *u = (uring_io *)io;
  for (size_t i = 0; i < n; i++) w[i].done = 0, w[i].res = 0;
  size_t next = 0; /* ops are started in order; resubmits go first */
  size_t *redo = malloc((n ? n : 1) * sizeof *redo);
  if (!redo) return fail_all(w, n, -ENOMEM);
  size_t n_redo = 0;
  for (;;) {
    unsigned queued = 0;
    size_t r = 0;
    while (r < n_redo && io_uring_sq_space_left(&u->ring) > 0) queued += queue_write(u, &w[redo[r]], redo[r]), r++;
    memmove(redo, redo + r, (n_redo - r) * sizeof *redo);
    n_redo -= r;
    while (next < n && io_uring_sq_space_left(&u->ring) > 0) queued += queue_write(u, &w[next], next), next++;
    if (queued == 0) {
      if (n_redo == 0 && next >= n) break;
      continue;
    }
    int rc = io_uring_submit_and_wait(&u->ring, queued);
    if (rc < 0 && rc != -EINTR) {
      /* nothing can be known about the queued writes: fail them all */
      fail_all(w, n, rc);
      break;
    }
    for (unsigned got = 0; got < queued;) {
      struct io_uring_cqe *cqe;
      int wr = io_uring_wait_cqe(&u->ring, &cqe);
      if (wr == -EINTR) continue;
      if (wr < 0) {
        fail_all(w, n, wr);
        goto out;
      }
      uint64_t ud = io_uring_cqe_get_data64(cqe);
      int res = cqe->res;
      io_uring_cqe_seen(&u->ring, cqe);
      if (ud & KICK_TAG) continue; /* a writeback start that failed or was cancelled: a hint */
      size_t i = (size_t)ud;
      got++;
      if (res == -EINTR || res == -EAGAIN) redo[n_redo++] = i;
      else if (res < 0) w[i].res = res;
      else if (res == 0) w[i].res = -EIO;
      else {
        w[i].done += (uint64_t)res;
        if (w[i].done < w[i].len) redo[n_redo++] = i;
      }
    }
  }
out:
  free(redo);
}

static void ur_sync_batch(store_io *io, const int *fds, int *res, size_t n) {
  uring_io *u = (uring_io *)io;
  size_t i = 0;
  while (i < n) {
    unsigned queued = 0;
    size_t first = i;
    for (; i < n && io_uring_sq_space_left(&u->ring) > 0; i++) {
      int f = store_fault_fsync();
      res[i] = f;
      if (f) continue;
      struct io_uring_sqe *sqe = io_uring_get_sqe(&u->ring);
      io_uring_prep_fsync(sqe, fds[i], IORING_FSYNC_DATASYNC);
      io_uring_sqe_set_data64(sqe, i);
      queued++;
    }
    int rc = io_uring_submit_and_wait(&u->ring, queued);
    if (rc < 0 && rc != -EINTR) {
      for (size_t j = first; j < i; j++)
        if (!res[j]) res[j] = rc;
      return;
    }
    for (unsigned got = 0; got < queued;) {
      struct io_uring_cqe *cqe;
      int wr = io_uring_wait_cqe(&u->ring, &cqe);
      if (wr == -EINTR) continue;
      if (wr < 0) {
        for (size_t j = first; j < i; j++)
          if (!res[j]) res[j] = wr;
        return;
      }
      res[io_uring_cqe_get_data64(cqe)] = cqe->res < 0 ? cqe->res : 0;
      io_uring_cqe_seen(&u->ring, cqe);
      got++;
    }
  }
}

static void ur_destroy(store_io *io) {
  uring_io *u = (uring_io *)io;
  io_uring_queue_exit(&u->ring);
  free(u);
}

static const store_io_ops ur_ops = {"io_uring", ur_write_batch, ur_sync_batch, ur_destroy};

static int create(unsigned entries, store_io **out) {
  uring_io *u = calloc(1, sizeof *u);
  if (!u) return -ENOMEM;
  int rc = io_uring_queue_init(entries, &u->ring, 0);
  if (rc < 0) {
    free(u);
    return rc;
  }
  u->entries = entries;
  u->base.ops = &ur_ops;
  u->base.kind = E8S_IO_URING;
  *out = &u->base;
  return 0;
}

int store_io_uring_create(unsigned entries, store_io **out) {
  int f = store_fault_uring_setup();
  return f ? f : create(entries, out);
}

int store_io_uring_create_sync(unsigned entries, store_io **out) { return create(entries, out); }
