/* kvd_status.h: the outcome of an RPC inside e8kvd, independent of gRPC.
 *
 * Handlers return a kvd_status: a code from the kvd_code list (the categories of the gRPC
 * status space that e8kvd uses) and a one-line message a person understands. Exactly one
 * function turns a kvd_code into a gRPC status code: kvd_grpc_status_of() in kvd_grpc.c.
 * Store and codec error codes become kvd codes in kvd_status.c only (kvd_status_from_store,
 * kvd_status_from_codec), so every error path reads the same everywhere.
 */
#ifndef KVD_STATUS_H
#define KVD_STATUS_H

#include <stdarg.h>

typedef enum kvd_code {
  KVD_OK = 0,
  KVD_INVALID,        /* the request is wrong: fix the request */
  KVD_NOT_FOUND,      /* unknown session / chunk in the caller's namespace */
  KVD_PRECONDITION,   /* request fine, but stored state disagrees (fingerprint, position) */
  KVD_EXISTS,         /* create of an existing session */
  KVD_ABORTED,        /* concurrent writer of the same session: retry */
  KVD_RESOURCE,       /* size limit, capacity, quota, disk full */
  KVD_UNAUTHENTICATED,/* missing or unknown bearer token */
  KVD_PERMISSION,     /* admin call without admin token */
  KVD_CANCELLED,      /* the client cancelled or the call broke */
  KVD_DEADLINE,       /* the call's deadline passed */
  KVD_UNAVAILABLE,    /* shutting down */
  KVD_DATA_LOSS,      /* a stored record failed its CRC */
  KVD_UNIMPLEMENTED,  /* unknown method */
  KVD_INTERNAL        /* a bug or an I/O error of the daemon itself */
} kvd_code;

#define KVD_MSG_MAX 512

typedef struct kvd_status {
  kvd_code code;
  char msg[KVD_MSG_MAX];
} kvd_status;

/* Sets st and returns st->code (so `return kvd_fail(st, KVD_INVALID, "...")` reads well). */
kvd_code kvd_fail(kvd_status *st, kvd_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The same, returning -1 (for functions that return 0 / -1). */
int kvd_error(kvd_status *st, kvd_code code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static inline void kvd_status_ok(kvd_status *st) { st->code = KVD_OK; st->msg[0] = 0; }

/* Static name, e.g. "INVALID_ARGUMENT" (the gRPC name of the category). */
const char *kvd_code_name(kvd_code c);

/* Maps a libe8store error (e8s_err, negative) to a status; `what` names the operation, the
 * store's e8s_last_error_detail() is appended. Returns the code. */
kvd_code kvd_status_from_store(kvd_status *st, int rc, const char *what);

/* The same, returning -1. */
int kvd_store_error(kvd_status *st, int rc, const char *what);

#endif
