/*
 * e8kv_err.c: libe8kv's error space: names of codes, and kvc_fail, the one
 * place that writes an e8kv_error.
 */
#include <stdarg.h>
#include <stdio.h>

#include "clients/c/e8kv_int.h"

int e8kv_is_error(e8kv_status s) { return s != E8KV_OK; }

const char *e8kv_status_name(e8kv_status s) {
  static const char *const grpc_names[] = {
      "OK",        "CANCELLED",          "UNKNOWN",        "INVALID_ARGUMENT",
      "DEADLINE_EXCEEDED", "NOT_FOUND",  "ALREADY_EXISTS", "PERMISSION_DENIED",
      "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
      "UNIMPLEMENTED", "INTERNAL",       "UNAVAILABLE",    "DATA_LOSS",
      "UNAUTHENTICATED"};
  if ((unsigned)s < sizeof grpc_names / sizeof grpc_names[0]) return grpc_names[s];
  switch (s) {
    case E8KV_E_USAGE: return "E_USAGE";
    case E8KV_E_NOMEM: return "E_NOMEM";
    case E8KV_E_PROTOCOL: return "E_PROTOCOL";
    case E8KV_E_CODEC: return "E_CODEC";
    case E8KV_E_IO: return "E_IO";
    case E8KV_E_ABORTED_BY_CALLER: return "E_ABORTED_BY_CALLER";
    default: return "UNKNOWN_CODE";
  }
}

e8kv_status kvc_fail(e8kv_error *err, e8kv_status code, const char *fmt, ...) {
  if (err) {
    va_list ap;
    va_start(ap, fmt);
    err->code = code;
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
  }
  return code;
}
