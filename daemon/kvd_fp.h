/* kvd_fp.h: model fingerprints between the wire (e8kv.v1.ModelFingerprint), the codec
 * (e8c_fingerprint) and the store (a registered blob under its 32-byte id).
 *
 * The fingerprint id is the codec's (e8c_fingerprint_id: SHA-256 of its canonical
 * serialization) after every default of the wire message was resolved, so 0 and the
 * explicit default give the same id. The store keeps the canonical serialization
 * (e8c_fingerprint_serialize) as the fingerprint's blob.
 */
#ifndef KVD_FP_H
#define KVD_FP_H

#include <stdint.h>

#include "codec/e8codec.h"
#include "daemon/kvd_status.h"
#include "e8kv/v1/kvstore.pb-c.h"
#include "store/e8store.h"

typedef struct kvd_fp {
  e8c_fingerprint fp;
  uint8_t id[E8C_ID_SIZE];
} kvd_fp;

/* Wire -> codec, with defaults resolved and every field checked (the codec's validation
 * included). INVALID with a message naming the field on error. pb may be NULL (then INVALID:
 * "fingerprint is required"). */
int kvd_fp_resolve(const E8kv__V1__ModelFingerprint *pb, kvd_fp *out, kvd_status *st);

/* Registers the fingerprint's blob in the store (idempotent). */
int kvd_fp_register(e8s_store *s, const kvd_fp *f, kvd_status *st);
/* Reads a registered fingerprint back. NOT_FOUND / INTERNAL on error. */
int kvd_fp_load(e8s_store *s, const uint8_t id[E8C_ID_SIZE], kvd_fp *out, kvd_status *st);

/* Storage for a wire message built from a codec fingerprint (no allocation). */
typedef struct kvd_fp_pb {
  E8kv__V1__ModelFingerprint m;
  E8kv__V1__RopeConfig rope;
  E8kv__V1__CodecConfig codec;
  char model_id[E8C_MODEL_ID_MAX];
  char preset[E8C_PRESET_NAME_MAX];
  uint32_t protected_layers[E8C_MAX_LAYERS];
  double short_factor[E8C_MAX_ROPE_FACTORS], long_factor[E8C_MAX_ROPE_FACTORS];
} kvd_fp_pb;

/* Codec -> wire (all values explicit). out->m is the message; out must not move while used. */
void kvd_fp_to_pb(const e8c_fingerprint *fp, kvd_fp_pb *out);

/* First 8 bytes of an id as 16 hex digits (for messages). */
const char *kvd_hex8(const uint8_t *id, char out[17]);

#endif
