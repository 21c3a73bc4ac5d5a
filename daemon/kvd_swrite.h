/* kvd_swrite.h: the all-or-nothing session change at the end of a PutChunks call.
 *
 * A put that names a session changes it in one of three ways, after its chunks are stored:
 *   APPEND   the session exists and grows at its end (metadata entries may be set too);
 *   CREATE   the session does not exist yet;
 *   CUT      the session exists and is cut at a chunk boundary (session_start_token), its
 *            first keep_chunks chunks kept and the new chunks appended after them.
 * Each is ONE libe8store call, e8s_session_write, which runs in one LMDB transaction: the
 * change is all or nothing on errors and across a crash of the process (tested by SIGKILL in
 * tests/store/test_store_crash.c and by failing changes in tests/daemon/test_kvd_swrite.c).
 * If the session changed since the caller loaded it (another chunk count than old's, or it
 * now exists for a CREATE), the store refuses and the call says ABORTED.
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
 * code; the message says the session is unchanged. */
int kvd_swrite_commit(e8s_store *s, const kvd_swrite *w, kvd_status *st);

#endif
