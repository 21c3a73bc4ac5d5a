/* kvd_grpc.h: e8kvd's one door to gRPC C core.
 *
 * Every use of the raw gRPC core API (grpc_server, completion queues, batches, byte buffers,
 * metadata, status codes) is inside kvd_grpc.c; the rest of the daemon sees only this header:
 * a server that runs a table of methods, and a kvd_call to read request messages from, write
 * response messages to, and finish with a kvd_status.
 *
 * How it works. Each registered method has pending request slots; unknown methods have their
 * own slots and are answered UNIMPLEMENTED at once. Every slot owns a private completion queue
 * its call is bound to. Slots of streaming methods notify one queue served by `threads` worker
 * threads, slots of every other call (unary methods, Health/Check, unknown methods) another
 * one served by `unary_threads` workers. A worker takes a new call, runs its handler to the
 * end with blocking reads and writes on the slot's private queue, sends the status, and posts
 * the slot again. So at most `threads` streaming and `unary_threads` other calls run at once,
 * each on one thread; waiting calls stay queued in gRPC. The two pools keep short calls
 * (Lookup, sessions, stats, health) served while every stream worker is held by streams that
 * wait on their peer (an uploader between chunks, a reader that reads slowly): with one pool,
 * `threads` idle streams stopped every other call until --max-call-ms.
 * grpc.health.v1.Health/Watch streams live on one extra thread (they last long and do
 * nothing), so they never hold a worker.
 *
 * Limits. Messages larger than max_message_bytes are refused by gRPC itself with
 * RESOURCE_EXHAUSTED "... larger than max (<size> vs. <limit>)". Deadlines: gRPC cancels the
 * call when its deadline passes; handlers see kvd_call_recv/kvd_call_send fail, and may poll
 * kvd_call_check() between long steps.
 *
 * Thread safety: a kvd_call belongs to the one worker thread running its handler.
 */
#ifndef KVD_GRPC_H
#define KVD_GRPC_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "daemon/kvd_status.h"

typedef struct kvd_server kvd_server;
typedef struct kvd_call kvd_call;

typedef enum kvd_rpc_kind {
  KVD_RPC_UNARY = 0,        /* one request, one response */
  KVD_RPC_CLIENT_STREAM,    /* request stream, one response */
  KVD_RPC_SERVER_STREAM     /* one request, response stream */
} kvd_rpc_kind;

/* A handler reads its request(s) with kvd_call_recv, sends response(s) with kvd_call_send,
 * and sets *st (kvd_status_ok or kvd_fail). The status is sent after it returns. */
typedef void (*kvd_handler_fn)(void *app, kvd_call *call, kvd_status *st);

typedef struct kvd_method {
  const char *path;      /* "/package.Service/Method" */
  kvd_rpc_kind kind;
  kvd_handler_fn fn;
} kvd_method;

/* Called after every call (also unknown methods: method_index = -1) for metrics and logs. */
typedef void (*kvd_call_done_fn)(void *app, int method_index, const char *path,
                                 const kvd_status *st, double seconds, uint64_t bytes_in,
                                 uint64_t bytes_out);

typedef struct kvd_server_opts {
  const char *const *addrs;      /* host:port or unix:/path; n_addrs of them */
  int n_addrs;
  const char *tls_cert_pem;      /* PEM text (not a path); NULL = plaintext */
  const char *tls_key_pem;
  uint64_t max_message_bytes;    /* receive and send limit per message */
  unsigned threads;              /* workers of streaming calls, >= 1 */
  unsigned unary_threads;        /* workers of all other calls, >= 1 */
  uint32_t max_call_ms;          /* a call running longer is cancelled (DEADLINE_EXCEEDED) */
  uint32_t stall_ms;             /* one wait on the peer longer than this: the same, >= 1 */
  const kvd_method *methods;     /* the table; must outlive the server */
  size_t n_methods;
  void *app;                     /* passed to handlers */
  kvd_call_done_fn on_done;      /* may be NULL */
} kvd_server_opts;

/* Creates, binds and starts the server. Adds grpc.health.v1.Health (Check, Watch) for the
 * service names "" and every service named by the method table. On error writes a message
 * into err and returns -1 (nothing left running). */
int kvd_server_start(const kvd_server_opts *opts, kvd_server **out, char *err, size_t cap);
/* The port bound for listen address i (useful with port 0); 0 for unix: addresses. */
int kvd_server_port(const kvd_server *srv, int i);
/* Stops accepting calls and health reports NOT_SERVING (Watch streams get it and end); lets
 * in-flight calls run up to grace_ms, then cancels them; joins every thread. Blocks. */
void kvd_server_shutdown(kvd_server *srv, unsigned grace_ms);
/* Frees a shut down server (gRPC itself stays initialized: for the process's exit). NULL is a
 * no-op. */
void kvd_server_destroy(kvd_server *srv);
/* Calls running now (for metrics). */
unsigned kvd_server_in_flight(const kvd_server *srv);

/* ---- inside a handler ---- */

/* Next request message: 1 with *data and *len set (valid until the next kvd_call_recv or the end
 * of the handler), 0 at the end of the request stream, -1 when the call is broken (cancelled,
 * deadline, oversized message, shutdown): then set *st from kvd_call_check and return. */
int kvd_call_recv(kvd_call *call, const uint8_t **data, size_t *len);
/* Releases the last received message early (after decoding it), so a call holds one copy of
 * a large message, not two. The pointers kvd_call_recv gave become invalid. */
void kvd_call_recv_release(kvd_call *call);
/* Serializes and sends one response message. 0 on success, -1 when the call is broken. */
int kvd_call_send(kvd_call *call, const ProtobufCMessage *msg);
/* Large response bytes without a copy. A kvd_buf is a reference-counted byte buffer: the
 * handler fills it (kvd_buf_data) and kvd_call_send_bytes sends a message whose `field`
 * (a `bytes` field left empty in msg) is buf[off, off + len), with gRPC holding a reference
 * on buf until those bytes are written to the socket. The encoding on the wire is the
 * message's fields, then that field last (protobuf readers accept fields in any order).
 * kvd_buf_writable tells whether gRPC still holds references (then fill another buffer). */
typedef struct kvd_buf kvd_buf;
kvd_buf *kvd_buf_new(size_t cap);            /* NULL when out of memory; refs = 1 */
uint8_t *kvd_buf_data(kvd_buf *b);
size_t kvd_buf_cap(const kvd_buf *b);
int kvd_buf_writable(const kvd_buf *b);      /* 1 when the caller holds the only reference */
void kvd_buf_unref(kvd_buf *b);              /* NULL is a no-op */
int kvd_call_send_bytes(kvd_call *call, const ProtobufCMessage *msg, uint32_t field,
                        kvd_buf *buf, size_t off, size_t len);
/* Request metadata value of `key` (lowercase), NULL if absent; *len = its length. */
const char *kvd_call_metadata(kvd_call *call, const char *key, size_t *len);
/* 0 while the call is alive; else fills st (CANCELLED or DEADLINE) and returns -1. */
int kvd_call_check(kvd_call *call, kvd_status *st);
/* The method's index in the table. */
int kvd_call_method(const kvd_call *call);
/* Peer address text (e.g. "ipv4:127.0.0.1:40000"), for logs; "" if unknown. */
const char *kvd_call_peer(kvd_call *call);

#endif
