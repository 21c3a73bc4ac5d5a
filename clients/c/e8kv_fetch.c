/*
 * e8kv_fetch.c: parallel GetChunks into one caller buffer (e8kv_fetch_*, e8kv.h).
 *
 * One thread per client runs one GetChunks call over a contiguous slice of the key list
 * and writes each piece straight to the chunk's place (the message is parsed where gRPC
 * received it, kvc_piece_parse, so the data is copied once, from gRPC's slices): a region
 * of the caller's buffer claimed (bump allocation under the fetch's lock) when the chunk's
 * first piece tells its size, or, once the buffer is full, a malloc'd block the fetch owns.
 * Whole chunks are appended to a ready list that e8kv_fetch_wait hands out in completion
 * order, so the consumer decodes chunk k while later ones are still on the wire. Pieces are
 * checked as e8kv_get_chunks checks them (offsets in order, sizes adding up, the same chunk
 * on every piece), and each chunk's key and index against the request.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <grpc/byte_buffer_reader.h>

#include "clients/c/e8kv_int.h"

#define KVF_KEY 32

typedef struct kvf_overflow {
  struct kvf_overflow *next;
  uint8_t data[];
} kvf_overflow;

struct e8kv_fetch;

typedef struct kvf_worker {
  struct e8kv_fetch *f;
  e8kv_client *client;
  size_t begin, end;      /* slice of the key list */
  pthread_t thread;
  int started;
  kvc_stream *s;          /* the live call (under f->mu), for cancellation */
} kvf_worker;

struct e8kv_fetch {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  uint8_t *keys;          /* n_keys * 32, copied */
  size_t n_keys;
  uint8_t *buf;           /* the caller's */
  size_t cap, used;
  kvf_overflow *overflow; /* chunks that did not fit in buf */
  uint64_t overflow_bytes;
  uint32_t max_piece_bytes;
  uint8_t fpid[KVF_KEY];
  int has_fpid;
  e8kv_fetched *done;     /* n_keys slots, filled in completion order */
  size_t n_done, n_taken;
  uint64_t bytes;
  size_t live;            /* workers still running */
  int stop;               /* close() or an error: workers leave */
  e8kv_status st;         /* first error */
  e8kv_error err;
  kvf_worker *w;
  size_t n_w;
};

/* Records the first error (under f->mu) and stops the others. */
static void kvf_fail_locked(struct e8kv_fetch *f, e8kv_status st, const e8kv_error *e) {
  if (!f->st) {
    f->st = st;
    f->err = *e;
  }
  f->stop = 1;
  for (size_t i = 0; i < f->n_w; i++)
    if (f->w[i].s) kvc_stream_cancel(f->w[i].s);
  pthread_cond_broadcast(&f->cv);
}

/* Where a chunk of `bytes` goes: buf while it has room, else owned memory. */
static uint8_t *kvf_claim(struct e8kv_fetch *f, uint64_t bytes) {
  uint8_t *p = NULL;
  pthread_mutex_lock(&f->mu);
  if (f->buf && bytes <= f->cap - f->used) {
    p = f->buf + f->used;
    f->used += bytes;
  }
  pthread_mutex_unlock(&f->mu);
  if (p) return p;
  kvf_overflow *o = malloc(sizeof *o + (bytes ? bytes : 1));
  if (!o) return NULL;
  pthread_mutex_lock(&f->mu);
  o->next = f->overflow;
  f->overflow = o;
  f->overflow_bytes += bytes;
  pthread_mutex_unlock(&f->mu);
  return o->data;
}

/* The chunk being received by one worker. */
typedef struct kvf_cur {
  int open;
  uint32_t index;
  uint64_t start_token, bytes, have;
  uint32_t n_tokens;
  uint8_t *dst;
} kvf_cur;

/* Takes one piece, parsed in place over segs (m and segs stay the caller's). */
static e8kv_status kvf_piece(kvf_worker *w, kvf_cur *c, const kvc_piece *m, const kvc_seg *segs,
                             size_t n_segs, e8kv_error *err) {
  struct e8kv_fetch *f = w->f;
  if (!c->open) {
    size_t want = w->begin + m->chunk_index;
    if (m->offset != 0 || m->chunk_bytes > E8KV_MAX_CHUNK_BYTES_DEFAULT ||
        m->data_len > m->chunk_bytes || m->chunk_index >= w->end - w->begin)
      return kvc_fail(err, E8KV_E_PROTOCOL,
                      "GetChunks: chunk %u starts at offset %llu with %llu bytes announced",
                      m->chunk_index, (unsigned long long)m->offset,
                      (unsigned long long)m->chunk_bytes);
    if (m->chunk_key_len != KVF_KEY || memcmp(m->chunk_key, f->keys + want * KVF_KEY,
                                              KVF_KEY) != 0)
      return kvc_fail(err, E8KV_E_PROTOCOL,
                      "GetChunks: chunk %u of the answer is not the key asked at that place",
                      m->chunk_index);
    if (m->encoding != E8KV__V1__ENCODING__ENCODING_E8_FRAME)
      return kvc_fail(err, E8KV_E_PROTOCOL, "GetChunks: chunk %u is not an E8 chunk frame",
                      m->chunk_index);
    c->dst = kvf_claim(f, m->chunk_bytes);
    if (!c->dst) return kvc_fail(err, E8KV_E_NOMEM, "out of memory for a %llu-byte chunk",
                                 (unsigned long long)m->chunk_bytes);
    c->open = 1;
    c->index = m->chunk_index;
    c->start_token = m->start_token;
    c->n_tokens = m->n_tokens;
    c->bytes = m->chunk_bytes;
    c->have = 0;
  } else if (m->chunk_index != c->index || m->chunk_bytes != c->bytes || m->offset != c->have ||
             m->data_len > c->bytes - c->have) {
    return kvc_fail(err, E8KV_E_PROTOCOL,
                    "GetChunks: piece at offset %llu does not continue chunk %u (have %llu of "
                    "%llu bytes)", (unsigned long long)m->offset, c->index,
                    (unsigned long long)c->have, (unsigned long long)c->bytes);
  }
  if (m->data_len) kvc_piece_copy_data(segs, n_segs, m, c->dst + c->have); /* the one copy */
  c->have += m->data_len;
  if (!m->last_piece) return E8KV_OK;
  if (c->have != c->bytes)
    return kvc_fail(err, E8KV_E_PROTOCOL, "GetChunks: chunk %u ended after %llu of %llu bytes",
                    c->index, (unsigned long long)c->have, (unsigned long long)c->bytes);
  c->open = 0;
  pthread_mutex_lock(&f->mu);
  e8kv_fetched *d = &f->done[f->n_done];
  d->index = (uint32_t)(w->begin + c->index);
  d->n_tokens = c->n_tokens;
  d->start_token = c->start_token;
  d->data = c->dst;
  d->bytes = c->bytes;
  f->n_done++;
  f->bytes += c->bytes;
  pthread_cond_broadcast(&f->cv);
  pthread_mutex_unlock(&f->mu);
  return E8KV_OK;
}

/* One GetChunks call over keys [begin, end). */
static e8kv_status kvf_call(kvf_worker *w, e8kv_error *err) {
  struct e8kv_fetch *f = w->f;
  size_t n = w->end - w->begin;
  ProtobufCBinaryData *keys = calloc(n, sizeof *keys);
  if (!keys) return kvc_fail(err, E8KV_E_NOMEM, "out of memory");
  for (size_t i = 0; i < n; i++) {
    keys[i].data = f->keys + (w->begin + i) * KVF_KEY;
    keys[i].len = KVF_KEY;
  }
  E8kv__V1__ChunkKeys ck = E8KV__V1__CHUNK_KEYS__INIT;
  ck.n_keys = n;
  ck.keys = keys;
  E8kv__V1__GetChunksRequest req = E8KV__V1__GET_CHUNKS_REQUEST__INIT;
  req.selection_case = E8KV__V1__GET_CHUNKS_REQUEST__SELECTION_KEYS;
  req.keys = &ck;
  req.encoding = E8KV__V1__ENCODING__ENCODING_E8_FRAME;
  req.max_piece_bytes = f->max_piece_bytes;
  if (f->has_fpid) {
    req.expect_fingerprint_id.data = f->fpid;
    req.expect_fingerprint_id.len = KVF_KEY;
  }
  kvc_stream *s;
  e8kv_status st = kvc_stream_open(w->client, "/e8kv.v1.KVStore/GetChunks", KVC_STREAMING, &s,
                                   err);
  if (st) {
    free(keys);
    return st;
  }
  pthread_mutex_lock(&f->mu);
  w->s = s;
  if (f->stop) kvc_stream_cancel(s);
  pthread_mutex_unlock(&f->mu);
  if (!(st = kvc_stream_send(s, &req.base, err))) st = kvc_stream_close_send(s, err);
  free(keys);
  kvf_cur cur = {0};
  size_t got = 0, seg_cap = 0;
  kvc_seg *segs = NULL;
  while (!st) {
    grpc_byte_buffer *bb = NULL;
    st = kvc_stream_recv_bb(s, &bb, err);
    if (st || !bb) break;
    /* the message where gRPC received it: its slices, parsed in place */
    grpc_byte_buffer_reader rd;
    if (!grpc_byte_buffer_reader_init(&rd, bb)) {
      grpc_byte_buffer_destroy(bb);
      st = kvc_fail(err, E8KV_E_PROTOCOL, "GetChunks: unreadable reply");
      break;
    }
    size_t n_segs = 0;
    grpc_slice *sl;
    while (!st && grpc_byte_buffer_reader_peek(&rd, &sl)) {
      if (n_segs == seg_cap) {
        size_t cap = seg_cap ? 2 * seg_cap : 64;
        kvc_seg *g = realloc(segs, cap * sizeof *g);
        if (!g) {
          st = kvc_fail(err, E8KV_E_NOMEM, "out of memory");
          break;
        }
        segs = g;
        seg_cap = cap;
      }
      segs[n_segs].p = GRPC_SLICE_START_PTR(*sl);
      segs[n_segs++].n = GRPC_SLICE_LENGTH(*sl);
    }
    kvc_piece pc;
    if (!st && kvc_piece_parse(segs, n_segs, &pc))
      st = kvc_fail(err, E8KV_E_PROTOCOL, "GetChunks: a reply of %zu bytes is not a valid "
                    "GetChunksResponse", grpc_byte_buffer_length(bb));
    if (!st) st = kvf_piece(w, &cur, &pc, segs, n_segs, err);
    if (!st && pc.last_piece) got++;
    grpc_byte_buffer_reader_destroy(&rd);
    grpc_byte_buffer_destroy(bb);
  }
  free(segs);
  if (!st && (cur.open || got != n))
    st = kvc_fail(err, E8KV_E_PROTOCOL, "GetChunks: the stream ended after %zu of %zu chunks%s",
                  got, n, cur.open ? " inside a chunk" : "");
  pthread_mutex_lock(&f->mu);
  w->s = NULL;
  pthread_mutex_unlock(&f->mu);
  kvc_stream_finish(s, NULL);
  return st;
}

static void *kvf_main(void *arg) {
  kvf_worker *w = arg;
  struct e8kv_fetch *f = w->f;
  e8kv_error e = {0};
  e8kv_status st = kvf_call(w, &e);
  pthread_mutex_lock(&f->mu);
  /* After close() or another stream's error, this one's CANCELLED is not news. */
  if (st && !f->stop) kvf_fail_locked(f, st, &e);
  f->live--;
  pthread_cond_broadcast(&f->cv);
  pthread_mutex_unlock(&f->mu);
  return NULL;
}

e8kv_status e8kv_fetch_start(e8kv_client *const *clients, size_t n_clients, const uint8_t *keys,
                             size_t n_keys, void *buf, size_t cap, uint32_t max_piece_bytes,
                             const uint8_t *expect_fingerprint_id, e8kv_fetch **out,
                             e8kv_error *err) {
  if (!out) return kvc_fail(err, E8KV_E_USAGE, "e8kv_fetch_start: NULL out");
  *out = NULL;
  if (!clients || !n_clients || !keys || !n_keys || (!buf && cap))
    return kvc_fail(err, E8KV_E_USAGE, "e8kv_fetch_start: needs clients, keys and a buffer "
                    "(or none with cap 0)");
  for (size_t i = 0; i < n_clients; i++)
    if (!clients[i]) return kvc_fail(err, E8KV_E_USAGE, "e8kv_fetch_start: client %zu is NULL", i);
  if (max_piece_bytes && max_piece_bytes < 4096)
    return kvc_fail(err, E8KV_E_USAGE, "e8kv_fetch_start: max_piece_bytes %u < 4096",
                    max_piece_bytes);
  struct e8kv_fetch *f = calloc(1, sizeof *f);
  size_t nw = n_clients < n_keys ? n_clients : n_keys;
  if (f) {
    f->keys = malloc(n_keys * KVF_KEY);
    f->done = calloc(n_keys, sizeof *f->done);
    f->w = calloc(nw, sizeof *f->w);
  }
  if (!f || !f->keys || !f->done || !f->w) {
    if (f) { free(f->keys); free(f->done); free(f->w); }
    free(f);
    return kvc_fail(err, E8KV_E_NOMEM, "out of memory");
  }
  memcpy(f->keys, keys, n_keys * KVF_KEY);
  pthread_mutex_init(&f->mu, NULL);
  pthread_cond_init(&f->cv, NULL);
  f->n_keys = n_keys;
  f->buf = buf;
  f->cap = cap;
  f->max_piece_bytes = max_piece_bytes;
  if (expect_fingerprint_id) {
    memcpy(f->fpid, expect_fingerprint_id, KVF_KEY);
    f->has_fpid = 1;
  }
  f->n_w = nw;
  pthread_mutex_lock(&f->mu);
  for (size_t i = 0; i < nw; i++) {
    kvf_worker *w = &f->w[i];
    w->f = f;
    w->client = clients[i];
    w->begin = n_keys * i / nw;
    w->end = n_keys * (i + 1) / nw;
    if (pthread_create(&w->thread, NULL, kvf_main, w) != 0) {
      e8kv_error e;
      kvc_fail(&e, E8KV_E_NOMEM, "e8kv_fetch_start: cannot start thread %zu", i);
      kvf_fail_locked(f, e.code, &e);
      break;
    }
    w->started = 1;
    f->live++;
  }
  pthread_mutex_unlock(&f->mu);
  *out = f;
  return E8KV_OK;
}

e8kv_status e8kv_fetch_wait(e8kv_fetch *f, e8kv_fetched *out, size_t max, int timeout_ms,
                            size_t *n_out, e8kv_error *err) {
  if (!f || !out || !max || !n_out) return kvc_fail(err, E8KV_E_USAGE, "e8kv_fetch_wait: bad argument");
  *n_out = 0;
  struct timespec until;
  clock_gettime(CLOCK_REALTIME, &until);
  if (timeout_ms >= 0) {
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
      until.tv_sec++;
      until.tv_nsec -= 1000000000L;
    }
  }
  pthread_mutex_lock(&f->mu);
  e8kv_status st = E8KV_OK;
  while (!f->st && f->n_taken == f->n_done && f->live) {
    if (timeout_ms < 0) {
      pthread_cond_wait(&f->cv, &f->mu);
    } else if (pthread_cond_timedwait(&f->cv, &f->mu, &until) == ETIMEDOUT) {
      st = kvc_fail(err, E8KV_DEADLINE_EXCEEDED, "e8kv_fetch_wait: no chunk within %d ms",
                    timeout_ms);
      break;
    }
  }
  if (!st && f->st) {
    st = f->st;
    if (err) *err = f->err;
  } else if (!st && f->n_taken == f->n_done && f->n_done != f->n_keys) {
    st = kvc_fail(err, f->stop ? E8KV_CANCELLED : E8KV_E_PROTOCOL,
                  "e8kv_fetch_wait: the fetch ended after %zu of %zu chunks%s", f->n_done,
                  f->n_keys, f->stop ? " (closed)" : "");
  } else if (!st) {
    size_t n = f->n_done - f->n_taken;
    if (n > max) n = max;
    memcpy(out, f->done + f->n_taken, n * sizeof *out);
    f->n_taken += n;
    *n_out = n;
  }
  pthread_mutex_unlock(&f->mu);
  return st;
}

void e8kv_fetch_stats(const e8kv_fetch *f, uint64_t *bytes, uint64_t *overflow_bytes,
                      size_t *chunks_done) {
  if (!f) return;
  pthread_mutex_lock((pthread_mutex_t *)&f->mu);
  if (bytes) *bytes = f->bytes;
  if (overflow_bytes) *overflow_bytes = f->overflow_bytes;
  if (chunks_done) *chunks_done = f->n_done;
  pthread_mutex_unlock((pthread_mutex_t *)&f->mu);
}

void e8kv_fetch_close(e8kv_fetch *f) {
  if (!f) return;
  pthread_mutex_lock(&f->mu);
  f->stop = 1;
  for (size_t i = 0; i < f->n_w; i++)
    if (f->w[i].s) kvc_stream_cancel(f->w[i].s);
  pthread_mutex_unlock(&f->mu);
  for (size_t i = 0; i < f->n_w; i++)
    if (f->w[i].started) pthread_join(f->w[i].thread, NULL);
  while (f->overflow) {
    kvf_overflow *o = f->overflow;
    f->overflow = o->next;
    free(o);
  }
  pthread_cond_destroy(&f->cv);
  pthread_mutex_destroy(&f->mu);
  free(f->keys);
  free(f->done);
  free(f->w);
  free(f);
}
