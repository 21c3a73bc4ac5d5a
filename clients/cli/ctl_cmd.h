/*
 * ctl_cmd.h: e8kvctl's command table, option table and the context every
 * command runs with.
 *
 * Options are data (ctl_optdef): one table of global options and one per
 * command; getopt_long (glibc) parses them and --help (and --help-markdown,
 * pasted in README.md) is printed from the same tables, so help, docs and
 * behaviour cannot drift apart.
 */
#ifndef CTL_CMD_H
#define CTL_CMD_H

#include <stdint.h>
#include <stdio.h>
#include <jansson.h>

#include "clients/c/e8kv.h"

/* Option ids: index into ctl_ctx.opt. */
enum {
  CTL_O_ADDR, CTL_O_TOKEN_FILE, CTL_O_TLS, CTL_O_TLS_CA, CTL_O_TLS_CERT, CTL_O_TLS_KEY,
  CTL_O_TLS_NAME, CTL_O_DATA_DIR, CTL_O_NAMESPACE, CTL_O_JSON, CTL_O_TIMEOUT,
  CTL_O_NO_PROGRESS, CTL_O_HELP, CTL_O_VERSION,
  /* command options */
  CTL_O_LIMIT, CTL_O_PAGE_TOKEN, CTL_O_ALL, CTL_O_MODEL, CTL_O_PREFIX, CTL_O_YES,
  CTL_O_NAME, CTL_O_REPLACE, CTL_O_LAYERS, CTL_O_KV_HEADS, CTL_O_HEAD_DIM, CTL_O_CHUNK_TOKENS,
  CTL_O_CHUNKS, CTL_O_PRESET, CTL_O_MIN_DEAD, CTL_O_MAX_BYTES, CTL_O_NO_QUARANTINE, CTL_O_CLIENT_ENCODE, CTL_O_PURGE,
  CTL_O_MAX_CHUNK_BYTES, CTL_O_WAIT,
  CTL_O_COUNT
};

typedef struct ctl_optdef {
  int id;
  const char *name;   /* long name, without "--" */
  int short_name;     /* 0: none */
  const char *arg;    /* metavar ("N", "FILE"), NULL for a flag */
  const char *deflt;  /* default shown in --help, or NULL */
  const char *help;
} ctl_optdef;

enum { CTL_MODE_ONLINE = 1, CTL_MODE_OFFLINE = 2 };

typedef struct ctl_ctx {
  const char *opt[CTL_O_COUNT]; /* option values; flags are "1"; NULL when absent */
  const char *prog;             /* argv[0] for messages */
  int json;                     /* --json: machine output on stdout */
  int progress;                 /* draw progress bars (stdout is a terminal, no --json) */
  int mode;                     /* CTL_MODE_ONLINE or CTL_MODE_OFFLINE (--data-dir) */
  e8kv_client *client;          /* online mode, opened before run */
  int health;                   /* the command is health (its own default --timeout) */
  uint64_t deadline_ms;         /* online: the unary deadline the client was opened with */
} ctl_ctx;

typedef struct ctl_cmd {
  const char *name;
  const char *args;        /* positional arguments, for usage ("SESSION FILE") */
  int min_args, max_args;
  const char *summary;     /* one line for the command list */
  const char *description; /* paragraph for `e8kvctl CMD --help` */
  const ctl_optdef *opts;  /* command options, ended by name NULL; may be NULL */
  /* Runners, NULL where the mode is not supported; argv[0..argc) are the
   * positional arguments. Each returns an exit code (ctl_exit.h). */
  int (*run_online)(ctl_ctx *ctx, int argc, char **argv);
  int (*run_offline)(ctl_ctx *ctx, int argc, char **argv);
} ctl_cmd;

extern const ctl_optdef ctl_global_opts[];
extern const ctl_cmd ctl_commands[];

/* Prints "e8kvctl: <message>" on stderr, or, with --json, a JSON error object
 * {"error": {"code": ..., "exit": ..., "message": ...}} on stdout; returns exit_code. */
int ctl_error(ctl_ctx *ctx, int exit_code, const char *status_name, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
/* ctl_error for a failed libe8kv call. */
int ctl_error_e8kv(ctl_ctx *ctx, const e8kv_error *err);

/* Typed option values: a missing option gives `deflt`; a malformed or
 * out-of-range value prints a usage error and returns -1 (else 0). */
int ctl_opt_u64(ctl_ctx *ctx, int id, uint64_t deflt, uint64_t min, uint64_t max, uint64_t *out);
int ctl_opt_double(ctl_ctx *ctx, int id, double deflt, double min, double max, double *out);
/* A size in bytes, as e8kvd's size flags take it: a whole number with an optional binary
 * unit K, M, G or T ("256M" = 256 MiB; "KiB", "MB" spellings accepted). */
int ctl_opt_size(ctl_ctx *ctx, int id, uint64_t deflt, uint64_t min, uint64_t max,
                 uint64_t *out);
/* A duration in milliseconds: a whole number with an optional unit, "ms" or "s" ("2500",
 * "2500ms", "30s"; no unit = milliseconds, as libe8kv's deadline_ms and e8kvd's *-ms flags).
 * Under min_ms (a value no call can meet) or over max_ms is a usage error that says so. */
int ctl_opt_ms(ctl_ctx *ctx, int id, uint64_t deflt, uint64_t min_ms, uint64_t max_ms,
               uint64_t *out);

/* Parsing and help (ctl_opt.c). */
int ctl_parse_opts(ctl_ctx *ctx, const ctl_optdef *a, const ctl_optdef *b, int argc,
                   char **argv, int stop_at_nonopt);
void ctl_help_main(FILE *f);
/* The command and exit-code tables in Markdown (pasted into README.md; a test compares). */
void ctl_help_markdown(FILE *f);
void ctl_help_cmd(FILE *f, const ctl_cmd *cmd);
const ctl_cmd *ctl_cmd_find(const char *name);

#endif /* CTL_CMD_H */
