/* kvd_commit.c: leader/follower group commit over e8s_put (see kvd_commit.h). */
#include "daemon/kvd_commit.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

typedef struct kvd_creq {
  uint32_t ns;
  const uint8_t *fp;
  e8s_put_rec *recs;
  size_t n;
  int rc, done;
  struct kvd_creq *next;
} kvd_creq;

struct kvd_commit {
  e8s_store *st;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  kvd_creq *head, **tail;
  int leader;
  atomic_ullong calls, records;
};

kvd_commit *kvd_commit_create(e8s_store *st) {
  kvd_commit *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->st = st;
  c->tail = &c->head;
  pthread_mutex_init(&c->mu, NULL);
  pthread_cond_init(&c->cv, NULL);
  return c;
}

void kvd_commit_free(kvd_commit *c) {
  if (!c) return;
  pthread_mutex_destroy(&c->mu);
  pthread_cond_destroy(&c->cv);
  free(c);
}

static int first_error(const e8s_put_rec *r, size_t n, int fallback) {
  for (size_t i = 0; i < n; i++)
    if (r[i].result != E8S_OK) return r[i].result;
  return fallback;
}

/* One store call for the requests of group g[0..ng) (same ns and fingerprint). */
static void put_group(kvd_commit *c, kvd_creq **g, size_t ng) {
  size_t total = 0;
  for (size_t i = 0; i < ng; i++) total += g[i]->n;
  e8s_put_rec *all = ng == 1 ? g[0]->recs : malloc(total * sizeof *all);
  if (!all) { /* no memory to merge: one call each */
    for (size_t i = 0; i < ng; i++) {
      g[i]->rc = e8s_put(c->st, g[i]->ns, g[i]->fp, g[i]->recs, g[i]->n);
      atomic_fetch_add(&c->calls, 1);
      atomic_fetch_add(&c->records, g[i]->n);
    }
    return;
  }
  for (size_t i = 0, k = 0; ng > 1 && i < ng; k += g[i]->n, i++)
    memcpy(all + k, g[i]->recs, g[i]->n * sizeof *all);
  int rc = e8s_put(c->st, g[0]->ns, g[0]->fp, all, total);
  atomic_fetch_add(&c->calls, 1);
  atomic_fetch_add(&c->records, total);
  for (size_t i = 0, k = 0; i < ng; k += g[i]->n, i++) {
    if (ng > 1) memcpy(g[i]->recs, all + k, g[i]->n * sizeof *all);
    g[i]->rc = rc == E8S_OK ? E8S_OK : first_error(g[i]->recs, g[i]->n, rc);
  }
  if (ng > 1) free(all);
}

/* Commits a taken queue: groups by (ns, fingerprint), in arrival order. */
static void run_batch(kvd_commit *c, kvd_creq *list) {
  size_t n = 0;
  for (kvd_creq *r = list; r; r = r->next) n++;
  kvd_creq **v = malloc(n * sizeof *v), **g = malloc(n * sizeof *g);
  char *taken = calloc(n, 1);
  if (!v || !g || !taken) {
    for (kvd_creq *r = list; r; r = r->next) {
      r->rc = e8s_put(c->st, r->ns, r->fp, r->recs, r->n);
      atomic_fetch_add(&c->calls, 1);
      atomic_fetch_add(&c->records, r->n);
    }
    free(v); free(g); free(taken);
    return;
  }
  size_t i = 0;
  for (kvd_creq *r = list; r; r = r->next) v[i++] = r;
  for (i = 0; i < n; i++) {
    if (taken[i]) continue;
    size_t ng = 0;
    for (size_t j = i; j < n; j++)
      if (!taken[j] && v[j]->ns == v[i]->ns && memcmp(v[j]->fp, v[i]->fp, E8S_KEY_BYTES) == 0) {
        taken[j] = 1;
        g[ng++] = v[j];
      }
    put_group(c, g, ng);
  }
  free(v);
  free(g);
  free(taken);
}

int kvd_commit_put(kvd_commit *c, uint32_t ns_id, const uint8_t fp_id[E8S_KEY_BYTES],
                   e8s_put_rec *recs, size_t n) {
  kvd_creq me = {.ns = ns_id, .fp = fp_id, .recs = recs, .n = n};
  pthread_mutex_lock(&c->mu);
  *c->tail = &me;
  c->tail = &me.next;
  while (!me.done) {
    if (c->leader) { pthread_cond_wait(&c->cv, &c->mu); continue; }
    c->leader = 1; /* lead one round: everything queued so far (us included) */
    kvd_creq *list = c->head;
    c->head = NULL;
    c->tail = &c->head;
    pthread_mutex_unlock(&c->mu);
    run_batch(c, list);
    pthread_mutex_lock(&c->mu);
    for (kvd_creq *r = list, *nx; r; r = nx) { nx = r->next; r->done = 1; }
    c->leader = 0;
    pthread_cond_broadcast(&c->cv);
  }
  pthread_mutex_unlock(&c->mu);
  return me.rc;
}

void kvd_commit_stats(kvd_commit *c, uint64_t *store_calls, uint64_t *records) {
  *store_calls = atomic_load(&c->calls);
  *records = atomic_load(&c->records);
}
