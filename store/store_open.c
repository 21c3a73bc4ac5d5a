/* store_open.c: configuration defaults, open (directory layout, the one-writer lock, io engine
 * choice, LMDB, recovery), close, stats. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "store/store_int.h"

void e8s_config_init(e8s_config *cfg) {
  memset(cfg, 0, sizeof *cfg);
  cfg->io_engine = E8S_IO_AUTO;
  cfg->segment_bytes = 1ull << 30;
  cfg->map_bytes = 64ull << 20;
  cfg->map_max_bytes = 64ull << 30;
  cfg->lease_ms = 30000;
  cfg->uring_entries = 64;
  cfg->index_reserve_bytes = 16ull << 20;
  cfg->lease_max_chunks = 1u << 20;
  cfg->lease_ns_max_chunks = 1u << 18;
}

static void fill_defaults(e8s_config *c) {
  e8s_config d;
  e8s_config_init(&d);
  if (!c->segment_bytes) c->segment_bytes = d.segment_bytes;
  if (c->segment_bytes < (1ull << 20)) c->segment_bytes = 1ull << 20;
  if (!c->map_bytes) c->map_bytes = d.map_bytes;
  if (!c->map_max_bytes) c->map_max_bytes = d.map_max_bytes;
  if (c->map_max_bytes < c->map_bytes) c->map_max_bytes = c->map_bytes;
  if (!c->lease_ms) c->lease_ms = d.lease_ms;
  if (!c->uring_entries) c->uring_entries = d.uring_entries;
  if (!c->index_reserve_bytes) c->index_reserve_bytes = d.index_reserve_bytes;
  if (!c->lease_max_chunks) c->lease_max_chunks = d.lease_max_chunks;
  if (!c->lease_ns_max_chunks) c->lease_ns_max_chunks = d.lease_ns_max_chunks;
  if (c->lease_ns_max_chunks > c->lease_max_chunks) c->lease_ns_max_chunks = c->lease_max_chunks;
}

static int make_dirs(e8s_store *st) {
  struct stat sb;
  if (stat(st->dir, &sb) != 0) {
    if (st->readonly || !(st->cfg.flags & E8S_OPEN_CREATE))
      return store_err(E8S_ERR_NOTFOUND, "%s: %s", st->dir, strerror(errno));
    if (mkdir(st->dir, 0755) != 0 && errno != EEXIST)
      return store_err(store_err_errno(-errno), "mkdir %s: %s", st->dir, strerror(errno));
  }
  if (stat(st->segdir, &sb) != 0) {
    if (st->readonly || !(st->cfg.flags & E8S_OPEN_CREATE))
      return store_err(E8S_ERR_NOTFOUND, "%s: no store here (no segments/)", st->dir);
    if (mkdir(st->segdir, 0755) != 0 && errno != EEXIST)
      return store_err(store_err_errno(-errno), "mkdir %s: %s", st->segdir, strerror(errno));
  }
  return E8S_OK;
}

static int take_lock(e8s_store *st) {
  size_t n = strlen(st->dir) + 8;
  char *p = malloc(n);
  if (!p) return E8S_ERR_NOMEM;
  snprintf(p, n, "%s/LOCK", st->dir);
  st->lockfd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  free(p);
  if (st->lockfd < 0) return store_err(E8S_ERR_IO, "%s/LOCK: %s", st->dir, strerror(errno));
  if (flock(st->lockfd, LOCK_EX | LOCK_NB) != 0)
    return store_err(E8S_ERR_LOCKED, "%s is open read-write by another process", st->dir);
  return E8S_OK;
}

static int pick_engine(e8s_store *st) {
  if (st->readonly) return E8S_OK;
  int rc = -ENOSYS;
  if (st->cfg.io_engine != E8S_IO_PWRITE) {
    rc = store_io_uring_create(st->cfg.uring_entries, &st->lanes[0].io);
    if (rc == 0) return E8S_OK;
    if (st->cfg.io_engine == E8S_IO_URING)
      return store_err(rc == -EPERM || rc == -ENOSYS ? E8S_ERR_UNSUPPORTED : store_err_errno(rc),
                       "io_uring setup: %s", strerror(-rc));
    if (rc != -EPERM && rc != -ENOSYS)
      return store_err(store_err_errno(rc), "io_uring setup: %s", strerror(-rc));
  }
  rc = store_io_pwrite_create(&st->lanes[0].io);
  return rc ? E8S_ERR_NOMEM : E8S_OK;
}

/* The other engines of the write lanes (data stage of lanes 1.., every sync stage): the same
 * kind as lanes[0].io. */
static int pick_lane_engines(e8s_store *st) {
  if (st->readonly) return E8S_OK;
  int uring = st->lanes[0].io->kind == E8S_IO_URING, rc = 0;
  for (int i = 0; i < STORE_LANES && !rc; i++) {
    store_lane *l = &st->lanes[i];
    if (!l->io) rc = uring ? store_io_uring_create_sync(st->cfg.uring_entries, &l->io)
                           : store_io_pwrite_create(&l->io);
    if (!rc) rc = uring ? store_io_uring_create_sync(8, &l->sio) : store_io_pwrite_create(&l->sio);
  }
  return rc ? store_err(store_err_errno(rc), "io engine: %s", strerror(-rc)) : E8S_OK;
}

static uint64_t entries(MDB_txn *txn, MDB_dbi dbi);

static int set_format(e8s_store *st, MDB_txn *txn, void *ctx) {
  (void)ctx;
  return store_meta_put_u64(txn, st, "format", STORE_FORMAT);
}

static int open_inner(e8s_store *st) {
  int e = make_dirs(st);
  if (e) return e;
  st->segdirfd = open(st->segdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (st->segdirfd < 0) return store_err(E8S_ERR_IO, "%s: %s", st->segdir, strerror(errno));
  if (!st->readonly && (e = take_lock(st))) return e;
  if ((e = pick_engine(st)) || (e = pick_lane_engines(st))) return e;
  if ((e = store_index_open(st))) return e;
  if ((e = store_space_open(st))) return e;
  MDB_txn *txn;
  if ((e = store_rtxn_begin(st, &txn))) return e;
  uint64_t tick, format;
  e = store_meta_get_u64(txn, st, "tick", &tick);
  if (!e) e = store_meta_get_u64(txn, st, "format", &format);
  uint64_t chunks = entries(txn, st->db_chunks);
  store_rtxn_end(st, txn);
  if (e) return e;
  atomic_store(&st->tick, tick + 1);
  if (format != STORE_FORMAT && (format || chunks))
    return store_err(E8S_ERR_UNSUPPORTED, "%s: store format %llu, this libe8store reads format "
                     "%u (records with 192-byte headers); export it with the e8kvctl that wrote it "
                     "and import it here", st->dir, (unsigned long long)(format ? format : 1),
                     STORE_FORMAT);
  if (!st->readonly && !format && (e = store_wtxn_run(st, set_format, NULL))) return e;
  if (!st->readonly && (e = store_replay(st))) return e;
  if (!st->readonly && (e = store_session_unref_pending(st))) return e; /* deletes cut off */
  if (!st->readonly && (e = store_ns_upgrade(st))) return e;
  if (!st->readonly) {
    st->touches = malloc(STORE_TOUCH_MAX * sizeof *st->touches);
    if (!st->touches) return E8S_ERR_NOMEM;
  }
  return e;
}

int e8s_open(const e8s_config *cfg, e8s_store **out) {
  if (!cfg || !cfg->dir || !out || !cfg->dir[0])
    return store_err(E8S_ERR_INVAL, "open: NULL config, directory or out");
  *out = NULL;
  e8s_store *st = calloc(1, sizeof *st);
  if (!st) return E8S_ERR_NOMEM;
  st->cfg = *cfg;
  fill_defaults(&st->cfg);
  st->readonly = (cfg->flags & E8S_OPEN_READONLY) != 0;
  st->lockfd = st->segdirfd = st->ix_fd = -1;
  size_t n = strlen(cfg->dir) + 16;
  st->dir = strdup(cfg->dir);
  st->segdir = malloc(n);
  if (!st->dir || !st->segdir) {
    e8s_close(st);
    return E8S_ERR_NOMEM;
  }
  st->cfg.dir = st->dir;
  snprintf(st->segdir, n, "%s/segments", cfg->dir);
  pthread_rwlock_init(&st->map_lock, NULL);
  pthread_mutex_init(&st->wlock, NULL);
  for (int i = 0; i < STORE_LANES; i++) {
    pthread_mutex_init(&st->lanes[i].dlock, NULL);
    pthread_mutex_init(&st->lanes[i].sync_mu, NULL);
    pthread_cond_init(&st->lanes[i].sync_cv, NULL);
  }
  pthread_mutex_init(&st->seg_mu, NULL);
  pthread_mutex_init(&st->pin_mu, NULL);
  pthread_mutex_init(&st->gc_mu, NULL);
  pthread_cond_init(&st->gc_cv, NULL);
  int e = open_inner(st);
  if (e) {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", e8s_last_error_detail());
    e8s_close(st);
    return store_err(e, "%s", msg);
  }
  *out = st;
  return E8S_OK;
}

void e8s_close(e8s_store *st) {
  if (!st) return;
  if (st->env && !st->readonly) { /* keep recent LRU touches */
    MDB_txn *txn;
    if (mdb_txn_begin(st->env, NULL, 0, &txn) == 0) {
      if (store_touch_flush(st, txn) == 0) mdb_txn_commit(txn);
      else mdb_txn_abort(txn);
    }
    store_index_sync(st); /* the last lazy put commit: durable now, nothing to replay */
  }
  store_index_close(st);
  for (int i = 0; i < STORE_LANES; i++) {
    store_lane *l = &st->lanes[i];
    if (l->io) l->io->ops->destroy(l->io);
    if (l->sio) l->sio->ops->destroy(l->sio);
  }
  store_seg_table_free(st);
  store_pin_free(st);
  if (st->segdirfd >= 0) close(st->segdirfd);
  if (st->lockfd >= 0) close(st->lockfd);
  pthread_rwlock_destroy(&st->map_lock);
  pthread_mutex_destroy(&st->wlock);
  for (int i = 0; i < STORE_LANES; i++) {
    pthread_mutex_destroy(&st->lanes[i].dlock);
    pthread_mutex_destroy(&st->lanes[i].sync_mu);
    pthread_cond_destroy(&st->lanes[i].sync_cv);
  }
  pthread_mutex_destroy(&st->seg_mu);
  pthread_mutex_destroy(&st->pin_mu);
  pthread_mutex_destroy(&st->gc_mu);
  pthread_cond_destroy(&st->gc_cv);
  free(st->dir);
  free(st->segdir);
  free(st);
}

e8s_io_engine e8s_io_engine_used(const e8s_store *st) {
  return st && st->lanes[0].io ? st->lanes[0].io->kind : E8S_IO_AUTO;
}

static uint64_t entries(MDB_txn *txn, MDB_dbi dbi) {
  MDB_stat s;
  return mdb_stat(txn, dbi, &s) == 0 ? s.ms_entries : 0;
}

int e8s_stats_get(e8s_store *st, e8s_stats *out) {
  if (!st || !out) return store_err(E8S_ERR_INVAL, "stats_get: NULL");
  memset(out, 0, sizeof *out);
  MDB_txn *txn;
  int e = store_rtxn_begin(st, &txn);
  if (e) return e;
  e = store_meta_get_u64(txn, st, "used", &out->used_bytes);
  out->chunks = entries(txn, st->db_chunks);
  out->sessions = entries(txn, st->db_sess);
  out->namespaces = entries(txn, st->db_ns);
  out->fingerprints = entries(txn, st->db_fp);
  out->segments = entries(txn, st->db_segs);
  out->quarantined = entries(txn, st->db_quar);
  MDB_cursor *c;
  if (mdb_cursor_open(txn, st->db_segs, &c) == 0) {
    MDB_val k, v;
    for (int rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
      store_seg_val sv;
      if (v.mv_size != sizeof sv) continue;
      memcpy(&sv, v.mv_data, sizeof sv);
      out->disk_bytes += sv.end;
    }
    mdb_cursor_close(c);
  }
  MDB_envinfo info;
  MDB_stat ms;
  mdb_env_info(st->env, &info);
  mdb_env_stat(st->env, &ms);
  store_rtxn_end(st, txn);
  out->map_bytes = info.me_mapsize;
  out->map_used_bytes = (uint64_t)(info.me_last_pgno + 1) * ms.ms_psize;
  out->capacity_bytes = st->cfg.capacity_bytes;
  out->lookups = atomic_load(&st->c_lookups);
  out->lookup_hit_chunks = atomic_load(&st->c_hit_chunks);
  out->lookup_misses = atomic_load(&st->c_misses);
  out->evictions = atomic_load(&st->c_evictions);
  out->puts_stored = atomic_load(&st->c_stored);
  out->puts_existed = atomic_load(&st->c_existed);
  out->reads = atomic_load(&st->c_reads);
  out->read_bytes = atomic_load(&st->c_read_bytes);
  out->crc_failures = atomic_load(&st->c_crc_failures);
  pthread_mutex_lock(&st->pin_mu);
  out->lease_chunks = st->lease_chunks;
  pthread_mutex_unlock(&st->pin_mu);
  out->leases_dropped = atomic_load(&st->c_lease_dropped);
  out->engine = e8s_io_engine_used(st);
  return e;
}
