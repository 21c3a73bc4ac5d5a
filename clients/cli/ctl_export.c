/*
 * ctl_export.c: export and import of one session as a portable file
 * (EXPORT.md): the writer and checker of its records, and the online runners
 * `export` (GetSession + GetChunks) and `import` (check the whole file, then
 * one PutChunks call that creates the session: all or nothing).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clients/cli/ctl_exit.h"
#include "clients/cli/ctl_export.h"
#include "clients/cli/ctl_out.h"
#include "clients/cli/ctl_pbjson.h"
#include "clients/cli/ctl_runs.h"

static int ctl_cmp_meta(const void *a, const void *b) {
  const E8kv__V1__SessionInfo__MetadataEntry *x = *(E8kv__V1__SessionInfo__MetadataEntry *const *)a;
  const E8kv__V1__SessionInfo__MetadataEntry *y = *(E8kv__V1__SessionInfo__MetadataEntry *const *)b;
  return strcmp(x->key ? x->key : "", y->key ? y->key : "");
}

static int ctl_exp_xf_error(ctl_ctx *ctx, ctl_exp *e, ctl_xf_err xe) {
  int code = xe == CTL_XF_E_IO ? CTL_EXIT_IO : CTL_EXIT_FAILURE;
  int rc = ctl_error(ctx, code, "io", "%s: %s", e->tmp[0] ? e->tmp : e->in_place ? e->path : "stdout",
                     e->xf.msg);
  ctl_exp_abort(e);
  return rc;
}

/* Opens the output of path. A file is written as a new temporary file beside it and renamed
 * over it at the end (a failed export leaves the old one); renaming over a device, FIFO or
 * socket would replace the node itself (as root, `export S /dev/stdout` replaced the link, and
 * /dev/full became a regular file), so those are written in place; a symlink keeps pointing at
 * its target, which is replaced. The temporary name is unique: an existing FILE.tmp stays. */
static int ctl_exp_open(ctl_ctx *ctx, ctl_exp *e, const char *path) {
  struct stat sb;
  int have = stat(path, &sb) == 0;
  if (have && S_ISDIR(sb.st_mode))
    return ctl_error(ctx, CTL_EXIT_USAGE, "usage", "%s is a directory: give a file name", path);
  if (have && !S_ISREG(sb.st_mode)) {
    if (!(e->f = fopen(path, "wb")))
      return ctl_error(ctx, CTL_EXIT_IO, "io", "cannot open %s: %s", path, strerror(errno));
    e->in_place = 1;
    return CTL_EXIT_OK;
  }
  char *real = have ? realpath(path, NULL) : NULL; /* through symlinks */
  int n = snprintf(e->dest, sizeof e->dest, "%s", real ? real : path);
  free(real);
  if (n >= (int)sizeof e->dest ||
      snprintf(e->tmp, sizeof e->tmp, "%s.tmpXXXXXX", e->dest) >= (int)sizeof e->tmp) {
    e->tmp[0] = '\0';
    return ctl_error(ctx, CTL_EXIT_USAGE, "usage", "file name too long: %s", path);
  }
  int fd = mkstemp(e->tmp);
  if (fd >= 0) {
    mode_t um = umask(0);
    umask(um);
    if (fchmod(fd, 0666 & ~um) != 0 || !(e->f = fdopen(fd, "wb"))) {
      int err = errno;
      close(fd);
      unlink(e->tmp);
      errno = err;
    }
  }
  if (!e->f) {
    int rc = ctl_error(ctx, CTL_EXIT_IO, "io", "cannot create %s: %s", e->tmp, strerror(errno));
    e->tmp[0] = '\0';
    return rc;
  }
  return CTL_EXIT_OK;
}

int ctl_exp_begin(ctl_ctx *ctx, ctl_exp *e, const char *path, const E8kv__V1__SessionInfo *s) {
  memset(e, 0, sizeof *e);
  e->path = path;
  if (strcmp(path, "-") == 0) {
    if (isatty(STDOUT_FILENO))
      return ctl_error(ctx, CTL_EXIT_USAGE, "usage",
                       "export to \"-\" writes binary data: redirect stdout to a file or a pipe");
    e->f = stdout;
  } else {
    int rc = ctl_exp_open(ctx, e, path);
    if (rc != CTL_EXIT_OK) return rc;
  }
  E8kv__V1__SessionInfo m = E8KV__V1__SESSION_INFO__INIT;
  m.name = s->name;
  m.fingerprint_id = s->fingerprint_id;
  m.fingerprint = s->fingerprint;
  m.chunk_tokens = s->chunk_tokens;
  m.n_tokens = s->n_tokens;
  m.n_chunks = s->n_chunks;
  m.stored_bytes = s->stored_bytes;
  E8kv__V1__SessionInfo__MetadataEntry **md = NULL;
  if (s->n_metadata) {
    md = malloc(s->n_metadata * sizeof *md);
    if (!md) { ctl_exp_abort(e); return ctl_error(ctx, CTL_EXIT_FAILURE, "nomem", "out of memory"); }
    memcpy(md, s->metadata, s->n_metadata * sizeof *md);
    qsort(md, s->n_metadata, sizeof *md, ctl_cmp_meta);
  }
  m.n_metadata = s->n_metadata;
  m.metadata = md;
  size_t len = protobuf_c_message_get_packed_size(&m.base);
  uint8_t *buf = malloc(len ? len : 1);
  ctl_xf_err xe = CTL_XF_E_NOMEM;
  if (buf) {
    protobuf_c_message_pack(&m.base, buf);
    xe = ctl_xf_write_begin(&e->xf, e->f);
    if (!xe) xe = ctl_xf_write_record(&e->xf, CTL_XF_T_META, buf, len);
  }
  free(buf);
  free(md);
  if (xe) return ctl_exp_xf_error(ctx, e, xe);
  e->want_chunks = s->n_chunks;
  e->want_tokens = s->n_tokens;
  e->fp_id_len = s->fingerprint_id.len <= 32 ? s->fingerprint_id.len : 32;
  memcpy(e->fp_id, s->fingerprint_id.data, e->fp_id_len);
  ctl_prog_begin(&e->prog, ctx->progress && e->f != stdout, "export", s->stored_bytes, 1);
  return CTL_EXIT_OK;
}

int ctl_exp_chunk(ctl_ctx *ctx, ctl_exp *e, uint64_t start_token, const uint32_t *token_ids,
                  size_t n_tokens, const uint8_t *fp_id, size_t fp_id_len, const void *data,
                  uint64_t len) {
  if (start_token != e->tokens || n_tokens == 0) {
    int rc = ctl_error(ctx, CTL_EXIT_REJECTED, "ABORTED",
                       "chunk %llu starts at token %llu, expected %llu (with %zu token ids): the "
                       "session changed during the export; run it again",
                       (unsigned long long)e->chunks, (unsigned long long)start_token,
                       (unsigned long long)e->tokens, n_tokens);
    ctl_exp_abort(e);
    return rc;
  }
  E8kv__V1__GetChunksResponse m = E8KV__V1__GET_CHUNKS_RESPONSE__INIT;
  m.chunk_index = (uint32_t)e->chunks;
  m.start_token = start_token;
  m.n_tokens = (uint32_t)n_tokens;
  m.encoding = E8KV__V1__ENCODING__ENCODING_E8_FRAME;
  m.chunk_bytes = len;
  m.data.data = (uint8_t *)data;
  m.data.len = len;
  m.last_piece = 1;
  m.fingerprint_id.data = (uint8_t *)fp_id;
  m.fingerprint_id.len = fp_id_len;
  m.n_token_ids = n_tokens;
  m.token_ids = (uint32_t *)token_ids;
  size_t plen = protobuf_c_message_get_packed_size(&m.base);
  uint8_t *buf = malloc(plen);
  if (!buf) { ctl_exp_abort(e); return ctl_error(ctx, CTL_EXIT_FAILURE, "nomem", "out of memory"); }
  protobuf_c_message_pack(&m.base, buf);
  ctl_xf_err xe = ctl_xf_write_record(&e->xf, CTL_XF_T_CHUNK, buf, plen);
  free(buf);
  if (xe) return ctl_exp_xf_error(ctx, e, xe);
  e->chunks++;
  e->tokens += n_tokens;
  ctl_prog_add(&e->prog, len);
  return CTL_EXIT_OK;
}

int ctl_exp_end(ctl_ctx *ctx, ctl_exp *e) {
  ctl_prog_end(&e->prog);
  if (e->chunks != e->want_chunks || e->tokens != e->want_tokens) {
    int rc = ctl_error(ctx, CTL_EXIT_REJECTED, "ABORTED",
                       "got %llu chunks / %llu tokens, the session said %llu / %llu: it changed "
                       "during the export; run it again",
                       (unsigned long long)e->chunks, (unsigned long long)e->tokens,
                       (unsigned long long)e->want_chunks, (unsigned long long)e->want_tokens);
    ctl_exp_abort(e);
    return rc;
  }
  ctl_xf_err xe = ctl_xf_write_end(&e->xf);
  if (xe) return ctl_exp_xf_error(ctx, e, xe);
  uint64_t bytes = e->xf.file_bytes;
  int to_stdout = e->f == stdout;
  if (e->in_place) { /* e.g. /dev/stdout: no report on stdout after the data */
    struct stat a, b;
    to_stdout = fstat(fileno(e->f), &a) == 0 && fstat(STDOUT_FILENO, &b) == 0 &&
                a.st_dev == b.st_dev && a.st_ino == b.st_ino;
    int bad = fflush(e->f) != 0 || (fsync(fileno(e->f)) != 0 && errno != EINVAL);
    bad |= fclose(e->f) != 0;
    e->f = NULL;
    if (bad) {
      int rc = ctl_error(ctx, CTL_EXIT_IO, "io", "cannot finish %s: %s", e->path, strerror(errno));
      ctl_exp_abort(e);
      return rc;
    }
  } else if (e->f != stdout) {
    int bad = fsync(fileno(e->f)) != 0;
    bad |= fclose(e->f) != 0;
    e->f = NULL;
    if (bad || rename(e->tmp, e->dest) != 0) {
      int rc = ctl_error(ctx, CTL_EXIT_IO, "io", "cannot finish %s: %s", e->path, strerror(errno));
      ctl_exp_abort(e);
      return rc;
    }
    e->tmp[0] = '\0';
  }
  ctl_xf_close(&e->xf);
  if (to_stdout) return CTL_EXIT_OK; /* the file is stdout: no report there */
  if (ctx->json) {
    json_t *o = json_pack("{s:s,s:I,s:I,s:I}", "file", e->path, "chunks", (json_int_t)e->chunks,
                          "tokens", (json_int_t)e->tokens, "file_bytes", (json_int_t)bytes);
    ctl_out_json(stdout, o);
    json_decref(o);
  } else {
    printf("exported %llu chunks, %llu tokens to %s (%llu bytes)\n", (unsigned long long)e->chunks,
           (unsigned long long)e->tokens, e->path, (unsigned long long)bytes);
  }
  return CTL_EXIT_OK;
}

void ctl_exp_abort(ctl_exp *e) {
  ctl_prog_end(&e->prog);
  ctl_xf_close(&e->xf);
  if (e->f && e->f != stdout) fclose(e->f);
  e->f = NULL;
  if (e->tmp[0]) unlink(e->tmp);
  e->tmp[0] = '\0';
}

/* ---- reading and checking ---- */

static int ctl_imp_bad(ctl_ctx *ctx, const char *path, const char *fmt, const char *detail,
                       unsigned long long n) {
  char what[512];
  snprintf(what, sizeof what, fmt, detail, n);
  return ctl_error(ctx, CTL_EXIT_CORRUPT, "DATA_LOSS", "%s: %s", path, what);
}

/* Checks one CHUNK record against META and the chunks before it. */
static int ctl_imp_check_chunk(ctl_ctx *ctx, const char *path, const E8kv__V1__SessionInfo *m,
                               const E8kv__V1__GetChunksResponse *c, uint64_t idx,
                               uint64_t tokens, int prev_short) {
  if (c->chunk_index != idx) return ctl_imp_bad(ctx, path, "%schunk record %llu out of order", "", idx);
  if (c->start_token != tokens || c->n_tokens == 0 || c->n_token_ids != c->n_tokens ||
      c->n_tokens > m->chunk_tokens || prev_short)
    return ctl_imp_bad(ctx, path, "%schunk %llu: token range or token ids inconsistent", "", idx);
  if (c->encoding != E8KV__V1__ENCODING__ENCODING_E8_FRAME || c->data.len != c->chunk_bytes ||
      c->data.len == 0)
    return ctl_imp_bad(ctx, path, "%schunk %llu: not one whole E8 chunk frame", "", idx);
  if (c->fingerprint_id.len != m->fingerprint_id.len ||
      memcmp(c->fingerprint_id.data, m->fingerprint_id.data, c->fingerprint_id.len) != 0)
    return ctl_imp_bad(ctx, path, "%schunk %llu: fingerprint id differs from the session's", "", idx);
  /* The frame itself, as the codec reads it (every CRC, header and index): */
  e8c_chunk_info ci;
  int64_t r = e8c_chunk_info_get(c->data.data, c->data.len, &ci);
  if (e8c_is_error(r))
    return ctl_imp_bad(ctx, path, "%s: chunk %llu", e8c_error_string(r), idx);
  if (ci.chunk_size != c->data.len || ci.n_tokens != c->n_tokens || ci.first_pos != c->start_token ||
      c->fingerprint_id.len != E8C_ID_SIZE ||
      memcmp(ci.fingerprint_id, c->fingerprint_id.data, E8C_ID_SIZE) != 0)
    return ctl_imp_bad(ctx, path, "%schunk %llu: its frame disagrees with its record (size, tokens, "
                       "position or fingerprint)", "", idx);
  return CTL_EXIT_OK;
}

int ctl_imp_read(ctl_ctx *ctx, const char *path, E8kv__V1__SessionInfo **meta,
                 ctl_imp_chunk_fn chunk_fn, void *arg, ctl_prog *prog) {
  *meta = NULL;
  FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
  if (!f) return ctl_error(ctx, CTL_EXIT_IO, "io", "cannot open %s: %s", path, strerror(errno));
  ctl_xf x;
  ctl_xf_err xe = ctl_xf_read_begin(&x, f);
  uint64_t idx = 0, tokens = 0;
  int prev_short = 0, rc = CTL_EXIT_OK;
  while (!xe && rc == CTL_EXIT_OK) {
    uint32_t type;
    const uint8_t *p;
    uint64_t n;
    uint64_t before = x.file_bytes;
    if ((xe = ctl_xf_read_next(&x, &type, &p, &n))) break;
    if (prog) ctl_prog_add(prog, x.file_bytes - before);
    if (type == CTL_XF_T_END) break;
    if (!*meta) {
      if (type != CTL_XF_T_META ||
          !(*meta = (E8kv__V1__SessionInfo *)protobuf_c_message_unpack(
                &e8kv__v1__session_info__descriptor, NULL, n, p)))
        rc = ctl_imp_bad(ctx, path, "%sthe first record is not valid session metadata", "", 0);
      else if (!(*meta)->name || !(*meta)->name[0] || !(*meta)->fingerprint ||
               !(*meta)->chunk_tokens || (*meta)->fingerprint_id.len != 32)
        rc = ctl_imp_bad(ctx, path, "%ssession metadata lacks name, fingerprint or chunk size", "", 0);
      continue;
    }
    if (type != CTL_XF_T_CHUNK) {
      rc = ctl_imp_bad(ctx, path, "%sunknown record type %llu", "", type);
      break;
    }
    E8kv__V1__GetChunksResponse *c = (E8kv__V1__GetChunksResponse *)protobuf_c_message_unpack(
        &e8kv__v1__get_chunks_response__descriptor, NULL, n, p);
    if (!c) { rc = ctl_imp_bad(ctx, path, "%schunk record %llu does not parse", "", idx); break; }
    rc = ctl_imp_check_chunk(ctx, path, *meta, c, idx, tokens, prev_short);
    if (rc == CTL_EXIT_OK && chunk_fn) rc = chunk_fn(arg, c);
    prev_short = c->n_tokens < (*meta)->chunk_tokens;
    tokens += c->n_tokens;
    idx++;
    e8kv_msg_free(c);
  }
  if (xe)
    rc = ctl_error(ctx, xe == CTL_XF_E_IO ? CTL_EXIT_IO : CTL_EXIT_CORRUPT,
                   xe == CTL_XF_E_IO ? "io" : "DATA_LOSS", "%s: %s: %s", path,
                   ctl_xf_err_name(xe), x.msg);
  else if (rc == CTL_EXIT_OK && !*meta)
    rc = ctl_imp_bad(ctx, path, "%sno session metadata record", "", 0);
  else if (rc == CTL_EXIT_OK && (idx != (*meta)->n_chunks || tokens != (*meta)->n_tokens))
    rc = ctl_imp_bad(ctx, path, "%sthe file holds %llu chunks, its metadata says otherwise", "", idx);
  ctl_xf_close(&x);
  if (f != stdin) fclose(f);
  if (rc != CTL_EXIT_OK) {
    e8kv_msg_free(*meta);
    *meta = NULL;
  }
  return rc;
}

/* ---- online runners ---- */

typedef struct ctl_exp_get {
  ctl_ctx *ctx;
  ctl_exp *e;
  int rc;
} ctl_exp_get;

static int ctl_exp_on_chunk(void *arg, const e8kv_chunk *ch) {
  ctl_exp_get *g = arg;
  g->rc = ctl_exp_chunk(g->ctx, g->e, ch->start_token, ch->token_ids, ch->n_token_ids,
                        ch->fingerprint_id, ch->fingerprint_id_len, ch->data, ch->bytes);
  return g->rc != CTL_EXIT_OK;
}

int ctl_on_export(ctl_ctx *ctx, int argc, char **argv) {
  (void)argc;
  E8kv__V1__GetSessionRequest sreq = E8KV__V1__GET_SESSION_REQUEST__INIT;
  sreq.name = argv[0];
  E8kv__V1__GetSessionResponse *sr = NULL;
  e8kv_error err;
  if (e8kv_get_session(ctx->client, &sreq, &sr, &err)) return ctl_error_e8kv(ctx, &err);
  if (!sr->session) {
    e8kv_msg_free(sr);
    return ctl_error(ctx, CTL_EXIT_FAILURE, "E_PROTOCOL", "GetSession: reply without a session");
  }
  ctl_exp e;
  int rc = ctl_exp_begin(ctx, &e, argv[1], sr->session);
  if (rc) { e8kv_msg_free(sr); return rc; }
  E8kv__V1__SessionRange range = E8KV__V1__SESSION_RANGE__INIT;
  range.session = argv[0];
  E8kv__V1__GetChunksRequest req = E8KV__V1__GET_CHUNKS_REQUEST__INIT;
  req.selection_case = E8KV__V1__GET_CHUNKS_REQUEST__SELECTION_RANGE;
  req.range = &range;
  req.encoding = E8KV__V1__ENCODING__ENCODING_E8_FRAME;
  req.expect_fingerprint_id = sr->session->fingerprint_id;
  ctl_exp_get g = {ctx, &e, CTL_EXIT_OK};
  e8kv_status s = sr->session->n_chunks ? e8kv_get_chunks(ctx->client, &req, ctl_exp_on_chunk, &g, &err)
                                        : E8KV_OK;
  e8kv_msg_free(sr);
  if (g.rc) return g.rc; /* the writer failed and already said why */
  if (s) {
    ctl_exp_abort(&e);
    return ctl_error_e8kv(ctx, &err);
  }
  return ctl_exp_end(ctx, &e);
}

typedef struct ctl_imp_put {
  ctl_ctx *ctx;
  e8kv_put *put;
} ctl_imp_put;

static int ctl_imp_on_chunk(void *arg, const E8kv__V1__GetChunksResponse *c) {
  ctl_imp_put *ip = arg;
  e8kv_error err;
  if (e8kv_put_chunk(ip->put, c->token_ids, c->n_token_ids, c->data.data, c->data.len, NULL, 0,
                     &err))
    return ctl_error_e8kv(ip->ctx, &err);
  return CTL_EXIT_OK;
}

/* A session without chunks: CreateSession (PutChunks needs at least one chunk). */
static int ctl_imp_empty(ctl_ctx *ctx, const E8kv__V1__SessionInfo *m, const char *name) {
  E8kv__V1__CreateSessionRequest req = E8KV__V1__CREATE_SESSION_REQUEST__INIT;
  req.name = (char *)name;
  req.fingerprint = m->fingerprint;
  req.chunk_tokens = m->chunk_tokens;
  req.n_metadata = m->n_metadata;
  req.metadata = (E8kv__V1__CreateSessionRequest__MetadataEntry **)calloc(m->n_metadata + 1, sizeof(void *));
  E8kv__V1__CreateSessionRequest__MetadataEntry *ents = calloc(m->n_metadata + 1, sizeof *ents);
  if (!req.metadata || !ents) {
    free(req.metadata);
    free(ents);
    return ctl_error(ctx, CTL_EXIT_FAILURE, "nomem", "out of memory");
  }
  for (size_t i = 0; i < m->n_metadata; i++) {
    E8kv__V1__CreateSessionRequest__MetadataEntry init = E8KV__V1__CREATE_SESSION_REQUEST__METADATA_ENTRY__INIT;
    ents[i] = init;
    ents[i].key = m->metadata[i]->key;
    ents[i].value = m->metadata[i]->value;
    req.metadata[i] = &ents[i];
  }
  E8kv__V1__CreateSessionResponse *r = NULL;
  e8kv_error err;
  e8kv_status s = e8kv_create_session(ctx->client, &req, &r, &err);
  free(req.metadata);
  free(ents);
  if (s) return ctl_error_e8kv(ctx, &err);
  e8kv_msg_free(r);
  if (ctx->json) {
    json_t *o = json_pack("{s:s,s:i,s:i,s:i,s:i,s:i}", "session", name, "chunks", 0, "tokens", 0,
                          "chunks_stored", 0, "chunks_deduplicated", 0, "stored_bytes", 0);
    ctl_out_json(stdout, o);
    json_decref(o);
  } else {
    printf("imported %s: empty session\n", name);
  }
  return CTL_EXIT_OK;
}

/* CTL_EXIT_OK when no session `name` exists; otherwise the error a person can act on (the
 * put's own refusal, "holds N tokens, expected 0", told neither what nor how). The put still
 * carries expect_session_tokens = 0, so a session created meanwhile is never overwritten. */
static int ctl_imp_check_free(ctl_ctx *ctx, const char *name) {
  E8kv__V1__GetSessionRequest req = E8KV__V1__GET_SESSION_REQUEST__INIT;
  req.name = (char *)name;
  E8kv__V1__GetSessionResponse *r = NULL;
  e8kv_error err;
  e8kv_status s = e8kv_get_session(ctx->client, &req, &r, &err);
  if (s == E8KV_NOT_FOUND) return CTL_EXIT_OK;
  if (s) return ctl_error_e8kv(ctx, &err);
  unsigned long long tokens = r->session ? (unsigned long long)r->session->n_tokens : 0;
  e8kv_msg_free(r);
  return ctl_error(ctx, CTL_EXIT_REJECTED, "ALREADY_EXISTS",
                   "session \"%s\" already exists (%llu tokens) and import never overwrites: "
                   "import under another name (--name NEW) or remove it first (e8kvctl rm %s)",
                   name, tokens, name);
}

int ctl_on_import(ctl_ctx *ctx, int argc, char **argv) {
  (void)argc;
  const char *path = argv[0];
  if (strcmp(path, "-") == 0)
    return ctl_error(ctx, CTL_EXIT_USAGE, "usage", "import reads a file twice: give a path, not -");
  /* Pass 1: check every byte before sending anything. */
  E8kv__V1__SessionInfo *m = NULL;
  int rc = ctl_imp_read(ctx, path, &m, NULL, NULL, NULL);
  if (rc) return rc;
  const char *name = ctx->opt[CTL_O_NAME] ? ctx->opt[CTL_O_NAME] : m->name;
  if ((rc = ctl_imp_check_free(ctx, name))) {
    e8kv_msg_free(m);
    return rc;
  }
  E8kv__V1__PutHeader h = E8KV__V1__PUT_HEADER__INIT;
  h.fingerprint = m->fingerprint;
  h.chunk_tokens = m->chunk_tokens;
  h.encoding = E8KV__V1__ENCODING__ENCODING_E8_FRAME;
  h.session = (char *)name;
  h.create_session = 1;
  h.session_expect_case = E8KV__V1__PUT_HEADER__SESSION_EXPECT_EXPECT_SESSION_TOKENS;
  h.expect_session_tokens = 0; /* refuse to overwrite a session that holds tokens */
  E8kv__V1__PutHeader__SessionMetadataEntry *ents = calloc(m->n_metadata + 1, sizeof *ents);
  E8kv__V1__PutHeader__SessionMetadataEntry **pents = calloc(m->n_metadata + 1, sizeof *pents);
  if (!ents || !pents) {
    free(ents);
    free(pents);
    e8kv_msg_free(m);
    return ctl_error(ctx, CTL_EXIT_FAILURE, "nomem", "out of memory");
  }
  for (size_t i = 0; i < m->n_metadata; i++) {
    E8kv__V1__PutHeader__SessionMetadataEntry init = E8KV__V1__PUT_HEADER__SESSION_METADATA_ENTRY__INIT;
    ents[i] = init;
    ents[i].key = m->metadata[i]->key;
    ents[i].value = m->metadata[i]->value;
    pents[i] = &ents[i];
  }
  h.n_session_metadata = m->n_metadata;
  h.session_metadata = pents;
  e8kv_error err;
  ctl_imp_put ip = {ctx, NULL};
  if (m->n_chunks == 0) {
    free(ents);
    free(pents);
    rc = ctl_imp_empty(ctx, m, name);
    e8kv_msg_free(m);
    return rc;
  }
  e8kv_status ps = e8kv_put_begin(ctx->client, &h, &ip.put, &err);
  free(ents);
  free(pents);
  if (ps) {
    e8kv_msg_free(m);
    return ctl_error_e8kv(ctx, &err);
  }
  /* Pass 2: send the chunks (the file was checked; a change since is caught again). */
  struct stat sb;
  ctl_prog prog;
  ctl_prog_begin(&prog, ctx->progress, "import", stat(path, &sb) == 0 ? (uint64_t)sb.st_size : 0, 1);
  E8kv__V1__SessionInfo *m2 = NULL;
  rc = ctl_imp_read(ctx, path, &m2, ctl_imp_on_chunk, &ip, &prog);
  ctl_prog_end(&prog);
  e8kv_msg_free(m2);
  if (rc) {
    e8kv_put_abort(ip.put);
    e8kv_msg_free(m);
    return rc;
  }
  E8kv__V1__PutChunksResponse *r = NULL;
  if (e8kv_put_finish(ip.put, &r, &err)) {
    e8kv_msg_free(m);
    return ctl_error_e8kv(ctx, &err);
  }
  json_t *o = json_pack("{s:s,s:I,s:I,s:I,s:I,s:I}", "session", name, "chunks",
                        (json_int_t)m->n_chunks, "tokens", (json_int_t)r->tokens, "chunks_stored",
                        (json_int_t)r->chunks_stored, "chunks_deduplicated",
                        (json_int_t)r->chunks_deduplicated, "stored_bytes",
                        (json_int_t)r->stored_bytes);
  e8kv_msg_free(r);
  e8kv_msg_free(m); /* `name` may point into m: use the copy in o from here on */
  if (ctx->json) {
    ctl_out_json(stdout, o);
  } else {
    printf("imported %s: %lld chunks (%lld new, %lld already stored), %lld tokens\n",
           json_string_value(json_object_get(o, "session")),
           (long long)json_integer_value(json_object_get(o, "chunks")),
           (long long)json_integer_value(json_object_get(o, "chunks_stored")),
           (long long)json_integer_value(json_object_get(o, "chunks_deduplicated")),
           (long long)json_integer_value(json_object_get(o, "tokens")));
  }
  json_decref(o);
  return CTL_EXIT_OK;
}
