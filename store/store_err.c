/* store_err.c: the e8s_err space: names, the per-thread detail message, errno/LMDB mapping. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "store/store_int.h"

static _Thread_local char tl_detail[512];

int e8s_is_error(int rc) { return rc < 0; }

const char *e8s_error_name(int rc) {
  switch (rc) {
  case E8S_OK: return "E8S_OK";
  case E8S_ERR_INVAL: return "E8S_ERR_INVAL";
  case E8S_ERR_NOTFOUND: return "E8S_ERR_NOTFOUND";
  case E8S_ERR_EXISTS: return "E8S_ERR_EXISTS";
  case E8S_ERR_CONFLICT: return "E8S_ERR_CONFLICT";
  case E8S_ERR_DATALOSS: return "E8S_ERR_DATALOSS";
  case E8S_ERR_IO: return "E8S_ERR_IO";
  case E8S_ERR_NOSPC: return "E8S_ERR_NOSPC";
  case E8S_ERR_MAPFULL: return "E8S_ERR_MAPFULL";
  case E8S_ERR_FULL: return "E8S_ERR_FULL";
  case E8S_ERR_QUOTA: return "E8S_ERR_QUOTA";
  case E8S_ERR_READONLY: return "E8S_ERR_READONLY";
  case E8S_ERR_NOMEM: return "E8S_ERR_NOMEM";
  case E8S_ERR_LOCKED: return "E8S_ERR_LOCKED";
  case E8S_ERR_CORRUPT: return "E8S_ERR_CORRUPT";
  case E8S_ERR_RANGE: return "E8S_ERR_RANGE";
  case E8S_ERR_BUSY: return "E8S_ERR_BUSY";
  case E8S_ERR_UNSUPPORTED: return "E8S_ERR_UNSUPPORTED";
  default: return "E8S_ERR_UNKNOWN";
  }
}

const char *e8s_last_error_detail(void) { return tl_detail; }

int store_err(int rc, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(tl_detail, sizeof tl_detail, fmt, ap);
  va_end(ap);
  return rc;
}

int store_err_errno(int neg_errno) {
  switch (-neg_errno) {
  case 0: return E8S_OK;
  case ENOSPC: case EDQUOT: case EFBIG: return E8S_ERR_NOSPC;
  case ENOMEM: return E8S_ERR_NOMEM;
  case ENOENT: return E8S_ERR_NOTFOUND;
  case EROFS: case EACCES: case EPERM: return E8S_ERR_READONLY;
  default: return E8S_ERR_IO;
  }
}

int store_err_mdb(int mdb_rc, const char *what) {
  int rc;
  switch (mdb_rc) {
  case MDB_SUCCESS: return E8S_OK;
  case MDB_NOTFOUND: rc = E8S_ERR_NOTFOUND; break;
  case MDB_MAP_FULL: return STORE_MAPFULL_RETRY;
  case MDB_CORRUPTED: case MDB_PAGE_NOTFOUND: case MDB_INVALID: case MDB_VERSION_MISMATCH:
    rc = E8S_ERR_CORRUPT; break;
  case ENOMEM: rc = E8S_ERR_NOMEM; break;
  case ENOSPC: rc = E8S_ERR_NOSPC; break;
  case EACCES: case EROFS: rc = E8S_ERR_READONLY; break;
  default: rc = mdb_rc > 0 && mdb_rc < 1000 ? store_err_errno(-mdb_rc) : E8S_ERR_IO; break;
  }
  return store_err(rc, "index: %s: %s", what, mdb_strerror(mdb_rc));
}
