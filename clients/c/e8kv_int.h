/*
 * e8kv_int.h: libe8kv internals shared by its files (not installed).
 *
 * kvc_stream is the one call primitive: every RPC, unary or streaming, is
 * open -> send* -> close_send -> recv* -> finish on its own pluck completion
 * queue, one batch in flight at a time, so the calling thread owns the call.
 */
#ifndef E8KV_INT_H
#define E8KV_INT_H

#include <stdatomic.h>
#include <grpc/grpc.h>
#include <protobuf-c/protobuf-c.h>

#include "clients/c/e8kv.h"

struct e8kv_client {
  grpc_channel *channel;
  char *address;
  grpc_slice auth_value;  /* "Bearer <token>", valid when has_token */
  int has_token;
  int tls;                /* the channel uses TLS credentials */
  _Atomic uint32_t deadline_ms;
  uint32_t stream_deadline_ms; /* 0: no deadline */
};

/* Fills err (when not NULL) with code and a printf-style message; returns code. */
e8kv_status kvc_fail(e8kv_error *err, e8kv_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

typedef struct kvc_stream kvc_stream;

enum { KVC_UNARY = 0, KVC_STREAMING = 1 };

/* Starts a call of `method` ("/e8kv.v1.KVStore/Stats"), sending initial
 * metadata (the bearer token). kind picks the deadline (unary or stream). */
e8kv_status kvc_stream_open(e8kv_client *c, const char *method, int kind,
                            kvc_stream **out, e8kv_error *err);
/* Sends one request message; waits until gRPC has taken it (flow control). */
e8kv_status kvc_stream_send(kvc_stream *s, const ProtobufCMessage *m, e8kv_error *err);
/* Half-closes the sending side. */
e8kv_status kvc_stream_close_send(kvc_stream *s, e8kv_error *err);
/* Receives one reply message into *out (free with protobuf_c_message_free_unpacked).
 * At the end of the stream returns the call's final status with *out NULL:
 * E8KV_OK for a clean end, else the daemon's error. */
e8kv_status kvc_stream_recv(kvc_stream *s, const ProtobufCMessageDescriptor *d,
                            ProtobufCMessage **out, e8kv_error *err);
/* Cancels (when the call is not over), collects the final status, frees s.
 * Returns the call's status (E8KV_OK when it ended cleanly). NULL: E8KV_OK. */
e8kv_status kvc_stream_finish(kvc_stream *s, e8kv_error *err);

/* Receives the next message as gRPC's byte buffer (the caller destroys it): no copy. At the
 * end of the stream *bb is NULL and the call's final status is returned (E8KV_OK: clean). */
e8kv_status kvc_stream_recv_bb(kvc_stream *s, grpc_byte_buffer **bb, e8kv_error *err);

/* Cancels the call from any thread (grpc_call_cancel is thread-safe): the owner's
 * pending and later batches fail, and its recv returns CANCELLED. s stays the owner's. */
void kvc_stream_cancel(kvc_stream *s);

/* open, send, close_send, recv exactly one reply, finish. */
e8kv_status kvc_unary(e8kv_client *c, const char *method, const ProtobufCMessage *req,
                      const ProtobufCMessageDescriptor *resp_desc, ProtobufCMessage **resp,
                      e8kv_error *err);

/* A GetChunksResponse read in place (e8kv_piece.c) over the segments gRPC received it in
 * (no copy of the message): small fields copied, the data field only located. */
typedef struct kvc_seg {
  const uint8_t *p;
  size_t n;
} kvc_seg;

typedef struct kvc_piece {
  uint32_t chunk_index, n_tokens, layer_begin, layer_end;
  int32_t encoding, dtype;
  uint64_t start_token, chunk_bytes, offset;
  int last_piece;
  uint8_t chunk_key[64];      /* chunk_key_len bytes (a longer key is a parse error) */
  size_t chunk_key_len;
  uint8_t fingerprint_id[64]; /* fingerprint_id_len bytes (likewise) */
  size_t fingerprint_id_len;
  size_t n_token_ids;         /* counted, not kept */
  size_t data_len;            /* the data field: data_len bytes from segment data_seg, */
  size_t data_seg, data_off;  /*   offset data_off (copied by kvc_piece_copy_data) */
} kvc_piece;

/* 0, or -1 when the bytes are not a GetChunksResponse (see e8kv_piece.c for the rules). */
int kvc_piece_parse(const kvc_seg *segs, size_t n_segs, kvc_piece *pc);
/* Copies the data field of a parsed piece (pc->data_len bytes) to dst. */
void kvc_piece_copy_data(const kvc_seg *segs, size_t n_segs, const kvc_piece *pc,
                         uint8_t *dst);

/* Reassembly of GetChunks pieces into chunks (e8kv_stream.c; exposed for tests). */
typedef struct kvc_asm {
  uint8_t *buf;
  size_t cap;
  uint64_t have;       /* bytes of the current chunk received */
  int open;            /* a chunk is being assembled */
  E8kv__V1__GetChunksResponse *first; /* its first piece (fields and token ids) */
} kvc_asm;

/* Adds one piece (taking ownership of m, which must come from protobuf_c_message_unpack
 * or be freeable by e8kv_msg_free); when it completes a chunk, calls fn. Pieces that do
 * not continue the chunk in order (offset, sizes, chunk fields) are E8KV_E_PROTOCOL. */
e8kv_status kvc_asm_piece(kvc_asm *a, E8kv__V1__GetChunksResponse *m, e8kv_chunk_fn fn,
                          void *ctx, e8kv_error *err);
/* At the end of the stream: E8KV_E_PROTOCOL when a chunk is incomplete. */
e8kv_status kvc_asm_end(kvc_asm *a, e8kv_error *err);
void kvc_asm_free(kvc_asm *a);

#endif /* E8KV_INT_H */
