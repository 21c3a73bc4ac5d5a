/* kvd_swrite.c: all-or-nothing session change of a PutChunks call (see kvd_swrite.h). */
#include "daemon/kvd_swrite.h"

#include <stdio.h>
#include <string.h>

/* The error of the failed change; the session is as it was (one store transaction). */
static int fail(const kvd_swrite *w, int e, kvd_status *st) {
  if (e == E8S_ERR_CONFLICT || e == E8S_ERR_EXISTS)
    return kvd_error(st, KVD_ABORTED, "session '%s' was changed by another writer during "
                                      "this call; its chunks are stored, the session is "
                                      "unchanged", w->name);
  kvd_store_error(st, e, "update session");
  size_t n = strlen(st->msg);
  snprintf(st->msg + n, sizeof st->msg - n, " (session '%s' unchanged)", w->name);
  return -1;
}

int kvd_swrite_commit(e8s_store *s, const kvd_swrite *w, kvd_status *st) {
  int cut = w->old && w->keep_chunks < w->old->info.n_chunks;
  e8s_session_change c = {.create = w->old == NULL, .fp_id = w->fp_id,
                          .expect_chunks = w->old ? w->old->info.n_chunks : 0,
                          .keep_chunks = w->old ? w->keep_chunks : 0,
                          .set_meta = !w->old || cut || w->set_meta,
                          .meta = w->meta, .meta_bytes = w->meta_len,
                          .keys = w->keys, .n_keys = w->n_keys};
  int e = e8s_session_write(s, w->ns, w->name, &c);
  return e == E8S_OK ? 0 : fail(w, e, st);
}
