/* store_io_pwrite.c: the plain io engine: pwritev per record (short writes continued),
 * fdatasync per segment. Used where io_uring is refused, or by E8S_IO_PWRITE. Also the
 * synchronous pread/pwrite helpers every path uses. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include "store/store_int.h"

int store_pwrite_all(int fd, const void *buf, uint64_t len, uint64_t off) {
  const char *p = buf;
  while (len > 0) {
    ssize_t w = pwrite(fd, p, len, (off_t)off);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return -errno;
    if (w == 0) return -EIO;
    p += w;
    len -= (uint64_t)w;
    off += (uint64_t)w;
  }
  return 0;
}

int store_pread_all(int fd, void *buf, uint64_t len, uint64_t off) {
  char *p = buf;
  while (len > 0) {
    ssize_t r = pread(fd, p, len, (off_t)off);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return -errno;
    if (r == 0) return 1;
    p += r;
    len -= (uint64_t)r;
    off += (uint64_t)r;
  }
  return 0;
}

int store_iov_skip(const store_iow *w, struct iovec out[2]) {
  uint64_t skip = w->done;
  int n = 0;
  for (int i = 0; i < w->niov; i++) {
    if (skip >= w->iov[i].iov_len) {
      skip -= w->iov[i].iov_len;
      continue;
    }
    out[n].iov_base = (char *)w->iov[i].iov_base + skip;
    out[n].iov_len = w->iov[i].iov_len - skip;
    skip = 0;
    n++;
  }
  return n;
}

int store_preadv_all(int fd, struct iovec *iov, int niov, uint64_t off) {
  store_iow w = {.fd = fd, .off = off, .niov = niov};
  for (int i = 0; i < niov; i++) w.iov[i] = iov[i], w.len += iov[i].iov_len;
  while (w.done < w.len) {
    struct iovec v[2];
    int nv = store_iov_skip(&w, v);
    ssize_t r = preadv(fd, v, nv, (off_t)(off + w.done));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) return -errno;
    if (r == 0) return 1;
    w.done += (uint64_t)r;
  }
  return 0;
}

static void pw_write_batch(store_io *io, store_iow *w, size_t n) {
  (void)io;
  for (size_t i = 0; i < n; i++) {
    w[i].done = 0;
    w[i].res = 0;
    while (w[i].done < w[i].len) {
      struct iovec v[2];
      int nv = store_iov_skip(&w[i], v);
      uint64_t want = w[i].len - w[i].done;
      int f = store_fault_write(&want);
      if (f < 0) {
        w[i].res = f;
        break;
      }
      if (want < w[i].len - w[i].done) { /* injected short write: submit less */
        if (v[0].iov_len > want) {
          v[0].iov_len = want;
          nv = 1;
        } else if (nv == 2) {
          v[1].iov_len = want - v[0].iov_len;
        }
      }
      ssize_t r = pwritev(w[i].fd, v, nv, (off_t)(w[i].off + w[i].done));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) {
        w[i].res = -errno;
        break;
      }
      if (r == 0) {
        w[i].res = -EIO;
        break;
      }
      w[i].done += (uint64_t)r;
    }
    /* start writeback of the record now (a hint, errors ignored): the disk works on it while
     * the next records are copied */
    if (w[i].kick && !w[i].res) (void)sync_file_range(w[i].fd, (off_t)w[i].off, (off_t)w[i].len,
                                                      SYNC_FILE_RANGE_WRITE);
  }
}

static void pw_sync_batch(store_io *io, const int *fds, int *res, size_t n) {
  (void)io;
  for (size_t i = 0; i < n; i++) {
    int f = store_fault_fsync();
    res[i] = f ? f : (fdatasync(fds[i]) == 0 ? 0 : -errno);
  }
}

static void pw_destroy(store_io *io) { free(io); }

static const store_io_ops pw_ops = {"pwrite", pw_write_batch, pw_sync_batch, pw_destroy};

int store_io_pwrite_create(store_io **out) {
  store_io *io = calloc(1, sizeof *io);
  if (!io) return -ENOMEM;
  io->ops = &pw_ops;
  io->kind = E8S_IO_PWRITE;
  *out = io;
  return 0;
}
