/* kvt_client.h: a small synchronous gRPC client over the raw gRPC C core API, used by the
 * daemon's end-to-end tests and by the daemon benchmark (tests/daemon/kvd_bench.c).
 * It is independent of libe8kv on purpose: the daemon tests must not depend on the client
 * library they would otherwise be testing against.
 *
 * One kvt_conn = one channel (insecure; "unix:/path" or "host:port"). Calls are blocking.
 * A kvt_stream is one call of any kind: open, send messages, half-close, read messages,
 * finish (status). Thread safety: a kvt_conn may be shared by threads; a kvt_stream may not.
 */
#ifndef KVT_CLIENT_H
#define KVT_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

typedef struct kvt_conn kvt_conn;
typedef struct kvt_stream kvt_stream;

typedef struct kvt_status {
  int code;            /* grpc_status_code; 0 = OK */
  char msg[1024];
} kvt_status;

/* token: bearer token sent as `authorization: Bearer <token>` (NULL = none).
 * max_recv_bytes: receive limit of the channel (0 = gRPC default of 4 MiB). */
kvt_conn *kvt_connect(const char *target, const char *token, long max_recv_bytes);
/* A channel whose receive window stays at HTTP/2's 64 KiB default (BDP probing off): a reader
 * that stops reading stalls the server after ~64 KiB on any machine. With probing on, gRPC
 * grows the window to several MiB on a fast link, and a whole test-sized response can sit in
 * the client's buffers before the server ever waits on it. */
kvt_conn *kvt_connect_small_window(const char *target);
void kvt_close(kvt_conn *c);

/* Opens a call of `method` ("/pkg.Svc/Method") with a deadline timeout_ms from now. */
kvt_stream *kvt_open(kvt_conn *c, const char *method, int timeout_ms);
/* 0 on success, -1 if the call is already broken (read the status with kvt_finish). */
int kvt_send(kvt_stream *s, const ProtobufCMessage *m);
int kvt_send_raw(kvt_stream *s, const void *data, size_t len);
int kvt_close_send(kvt_stream *s);
/* 1: a message in *buf (malloc'ed, free it), 0: end of stream, -1: broken. */
int kvt_recv(kvt_stream *s, uint8_t **buf, size_t *len);
/* Waits for the status. Returns st->code. */
int kvt_finish(kvt_stream *s, kvt_status *st);
/* Waits for the status WITHOUT reading the messages still to come (a client that stopped
 * reading: the status comes when the deadline passes or the server cuts the call, never
 * because the client drained the stream in time). Returns st->code. */
int kvt_wait_status(kvt_stream *s, kvt_status *st);
/* 1 if the call's status has arrived (the call ended), 0 if it is still going; never blocks. */
int kvt_ended(kvt_stream *s);
/* Cancels the call (the client goes away). */
void kvt_cancel(kvt_stream *s);
void kvt_free(kvt_stream *s);

/* A deadline that only bounds a hang: timeout_ms, at least 60 s. kvt_unary and kvt_get use it:
 * no test expects them to hit their deadline, and a 5 s one could on a loaded machine (a test
 * of a deadline opens its stream with kvt_open and an exact timeout). */
int kvt_hang_ms(int timeout_ms);

/* Unary helper: sends req, decodes the reply with desc into *resp (NULL on error; free with
 * protobuf_c_message_free_unpacked). Returns the status code. timeout_ms: see kvt_hang_ms. */
int kvt_unary(kvt_conn *c, const char *method, const ProtobufCMessage *req,
              const ProtobufCMessageDescriptor *desc, ProtobufCMessage **resp, kvt_status *st,
              int timeout_ms);

#endif
