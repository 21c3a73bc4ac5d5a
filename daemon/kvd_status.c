/* kvd_status.c: kvd_status helpers and the translation of store errors into kvd codes. */
#include "daemon/kvd_status.h"

#include <stdio.h>
#include <string.h>

#include "store/e8store.h"

kvd_code kvd_fail(kvd_status *st, kvd_code code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(st->msg, sizeof st->msg, fmt, ap);
  va_end(ap);
  st->code = code;
  return code;
}

int kvd_error(kvd_status *st, kvd_code code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(st->msg, sizeof st->msg, fmt, ap);
  va_end(ap);
  st->code = code;
  return -1;
}

const char *kvd_code_name(kvd_code c) {
  static const char *const names[] = {
      "OK", "INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "ALREADY_EXISTS",
      "ABORTED", "RESOURCE_EXHAUSTED", "UNAUTHENTICATED", "PERMISSION_DENIED", "CANCELLED",
      "DEADLINE_EXCEEDED", "UNAVAILABLE", "DATA_LOSS", "UNIMPLEMENTED", "INTERNAL"};
  return (unsigned)c < sizeof names / sizeof names[0] ? names[c] : "UNKNOWN";
}

kvd_code kvd_status_from_store(kvd_status *st, int rc, const char *what) {
  kvd_code c;
  const char *why;
  switch (rc) {
    case E8S_OK: kvd_status_ok(st); return KVD_OK;
    case E8S_ERR_INVAL: c = KVD_INVALID; why = "invalid argument"; break;
    case E8S_ERR_NOTFOUND: c = KVD_NOT_FOUND; why = "not found"; break;
    case E8S_ERR_EXISTS: c = KVD_EXISTS; why = "already exists"; break;
    case E8S_ERR_CONFLICT: c = KVD_PRECONDITION; why = "conflicts with stored state"; break;
    case E8S_ERR_DATALOSS: c = KVD_DATA_LOSS; why = "stored bytes failed their CRC (quarantined)"; break;
    case E8S_ERR_IO: c = KVD_INTERNAL; why = "I/O error"; break;
    case E8S_ERR_NOSPC: c = KVD_RESOURCE; why = "disk full"; break;
    case E8S_ERR_MAPFULL: c = KVD_RESOURCE; why = "index map full"; break;
    case E8S_ERR_FULL: c = KVD_RESOURCE; why = "store over capacity and every chunk is pinned"; break;
    case E8S_ERR_QUOTA: c = KVD_RESOURCE; why = "namespace over quota and every chunk is pinned"; break;
    case E8S_ERR_READONLY: c = KVD_INTERNAL; why = "store is read-only"; break;
    case E8S_ERR_NOMEM: c = KVD_RESOURCE; why = "out of memory"; break;
    case E8S_ERR_BUSY: c = KVD_ABORTED; why = "chunk is in use"; break;
    default: c = KVD_INTERNAL; why = e8s_error_name(rc); break;
  }
  const char *d = e8s_last_error_detail();
  if (d && *d) return kvd_fail(st, c, "%s: %s (%s)", what, why, d);
  return kvd_fail(st, c, "%s: %s", what, why);
}

int kvd_store_error(kvd_status *st, int rc, const char *what) {
  kvd_status_from_store(st, rc, what);
  return -1;
}
