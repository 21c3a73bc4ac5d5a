/* kvd_auth.h: bearer tokens -> namespaces.
 *
 * The tokens file (--tokens-file) has one entry per line: `<token> <namespace> [admin]`;
 * blank lines and lines starting with '#' are ignored. Tokens are 16..512 printable ASCII
 * bytes without spaces; namespaces 1..128 bytes of [A-Za-z0-9._-]. One namespace may have
 * several tokens. Only SHA-256 digests of the tokens are kept in memory, and a presented
 * token is compared against every digest in constant time.
 * Without a tokens file (open mode) every call is in namespace "default" with admin rights,
 * and an `authorization` header, if any, is ignored.
 *
 * Thread safety: read-only after kvd_auth_load and kvd_auth_bind; any thread may check.
 */
#ifndef KVD_AUTH_H
#define KVD_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "daemon/kvd_status.h"

#define KVD_NS_MAX 128

typedef struct kvd_auth kvd_auth;

/* Who is calling: the namespace, its store id and salt, and the admin right. */
typedef struct kvd_principal {
  const char *ns;          /* namespace name (lives as long as the kvd_auth) */
  uint32_t ns_id;          /* store namespace id (kvd_auth_bind) */
  const uint8_t *salt;     /* 32-byte namespace salt (kvd_auth_bind) */
  int admin;               /* 1: may call Verify/Compact and see store-wide stats */
} kvd_principal;

/* Loads `path` ("" = open mode). On error writes "path:line: reason" to err, returns -1. */
int kvd_auth_load(const char *path, kvd_auth **out, char *err, size_t cap);
void kvd_auth_free(kvd_auth *a);

/* The distinct namespaces (for the daemon to create them in the store at start). */
size_t kvd_auth_n_namespaces(const kvd_auth *a);
const char *kvd_auth_namespace(const kvd_auth *a, size_t i);
/* Records the store id and salt of namespace i. */
void kvd_auth_bind(kvd_auth *a, size_t i, uint32_t ns_id, const uint8_t salt[32]);

/* Checks an `authorization` metadata value (value may be NULL when absent; len bytes, not
 * NUL-terminated). On success fills p and returns 0; else UNAUTHENTICATED in st, -1. */
int kvd_auth_check(const kvd_auth *a, const char *value, size_t len, kvd_principal *p,
                   kvd_status *st);

#endif
