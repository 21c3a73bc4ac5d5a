/* store_pin.c: in-memory pins and LRU touches.
 *
 * Pins that must not outlive the process live here, not in LMDB: read pins (an open
 * e8s_chunk) and lookup leases (E8S_LOOKUP_PIN, expiring after cfg.lease_ms). Session pins are
 * the persistent refcount in the chunk record instead. A hash table of store_pin entries keyed
 * by chunk key, all under pin_mu; eviction asks store_pin_is_pinned inside its transaction.
 *
 * Touches: a read must not need a write transaction, so readers append (key, tick) to a list
 * that the writer applies to the LRU databases at the start of its next write transaction.
 * If the list is full the reader applies it itself when the writer mutex is free, and otherwise
 * drops the touch (LRU order is then slightly approximate, never wrong about pins). */
#include <stdlib.h>
#include <string.h>

#include "store/store_int.h"

static unsigned bucket(const uint8_t key[32]) {
  unsigned h;
  memcpy(&h, key, sizeof h);
  return h % STORE_PIN_BUCKETS;
}

static store_pin *pin_find(e8s_store *st, const uint8_t key[32], int create) {
  store_pin **pp = &st->pins[bucket(key)];
  for (store_pin *p = *pp; p; p = p->next)
    if (memcmp(p->key, key, 32) == 0) return p;
  if (!create) return NULL;
  store_pin *p = calloc(1, sizeof *p);
  if (!p) return NULL;
  memcpy(p->key, key, 32);
  p->next = *pp;
  *pp = p;
  return p;
}

static void pin_gc(e8s_store *st, store_pin *p) {
  if (p->readers || p->leases) return;
  store_pin **pp = &st->pins[bucket(p->key)];
  while (*pp != p) pp = &(*pp)->next;
  *pp = p->next;
  free(p);
}

void store_pin_reader_add(e8s_store *st, const uint8_t key[32]) {
  pthread_mutex_lock(&st->pin_mu);
  store_pin *p = pin_find(st, key, 1);
  if (p) p->readers++;
  pthread_mutex_unlock(&st->pin_mu);
}

void store_pin_reader_drop(e8s_store *st, const uint8_t key[32]) {
  pthread_mutex_lock(&st->pin_mu);
  store_pin *p = pin_find(st, key, 0);
  if (p && p->readers) {
    p->readers--;
    pin_gc(st, p);
  }
  pthread_mutex_unlock(&st->pin_mu);
}

int e8s_keys_pin(e8s_store *st, const uint8_t (*keys)[E8S_KEY_BYTES], size_t n) {
  if (!st || (n && !keys)) return store_err(E8S_ERR_INVAL, "keys_pin: NULL argument");
  pthread_mutex_lock(&st->pin_mu);
  size_t i = 0;
  for (; i < n; i++) {
    store_pin *p = pin_find(st, keys[i], 1);
    if (!p) break;
    p->readers++;
  }
  pthread_mutex_unlock(&st->pin_mu);
  if (i == n) return E8S_OK;
  e8s_keys_unpin(st, keys, i);
  return store_err(E8S_ERR_NOMEM, "keys_pin: no memory");
}

void e8s_keys_unpin(e8s_store *st, const uint8_t (*keys)[E8S_KEY_BYTES], size_t n) {
  if (!st || !keys) return;
  for (size_t i = 0; i < n; i++) store_pin_reader_drop(st, keys[i]);
}

int store_pin_is_pinned(e8s_store *st, const uint8_t key[32], uint64_t now_ms) {
  pthread_mutex_lock(&st->pin_mu);
  store_pin *p = pin_find(st, key, 0);
  int pinned = p && (p->readers > 0 || (p->leases > 0 && p->lease_until_ms > now_ms));
  pthread_mutex_unlock(&st->pin_mu);
  return pinned;
}

static store_lease_ns *ns_count(e8s_store *st, uint32_t ns_id, int create) { /* pin_mu */
  for (store_lease_ns *c = st->lease_ns; c; c = c->next)
    if (c->ns_id == ns_id) return c;
  if (!create) return NULL;
  store_lease_ns *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->ns_id = ns_id;
  c->next = st->lease_ns;
  st->lease_ns = c;
  return c;
}

static void lease_unpin(e8s_store *st, store_lease *l) { /* pin_mu held */
  st->lease_chunks -= l->n;
  store_lease_ns *c = ns_count(st, l->ns_id, 0);
  if (c) c->chunks -= l->n;
  for (size_t i = 0; i < l->n; i++) {
    store_pin *p = pin_find(st, l->keys[i], 0);
    if (!p || !p->leases) continue;
    if (--p->leases == 0) p->lease_until_ms = 0;
    pin_gc(st, p);
  }
  free(l->keys);
  free(l);
}

/* Unlinks lease `l` whose predecessor is prev (NULL = head). pin_mu held. */
static void lease_unlink(e8s_store *st, store_lease *prev, store_lease *l) {
  if (prev) prev->next = l->next;
  else st->leases = l->next;
  if (st->leases_tail == l) st->leases_tail = prev;
}

int store_lease_drop(e8s_store *st, uint64_t id) {
  uint64_t now = store_mono_ms();
  pthread_mutex_lock(&st->pin_mu);
  store_lease *prev = NULL, *l = st->leases;
  while (l && l->id != id) prev = l, l = l->next;
  int found = l && l->until_ms > now;
  if (l) {
    lease_unlink(st, prev, l);
    lease_unpin(st, l);
  }
  pthread_mutex_unlock(&st->pin_mu);
  return found ? E8S_OK : store_err(E8S_ERR_NOTFOUND, "lease %llu unknown, expired, or "
                                    "ended early by the lease caps (lease_max_chunks)",
                                    (unsigned long long)id);
}

/* Drops the oldest lease of namespace ns_id (any namespace if 0); 0 if there is none. */
static int drop_oldest(e8s_store *st, uint32_t ns_id) { /* pin_mu held */
  store_lease *prev = NULL, *l = st->leases;
  while (l && ns_id && l->ns_id != ns_id) prev = l, l = l->next;
  if (!l) return 0;
  lease_unlink(st, prev, l);
  lease_unpin(st, l);
  atomic_fetch_add(&st->c_lease_dropped, 1);
  return 1;
}

uint64_t store_lease_create(e8s_store *st, uint32_t ns_id, const uint8_t (*keys)[32], size_t n) {
  if (n > st->cfg.lease_max_chunks || n > st->cfg.lease_ns_max_chunks) return UINT64_MAX;
  store_lease *l = calloc(1, sizeof *l);
  if (!l) return 0;
  l->keys = malloc(n * 32);
  if (!l->keys) {
    free(l);
    return 0;
  }
  memcpy(l->keys, keys, n * 32);
  l->n = n;
  l->ns_id = ns_id;
  uint64_t now = store_mono_ms();
  l->until_ms = now + st->cfg.lease_ms;
  store_lease_expire(st, now);
  pthread_mutex_lock(&st->pin_mu);
  store_lease_ns *c = ns_count(st, ns_id, 1);
  if (!c) {
    pthread_mutex_unlock(&st->pin_mu);
    free(l->keys);
    free(l);
    return 0;
  }
  /* the caps: the namespace's oldest leases end first, then the store's */
  while (c->chunks + n > st->cfg.lease_ns_max_chunks && drop_oldest(st, ns_id)) {}
  while (st->lease_chunks + n > st->cfg.lease_max_chunks && drop_oldest(st, 0)) {}
  l->id = ++st->next_lease_id;
  for (size_t i = 0; i < n; i++) {
    store_pin *p = pin_find(st, keys[i], 1);
    if (!p) continue; /* out of memory: this key is simply not pinned */
    p->leases++;
    if (p->lease_until_ms < l->until_ms) p->lease_until_ms = l->until_ms;
  }
  st->lease_chunks += n;
  c->chunks += n;
  if (st->leases_tail) st->leases_tail->next = l;
  else st->leases = l;
  st->leases_tail = l;
  uint64_t id = l->id;
  pthread_mutex_unlock(&st->pin_mu);
  return id;
}

void store_lease_expire(e8s_store *st, uint64_t now_ms) {
  pthread_mutex_lock(&st->pin_mu);
  /* leases are created in expiry order (one lease_ms for all), so expired ones are a prefix */
  while (st->leases && st->leases->until_ms <= now_ms) {
    store_lease *l = st->leases;
    lease_unlink(st, NULL, l);
    lease_unpin(st, l);
  }
  pthread_mutex_unlock(&st->pin_mu);
}

void e8s_leases_end(e8s_store *st) {
  if (st) store_lease_expire(st, UINT64_MAX);
}

void store_pin_free(e8s_store *st) {
  while (st->leases) {
    store_lease *l = st->leases;
    st->leases = l->next;
    free(l->keys);
    free(l);
  }
  st->leases_tail = NULL;
  while (st->lease_ns) {
    store_lease_ns *c = st->lease_ns;
    st->lease_ns = c->next;
    free(c);
  }
  st->lease_chunks = 0;
  for (int b = 0; b < STORE_PIN_BUCKETS; b++) {
    store_pin *p = st->pins[b];
    while (p) {
      store_pin *n = p->next;
      free(p);
      p = n;
    }
    st->pins[b] = NULL;
  }
  free(st->touches);
  st->touches = NULL;
  st->n_touches = 0;
}

/* ---------------------------------------------------------------- touches */
static int flush_wtxn(e8s_store *st, MDB_txn *txn, void *ctx) {
  (void)st, (void)txn, (void)ctx;
  return E8S_OK; /* store_wtxn_run_locked applies the touches before calling this */
}

void store_touch(e8s_store *st, const uint8_t key[32]) {
  if (st->readonly) return;
  uint64_t t = atomic_fetch_add(&st->tick, 1) + 1;
  pthread_mutex_lock(&st->pin_mu);
  int full = st->n_touches >= STORE_TOUCH_MAX;
  if (!full && st->touches) {
    memcpy(st->touches[st->n_touches].key, key, 32);
    st->touches[st->n_touches++].tick = t;
  }
  pthread_mutex_unlock(&st->pin_mu);
  if (full && pthread_mutex_trylock(&st->wlock) == 0) {
    store_wtxn_run_locked(st, flush_wtxn, NULL);
    pthread_mutex_unlock(&st->wlock);
  }
}

static int touch_one(MDB_txn *txn, e8s_store *st, const store_touch_ent *t) {
  store_chunk_val v;
  int e = store_chunk_get(txn, st, t->key, &v);
  if (e == E8S_ERR_NOTFOUND || (e == E8S_OK && v.tick >= t->tick)) return E8S_OK;
  if (e) return e;
  if (v.refs == 0) { /* only unpinned chunks are in the LRU databases */
    uint8_t k[44], nk[44];
    store_be64(k, v.tick);
    memcpy(k + 8, t->key, 32);
    store_be32(nk, v.ns_id);
    store_be64(nk + 4, v.tick);
    memcpy(nk + 12, t->key, 32);
    if ((e = store_del(txn, st->db_lru, k, 40)) || (e = store_del(txn, st->db_nslru, nk, 44)))
      return e;
    store_be64(k, t->tick);
    store_be64(nk + 4, t->tick);
    uint8_t ns[4];
    store_be32(ns, v.ns_id);
    if ((e = store_put(txn, st->db_lru, k, 40, ns, 4)) ||
        (e = store_put(txn, st->db_nslru, nk, 44, "", 0)))
      return e;
  }
  v.tick = t->tick;
  return store_put(txn, st->db_chunks, t->key, 32, &v, sizeof v);
}

int store_touch_flush(e8s_store *st, MDB_txn *txn) {
  pthread_mutex_lock(&st->pin_mu);
  size_t n = st->n_touches;
  store_touch_ent *list = NULL;
  if (n) {
    list = malloc(n * sizeof *list);
    if (list) memcpy(list, st->touches, n * sizeof *list);
    st->n_touches = 0;
  }
  pthread_mutex_unlock(&st->pin_mu);
  int e = E8S_OK;
  for (size_t i = 0; list && i < n && e == E8S_OK; i++) e = touch_one(txn, st, &list[i]);
  free(list);
  if (e == E8S_OK) e = store_meta_put_u64(txn, st, "tick", atomic_load(&st->tick));
  return e;
}
