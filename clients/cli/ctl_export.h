/*
 * ctl_export.h: the content of e8kv export files (EXPORT.md) over the
 * ctl_xfile container: one META record (a SessionInfo message), then one CHUNK
 * record per chunk (a GetChunksResponse message holding the whole chunk), then
 * END. Shared by online and offline export and by import.
 */
#ifndef CTL_EXPORT_H
#define CTL_EXPORT_H

#include "clients/cli/ctl_cmd.h"
#include "clients/cli/ctl_progress.h"
#include "clients/cli/ctl_xfile.h"

typedef struct ctl_exp {
  ctl_xf xf;
  FILE *f;
  const char *path;   /* final name as given, or "-" for stdout */
  char dest[4096];    /* the file renamed into place: path, or a symlink's target */
  char tmp[4096];     /* DEST.tmpXXXXXX while writing (empty: written in place) */
  int in_place;       /* path is a device, FIFO or socket (e.g. /dev/stdout): written as is */
  ctl_prog prog;
  uint64_t want_chunks, want_tokens;
  uint64_t chunks, tokens;
  uint8_t fp_id[32];
  size_t fp_id_len;
} ctl_exp;

/* Opens path (a new DEST.tmpXXXXXX beside it, renamed over it at the end; a device, FIFO or
 * socket is written in place, never replaced; a symlink's target is replaced, the link kept),
 * writes the header and META from `s` (name, fingerprint,
 * fingerprint_id, chunk_tokens, n_tokens, n_chunks, stored_bytes, metadata sorted
 * by key; no times, no chunk keys: an export depends only on the session's content).
 * Returns an exit code, after printing the error. */
int ctl_exp_begin(ctl_ctx *ctx, ctl_exp *e, const char *path, const E8kv__V1__SessionInfo *s);
/* Appends one chunk; index/start_token must follow on from the previous one. */
int ctl_exp_chunk(ctl_ctx *ctx, ctl_exp *e, uint64_t start_token, const uint32_t *token_ids,
                  size_t n_tokens, const uint8_t *fp_id, size_t fp_id_len, const void *data,
                  uint64_t len);
/* Checks the counts against META, writes END, fsyncs and renames into place.
 * On success prints the result (JSON or a line). */
int ctl_exp_end(ctl_ctx *ctx, ctl_exp *e);
/* Removes the partial file. */
void ctl_exp_abort(ctl_exp *e);

/* Reads and checks a whole export file. For each record after META calls
 * chunk_fn (may be NULL: only check); `meta` receives the unpacked META
 * (free with e8kv_msg_free). Returns an exit code after printing the error:
 * CTL_EXIT_CORRUPT for any damage or inconsistency, CTL_EXIT_IO. */
typedef int (*ctl_imp_chunk_fn)(void *arg, const E8kv__V1__GetChunksResponse *chunk);
int ctl_imp_read(ctl_ctx *ctx, const char *path, E8kv__V1__SessionInfo **meta,
                 ctl_imp_chunk_fn chunk_fn, void *arg, ctl_prog *prog);

#endif /* CTL_EXPORT_H */
