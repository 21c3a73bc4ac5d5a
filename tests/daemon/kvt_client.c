/* kvt_client.c: blocking gRPC calls over the C core API (see kvt_client.h). */
#include "tests/daemon/kvt_client.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

struct kvt_conn {
  grpc_channel *ch;
  char auth[600];
};

struct kvt_stream {
  grpc_call *call;
  grpc_completion_queue *cq;
  grpc_metadata md;
  grpc_metadata_array init_md, trail_md;
  grpc_status_code status;
  grpc_slice details;
  int status_done, got_init, broken, have_auth, send_pending;
  grpc_byte_buffer *pending_bb;
};

static kvt_conn *connect_args(const char *target, const char *token, long max_recv_bytes,
                              int bdp_probe) {
  static int inited;
  if (!inited) { grpc_init(); inited = 1; }
  kvt_conn *c = calloc(1, sizeof *c);
  grpc_arg a[3] = {
      {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH,
       .value.integer = max_recv_bytes > 0 ? (int)max_recv_bytes : 4 * 1024 * 1024},
      {.type = GRPC_ARG_INTEGER, .key = "grpc.use_local_subchannel_pool", .value.integer = 1},
      {.type = GRPC_ARG_INTEGER, .key = GRPC_ARG_HTTP2_BDP_PROBE, .value.integer = 0}};
  grpc_channel_args args = {bdp_probe ? 2 : 3, a};
  grpc_channel_credentials *cr = grpc_insecure_credentials_create();
  c->ch = grpc_channel_create(target, cr, &args);
  grpc_channel_credentials_release(cr);
  if (token) snprintf(c->auth, sizeof c->auth, "Bearer %s", token);
  return c;
}

kvt_conn *kvt_connect(const char *target, const char *token, long max_recv_bytes) {
  return connect_args(target, token, max_recv_bytes, 1);
}

kvt_conn *kvt_connect_small_window(const char *target) {
  return connect_args(target, NULL, 0, 0);
}

void kvt_close(kvt_conn *c) {
  if (!c) return;
  grpc_channel_destroy(c->ch);
  free(c);
}

static int wait_tag(kvt_stream *s, void *tag) {
  grpc_event ev = grpc_completion_queue_pluck(s->cq, tag, gpr_inf_future(GPR_CLOCK_REALTIME),
                                              NULL);
  return ev.type == GRPC_OP_COMPLETE && ev.success ? 0 : -1;
}

static int batch(kvt_stream *s, grpc_op *ops, size_t n, void *tag) {
  if (grpc_call_start_batch(s->call, ops, n, tag, NULL) != GRPC_CALL_OK) return -1;
  return wait_tag(s, tag);
}

/* Waits for a send; gives up (-1, the send stays pending) when the status arrives first, as
 * an asynchronous client would: a server that refused the stream stops reading it. */
static int wait_send(kvt_stream *s, void *tag) {
  for (;;) {
    gpr_timespec t = gpr_time_add(gpr_now(GPR_CLOCK_REALTIME),
                                  gpr_time_from_millis(20, GPR_TIMESPAN));
    grpc_event ev = grpc_completion_queue_pluck(s->cq, tag, t, NULL);
    if (ev.type == GRPC_OP_COMPLETE) return ev.success ? 0 : -1;
    ev = grpc_completion_queue_pluck(s->cq, (void *)2, gpr_inf_past(GPR_CLOCK_REALTIME), NULL);
    if (ev.type == GRPC_OP_COMPLETE) {
      s->status_done = 1;
      s->send_pending = 1;
      return -1;
    }
  }
}

kvt_stream *kvt_open(kvt_conn *c, const char *method, int timeout_ms) {
  kvt_stream *s = calloc(1, sizeof *s);
  s->cq = grpc_completion_queue_create_for_pluck(NULL);
  gpr_timespec dl = gpr_time_add(gpr_now(GPR_CLOCK_REALTIME),
                                 gpr_time_from_millis(timeout_ms, GPR_TIMESPAN));
  grpc_slice m = grpc_slice_from_copied_string(method);
  s->call = grpc_channel_create_call(c->ch, NULL, GRPC_PROPAGATE_DEFAULTS, s->cq, m, NULL, dl,
                                     NULL);
  grpc_slice_unref(m);
  grpc_metadata_array_init(&s->init_md);
  grpc_metadata_array_init(&s->trail_md);
  grpc_op ops[2];
  memset(ops, 0, sizeof ops);
  ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
  if (*c->auth) {
    s->md.key = grpc_slice_from_static_string("authorization");
    s->md.value = grpc_slice_from_copied_string(c->auth);
    s->have_auth = 1;
    ops[0].data.send_initial_metadata.count = 1;
    ops[0].data.send_initial_metadata.metadata = &s->md;
  }
  if (batch(s, ops, 1, (void *)1) != 0) s->broken = 1;
  ops[0].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
  ops[0].data.recv_status_on_client.trailing_metadata = &s->trail_md;
  ops[0].data.recv_status_on_client.status = &s->status;
  ops[0].data.recv_status_on_client.status_details = &s->details;
  grpc_call_start_batch(s->call, ops, 1, (void *)2, NULL);
  return s;
}

int kvt_send_raw(kvt_stream *s, const void *data, size_t len) {
  if (s->broken) return -1;
  grpc_slice sl = grpc_slice_from_copied_buffer(data, len);
  grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&sl, 1);
  grpc_slice_unref(sl);
  grpc_op op;
  memset(&op, 0, sizeof op);
  op.op = GRPC_OP_SEND_MESSAGE;
  op.data.send_message.send_message = bb;
  int rc = grpc_call_start_batch(s->call, &op, 1, (void *)3, NULL) == GRPC_CALL_OK
               ? wait_send(s, (void *)3) : -1;
  if (s->send_pending) s->pending_bb = bb; /* freed when the send completes (kvt_free) */
  else grpc_byte_buffer_destroy(bb);
  if (rc) s->broken = 1;
  return rc;
}

int kvt_send(kvt_stream *s, const ProtobufCMessage *m) {
  size_t n = protobuf_c_message_get_packed_size(m);
  uint8_t *b = malloc(n + 1);
  protobuf_c_message_pack(m, b);
  int rc = kvt_send_raw(s, b, n);
  free(b);
  return rc;
}

int kvt_close_send(kvt_stream *s) {
  if (s->broken) return -1;
  grpc_op op;
  memset(&op, 0, sizeof op);
  op.op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
  return batch(s, &op, 1, (void *)4);
}

int kvt_recv(kvt_stream *s, uint8_t **buf, size_t *len) {
  grpc_op ops[2];
  size_t n = 0;
  grpc_byte_buffer *bb = NULL;
  memset(ops, 0, sizeof ops);
  if (!s->got_init) {
    ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
    ops[n++].data.recv_initial_metadata.recv_initial_metadata = &s->init_md;
    s->got_init = 1;
  }
  ops[n].op = GRPC_OP_RECV_MESSAGE;
  ops[n++].data.recv_message.recv_message = &bb;
  if (batch(s, ops, n, (void *)5) != 0) return -1;
  if (!bb) return 0;
  grpc_byte_buffer_reader r;
  grpc_byte_buffer_reader_init(&r, bb);
  grpc_slice sl = grpc_byte_buffer_reader_readall(&r);
  grpc_byte_buffer_reader_destroy(&r);
  grpc_byte_buffer_destroy(bb);
  *len = GRPC_SLICE_LENGTH(sl);
  *buf = malloc(*len + 1);
  memcpy(*buf, GRPC_SLICE_START_PTR(sl), *len);
  grpc_slice_unref(sl);
  return 1;
}

int kvt_finish(kvt_stream *s, kvt_status *st) {
  if (!s->status_done) { /* the status comes after the messages: read (and drop) them */
    uint8_t *b;
    size_t n;
    while (kvt_recv(s, &b, &n) == 1) free(b);
    wait_tag(s, (void *)2);
    s->status_done = 1;
  }
  st->code = (int)s->status;
  snprintf(st->msg, sizeof st->msg, "%.*s", (int)GRPC_SLICE_LENGTH(s->details),
           (const char *)GRPC_SLICE_START_PTR(s->details));
  return st->code;
}

int kvt_hang_ms(int timeout_ms) { return timeout_ms < 60000 ? 60000 : timeout_ms; }

int kvt_ended(kvt_stream *s) {
  if (!s->status_done) {
    grpc_event ev = grpc_completion_queue_pluck(s->cq, (void *)2,
                                                gpr_inf_past(GPR_CLOCK_REALTIME), NULL);
    if (ev.type == GRPC_OP_COMPLETE) s->status_done = 1;
  }
  return s->status_done;
}

int kvt_wait_status(kvt_stream *s, kvt_status *st) {
  if (!s->status_done) {
    wait_tag(s, (void *)2);
    s->status_done = 1;
  }
  return kvt_finish(s, st);
}

void kvt_cancel(kvt_stream *s) { grpc_call_cancel(s->call, NULL); }

void kvt_free(kvt_stream *s) {
  if (!s) return;
  if (!s->status_done) {
    grpc_call_cancel(s->call, NULL);
    wait_tag(s, (void *)2);
  }
  if (s->send_pending) {
    grpc_call_cancel(s->call, NULL);
    wait_tag(s, (void *)3);
    grpc_byte_buffer_destroy(s->pending_bb);
  }
  grpc_call_unref(s->call);
  grpc_completion_queue_shutdown(s->cq);
  while (grpc_completion_queue_pluck(s->cq, NULL, gpr_inf_future(GPR_CLOCK_REALTIME), NULL)
             .type != GRPC_QUEUE_SHUTDOWN) {
  }
  grpc_completion_queue_destroy(s->cq);
  grpc_slice_unref(s->details);
  grpc_metadata_array_destroy(&s->init_md);
  grpc_metadata_array_destroy(&s->trail_md);
  if (s->have_auth) grpc_slice_unref(s->md.value);
  free(s);
}

int kvt_unary(kvt_conn *c, const char *method, const ProtobufCMessage *req,
              const ProtobufCMessageDescriptor *desc, ProtobufCMessage **resp, kvt_status *st,
              int timeout_ms) {
  kvt_stream *s = kvt_open(c, method, kvt_hang_ms(timeout_ms));
  *resp = NULL;
  uint8_t *b = NULL;
  size_t n = 0;
  if (kvt_send(s, req) == 0 && kvt_close_send(s) == 0 && kvt_recv(s, &b, &n) == 1) {
    *resp = protobuf_c_message_unpack(desc, NULL, n, b);
    free(b);
  }
  int code = kvt_finish(s, st);
  if (code != 0 && *resp) {
    protobuf_c_message_free_unpacked(*resp, NULL);
    *resp = NULL;
  }
  kvt_free(s);
  return code;
}
