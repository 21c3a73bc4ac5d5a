/*
 * ctl_pbjson.h: protobuf-c message -> JSON, driven by the message descriptor,
 * so every field of a reply (kvstore.proto) shows in --json output without
 * hand-written per-field code. Names are the .proto field names; bytes become
 * lowercase hex; enums their value names ("DTYPE_FP16"); maps JSON objects;
 * unset sub-messages null; oneof members only when set.
 */
#ifndef CTL_PBJSON_H
#define CTL_PBJSON_H

#include <stddef.h>
#include <stdint.h>
#include <jansson.h>
#include <protobuf-c/protobuf-c.h>

/* New reference, or NULL when out of memory. msg NULL gives JSON null. */
json_t *ctl_pb_to_json(const ProtobufCMessage *msg);
/* Lowercase hex of n bytes into a new JSON string. */
json_t *ctl_json_hex(const uint8_t *p, size_t n);

#endif /* CTL_PBJSON_H */
