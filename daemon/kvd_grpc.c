/* kvd_grpc.c: the only file of e8kvd that touches the gRPC C core API (see kvd_grpc.h).
 *
 * Threads: `threads` workers block in grpc_completion_queue_next on the notification queue of
 * the streaming methods, `unary_threads` on the one of every other call (unary methods,
 * Health/Check, unknown methods); one watcher thread serves Health/Watch streams on their own
 * queue; the caller's
 * thread runs kvd_server_shutdown. Each request slot (kvd_slot) owns a completion queue that
 * its call is bound to, so a worker waits on that queue alone while it runs the handler.
 * The mapping kvd_code -> grpc_status_code lives here, in kvd_grpc_status_of(), and nowhere
 * else.
 */
#include "daemon/kvd_grpc.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "daemon/kvd_health.h"
#include "daemon/kvd_listen.h"
#include "daemon/kvd_log.h"

#define HEALTH_CHECK "/grpc.health.v1.Health/Check"
#define HEALTH_WATCH "/grpc.health.v1.Health/Watch"
#define N_WATCH_SLOTS 4

typedef struct kvd_slot {
  kvd_server *srv;
  int method;                  /* index in srv->methods; -1 = unknown-method slot */
  void *rm;                    /* registered method handle (NULL for unknown-method slot) */
  grpc_completion_queue *cq;   /* the call's private queue */
  grpc_call *call;
  gpr_timespec deadline;
  grpc_call_details details;   /* unknown-method slot only */
  grpc_metadata_array md;
  grpc_byte_buffer *payload;   /* first request message of unary/server-streaming calls */
} kvd_slot;

struct kvd_call {
  kvd_slot *slot;
  const kvd_method *m;
  int closed;                  /* RECV_CLOSE_ON_SERVER completed */
  int cancelled;               /* ... and said the call was cancelled */
  int broken;                  /* an op failed */
  int sent_md;                 /* initial metadata sent */
  int got_payload_taken;
  grpc_slice rx;               /* last received message */
  int have_rx;
  uint64_t bytes_in, bytes_out;
  char *peer;
  gpr_timespec hard_limit;     /* start + max_call_ms (monotonic) */
  int limit_hit;
  int stalled;                 /* cancelled because one wait passed stall_ms */
};

typedef struct kvd_watch {     /* one Health/Watch stream (or a pending request for one) */
  kvd_server *srv;
  grpc_call *call;
  gpr_timespec deadline;
  grpc_metadata_array md;
  grpc_byte_buffer *payload;
  char service[256];
  int refs;                    /* ops in flight + 1 while the call is open */
  int send_busy, closed, finished, last_sent;
  grpc_byte_buffer *send_bb;
  int cancelled_out;
  struct kvd_watch *next;
  char tag_new, tag_send, tag_close, tag_finish; /* their addresses are the batch tags */
} kvd_watch;

struct kvd_server {
  kvd_server_opts o;
  grpc_server *server;
  grpc_completion_queue *notify_cq, *unary_cq, *watch_cq, *shutdown_cq;
  kvd_slot *slots;
  size_t n_slots;
  void *rm_check, *rm_watch;
  int check_method;            /* index of the built-in Check handler in all_methods */
  kvd_method *all_methods;     /* user table + Health/Check */
  size_t n_all;
  pthread_t *workers;          /* threads stream workers, then unary_threads unary ones */
  pthread_t watcher;
  pthread_mutex_t post_lock;
  int stopping;                /* under post_lock */
  atomic_int serving;
  atomic_uint in_flight;
  kvd_watch *watches;          /* watcher thread only */
  int ports[16];
};

/* ------------------------------------------------------------------ status mapping */

static grpc_status_code kvd_grpc_status_of(kvd_code c) {
  switch (c) {
    case KVD_OK: return GRPC_STATUS_OK;
    case KVD_INVALID: return GRPC_STATUS_INVALID_ARGUMENT;
    case KVD_NOT_FOUND: return GRPC_STATUS_NOT_FOUND;
    case KVD_PRECONDITION: return GRPC_STATUS_FAILED_PRECONDITION;
    case KVD_EXISTS: return GRPC_STATUS_ALREADY_EXISTS;
    case KVD_ABORTED: return GRPC_STATUS_ABORTED;
    case KVD_RESOURCE: return GRPC_STATUS_RESOURCE_EXHAUSTED;
    case KVD_UNAUTHENTICATED: return GRPC_STATUS_UNAUTHENTICATED;
    case KVD_PERMISSION: return GRPC_STATUS_PERMISSION_DENIED;
    case KVD_CANCELLED: return GRPC_STATUS_CANCELLED;
    case KVD_DEADLINE: return GRPC_STATUS_DEADLINE_EXCEEDED;
    case KVD_UNAVAILABLE: return GRPC_STATUS_UNAVAILABLE;
    case KVD_DATA_LOSS: return GRPC_STATUS_DATA_LOSS;
    case KVD_UNIMPLEMENTED: return GRPC_STATUS_UNIMPLEMENTED;
    case KVD_INTERNAL: return GRPC_STATUS_INTERNAL;
  }
  return GRPC_STATUS_UNKNOWN;
}

/* ------------------------------------------------------------------ small helpers */

static gpr_timespec after_ms(long ms) {
  return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(ms, GPR_TIMESPAN));
}

static void drain_and_destroy(grpc_completion_queue *cq) {
  if (!cq) return;
  grpc_completion_queue_shutdown(cq);
  while (grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL).type !=
         GRPC_QUEUE_SHUTDOWN) {
  }
  grpc_completion_queue_destroy(cq);
}

static grpc_byte_buffer *pack_message(const ProtobufCMessage *msg, size_t *len) {
  size_t n = protobuf_c_message_get_packed_size(msg);
  grpc_slice s = grpc_slice_malloc(n);
  protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(s));
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
  grpc_slice_unref(s);
  *len = n;
  return bb;
}

static grpc_slice read_all(grpc_byte_buffer *bb) {
  grpc_byte_buffer_reader r;
  if (!grpc_byte_buffer_reader_init(&r, bb)) return grpc_empty_slice();
  grpc_slice s = grpc_byte_buffer_reader_readall(&r);
  grpc_byte_buffer_reader_destroy(&r);
  return s;
}

/* ------------------------------------------------------------------ request slots */

/* 1 if calls of slot s go to the stream workers (PutChunks, GetChunks), 0 for the unary ones. */
static int slot_streams(const kvd_slot *s) {
  return s->method >= 0 && s->srv->all_methods[s->method].kind != KVD_RPC_UNARY;
}

static int slot_post(kvd_slot *s) {
  kvd_server *srv = s->srv;
  grpc_completion_queue *ncq = slot_streams(s) ? srv->notify_cq : srv->unary_cq;
  grpc_call_error e = GRPC_CALL_OK;
  pthread_mutex_lock(&srv->post_lock);
  if (srv->stopping) {
    pthread_mutex_unlock(&srv->post_lock);
    return -1;
  }
  s->call = NULL;
  s->payload = NULL;
  grpc_metadata_array_init(&s->md);
  if (s->rm) {
    e = grpc_server_request_registered_call(srv->server, s->rm, &s->call, &s->deadline, &s->md,
                                            s->method >= 0 && srv->all_methods[s->method].kind !=
                                                KVD_RPC_CLIENT_STREAM ? &s->payload : NULL,
                                            s->cq, ncq, s);
  } else {
    grpc_call_details_init(&s->details);
    e = grpc_server_request_call(srv->server, &s->call, &s->details, &s->md, s->cq, ncq, s);
  }
  pthread_mutex_unlock(&srv->post_lock);
  if (e != GRPC_CALL_OK) KVD_ERROR("grpc_request", "call_error=%d", (int)e);
  return e == GRPC_CALL_OK ? 0 : -1;
}

static void slot_release(kvd_slot *s) {
  if (s->call) grpc_call_unref(s->call);
  s->call = NULL;
  if (s->payload) grpc_byte_buffer_destroy(s->payload);
  s->payload = NULL;
  grpc_metadata_array_destroy(&s->md);
  if (!s->rm) grpc_call_details_destroy(&s->details);
}

/* Waits on the call's private queue for `tag`; absorbs the close notification on the way.
 * A call still running at its hard limit (--max-call-ms from its start), or whose peer made
 * this one wait (the next request message, a response message written) last longer than
 * --stall-ms, is cancelled with DEADLINE_EXCEEDED: a client that stops sending or reading
 * holds a worker for stall_ms, not for the whole --max-call-ms. */
static int call_wait(kvd_call *c, void *tag) {
  for (;;) {
    gpr_timespec until = gpr_inf_future(GPR_CLOCK_MONOTONIC);
    if (!c->limit_hit) {
      until = after_ms((long)c->slot->srv->o.stall_ms);
      if (gpr_time_cmp(c->hard_limit, until) < 0) until = c->hard_limit;
    }
    grpc_event ev = grpc_completion_queue_next(c->slot->cq, until, NULL);
    if (ev.type == GRPC_QUEUE_TIMEOUT) {
      c->limit_hit = 1;
      c->stalled = gpr_time_cmp(gpr_now(GPR_CLOCK_MONOTONIC), c->hard_limit) < 0;
      grpc_call_cancel_with_status(c->slot->call, kvd_grpc_status_of(KVD_DEADLINE),
                                   c->stalled ? "the peer sent or read nothing for the "
                                                "server's --stall-ms"
                                              : "call ran longer than the server's "
                                                "--max-call-ms", NULL);
      continue;
    }
    if (ev.type != GRPC_OP_COMPLETE) return -1;
    if (ev.tag == (void *)&c->closed) {
      c->closed = 1;
      if (tag == (void *)&c->closed) return 0;
      continue;
    }
    if (ev.tag == tag) return ev.success ? 0 : -1;
  }
}

static int call_batch(kvd_call *c, const grpc_op *ops, size_t n) {
  if (c->broken) return -1;
  grpc_call_error e = grpc_call_start_batch(c->slot->call, ops, n, (void *)c, NULL);
  if (e != GRPC_CALL_OK || call_wait(c, (void *)c) != 0) {
    c->broken = 1;
    return -1;
  }
  return 0;
}

/* No more request messages: a half-close, or a client that went away (gRPC reports both the
 * same way). A cancelled call fails the next batch, so send the initial metadata now (a
 * reply needs it anyway) and see. 0 = clean end, -1 = broken. */
static int recv_end(kvd_call *c) {
  if (!c->sent_md) {
    grpc_op op = {.op = GRPC_OP_SEND_INITIAL_METADATA};
    if (call_batch(c, &op, 1) != 0) return -1;
    c->sent_md = 1;
  }
  kvd_status st;
  return kvd_call_check(c, &st) == 0 ? 0 : (c->broken = 1, -1);
}

int kvd_call_recv(kvd_call *c, const uint8_t **data, size_t *len) {
  if (c->have_rx) grpc_slice_unref(c->rx);
  c->have_rx = 0;
  grpc_byte_buffer *bb = NULL;
  if (c->m->kind != KVD_RPC_CLIENT_STREAM) {
    if (c->got_payload_taken) return 0;
    c->got_payload_taken = 1;
    bb = c->slot->payload;
    c->slot->payload = NULL;
    if (!bb) { c->broken = 1; return -1; }
  } else {
    grpc_op op = {.op = GRPC_OP_RECV_MESSAGE};
    op.data.recv_message.recv_message = &bb;
    if (call_batch(c, &op, 1) != 0) return -1;
    if (!bb) return recv_end(c);
  }
  c->rx = read_all(bb);
  grpc_byte_buffer_destroy(bb);
  c->have_rx = 1;
  *data = GRPC_SLICE_START_PTR(c->rx);
  *len = GRPC_SLICE_LENGTH(c->rx);
  c->bytes_in += *len;
  return 1;
}

void kvd_call_recv_release(kvd_call *c) {
  if (c->have_rx) grpc_slice_unref(c->rx);
  c->have_rx = 0;
}

/* Sends bb (len bytes; the initial metadata first if not sent yet) and destroys it. */
static int call_send_bb(kvd_call *c, grpc_byte_buffer *bb, size_t len) {
  grpc_op ops[2];
  size_t n = 0;
  memset(ops, 0, sizeof ops);
  if (!c->sent_md) ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[n].op = GRPC_OP_SEND_MESSAGE;
  ops[n++].data.send_message.send_message = bb;
  int rc = call_batch(c, ops, n);
  grpc_byte_buffer_destroy(bb);
  if (rc == 0) { c->sent_md = 1; c->bytes_out += len; }
  return rc;
}

int kvd_call_send(kvd_call *c, const ProtobufCMessage *msg) {
  size_t len;
  grpc_byte_buffer *bb = pack_message(msg, &len);
  return call_send_bb(c, bb, len);
}

/* ------------------------------------------------------------------ zero-copy bytes */

struct kvd_buf {
  atomic_int refs;
  size_t cap;
  uint8_t *data;
};

kvd_buf *kvd_buf_new(size_t cap) {
  kvd_buf *b = malloc(sizeof *b);
  if (!b) return NULL;
  b->data = malloc(cap ? cap : 1);
  if (!b->data) { free(b); return NULL; }
  atomic_init(&b->refs, 1);
  b->cap = cap;
  return b;
}

uint8_t *kvd_buf_data(kvd_buf *b) { return b->data; }
size_t kvd_buf_cap(const kvd_buf *b) { return b->cap; }
int kvd_buf_writable(const kvd_buf *b) { return atomic_load(&((kvd_buf *)b)->refs) == 1; }

void kvd_buf_unref(kvd_buf *b) {
  if (b && atomic_fetch_sub(&b->refs, 1) == 1) {
    free(b->data);
    free(b);
  }
}

static void buf_slice_done(void *b) { kvd_buf_unref(b); }

/* Protobuf varint of v into p; returns its length. */
static size_t put_varint(uint8_t *p, uint64_t v) {
  size_t n = 0;
  do {
    p[n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
    v >>= 7;
  } while (v);
  return n;
}

int kvd_call_send_bytes(kvd_call *c, const ProtobufCMessage *msg, uint32_t field,
                        kvd_buf *buf, size_t off, size_t len) {
  size_t n = protobuf_c_message_get_packed_size(msg);
  grpc_slice parts[2];
  parts[0] = grpc_slice_malloc(n + 20);
  uint8_t *p = GRPC_SLICE_START_PTR(parts[0]);
  protobuf_c_message_pack(msg, p);
  size_t h = n + put_varint(p + n, (uint64_t)field << 3 | 2); /* wire type 2: bytes */
  h += put_varint(p + h, len);
  parts[0] = grpc_slice_sub_no_ref(parts[0], 0, h);
  if (len) { /* the slice's reference on buf, dropped by gRPC once the bytes are written */
    atomic_fetch_add(&buf->refs, 1);
    parts[1] = grpc_slice_new_with_user_data(buf->data + off, len, buf_slice_done, buf);
  }
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(parts, len ? 2 : 1);
  grpc_slice_unref(parts[0]);
  if (len) grpc_slice_unref(parts[1]);
  return call_send_bb(c, bb, h + len);
}

const char *kvd_call_metadata(kvd_call *c, const char *key, size_t *len) {
  const grpc_metadata_array *md = &c->slot->md;
  size_t kl = strlen(key);
  for (size_t i = 0; i < md->count; i++) {
    grpc_slice k = md->metadata[i].key;
    if (GRPC_SLICE_LENGTH(k) == kl && memcmp(GRPC_SLICE_START_PTR(k), key, kl) == 0) {
      *len = GRPC_SLICE_LENGTH(md->metadata[i].value);
      return (const char *)GRPC_SLICE_START_PTR(md->metadata[i].value);
    }
  }
  return NULL;
}

int kvd_call_check(kvd_call *c, kvd_status *st) {
  if (!c->closed && !c->broken) { /* absorb a pending close without blocking */
    grpc_event ev = grpc_completion_queue_next(c->slot->cq, gpr_inf_past(GPR_CLOCK_REALTIME),
                                               NULL);
    if (ev.type == GRPC_OP_COMPLETE && ev.tag == (void *)&c->closed) c->closed = 1;
  }
  int late = gpr_time_cmp(gpr_now(GPR_CLOCK_MONOTONIC),
                          gpr_convert_clock_type(c->slot->deadline, GPR_CLOCK_MONOTONIC)) >= 0;
  if (late) {
    kvd_fail(st, KVD_DEADLINE, "deadline exceeded");
    return -1;
  }
  if (c->stalled) {
    kvd_fail(st, KVD_DEADLINE, "the peer sent or read nothing for the server's --stall-ms");
    return -1;
  }
  if (c->limit_hit || gpr_time_cmp(gpr_now(GPR_CLOCK_MONOTONIC), c->hard_limit) >= 0) {
    kvd_fail(st, KVD_DEADLINE, "call ran longer than the server's --max-call-ms");
    return -1;
  }
  if (c->closed || c->broken) {
    kvd_fail(st, KVD_CANCELLED, "call cancelled or broken (client gone, message over the "
                                "size limit, or daemon shutting down)");
    return -1;
  }
  return 0;
}

int kvd_call_method(const kvd_call *c) { return c->slot->method; }

const char *kvd_call_peer(kvd_call *c) {
  if (!c->peer) c->peer = grpc_call_get_peer(c->slot->call);
  return c->peer ? c->peer : "";
}

/* Sends the status (with initial metadata if none went yet) and waits for the call to end. */
static void call_finish(kvd_call *c, const kvd_status *st) {
  grpc_slice details = grpc_slice_from_copied_string(st->msg);
  grpc_op ops[2];
  size_t n = 0;
  memset(ops, 0, sizeof ops);
  if (!c->sent_md) ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
  ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
  ops[n].data.send_status_from_server.status = kvd_grpc_status_of(st->code);
  ops[n++].data.send_status_from_server.status_details = st->code ? &details : NULL;
  c->broken = 0; /* a broken call still gets its status batch (it fails quietly) */
  int rc = call_batch(c, ops, n);
  grpc_slice_unref(details);
  KVD_DEBUG("call_finish", "status_sent=%d closed=%d cancelled=%d", rc == 0, c->closed,
            c->cancelled);
  if (!c->closed) call_wait(c, (void *)&c->closed);
  KVD_DEBUG("call_closed", "cancelled=%d", c->cancelled);
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void serve_call(kvd_slot *s) {
  kvd_server *srv = s->srv;
  static const kvd_method unknown = {"", KVD_RPC_UNARY, NULL};
  kvd_call c = {.slot = s, .m = s->method >= 0 ? &srv->all_methods[s->method] : &unknown};
  c.hard_limit = after_ms((long)srv->o.max_call_ms);
  kvd_status st;
  double t0 = now_s();
  atomic_fetch_add(&srv->in_flight, 1);
  grpc_op close_op = {.op = GRPC_OP_RECV_CLOSE_ON_SERVER};
  close_op.data.recv_close_on_server.cancelled = &c.cancelled;
  if (grpc_call_start_batch(s->call, &close_op, 1, (void *)&c.closed, NULL) != GRPC_CALL_OK)
    c.broken = c.closed = 1;
  char path[256];
  if (s->method < 0) {
    snprintf(path, sizeof path, "%.*s", (int)GRPC_SLICE_LENGTH(s->details.method),
             (const char *)GRPC_SLICE_START_PTR(s->details.method));
    kvd_fail(&st, KVD_UNIMPLEMENTED, "unknown method %s (this server implements "
                                     "e8kv.v1.KVStore and grpc.health.v1.Health)", path);
  } else {
    snprintf(path, sizeof path, "%s", c.m->path);
    kvd_status_ok(&st);
    c.m->fn(srv->o.app, &c, &st);
  }
  call_finish(&c, &st);
  if (c.have_rx) grpc_slice_unref(c.rx);
  atomic_fetch_sub(&srv->in_flight, 1);
  if (srv->o.on_done)
    srv->o.on_done(srv->o.app, s->method < (int)srv->o.n_methods ? s->method : -2, path, &st,
                   now_s() - t0, c.bytes_in, c.bytes_out);
  if (c.peer) gpr_free(c.peer);
}

/* arg: the notification queue this worker serves. */
static void *worker_main(void *arg) {
  grpc_completion_queue *cq = arg;
  for (;;) {
    grpc_event ev = grpc_completion_queue_next(cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
    if (ev.type != GRPC_OP_COMPLETE) continue;
    kvd_slot *s = ev.tag;
    if (ev.success) serve_call(s);
    slot_release(s);
    if (ev.success) slot_post(s);
  }
  return NULL;
}

/* ------------------------------------------------------------------ Health/Check (a handler) */

static void health_check(void *app, kvd_call *c, kvd_status *st) {
  (void)app;
  kvd_server *srv = c->slot->srv;
  const uint8_t *d;
  size_t n;
  if (kvd_call_recv(c, &d, &n) != 1) { kvd_call_check(c, st); return; }
  char service[256];
  if (kvd_health_parse(d, n, service, sizeof service, st) != 0) return;
  int known = kvd_health_known(service, srv->o.methods, srv->o.n_methods);
  if (!known) {
    kvd_fail(st, KVD_NOT_FOUND, "unknown service '%s'", service);
    return;
  }
  ProtobufCMessage *resp = kvd_health_response(atomic_load(&srv->serving) ? 1 : 2);
  if (kvd_call_send(c, resp) != 0) kvd_call_check(c, st);
  kvd_health_response_free(resp);
}

/* ------------------------------------------------------------------ Health/Watch (async) */

static void watch_unref(kvd_watch *w) {
  if (--w->refs > 0) return;
  kvd_watch **pp = &w->srv->watches;
  while (*pp && *pp != w) pp = &(*pp)->next;
  if (*pp) *pp = w->next;
  if (w->call) grpc_call_unref(w->call);
  if (w->payload) grpc_byte_buffer_destroy(w->payload);
  if (w->send_bb) grpc_byte_buffer_destroy(w->send_bb);
  grpc_metadata_array_destroy(&w->md);
  free(w);
}

static void watch_post(kvd_server *srv) {
  kvd_watch *w = calloc(1, sizeof *w);
  if (!w) return;
  w->srv = srv;
  w->refs = 1;
  grpc_metadata_array_init(&w->md);
  pthread_mutex_lock(&srv->post_lock);
  grpc_call_error e = srv->stopping ? GRPC_CALL_ERROR
                                    : grpc_server_request_registered_call(
                                          srv->server, srv->rm_watch, &w->call, &w->deadline,
                                          &w->md, &w->payload, srv->watch_cq, srv->watch_cq,
                                          &w->tag_new);
  pthread_mutex_unlock(&srv->post_lock);
  if (e != GRPC_CALL_OK) { watch_unref(w); return; }
  w->next = srv->watches;
  srv->watches = w;
}

/* Status a watcher should report now: SERVING 1, NOT_SERVING 2, SERVICE_UNKNOWN 3. */
static int watch_status(kvd_watch *w) {
  if (!kvd_health_known(w->service, w->srv->o.methods, w->srv->o.n_methods)) return 3;
  return atomic_load(&w->srv->serving) ? 1 : 2;
}

static void watch_send(kvd_watch *w) {
  int want = watch_status(w);
  int stop = !atomic_load(&w->srv->serving);
  if (w->send_busy || w->closed || w->finished || (want == w->last_sent && !stop)) return;
  grpc_op ops[3];
  size_t n = 0, len;
  memset(ops, 0, sizeof ops);
  if (!w->last_sent) ops[n++].op = GRPC_OP_SEND_INITIAL_METADATA;
  if (want != w->last_sent) {
    ProtobufCMessage *m = kvd_health_response(want);
    w->send_bb = pack_message(m, &len);
    kvd_health_response_free(m);
    ops[n].op = GRPC_OP_SEND_MESSAGE;
    ops[n++].data.send_message.send_message = w->send_bb;
  }
  void *tag = &w->tag_send;
  if (stop) { /* shutting down: the last status, then end the stream */
    ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
    ops[n++].data.send_status_from_server.status = GRPC_STATUS_OK;
    w->finished = 1;
    tag = &w->tag_finish;
  }
  if (grpc_call_start_batch(w->call, ops, n, tag, NULL) == GRPC_CALL_OK) {
    w->refs++;
    w->send_busy = 1;
    w->last_sent = want;
  }
}

static void watch_event(kvd_server *srv, grpc_event ev) {
  char *tag = ev.tag;
  kvd_watch *w = NULL;
  for (kvd_watch *x = srv->watches; x; x = x->next)
    if (tag == &x->tag_new || tag == &x->tag_send || tag == &x->tag_close ||
        tag == &x->tag_finish) { w = x; break; }
  if (!w) return;
  if (tag == &w->tag_new) {
    if (!ev.success) { watch_unref(w); return; }
    watch_post(srv);
    grpc_slice s = w->payload ? read_all(w->payload) : grpc_empty_slice();
    kvd_status st;
    if (kvd_health_parse(GRPC_SLICE_START_PTR(s), GRPC_SLICE_LENGTH(s), w->service,
                         sizeof w->service, &st) != 0)
      snprintf(w->service, sizeof w->service, "?");
    grpc_slice_unref(s);
    grpc_op op = {.op = GRPC_OP_RECV_CLOSE_ON_SERVER};
    op.data.recv_close_on_server.cancelled = &w->cancelled_out;
    if (grpc_call_start_batch(w->call, &op, 1, &w->tag_close, NULL) == GRPC_CALL_OK) w->refs++;
    watch_send(w);
    return;
  }
  if (tag == &w->tag_close) { w->closed = 1; watch_unref(w); watch_unref(w); return; }
  /* tag_send / tag_finish */
  w->send_busy = 0;
  if (w->send_bb) grpc_byte_buffer_destroy(w->send_bb);
  w->send_bb = NULL;
  if (!ev.success) w->closed = 1;
  watch_unref(w);
}

static void *watcher_main(void *arg) {
  kvd_server *srv = arg;
  for (int i = 0; i < N_WATCH_SLOTS; i++) watch_post(srv);
  for (;;) {
    grpc_event ev = grpc_completion_queue_next(srv->watch_cq, after_ms(100), NULL);
    if (ev.type == GRPC_QUEUE_SHUTDOWN) break;
    if (ev.type == GRPC_OP_COMPLETE) watch_event(srv, ev);
    for (kvd_watch *w = srv->watches; w; w = w->next)
      if (w->last_sent) watch_send(w);
  }
  return NULL;
}

/* ------------------------------------------------------------------ start / shutdown */

/* 1 when a process accepts connections on the unix socket at path (another e8kvd, most
 * likely), 0 when nothing does (no file, or a stale socket file left by a killed daemon, which
 * gRPC replaces). gRPC unlinks the path before it binds, so without this check a second daemon
 * silently takes the address of a running one, and unlinks it again when it exits. */
static int unix_socket_live(const char *path) {
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof sa.sun_path) return 0;      /* gRPC refuses it with its own error */
  memcpy(sa.sun_path, path, strlen(path) + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  int live = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0 || errno == EAGAIN;
  close(fd);
  return live;
}

static int add_ports(kvd_server *srv, char *err, size_t cap) {
  for (int i = 0; i < srv->o.n_addrs; i++) {
    const char *a = srv->o.addrs[i];
    int is_unix = strncmp(a, "unix:", 5) == 0;
    const char *path = a + 5 + (strncmp(a, "unix://", 7) == 0 ? 2 : 0);
    if (is_unix && unix_socket_live(path)) {
      snprintf(err, cap, "cannot listen on '%s': another process (another e8kvd?) is serving "
                         "it; stop it or choose another path", a);
      return -1;
    }
    char why[512];
    if (is_unix && kvd_listen_unix_check(path, why, sizeof why) != 0) {
      snprintf(err, cap, "cannot listen on '%s': %s", a, why);
      return -1;
    }
    grpc_server_credentials *cr;
    if (srv->o.tls_cert_pem && !is_unix) {
      grpc_ssl_pem_key_cert_pair kp = {srv->o.tls_key_pem, srv->o.tls_cert_pem};
      cr = grpc_ssl_server_credentials_create(NULL, &kp, 1, 0, NULL);
    } else {
      cr = grpc_insecure_server_credentials_create();
    }
    kvd_listen_grpc_capture_begin();
    int port = grpc_server_add_http2_port(srv->server, a, cr);
    grpc_server_credentials_release(cr);
    if (kvd_listen_grpc_capture_end(why, sizeof why) != 0)
      snprintf(why, sizeof why, "address in use, bad address, or no permission");
    if (port == 0) {
      snprintf(err, cap, "cannot listen on '%s': %s", a, why);
      return -1;
    }
    srv->ports[i] = is_unix ? 0 : port;
    KVD_INFO("listen", "addr=%s port=%d tls=%d", a, srv->ports[i],
             srv->o.tls_cert_pem && !is_unix ? 1 : 0);
  }
  return 0;
}

/* Pending request slots: per method as many as workers serve its kind (more would only wait
 * in the notification queue). */
static int make_slots(kvd_server *srv) {
  size_t ns = srv->o.threads, nu = srv->o.unary_threads;
  srv->n_slots = 0;
  for (size_t m = 0; m <= srv->n_all; m++)
    srv->n_slots += m < srv->n_all && srv->all_methods[m].kind != KVD_RPC_UNARY ? ns : nu;
  srv->slots = calloc(srv->n_slots, sizeof *srv->slots);
  if (!srv->slots) return -1;
  size_t k = 0;
  for (size_t m = 0; m <= srv->n_all; m++) {
    void *rm = NULL;
    size_t per = nu;
    if (m < srv->n_all) {
      const kvd_method *me = &srv->all_methods[m];
      if (me->kind != KVD_RPC_UNARY) per = ns;
      rm = grpc_server_register_method(srv->server, me->path, NULL,
                                       me->kind == KVD_RPC_CLIENT_STREAM
                                           ? GRPC_SRM_PAYLOAD_NONE
                                           : GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
      if (!rm) return -1;
    }
    for (size_t i = 0; i < per; i++, k++) {
      kvd_slot *s = &srv->slots[k];
      s->srv = srv;
      s->method = m < srv->n_all ? (int)m : -1;
      s->rm = rm;
      s->cq = grpc_completion_queue_create_for_next(NULL);
    }
  }
  srv->rm_watch = grpc_server_register_method(srv->server, HEALTH_WATCH, NULL,
                                              GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER, 0);
  return srv->rm_watch ? 0 : -1;
}

int kvd_server_start(const kvd_server_opts *o, kvd_server **out, char *err, size_t cap) {
  if (o->n_addrs < 1 || o->n_addrs > 16 || o->threads < 1 || o->unary_threads < 1) {
    snprintf(err, cap, "need 1..16 addresses and >= 1 thread of each kind");
    return -1;
  }
  kvd_listen_grpc_log_init();
  grpc_init();
  kvd_server *srv = calloc(1, sizeof *srv);
  srv->o = *o;
  srv->n_all = o->n_methods + 1;
  srv->all_methods = calloc(srv->n_all, sizeof *srv->all_methods);
  memcpy(srv->all_methods, o->methods, o->n_methods * sizeof *o->methods);
  srv->all_methods[o->n_methods] = (kvd_method){HEALTH_CHECK, KVD_RPC_UNARY, health_check};
  pthread_mutex_init(&srv->post_lock, NULL);
  atomic_store(&srv->serving, 1);
  int lim = o->max_message_bytes > 0x7fffffff ? 0x7fffffff : (int)o->max_message_bytes;
  /* SO_REUSEPORT off: gRPC sets it by default, which lets a second daemon bind the same TCP
   * port and the kernel share connections between two stores. */
  grpc_arg args[3] = {
      {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH, .value.integer = lim},
      {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH, .value.integer = lim},
      {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_ALLOW_REUSEPORT, .value.integer = 0}};
  grpc_channel_args ca = {3, args};
  srv->server = grpc_server_create(&ca, NULL);
  srv->notify_cq = grpc_completion_queue_create_for_next(NULL);
  srv->unary_cq = grpc_completion_queue_create_for_next(NULL);
  srv->watch_cq = grpc_completion_queue_create_for_next(NULL);
  srv->shutdown_cq = grpc_completion_queue_create_for_next(NULL);
  grpc_server_register_completion_queue(srv->server, srv->notify_cq, NULL);
  grpc_server_register_completion_queue(srv->server, srv->unary_cq, NULL);
  grpc_server_register_completion_queue(srv->server, srv->watch_cq, NULL);
  if (make_slots(srv) != 0) {
    snprintf(err, cap, "cannot register methods");
    goto fail;
  }
  if (add_ports(srv, err, cap) != 0) goto fail;
  grpc_server_start(srv->server);
  for (size_t i = 0; i < srv->n_slots; i++) slot_post(&srv->slots[i]);
  unsigned nw = o->threads + o->unary_threads;
  srv->workers = calloc(nw, sizeof *srv->workers);
  for (unsigned i = 0; i < nw; i++)
    pthread_create(&srv->workers[i], NULL, worker_main,
                   i < o->threads ? srv->notify_cq : srv->unary_cq);
  pthread_create(&srv->watcher, NULL, watcher_main, srv);
  *out = srv;
  return 0;
fail:
  grpc_server_shutdown_and_notify(srv->server, srv->shutdown_cq, NULL);
  grpc_completion_queue_next(srv->shutdown_cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
  srv->workers = NULL;
  kvd_server_destroy(srv);
  return -1;
}

int kvd_server_port(const kvd_server *srv, int i) {
  return i >= 0 && i < srv->o.n_addrs ? srv->ports[i] : 0;
}

unsigned kvd_server_in_flight(const kvd_server *srv) { return atomic_load(&srv->in_flight); }

void kvd_server_shutdown(kvd_server *srv, unsigned grace_ms) {
  atomic_store(&srv->serving, 0);
  usleep(200 * 1000); /* let Watch streams send NOT_SERVING before the listeners go */
  pthread_mutex_lock(&srv->post_lock);
  srv->stopping = 1;
  pthread_mutex_unlock(&srv->post_lock);
  grpc_server_shutdown_and_notify(srv->server, srv->shutdown_cq, NULL);
  grpc_event ev = grpc_completion_queue_next(srv->shutdown_cq, after_ms(grace_ms), NULL);
  if (ev.type == GRPC_QUEUE_TIMEOUT) {
    KVD_WARN("shutdown_cancel", "in_flight=%u grace_ms=%u", kvd_server_in_flight(srv),
             grace_ms);
    grpc_server_cancel_all_calls(srv->server);
    grpc_completion_queue_next(srv->shutdown_cq, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
  }
  grpc_completion_queue_shutdown(srv->notify_cq);
  grpc_completion_queue_shutdown(srv->unary_cq);
  grpc_completion_queue_shutdown(srv->watch_cq);
  for (unsigned i = 0; i < srv->o.threads + srv->o.unary_threads; i++)
    pthread_join(srv->workers[i], NULL);
  pthread_join(srv->watcher, NULL);
  while (srv->watches) { /* requests failed at shutdown never came back as events */
    kvd_watch *w = srv->watches;
    w->refs = 1;
    watch_unref(w);
  }
}

void kvd_server_destroy(kvd_server *srv) {
  if (!srv) return;
  if (srv->server) grpc_server_destroy(srv->server);
  for (size_t i = 0; i < srv->n_slots; i++) drain_and_destroy(srv->slots[i].cq);
  if (srv->workers) { /* started: notify/watch queues were shut down by kvd_server_shutdown */
    grpc_completion_queue_destroy(srv->notify_cq);
    grpc_completion_queue_destroy(srv->unary_cq);
    grpc_completion_queue_destroy(srv->watch_cq);
  } else {
    drain_and_destroy(srv->notify_cq);
    drain_and_destroy(srv->unary_cq);
    drain_and_destroy(srv->watch_cq);
  }
  drain_and_destroy(srv->shutdown_cq);
  pthread_mutex_destroy(&srv->post_lock);
  free(srv->slots);
  free(srv->workers);
  free(srv->all_methods);
  free(srv);
  /* No grpc_shutdown(): it joins gRPC's executor threads, and after large messages one of
   * them can sit in a poll for ~10 s (SIGTERM to exit took 10 s in 2 of 3 runs after a 3 MB
   * ListSessions reply, past any --shutdown-grace-ms). Every call is finished here and the
   * process exits next; gRPC's own state goes with it. */
}
