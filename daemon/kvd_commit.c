/* kvd_commit.c: PutChunks batches straight into e8s_put, in parallel (see kvd_commit.h). */
#include "daemon/kvd_commit.h"

#include <stdatomic.h>
#include <stdlib.h>

struct kvd_commit {
  e8s_store *st;
  atomic_ullong calls, records;
};

kvd_commit *kvd_commit_create(e8s_store *st) {
  kvd_commit *c = calloc(1, sizeof *c);
  if (c) c->st = st;
  return c;
}

void kvd_commit_free(kvd_commit *c) { free(c); }

int kvd_commit_put(kvd_commit *c, uint32_t ns_id, const uint8_t fp_id[E8S_KEY_BYTES],
                   e8s_put_rec *recs, size_t n) {
  int rc = e8s_put(c->st, ns_id, fp_id, recs, n);
  atomic_fetch_add(&c->calls, 1);
  atomic_fetch_add(&c->records, n);
  return rc;
}

void kvd_commit_stats(kvd_commit *c, uint64_t *store_calls, uint64_t *records) {
  *store_calls = atomic_load(&c->calls);
  *records = atomic_load(&c->records);
}
