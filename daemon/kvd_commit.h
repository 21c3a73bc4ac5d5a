/* kvd_commit.h: the PutChunks path into libe8store.
 *
 * Each PutChunks batch is one e8s_put from the calling gRPC worker thread, concurrently with
 * the other workers' batches. libe8store groups concurrent e8s_put calls itself (group commit:
 * shared io_uring submissions, one fdatasync per segment, one LMDB commit per index stage) and
 * overlaps groups in its write pipeline over two write lanes (store/e8store.h, THREAD SAFETY),
 * so N workers get more throughput than one; merging them here first (a single leader making
 * one e8s_put at a time, as before) serialised the store's pipeline. The wrapper keeps the
 * counts for metrics.
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

/* e8s_put (same contract: per-record result/existed filled, durable on return, return value
 * E8S_OK or the first failing record's code); the store may write the records together with
 * other callers'. recs and their payloads must stay valid until it returns. */
int kvd_commit_put(kvd_commit *c, uint32_t ns_id, const uint8_t fp_id[E8S_KEY_BYTES],
                   e8s_put_rec *recs, size_t n);

/* e8s_put calls made and records passed since creation (for tests and metrics). */
void kvd_commit_stats(kvd_commit *c, uint64_t *store_calls, uint64_t *records);

#endif
