/* kvd_purge.c: the pending purge list (see kvd_purge.h). A dense array under a mutex, in
 * the order chunks were deferred (kvd_purge_run hands it whole to one store call), with two
 * open-addressing tables beside it so that kvd_purge_defer costs O(1) on average instead of a
 * scan of the list (a purge of n leased chunks was O(n^2) under the lock: ~30 s of CPU to
 * add 2x10^5 chunks on the 2-core dev machine):
 *   idx  (namespace, key) -> position in the array + 1; keyed by the key's first 8 bytes,
 *        which are already uniform (chunk keys are SHA-256 with the namespace's salt, computed
 *        by e8kvd), mixed with the namespace id; linear probing, at most half full.
 *   nsc  namespace -> chunks pending, for the per-namespace bound and kvd_purge_pending.
 * Entries leave the list only in kvd_purge_run, which compacts the array and then rebuilds
 * both tables from it (O(n), as the run itself). */
#include "daemon/kvd_purge.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "daemon/kvd_log.h"

typedef struct purge_ent {
  uint32_t ns_id;
  uint8_t key[E8S_KEY_BYTES];
} purge_ent;

typedef struct ns_count {
  uint32_t ns_id;
  uint32_t used; /* 1: the slot holds ns_id (then count >= 1) */
  size_t count;
} ns_count;

#define KVD_PURGE_MIN_SLOTS 64u

struct kvd_purge {
  pthread_mutex_t mu;
  purge_ent *ents; /* the list: ents[0..n) */
  size_t n, cap;
  size_t *idx;     /* nidx slots (a power of 2): position + 1, 0 = empty; n <= nidx / 2 */
  size_t nidx;
  ns_count *nsc;   /* nnsc slots (a power of 2); nsc_used <= nnsc / 2 */
  size_t nnsc, nsc_used;
  size_t max_per_ns;      /* kvd_purge_create's bound */
  pthread_mutex_t run_mu; /* one run at a time (its deletes happen outside mu) */
  char *marker;           /* kvd_purge_set_marker's path, or NULL */
  int marked;             /* the marker file exists (under mu) */
};

kvd_purge *kvd_purge_create(size_t max_per_ns) {
  kvd_purge *p = calloc(1, sizeof *p);
  if (!p) return NULL;
  p->max_per_ns = max_per_ns ? max_per_ns : 1;
  pthread_mutex_init(&p->mu, NULL);
  pthread_mutex_init(&p->run_mu, NULL);
  return p;
}

void kvd_purge_free(kvd_purge *p) {
  if (!p) return;
  pthread_mutex_destroy(&p->mu);
  pthread_mutex_destroy(&p->run_mu);
  free(p->ents);
  free(p->idx);
  free(p->nsc);
  free(p->marker);
  free(p);
}

int kvd_purge_set_marker(kvd_purge *p, const char *path) {
  free(p->marker);
  p->marker = path ? strdup(path) : NULL;
  return path && !p->marker ? -1 : 0;
}

/* Under mu: the marker file made to exist (list not empty) or not (empty), as far as the file
 * system lets it; a failure is logged and tried again at the next change. */
static void marker_sync(kvd_purge *p) {
  if (!p->marker || (p->n != 0) == p->marked) return;
  if (p->n) {
    static const char text[] = "e8kvd had chunk purges pending (kvd_purge.h); if e8kvd is not "
                               "running, they were lost: `e8kvctl gc` deletes those chunks\n";
    int fd = open(p->marker, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    int ok = fd >= 0 && write(fd, text, sizeof text - 1) == (ssize_t)(sizeof text - 1) &&
             fsync(fd) == 0;
    if (fd >= 0) close(fd);
    if (ok) p->marked = 1;
    else KVD_WARN("purge_marker", "path=%s error=%s", p->marker, strerror(errno));
  } else if (unlink(p->marker) == 0 || errno == ENOENT) {
    p->marked = 0;
  } else {
    KVD_WARN("purge_marker", "path=%s error=%s", p->marker, strerror(errno));
  }
}

size_t kvd_purge_limit(const kvd_purge *p) { return p->max_per_ns; }

static size_t key_hash(uint32_t ns_id, const uint8_t key[E8S_KEY_BYTES]) {
  uint64_t h;
  memcpy(&h, key, sizeof h);
  return (size_t)(h ^ ((uint64_t)ns_id * 0x9e3779b97f4a7c15ull));
}

static size_t ns_hash(uint32_t ns_id) {
  return (size_t)(((uint64_t)ns_id * 0x9e3779b97f4a7c15ull) >> 32);
}

/* The idx slot of (ns_id, key): the one that holds it, or the empty one where it would go. */
static size_t idx_slot(const kvd_purge *p, uint32_t ns_id, const uint8_t key[E8S_KEY_BYTES]) {
  size_t mask = p->nidx - 1, i = key_hash(ns_id, key) & mask;
  for (; p->idx[i]; i = (i + 1) & mask) {
    const purge_ent *e = &p->ents[p->idx[i] - 1];
    if (e->ns_id == ns_id && memcmp(e->key, key, E8S_KEY_BYTES) == 0) break;
  }
  return i;
}

static ns_count *nsc_slot(const kvd_purge *p, uint32_t ns_id) {
  size_t mask = p->nnsc - 1, i = ns_hash(ns_id) & mask;
  while (p->nsc[i].used && p->nsc[i].ns_id != ns_id) i = (i + 1) & mask;
  return &p->nsc[i];
}

/* Smallest power of 2 >= KVD_PURGE_MIN_SLOTS and >= 2 * n. */
static size_t slots_for(size_t n) {
  size_t s = KVD_PURGE_MIN_SLOTS;
  while (s / 2 < n) s *= 2;
  return s;
}

/* Rebuilds idx with nslots (>= 2 * n) slots from ents. When that memory cannot be had: -1 for
 * a larger table (nothing changed), the old table rebuilt in place for a smaller one. */
static int idx_rebuild(kvd_purge *p, size_t nslots) {
  size_t *t = nslots == p->nidx ? p->idx : calloc(nslots, sizeof *t);
  if (!t) {
    if (nslots > p->nidx) return -1;
    t = p->idx, nslots = p->nidx;
  }
  if (t != p->idx) free(p->idx);
  memset(t, 0, nslots * sizeof *t);
  p->idx = t, p->nidx = nslots;
  for (size_t i = 0; i < p->n; i++) p->idx[idx_slot(p, p->ents[i].ns_id, p->ents[i].key)] = i + 1;
  return 0;
}

/* Rebuilds nsc (nslots >= 2 x the namespaces in ents) from ents; as idx_rebuild. */
static int nsc_rebuild(kvd_purge *p, size_t nslots) {
  ns_count *t = nslots == p->nnsc ? p->nsc : calloc(nslots, sizeof *t);
  if (!t) {
    if (nslots > p->nnsc) return -1;
    t = p->nsc, nslots = p->nnsc;
  }
  if (t != p->nsc) free(p->nsc);
  memset(t, 0, nslots * sizeof *t);
  p->nsc = t, p->nnsc = nslots, p->nsc_used = 0;
  for (size_t i = 0; i < p->n; i++) {
    ns_count *c = nsc_slot(p, p->ents[i].ns_id);
    if (!c->used) c->used = 1, c->ns_id = p->ents[i].ns_id, p->nsc_used++;
    c->count++;
  }
  return 0;
}

/* Room for one more entry (array, idx) and one more namespace (nsc). 0 or KVD_PURGE_NOMEM. */
static int make_room(kvd_purge *p) {
  if (p->n == p->cap) {
    size_t cap = p->cap ? 2 * p->cap : KVD_PURGE_MIN_SLOTS;
    purge_ent *e = cap > p->cap ? realloc(p->ents, cap * sizeof *e) : NULL;
    if (!e) return KVD_PURGE_NOMEM;
    p->ents = e;
    p->cap = cap;
  }
  if (p->nidx / 2 < p->n + 1 && idx_rebuild(p, slots_for(p->n + 1))) return KVD_PURGE_NOMEM;
  if (p->nnsc / 2 < p->nsc_used + 1 && nsc_rebuild(p, slots_for(p->nsc_used + 1)))
    return KVD_PURGE_NOMEM;
  return 0;
}

int kvd_purge_defer(kvd_purge *p, uint32_t ns_id, const uint8_t key[E8S_KEY_BYTES]) {
  int rc = 0;
  pthread_mutex_lock(&p->mu);
  if (p->n && p->idx[idx_slot(p, ns_id, key)]) goto out; /* pending already */
  if (p->n && nsc_slot(p, ns_id)->count >= p->max_per_ns) {
    rc = KVD_PURGE_FULL;
    goto out;
  }
  if ((rc = make_room(p))) goto out;
  p->ents[p->n].ns_id = ns_id;
  memcpy(p->ents[p->n].key, key, E8S_KEY_BYTES);
  p->n++;
  p->idx[idx_slot(p, ns_id, key)] = p->n;
  ns_count *c = nsc_slot(p, ns_id);
  if (!c->used) c->used = 1, c->ns_id = ns_id, p->nsc_used++;
  c->count++;
  marker_sync(p);
out:
  pthread_mutex_unlock(&p->mu);
  return rc;
}

size_t kvd_purge_run(kvd_purge *p, e8s_store *st) {
  size_t deleted = 0;
  pthread_mutex_lock(&p->run_mu);
  pthread_mutex_lock(&p->mu);
  size_t n = p->n;
  purge_ent *snap = n ? malloc(n * sizeof *snap) : NULL;
  if (snap) memcpy(snap, p->ents, n * sizeof *snap);
  pthread_mutex_unlock(&p->mu);
  if (!snap) goto out;
  /* one store call for the whole list (a write transaction per 1024 chunks: a release that
   * ends a lease on thousands of pending chunks took one index commit each, ~1.6 ms apiece,
   * inside the GetChunks that released it, holding run_mu against every other one) */
  char *forget = calloc(n, 1);
  uint32_t *ns = malloc(n * sizeof *ns), *refs = malloc(n * sizeof *refs);
  uint8_t(*keys)[E8S_KEY_BYTES] = malloc(n * sizeof *keys);
  int *res = malloc(n * sizeof *res);
  if (!forget || !ns || !refs || !keys || !res) {
    free(forget), free(ns), free(refs), free(keys), free(res), free(snap);
    goto out;
  }
  for (size_t i = 0; i < n; i++) ns[i] = snap[i].ns_id, memcpy(keys[i], snap[i].key, E8S_KEY_BYTES);
  e8s_chunks_delete(st, ns, (const uint8_t(*)[E8S_KEY_BYTES])keys, n, res, refs);
  /* forget it when deleted, gone, or a session lists it; keep it while a read or a lease
   * holds it, or after another error (READONLY, IO...: try again next run) */
  for (size_t i = 0; i < n; i++) {
    deleted += res[i] == E8S_OK;
    forget[i] = (char)(res[i] == E8S_OK || res[i] == E8S_ERR_NOTFOUND ||
                       (res[i] == E8S_ERR_BUSY && refs[i] > 0));
  }
  free(ns), free(refs), free(keys), free(res);
  /* drop the forgotten ones; entries deferred meanwhile were appended after the first n */
  pthread_mutex_lock(&p->mu);
  size_t w = 0;
  for (size_t i = 0; i < p->n; i++)
    if (i >= n || !forget[i]) p->ents[w++] = p->ents[i];
  p->n = w;
  /* the positions moved: new tables, sized to what is left (a big purge's memory goes back);
   * when that memory cannot be had the old tables, large enough, are rebuilt in place */
  if (p->idx) {
    idx_rebuild(p, slots_for(w));
    nsc_rebuild(p, slots_for(p->nsc_used));
  }
  marker_sync(p);
  pthread_mutex_unlock(&p->mu);
  free(forget);
  free(snap);
  if (deleted) KVD_INFO("purge_pending_done", "chunks_purged=%zu still_pending=%zu", deleted, w);
out:
  pthread_mutex_unlock(&p->run_mu);
  return deleted;
}

size_t kvd_purge_pending(kvd_purge *p, uint32_t ns_id) {
  pthread_mutex_lock(&p->mu);
  size_t k = !ns_id ? p->n : p->n ? nsc_slot(p, ns_id)->count : 0;
  pthread_mutex_unlock(&p->mu);
  return k;
}
