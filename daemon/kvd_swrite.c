/* kvd_swrite.c: all-or-nothing session change of a PutChunks call (see kvd_swrite.h). */
#include "daemon/kvd_swrite.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static _Atomic unsigned f_skip, f_count;

void kvd_swrite_test_fault(unsigned skip, unsigned count) {
  atomic_store(&f_count, 0);
  atomic_store(&f_skip, skip);
  atomic_store(&f_count, count);
}

/* 1 when the next store step must fail (fault injection). */
static int fault_now(void) {
  if (atomic_load_explicit(&f_count, memory_order_relaxed) == 0) return 0;
  unsigned s = atomic_load(&f_skip);
  while (s > 0)
    if (atomic_compare_exchange_weak(&f_skip, &s, s - 1)) return 0;
  unsigned c = atomic_load(&f_count);
  while (c > 0)
    if (atomic_compare_exchange_weak(&f_count, &c, c - 1)) return 1;
  return 0;
}

/* ------------------------------------------------------------------ store steps */

static int step_create(e8s_store *s, const kvd_swrite *w, const void *meta, size_t len,
                       uint32_t flags) {
  if (fault_now()) return E8S_ERR_NOSPC;
  return e8s_session_create(s, w->ns, w->name, w->fp_id, meta, len, flags);
}

static int step_append(e8s_store *s, const kvd_swrite *w, const uint8_t (*keys)[E8S_KEY_BYTES],
                       size_t n) {
  if (n == 0) return E8S_OK;
  if (fault_now()) return E8S_ERR_NOSPC;
  return e8s_session_append(s, w->ns, w->name, keys, n);
}

static int step_meta(e8s_store *s, const kvd_swrite *w, const void *meta, size_t len) {
  if (fault_now()) return E8S_ERR_NOSPC;
  return e8s_session_set_meta(s, w->ns, w->name, meta, len);
}

static int step_delete(e8s_store *s, const kvd_swrite *w) {
  if (fault_now()) return E8S_ERR_NOSPC;
  return e8s_session_delete(s, w->ns, w->name);
}

/* The error of a failed (first or second) step; the session is as it was. */
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

static int undo_failed(const kvd_swrite *w, int e, int u, const char *state, kvd_status *st) {
  return kvd_error(st, KVD_INTERNAL, "update session '%s' failed (%s), and so did restoring "
                                     "it (%s): the session is %s", w->name, e8s_error_name(e),
                   e8s_error_name(u), state);
}

/* ------------------------------------------------------------------ the three changes */

static int do_append(e8s_store *s, const kvd_swrite *w, kvd_status *st) {
  if (!w->set_meta) { /* one step */
    int e = step_append(s, w, w->keys, w->n_keys);
    return e == E8S_OK ? 0 : fail(w, e, st);
  }
  uint8_t *old = NULL;
  size_t old_len = 0;
  if (kvd_sess_meta_pack(w->old->meta->chunk_tokens, w->old->meta, 0, NULL, NULL, &old,
                         &old_len, st) != 0)
    return -1;
  int e = step_meta(s, w, w->meta, w->meta_len);
  if (e == E8S_OK) {
    e = step_append(s, w, w->keys, w->n_keys);
    if (e != E8S_OK) {
      int u = step_meta(s, w, old, old_len);
      free(old);
      if (u != E8S_OK) return undo_failed(w, e, u, "unchanged but for the new metadata", st);
      return fail(w, e, st);
    }
  }
  free(old);
  return e == E8S_OK ? 0 : fail(w, e, st);
}

static int do_create(e8s_store *s, const kvd_swrite *w, kvd_status *st) {
  int e = step_create(s, w, w->meta, w->meta_len, 0);
  if (e != E8S_OK) return fail(w, e, st);
  e = step_append(s, w, w->keys, w->n_keys);
  if (e == E8S_OK) return 0;
  int u = step_delete(s, w);
  if (u != E8S_OK) return undo_failed(w, e, u, "created but empty", st);
  return fail(w, e, st);
}

/* Read pins on the old chain, so its chunks outlive the REPLACE step. A chunk that cannot
 * be opened (quarantined: the put may be repairing it) is left unpinned; an undo that then
 * needs it fails and says so. */
static void pin_chain(e8s_store *s, const kvd_swrite *w, e8s_chunk **pins) {
  for (uint64_t i = 0; i < w->old->info.n_chunks; i++)
    if (e8s_chunk_open(s, w->ns, w->old->keys[i], &pins[i], NULL) != E8S_OK) pins[i] = NULL;
}

static int do_cut(e8s_store *s, const kvd_swrite *w, kvd_status *st) {
  uint64_t n_old = w->old->info.n_chunks;
  size_t n_new = (size_t)w->keep_chunks + w->n_keys;
  e8s_chunk **pins = calloc(n_old + 1, sizeof *pins);
  uint8_t(*chain)[E8S_KEY_BYTES] = malloc((n_new + 1) * E8S_KEY_BYTES);
  uint8_t *old = NULL;
  size_t old_len = 0;
  int rc = -1;
  if (!pins || !chain) {
    kvd_error(st, KVD_RESOURCE, "out of memory");
    goto out;
  }
  memcpy(chain, w->old->keys, (size_t)w->keep_chunks * E8S_KEY_BYTES);
  if (w->n_keys) memcpy(chain[w->keep_chunks], w->keys, w->n_keys * E8S_KEY_BYTES);
  if (kvd_sess_meta_pack(w->old->meta->chunk_tokens, w->old->meta, 0, NULL, NULL, &old,
                         &old_len, st) != 0)
    goto out;
  pin_chain(s, w, pins);
  int e = step_create(s, w, w->meta, w->meta_len, E8S_SESSION_REPLACE);
  if (e != E8S_OK) {
    fail(w, e, st);
    goto out;
  }
  e = step_append(s, w, (const uint8_t(*)[E8S_KEY_BYTES])chain, n_new);
  if (e == E8S_OK) {
    rc = 0;
    goto out;
  }
  int u = step_create(s, w, old, old_len, E8S_SESSION_REPLACE);
  if (u == E8S_OK) u = step_append(s, w, (const uint8_t(*)[E8S_KEY_BYTES])w->old->keys, n_old);
  if (u != E8S_OK) undo_failed(w, e, u, "empty (its chunks stay stored)", st);
  else fail(w, e, st);
out:
  for (uint64_t i = 0; pins && i < n_old; i++) e8s_chunk_close(pins[i]);
  free(pins);
  free(chain);
  free(old);
  return rc;
}

int kvd_swrite_commit(e8s_store *s, const kvd_swrite *w, kvd_status *st) {
  if (!w->old) return do_create(s, w, st);
  if (w->keep_chunks < w->old->info.n_chunks) return do_cut(s, w, st);
  return do_append(s, w, st);
}
