/* kvd_config.h: e8kvd's configuration, as one table.
 *
 * Every setting is one row of the table in kvd_config.c: flag name, unit, default, bounds,
 * description. `e8kvd --help` prints the table for people, `e8kvd --help-markdown` prints it as
 * the Markdown table pasted in README.md ("e8kvd configuration"), and the command-line parser
 * is built from it, so the three never disagree. Settings come from flags only
 * (`--name=value` or `--name value`); sizes take the suffixes K, M, G, T (powers of 1024),
 * durations are integers in the unit the table states.
 */
#ifndef KVD_CONFIG_H
#define KVD_CONFIG_H

#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

#define KVD_MAX_LISTEN 8

/* The e8kv release: `e8kvd --version`, `e8kvctl -V`, libe8kv's pkg-config file and the Python
 * package's __version__ all say this (tests/clients/test_ctl_e2e.py checks they agree). */
#define E8KV_VERSION "0.1.0"
/* The one default daemon address: e8kvd's default --listen, e8kvctl's default --addr (when
 * $E8KV_ADDR is unset) and the address README's examples use. TCP on loopback, because it
 * needs no directory or permission the way a unix socket under /run would. */
#define E8KV_DEFAULT_ADDR "127.0.0.1:50051"

typedef struct kvd_config {
  char data_dir[1024];            /* store directory (created if missing) */
  char listen[1024];              /* comma-separated gRPC addresses */
  char *listen_addrs[KVD_MAX_LISTEN]; /* split from `listen` by kvd_config_finish */
  int n_listen;
  uint64_t capacity_bytes;        /* store byte budget, 0 = unlimited */
  uint64_t segment_bytes;         /* segment file size before a new one starts */
  uint32_t threads;               /* gRPC workers of streaming calls = served at once */
  uint32_t unary_threads;         /* gRPC workers of all other calls */
  uint64_t max_message_bytes;     /* one gRPC message, either direction */
  uint64_t max_chunk_bytes;       /* one chunk's data on PutChunks (encoded or raw) */
  uint32_t max_chunks_per_call;   /* chunks in one PutChunks / GetChunks call */
  uint32_t max_lookup_tokens;     /* token ids in one Lookup / AppendSession */
  uint64_t get_piece_bytes;       /* default data bytes per GetChunks message */
  uint64_t put_batch_bytes;       /* encoded bytes buffered before one store write + fsync */
  char tokens_file[1024];         /* bearer token -> namespace map; "" = namespace "default" */
  char tls_cert[1024];            /* PEM certificate chain; TLS when set (with tls_key) */
  char tls_key[1024];             /* PEM private key */
  char log_level[16];             /* error | warn | info | debug */
  char metrics_listen[256];       /* host:port of the Prometheus endpoint; "" = off */
  uint32_t shutdown_grace_ms;     /* in-flight calls may finish this long after SIGTERM */
  uint32_t max_call_ms;           /* hard limit on one call's duration */
  uint32_t stall_ms;              /* longest wait on the peer within a call */
  uint32_t lookup_lease_ms;       /* lifetime of a Lookup's pins (store lease) */
  uint32_t max_purge_pending;     /* pending purges per namespace (kvd_purge.h) */
  char io_engine[16];             /* auto | uring | pwrite */
} kvd_config;

/* Fills cfg with the table's defaults. */
void kvd_config_defaults(kvd_config *cfg);

typedef enum kvd_config_action {
  KVD_CONFIG_RUN = 0,      /* start the daemon */
  KVD_CONFIG_EXIT_OK = 1,  /* --help, --help-markdown or --version printed: exit 0 */
  KVD_CONFIG_EXIT_ERR = 2  /* bad flag or value: message printed to err, exit 2 */
} kvd_config_action;

/* Parses argv into cfg (defaults first) and checks bounds and cross-field rules (TLS needs
 * both files, at least one listen address). Prints help/errors to out/err. After
 * KVD_CONFIG_RUN release cfg with kvd_config_free; after an error it holds nothing to free. */
kvd_config_action kvd_config_parse(kvd_config *cfg, int argc, char **argv, FILE *out, FILE *err);

/* Writes the table for `--help` (plain text) or as Markdown (README section). */
void kvd_config_print_help(FILE *f, const char *argv0);
void kvd_config_print_markdown(FILE *f);

/* Parses --metrics-listen's "IPv4:port", "localhost:port" or "[IPv6]:port" (numeric hosts:
 * the metrics server binds without name resolution) into *ss / *sl; -1 when it is not one. */
int kvd_config_hostport(const char *hp, struct sockaddr_storage *ss, socklen_t *sl);

/* Parses a size with optional suffix K/M/G/T (x1024^n, optional "iB"/"B"); -1 on error. */
int kvd_config_parse_size(const char *s, uint64_t *out);

/* Releases the split listen addresses. */
void kvd_config_free(kvd_config *cfg);

#endif
