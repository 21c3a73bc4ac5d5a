/* kvd_swrite.h: the all-or-nothing session change at the end of a PutChunks call.
 *
 * A put that names a session changes it in one of three ways, after its chunks are stored:
 *   APPEND   the session exists and grows at its end (metadata entries may be set too);
 *   CREATE   the session does not exist yet;
 *   CUT      the session exists and is cut at a chunk boundary (session_start_token), its
 *            first keep_chunks chunks kept and the new chunks appended after them.
 * libe8store has one transaction per call (e8s_session_create / _append / _set_meta), so a
 * change takes at most two store steps. kvd_swrite_commit orders them so that a failed
 * SECOND step is undone by one compensating step that restores the session as it was:
 *   APPEND   set_meta (if any), append          undo: set_meta(old metadata)
 *   CREATE   create, append                     undo: delete
 *   CUT      create REPLACE, append(kept + new) undo: create REPLACE(old metadata),
 *                                                     append(old chain)
 * During a CUT the old chain's chunks are held by read pins (e8s_chunk_open), so dropping the
 * session's pins at the REPLACE step never lets eviction take them before the undo. If the
 * undo itself fails (a second fault), the error says so and names the session's state.
 * Errors (a failed step, or the undo) are therefore never partly committed; a crash of the
 * process between two steps is (see the PutChunksResponse comment in the .proto).
 *
 * The caller holds the session's write lock (kvd_session_lock) for the whole call.
 */
#ifndef KVD_SWRITE_H
#define KVD_SWRITE_H

#include "daemon/kvd_session.h"

typedef struct kvd_swrite {
  uint32_t ns;
  const char *name;
  const uint8_t *fp_id;                  /* the session's fingerprint id (32 bytes) */
  const kvd_sess *old;                   /* the session as loaded (with keys); NULL: CREATE */
  uint64_t keep_chunks;                  /* CUT: chunks of old kept; = old n_chunks: APPEND */
  const uint8_t *meta;                   /* new metadata blob (CREATE and CUT always; APPEND */
  size_t meta_len;                       /*   when set_meta) */
  int set_meta;                          /* APPEND: replace the metadata with meta */
  const uint8_t (*keys)[E8S_KEY_BYTES];  /* the new chunks, in chain order */
  size_t n_keys;
} kvd_swrite;

/* Applies w to the store, all or nothing (see above). 0, or -1 with st set: ABORTED when a
 * concurrent change made the chain not continue (e8s CONFLICT/EXISTS), else the store's
 * code; INTERNAL when an undo failed too. */
int kvd_swrite_commit(e8s_store *s, const kvd_swrite *w, kvd_status *st);

/* Test-only fault injection (process-wide): after `skip` store steps of kvd_swrite_commit
 * pass, the next `count` fail with E8S_ERR_NOSPC before reaching the store (undo steps count
 * too). kvd_swrite_test_fault(0, 0) turns it off. */
void kvd_swrite_test_fault(unsigned skip, unsigned count);

#endif
