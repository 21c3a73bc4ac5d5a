/* kvd_auth.c: tokens file parsing and bearer token checks (see kvd_auth.h). */
#include "daemon/kvd_auth.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>

typedef struct kvd_ns {
  char name[KVD_NS_MAX + 1];
  uint32_t ns_id;
  uint8_t salt[32];
} kvd_ns;

typedef struct kvd_token {
  uint8_t digest[SHA256_DIGEST_LENGTH];
  size_t ns;   /* index into namespaces */
  int admin;
} kvd_token;

struct kvd_auth {
  int open_mode;
  kvd_ns *nss;
  size_t n_ns;
  kvd_token *toks;
  size_t n_toks;
};

static int ns_name_ok(const char *s) {
  size_t n = strlen(s);
  if (n < 1 || n > KVD_NS_MAX) return 0;
  for (; *s; s++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
          *s == '.' || *s == '_' || *s == '-'))
      return 0;
  return 1;
}

static size_t ns_index(kvd_auth *a, const char *name) {
  for (size_t i = 0; i < a->n_ns; i++)
    if (strcmp(a->nss[i].name, name) == 0) return i;
  kvd_ns *n = realloc(a->nss, (a->n_ns + 1) * sizeof *n);
  if (!n) return (size_t)-1;
  a->nss = n;
  memset(&n[a->n_ns], 0, sizeof *n);
  snprintf(n[a->n_ns].name, sizeof n[a->n_ns].name, "%s", name);
  return a->n_ns++;
}

static int add_line(kvd_auth *a, char *line, char *err, size_t cap, const char *path,
                    int lineno) {
  char *save = NULL;
  char *tok = strtok_r(line, " \t\r\n", &save);
  if (!tok || *tok == '#') return 0;
  char *ns = strtok_r(NULL, " \t\r\n", &save);
  char *flag = strtok_r(NULL, " \t\r\n", &save);
  char *extra = strtok_r(NULL, " \t\r\n", &save);
  size_t tl = strlen(tok);
  const char *why = NULL;
  if (!ns) why = "expected '<token> <namespace> [admin]'";
  else if (tl < 16 || tl > 512) why = "token must be 16..512 bytes";
  else if (!ns_name_ok(ns)) why = "namespace must be 1..128 bytes of [A-Za-z0-9._-]";
  else if (flag && strcmp(flag, "admin") != 0) why = "third field can only be 'admin'";
  else if (extra) why = "too many fields";
  if (why) {
    snprintf(err, cap, "%s:%d: %s", path, lineno, why);
    return -1;
  }
  kvd_token t = {.admin = flag != NULL};
  SHA256((const unsigned char *)tok, tl, t.digest);
  for (size_t i = 0; i < a->n_toks; i++)
    if (memcmp(a->toks[i].digest, t.digest, sizeof t.digest) == 0) {
      snprintf(err, cap, "%s:%d: token listed twice", path, lineno);
      return -1;
    }
  t.ns = ns_index(a, ns);
  kvd_token *nt = realloc(a->toks, (a->n_toks + 1) * sizeof *nt);
  if (t.ns == (size_t)-1 || !nt) {
    snprintf(err, cap, "out of memory");
    return -1;
  }
  a->toks = nt;
  a->toks[a->n_toks++] = t;
  return 0;
}

int kvd_auth_load(const char *path, kvd_auth **out, char *err, size_t cap) {
  kvd_auth *a = calloc(1, sizeof *a);
  if (!a) return -1;
  if (!path || !*path) {
    a->open_mode = 1;
    ns_index(a, "default");
    *out = a;
    return 0;
  }
  FILE *f = fopen(path, "r");
  if (!f) {
    snprintf(err, cap, "%s: %s", path, strerror(errno));
    free(a);
    return -1;
  }
  char line[2048];
  int lineno = 0, rc = 0;
  while (rc == 0 && fgets(line, sizeof line, f)) {
    lineno++;
    rc = add_line(a, line, err, cap, path, lineno);
  }
  fclose(f);
  if (rc == 0 && a->n_toks == 0) {
    snprintf(err, cap, "%s: no tokens (a tokens file with no entry would refuse every call)",
             path);
    rc = -1;
  }
  if (rc != 0) { kvd_auth_free(a); return -1; }
  *out = a;
  return 0;
}

void kvd_auth_free(kvd_auth *a) {
  if (!a) return;
  OPENSSL_cleanse(a->toks, a->n_toks * sizeof *a->toks);
  free(a->toks);
  free(a->nss);
  free(a);
}

size_t kvd_auth_n_namespaces(const kvd_auth *a) { return a->n_ns; }
const char *kvd_auth_namespace(const kvd_auth *a, size_t i) { return a->nss[i].name; }

void kvd_auth_bind(kvd_auth *a, size_t i, uint32_t ns_id, const uint8_t salt[32]) {
  a->nss[i].ns_id = ns_id;
  memcpy(a->nss[i].salt, salt, 32);
}

static void principal_of(const kvd_auth *a, size_t ns, int admin, kvd_principal *p) {
  p->ns = a->nss[ns].name;
  p->ns_id = a->nss[ns].ns_id;
  p->salt = a->nss[ns].salt;
  p->admin = admin;
}

int kvd_auth_check(const kvd_auth *a, const char *value, size_t len, kvd_principal *p,
                   kvd_status *st) {
  if (a->open_mode) {
    principal_of(a, 0, 1, p);
    return 0;
  }
  if (!value) {
    kvd_fail(st, KVD_UNAUTHENTICATED, "missing 'authorization: Bearer <token>' metadata: this "
             "e8kvd has a --tokens-file; give the client a token from it (e8kvctl --token-file "
             "FILE or $E8KV_TOKEN, libe8kv e8kv_options.token, e8kv.Client(address, token=...))");
    return -1;
  }
  if (len < 7 || strncasecmp(value, "Bearer ", 7) != 0) {
    kvd_fail(st, KVD_UNAUTHENTICATED, "authorization metadata must be 'Bearer <token>'");
    return -1;
  }
  uint8_t d[SHA256_DIGEST_LENGTH];
  SHA256((const unsigned char *)value + 7, len - 7, d);
  size_t hit = (size_t)-1;
  for (size_t i = 0; i < a->n_toks; i++) /* no early exit: same time for every token */
    if (CRYPTO_memcmp(a->toks[i].digest, d, sizeof d) == 0) hit = i;
  if (hit == (size_t)-1) {
    kvd_fail(st, KVD_UNAUTHENTICATED, "unknown bearer token");
    return -1;
  }
  principal_of(a, a->toks[hit].ns, a->toks[hit].admin, p);
  return 0;
}
