/* store_ns.c: namespaces (name <-> id, salt, quota, usage) and fingerprints (id -> blob). */
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>

#include "store/store_int.h"

static int check_name(const char *name) {
  size_t l = name ? strlen(name) : 0;
  if (l == 0 || l > E8S_NAME_MAX)
    return store_err(E8S_ERR_INVAL, "namespace name of %zu bytes (1..%d)", l, E8S_NAME_MAX);
  return E8S_OK;
}

static void to_info(e8s_ns_info *info, uint32_t id, const store_ns_val *v) {
  if (!info) return;
  memset(info, 0, sizeof *info);
  info->id = id;
  memcpy(info->name, v->name, sizeof info->name);
  info->name[E8S_NAME_MAX] = 0;
  memcpy(info->salt, v->salt, 32);
  info->quota_bytes = v->quota;
  info->used_bytes = v->used;
  info->chunks = v->chunks;
  info->tokens = v->tokens;
  info->raw_bytes = v->raw_bytes;
  info->created_ns = v->created_ns;
}

static int id_of(MDB_txn *txn, e8s_store *st, const char *name, uint32_t *id) {
  uint8_t b[4];
  int e = store_get_fixed(txn, st->db_nsname, name, strlen(name), b, 4);
  if (e == E8S_OK) *id = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
  return e;
}

typedef struct ns_ctx {
  const char *name;
  const uint8_t *salt;
  uint64_t quota;
  uint32_t id;
  store_ns_val v;
} ns_ctx;

static int create_fn(e8s_store *st, MDB_txn *txn, void *vc) {
  ns_ctx *c = vc;
  int e = id_of(txn, st, c->name, &c->id);
  if (e == E8S_OK) {
    if ((e = store_ns_load(txn, st, c->id, &c->v))) return e;
    return store_err(E8S_ERR_EXISTS, "namespace %s exists", c->name);
  }
  if (e != E8S_ERR_NOTFOUND) return e;
  uint64_t next;
  if ((e = store_meta_get_u64(txn, st, "next_ns", &next))) return e;
  c->id = (uint32_t)(next ? next : 1);
  memset(&c->v, 0, sizeof c->v);
  if (c->salt) memcpy(c->v.salt, c->salt, 32);
  else if (RAND_bytes(c->v.salt, 32) != 1) return store_err(E8S_ERR_IO, "RAND_bytes failed");
  c->v.quota = c->quota;
  c->v.created_ns = store_now_ns();
  memcpy(c->v.name, c->name, strlen(c->name) + 1);
  uint8_t b[4];
  store_be32(b, c->id);
  if ((e = store_put(txn, st->db_nsname, c->name, strlen(c->name), b, 4)) ||
      (e = store_ns_store(txn, st, c->id, &c->v)))
    return e;
  return store_meta_put_u64(txn, st, "next_ns", (uint64_t)c->id + 1);
}

int e8s_ns_create(e8s_store *st, const char *name, const uint8_t *salt, uint64_t quota_bytes,
                  e8s_ns_info *info) {
  if (!st) return store_err(E8S_ERR_INVAL, "ns_create: NULL store");
  int e = check_name(name);
  if (e) return e;
  ns_ctx c = {.name = name, .salt = salt, .quota = quota_bytes};
  e = store_wtxn_run(st, create_fn, &c);
  if (e == E8S_OK || e == E8S_ERR_EXISTS) to_info(info, c.id, &c.v);
  return e;
}

int e8s_ns_get(e8s_store *st, const char *name, e8s_ns_info *info) {
  if (!st) return store_err(E8S_ERR_INVAL, "ns_get: NULL store");
  int e = check_name(name);
  if (e) return e;
  MDB_txn *txn;
  if ((e = store_rtxn_begin(st, &txn))) return e;
  uint32_t id;
  store_ns_val v;
  e = id_of(txn, st, name, &id);
  if (!e) e = store_ns_load(txn, st, id, &v);
  store_rtxn_end(st, txn);
  if (e == E8S_ERR_NOTFOUND) return store_err(e, "namespace %s not found", name);
  if (!e) to_info(info, id, &v);
  return e;
}

int e8s_ns_get_by_id(e8s_store *st, uint32_t ns_id, e8s_ns_info *info) {
  if (!st) return store_err(E8S_ERR_INVAL, "ns_get_by_id: NULL store");
  MDB_txn *txn;
  int e = store_rtxn_begin(st, &txn);
  if (e) return e;
  store_ns_val v;
  e = store_ns_load(txn, st, ns_id, &v);
  store_rtxn_end(st, txn);
  if (e == E8S_ERR_NOTFOUND) return store_err(e, "namespace %u not found", ns_id);
  if (!e) to_info(info, ns_id, &v);
  return e;
}

static int quota_fn(e8s_store *st, MDB_txn *txn, void *vc) {
  ns_ctx *c = vc;
  int e = store_ns_load(txn, st, c->id, &c->v);
  if (e == E8S_ERR_NOTFOUND) return store_err(e, "namespace %u not found", c->id);
  if (e) return e;
  c->v.quota = c->quota;
  return store_ns_store(txn, st, c->id, &c->v);
}

int e8s_ns_set_quota(e8s_store *st, uint32_t ns_id, uint64_t quota_bytes) {
  if (!st) return store_err(E8S_ERR_INVAL, "ns_set_quota: NULL store");
  ns_ctx c = {.id = ns_id, .quota = quota_bytes};
  return store_wtxn_run(st, quota_fn, &c);
}

int e8s_ns_list(e8s_store *st, e8s_ns_info *out, size_t max, size_t *n_total) {
  if (!st || !n_total || (!out && max)) return store_err(E8S_ERR_INVAL, "ns_list: NULL");
  *n_total = 0;
  MDB_txn *txn;
  int e = store_rtxn_begin(st, &txn);
  if (e) return e;
  MDB_cursor *c;
  int rc = mdb_cursor_open(txn, st->db_ns, &c);
  MDB_val k, v;
  for (rc = rc ? rc : mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
       rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
    store_ns_val nv;
    if (k.mv_size != 4 || (v.mv_size != sizeof nv && v.mv_size != STORE_NS_VAL_V1)) continue;
    memset(&nv, 0, sizeof nv);
    memcpy(&nv, v.mv_data, v.mv_size);
    const uint8_t *b = k.mv_data;
    if (*n_total < max)
      to_info(&out[*n_total], (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3], &nv);
    (*n_total)++;
  }
  if (rc != MDB_NOTFOUND) e = store_err_mdb(rc, "ns_list");
  else mdb_cursor_close(c);
  store_rtxn_end(st, txn);
  return e;
}

/* ---------------------------------------------------------------- fingerprints */
typedef struct fp_ctx { const uint8_t *id; const void *blob; size_t n; } fp_ctx;

static int fp_fn(e8s_store *st, MDB_txn *txn, void *vc) {
  fp_ctx *c = vc;
  MDB_val k = {32, (void *)c->id}, v;
  int rc = mdb_get(txn, st->db_fp, &k, &v);
  if (rc == 0) {
    if (v.mv_size == c->n && memcmp(v.mv_data, c->blob, c->n) == 0) return E8S_OK;
    return store_err(E8S_ERR_CONFLICT, "fingerprint id registered with another blob");
  }
  if (rc != MDB_NOTFOUND) return store_err_mdb(rc, "get fp");
  return store_put(txn, st->db_fp, c->id, 32, c->blob, c->n);
}

int e8s_fp_register(e8s_store *st, const uint8_t fp_id[E8S_KEY_BYTES], const void *blob,
                    size_t blob_bytes) {
  if (!st || !fp_id || !blob || blob_bytes == 0 || blob_bytes > E8S_FP_BLOB_MAX)
    return store_err(E8S_ERR_INVAL, "fp_register: blob of %zu bytes (1..%u)", blob_bytes,
                     E8S_FP_BLOB_MAX);
  fp_ctx c = {fp_id, blob, blob_bytes};
  return store_wtxn_run(st, fp_fn, &c);
}

int e8s_fp_get(e8s_store *st, const uint8_t fp_id[E8S_KEY_BYTES], void *buf, size_t cap,
               size_t *blob_bytes) {
  if (!st || !fp_id || !blob_bytes || (!buf && cap)) return store_err(E8S_ERR_INVAL, "fp_get");
  MDB_txn *txn;
  int e = store_rtxn_begin(st, &txn);
  if (e) return e;
  MDB_val k = {32, (void *)fp_id}, v;
  int rc = mdb_get(txn, st->db_fp, &k, &v);
  if (rc == MDB_NOTFOUND) e = store_err(E8S_ERR_NOTFOUND, "fingerprint not registered");
  else if (rc) e = store_err_mdb(rc, "get fp");
  else {
    *blob_bytes = v.mv_size;
    if (cap < v.mv_size) e = store_err(E8S_ERR_RANGE, "fp_get: blob is %zu bytes", v.mv_size);
    else memcpy(buf, v.mv_data, v.mv_size);
  }
  store_rtxn_end(st, txn);
  return e;
}

/* Namespaces written before tokens/raw_bytes existed (value of STORE_NS_VAL_V1 bytes): rewrite
 * them at full size with their chunks' tokens summed (raw_bytes stays 0: older chunks lack it). */
static int cmp_u32(const void *a, const void *b) {
  uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
  return x < y ? -1 : x > y;
}

static int upgrade_sum(MDB_txn *txn, e8s_store *st, const uint32_t *ids, size_t n) {
  MDB_cursor *c;
  MDB_val k, v;
  int e = E8S_OK, rc = mdb_cursor_open(txn, st->db_chunks, &c);
  if (rc) return store_err_mdb(rc, "cursor");
  for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0 && !e;
       rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
    store_chunk_val cv;
    memset(&cv, 0, sizeof cv);
    if (v.mv_size != sizeof cv && v.mv_size != STORE_CHUNK_VAL_V1) continue;
    memcpy(&cv, v.mv_data, v.mv_size);
    if (!bsearch(&cv.ns_id, ids, n, sizeof *ids, cmp_u32)) continue;
    store_ns_val ns;
    if ((e = store_ns_load(txn, st, cv.ns_id, &ns))) break;
    ns.tokens += cv.n_tokens;
    ns.raw_bytes += cv.raw_bytes;
    e = store_ns_store(txn, st, cv.ns_id, &ns);
  }
  mdb_cursor_close(c);
  return e;
}

static int upgrade_fn(e8s_store *st, MDB_txn *txn, void *vc) {
  (void)vc;
  MDB_cursor *c;
  MDB_val k, v;
  uint32_t *ids = NULL;
  size_t n = 0, cap = 0;
  int e = E8S_OK, rc = mdb_cursor_open(txn, st->db_ns, &c);
  if (rc) return store_err_mdb(rc, "cursor");
  for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0;
       rc = mdb_cursor_get(c, &k, &v, MDB_NEXT)) {
    if (k.mv_size != 4 || v.mv_size != STORE_NS_VAL_V1) continue;
    if (n == cap) {
      uint32_t *m = realloc(ids, (cap = cap ? 2 * cap : 16) * sizeof *ids);
      if (!m) { e = E8S_ERR_NOMEM; break; }
      ids = m;
    }
    const uint8_t *b = k.mv_data;
    ids[n++] = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
  }
  mdb_cursor_close(c);
  for (size_t i = 0; i < n && !e; i++) { /* zeroed counters, full size */
    store_ns_val ns;
    if (!(e = store_ns_load(txn, st, ids[i], &ns))) e = store_ns_store(txn, st, ids[i], &ns);
  }
  if (!e && n) e = upgrade_sum(txn, st, ids, n);
  free(ids);
  return e;
}

int store_ns_upgrade(e8s_store *st) {
  MDB_txn *txn;
  MDB_cursor *c;
  MDB_val k, v;
  int legacy = 0, e = store_rtxn_begin(st, &txn);
  if (e) return e;
  int rc = mdb_cursor_open(txn, st->db_ns, &c);
  if (rc == 0) {
    for (rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); rc == 0 && !legacy;
         rc = mdb_cursor_get(c, &k, &v, MDB_NEXT))
      legacy = k.mv_size == 4 && v.mv_size == STORE_NS_VAL_V1;
    mdb_cursor_close(c);
  }
  store_rtxn_end(st, txn);
  return legacy ? store_wtxn_run(st, upgrade_fn, NULL) : E8S_OK; /* nothing to write: no txn */
}
