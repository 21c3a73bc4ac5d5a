/* store_replay.c: open-time recovery (read-write). The segments are the log of the puts: each
 * record header carries everything the index keeps about its chunk (store_int.h), and a put's
 * records are fdatasynced before its LMDB commit. A put's commit is lazy (MDB_NOMETASYNC, see
 * store_index_commit_lazy): LMDB stays consistent, but a power loss can undo the last commit.
 * Every commit that follows a data write raises the index end of the segments over all the
 * records it wrote (store_seg_cover), and commits after which a caller hears of a failure are
 * durable ones. So at open:
 *   - a segment the index knows: the records past its end belong to a commit that was lost or
 *     to a put cut off by a crash after its data went out; each one whose two header CRCs and
 *     payload CRC32C check is indexed as a put would have (namespace and fingerprint still
 *     known, key not indexed yet: first writer wins, budget and quota with LRU eviction); the
 *     scan stops at the first record that does not check (a torn tail) and the file is cut
 *     there;
 *   - a segment file the index does not know: dropped (a drop marker, store_seg_index_drop: a
 *     crash came between the commit and the unlink): unlinked; else new (its first commit was
 *     lost, or never came): replayed from its first record, unlinked if nothing in it checks;
 *   - then the drop markers go (after the directory fsync that makes the unlinks durable).
 * A replayed chunk the caller never heard of becoming visible is allowed (it is intact, and the
 * put may have been acknowledged); one a caller was told failed never is (its commit raised
 * the end over it and was durable). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store/store_int.h"

typedef struct rp_rec { uint8_t key[32]; store_chunk_val v; } rp_rec;

typedef struct rp_ctx {
  uint64_t seg_id, start, end; /* scanned [start, end) of the segment */
  rp_rec *r;
  size_t n, cap;
  store_retire_list retire;
  uint64_t replayed;
} rp_ctx;

#define RP_BUF (1u << 20)

/* 1 if [pos, pos + header + payload) holds a record whose header and payload check. */
static int check_record(int fd, uint64_t pos, uint64_t size, uint8_t *buf, rp_rec *out) {
  uint8_t hdr[E8S_RECORD_HEADER_BYTES];
  if (pos + sizeof hdr > size || store_pread_all(fd, hdr, sizeof hdr, pos) != 0) return 0;
  if (store_rec_hdr_decode(hdr, out->key, &out->v) != 0) return 0;
  uint64_t len = out->v.payload_bytes, at = pos + sizeof hdr;
  if (len == 0 || len > STORE_PAYLOAD_MAX || at + len > size) return 0;
  uint32_t crc = ~0u;
  for (uint64_t done = 0; done < len;) {
    uint64_t m = len - done < RP_BUF ? len - done : RP_BUF;
    if (store_pread_all(fd, buf, m, at + done) != 0) return 0;
    crc = store_crc32c_update(crc, buf, m);
    done += m;
  }
  if (~crc != out->v.crc) return 0;
  out->v.offset = pos;
  return 1;
}

/* Scans records from c->start while they check; c->end = where the last one ends. */
static int scan(int fd, uint64_t size, rp_ctx *c) {
  uint8_t *buf = malloc(RP_BUF);
  if (!buf) return E8S_ERR_NOMEM;
  uint64_t pos = c->start;
  rp_rec rec;
  while (check_record(fd, pos, size, buf, &rec)) {
    if (c->n == c->cap) {
      size_t cap = c->cap ? c->cap * 2 : 64;
      rp_rec *p = realloc(c->r, cap * sizeof *p);
      if (!p) {
        free(buf);
        return E8S_ERR_NOMEM;
      }
      c->r = p, c->cap = cap;
    }
    rec.v.seg_id = c->seg_id;
    c->r[c->n++] = rec;
    pos += store_rec_bytes(rec.v.payload_bytes);
  }
  free(buf);
  c->end = pos;
  return E8S_OK;
}

static int owner_known(MDB_txn *txn, e8s_store *st, const store_chunk_val *v) {
  store_ns_val ns;
  int e = store_ns_load(txn, st, v->ns_id, &ns);
  if (e) return e;
  MDB_val k = {32, (void *)v->fp}, d;
  int rc = mdb_get(txn, st->db_fp, &k, &d);
  return rc == MDB_NOTFOUND ? E8S_ERR_NOTFOUND : rc ? store_err_mdb(rc, "get fp") : E8S_OK;
}

static int replay_fn(e8s_store *st, MDB_txn *txn, void *vc) {
  rp_ctx *c = vc;
  c->retire.n = 0;
  c->replayed = 0;
  for (size_t i = 0; i < c->n; i++) {
    store_chunk_val v = c->r[i].v, old;
    int e = owner_known(txn, st, &v);
    if (e == E8S_ERR_NOTFOUND) continue; /* namespace or fingerprint removed since */
    if (e) return e;
    e = store_chunk_get(txn, st, c->r[i].key, &old);
    if (e == E8S_OK) continue; /* indexed (this record, or another put of the key) */
    if (e != E8S_ERR_NOTFOUND) return e;
    e = store_make_room(txn, st, &c->retire, v.ns_id, store_rec_bytes(v.payload_bytes), 0, 0);
    if (e == E8S_ERR_QUOTA || e == E8S_ERR_FULL) continue; /* the rest is pinned: dead space */
    if (e) return e;
    v.tick = atomic_fetch_add(&st->tick, 1) + 1;
    v.refs = 0;
    if ((e = store_chunk_insert(txn, st, c->r[i].key, &v))) return e;
    c->replayed++;
  }
  return c->end > c->start ? store_seg_cover(txn, st, c->seg_id, c->start, c->end - c->start)
                           : E8S_OK;
}

static int parse_name(const char *n, uint64_t *id) {
  size_t l = strlen(n);
  if (l != 20 || strcmp(n + 16, ".seg") != 0) return -1;
  char *end;
  *id = strtoull(n, &end, 16);
  return end == n + 16 ? 0 : -1;
}

static int cmp_u64(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

/* Segment ids of the files in the segment directory, ascending. */
static int list_files(e8s_store *st, uint64_t **ids, size_t *n) {
  *ids = NULL;
  *n = 0;
  DIR *d = opendir(st->segdir);
  if (!d) return store_err(E8S_ERR_IO, "opendir %s: %s", st->segdir, strerror(errno));
  size_t cap = 0;
  int e = E8S_OK;
  for (struct dirent *de; e == E8S_OK && (de = readdir(d)) != NULL;) {
    uint64_t id;
    if (parse_name(de->d_name, &id) != 0) continue;
    if (*n == cap) {
      cap = cap ? cap * 2 : 64;
      uint64_t *p = realloc(*ids, cap * sizeof *p);
      if (!p) e = E8S_ERR_NOMEM;
      else *ids = p;
    }
    if (e == E8S_OK) (*ids)[(*n)++] = id;
  }
  closedir(d);
  if (e == E8S_OK && *n) qsort(*ids, *n, sizeof **ids, cmp_u64);
  return e;
}

/* 1 if fd starts with a valid segment header of segment id. */
static int seg_header_ok(int fd, uint64_t id) {
  uint8_t h[STORE_SEG_HDR_BYTES];
  uint32_t magic, crc;
  uint64_t hid;
  if (store_pread_all(fd, h, sizeof h, 0) != 0) return 0;
  memcpy(&magic, h, 4), memcpy(&hid, h + 8, 8), memcpy(&crc, h + 60, 4);
  return magic == STORE_SEG_MAGIC && hid == id && crc == store_crc32c(h, 60);
}

typedef enum { SEG_KNOWN, SEG_DROPPED, SEG_NEW } seg_kind;

static int classify(e8s_store *st, uint64_t id, seg_kind *kind, uint64_t *end) {
  MDB_txn *txn;
  int e = store_rtxn_begin(st, &txn);
  if (e) return e;
  uint8_t k[8];
  store_be64(k, id);
  store_seg_val sv;
  e = store_get_fixed(txn, st->db_segs, k, 8, &sv, sizeof sv);
  if (e == E8S_OK) *kind = SEG_KNOWN, *end = sv.end;
  else if (e == E8S_ERR_NOTFOUND) {
    *kind = store_seg_dropped(txn, st, id) ? SEG_DROPPED : SEG_NEW;
    *end = STORE_SEG_HDR_BYTES;
    e = E8S_OK;
  }
  store_rtxn_end(st, txn);
  return e;
}

/* Replays segment id's tail; *unlink_it when the file is to go (dropped, or new and empty). */
static int replay_segment(e8s_store *st, uint64_t id, const char *path, int *unlink_it,
                          uint64_t *n_replayed) {
  seg_kind kind;
  rp_ctx c = {.seg_id = id};
  int e = classify(st, id, &kind, &c.start);
  *unlink_it = 0;
  if (e) return e;
  if (kind == SEG_DROPPED) return *unlink_it = 1, E8S_OK;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT) return E8S_OK; /* retired by an eviction of this replay */
  if (fd < 0) return store_err(E8S_ERR_IO, "open %s: %s", path, strerror(errno));
  struct stat sb;
  if (fstat(fd, &sb) != 0) e = store_err(E8S_ERR_IO, "stat %s: %s", path, strerror(errno));
  else if (kind == SEG_NEW && !seg_header_ok(fd, id)) c.end = c.start; /* never written */
  else e = scan(fd, (uint64_t)sb.st_size, &c);
  close(fd);
  if (e == E8S_OK && c.n) {
    e = store_wtxn_run(st, replay_fn, &c); /* a durable commit */
    if (e == E8S_OK) store_retire_apply(st, &c.retire);
    else free(c.retire.ids);
    *n_replayed += c.replayed;
  }
  free(c.r);
  if (e) return e;
  if (kind == SEG_NEW && c.n == 0) return *unlink_it = 1, E8S_OK;
  uint64_t cut = c.n ? c.end : c.start; /* past the last record that checks */
  if ((uint64_t)sb.st_size > cut && truncate(path, (off_t)cut) != 0 && errno != ENOENT)
    return store_err(E8S_ERR_IO, "truncate %s: %s", path, strerror(errno));
  return E8S_OK;
}

static int forget_drops_fn(e8s_store *st, MDB_txn *txn, void *vc) {
  (void)vc;
  MDB_cursor *cur;
  int rc = mdb_cursor_open(txn, st->db_meta, &cur);
  if (rc) return store_err_mdb(rc, "cursor meta");
  uint8_t first[1] = {'D'};
  MDB_val k = {1, first}, v;
  int e = E8S_OK;
  for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); rc == 0 && e == E8S_OK;
       rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
    if (k.mv_size != 9 || ((uint8_t *)k.mv_data)[0] != 'D') break;
    rc = mdb_cursor_del(cur, 0);
    if (rc) e = store_err_mdb(rc, "del drop marker");
  }
  mdb_cursor_close(cur);
  return e;
}

/* The highest segment id of the index and of the drop markers (ids never to reuse); *markers
 * = how many drop markers there are. */
static int max_indexed_id(e8s_store *st, uint64_t *max, size_t *markers) {
  *markers = 0;
  MDB_txn *txn;
  int e = store_rtxn_begin(st, &txn);
  if (e) return e;
  MDB_cursor *c;
  MDB_val k, v;
  if (mdb_cursor_open(txn, st->db_segs, &c) == 0) {
    if (mdb_cursor_get(c, &k, &v, MDB_LAST) == 0 && k.mv_size == 8) {
      uint64_t id = store_rd_be64(k.mv_data);
      if (id > *max) *max = id;
    }
    mdb_cursor_close(c);
  }
  if (mdb_cursor_open(txn, st->db_meta, &c) == 0) {
    uint8_t first[1] = {'D'};
    k = (MDB_val){1, first};
    for (int rc = mdb_cursor_get(c, &k, &v, MDB_SET_RANGE); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
      if (k.mv_size != 9 || ((uint8_t *)k.mv_data)[0] != 'D') break;
      uint64_t id = store_rd_be64((uint8_t *)k.mv_data + 1);
      if (id > *max) *max = id;
      (*markers)++;
    }
    mdb_cursor_close(c);
  }
  store_rtxn_end(st, txn);
  return E8S_OK;
}

int store_replay(e8s_store *st) {
  uint64_t *ids, max_id = 0, replayed = 0;
  size_t n;
  int e = list_files(st, &ids, &n), changed = 0;
  for (size_t i = 0; e == E8S_OK && i < n; i++) {
    if (ids[i] > max_id) max_id = ids[i];
    char *p = store_seg_path(st, ids[i]);
    int unlink_it = 0;
    e = p ? replay_segment(st, ids[i], p, &unlink_it, &replayed) : E8S_ERR_NOMEM;
    if (e == E8S_OK && unlink_it) {
      unlink(p);
      changed = 1;
    }
    free(p);
  }
  free(ids);
  size_t markers = 0;
  if (e == E8S_OK) e = max_indexed_id(st, &max_id, &markers);
  st->next_seg_id = max_id + 1;
  if (e == E8S_OK && changed && fsync(st->segdirfd) != 0)
    e = store_err(E8S_ERR_IO, "fsync %s: %s", st->segdir, strerror(errno));
  if (e == E8S_OK && markers) e = store_wtxn_run(st, forget_drops_fn, NULL);
  st->replayed_at_open = replayed;
  return e;
}
