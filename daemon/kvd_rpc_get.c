/* kvd_rpc_get.c: Lookup (longest stored prefix) and GetChunks (server-streaming read).
 *
 * Lookup pins what it matched under a lease (kvd_lease.h) unless asked not to; GetChunks'
 * release_lease ends it when the call ends, whatever its outcome.
 * GetChunks reads one chunk at a time: open (read pin) -> read + CRC check -> close, so a
 * pin is held only while the bytes are read and a cancelled stream holds none. The chunk is
 * then sent as pieces of at most max_piece_bytes: the frame as stored, only the frames of
 * the requested layer range (E8_LAYER_FRAMES, nothing decoded), or decoded by the CPU codec
 * into the requested dtype and layer range (only those layers decoded). The pieces go out
 * without a copy (kvd_call_send_bytes: gRPC sends from the chunk's buffer and holds it until
 * written): a byte is read from disk, CRC-checked (by the store, then by the codec) and
 * written to the socket, with no copy in between.
 * Memory per call: four chunk-sized buffers kept for reuse (stored or decoded chunks); one
 * replaced while gRPC still sends from it lives until written.
 */
#include <stdlib.h>
#include <string.h>

#include "daemon/kvd_lease.h"
#include "daemon/kvd_payload.h"
#include "daemon/kvd_session.h"

/* ------------------------------------------------------------------ Lookup */

void kvd_rpc_lookup(kvd_app *app, kvd_call *call, const kvd_principal *who, kvd_status *st) {
  E8kv__V1__LookupRequest *rq =
      (E8kv__V1__LookupRequest *)kvd_recv_request(call, &e8kv__v1__lookup_request__descriptor,
                                                  st);
  if (!rq) return;
  kvd_fp fp;
  uint32_t ct;
  uint8_t(*keys)[E8S_KEY_BYTES] = NULL;
  ProtobufCBinaryData *kb = NULL;
  uint32_t *counts = NULL;
  if (kvd_fp_resolve(rq->fingerprint, &fp, st) != 0 ||
      kvd_sess_chunk_tokens(rq->chunk_tokens, &ct, st) != 0)
    goto out;
  if (rq->n_token_ids == 0) {
    kvd_fail(st, KVD_INVALID, "token_ids is empty");
    goto out;
  }
  if (rq->n_token_ids > app->cfg->max_lookup_tokens) {
    kvd_fail(st, KVD_INVALID, "%zu token ids, over --max-lookup-tokens = %u", rq->n_token_ids,
             app->cfg->max_lookup_tokens);
    goto out;
  }
  /* At most --max-chunks-per-call chunks: what one GetChunks may fetch, and a reply that stays
   * under gRPC clients' default 4 MiB receive limit at the default (65536 keys ~ 2.4 MB; 140000
   * 1-token chunks made a 4.9 MB reply that no default client could read). */
  size_t max_keys = (rq->n_token_ids + ct - 1) / ct;
  if (max_keys > app->cfg->max_chunks_per_call) max_keys = app->cfg->max_chunks_per_call;
  keys = malloc(max_keys * E8S_KEY_BYTES);
  kb = calloc(max_keys, sizeof *kb);
  counts = calloc(max_keys, sizeof *counts);
  if (!keys || !kb || !counts) {
    kvd_fail(st, KVD_RESOURCE, "out of memory");
    goto out;
  }
  e8s_lookup_result res;
  int rc = e8s_lookup(app->store, who->ns_id, fp.id, rq->token_ids, rq->n_token_ids, ct,
                      rq->no_lease ? 0 : E8S_LOOKUP_PIN, keys, max_keys, &res);
  if (rc != E8S_OK) {
    kvd_status_from_store(st, rc, "lookup");
    goto out;
  }
  kvd_metrics_add(app->metrics, KVD_M_LOOKUPS, 1);
  kvd_metrics_add(app->metrics, res.n_chunks ? KVD_M_LOOKUP_HITS : KVD_M_LOOKUP_MISSES, 1);
  kvd_metrics_add(app->metrics, KVD_M_LOOKUP_MATCHED_TOKENS, res.tokens_matched);
  E8kv__V1__LookupResponse r;
  e8kv__v1__lookup_response__init(&r);
  r.matched_tokens = res.tokens_matched;
  r.chunk_tokens = ct;
  r.fingerprint_id = (ProtobufCBinaryData){E8C_ID_SIZE, fp.id};
  for (size_t i = 0; i < res.n_chunks; i++) {
    kb[i] = (ProtobufCBinaryData){E8S_KEY_BYTES, keys[i]};
    counts[i] = i + 1 < res.n_chunks ? ct
                                     : (uint32_t)(res.tokens_matched - (uint64_t)ct * i);
  }
  r.n_chunk_keys = r.n_chunk_token_counts = res.n_chunks;
  r.chunk_keys = kb;
  r.chunk_token_counts = counts;
  uint8_t token[KVD_LEASE_TOKEN_BYTES];
  if (res.lease_id) {
    if (kvd_lease_token(who->ns_id, res.lease_id, token) != 0) {
      e8s_lease_release(app->store, res.lease_id);
      kvd_fail(st, KVD_INTERNAL, "no random key for lease tokens");
      goto out;
    }
    r.lease = (ProtobufCBinaryData){sizeof token, token};
    r.lease_ms = app->cfg->lookup_lease_ms;
  }
  if (kvd_call_send(call, &r.base) != 0) {
    kvd_call_check(call, st);
    if (res.lease_id) e8s_lease_release(app->store, res.lease_id); /* nobody got it */
  }
out:
  free(keys);
  free(kb);
  free(counts);
  e8kv__v1__lookup_request__free_unpacked(rq, NULL);
}

/* ------------------------------------------------------------------ GetChunks */

typedef struct get_state {
  kvd_app *app;
  const kvd_principal *who;
  kvd_call *call;
  const E8kv__V1__GetChunksRequest *rq;
  int raw;
  uint32_t piece;
  kvd_buf *pool[4];         /* buffers for stored and decoded chunks; gRPC sends from them
                               without a copy and holds one until its bytes are written */
  kvd_buf *buf;             /* the stored payload (one of pool) */
  kvd_buf *out;             /* the decoded chunk (one of pool) */
  e8c_ctx *ctx;             /* for the fingerprint of the last decoded chunk */
  uint8_t ctx_id[E8C_ID_SIZE];
} get_state;

/* A pool buffer of at least `need` bytes that gRPC no longer reads from and that is not
 * `keep` (the stored chunk while it is decoded). Reusing them saves the page faults of a
 * fresh allocation per chunk; a buffer still on its way out is replaced (gRPC frees it). */
static int get_buf(get_state *g, kvd_buf **b, const kvd_buf *keep, size_t need) {
  size_t n = sizeof g->pool / sizeof g->pool[0], k = n;
  for (size_t i = 0; i < n; i++) {
    kvd_buf *p = g->pool[i];
    if (p == keep || (p && !kvd_buf_writable(p))) continue;
    if (p && kvd_buf_cap(p) >= need) {
      *b = p;
      return 0;
    }
    k = i; /* empty or too small: replace this one */
  }
  if (k == n) k = g->pool[0] == keep ? 1 : 0; /* all busy: replace one */
  kvd_buf_unref(g->pool[k]);
  g->pool[k] = *b = kvd_buf_new(need);
  return *b ? 0 : -1;
}

static int get_decode(get_state *g, size_t idx, const uint8_t *chunk, size_t clen,
                      const e8c_chunk_info *ci, uint32_t lb, uint32_t le,
                      const uint8_t **data, size_t *len, e8c_dtype *dt, kvd_status *st) {
  if (!g->ctx || memcmp(g->ctx_id, ci->fingerprint_id, E8C_ID_SIZE) != 0) {
    e8c_fingerprint fp;
    int64_t r = e8c_chunk_fingerprint(chunk, clen, &fp);
    if (e8c_is_error(r))
      return kvd_error(st, KVD_DATA_LOSS, "chunk %zu: stored fingerprint unreadable: %s", idx,
                       e8c_error_string(r));
    e8c_ctx_free(g->ctx);
    g->ctx = e8c_ctx_create(&fp, &r);
    if (!g->ctx) return kvd_error(st, KVD_INTERNAL, "codec: %s", e8c_error_string(r));
    memcpy(g->ctx_id, ci->fingerprint_id, E8C_ID_SIZE);
  }
  *dt = g->rq->dtype ? (e8c_dtype)g->rq->dtype : (e8c_dtype)ci->src_dtype;
  int64_t need = e8c_chunk_raw_size(g->ctx, lb, le, ci->n_tokens, *dt);
  if (e8c_is_error(need))
    return kvd_error(st, KVD_INVALID, "chunk %zu: %s", idx, e8c_error_string(need));
  /* A frame may decode to far more than it takes (an uploaded E8_FRAME chunk is bounded by
   * --max-chunk-bytes encoded, not decoded): bound the decoded buffer as uploads are bound,
   * x2 so that any chunk uploaded raw at the limit still decodes to fp32. */
  uint64_t cap = 2 * g->app->cfg->max_chunk_bytes;
  if ((uint64_t)need > cap)
    return kvd_error(st, KVD_RESOURCE, "chunk %zu decodes to %lld bytes (%u tokens, layers "
                                       "[%u, %u), %zu-byte dtype), over 2 x --max-chunk-bytes "
                                       "= %llu: ask a smaller layer range or the encoded "
                                       "frames", idx, (long long)need, ci->n_tokens, lb, le,
                     e8c_dtype_size(*dt), (unsigned long long)cap);
  if (get_buf(g, &g->out, g->buf, (size_t)need) != 0)
    return kvd_error(st, KVD_RESOURCE, "out of memory decoding chunk %zu", idx);
  int64_t r = e8c_chunk_decode(g->ctx, chunk, clen, lb, le, NULL, kvd_buf_data(g->out), *dt,
                               (size_t)need);
  if (e8c_is_error(r))
    return kvd_error(st, r == E8C_ERR_CHECKSUM ? KVD_DATA_LOSS : KVD_INTERNAL,
                     "chunk %zu: decode failed: %s", idx, e8c_error_string(r));
  *data = kvd_buf_data(g->out);
  *len = (size_t)need;
  return 0;
}

/* E8_FRAME with a layer range: the frames of layers [lb, le) (K then V per layer, back to
 * back, as they sit in the chunk's payload), found by walking the payload's self-describing
 * frames with the codec's header parser; nothing is decoded. */
static int get_layer_frames(const uint8_t *chunk, const e8c_chunk_info *ci, size_t idx,
                            uint32_t lb, uint32_t le, const uint8_t **data, size_t *len,
                            kvd_status *st) {
  size_t end = (size_t)ci->chunk_size, off = end - (size_t)ci->payload_size, begin = off;
  for (uint32_t i = 0; i < 2 * le; i++) {
    e8c_frame_info fi;
    if (i == 2 * lb) begin = off;
    int64_t r = e8c_frame_info_get(chunk + off, end - off, &fi);
    if (e8c_is_error(r) || fi.layer != i / 2 || fi.kind != i % 2 || fi.frame_size > end - off)
      return kvd_error(st, KVD_DATA_LOSS, "chunk %zu: frame %u of its payload does not parse "
                                          "(%s)", idx, i,
                       e8c_is_error(r) ? e8c_error_string(r) : "out of order");
    off += (size_t)fi.frame_size;
  }
  *data = chunk + begin;
  *len = off - begin;
  return 0;
}

/* Reads, checks and sends chunk `key` as the idx-th chunk of the answer. */
static int get_one(get_state *g, size_t idx, const uint8_t *key, kvd_status *st) {
  e8s_chunk *ch;
  e8s_chunk_info info;
  char hex[17];
  int rc = e8s_chunk_open(g->app->store, g->who->ns_id, key, &ch, &info);
  if (rc == E8S_ERR_NOTFOUND)
    return kvd_error(st, KVD_NOT_FOUND, "chunk %zu (key %s...) not found in this namespace",
                     idx, kvd_hex8(key, hex));
  if (rc != E8S_OK) return kvd_store_error(st, rc, "open chunk");
  if (get_buf(g, &g->buf, NULL, info.payload_bytes + 1) != 0) {
    e8s_chunk_close(ch);
    return kvd_error(st, KVD_RESOURCE, "out of memory reading chunk %zu", idx);
  }
  uint8_t *stored = kvd_buf_data(g->buf);
  rc = e8s_chunk_read(ch, stored, kvd_buf_cap(g->buf));
  e8s_chunk_close(ch); /* the pin is held only while reading */
  if (rc != E8S_OK) return kvd_store_error(st, rc, "read chunk");
  size_t clen;
  const uint8_t *tl;
  uint32_t nt;
  e8c_chunk_info ci;
  if (kvd_payload_split(stored, info.payload_bytes, &clen, &tl, &nt) != 0 ||
      e8c_is_error(e8c_chunk_info_get(stored, clen, &ci)) || ci.n_tokens != nt)
    return kvd_error(st, KVD_DATA_LOSS, "chunk %zu (key %s...): stored bytes do not parse",
                     idx, kvd_hex8(key, hex));
  const E8kv__V1__GetChunksRequest *rq = g->rq;
  if (rq->expect_fingerprint_id.len &&
      memcmp(rq->expect_fingerprint_id.data, ci.fingerprint_id, E8C_ID_SIZE) != 0)
    return kvd_error(st, KVD_PRECONDITION, "chunk %zu was stored under fingerprint %s, not "
                                           "expect_fingerprint_id", idx,
                     kvd_hex8(ci.fingerprint_id, hex));
  uint32_t lb = rq->layer_begin, le = rq->layer_end ? rq->layer_end : ci.n_layers;
  if (lb >= le || le > ci.n_layers)
    return kvd_error(st, KVD_INVALID, "layer range [%u, %u) is not inside the chunk's %u "
                                      "layers", lb, le, ci.n_layers);
  const uint8_t *data = stored;
  size_t len = clen;
  e8c_dtype dt = 0;
  kvd_buf *from = g->buf;
  E8kv__V1__Encoding enc = E8KV__V1__ENCODING__ENCODING_E8_FRAME;
  if (g->raw) {
    if (get_decode(g, idx, stored, clen, &ci, lb, le, &data, &len, &dt, st) != 0) return -1;
    enc = E8KV__V1__ENCODING__ENCODING_RAW;
    from = g->out;
  } else if (lb != 0 || le != ci.n_layers) {
    if (get_layer_frames(stored, &ci, idx, lb, le, &data, &len, st) != 0) return -1;
    enc = E8KV__V1__ENCODING__ENCODING_E8_LAYER_FRAMES;
  }
  size_t base = (size_t)(data - kvd_buf_data(from));
  uint32_t *tokens = malloc((size_t)nt * sizeof *tokens);
  if (!tokens) return kvd_error(st, KVD_RESOURCE, "out of memory");
  for (uint32_t i = 0; i < nt; i++) tokens[i] = kvd_token_at(tl, i);
  E8kv__V1__GetChunksResponse r;
  e8kv__v1__get_chunks_response__init(&r);
  r.chunk_index = (uint32_t)idx;
  r.chunk_key = (ProtobufCBinaryData){E8S_KEY_BYTES, (uint8_t *)key};
  r.start_token = ci.first_pos;
  r.n_tokens = ci.n_tokens;
  r.layer_begin = lb;
  r.layer_end = le;
  r.encoding = enc;
  r.dtype = (E8kv__V1__DType)dt;
  r.chunk_bytes = len;
  r.fingerprint_id = (ProtobufCBinaryData){E8C_ID_SIZE, ci.fingerprint_id};
  int ret = 0;
  size_t off = 0;
  do {
    size_t n = len - off < g->piece ? len - off : g->piece;
    r.offset = off;
    r.last_piece = off + n == len;
    r.n_token_ids = off == 0 ? nt : 0;
    r.token_ids = tokens;
    if (kvd_call_send_bytes(g->call, &r.base, 11 /* data */, from, base + off, n) != 0) {
      kvd_call_check(g->call, st);
      ret = -1;
      break;
    }
    off += n;
  } while (off < len);
  free(tokens);
  if (ret == 0) kvd_metrics_add(g->app->metrics, KVD_M_CHUNKS_READ, 1);
  return ret;
}

/* The chunk keys a request selects. *keys is malloc'ed unless it points into the request. */
static int get_select(get_state *g, uint8_t (**keys)[E8S_KEY_BYTES], size_t *n, int *owned,
                      kvd_status *st) {
  const E8kv__V1__GetChunksRequest *rq = g->rq;
  uint32_t max = g->app->cfg->max_chunks_per_call;
  *owned = 0;
  if (rq->selection_case == E8KV__V1__GET_CHUNKS_REQUEST__SELECTION_KEYS) {
    const E8kv__V1__ChunkKeys *k = rq->keys;
    if (k->n_keys == 0) return kvd_error(st, KVD_INVALID, "keys is empty");
    if (k->n_keys > max)
      return kvd_error(st, KVD_RESOURCE, "%zu keys, over --max-chunks-per-call = %u",
                       k->n_keys, max);
    *keys = malloc(k->n_keys * E8S_KEY_BYTES);
    if (!*keys) return kvd_error(st, KVD_RESOURCE, "out of memory");
    *owned = 1;
    for (size_t i = 0; i < k->n_keys; i++) {
      if (k->keys[i].len != E8S_KEY_BYTES)
        return kvd_error(st, KVD_INVALID, "keys[%zu] is %zu bytes, chunk keys are %d", i,
                         k->keys[i].len, E8S_KEY_BYTES);
      memcpy((*keys)[i], k->keys[i].data, E8S_KEY_BYTES);
    }
    *n = k->n_keys;
    return 0;
  }
  if (rq->selection_case != E8KV__V1__GET_CHUNKS_REQUEST__SELECTION_RANGE)
    return kvd_error(st, KVD_INVALID, "give keys or range");
  const E8kv__V1__SessionRange *sr = rq->range;
  if (kvd_sess_name_check(sr->session, st) != 0) return -1;
  kvd_sess s;
  if (kvd_sess_load(g->app->store, g->who->ns_id, sr->session, 1, &s, st) != 0) return -1;
  uint64_t end = sr->end_token ? sr->end_token : s.info.n_tokens;
  uint32_t ct = s.meta->chunk_tokens;
  int rc = 0;
  if (sr->start_token >= end || end > s.info.n_tokens)
    rc = kvd_error(st, KVD_INVALID, "token range [%llu, %llu) is empty or beyond the session's "
                                    "%llu tokens", (unsigned long long)sr->start_token,
                   (unsigned long long)end, (unsigned long long)s.info.n_tokens);
  size_t c0 = (size_t)(sr->start_token / ct), c1 = (size_t)((end + ct - 1) / ct);
  if (rc == 0 && c1 - c0 > max)
    rc = kvd_error(st, KVD_RESOURCE, "the range covers %zu chunks, over "
                                     "--max-chunks-per-call = %u", c1 - c0, max);
  if (rc == 0) {
    if (c1 > s.info.n_chunks) c1 = (size_t)s.info.n_chunks;
    memmove(s.keys, s.keys + c0, (c1 - c0) * E8S_KEY_BYTES);
    *keys = s.keys;
    s.keys = NULL;
    *owned = 1;
    *n = c1 - c0;
  }
  kvd_sess_free(&s);
  return rc;
}

void kvd_rpc_get_chunks(kvd_app *app, kvd_call *call, const kvd_principal *who,
                        kvd_status *st) {
  E8kv__V1__GetChunksRequest *rq = (E8kv__V1__GetChunksRequest *)kvd_recv_request(
      call, &e8kv__v1__get_chunks_request__descriptor, st);
  if (!rq) return;
  get_state g = {.app = app, .who = who, .call = call, .rq = rq};
  uint8_t(*keys)[E8S_KEY_BYTES] = NULL;
  size_t n = 0;
  int owned = 0;
  /* the lease first: it ends with the call whatever the outcome, a refused field included
   * (e8kv.Client.release_lease relies on that) */
  uint64_t lease = 0;
  if (rq->release_lease.len &&
      kvd_lease_parse(who->ns_id, rq->release_lease.data, rq->release_lease.len, &lease) != 0)
    kvd_fail(st, KVD_INVALID, "release_lease is not a lease Lookup gave this namespace (%zu "
                              "bytes; leases are %d bytes and die with the daemon process)",
             rq->release_lease.len, KVD_LEASE_TOKEN_BYTES);
  uint64_t lim = app->cfg->max_message_bytes - 64 * 1024;
  g.piece = rq->max_piece_bytes ? rq->max_piece_bytes : (uint32_t)app->cfg->get_piece_bytes;
  if (rq->encoding == E8KV__V1__ENCODING__ENCODING_RAW) g.raw = 1;
  else if (st->code == KVD_OK && rq->encoding != E8KV__V1__ENCODING__ENCODING_UNSPECIFIED &&
           rq->encoding != E8KV__V1__ENCODING__ENCODING_E8_FRAME)
    kvd_fail(st, KVD_INVALID, "unknown encoding %d", rq->encoding);
  if (st->code == KVD_OK && (g.piece < 4096 || g.piece > lim))
    kvd_fail(st, KVD_INVALID, "max_piece_bytes %u must be in 4096..%llu (--max-message-bytes "
                              "less 64 KiB)", g.piece, (unsigned long long)lim);
  if (st->code == KVD_OK && !g.raw && rq->dtype)
    kvd_fail(st, KVD_INVALID, "dtype is only for ENCODING_RAW");
  if (st->code == KVD_OK && rq->dtype > E8KV__V1__DTYPE__DTYPE_FP32)
    kvd_fail(st, KVD_INVALID, "dtype %d is unknown", rq->dtype);
  if (st->code == KVD_OK && rq->expect_fingerprint_id.len &&
      rq->expect_fingerprint_id.len != E8C_ID_SIZE)
    kvd_fail(st, KVD_INVALID, "expect_fingerprint_id must be %u bytes", E8C_ID_SIZE);
  if (st->code == KVD_OK && get_select(&g, &keys, &n, &owned, st) == 0)
    for (size_t i = 0; i < n; i++)
      if (kvd_call_check(call, st) != 0 || get_one(&g, i, keys[i], st) != 0) break;
  if (lease) e8s_lease_release(app->store, lease); /* expired already: NOTFOUND, no matter */
  /* this call's read pins and lease ended: a purge waiting for them need not wait for the
   * maintenance thread */
  if (app->purge && kvd_purge_pending(app->purge, who->ns_id))
    kvd_purge_run(app->purge, app->store);
  if (owned) free(keys);
  for (size_t i = 0; i < sizeof g.pool / sizeof g.pool[0]; i++) kvd_buf_unref(g.pool[i]);
  e8c_ctx_free(g.ctx);
  e8kv__v1__get_chunks_request__free_unpacked(rq, NULL);
}
