/* kvd_fp.c: fingerprints between the wire and the store (see kvd_fp.h). */
#include "daemon/kvd_fp.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int kvd_fp_resolve(const E8kv__V1__ModelFingerprint *pb, kvd_fp *out, kvd_status *st) {
  char msg[320];
  memset(out, 0, sizeof *out);
  if (e8kv_fingerprint_from_pb(pb, &out->fp, out->id, msg, sizeof msg) != 0)
    return kvd_error(st, KVD_INVALID, "%s", msg);
  return 0;
}

int kvd_fp_register(e8s_store *s, const kvd_fp *f, kvd_status *st) {
  uint8_t buf[E8S_FP_BLOB_MAX];
  int64_t n = e8c_fingerprint_serialize(&f->fp, buf, sizeof buf);
  if (e8c_is_error(n))
    return kvd_error(st, KVD_INTERNAL, "fingerprint serialization: %s", e8c_error_string(n));
  int rc = e8s_fp_register(s, f->id, buf, (size_t)n);
  if (rc != E8S_OK) return kvd_store_error(st, rc, "register fingerprint");
  return 0;
}

int kvd_fp_load(e8s_store *s, const uint8_t id[E8C_ID_SIZE], kvd_fp *out, kvd_status *st) {
  uint8_t buf[E8S_FP_BLOB_MAX];
  size_t n = 0;
  int rc = e8s_fp_get(s, id, buf, sizeof buf, &n);
  if (rc != E8S_OK) return kvd_store_error(st, rc, "read fingerprint");
  memset(out, 0, sizeof *out);
  int64_t r = e8c_fingerprint_parse(buf, n, &out->fp);
  if (e8c_is_error(r))
    return kvd_error(st, KVD_DATA_LOSS, "stored fingerprint does not parse: %s",
                    e8c_error_string(r));
  memcpy(out->id, id, E8C_ID_SIZE);
  return 0;
}

const char *kvd_hex8(const uint8_t *id, char out[17]) {
  for (int i = 0; i < 8; i++) snprintf(out + 2 * i, 3, "%02x", id[i]);
  return out;
}
