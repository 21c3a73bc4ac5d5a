/* kvd_fp.h: model fingerprints between the wire (e8kv.v1.ModelFingerprint) and the store
 * (a registered blob under its 32-byte id).
 *
 * The wire <-> codec conversion and its default rules are proto/e8kv_fp.h (shared with the
 * clients); the fingerprint id is the codec's (e8c_fingerprint_id: SHA-256 of its canonical
 * serialization) after every default was resolved. The store keeps the canonical
 * serialization (e8c_fingerprint_serialize) as the fingerprint's blob.
 */
#ifndef KVD_FP_H
#define KVD_FP_H

#include <stdint.h>

#include "codec/e8codec.h"
#include "daemon/kvd_status.h"
#include "e8kv/v1/kvstore.pb-c.h"
#include "proto/e8kv_fp.h"
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

/* First 8 bytes of an id as 16 hex digits (for messages). */
const char *kvd_hex8(const uint8_t *id, char out[17]);

#endif
