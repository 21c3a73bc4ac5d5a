/* kvd_config.c: the configuration table of e8kvd, its parser and its help printers.
 *
 * g_table below IS the configuration: adding a setting = adding one row (and a field in
 * kvd_config). Parsing uses getopt_long with options built from the rows.
 */
#include "daemon/kvd_config.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include "proto/e8kv_addr.h"

typedef enum kvd_ctype { CT_STR, CT_SIZE, CT_U32 } kvd_ctype;

typedef struct kvd_crow {
  const char *name;    /* flag without the leading "--" */
  kvd_ctype type;
  size_t offset;       /* into kvd_config */
  size_t str_cap;      /* CT_STR: bytes of the char array */
  const char *unit;    /* shown in help */
  const char *def;     /* default, as text (parsed like a flag value) */
  uint64_t min, max;   /* bounds (numbers); CT_STR: ignored */
  const char *choices; /* CT_STR: "a|b|c" allowed values, or NULL for free text */
  const char *desc;
} kvd_crow;

#define OFF(f) offsetof(kvd_config, f)
#define CAP(f) sizeof(((kvd_config *)0)->f)
#define KiB (1024ull)
#define MiB (1024ull * 1024)
#define GiB (1024ull * 1024 * 1024)

static const kvd_crow g_table[] = {
    {"data-dir", CT_STR, OFF(data_dir), CAP(data_dir), "path", "./e8kv-data", 0, 0, NULL,
     "Store directory (segment files and LMDB index); created if missing. One e8kvd per "
     "directory."},
    {"listen", CT_STR, OFF(listen), CAP(listen), "addresses", E8KV_DEFAULT_ADDR, 0, 0, NULL,
     "Comma-separated gRPC listen addresses: host:port (TCP, IPv6 as [::1]:port) or "
     "unix:/path/to.sock (at most 8). A unix socket's directory must exist and be writable "
     "(e8kvd does not create it)."},
    {"capacity-bytes", CT_SIZE, OFF(capacity_bytes), 0, "bytes", "0", 0, UINT64_MAX, NULL,
     "Store byte budget (record headers + payloads); unpinned chunks are evicted LRU beyond "
     "it. 0 = unlimited."},
    {"segment-bytes", CT_SIZE, OFF(segment_bytes), 0, "bytes", "1G", 1 * MiB, 64 * GiB, NULL,
     "Segment file size after which a new segment file is started."},
    {"threads", CT_U32, OFF(threads), 0, "threads", "8", 1, 256, NULL,
     "gRPC worker threads of the streaming calls (PutChunks, GetChunks) = those served at the "
     "same time (others wait in the queue)."},
    {"unary-threads", CT_U32, OFF(unary_threads), 0, "threads", "4", 1, 256, NULL,
     "gRPC worker threads of all other calls (Lookup, sessions, stats, admin, health): a pool "
     "of their own, so streams waiting on slow peers never hold them up."},
    {"max-message-bytes", CT_SIZE, OFF(max_message_bytes), 0, "bytes", "64M", 64 * KiB,
     1 * GiB, NULL,
     "Largest gRPC message received or sent; larger ones fail with RESOURCE_EXHAUSTED."},
    {"max-chunk-bytes", CT_SIZE, OFF(max_chunk_bytes), 0, "bytes", "256M", 4 * KiB, 16 * GiB,
     NULL, "Largest data of one chunk in PutChunks (all its pieces together, encoded or raw)."},
    {"max-chunks-per-call", CT_U32, OFF(max_chunks_per_call), 0, "chunks", "65536", 1,
     16777216, NULL, "Most chunks one PutChunks or GetChunks call may move (and one Lookup may match)."},
    {"max-lookup-tokens", CT_U32, OFF(max_lookup_tokens), 0, "tokens", "1048576", 1,
     268435456, NULL, "Most token ids in one Lookup or AppendSession request."},
    {"get-piece-bytes", CT_SIZE, OFF(get_piece_bytes), 0, "bytes", "3M", 4 * KiB, 2 * GiB,
     NULL,
     "Data bytes per GetChunks message when the client does not ask (kept under the 4 MiB "
     "default receive limit of gRPC clients)."},
    {"put-batch-bytes", CT_SIZE, OFF(put_batch_bytes), 0, "bytes", "16M", 64 * KiB, 4 * GiB,
     NULL,
     "Encoded bytes a PutChunks call buffers before one store write (one fdatasync); bounds "
     "memory per call."},
    {"tokens-file", CT_STR, OFF(tokens_file), CAP(tokens_file), "path", "", 0, 0, NULL,
     "Bearer tokens file: lines 'TOKEN NAMESPACE [admin]', '#' comments. Unset: no "
     "authentication, everything in namespace 'default' with admin rights."},
    {"tls-cert", CT_STR, OFF(tls_cert), CAP(tls_cert), "path", "", 0, 0, NULL,
     "PEM certificate chain; with --tls-key, every TCP address serves TLS."},
    {"tls-key", CT_STR, OFF(tls_key), CAP(tls_key), "path", "", 0, 0, NULL,
     "PEM private key of --tls-cert."},
    {"log-level", CT_STR, OFF(log_level), CAP(log_level), "level", "info", 0, 0,
     "error|warn|info|debug", "Least severe log lines written (one logfmt line per event, stderr)."},
    {"metrics-listen", CT_STR, OFF(metrics_listen), CAP(metrics_listen), "host:port",
     "127.0.0.1:9464", 0, 0, NULL,
     "Prometheus text endpoint (GET /metrics); '' turns it off; port 0 picks a free port "
     "(logged)."},
    {"shutdown-grace-ms", CT_U32, OFF(shutdown_grace_ms), 0, "ms", "10000", 0, 3600000, NULL,
     "After SIGTERM/SIGINT, in-flight calls may finish this long; then they are cancelled."},
    {"max-call-ms", CT_U32, OFF(max_call_ms), 0, "ms", "600000", 1000, 86400000, NULL,
     "Hard limit on one call's duration (besides the client's deadline): a call still running "
     "then, e.g. a reader that stopped reading, is cancelled with DEADLINE_EXCEEDED."},
    {"stall-ms", CT_U32, OFF(stall_ms), 0, "ms", "60000", 1000, 86400000, NULL,
     "Longest wait on a call's peer (its next request message, or one response message "
     "written): a client that stops sending or reading is cancelled with DEADLINE_EXCEEDED "
     "after this, so it holds a worker no longer."},
    {"lookup-lease-ms", CT_U32, OFF(lookup_lease_ms), 0, "ms", "30000", 100, 3600000, NULL,
     "How long a Lookup pins the chunks it matched (so a GetChunks that follows cannot lose "
     "them to eviction), unless GetChunks' release_lease ends the lease sooner."},
    {"max-purge-pending", CT_U32, OFF(max_purge_pending), 0, "chunks", "262144", 1, 16777216,
     NULL,
     "Most chunks of one namespace that may wait for a read or a lookup lease to end before "
     "they are purged (DeleteSession purge_chunks, PurgeUnlisted); past it such a purge fails "
     "with RESOURCE_EXHAUSTED. Per namespace, so one tenant cannot fill another's; 36 bytes "
     "each."},
    {"io-engine", CT_STR, OFF(io_engine), CAP(io_engine), "engine", "auto", 0, 0,
     "auto|uring|pwrite", "Store write engine: io_uring, pwrite+fdatasync, or auto (io_uring "
     "when the kernel allows it)."},
};
#define N_ROWS (sizeof g_table / sizeof g_table[0])

int kvd_config_parse_size(const char *s, uint64_t *out) {
  if (!s || !*s || *s == '-') return -1;
  errno = 0;
  char *end;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno || end == s) return -1;
  unsigned shift = 0;
  switch (toupper((unsigned char)*end)) {
    case 0: break;
    case 'K': shift = 10; end++; break;
    case 'M': shift = 20; end++; break;
    case 'G': shift = 30; end++; break;
    case 'T': shift = 40; end++; break;
    case 'B': break;
    default: return -1;
  }
  if (shift && (*end == 'i' || *end == 'I')) end++;
  if (*end == 'B' || *end == 'b') end++;
  if (*end) return -1;
  if (shift && v > (UINT64_MAX >> shift)) return -1;
  *out = (uint64_t)v << shift;
  return 0;
}

static int choice_ok(const char *choices, const char *v) {
  size_t n = strlen(v);
  for (const char *p = choices; p && *p;) {
    const char *bar = strchr(p, '|');
    size_t len = bar ? (size_t)(bar - p) : strlen(p);
    if (len == n && strncmp(p, v, n) == 0) return 1;
    p = bar ? bar + 1 : NULL;
  }
  return 0;
}

static int row_set(kvd_config *cfg, const kvd_crow *r, const char *v, FILE *err) {
  char *base = (char *)cfg + r->offset;
  if (r->type == CT_STR) {
    if (strlen(v) >= r->str_cap) {
      fprintf(err, "e8kvd: --%s: value longer than %zu bytes\n", r->name, r->str_cap - 1);
      return -1;
    }
    if (r->choices && !choice_ok(r->choices, v)) {
      fprintf(err, "e8kvd: --%s: '%s' is not one of %s\n", r->name, v, r->choices);
      return -1;
    }
    memcpy(base, v, strlen(v) + 1);
    return 0;
  }
  uint64_t x;
  if (kvd_config_parse_size(v, &x) != 0 || (r->type == CT_U32 && strpbrk(v, "KMGTkmgt"))) {
    fprintf(err, "e8kvd: --%s: '%s' is not a %s\n", r->name, v,
            r->type == CT_SIZE ? "size (e.g. 64M)" : "non-negative integer");
    return -1;
  }
  if (x < r->min || x > r->max) {
    fprintf(err, "e8kvd: --%s: %s is out of bounds [%" PRIu64 ", %" PRIu64 "] %s\n", r->name,
            v, r->min, r->max, r->unit);
    return -1;
  }
  if (r->type == CT_SIZE) memcpy(base, &x, sizeof x);
  else { uint32_t y = (uint32_t)x; memcpy(base, &y, sizeof y); }
  return 0;
}

void kvd_config_defaults(kvd_config *cfg) {
  memset(cfg, 0, sizeof *cfg);
  for (size_t i = 0; i < N_ROWS; i++)
    if (row_set(cfg, &g_table[i], g_table[i].def, stderr) != 0) abort(); /* table bug */
}

/* A size as people write it: 64M, 1G, 65536; UINT64_MAX = "max". */
static void size_text(uint64_t v, kvd_ctype t, char *out, size_t cap) {
  static const char suf[] = "KMGT";
  if (v == UINT64_MAX) { snprintf(out, cap, "max"); return; }
  int k = -1;
  while (t == CT_SIZE && k < 3 && v >= 1024 && v % 1024 == 0) { v /= 1024; k++; }
  if (k >= 0) snprintf(out, cap, "%" PRIu64 "%c", v, suf[k]);
  else snprintf(out, cap, "%" PRIu64, v);
}

static void bounds_text(const kvd_crow *r, char *out, size_t cap) {
  if (r->type == CT_STR) { snprintf(out, cap, "%s", r->choices ? r->choices : ""); return; }
  char a[24], b[24];
  size_text(r->min, r->type, a, sizeof a);
  size_text(r->max, r->type, b, sizeof b);
  snprintf(out, cap, "%s..%s", a, b);
}

void kvd_config_print_help(FILE *f, const char *argv0) {
  fprintf(f, "usage: %s [--flag=value ...]\n"
             "e8kvd serves the e8kv.v1.KVStore gRPC API (and grpc.health.v1.Health) over a\n"
             "local e8kv store. Sizes take K/M/G/T suffixes (powers of 1024).\n\n", argv0);
  for (size_t i = 0; i < N_ROWS; i++) {
    const kvd_crow *r = &g_table[i];
    char b[64];
    bounds_text(r, b, sizeof b);
    fprintf(f, "  --%-22s %s (default: '%s'%s%s)\n      %s\n", r->name, r->unit, r->def,
            *b ? ", bounds: " : "", b, r->desc);
  }
  fprintf(f, "  -h, --help / --help-markdown / --version\n"
             "\nSignals: SIGTERM or SIGINT stop accepting calls, let in-flight calls finish\n"
             "(--shutdown-grace-ms), close the store and exit 0.\n");
}

void kvd_config_print_markdown(FILE *f) {
  fprintf(f, "| flag | unit | default | bounds | description |\n"
             "| --- | --- | --- | --- | --- |\n");
  for (size_t i = 0; i < N_ROWS; i++) {
    const kvd_crow *r = &g_table[i];
    char b[64];
    bounds_text(r, b, sizeof b);
    for (char *p = b; *p; p++) if (*p == '|') *p = '/';
    char def[64];
    snprintf(def, sizeof def, *r->def ? "`%s`" : "(none)", r->def);
    fprintf(f, "| `--%s` | %s | %s | %s | %s |\n", r->name, r->unit, def, b, r->desc);
  }
}

/* 0 when a is an address e8kvd listens on (proto/e8kv_addr.h: the rule the clients share);
 * else the reason on err. */
static int check_addr(const char *a, FILE *err) {
  char why[256];
  if (e8kv_addr_check(a, why, sizeof why) == 0) return 0;
  fprintf(err, "e8kvd: --listen \"%s\": %s\n", a, why);
  return -1;
}

static int split_listen(kvd_config *cfg, FILE *err) {
  char *copy = strdup(cfg->listen), *save = NULL;
  if (!copy) return -1;
  for (char *t = strtok_r(copy, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
    while (*t == ' ') t++;
    if (!*t) continue;
    if (cfg->n_listen == KVD_MAX_LISTEN) {
      fprintf(err, "e8kvd: --listen: more than %d addresses\n", KVD_MAX_LISTEN);
      free(copy);
      return -1;
    }
    /* "unix:/a,/b.sock" is one socket path with a comma (which the rule refuses, with its
     * reason), not the list "unix:/a" and "/b.sock" ("has no port" would puzzle) */
    const char *prev = cfg->n_listen ? cfg->listen_addrs[cfg->n_listen - 1] : NULL;
    if (prev && strncmp(prev, "unix:", 5) == 0 && e8kv_addr_check(t, NULL, 0) != 0) {
      char *joined = NULL;
      if (asprintf(&joined, "%s,%s", prev, t) > 0) check_addr(joined, err);
      free(joined);
      free(copy);
      return -1;
    }
    if (check_addr(t, err) != 0) {
      free(copy);
      return -1;
    }
    cfg->listen_addrs[cfg->n_listen++] = strdup(t);
  }
  free(copy);
  if (cfg->n_listen == 0) return check_addr("", err); /* "empty address" and the forms */
  return 0;
}

int kvd_config_hostport(const char *hp, struct sockaddr_storage *ss, socklen_t *sl) {
  char host[256];
  const char *colon = strrchr(hp, ':');
  if (!colon || (size_t)(colon - hp) >= sizeof host) return -1;
  snprintf(host, sizeof host, "%.*s", (int)(colon - hp), hp);
  char *end;
  long port = strtol(colon + 1, &end, 10);
  if (*end || port < 0 || port > 65535) return -1;
  memset(ss, 0, sizeof *ss);
  size_t hl = strlen(host);
  if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
    struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;
    host[hl - 1] = 0;
    if (inet_pton(AF_INET6, host + 1, &a->sin6_addr) != 1) return -1;
    a->sin6_family = AF_INET6;
    a->sin6_port = htons((uint16_t)port);
    *sl = sizeof *a;
    return 0;
  }
  struct sockaddr_in *a = (struct sockaddr_in *)ss;
  if (strcmp(host, "localhost") == 0) snprintf(host, sizeof host, "127.0.0.1");
  if (inet_pton(AF_INET, host, &a->sin_addr) != 1) return -1;
  a->sin_family = AF_INET;
  a->sin_port = htons((uint16_t)port);
  *sl = sizeof *a;
  return 0;
}

static int check_cross(kvd_config *cfg, FILE *err) {
  if (!*cfg->tls_cert != !*cfg->tls_key) {
    fprintf(err, "e8kvd: --tls-cert and --tls-key must be given together\n");
    return -1;
  }
  if (cfg->get_piece_bytes + 64 * KiB > cfg->max_message_bytes) {
    fprintf(err, "e8kvd: --get-piece-bytes (%" PRIu64 ") must be at least 64 KiB below "
                 "--max-message-bytes (%" PRIu64 ")\n", cfg->get_piece_bytes,
            cfg->max_message_bytes);
    return -1;
  }
  if (!*cfg->data_dir) {
    fprintf(err, "e8kvd: --data-dir must not be empty\n");
    return -1;
  }
  struct sockaddr_storage ss;
  socklen_t sl;
  if (*cfg->metrics_listen && kvd_config_hostport(cfg->metrics_listen, &ss, &sl) != 0) {
    /* here, not when the server starts: a typo then had already opened the store */
    fprintf(err, "e8kvd: --metrics-listen \"%s\": use IPv4:port, localhost:port or "
                 "[IPv6]:port (port 0 picks a free one); '' turns metrics off\n",
            cfg->metrics_listen);
    return -1;
  }
  return split_listen(cfg, err);
}

kvd_config_action kvd_config_parse(kvd_config *cfg, int argc, char **argv, FILE *out,
                                   FILE *err) {
  kvd_config_defaults(cfg);
  struct option opts[N_ROWS + 4];
  for (size_t i = 0; i < N_ROWS; i++)
    opts[i] = (struct option){g_table[i].name, required_argument, NULL, 256 + (int)i};
  opts[N_ROWS] = (struct option){"help", no_argument, NULL, 1000};
  opts[N_ROWS + 1] = (struct option){"help-markdown", no_argument, NULL, 1001};
  opts[N_ROWS + 2] = (struct option){"version", no_argument, NULL, 1002};
  opts[N_ROWS + 3] = (struct option){NULL, 0, NULL, 0};
  optind = 1;
  opterr = 0;
  for (;;) {
    int c = getopt_long(argc, argv, "h", opts, NULL);
    if (c == -1) break;
    if (c == 1000 || c == 'h') { kvd_config_print_help(out, argv[0]); return KVD_CONFIG_EXIT_OK; }
    if (c == 1001) { kvd_config_print_markdown(out); return KVD_CONFIG_EXIT_OK; }
    if (c == 1002) {
      fprintf(out, "e8kvd %s (API e8kv.v1)\n", E8KV_VERSION);
      return KVD_CONFIG_EXIT_OK;
    }
    if (c < 256 || (size_t)(c - 256) >= N_ROWS) {
      fprintf(err, "e8kvd: unknown or incomplete flag '%s' (see --help)\n", argv[optind - 1]);
      return KVD_CONFIG_EXIT_ERR;
    }
    if (row_set(cfg, &g_table[c - 256], optarg, err) != 0) return KVD_CONFIG_EXIT_ERR;
  }
  if (optind < argc) {
    fprintf(err, "e8kvd: unexpected argument '%s' (see --help)\n", argv[optind]);
    return KVD_CONFIG_EXIT_ERR;
  }
  if (check_cross(cfg, err) == 0) return KVD_CONFIG_RUN;
  kvd_config_free(cfg); /* the --listen addresses split before the bad one */
  return KVD_CONFIG_EXIT_ERR;
}

void kvd_config_free(kvd_config *cfg) {
  for (int i = 0; i < cfg->n_listen; i++) free(cfg->listen_addrs[i]);
  cfg->n_listen = 0;
}
