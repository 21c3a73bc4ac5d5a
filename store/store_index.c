/* store_index.c: the LMDB side: environment and databases, read and write transaction helpers,
 * map growth on MDB_MAP_FULL, small value helpers.
 *
 * Databases (one LMDB environment in DIR/index):
 *   chunks   key[32] -> store_chunk_val        sessions  be32 ns + name -> store_sess_hdr, meta, keys
 *   lru      be64 tick + key[32] -> be32 ns    ns        be32 id -> store_ns_val
 *   nslru    be32 ns + be64 tick + key -> ""   nsname    name -> be32 id
 *   fp       id[32] -> blob                    segs      be64 id -> store_seg_val
 *   quar     key[32] -> store_quar_val         meta      name -> u64 (used, next ids, tick)
 * Only chunks with no session ref are in lru/nslru, so eviction scans never skip session pins.
 * Map growth: mdb_env_set_mapsize needs no transaction open in this process, so readers hold
 * map_lock shared for the life of a read transaction and the writer takes it exclusive. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "store/store_int.h"

void store_be32(uint8_t out[4], uint32_t v) {
  for (int i = 0; i < 4; i++) out[i] = (uint8_t)(v >> (24 - 8 * i));
}
void store_be64(uint8_t out[8], uint64_t v) {
  for (int i = 0; i < 8; i++) out[i] = (uint8_t)(v >> (56 - 8 * i));
}
uint64_t store_rd_be64(const uint8_t in[8]) {
  uint64_t v = 0;
  for (int i = 0; i < 8; i++) v = (v << 8) | in[i];
  return v;
}

static int open_dbi(e8s_store *st, MDB_txn *txn, const char *name, MDB_dbi *dbi) {
  unsigned fl = st->readonly ? 0 : MDB_CREATE;
  int rc = mdb_dbi_open(txn, name, fl, dbi);
  if (rc == MDB_NOTFOUND) return store_err(E8S_ERR_CORRUPT, "index: database %s missing", name);
  return store_err_mdb(rc, name);
}

int store_index_open(e8s_store *st) {
  size_t n = strlen(st->dir) + 16;
  char *path = malloc(n);
  if (!path) return E8S_ERR_NOMEM;
  snprintf(path, n, "%s/index", st->dir);
  if (!st->readonly && mkdir(path, 0755) != 0 && errno != EEXIST) {
    int e = errno;
    free(path);
    return store_err(store_err_errno(-e), "mkdir %s/index: %s", st->dir, strerror(e));
  }
  int rc = store_space_prealloc(st, path);
  if (rc) {
    free(path);
    return rc;
  }
  rc = mdb_env_create(&st->env);
  if (rc) {
    free(path);
    return store_err_mdb(rc, "mdb_env_create");
  }
  mdb_env_set_maxdbs(st->env, 16);
  mdb_env_set_maxreaders(st->env, STORE_MAXREADERS);
  mdb_env_set_mapsize(st->env, st->cfg.map_bytes);
  unsigned fl = MDB_NOTLS | (st->readonly ? MDB_RDONLY : 0);
  rc = mdb_env_open(st->env, path, fl, 0644);
  free(path);
  if (rc) {
    int e = rc == ENOENT ? store_err(E8S_ERR_NOTFOUND, "index: no store in %s", st->dir)
                         : store_err_mdb(rc, "mdb_env_open");
    mdb_env_close(st->env);
    st->env = NULL;
    return e;
  }
  MDB_envinfo info;
  mdb_env_info(st->env, &info);
  st->map_bytes = info.me_mapsize;
  int dead = 0; /* reader slots of crashed processes (a killed e8kvctl) would pin old pages */
  mdb_reader_check(st->env, &dead);
  MDB_txn *txn;
  rc = mdb_txn_begin(st->env, NULL, st->readonly ? MDB_RDONLY : 0, &txn);
  if (rc) return store_err_mdb(rc, "txn_begin");
  int e = open_dbi(st, txn, "chunks", &st->db_chunks);
  if (!e) e = open_dbi(st, txn, "lru", &st->db_lru);
  if (!e) e = open_dbi(st, txn, "nslru", &st->db_nslru);
  if (!e) e = open_dbi(st, txn, "sessions", &st->db_sess);
  if (!e) e = open_dbi(st, txn, "ns", &st->db_ns);
  if (!e) e = open_dbi(st, txn, "nsname", &st->db_nsname);
  if (!e) e = open_dbi(st, txn, "fp", &st->db_fp);
  if (!e) e = open_dbi(st, txn, "segs", &st->db_segs);
  if (!e) e = open_dbi(st, txn, "quar", &st->db_quar);
  if (!e) e = open_dbi(st, txn, "meta", &st->db_meta);
  if (e) {
    mdb_txn_abort(txn);
    return e == STORE_MAPFULL_RETRY ? store_err(E8S_ERR_MAPFULL, "index: map full at open") : e;
  }
  rc = mdb_txn_commit(txn);
  return rc ? store_err_mdb(rc, "commit dbi") : E8S_OK;
}

void store_index_close(e8s_store *st) {
  if (st->env) mdb_env_close(st->env);
  st->env = NULL;
}

int store_rtxn_begin(e8s_store *st, MDB_txn **txn) {
  for (int attempt = 0; attempt < 8; attempt++) {
    pthread_rwlock_rdlock(&st->map_lock);
    int rc = mdb_txn_begin(st->env, NULL, MDB_RDONLY, txn);
    if (rc == 0) return E8S_OK;
    pthread_rwlock_unlock(&st->map_lock);
    if (rc != MDB_MAP_RESIZED) return store_err_mdb(rc, "read txn_begin");
    /* another process grew the map: adopt its size (no txn of ours may be open) */
    pthread_rwlock_wrlock(&st->map_lock);
    mdb_env_set_mapsize(st->env, 0);
    pthread_rwlock_unlock(&st->map_lock);
  }
  return store_err(E8S_ERR_IO, "index: map keeps being resized");
}

void store_rtxn_end(e8s_store *st, MDB_txn *txn) {
  mdb_txn_abort(txn);
  pthread_rwlock_unlock(&st->map_lock);
}

int store_map_grow(e8s_store *st) {
  uint64_t max = st->cfg.map_max_bytes;
  if (st->map_bytes >= max)
    return store_err(E8S_ERR_MAPFULL, "index: map full at %llu bytes (map_max_bytes)",
                     (unsigned long long)st->map_bytes);
  uint64_t want = st->map_bytes * 2 > max ? max : st->map_bytes * 2;
  pthread_rwlock_wrlock(&st->map_lock);
  int rc = mdb_env_set_mapsize(st->env, want);
  MDB_envinfo info;
  mdb_env_info(st->env, &info);
  st->map_bytes = info.me_mapsize;
  int dead = 0; /* reader slots of crashed processes (a killed e8kvctl) would pin old pages */
  mdb_reader_check(st->env, &dead);
  pthread_rwlock_unlock(&st->map_lock);
  return rc ? store_err_mdb(rc, "set_mapsize") : E8S_OK;
}

int store_txn_commit(e8s_store *st, MDB_txn *txn) {
  if (store_fault_map_full()) {
    mdb_txn_abort(txn);
    return STORE_MAPFULL_RETRY;
  }
  int rc = mdb_txn_commit(txn);
  if (rc) return store_space_commit_err(st, rc);
  store_space_refill(st);
  return E8S_OK;
}

int store_index_commit_lazy(e8s_store *st, MDB_txn *txn, int lazy) {
  if (!lazy) return store_txn_commit(st, txn);
  /* wlock held: the only thread changing the flag (LMDB allows it between transactions) */
  int rc = mdb_env_set_flags(st->env, MDB_NOMETASYNC, 1);
  if (rc) {
    mdb_txn_abort(txn);
    return store_err_mdb(rc, "set NOMETASYNC");
  }
  int e = store_txn_commit(st, txn);
  mdb_env_set_flags(st->env, MDB_NOMETASYNC, 0);
  return e;
}

int store_index_sync(e8s_store *st) {
  int rc = mdb_env_sync(st->env, 1);
  return rc ? store_err_mdb(rc, "sync") : E8S_OK;
}

static int run_locked(e8s_store *st, store_wtxn_fn fn, void *ctx, int touches) {
  if (st->readonly) return store_err(E8S_ERR_READONLY, "store opened read-only");
  for (;;) {
    MDB_txn *txn;
    int rc = mdb_txn_begin(st->env, NULL, 0, &txn);
    if (rc) return store_err_mdb(rc, "write txn_begin");
    int e = touches ? store_touch_flush(st, txn) : E8S_OK;
    if (e == E8S_OK) e = fn(st, txn, ctx);
    if (e == E8S_OK) e = store_txn_commit(st, txn);
    else mdb_txn_abort(txn);
    if (e != STORE_MAPFULL_RETRY) return e;
    e = store_map_grow(st);
    if (e) return e;
  }
}

int store_wtxn_run_locked(e8s_store *st, store_wtxn_fn fn, void *ctx) {
  return run_locked(st, fn, ctx, 1);
}

int store_wtxn_run(e8s_store *st, store_wtxn_fn fn, void *ctx) {
  if (st->readonly) return store_err(E8S_ERR_READONLY, "store opened read-only");
  pthread_mutex_lock(&st->wlock);
  int e = store_wtxn_run_locked(st, fn, ctx);
  pthread_mutex_unlock(&st->wlock);
  return e;
}

int store_wtxn_run_untouched(e8s_store *st, store_wtxn_fn fn, void *ctx) {
  if (st->readonly) return store_err(E8S_ERR_READONLY, "store opened read-only");
  pthread_mutex_lock(&st->wlock);
  int e = run_locked(st, fn, ctx, 0);
  pthread_mutex_unlock(&st->wlock);
  return e;
}

int store_put(MDB_txn *txn, MDB_dbi dbi, const void *k, size_t kl, const void *v, size_t vl) {
  MDB_val key = {kl, (void *)k}, val = {vl, (void *)v};
  int rc = mdb_put(txn, dbi, &key, &val, 0);
  return rc ? store_err_mdb(rc, "put") : E8S_OK;
}

int store_del(MDB_txn *txn, MDB_dbi dbi, const void *k, size_t kl) {
  MDB_val key = {kl, (void *)k};
  int rc = mdb_del(txn, dbi, &key, NULL);
  return rc == MDB_NOTFOUND ? E8S_OK : rc ? store_err_mdb(rc, "del") : E8S_OK;
}

int store_get_fixed(MDB_txn *txn, MDB_dbi dbi, const void *k, size_t kl, void *v, size_t vl) {
  MDB_val key = {kl, (void *)k}, val;
  int rc = mdb_get(txn, dbi, &key, &val);
  if (rc == MDB_NOTFOUND) return E8S_ERR_NOTFOUND;
  if (rc) return store_err_mdb(rc, "get");
  if (val.mv_size != vl)
    return store_err(E8S_ERR_CORRUPT, "index: value of %zu bytes, want %zu", val.mv_size, vl);
  memcpy(v, val.mv_data, vl);
  return E8S_OK;
}

int store_get_grown(MDB_txn *txn, MDB_dbi dbi, const void *k, size_t kl, void *v, size_t vl,
                    size_t old_vl) {
  MDB_val key = {kl, (void *)k}, val;
  int rc = mdb_get(txn, dbi, &key, &val);
  if (rc == MDB_NOTFOUND) return E8S_ERR_NOTFOUND;
  if (rc) return store_err_mdb(rc, "get");
  if (val.mv_size != vl && val.mv_size != old_vl)
    return store_err(E8S_ERR_CORRUPT, "index: value of %zu bytes, want %zu", val.mv_size, vl);
  memset(v, 0, vl);
  memcpy(v, val.mv_data, val.mv_size);
  return E8S_OK;
}

int store_meta_get_u64(MDB_txn *txn, e8s_store *st, const char *name, uint64_t *v) {
  int e = store_get_fixed(txn, st->db_meta, name, strlen(name), v, sizeof *v);
  if (e == E8S_ERR_NOTFOUND) {
    *v = 0;
    return E8S_OK;
  }
  return e;
}

int store_meta_put_u64(MDB_txn *txn, e8s_store *st, const char *name, uint64_t v) {
  return store_put(txn, st->db_meta, name, strlen(name), &v, sizeof v);
}
