/*
 * ctl_offline.c: e8kvctl commands on a data directory (--data-dir): stat, ls,
 * show, verify, export. The store is opened read-only (E8S_OPEN_READONLY), so
 * this is safe while a daemon runs; each call sees a committed snapshot.
 *
 * What e8kvd keeps in the store is read as its headers document it:
 * fingerprints (daemon/kvd_fp.h: the codec's canonical serialization, parsed
 * with e8c_fingerprint_parse and shown with libe8kv's e8kv_fingerprint_to_pb,
 * every value explicit as the daemon reports them), session metadata (a
 * serialized SessionInfo holding chunk_tokens and the user's map,
 * daemon/kvd_session.h) and chunk payloads (codec chunk, then the token ids,
 * their count and "E8TK", daemon/kvd_payload.h). The end-to-end test checks
 * that offline show/ls/export give exactly the online bytes.
 */
#include <stdlib.h>
#include <string.h>

#include "clients/cli/ctl_exit.h"
#include "clients/cli/ctl_export.h"
#include "clients/cli/ctl_out.h"
#include "clients/cli/ctl_pbjson.h"
#include "clients/cli/ctl_runs.h"
#include "clients/cli/ctl_view.h"
#include "store/e8store.h"

typedef struct ctl_off {
  e8s_store *st;
  e8s_ns_info ns;
} ctl_off;

/* A session as SessionInfo, with the memory it points to. */
typedef struct ctl_off_sess {
  E8kv__V1__SessionInfo m;
  e8s_session_info info;
  e8kv_fingerprint_pb fp;
  E8kv__V1__SessionInfo *meta; /* the daemon's metadata blob, unpacked */
  uint8_t (*keys)[E8S_KEY_BYTES];
} ctl_off_sess;

static int ctl_off_store_error(ctl_ctx *ctx, int rc, const char *what) {
  int code = rc == E8S_ERR_NOTFOUND ? CTL_EXIT_NOT_FOUND
           : rc == E8S_ERR_DATALOSS || rc == E8S_ERR_CORRUPT ? CTL_EXIT_CORRUPT
           : rc == E8S_ERR_NOMEM ? CTL_EXIT_FAILURE : CTL_EXIT_UNREACHABLE;
  const char *d = e8s_last_error_detail();
  return ctl_error(ctx, code, e8s_error_name(rc), "%s: %s%s%s", what, e8s_error_name(rc),
                   d && *d ? ": " : "", d ? d : "");
}

static int ctl_off_open(ctl_ctx *ctx, ctl_off *o, int need_ns) {
  memset(o, 0, sizeof *o);
  e8s_config cfg;
  e8s_config_init(&cfg);
  cfg.dir = ctx->opt[CTL_O_DATA_DIR];
  cfg.flags = E8S_OPEN_READONLY;
  int rc = e8s_open(&cfg, &o->st);
  if (rc) {
    const char *d = e8s_last_error_detail();
    return ctl_error(ctx, rc == E8S_ERR_NOMEM ? CTL_EXIT_FAILURE : CTL_EXIT_UNREACHABLE,
                     e8s_error_name(rc), "cannot open the data directory %s read-only: %s%s%s",
                     cfg.dir, e8s_error_name(rc), d && *d ? ": " : "", d ? d : "");
  }
  if (!need_ns) return CTL_EXIT_OK;
  const char *name = ctx->opt[CTL_O_NAMESPACE] ? ctx->opt[CTL_O_NAMESPACE] : "default";
  rc = e8s_ns_get(o->st, name, &o->ns);
  if (rc) {
    e8s_close(o->st);
    o->st = NULL;
    if (rc == E8S_ERR_NOTFOUND)
      return ctl_error(ctx, CTL_EXIT_NOT_FOUND, "NOT_FOUND",
                       "no namespace \"%s\" in %s (--namespace picks one)", name,
                       ctx->opt[CTL_O_DATA_DIR]);
    return ctl_off_store_error(ctx, rc, "namespace");
  }
  return CTL_EXIT_OK;
}

/* The fingerprint registered under id; NULL, or why it cannot be read. */
static const char *ctl_off_fp_load(ctl_off *o, const uint8_t *id, e8c_fingerprint *fp) {
  static _Thread_local char why[256];
  uint8_t blob[E8S_FP_BLOB_MAX];
  size_t n = 0;
  int rc = e8s_fp_get(o->st, id, blob, sizeof blob, &n);
  if (rc) {
    snprintf(why, sizeof why, "its fingerprint cannot be read: %s", e8s_error_name(rc));
    return why;
  }
  int64_t r = e8c_fingerprint_parse(blob, n, fp);
  if (e8c_is_error(r)) {
    snprintf(why, sizeof why, "its fingerprint does not parse: %s", e8c_error_string(r));
    return why;
  }
  return NULL;
}

/* Splits a chunk payload: codec chunk || token ids (u32 LE each) || count (u32 LE) || "E8TK".
 * Returns 0, or -1 when the trailer is missing or inconsistent. */
static int ctl_off_payload_split(const uint8_t *p, uint64_t len, uint64_t *chunk_bytes,
                                 const uint8_t **tokens_le, uint32_t *n) {
  if (len < 8 || memcmp(p + len - 4, "E8TK", 4) != 0) return -1;
  const uint8_t *c = p + len - 8;
  uint32_t cnt = (uint32_t)c[0] | (uint32_t)c[1] << 8 | (uint32_t)c[2] << 16 | (uint32_t)c[3] << 24;
  if (cnt == 0 || (uint64_t)cnt * 4 + 8 > len) return -1;
  *chunk_bytes = len - (uint64_t)cnt * 4 - 8;
  *tokens_le = p + *chunk_bytes;
  *n = cnt;
  return 0;
}

static void ctl_off_sess_free(ctl_off_sess *s) {
  e8kv_msg_free(s->meta);
  free(s->keys);
  memset(s, 0, sizeof *s);
}

/* Builds the SessionInfo of `name` as e8kvd's GetSession would (stored_bytes summed
 * over the chunks' payloads, which needs the keys: want_keys). */
static int ctl_off_sess_load(ctl_ctx *ctx, ctl_off *o, const char *name, int want_keys,
                             ctl_off_sess *s) {
  memset(s, 0, sizeof *s);
  uint8_t *meta = NULL;
  int rc = E8S_ERR_RANGE;
  /* Sizes first; a writer may grow the session in between: then ask again. */
  for (int tries = 0; tries < 5 && rc == E8S_ERR_RANGE; tries++) {
    rc = e8s_session_get(o->st, o->ns.id, name, &s->info, NULL, 0, NULL, 0);
    if (rc && rc != E8S_ERR_RANGE) break;
    free(s->keys);
    free(meta);
    s->keys = want_keys ? calloc(s->info.n_chunks + 1, E8S_KEY_BYTES) : NULL;
    meta = malloc(s->info.meta_bytes + 1);
    if ((want_keys && !s->keys) || !meta) { rc = E8S_ERR_NOMEM; break; }
    rc = e8s_session_get(o->st, o->ns.id, name, &s->info, s->keys, want_keys ? s->info.n_chunks : 0,
                         meta, s->info.meta_bytes);
  }
  if (rc) {
    free(meta);
    ctl_off_sess_free(s);
    if (rc == E8S_ERR_NOTFOUND)
      return ctl_error(ctx, CTL_EXIT_NOT_FOUND, "NOT_FOUND", "session \"%s\" not found in namespace \"%s\"",
                       name, o->ns.name);
    return ctl_off_store_error(ctx, rc, "session");
  }
  s->meta = (E8kv__V1__SessionInfo *)protobuf_c_message_unpack(&e8kv__v1__session_info__descriptor, NULL,
                                                              s->info.meta_bytes, meta);
  free(meta);
  e8c_fingerprint fp;
  const char *why = s->meta ? ctl_off_fp_load(o, s->info.fp_id, &fp) : "its metadata blob does not parse";
  if (why) {
    int r2 = ctl_error(ctx, CTL_EXIT_CORRUPT, "DATA_LOSS", "session \"%s\": %s", name, why);
    ctl_off_sess_free(s);
    return r2;
  }
  e8kv_fingerprint_to_pb(&fp, &s->fp);
  E8kv__V1__SessionInfo *m = &s->m;
  e8kv__v1__session_info__init(m);
  m->name = s->info.name;
  m->fingerprint_id.data = s->info.fp_id;
  m->fingerprint_id.len = E8S_KEY_BYTES;
  m->fingerprint = &s->fp.m;
  m->chunk_tokens = s->meta->chunk_tokens;
  m->n_tokens = s->info.n_tokens;
  m->n_chunks = (uint32_t)s->info.n_chunks;
  m->created_unix_ms = (int64_t)(s->info.created_ns / 1000000);
  m->updated_unix_ms = (int64_t)(s->info.updated_ns / 1000000);
  m->n_metadata = s->meta->n_metadata;
  m->metadata = s->meta->metadata;
  for (uint64_t i = 0; want_keys && i < s->info.n_chunks; i++) {
    e8s_chunk_info ci;
    if (e8s_chunk_stat(o->st, o->ns.id, s->keys[i], &ci) == E8S_OK) m->stored_bytes += ci.payload_bytes;
  }
  return CTL_EXIT_OK;
}

int ctl_off_show(ctl_ctx *ctx, int argc, char **argv) {
  (void)argc;
  ctl_off o;
  int rc = ctl_off_open(ctx, &o, 1);
  if (rc) return rc;
  ctl_off_sess s;
  if (!(rc = ctl_off_sess_load(ctx, &o, argv[0], 1, &s))) {
    json_t *j = ctl_view_session(&s.m);
    if (ctx->json) ctl_out_json(stdout, j);
    else ctl_out_fields(stdout, ctl_cols_show, j);
    json_decref(j);
    ctl_off_sess_free(&s);
  }
  e8s_close(o.st);
  return rc;
}

int ctl_off_ls(ctl_ctx *ctx, int argc, char **argv) {
  (void)argc;
  (void)argv;
  uint64_t limit;
  if (ctl_opt_u64(ctx, CTL_O_LIMIT, 100, 1, 1000, &limit)) return CTL_EXIT_USAGE;
  ctl_off o;
  int rc = ctl_off_open(ctx, &o, 1);
  if (rc) return rc;
  e8s_session_info *page = calloc(limit, sizeof *page);
  json_t *rows = json_array();
  char after[E8S_NAME_MAX + 1];
  snprintf(after, sizeof after, "%s", ctx->opt[CTL_O_PAGE_TOKEN] ? ctx->opt[CTL_O_PAGE_TOKEN] : "");
  e8s_session_filter filter = {ctx->opt[CTL_O_PREFIX], NULL, 0};
  const char *model = ctx->opt[CTL_O_MODEL];
  int more = 0;
  if (!page) rc = ctl_error(ctx, CTL_EXIT_FAILURE, "nomem", "out of memory");
  /* A page is `limit` sessions that pass the filters (the model one is applied here). */
  while (!rc) {
    size_t n = 0;
    int r = e8s_session_list(o.st, o.ns.id, &filter, after, page, limit - json_array_size(rows), &n, &more);
    if (r) { rc = ctl_off_store_error(ctx, r, "list sessions"); break; }
    for (size_t i = 0; i < n && !rc; i++) {
      ctl_off_sess s;
      if ((rc = ctl_off_sess_load(ctx, &o, page[i].name, 1, &s))) break;
      if (!model || strcmp(model, s.fp.m.model_id) == 0) json_array_append_new(rows, ctl_view_session(&s.m));
      ctl_off_sess_free(&s);
    }
    if (n) snprintf(after, sizeof after, "%s", page[n - 1].name);
    if (!more || n == 0) { more = 0; break; }
    if (json_array_size(rows) >= limit && !ctx->opt[CTL_O_ALL]) break;
    if (ctx->opt[CTL_O_ALL] && json_array_size(rows) >= limit) {
      /* --all: keep everything; list the next batch. */
      limit += json_array_size(rows);
      e8s_session_info *bigger = realloc(page, limit * sizeof *page);
      if (!bigger) { rc = ctl_error(ctx, CTL_EXIT_FAILURE, "nomem", "out of memory"); break; }
      page = bigger;
    }
  }
  free(page);
  e8s_close(o.st);
  if (rc) { json_decref(rows); return rc; }
  const char *next = more ? after : "";
  json_t *out = json_pack("{s:o,s:s}", "sessions", rows, "next_page_token", next);
  if (ctx->json) {
    ctl_out_json(stdout, out);
  } else {
    ctl_out_table(stdout, ctl_cols_ls, rows, ctl_term_width());
    if (*next) printf("more: --page-token %s\n", next);
  }
  json_decref(out);
  return CTL_EXIT_OK;
}

int ctl_off_stat(ctl_ctx *ctx, int argc, char **argv) {
  (void)argc;
  (void)argv;
  ctl_off o;
  int rc = ctl_off_open(ctx, &o, 1);
  if (rc) return rc;
  e8s_stats s;
  int r = e8s_stats_get(o.st, &s);
  /* Sessions of the namespace: counted by listing (names only). */
  uint64_t sessions = 0;
  char after[E8S_NAME_MAX + 1] = "";
  e8s_session_info page[64];
  for (int more = 1; !r && more;) {
    size_t n = 0;
    r = e8s_session_list(o.st, o.ns.id, NULL, after, page, 64, &n, &more);
    sessions += n;
    if (n) snprintf(after, sizeof after, "%s", page[n - 1].name);
    if (!n) more = 0;
  }
  e8s_close(o.st);
  if (r) return ctl_off_store_error(ctx, r, "stats");
  /* tokens, raw bytes and bpe as e8kvd's GetStats computes them (daemon/kvd_rpc_admin.c) */
  double bpe = o.ns.raw_bytes ? (double)o.ns.used_bytes * 8.0 / (double)(o.ns.raw_bytes / 2) : 0.0;
  json_t *j = json_pack(
      "{s:{s:s,s:I,s:I,s:I,s:I,s:I,s:f},s:{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I},s:n,s:n}",
      "namespace", "namespace_name", o.ns.name, "chunks", (json_int_t)o.ns.chunks, "sessions",
      (json_int_t)sessions, "stored_bytes", (json_int_t)o.ns.used_bytes, "tokens",
      (json_int_t)o.ns.tokens, "raw_fp16_bytes", (json_int_t)o.ns.raw_bytes, "bpe", bpe, "store",
      "capacity_bytes", (json_int_t)s.capacity_bytes, "used_bytes", (json_int_t)s.used_bytes,
      "disk_bytes", (json_int_t)s.disk_bytes, "chunks", (json_int_t)s.chunks, "sessions",
      (json_int_t)s.sessions, "namespaces", (json_int_t)s.namespaces, "segments",
      (json_int_t)s.segments, "quarantined", (json_int_t)s.quarantined, "fingerprints",
      (json_int_t)s.fingerprints, "evictions", (json_int_t)s.evictions, "daemon", "hit_rate");
  if (!j) return ctl_error(ctx, CTL_EXIT_FAILURE, "nomem", "out of memory");
  if (ctx->json) ctl_out_json(stdout, j);
  else ctl_out_fields(stdout, ctl_cols_stat, j);
  json_decref(j);
  return CTL_EXIT_OK;
}

static int ctl_off_verify_progress(void *arg, uint64_t done, uint64_t total) {
  ctl_prog *p = arg;
  p->total = total;
  if (done > p->done) ctl_prog_add(p, done - p->done);
  return 0;
}

int ctl_off_verify(ctl_ctx *ctx, int argc, char **argv) {
  (void)argc;
  (void)argv;
  if (ctx->opt[CTL_O_MAX_BYTES])
    return ctl_error(ctx, CTL_EXIT_UNSUPPORTED, "unsupported", "--max-bytes is for online verify");
  ctl_off o;
  int rc = ctl_off_open(ctx, &o, 0);
  if (rc) return rc;
  ctl_prog prog;
  ctl_prog_begin(&prog, ctx->progress, "verify", 0, 0);
  e8s_verify_report rep;
  memset(&rep, 0, sizeof rep);
  int r = e8s_verify(o.st, &rep, ctl_off_verify_progress, &prog);
  ctl_prog_end(&prog);
  if (r) { e8s_close(o.st); return ctl_off_store_error(ctx, r, "verify"); }
  json_t *list = json_array();
  e8s_quarantine_entry q[64];
  uint8_t after[E8S_KEY_BYTES];
  int have_after = 0;
  for (int more = 1; more && json_array_size(list) < 1000;) {
    size_t n = 0;
    if ((r = e8s_quarantine_list(o.st, have_after ? after : NULL, q, 64, &n, &more))) break;
    for (size_t i = 0; i < n; i++) {
      char seg[32], why[96];
      snprintf(seg, sizeof seg, "%016llu.seg", (unsigned long long)q[i].segment_id);
      snprintf(why, sizeof why, "crc mismatch (stored %08x, found %08x)", q[i].stored_crc, q[i].found_crc);
      json_array_append_new(list, json_pack("{s:o,s:s,s:I,s:s}", "chunk_key", ctl_json_hex(q[i].key, 32),
                                            "segment", seg, "offset", (json_int_t)q[i].offset, "reason", why));
    }
    if (!n) break;
    memcpy(after, q[n - 1].key, E8S_KEY_BYTES);
    have_after = 1;
  }
  e8s_close(o.st);
  if (r) { json_decref(list); return ctl_off_store_error(ctx, r, "quarantine list"); }
  /* Read-only: CRC failures found now are counted but not quarantined (no location). */
  json_t *j = json_pack("{s:I,s:I,s:I,s:o,s:b,s:I}", "records_checked", (json_int_t)rep.chunks_checked,
                        "bytes_checked", (json_int_t)rep.bytes_checked, "corrupt_records",
                        (json_int_t)(rep.newly_quarantined + rep.quarantined), "corrupt", list,
                        "complete", 1, "found_by_this_scan", (json_int_t)rep.newly_quarantined);
  return ctl_verify_report(ctx, j);
}

int ctl_off_export(ctl_ctx *ctx, int argc, char **argv) {
  (void)argc;
  ctl_off o;
  int rc = ctl_off_open(ctx, &o, 1);
  if (rc) return rc;
  ctl_off_sess s;
  if ((rc = ctl_off_sess_load(ctx, &o, argv[0], 1, &s))) { e8s_close(o.st); return rc; }
  ctl_exp e;
  if ((rc = ctl_exp_begin(ctx, &e, argv[1], &s.m))) goto out;
  uint8_t *buf = NULL;
  uint32_t *tok = NULL;
  uint64_t start = 0;
  for (uint64_t i = 0; i < s.info.n_chunks && !rc; i++) {
    e8s_chunk_info ci;
    uint64_t got = 0;
    int r = e8s_chunk_stat(o.st, o.ns.id, s.keys[i], &ci);
    uint8_t *nb = r ? NULL : realloc(buf, ci.payload_bytes + 1);
    if (!r && !nb) r = E8S_ERR_NOMEM;
    if (nb) buf = nb;
    if (!r) r = e8s_get(o.st, o.ns.id, s.keys[i], buf, ci.payload_bytes, &got);
    uint64_t clen = 0;
    const uint8_t *tl = NULL;
    uint32_t nt = 0;
    if (r) {
      ctl_exp_abort(&e);
      rc = ctl_off_store_error(ctx, r, "chunk");
    } else if (ctl_off_payload_split(buf, got, &clen, &tl, &nt) != 0) {
      ctl_exp_abort(&e);
      rc = ctl_error(ctx, CTL_EXIT_CORRUPT, "DATA_LOSS", "chunk %llu of \"%s\": payload has no token trailer",
                     (unsigned long long)i, argv[0]);
    } else {
      uint32_t *nt_buf = realloc(tok, (size_t)nt * sizeof *tok);
      if (!nt_buf) { ctl_exp_abort(&e); rc = ctl_error(ctx, CTL_EXIT_FAILURE, "nomem", "out of memory"); break; }
      tok = nt_buf;
      for (uint32_t t = 0; t < nt; t++)
        tok[t] = (uint32_t)tl[4 * t] | (uint32_t)tl[4 * t + 1] << 8 | (uint32_t)tl[4 * t + 2] << 16 |
                 (uint32_t)tl[4 * t + 3] << 24;
      rc = ctl_exp_chunk(ctx, &e, start, tok, nt, s.info.fp_id, E8S_KEY_BYTES, buf, clen);
      start += nt;
    }
  }
  free(buf);
  free(tok);
  if (!rc) rc = ctl_exp_end(ctx, &e);
out:
  ctl_off_sess_free(&s);
  e8s_close(o.st);
  return rc;
}
