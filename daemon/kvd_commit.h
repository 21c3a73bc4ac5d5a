/* kvd_commit.h: group commit of concurrent PutChunks batches.
 *
 * libe8store makes one e8s_put call durable with one fdatasync, and serializes writers. When
 * several calls put at the same time, kvd_commit_put lets the first caller (the leader) take
 * every batch queued so far, merge those of the same (namespace, fingerprint) into one
 * e8s_put, and hand each caller its own records' results; the others wait. While a leader's
 * fdatasync runs, new batches queue up and go together in the next round. One caller alone
 * pays exactly what a direct e8s_put costs.
 *
 * Thread safety: any number of threads may call kvd_commit_put on one kvd_commit.
 */
#ifndef KVD_COMMIT_H
#define KVD_COMMIT_H

#include <stddef.h>
#include <stdint.h>

#include "store/e8store.h"

typedef struct kvd_commit kvd_commit;

kvd_commit *kvd_commit_create(e8s_store *st);
/* NULL is a no-op. No call may be in kvd_commit_put. */
void kvd_commit_free(kvd_commit *c);

/* Same contract as e8s_put (per-record result/existed filled, durable on return, return
 * value E8S_OK or the first failing record's code), but possibly written together with other
 * callers' records. recs and their payloads must stay valid until it returns. */
int kvd_commit_put(kvd_commit *c, uint32_t ns_id, const uint8_t fp_id[E8S_KEY_BYTES],
                   e8s_put_rec *recs, size_t n);

/* Store calls made and records written since creation (for tests and metrics). */
void kvd_commit_stats(kvd_commit *c, uint64_t *store_calls, uint64_t *records);

#endif
