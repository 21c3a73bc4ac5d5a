/* kvd_rpc_put.c: PutChunks, the client-streaming upload of one sequence's chunks.
 *
 * Flow: the header fixes fingerprint, chunk size, encoding and where the chain continues
 * (a session's end or cut point, a parent chunk, or the start of a sequence). Pieces are
 * assembled into one chunk at a time (bounded by --max-chunk-bytes); a complete chunk is
 * checked (frames: every CRC, fingerprint, token count and position; raw: exact size, then
 * encoded by the CPU codec), keyed, given its token trailer and queued. Queued chunks go to the
 * store in batches of --put-batch-bytes (one write + fdatasync + index commit each). When the
 * client closes the stream, the last batch is stored and only then the session is changed,
 * all or nothing (kvd_swrite.h).
 * Memory per call: one chunk being assembled, its encoded form, and one batch.
 */
#include <stdlib.h>
#include <string.h>

#include "daemon/kvd_log.h"
#include "daemon/kvd_payload.h"
#include "daemon/kvd_session.h"
#include "daemon/kvd_swrite.h"

typedef struct put_rec {
  uint8_t *payload;       /* owned */
  uint64_t payload_bytes;
  uint32_t *tokens;       /* owned */
  uint32_t n_tokens;
  uint8_t key[E8S_KEY_BYTES], parent[E8S_KEY_BYTES];
} put_rec;

typedef struct put_state {
  kvd_app *app;
  const kvd_principal *who;
  kvd_call *call;
  const E8kv__V1__PutHeader *h;
  kvd_fp fp;
  e8c_ctx *ctx;                       /* raw uploads only */
  uint32_t chunk_tokens;
  int raw;
  e8c_dtype raw_dtype;
  /* where the next chunk goes */
  uint8_t parent[E8S_KEY_BYTES];      /* all zero: sequence start */
  uint64_t pos;                       /* its first token's position */
  /* session */
  int has_session, session_exists, locked, replace;
  kvd_sess sess;                      /* loaded when it exists */
  uint64_t keep_chunks;               /* with replace: chunks of the session kept */
  /* chunk being assembled */
  int in_chunk, last_short;
  uint32_t *tokens;
  uint32_t n_tok;
  uint8_t *buf;
  size_t len, cap;
  uint8_t *enc;                       /* raw uploads: encoded chunk + trailer */
  size_t enc_cap;
  /* batch and results */
  put_rec *batch;
  size_t n_batch, cap_batch;
  uint64_t batch_bytes;
  uint8_t (*keys)[E8S_KEY_BYTES];
  size_t n_keys, cap_keys;
  size_t n_pinned;                    /* keys[0..n_pinned) read-pinned until the call ends */
  uint32_t stored, dedup;
  uint64_t tokens_total, stored_bytes;
} put_state;

static int grow(void **p, size_t *cap, size_t need, size_t elem) {
  if (need <= *cap) return 0;
  size_t n = *cap ? *cap : 4;
  while (n < need) n *= 2;
  void *q = realloc(*p, n * elem);
  if (!q) return -1;
  *p = q;
  *cap = n;
  return 0;
}

/* ------------------------------------------------------------------ header */

static int put_locate_parent(put_state *s, kvd_status *st) {
  const E8kv__V1__PutHeader *h = s->h;
  if (h->parent_key.len == 0) {
    if (h->parent_end_token)
      return kvd_error(st, KVD_INVALID, "parent_end_token is set without parent_key");
    return 0;
  }
  if (h->parent_key.len != E8S_KEY_BYTES)
    return kvd_error(st, KVD_INVALID, "parent_key must be %d bytes (got %zu)", E8S_KEY_BYTES,
                     h->parent_key.len);
  e8s_chunk *ch;
  e8s_chunk_info ci;
  int rc = e8s_chunk_open(s->app->store, s->who->ns_id, h->parent_key.data, &ch, &ci);
  if (rc == E8S_ERR_NOTFOUND)
    return kvd_error(st, KVD_NOT_FOUND, "parent_key: no such chunk in this namespace");
  if (rc != E8S_OK) return kvd_store_error(st, rc, "parent_key");
  uint8_t *p = malloc(ci.payload_bytes ? ci.payload_bytes : 1);
  rc = p ? e8s_chunk_read(ch, p, ci.payload_bytes) : E8S_ERR_NOMEM;
  e8s_chunk_close(ch);
  size_t cb;
  const uint8_t *tl;
  uint32_t nt;
  e8c_chunk_info info;
  int bad = rc == E8S_OK && (kvd_payload_split(p, ci.payload_bytes, &cb, &tl, &nt) != 0 ||
                             e8c_is_error(e8c_chunk_info_get(p, cb, &info)));
  free(p);
  if (rc != E8S_OK) return kvd_store_error(st, rc, "parent_key: read");
  if (bad) return kvd_error(st, KVD_DATA_LOSS, "parent_key: stored chunk does not parse");
  if (memcmp(ci.fp_id, s->fp.id, E8S_KEY_BYTES) != 0)
    return kvd_error(st, KVD_PRECONDITION, "parent_key: the parent chunk was stored under "
                                           "another model fingerprint");
  if (info.n_tokens != s->chunk_tokens)
    return kvd_error(st, KVD_PRECONDITION, "parent_key: the parent chunk holds %u tokens, "
                                           "not chunk_tokens = %u: a short chunk ends its "
                                           "sequence", info.n_tokens, s->chunk_tokens);
  uint64_t end = (uint64_t)info.first_pos + info.n_tokens;
  if (h->parent_end_token && h->parent_end_token != end)
    return kvd_error(st, KVD_PRECONDITION, "parent_end_token %llu does not match the parent "
                                           "chunk, which ends at token %llu",
                     (unsigned long long)h->parent_end_token, (unsigned long long)end);
  memcpy(s->parent, h->parent_key.data, E8S_KEY_BYTES);
  s->pos = end;
  return 0;
}

/* session_metadata's entries checked (sizes, UTF-8) as CreateSession checks them. */
static int put_meta_check(const E8kv__V1__PutHeader *h, kvd_status *st) {
  size_t nm = h->n_session_metadata;
  char **mk = calloc(nm + 1, sizeof *mk), **mv = calloc(nm + 1, sizeof *mv);
  int rc = (!mk || !mv) ? kvd_error(st, KVD_RESOURCE, "out of memory") : 0;
  for (size_t i = 0; rc == 0 && i < nm; i++) {
    mk[i] = h->session_metadata[i]->key;
    mv[i] = h->session_metadata[i]->value;
  }
  if (rc == 0) rc = kvd_sess_meta_check(nm, mk, mv, st);
  free(mk);
  free(mv);
  return rc;
}

static int put_locate_session(put_state *s, kvd_status *st) {
  const E8kv__V1__PutHeader *h = s->h;
  if (kvd_sess_name_check(h->session, st) != 0) return -1;
  if (h->parent_key.len || h->parent_end_token)
    return kvd_error(st, KVD_INVALID, "give either session or parent_key, not both");
  if (h->n_session_metadata > KVD_META_ENTRIES_MAX)
    return kvd_error(st, KVD_INVALID, "session_metadata: %zu entries, at most %d",
                     h->n_session_metadata, KVD_META_ENTRIES_MAX);
  if (put_meta_check(h, st) != 0) return -1; /* refused before any chunk is sent */
  if (kvd_session_lock(s->app, s->who->ns_id, h->session, st) != 0) return -1;
  s->locked = 1;
  if (kvd_sess_load(s->app->store, s->who->ns_id, h->session, 1, &s->sess, st) != 0) {
    if (st->code != KVD_NOT_FOUND) return -1;
    if (!h->create_session)
      return kvd_error(st, KVD_NOT_FOUND, "session '%s' not found (set create_session to "
                                          "create it)", h->session);
    kvd_status_ok(st);
  } else {
    s->session_exists = 1;
  }
  uint64_t have = s->session_exists ? s->sess.info.n_tokens : 0;
  char a[17], b[17];
  if (s->session_exists && memcmp(s->sess.info.fp_id, s->fp.id, E8S_KEY_BYTES) != 0)
    return kvd_error(st, KVD_PRECONDITION, "session '%s' holds KV of fingerprint %s, this "
                                           "call's fingerprint is %s (model %s)", h->session,
                     kvd_hex8(s->sess.info.fp_id, a), kvd_hex8(s->fp.id, b),
                     s->fp.fp.model_id);
  if (s->session_exists && s->sess.meta->chunk_tokens != s->chunk_tokens)
    return kvd_error(st, KVD_PRECONDITION, "session '%s' uses chunk_tokens = %u, this call "
                                           "says %u", h->session, s->sess.meta->chunk_tokens,
                     s->chunk_tokens);
  if (h->session_expect_case == E8KV__V1__PUT_HEADER__SESSION_EXPECT_EXPECT_SESSION_TOKENS &&
      h->expect_session_tokens != have)
    return kvd_error(st, KVD_PRECONDITION, "session '%s' holds %llu tokens, expected %llu",
                     h->session, (unsigned long long)have,
                     (unsigned long long)h->expect_session_tokens);
  uint64_t at = have;
  if (h->session_position_case == E8KV__V1__PUT_HEADER__SESSION_POSITION_SESSION_START_TOKEN) {
    at = h->session_start_token;
    if (at > have || at % s->chunk_tokens)
      return kvd_error(st, KVD_PRECONDITION, "session_start_token %llu must be a multiple of "
                                             "chunk_tokens (%u) and at most the session's "
                                             "%llu tokens", (unsigned long long)at,
                       s->chunk_tokens, (unsigned long long)have);
  } else if (have % s->chunk_tokens) {
    return kvd_error(st, KVD_PRECONDITION, "session '%s' ends inside a chunk (%llu tokens, "
                                           "chunk_tokens %u): set session_start_token = %llu "
                                           "to replace its short last chunk", h->session,
                     (unsigned long long)have, s->chunk_tokens,
                     (unsigned long long)(have - have % s->chunk_tokens));
  }
  s->keep_chunks = at / s->chunk_tokens;
  s->replace = s->session_exists && at < have;
  s->pos = at;
  if (s->keep_chunks) memcpy(s->parent, s->sess.keys[s->keep_chunks - 1], E8S_KEY_BYTES);
  return 0;
}

static int put_begin(put_state *s, const E8kv__V1__PutHeader *h, kvd_status *st) {
  s->h = h;
  if (kvd_fp_resolve(h->fingerprint, &s->fp, st) != 0) return -1;
  if (kvd_sess_chunk_tokens(h->chunk_tokens, &s->chunk_tokens, st) != 0) return -1;
  if (h->encoding == E8KV__V1__ENCODING__ENCODING_RAW) {
    if (h->raw_dtype < E8KV__V1__DTYPE__DTYPE_FP16 || h->raw_dtype > E8KV__V1__DTYPE__DTYPE_FP32)
      return kvd_error(st, KVD_INVALID, "raw_dtype must be FP16, BF16 or FP32 with "
                                        "ENCODING_RAW");
    s->raw = 1;
    s->raw_dtype = (e8c_dtype)h->raw_dtype;
    int64_t err = 0;
    s->ctx = e8c_ctx_create(&s->fp.fp, &err);
    if (!s->ctx) return kvd_error(st, KVD_INVALID, "codec: %s", e8c_error_string(err));
  } else if (h->encoding == E8KV__V1__ENCODING__ENCODING_E8_FRAME) {
    if (h->raw_dtype)
      return kvd_error(st, KVD_INVALID, "raw_dtype must be unset with ENCODING_E8_FRAME");
  } else {
    return kvd_error(st, KVD_INVALID, "encoding must be ENCODING_E8_FRAME or ENCODING_RAW");
  }
  if (*h->session) {
    if (put_locate_session(s, st) != 0) return -1;
  } else {
    if (h->create_session || h->session_position_case || h->session_expect_case ||
        h->n_session_metadata)
      return kvd_error(st, KVD_INVALID, "create_session, session_start_token, "
                                        "expect_session_tokens and session_metadata need a "
                                        "session");
    if (put_locate_parent(s, st) != 0) return -1;
  }
  s->has_session = *h->session != 0;
  return kvd_fp_register(s->app->store, &s->fp, st);
}

/* ------------------------------------------------------------------ batches */

static void put_batch_clear(put_state *s) {
  for (size_t i = 0; i < s->n_batch; i++) {
    free(s->batch[i].payload);
    free(s->batch[i].tokens);
  }
  s->n_batch = 0;
  s->batch_bytes = 0;
}

/* Bytes n_tokens tokens of the call's model take as fp16 K and V over all layers. */
static uint64_t raw_fp16_bytes(const put_state *s, uint64_t n_tokens) {
  const e8c_fingerprint *f = &s->fp.fp;
  return n_tokens * 2ull * f->n_layers * f->n_kv_heads * f->head_dim * 2ull;
}

static int put_flush(put_state *s, kvd_status *st) {
  if (!s->n_batch) return 0;
  e8s_put_rec *recs = calloc(s->n_batch, sizeof *recs);
  if (!recs) return kvd_error(st, KVD_RESOURCE, "out of memory");
  for (size_t i = 0; i < s->n_batch; i++) {
    put_rec *r = &s->batch[i];
    memcpy(recs[i].key, r->key, E8S_KEY_BYTES);
    memcpy(recs[i].parent, r->parent, E8S_KEY_BYTES);
    recs[i].tokens = r->tokens;
    recs[i].n_tokens = r->n_tokens;
    recs[i].payload = r->payload;
    recs[i].payload_bytes = r->payload_bytes;
    recs[i].raw_bytes = raw_fp16_bytes(s, r->n_tokens); /* NamespaceStats.raw_fp16_bytes */
  }
  size_t first = s->n_keys - s->n_batch;
  /* a session put lists its chunks only at the end (put_session_commit): pinned before they
   * are stored, a purge (PurgeUnlisted, a pending one) or eviction meanwhile keeps them */
  int rc = s->has_session
               ? e8s_keys_pin(s->app->store, (const uint8_t(*)[E8S_KEY_BYTES])s->keys + first,
                              s->n_batch)
               : E8S_OK;
  if (rc == E8S_OK && s->has_session) s->n_pinned = s->n_keys;
  if (rc == E8S_OK)
    rc = kvd_commit_put(s->app->commit, s->who->ns_id, s->fp.id, recs, s->n_batch);
  for (size_t i = 0; rc == E8S_OK && i < s->n_batch; i++) {
    if (recs[i].existed) s->dedup++;
    else { s->stored++; s->stored_bytes += recs[i].payload_bytes; }
  }
  if (rc != E8S_OK) {
    size_t bad = 0;
    while (bad < s->n_batch && recs[bad].result == E8S_OK) bad++;
    char what[64];
    snprintf(what, sizeof what, "store chunk %zu", first + (bad < s->n_batch ? bad : 0));
    int code = bad < s->n_batch ? recs[bad].result : rc;
    kvd_status_from_store(st, code != E8S_OK ? code : rc, what);
  }
  free(recs);
  put_batch_clear(s);
  return rc == E8S_OK ? 0 : -1;
}

/* ------------------------------------------------------------------ one chunk */

static int put_check_frame(put_state *s, size_t idx, kvd_status *st) {
  e8c_chunk_info ci;
  int64_t r = e8c_chunk_info_get(s->buf, s->len, &ci);
  if (e8c_is_error(r))
    return kvd_error(st, KVD_INVALID, "chunk %zu: not a valid e8kv chunk frame: %s", idx,
                     e8c_error_string(r));
  char a[17], b[17];
  if (ci.chunk_size != s->len)
    return kvd_error(st, KVD_INVALID, "chunk %zu: %zu bytes sent, the frame says %llu", idx,
                     s->len, (unsigned long long)ci.chunk_size);
  if (memcmp(ci.fingerprint_id, s->fp.id, E8C_ID_SIZE) != 0)
    return kvd_error(st, KVD_INVALID, "chunk %zu was encoded for fingerprint %s, the call's "
                                      "fingerprint is %s", idx, kvd_hex8(ci.fingerprint_id, a),
                     kvd_hex8(s->fp.id, b));
  if (ci.n_tokens != s->n_tok)
    return kvd_error(st, KVD_INVALID, "chunk %zu: the frame holds %u tokens, token_ids has %u",
                     idx, ci.n_tokens, s->n_tok);
  if (ci.first_pos != s->pos)
    return kvd_error(st, KVD_INVALID, "chunk %zu was encoded at position %u, it goes at "
                                      "position %llu of the sequence", idx, ci.first_pos,
                     (unsigned long long)s->pos);
  return 0;
}

static int put_encode_raw(put_state *s, size_t idx, size_t *enc_len, kvd_status *st) {
  const e8c_fingerprint *f = &s->fp.fp;
  int64_t want = e8c_chunk_raw_size(s->ctx, 0, f->n_layers, s->n_tok, s->raw_dtype);
  if (e8c_is_error(want) || (uint64_t)want != s->len)
    return kvd_error(st, KVD_INVALID, "chunk %zu: raw data is %zu bytes, expected %lld = %u "
                                      "layers x 2 x %u heads x %u tokens x %u head_dim x %zu "
                                      "bytes", idx, s->len, (long long)want, f->n_layers,
                     f->n_kv_heads, s->n_tok, f->head_dim, e8c_dtype_size(s->raw_dtype));
  int64_t max = e8c_chunk_max_size(s->ctx, s->n_tok);
  if (e8c_is_error(max)) return kvd_error(st, KVD_INVALID, "chunk %zu: %s", idx,
                                          e8c_error_string(max));
  size_t need = (size_t)max + kvd_trailer_size(s->n_tok);
  if (grow((void **)&s->enc, &s->enc_cap, need, 1) != 0)
    return kvd_error(st, KVD_RESOURCE, "out of memory encoding chunk %zu", idx);
  e8c_chunk_params cp = {.n_tokens = s->n_tok, .first_pos = (uint32_t)s->pos};
  if (s->pos + s->n_tok > E8C_MAX_POSITION)
    return kvd_error(st, KVD_INVALID, "chunk %zu: position %llu is beyond the codec's limit",
                     idx, (unsigned long long)s->pos);
  int64_t n = e8c_chunk_encode(s->ctx, &cp, s->buf, s->raw_dtype, s->enc, (size_t)max);
  if (e8c_is_error(n))
    return kvd_error(st, KVD_INVALID, "chunk %zu: cannot encode: %s", idx,
                     *e8c_ctx_last_error(s->ctx) ? e8c_ctx_last_error(s->ctx)
                                                 : e8c_error_string(n));
  kvd_metrics_add(s->app->metrics, KVD_M_RAW_ENCODED, 1);
  *enc_len = (size_t)n;
  return 0;
}

static int put_chunk_done(put_state *s, kvd_status *st) {
  size_t idx = s->n_keys;
  uint8_t *payload;
  size_t clen = 0;
  if (s->raw) {
    if (put_encode_raw(s, idx, &clen, st) != 0) return -1;
    payload = malloc(clen + kvd_trailer_size(s->n_tok));
    if (!payload) return kvd_error(st, KVD_RESOURCE, "out of memory");
    memcpy(payload, s->enc, clen);
  } else {
    if (put_check_frame(s, idx, st) != 0) return -1;
    clen = s->len;
    if (grow((void **)&s->buf, &s->cap, clen + kvd_trailer_size(s->n_tok), 1) != 0)
      return kvd_error(st, KVD_RESOURCE, "out of memory");
    payload = s->buf; /* hand the buffer over to the batch */
    s->buf = NULL;
    s->cap = 0;
  }
  kvd_trailer_write(payload + clen, s->tokens, s->n_tok);
  if (grow((void **)&s->batch, &s->cap_batch, s->n_batch + 1, sizeof *s->batch) != 0 ||
      grow((void **)&s->keys, &s->cap_keys, s->n_keys + 1, E8S_KEY_BYTES) != 0) {
    free(payload);
    return kvd_error(st, KVD_RESOURCE, "out of memory");
  }
  put_rec *r = &s->batch[s->n_batch++];
  r->payload = payload;
  r->payload_bytes = clen + kvd_trailer_size(s->n_tok);
  r->tokens = s->tokens;
  r->n_tokens = s->n_tok;
  s->tokens = NULL;
  memcpy(r->parent, s->parent, E8S_KEY_BYTES);
  static const uint8_t zero[E8S_KEY_BYTES];
  e8s_chunk_key(s->who->salt, s->fp.id, memcmp(s->parent, zero, E8S_KEY_BYTES) ? s->parent
                                                                                : NULL,
                r->tokens, r->n_tokens, r->key);
  memcpy(s->keys[s->n_keys++], r->key, E8S_KEY_BYTES);
  memcpy(s->parent, r->key, E8S_KEY_BYTES);
  s->pos += r->n_tokens;
  s->tokens_total += r->n_tokens;
  s->last_short = r->n_tokens < s->chunk_tokens;
  s->batch_bytes += r->payload_bytes;
  s->in_chunk = 0;
  s->len = 0;
  if (s->batch_bytes >= s->app->cfg->put_batch_bytes) return put_flush(s, st);
  return 0;
}

static int put_piece(put_state *s, const E8kv__V1__ChunkPiece *p, kvd_status *st) {
  size_t idx = s->n_keys;
  if (!s->in_chunk) {
    if (p->n_token_ids == 0)
      return kvd_error(st, KVD_INVALID, "chunk %zu: its first piece has no token_ids", idx);
    if (p->n_token_ids > s->chunk_tokens)
      return kvd_error(st, KVD_INVALID, "chunk %zu: %zu token ids, more than chunk_tokens = "
                                        "%u", idx, p->n_token_ids, s->chunk_tokens);
    if (s->last_short)
      return kvd_error(st, KVD_INVALID, "chunk %zu follows a short chunk: only the last "
                                        "chunk of a sequence may hold fewer than "
                                        "chunk_tokens = %u tokens", idx, s->chunk_tokens);
    if (idx >= s->app->cfg->max_chunks_per_call)
      return kvd_error(st, KVD_RESOURCE, "more than --max-chunks-per-call = %u chunks in one "
                                         "call", s->app->cfg->max_chunks_per_call);
    if (p->alias_key.len > 64)
      return kvd_error(st, KVD_INVALID, "chunk %zu: alias_key is %zu bytes, at most 64", idx,
                       p->alias_key.len);
    s->tokens = malloc(p->n_token_ids * sizeof *s->tokens);
    if (!s->tokens) return kvd_error(st, KVD_RESOURCE, "out of memory");
    memcpy(s->tokens, p->token_ids, p->n_token_ids * sizeof *s->tokens);
    s->n_tok = (uint32_t)p->n_token_ids;
    s->in_chunk = 1;
    s->len = 0;
  } else if (p->n_token_ids) {
    return kvd_error(st, KVD_INVALID, "chunk %zu: token_ids may only be on its first piece",
                     idx);
  }
  if (s->len == 0 && !p->more && p->data.len) { /* a whole chunk in one piece: take its bytes */
    free(s->buf);
    s->buf = p->data.data;
    s->cap = s->len = p->data.len;
    ((E8kv__V1__ChunkPiece *)p)->data = (ProtobufCBinaryData){0, NULL}; /* now ours */
    if (s->len > s->app->cfg->max_chunk_bytes)
      return kvd_error(st, KVD_RESOURCE, "chunk %zu: data of %zu bytes is over "
                                         "--max-chunk-bytes = %llu bytes", idx, s->len,
                       (unsigned long long)s->app->cfg->max_chunk_bytes);
    return put_chunk_done(s, st);
  }
  if (s->len + p->data.len > s->app->cfg->max_chunk_bytes)
    return kvd_error(st, KVD_RESOURCE, "chunk %zu: data of %zu+ bytes is over "
                                       "--max-chunk-bytes = %llu bytes", idx,
                     s->len + p->data.len, (unsigned long long)s->app->cfg->max_chunk_bytes);
  if (grow((void **)&s->buf, &s->cap, s->len + p->data.len + 1, 1) != 0)
    return kvd_error(st, KVD_RESOURCE, "out of memory for chunk %zu", idx);
  if (p->data.len) memcpy(s->buf + s->len, p->data.data, p->data.len);
  s->len += p->data.len;
  return p->more ? 0 : put_chunk_done(s, st);
}

/* ------------------------------------------------------------------ commit */

static int put_session_commit(put_state *s, kvd_status *st) {
  const E8kv__V1__PutHeader *h = s->h;
  kvd_app *app = s->app;
  uint32_t ns = s->who->ns_id;
  uint8_t *meta = NULL;
  size_t meta_len = 0;
  char **mk = NULL, **mv = NULL;
  size_t nm = h->n_session_metadata;
  if (nm) {
    mk = calloc(nm, sizeof *mk);
    mv = calloc(nm, sizeof *mv);
    for (size_t i = 0; mk && mv && i < nm; i++) {
      mk[i] = h->session_metadata[i]->key;
      mv[i] = h->session_metadata[i]->value;
    }
  }
  int rc = (nm && (!mk || !mv)) ? kvd_error(st, KVD_RESOURCE, "out of memory")
           : kvd_sess_meta_check(nm, mk, mv, st) != 0
               ? -1
               : kvd_sess_meta_pack(s->chunk_tokens, s->session_exists ? s->sess.meta : NULL,
                                    nm, mk, mv, &meta, &meta_len, st);
  free(mk);
  free(mv);
  if (rc != 0) return -1;
  kvd_swrite w = {.ns = ns, .name = h->session, .fp_id = s->fp.id,
                  .old = s->session_exists ? &s->sess : NULL, .keep_chunks = s->keep_chunks,
                  .meta = meta, .meta_len = meta_len, .set_meta = nm != 0,
                  .keys = (const uint8_t(*)[E8S_KEY_BYTES])s->keys, .n_keys = s->n_keys};
  rc = kvd_swrite_commit(app->store, &w, st);
  free(meta);
  return rc;
}

static void put_reply(put_state *s, kvd_status *st) {
  E8kv__V1__PutChunksResponse r;
  e8kv__v1__put_chunks_response__init(&r);
  ProtobufCBinaryData *keys = calloc(s->n_keys + 1, sizeof *keys);
  if (!keys) { kvd_fail(st, KVD_RESOURCE, "out of memory"); return; }
  for (size_t i = 0; i < s->n_keys; i++) keys[i] = (ProtobufCBinaryData){E8S_KEY_BYTES, s->keys[i]};
  r.n_chunk_keys = s->n_keys;
  r.chunk_keys = keys;
  r.chunks_stored = s->stored;
  r.chunks_deduplicated = s->dedup;
  r.tokens = s->tokens_total;
  r.stored_bytes = s->stored_bytes;
  r.raw_fp16_bytes = raw_fp16_bytes(s, s->tokens_total);
  r.fingerprint_id = (ProtobufCBinaryData){E8C_ID_SIZE, s->fp.id};
  kvd_sess loaded = {0};
  kvd_sess_pb spb;
  kvd_status tmp; /* the chunks are committed: a failure to describe the session is no error */
  memset(&spb, 0, sizeof spb);
  if (s->has_session &&
      kvd_sess_load(s->app->store, s->who->ns_id, s->h->session, 0, &loaded, &tmp) == 0 &&
      kvd_sess_to_pb(s->app->store, s->who->ns_id, &loaded, 0, &spb, &tmp) == 0)
    r.session = &spb.m;
  if (st->code == KVD_OK && kvd_call_send(s->call, &r.base) != 0) kvd_call_check(s->call, st);
  kvd_sess_pb_free(&spb);
  kvd_sess_free(&loaded);
  free(keys);
}

static void put_free(put_state *s) {
  put_batch_clear(s);
  free(s->batch);
  e8s_keys_unpin(s->app->store, (const uint8_t(*)[E8S_KEY_BYTES])s->keys, s->n_pinned);
  free(s->keys);
  free(s->tokens);
  free(s->buf);
  free(s->enc);
  e8c_ctx_free(s->ctx);
  if (s->locked) kvd_session_unlock(s->app, s->who->ns_id, s->h->session);
  kvd_sess_free(&s->sess);
}

/* Reads the stream; returns 0 after the client closed it cleanly, -1 with st set. */
/* Keeps a copy of the header apart from the (possibly large) first message. */
static E8kv__V1__PutHeader *put_header_copy(const E8kv__V1__PutHeader *h) {
  size_t n = e8kv__v1__put_header__get_packed_size(h);
  uint8_t *b = malloc(n + 1);
  if (!b) return NULL;
  e8kv__v1__put_header__pack(h, b);
  E8kv__V1__PutHeader *c = e8kv__v1__put_header__unpack(NULL, n, b);
  free(b);
  return c;
}

static int put_read_stream(put_state *s, E8kv__V1__PutHeader **hdr, kvd_status *st) {
  size_t n_msgs = 0;
  for (;;) {
    const uint8_t *d;
    size_t n;
    int r = kvd_call_recv(s->call, &d, &n);
    if (r < 0) { kvd_call_check(s->call, st); return -1; }
    if (r == 0) break;
    E8kv__V1__PutChunksRequest *m = e8kv__v1__put_chunks_request__unpack(NULL, n, d);
    if (m && kvd_wire_strings_check(&e8kv__v1__put_chunks_request__descriptor, d, n, st)) {
      e8kv__v1__put_chunks_request__free_unpacked(m, NULL);
      return -1;
    }
    kvd_call_recv_release(s->call); /* keep one copy of a large message, not two */
    if (!m) return kvd_error(st, KVD_INVALID, "message %zu: malformed PutChunksRequest (%zu "
                                              "bytes that do not decode as protobuf)",
                             n_msgs, n);
    int rc = 0;
    if (n_msgs == 0) {
      if (!m->header) rc = kvd_error(st, KVD_INVALID, "the first PutChunksRequest must carry "
                                                     "the header");
      else if (!(*hdr = put_header_copy(m->header)))
        rc = kvd_error(st, KVD_RESOURCE, "out of memory");
      else rc = put_begin(s, *hdr, st);
    } else if (m->header) {
      rc = kvd_error(st, KVD_INVALID, "message %zu: header is only allowed in the first "
                                      "message", n_msgs);
    }
    for (size_t i = 0; rc == 0 && i < m->n_pieces; i++) rc = put_piece(s, m->pieces[i], st);
    if (rc == 0 && kvd_call_check(s->call, st) != 0) rc = -1;
    e8kv__v1__put_chunks_request__free_unpacked(m, NULL);
    n_msgs++;
    if (rc != 0) return -1;
  }
  if (n_msgs == 0) return kvd_error(st, KVD_INVALID, "empty stream: no header");
  if (s->in_chunk)
    return kvd_error(st, KVD_INVALID, "the stream ended inside chunk %zu (its last piece had "
                                      "more = true)", s->n_keys);
  if (s->n_keys == 0 && !s->has_session)
    return kvd_error(st, KVD_INVALID, "no chunks in the stream");
  return 0;
}

void kvd_rpc_put_chunks(kvd_app *app, kvd_call *call, const kvd_principal *who,
                        kvd_status *st) {
  put_state s;
  memset(&s, 0, sizeof s);
  s.app = app;
  s.who = who;
  s.call = call;
  E8kv__V1__PutHeader *hdr = NULL;
  if (put_read_stream(&s, &hdr, st) == 0 && put_flush(&s, st) == 0 &&
      (!s.has_session || put_session_commit(&s, st) == 0)) {
    kvd_metrics_add(app->metrics, KVD_M_CHUNKS_STORED, s.stored);
    kvd_metrics_add(app->metrics, KVD_M_CHUNKS_DEDUP, s.dedup);
    put_reply(&s, st);
  }
  if (st->code != KVD_OK && s.n_keys)
    KVD_DEBUG("put_abandoned", "chunks=%zu stored=%u code=%s", s.n_keys, s.stored,
              kvd_code_name(st->code));
  put_free(&s);
  if (hdr) e8kv__v1__put_header__free_unpacked(hdr, NULL);
}
