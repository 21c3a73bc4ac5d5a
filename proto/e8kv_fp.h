/* e8kv_fp.h: the model fingerprint between the wire (e8kv.v1.ModelFingerprint, protobuf-c)
 * and the codec (e8c_fingerprint). The one place in C where the two meet: e8kvd and libe8kv
 * (so e8kvctl too) both link this module, so a fingerprint means the same thing and gets the
 * same 32-byte id on both sides of the wire.
 *
 * Layering: proto/ sits beside codec/, above it; the daemon and the clients use it. codec/ and
 * store/ never include it (they know nothing of protobuf or gRPC).
 *
 * Defaults (the rule of proto/e8kv/v1/kvstore.proto, applied here and nowhere else):
 *   - `codec` unset (NULL) = e8c_config_default(): the daemon's default codec configuration
 *     (preset K3V2, sink_tokens 1, no recent window, no protected layers, decorrelation AUTO,
 *     zstd level 1, the default Hadamard seed, entropy rans32). The same configuration sent field by field
 *     gets the same fingerprint id.
 *   - a set CodecConfig is read field by field: a field documented "0 = default" takes
 *     e8c_config_default()'s value when 0; counts (sink_tokens, recent_window_tokens,
 *     protect_*_layers, protected_layers) mean what they say, 0 / empty = none. So an EMPTY
 *     CodecConfig is the default configuration with no sink token: another id than unset.
 *   - rope.theta 0 = no RoPE; rotary_dim 0 = head_dim; factor 0 = 1 for the scaling types that
 *     use a factor (LINEAR, DYNAMIC, YARN, LLAMA3).
 * e8kv_fingerprint_to_pb writes every value explicitly (codec always set, preset named, steps
 * given), so to_pb then from_pb gives back the same fingerprint and the same id.
 *
 * Thread safety: every function here is pure (no global state); call them from any thread.
 */
#ifndef E8KV_FP_H
#define E8KV_FP_H

#include <stddef.h>
#include <stdint.h>

#include "codec/e8codec.h"
#include "e8kv/v1/kvstore.pb-c.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Storage for a wire fingerprint built from a codec one (no allocation: the message points
 * into the struct, which must not move while the message is used). */
typedef struct e8kv_fingerprint_pb {
  E8kv__V1__ModelFingerprint m; /* the message: pass &x.m */
  E8kv__V1__RopeConfig rope;
  E8kv__V1__CodecConfig codec;
  char model_id[E8C_MODEL_ID_MAX];
  char preset[E8C_PRESET_NAME_MAX];
  uint32_t protected_layers[E8C_MAX_LAYERS];
  double short_factor[E8C_MAX_ROPE_FACTORS];
  double long_factor[E8C_MAX_ROPE_FACTORS];
} e8kv_fingerprint_pb;

/* Codec -> wire, every value explicit. fp should be valid (e8c_fingerprint_validate). */
void e8kv_fingerprint_to_pb(const e8c_fingerprint *fp, e8kv_fingerprint_pb *out);

/* Wire -> codec with the defaults above resolved, every field checked (the codec's own
 * validation included), then the fingerprint id computed into id (may be NULL).
 * Returns 0, or -1 with a one-line message naming the field in msg (msg_size bytes,
 * NUL-terminated; msg may be NULL). pb NULL: -1, "fingerprint is required". */
int e8kv_fingerprint_from_pb(const E8kv__V1__ModelFingerprint *pb, e8c_fingerprint *fp,
                             uint8_t id[E8C_ID_SIZE], char *msg, size_t msg_size);

/* The same from a serialized e8kv.v1.ModelFingerprint (size bytes), for callers without
 * protobuf-c, e.g. Python through ctypes on libe8kv.so: msg.SerializeToString() in, the codec
 * fingerprint and its id out, so every client resolves a fingerprint with this one code.
 * -1 with "fingerprint: ... does not parse" for bytes that are not the message. */
int e8kv_fingerprint_from_pb_bytes(const void *buf, size_t size, e8c_fingerprint *fp,
                                   uint8_t id[E8C_ID_SIZE], char *msg, size_t msg_size);

/* 1 if s[0..len) is well-formed UTF-8 (RFC 3629: no overlong forms, no surrogates, at most
 * U+10FFFF), else 0. Every proto3 `string` must be: protobuf-c does not check it on decode, but
 * other clients' decoders refuse a message holding a malformed one, so what e8kvd stores and
 * sends back in strings is checked with this first. */
int e8kv_utf8_valid(const char *s, size_t len);

#ifdef __cplusplus
}
#endif
#endif /* E8KV_FP_H */
