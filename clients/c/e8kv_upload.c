/*
 * e8kv_upload.c: PutChunks on a C thread, fed from caller buffers (e8kv_upload_*, e8kv.h).
 *
 * The caller queues chunks (token ids copied, data by pointer) and goes on; one worker thread
 * per upload opens the call, sends the header and then messages of up to piece_bytes data:
 * consecutive small chunks share a message, a large chunk is cut into several. Each message
 * is packed by protobuf-c straight from the caller's bytes into gRPC's slice (the one copy).
 * finish() closes the queue, waits for the worker to send the rest, half-close and read the
 * reply. The first error (of the wire, the daemon, memory) stops the worker; later add()
 * calls return it at once, so a producer stops early, and finish() returns it.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "clients/c/e8kv_int.h"

#define KVU_MAX_PIECES 256 /* pieces per message (small chunks batched together) */

typedef struct kvu_item {
  uint32_t *token_ids; /* copied, followed by the alias key's bytes */
  size_t n_tokens;
  size_t alias_len;
  const uint8_t *data; /* the caller's */
  size_t len;
} kvu_item;

struct e8kv_upload {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  pthread_t thread;
  int started;
  e8kv_client *client;
  uint8_t *header;        /* the PutHeader, packed */
  size_t header_len;
  size_t piece_bytes;
  kvu_item *items;        /* queue: [0, n) added, [0, next) sent */
  size_t n, cap, next;
  size_t next_off;        /* bytes of items[next] already sent */
  int closing;            /* finish() called: send what is queued, then end the call */
  int stop;               /* abort() or an error: leave now */
  int done;               /* the worker ended */
  kvc_stream *s;          /* the live call (under mu), for cancellation */
  e8kv_status st;         /* first error */
  e8kv_error err;
  E8kv__V1__PutChunksResponse *reply;
  uint64_t bytes_sent;
  size_t chunks_sent;
};

/* Records the first error (under u->mu) and stops the worker. */
static void kvu_fail_locked(e8kv_upload *u, e8kv_status st, const e8kv_error *e) {
  if (!u->st) {
    u->st = st;
    u->err = *e;
  }
  u->stop = 1;
  pthread_cond_broadcast(&u->cv);
}

/* Where the queue's unsent data begins: item index and byte offset in it. */
typedef struct kvu_pos {
  size_t item, off;
} kvu_pos;

/* Waits for queued data; fills up to max pieces of at most piece_bytes data in all from the
 * queue, *end = the position after them. Returns the number of pieces; 0 when the worker
 * should end (stopped, or finishing with nothing left). */
static size_t kvu_take(e8kv_upload *u, E8kv__V1__ChunkPiece *pc, size_t max, kvu_pos *end) {
  pthread_mutex_lock(&u->mu);
  while (!u->stop && u->next == u->n && !u->closing) pthread_cond_wait(&u->cv, &u->mu);
  size_t k = 0, budget = u->piece_bytes, i = u->next, off = u->next_off;
  while (!u->stop && i < u->n && k < max && budget) {
    kvu_item *it = &u->items[i];
    size_t take = it->len - off < budget ? it->len - off : budget;
    E8kv__V1__ChunkPiece init = E8KV__V1__CHUNK_PIECE__INIT;
    pc[k] = init;
    if (off == 0) {
      pc[k].n_token_ids = it->n_tokens;
      pc[k].token_ids = it->token_ids;
      pc[k].alias_key.len = it->alias_len;
      pc[k].alias_key.data = it->alias_len ? (uint8_t *)(it->token_ids + it->n_tokens) : NULL;
    }
    pc[k].data.data = (uint8_t *)it->data + off;
    pc[k].data.len = take;
    pc[k].more = off + take < it->len;
    k++;
    budget -= take;
    off += take;
    if (off == it->len) {
      i++;
      off = 0;
    }
  }
  end->item = i;
  end->off = off;
  pthread_mutex_unlock(&u->mu);
  return k;
}

/* Marks what kvu_take handed out as sent (the message went). */
static void kvu_advance(e8kv_upload *u, const E8kv__V1__ChunkPiece *pc, size_t k, kvu_pos end) {
  pthread_mutex_lock(&u->mu);
  for (size_t j = 0; j < k; j++) u->bytes_sent += pc[j].data.len;
  u->chunks_sent += end.item - u->next;
  u->next = end.item;
  u->next_off = end.off;
  pthread_mutex_unlock(&u->mu);
}

static e8kv_status kvu_call(e8kv_upload *u, e8kv_error *err) {
  kvc_stream *s;
  e8kv_status st = kvc_stream_open(u->client, "/e8kv.v1.KVStore/PutChunks", KVC_STREAMING, &s,
                                   err);
  if (st) return st;
  pthread_mutex_lock(&u->mu);
  u->s = s;
  if (u->stop) kvc_stream_cancel(s);
  pthread_mutex_unlock(&u->mu);
  E8kv__V1__PutHeader *h = e8kv__v1__put_header__unpack(NULL, u->header_len, u->header);
  if (!h) {
    st = kvc_fail(err, E8KV_E_NOMEM, "PutChunks: out of memory for the header");
  } else {
    E8kv__V1__PutChunksRequest m = E8KV__V1__PUT_CHUNKS_REQUEST__INIT;
    m.header = h;
    st = kvc_stream_send(s, &m.base, err);
    e8kv__v1__put_header__free_unpacked(h, NULL);
  }
  E8kv__V1__ChunkPiece pc[KVU_MAX_PIECES];
  E8kv__V1__ChunkPiece *pp[KVU_MAX_PIECES];
  for (size_t j = 0; j < KVU_MAX_PIECES; j++) pp[j] = &pc[j];
  while (!st) {
    kvu_pos end;
    size_t k = kvu_take(u, pc, KVU_MAX_PIECES, &end);
    if (!k) break;
    E8kv__V1__PutChunksRequest m = E8KV__V1__PUT_CHUNKS_REQUEST__INIT;
    m.n_pieces = k;
    m.pieces = pp;
    if (!(st = kvc_stream_send(s, &m.base, err))) kvu_advance(u, pc, k, end);
  }
  pthread_mutex_lock(&u->mu);
  int aborted = u->stop;
  pthread_mutex_unlock(&u->mu);
  if (!st && aborted)
    st = kvc_fail(err, E8KV_CANCELLED, "PutChunks: the upload was aborted");
  if (!st) st = kvc_stream_close_send(s, err);
  E8kv__V1__PutChunksResponse *r = NULL;
  if (!st) st = kvc_stream_recv(s, &e8kv__v1__put_chunks_response__descriptor,
                                (ProtobufCMessage **)&r, err);
  if (!st && !r)
    st = kvc_fail(err, E8KV_E_PROTOCOL, "PutChunks: the daemon ended the call without a reply");
  if (!st) {
    ProtobufCMessage *extra = NULL;
    st = kvc_stream_recv(s, &e8kv__v1__put_chunks_response__descriptor, &extra, err);
    if (extra) {
      e8kv_msg_free(extra);
      st = kvc_fail(err, E8KV_E_PROTOCOL, "PutChunks: more than one reply");
    }
  }
  pthread_mutex_lock(&u->mu);
  u->s = NULL;
  pthread_mutex_unlock(&u->mu);
  kvc_stream_finish(s, NULL);
  if (st) {
    e8kv_msg_free(r);
    r = NULL;
  }
  u->reply = r;
  return st;
}

static void *kvu_main(void *arg) {
  e8kv_upload *u = arg;
  e8kv_error e = {0};
  e8kv_status st = kvu_call(u, &e);
  pthread_mutex_lock(&u->mu);
  if (st) kvu_fail_locked(u, st, &e);
  u->done = 1;
  pthread_cond_broadcast(&u->cv);
  pthread_mutex_unlock(&u->mu);
  return NULL;
}

static void kvu_free(e8kv_upload *u) {
  for (size_t i = 0; i < u->n; i++) free(u->items[i].token_ids);
  free(u->items);
  free(u->header);
  e8kv_msg_free(u->reply);
  pthread_cond_destroy(&u->cv);
  pthread_mutex_destroy(&u->mu);
  free(u);
}

e8kv_status e8kv_upload_start_packed(e8kv_client *c, const void *header, size_t header_len,
                                     size_t piece_bytes, e8kv_upload **out, e8kv_error *err) {
  if (!out) return kvc_fail(err, E8KV_E_USAGE, "e8kv_upload_start: NULL out");
  *out = NULL;
  if (!c || !header || !header_len)
    return kvc_fail(err, E8KV_E_USAGE, "e8kv_upload_start: needs a client and a header");
  if (piece_bytes && (piece_bytes < 4096 || piece_bytes > (64u << 20)))
    return kvc_fail(err, E8KV_E_USAGE, "e8kv_upload_start: piece_bytes %zu outside 4096..64 MiB",
                    piece_bytes);
  E8kv__V1__PutHeader *h = e8kv__v1__put_header__unpack(NULL, header_len, header);
  if (!h) return kvc_fail(err, E8KV_E_USAGE, "e8kv_upload_start: %zu header bytes are not a "
                          "PutHeader", header_len);
  e8kv__v1__put_header__free_unpacked(h, NULL);
  e8kv_upload *u = calloc(1, sizeof *u);
  if (u) u->header = malloc(header_len);
  if (!u || !u->header) {
    free(u);
    return kvc_fail(err, E8KV_E_NOMEM, "out of memory");
  }
  memcpy(u->header, header, header_len);
  u->header_len = header_len;
  u->client = c;
  u->piece_bytes = piece_bytes ? piece_bytes : E8KV_PUT_PIECE_BYTES_DEFAULT;
  pthread_mutex_init(&u->mu, NULL);
  pthread_cond_init(&u->cv, NULL);
  if (pthread_create(&u->thread, NULL, kvu_main, u) != 0) {
    kvu_free(u);
    return kvc_fail(err, E8KV_E_NOMEM, "e8kv_upload_start: cannot start a thread");
  }
  u->started = 1;
  *out = u;
  return E8KV_OK;
}

e8kv_status e8kv_upload_start(e8kv_client *c, const E8kv__V1__PutHeader *header,
                              size_t piece_bytes, e8kv_upload **out, e8kv_error *err) {
  if (!out) return kvc_fail(err, E8KV_E_USAGE, "e8kv_upload_start: NULL out");
  *out = NULL;
  if (!header) return kvc_fail(err, E8KV_E_USAGE, "e8kv_upload_start: NULL header");
  size_t len = e8kv__v1__put_header__get_packed_size(header);
  uint8_t *b = malloc(len ? len : 1);
  if (!b) return kvc_fail(err, E8KV_E_NOMEM, "out of memory");
  e8kv__v1__put_header__pack(header, b);
  /* (a header packs to 0 bytes only when it has no field set, not even the fingerprint) */
  e8kv_status st = len ? e8kv_upload_start_packed(c, b, len, piece_bytes, out, err)
                       : kvc_fail(err, E8KV_E_USAGE, "e8kv_upload_start: the header has no "
                                  "fingerprint");
  free(b);
  return st;
}

e8kv_status e8kv_upload_add(e8kv_upload *u, const uint32_t *token_ids, size_t n_tokens,
                            const void *data, size_t len, const void *alias_key,
                            size_t alias_len, e8kv_error *err) {
  if (!u || !token_ids || !n_tokens || !data || !len)
    return kvc_fail(err, E8KV_E_USAGE, "e8kv_upload_add: a chunk needs token ids and data");
  if (n_tokens > 65536 || alias_len > 64 || (alias_len && !alias_key))
    return kvc_fail(err, E8KV_E_USAGE, "e8kv_upload_add: %zu token ids, alias of %zu bytes "
                    "(at most 65536 and 64)", n_tokens, alias_len);
  if (!alias_key) alias_len = 0;
  uint32_t *ids = malloc(n_tokens * sizeof *ids + alias_len);
  if (!ids) return kvc_fail(err, E8KV_E_NOMEM, "out of memory");
  memcpy(ids, token_ids, n_tokens * sizeof *ids);
  if (alias_len) memcpy(ids + n_tokens, alias_key, alias_len);
  pthread_mutex_lock(&u->mu);
  e8kv_status st = E8KV_OK;
  if (u->st) {
    st = u->st;
    if (err) *err = u->err;
  } else if (u->closing || u->stop) {
    st = kvc_fail(err, E8KV_E_USAGE, "e8kv_upload_add: the upload is finished or aborted");
  } else if (u->n == u->cap) {
    size_t cap = u->cap ? 2 * u->cap : 64;
    kvu_item *it = realloc(u->items, cap * sizeof *it);
    if (!it) st = kvc_fail(err, E8KV_E_NOMEM, "out of memory");
    else {
      u->items = it;
      u->cap = cap;
    }
  }
  if (!st) {
    u->items[u->n++] = (kvu_item){ids, n_tokens, alias_len, data, len};
    pthread_cond_broadcast(&u->cv);
  } else {
    free(ids);
  }
  pthread_mutex_unlock(&u->mu);
  return st;
}

void e8kv_upload_stats(const e8kv_upload *u, uint64_t *bytes_sent, size_t *chunks_sent,
                       size_t *chunks_queued) {
  if (!u) return;
  pthread_mutex_lock((pthread_mutex_t *)&u->mu);
  if (bytes_sent) *bytes_sent = u->bytes_sent;
  if (chunks_sent) *chunks_sent = u->chunks_sent;
  if (chunks_queued) *chunks_queued = u->n;
  pthread_mutex_unlock((pthread_mutex_t *)&u->mu);
}

e8kv_status e8kv_upload_finish(e8kv_upload *u, E8kv__V1__PutChunksResponse **out,
                               e8kv_error *err) {
  if (out) *out = NULL;
  if (!u) return kvc_fail(err, E8KV_E_USAGE, "e8kv_upload_finish: NULL upload");
  pthread_mutex_lock(&u->mu);
  u->closing = 1;
  pthread_cond_broadcast(&u->cv);
  pthread_mutex_unlock(&u->mu);
  if (u->started) pthread_join(u->thread, NULL);
  e8kv_status st = u->st;
  if (st) {
    if (err) *err = u->err;
  } else if (out) {
    *out = u->reply;
    u->reply = NULL;
  }
  kvu_free(u);
  return st;
}

void e8kv_upload_abort(e8kv_upload *u) {
  if (!u) return;
  pthread_mutex_lock(&u->mu);
  u->stop = 1;
  if (u->s) kvc_stream_cancel(u->s);
  pthread_cond_broadcast(&u->cv);
  pthread_mutex_unlock(&u->mu);
  if (u->started) pthread_join(u->thread, NULL);
  kvu_free(u);
}

size_t e8kv_msg_pack(const void *msg, void *out, size_t cap) {
  if (!msg) return 0;
  size_t n = protobuf_c_message_get_packed_size((const ProtobufCMessage *)msg);
  if (out && cap >= n) protobuf_c_message_pack((const ProtobufCMessage *)msg, out);
  return n;
}
