/*
 * e8kv_stream.c: the two streaming RPCs. PutChunks: a writer that cuts each
 * chunk into pieces of at most piece_bytes, one message per piece. GetChunks:
 * a reader that checks and reassembles pieces into whole chunks for a callback.
 */
#include <stdlib.h>
#include <string.h>

#include "clients/c/e8kv_int.h"

struct e8kv_put {
  kvc_stream *s;
  size_t piece_bytes;
  int broken; /* a send failed: only finish/abort are allowed */
};

e8kv_status e8kv_put_begin(e8kv_client *c, const E8kv__V1__PutHeader *header, e8kv_put **out,
                           e8kv_error *err) {
  if (!c || !header || !out) return kvc_fail(err, E8KV_E_USAGE, "e8kv_put_begin: NULL argument");
  *out = NULL;
  e8kv_put *p = calloc(1, sizeof *p);
  if (!p) return kvc_fail(err, E8KV_E_NOMEM, "out of memory");
  p->piece_bytes = E8KV_PUT_PIECE_BYTES_DEFAULT;
  e8kv_status st = kvc_stream_open(c, "/e8kv.v1.KVStore/PutChunks", KVC_STREAMING, &p->s, err);
  if (!st) {
    E8kv__V1__PutChunksRequest m = E8KV__V1__PUT_CHUNKS_REQUEST__INIT;
    m.header = (E8kv__V1__PutHeader *)header;
    st = kvc_stream_send(p->s, &m.base, err);
  }
  if (st) {
    kvc_stream_finish(p->s, NULL);
    free(p);
    return st;
  }
  *out = p;
  return E8KV_OK;
}

void e8kv_put_set_piece_bytes(e8kv_put *p, size_t bytes) {
  if (!p) return;
  if (bytes < 4096) bytes = 4096;
  if (bytes > (64u << 20)) bytes = 64u << 20;
  p->piece_bytes = bytes;
}

e8kv_status e8kv_put_chunk(e8kv_put *p, const uint32_t *token_ids, size_t n_tokens,
                           const void *data, size_t len, const void *alias_key,
                           size_t alias_len, e8kv_error *err) {
  if (!p || !token_ids || !n_tokens || !data || !len)
    return kvc_fail(err, E8KV_E_USAGE, "e8kv_put_chunk: a chunk needs token ids and data");
  if (p->broken) return kvc_fail(err, E8KV_E_USAGE, "e8kv_put_chunk: the stream already failed");
  const uint8_t *d = data;
  for (size_t off = 0; off < len;) {
    size_t n = len - off < p->piece_bytes ? len - off : p->piece_bytes;
    E8kv__V1__ChunkPiece piece = E8KV__V1__CHUNK_PIECE__INIT;
    E8kv__V1__ChunkPiece *pp = &piece;
    if (off == 0) {
      piece.n_token_ids = n_tokens;
      piece.token_ids = (uint32_t *)token_ids;
      if (alias_key && alias_len) {
        piece.alias_key.data = (uint8_t *)alias_key;
        piece.alias_key.len = alias_len;
      }
    }
    piece.data.data = (uint8_t *)d + off;
    piece.data.len = n;
    piece.more = off + n < len;
    E8kv__V1__PutChunksRequest m = E8KV__V1__PUT_CHUNKS_REQUEST__INIT;
    m.n_pieces = 1;
    m.pieces = &pp;
    e8kv_status st = kvc_stream_send(p->s, &m.base, err);
    if (st) {
      p->broken = 1;
      return st;
    }
    off += n;
  }
  return E8KV_OK;
}

e8kv_status e8kv_put_finish(e8kv_put *p, E8kv__V1__PutChunksResponse **out, e8kv_error *err) {
  if (!p || !out) return kvc_fail(err, E8KV_E_USAGE, "e8kv_put_finish: NULL argument");
  *out = NULL;
  e8kv_status st = kvc_stream_close_send(p->s, err);
  if (!st) st = kvc_stream_recv(p->s, &e8kv__v1__put_chunks_response__descriptor,
                                (ProtobufCMessage **)out, err);
  if (!st && !*out)
    st = kvc_fail(err, E8KV_E_PROTOCOL, "PutChunks: the daemon ended the call without a reply");
  if (!st) {
    ProtobufCMessage *extra = NULL;
    st = kvc_stream_recv(p->s, &e8kv__v1__put_chunks_response__descriptor, &extra, err);
    if (extra) {
      e8kv_msg_free(extra);
      st = kvc_fail(err, E8KV_E_PROTOCOL, "PutChunks: more than one reply");
    }
  }
  kvc_stream_finish(p->s, NULL);
  free(p);
  if (st && *out) {
    e8kv_msg_free(*out);
    *out = NULL;
  }
  return st;
}

void e8kv_put_abort(e8kv_put *p) {
  if (!p) return;
  kvc_stream_finish(p->s, NULL);
  free(p);
}

/* ---- GetChunks ---- */

static int kvc_same_chunk(const E8kv__V1__GetChunksResponse *a,
                          const E8kv__V1__GetChunksResponse *b) {
  return a->chunk_index == b->chunk_index && a->chunk_bytes == b->chunk_bytes &&
         a->start_token == b->start_token && a->n_tokens == b->n_tokens &&
         a->chunk_key.len == b->chunk_key.len &&
         (!a->chunk_key.len || memcmp(a->chunk_key.data, b->chunk_key.data, a->chunk_key.len) == 0);
}

e8kv_status kvc_asm_piece(kvc_asm *a, E8kv__V1__GetChunksResponse *m, e8kv_chunk_fn fn,
                                 void *ctx, e8kv_error *err) {
  e8kv_status st = E8KV_OK;
  if (!a->open) {
    if (m->offset != 0 || m->chunk_bytes > E8KV_MAX_CHUNK_BYTES_DEFAULT ||
        m->data.len > m->chunk_bytes) {
      st = kvc_fail(err, E8KV_E_PROTOCOL,
                    "GetChunks: chunk %u starts at offset %llu with %llu bytes announced",
                    m->chunk_index, (unsigned long long)m->offset,
                    (unsigned long long)m->chunk_bytes);
      e8kv_msg_free(m);
      return st;
    }
    if (m->chunk_bytes > a->cap && !m->last_piece) {
      uint8_t *b = realloc(a->buf, m->chunk_bytes ? m->chunk_bytes : 1);
      if (!b) { e8kv_msg_free(m); return kvc_fail(err, E8KV_E_NOMEM, "out of memory"); }
      a->buf = b;
      a->cap = m->chunk_bytes;
    }
    a->open = 1;
    a->have = 0;
    a->first = m;
  } else if (!kvc_same_chunk(a->first, m) || m->offset != a->have ||
             m->data.len > a->first->chunk_bytes - a->have) {
    st = kvc_fail(err, E8KV_E_PROTOCOL,
                  "GetChunks: piece at offset %llu does not continue chunk %u (have %llu of "
                  "%llu bytes)", (unsigned long long)m->offset, a->first->chunk_index,
                  (unsigned long long)a->have, (unsigned long long)a->first->chunk_bytes);
    e8kv_msg_free(m);
    return st;
  }
  /* A chunk in one piece is handed over from the message itself (no copy). */
  const uint8_t *data = m == a->first && m->last_piece ? m->data.data : a->buf;
  if (m->data.len && data == a->buf) memcpy(a->buf + a->have, m->data.data, m->data.len);
  a->have += m->data.len;
  int last = m->last_piece;
  if (m != a->first) e8kv_msg_free(m);
  if (!last) return E8KV_OK;
  E8kv__V1__GetChunksResponse *f = a->first;
  a->open = 0;
  a->first = NULL;
  if (a->have != f->chunk_bytes) {
    st = kvc_fail(err, E8KV_E_PROTOCOL, "GetChunks: chunk %u ended after %llu of %llu bytes",
                  f->chunk_index, (unsigned long long)a->have, (unsigned long long)f->chunk_bytes);
  } else {
    e8kv_chunk ch = {
        .index = f->chunk_index, .key = f->chunk_key.data, .key_len = f->chunk_key.len,
        .start_token = f->start_token, .n_tokens = f->n_tokens, .token_ids = f->token_ids,
        .n_token_ids = f->n_token_ids, .layer_begin = f->layer_begin, .layer_end = f->layer_end,
        .encoding = (int)f->encoding, .dtype = (int)f->dtype,
        .fingerprint_id = f->fingerprint_id.data, .fingerprint_id_len = f->fingerprint_id.len,
        .data = data, .bytes = a->have};
    if (fn(ctx, &ch)) st = kvc_fail(err, E8KV_E_ABORTED_BY_CALLER, "GetChunks: stopped by the caller");
  }
  e8kv_msg_free(f);
  return st;
}

e8kv_status kvc_asm_end(kvc_asm *a, e8kv_error *err) {
  if (a->open)
    return kvc_fail(err, E8KV_E_PROTOCOL, "GetChunks: the stream ended inside chunk %u",
                    a->first->chunk_index);
  return E8KV_OK;
}

void kvc_asm_free(kvc_asm *a) {
  e8kv_msg_free(a->first);
  free(a->buf);
  memset(a, 0, sizeof *a);
}

e8kv_status e8kv_get_chunks(e8kv_client *c, const E8kv__V1__GetChunksRequest *req,
                            e8kv_chunk_fn fn, void *ctx, e8kv_error *err) {
  if (!c || !req || !fn) return kvc_fail(err, E8KV_E_USAGE, "e8kv_get_chunks: NULL argument");
  kvc_stream *s;
  e8kv_status st = kvc_stream_open(c, "/e8kv.v1.KVStore/GetChunks", KVC_STREAMING, &s, err);
  if (st) return st;
  if (!(st = kvc_stream_send(s, &req->base, err))) st = kvc_stream_close_send(s, err);
  kvc_asm a = {0};
  while (!st) {
    ProtobufCMessage *m = NULL;
    st = kvc_stream_recv(s, &e8kv__v1__get_chunks_response__descriptor, &m, err);
    if (st || !m) break; /* error, or the end of the stream with the final status OK */
    st = kvc_asm_piece(&a, (E8kv__V1__GetChunksResponse *)m, fn, ctx, err);
  }
  if (!st) st = kvc_asm_end(&a, err);
  kvc_asm_free(&a);
  kvc_stream_finish(s, NULL);
  return st;
}
