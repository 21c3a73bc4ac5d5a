/*
 * e8kv_call.c: the call primitive of libe8kv over gRPC C core.
 *
 * Each call gets its own pluck completion queue and runs one batch at a time:
 * start the batch, pluck its tag, look at the result. The call's deadline is
 * set when it is created, so every pluck is bounded by it. When a batch fails
 * (the daemon ended the call, the deadline passed, the connection broke), the
 * true reason is the call's final status, which kvc_status_collect fetches.
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer_reader.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include "clients/c/e8kv_int.h"

#define KVC_TLS_HINT \
  " (the server closed the connection at once: if e8kvd serves TLS there, connect with TLS)"

struct kvc_stream {
  e8kv_client *client;
  grpc_completion_queue *cq;
  grpc_call *call;
  char method[128];
  uint32_t deadline_ms; /* the call's deadline, 0 = none (for the message when it passes) */
  grpc_metadata_array initial_md;
  grpc_metadata_array trailing_md;
  int got_initial_md;  /* RECV_INITIAL_METADATA done */
  int half_closed;     /* SEND_CLOSE_FROM_CLIENT done */
  int have_status;     /* RECV_STATUS_ON_CLIENT done: status/message are final */
  e8kv_status status;
  char message[E8KV_ERROR_MESSAGE_MAX];
};

/* Runs one batch and waits for it. Returns 1 when the batch succeeded. */
static int kvc_batch(kvc_stream *s, grpc_op *ops, size_t n) {
  void *tag = ops; /* unique while the batch is in flight */
  if (grpc_call_start_batch(s->call, ops, n, tag, NULL) != GRPC_CALL_OK) return 0;
  grpc_event ev = grpc_completion_queue_pluck(s->cq, tag, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
  return ev.type == GRPC_OP_COMPLETE && ev.success;
}

/* Receives the final status (once) and keeps code and message in s. */
static void kvc_status_collect(kvc_stream *s) {
  if (s->have_status) return;
  grpc_op ops[2];
  size_t n = 0;
  memset(ops, 0, sizeof ops);
  if (!s->got_initial_md) {
    ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[n++].data.recv_initial_metadata.recv_initial_metadata = &s->initial_md;
    s->got_initial_md = 1;
  }
  grpc_status_code code = GRPC_STATUS_UNKNOWN;
  grpc_slice details = grpc_empty_slice();
  const char *error_string = NULL;
  ops[n].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[n].data.recv_status_on_client.trailing_metadata = &s->trailing_md;
  ops[n].data.recv_status_on_client.status = &code;
  ops[n].data.recv_status_on_client.status_details = &details;
  ops[n++].data.recv_status_on_client.error_string = &error_string;
  if (!kvc_batch(s, ops, n)) code = GRPC_STATUS_UNKNOWN;
  s->have_status = 1;
  s->status = (e8kv_status)code;
  size_t len = GRPC_SLICE_LENGTH(details);
  if (len >= sizeof s->message) len = sizeof s->message - 1;
  memcpy(s->message, GRPC_SLICE_START_PTR(details), len);
  s->message[len] = '\0';
  if (!len) strcpy(s->message, code == GRPC_STATUS_OK ? "ok" : "no detail from gRPC");
  grpc_slice_unref(details);
  if (error_string) gpr_free((void *)error_string);
}

static e8kv_status kvc_status_error(kvc_stream *s, e8kv_error *err) {
  kvc_status_collect(s);
  if (s->status == E8KV_OK)
    return kvc_fail(err, E8KV_E_PROTOCOL, "%s: the call ended before the expected reply",
                    s->method);
  if (s->status == E8KV_UNAVAILABLE) /* a plaintext client at a TLS port sees only this: */
    return kvc_fail(err, s->status, "%s: cannot reach e8kvd at %s: %s%s", s->method,
                    s->client->address, s->message,
                    !s->client->tls && strstr(s->message, "Socket closed") ? KVC_TLS_HINT : "");
  if (s->status == E8KV_DEADLINE_EXCEEDED)
    return kvc_fail(err, s->status,
                    "%s: no answer from e8kvd at %s within the %u ms deadline (daemon stopped, "
                    "overloaded, or not e8kvd): %s", s->method, s->client->address,
                    s->deadline_ms, s->message);
  return kvc_fail(err, s->status, "%s: %s", s->method, s->message);
}

e8kv_status kvc_stream_open(e8kv_client *c, const char *method, int kind, kvc_stream **out,
                            e8kv_error *err) {
  *out = NULL;
  if (!c || !method || strlen(method) >= sizeof((kvc_stream *)0)->method)
    return kvc_fail(err, E8KV_E_USAGE, "kvc_stream_open: bad client or method");
  kvc_stream *s = calloc(1, sizeof *s);
  if (!s) return kvc_fail(err, E8KV_E_NOMEM, "out of memory");
  s->client = c;
  strcpy(s->method, method);
  grpc_metadata_array_init(&s->initial_md);
  grpc_metadata_array_init(&s->trailing_md);
  uint32_t ms = kind == KVC_UNARY ? atomic_load(&c->deadline_ms) : c->stream_deadline_ms;
  s->deadline_ms = ms;
  gpr_timespec deadline = ms ? gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
                                            gpr_time_from_millis(ms, GPR_TIMESPAN))
                             : gpr_inf_future(GPR_CLOCK_MONOTONIC);
  s->cq = grpc_completion_queue_create_for_pluck(NULL);
  grpc_slice m = grpc_slice_from_static_string(s->method);
  s->call = grpc_channel_create_call(c->channel, NULL, GRPC_PROPAGATE_DEFAULTS, s->cq, m, NULL,
                                     deadline, NULL);
  if (!s->call) {
    kvc_stream_finish(s, NULL);
    return kvc_fail(err, E8KV_E_NOMEM, "%s: gRPC could not create the call", method);
  }
  grpc_metadata md;
  memset(&md, 0, sizeof md);
  grpc_op op;
  memset(&op, 0, sizeof op);
  op.op = GRPC_OP_SEND_INITIAL_METADATA;
  if (c->has_token) {
    md.key = grpc_slice_from_static_string("authorization");
    md.value = c->auth_value;
    op.data.send_initial_metadata.count = 1;
    op.data.send_initial_metadata.metadata = &md;
  }
  if (!kvc_batch(s, &op, 1)) {
    e8kv_status st = kvc_status_error(s, err);
    kvc_stream_finish(s, NULL);
    return st;
  }
  *out = s;
  return E8KV_OK;
}

e8kv_status kvc_stream_send(kvc_stream *s, const ProtobufCMessage *m, e8kv_error *err) {
  if (s->have_status || s->half_closed)
    return kvc_fail(err, E8KV_E_USAGE, "%s: send after the call ended", s->method);
  size_t len = protobuf_c_message_get_packed_size(m);
  grpc_slice slice = grpc_slice_malloc(len);
  protobuf_c_message_pack(m, GRPC_SLICE_START_PTR(slice));
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&slice, 1);
  grpc_slice_unref(slice);
  grpc_op op;
  memset(&op, 0, sizeof op);
  op.op = GRPC_OP_SEND_MESSAGE;
  op.data.send_message.send_message = bb;
  int ok = kvc_batch(s, &op, 1);
  grpc_byte_buffer_destroy(bb);
  return ok ? E8KV_OK : kvc_status_error(s, err);
}

e8kv_status kvc_stream_close_send(kvc_stream *s, e8kv_error *err) {
  if (s->half_closed || s->have_status) return E8KV_OK;
  grpc_op op;
  memset(&op, 0, sizeof op);
  op.op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  s->half_closed = 1;
  return kvc_batch(s, &op, 1) ? E8KV_OK : kvc_status_error(s, err);
}

/* Receives the next message's bytes into *bb (NULL at the end of the stream: then the
 * call's final status is returned). */
e8kv_status kvc_stream_recv_bb(kvc_stream *s, grpc_byte_buffer **bb, e8kv_error *err) {
  *bb = NULL;
  if (s->have_status) return s->status ? kvc_status_error(s, err) : E8KV_OK;
  grpc_op ops[2];
  size_t n = 0;
  memset(ops, 0, sizeof ops);
  if (!s->got_initial_md) {
    ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[n++].data.recv_initial_metadata.recv_initial_metadata = &s->initial_md;
    s->got_initial_md = 1;
  }
  ops[n].op = GRPC_OP_RECV_MESSAGE;
  ops[n++].data.recv_message.recv_message = bb;
  if (!kvc_batch(s, ops, n) || !*bb) {
    if (*bb) grpc_byte_buffer_destroy(*bb);
    *bb = NULL;
    kvc_status_collect(s);  /* end of stream, or the call failed */
    return s->status ? kvc_status_error(s, err) : E8KV_OK;
  }
  return E8KV_OK;
}

e8kv_status kvc_stream_recv(kvc_stream *s, const ProtobufCMessageDescriptor *d,
                            ProtobufCMessage **out, e8kv_error *err) {
  *out = NULL;
  grpc_byte_buffer *bb;
  e8kv_status st = kvc_stream_recv_bb(s, &bb, err);
  if (st || !bb) return st;
  grpc_byte_buffer_reader reader;
  if (!grpc_byte_buffer_reader_init(&reader, bb)) {
    grpc_byte_buffer_destroy(bb);
    return kvc_fail(err, E8KV_E_PROTOCOL, "%s: unreadable reply", s->method);
  }
  grpc_slice all = grpc_byte_buffer_reader_readall(&reader);
  grpc_byte_buffer_reader_destroy(&reader);
  grpc_byte_buffer_destroy(bb);
  *out = protobuf_c_message_unpack(d, NULL, GRPC_SLICE_LENGTH(all), GRPC_SLICE_START_PTR(all));
  size_t len = GRPC_SLICE_LENGTH(all);
  grpc_slice_unref(all);
  if (!*out)
    return kvc_fail(err, E8KV_E_PROTOCOL, "%s: reply of %zu bytes is not a valid %s", s->method,
                    len, d->name);
  return E8KV_OK;
}

void kvc_stream_cancel(kvc_stream *s) {
  if (s && s->call) grpc_call_cancel(s->call, NULL);
}

e8kv_status kvc_stream_finish(kvc_stream *s, e8kv_error *err) {
  if (!s) return E8KV_OK;
  e8kv_status st = E8KV_OK;
  if (s->call) {
    if (!s->have_status) grpc_call_cancel(s->call, NULL);
    int was_final = s->have_status;
    kvc_status_collect(s);
    /* A call we cancelled ourselves ends CANCELLED: that is not the daemon's error. */
    if (was_final && s->status) st = kvc_status_error(s, err);
    grpc_call_unref(s->call);
  }
  grpc_metadata_array_destroy(&s->initial_md);
  grpc_metadata_array_destroy(&s->trailing_md);
  if (s->cq) {
    grpc_completion_queue_shutdown(s->cq);
    grpc_completion_queue_pluck(s->cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL);
    grpc_completion_queue_destroy(s->cq);
  }
  free(s);
  return st;
}

e8kv_status kvc_unary(e8kv_client *c, const char *method, const ProtobufCMessage *req,
                      const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp,
                      e8kv_error *err) {
  *resp = NULL;
  kvc_stream *s;
  e8kv_status st = kvc_stream_open(c, method, KVC_UNARY, &s, err);
  if (st) return st;
  if (!(st = kvc_stream_send(s, req, err)) && !(st = kvc_stream_close_send(s, err)) &&
      !(st = kvc_stream_recv(s, resp_desc, resp, err)) && !*resp)
    st = kvc_fail(err, E8KV_E_PROTOCOL, "%s: the daemon ended the call without a reply", method);
  if (!st) {
    ProtobufCMessage *extra = NULL;
    st = kvc_stream_recv(s, resp_desc, &extra, err);  /* reads the final status */
    if (extra) {
      protobuf_c_message_free_unpacked(extra, NULL);
      st = kvc_fail(err, E8KV_E_PROTOCOL, "%s: more than one reply to a unary call", method);
    }
  }
  kvc_stream_finish(s, NULL);
  if (st && *resp) {
    protobuf_c_message_free_unpacked(*resp, NULL);
    *resp = NULL;
  }
  return st;
}
