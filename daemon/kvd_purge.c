/* kvd_purge.c: the pending purge list (see kvd_purge.h). A plain array under a mutex: the
 * list is short-lived (entries last at most a lease, 30 s by default) and is scanned whole by
 * every run anyway. */
#include "daemon/kvd_purge.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "daemon/kvd_log.h"

typedef struct purge_ent {
  uint32_t ns_id;
  uint8_t key[E8S_KEY_BYTES];
} purge_ent;

struct kvd_purge {
  pthread_mutex_t mu;
  purge_ent *ents;
  size_t n, cap;
  size_t max_per_ns;      /* kvd_purge_create's bound */
  pthread_mutex_t run_mu; /* one run at a time (its deletes happen outside mu) */
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
  free(p);
}

size_t kvd_purge_limit(const kvd_purge *p) { return p->max_per_ns; }

static int ent_is(const purge_ent *e, uint32_t ns_id, const uint8_t key[E8S_KEY_BYTES]) {
  return e->ns_id == ns_id && memcmp(e->key, key, E8S_KEY_BYTES) == 0;
}

int kvd_purge_defer(kvd_purge *p, uint32_t ns_id, const uint8_t key[E8S_KEY_BYTES]) {
  int rc = 0;
  pthread_mutex_lock(&p->mu);
  size_t mine = 0;
  for (size_t i = 0; i < p->n; i++) {
    if (ent_is(&p->ents[i], ns_id, key)) goto out;
    mine += p->ents[i].ns_id == ns_id;
  }
  if (mine >= p->max_per_ns) {
    rc = KVD_PURGE_FULL;
    goto out;
  }
  if (p->n == p->cap) {
    size_t cap = p->cap ? 2 * p->cap : 64;
    purge_ent *e = cap > p->cap ? realloc(p->ents, cap * sizeof *e) : NULL;
    if (!e) { rc = KVD_PURGE_NOMEM; goto out; }
    p->ents = e;
    p->cap = cap;
  }
  p->ents[p->n].ns_id = ns_id;
  memcpy(p->ents[p->n].key, key, E8S_KEY_BYTES);
  p->n++;
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
  pthread_mutex_unlock(&p->mu);
  free(forget);
  free(snap);
  if (deleted) KVD_INFO("purge_pending_done", "chunks_purged=%zu still_pending=%zu", deleted, w);
out:
  pthread_mutex_unlock(&p->run_mu);
  return deleted;
}

size_t kvd_purge_pending(kvd_purge *p, uint32_t ns_id) {
  size_t k = 0;
  pthread_mutex_lock(&p->mu);
  for (size_t i = 0; i < p->n; i++) k += !ns_id || p->ents[i].ns_id == ns_id;
  pthread_mutex_unlock(&p->mu);
  return k;
}
