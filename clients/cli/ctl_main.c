/*
 * ctl_main.c: e8kvctl's entry point: the option and command tables, global
 * option handling, opening the client, dispatch, and error printing.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <grpc/support/log.h>

#include "clients/cli/ctl_cmd.h"
#include "clients/cli/ctl_exit.h"
#include "clients/cli/ctl_out.h"
#include "clients/cli/ctl_runs.h"
#include "proto/e8kv_addr.h"
#include "daemon/kvd_config.h" /* E8KV_VERSION, E8KV_DEFAULT_ADDR: the daemon's, so they agree */

#define CTL_DEFAULT_ADDR E8KV_DEFAULT_ADDR
/* --timeout below this is refused: no call to any daemon completes in it ("--timeout 3" meant
 * 3 ms and then blamed the daemon, found by a new user). */
#define CTL_MIN_TIMEOUT_MS 100
/* health's default deadline (without --timeout): a liveness probe of a hung daemon (stopped,
 * deadlocked) should say so in seconds, not after the 30 s of the other commands. */
#define CTL_HEALTH_TIMEOUT_MS 5000

const ctl_optdef ctl_global_opts[] = {
    {CTL_O_ADDR, "addr", 'a', "ADDR", "$E8KV_ADDR or " CTL_DEFAULT_ADDR,
     "daemon address: host:port (TCP, IPv6 as [::1]:port) or unix:/path/to.sock"},
    {CTL_O_TOKEN_FILE, "token-file", 't', "FILE", NULL,
     "read the bearer token from FILE (first line); else $E8KV_TOKEN"},
    {CTL_O_NAMESPACE, "namespace", 'n', "NS", "default",
     "namespace: offline, the one to read; online, checked against the token's"},
    {CTL_O_DATA_DIR, "data-dir", 'd', "DIR", NULL,
     "offline: read this data directory (read-only) instead of asking a daemon"},
    {CTL_O_JSON, "json", 'j', NULL, NULL, "print the result as JSON (for scripts)"},
    {CTL_O_TIMEOUT, "timeout", 0, "DURATION", "30s; health: 5s",
     "deadline of each unary call: 2500ms, 30s, or a number = milliseconds (at least 100ms)"},
    {CTL_O_TLS, "tls", 0, NULL, NULL, "use TLS with the system's root certificates"},
    {CTL_O_TLS_CA, "tls-ca", 0, "FILE", NULL, "use TLS, trusting the PEM roots in FILE"},
    {CTL_O_TLS_CERT, "tls-cert", 0, "FILE", NULL, "TLS client certificate (PEM)"},
    {CTL_O_TLS_KEY, "tls-key", 0, "FILE", NULL, "TLS client key (PEM)"},
    {CTL_O_TLS_NAME, "tls-server-name", 0, "NAME", NULL, "expected name in the server's certificate"},
    {CTL_O_NO_PROGRESS, "no-progress", 0, NULL, NULL, "never draw progress bars"},
    {CTL_O_HELP, "help", 'h', NULL, NULL, "show help (of the command, after one)"},
    {CTL_O_VERSION, "version", 'V', NULL, NULL, "print the version"},
    {0, NULL, 0, NULL, NULL, NULL}};

static const ctl_optdef ctl_ls_opts[] = {
    {CTL_O_LIMIT, "limit", 'l', "N", "100", "sessions per page (1..1000)"},
    {CTL_O_PAGE_TOKEN, "page-token", 0, "TOKEN", NULL, "continue from a previous page"},
    {CTL_O_ALL, "all", 0, NULL, NULL, "fetch every page"},
    {CTL_O_MODEL, "model", 'm', "MODEL", NULL, "only sessions of this model id"},
    {CTL_O_PREFIX, "prefix", 'p', "PREFIX", NULL, "only sessions whose name starts with PREFIX"},
    {0, NULL, 0, NULL, NULL, NULL}};

static const ctl_optdef ctl_rm_opts[] = {
    {CTL_O_PURGE, "purge", 0, NULL, NULL,
     "also delete the session's chunks that no other session lists (no restore finds them)"},
    {CTL_O_WAIT, "wait", 0, "SECONDS", "no wait",
     "with --purge: return only when no purge of the namespace waits for a read or lookup "
     "lease any more (exit 1 if some still do after SECONDS, 1..3600)"},
    {0, NULL, 0, NULL, NULL, NULL}};

static const ctl_optdef ctl_health_opts[] = {
    {CTL_O_WAIT, "wait", 0, "DURATION", "no wait",
     "ask again (every 200 ms) until the daemon is SERVING or DURATION has passed (30s, "
     "2500ms; at most 1 h): for scripts that start e8kvd and use it at once"},
    {0, NULL, 0, NULL, NULL, NULL}};

static const ctl_optdef ctl_import_opts[] = {
    {CTL_O_NAME, "name", 0, "NAME", "the exported name", "create the session under this name"},
    {0, NULL, 0, NULL, NULL, NULL}};

static const ctl_optdef ctl_bench_opts[] = {
    {CTL_O_LAYERS, "layers", 0, "N", "32", "layers of the synthetic model"},
    {CTL_O_KV_HEADS, "kv-heads", 0, "N", "8", "KV heads"},
    {CTL_O_HEAD_DIM, "head-dim", 0, "N", "128", "head_dim"},
    {CTL_O_CHUNK_TOKENS, "chunk-tokens", 0, "N", "256", "tokens per chunk"},
    {CTL_O_CHUNKS, "chunks", 'c', "N", "16", "chunks to put and get"},
    {CTL_O_PRESET, "preset", 0, "NAME", "K3V2", "codec preset: K4V4 K4V3 K4V2 K3V3 K3V2 K2V2"},
    {CTL_O_NAME, "session", 's', "NAME", NULL, "put into this session and keep it (else a throwaway one)"},
    {CTL_O_CLIENT_ENCODE, "client-encode", 0, NULL, NULL,
     "encode here with libe8codec and send E8 frames (as an engine with the codec does)"},
    {CTL_O_MAX_CHUNK_BYTES, "max-chunk-bytes", 0, "SIZE", "256M",
     "the daemon's --max-chunk-bytes: shapes whose chunk of fp16 KV is larger are refused before "
     "anything is allocated (4K..16G)"},
    {0, NULL, 0, NULL, NULL, NULL}};

static const ctl_optdef ctl_verify_opts[] = {
    {CTL_O_NO_QUARANTINE, "no-quarantine", 0, NULL, NULL,
     "online: only report corrupt records (default: quarantine them so they are never served)"},
    {CTL_O_MAX_BYTES, "max-bytes", 0, "N", "0 = all", "online: stop after checking N record bytes"},
    {0, NULL, 0, NULL, NULL, NULL}};

static const ctl_optdef ctl_compact_opts[] = {
    {CTL_O_MIN_DEAD, "min-dead-fraction", 0, "F", "0.5",
     "compact segments whose dead bytes are at least this fraction (0..1)"},
    {CTL_O_MAX_BYTES, "max-bytes", 0, "N", "0 = no limit", "stop after moving N live bytes"},
    {0, NULL, 0, NULL, NULL, NULL}};

const ctl_cmd ctl_commands[] = {
    {"health", NULL, 0, 0, "is the daemon serving (grpc.health.v1)",
     "Asks the daemon's standard gRPC health service whether it is SERVING.\n"
     "Exit 0 when serving, 3 when it is not reachable or not serving (with --wait:\n"
     "still not, when DURATION has passed), 4 when the token is refused. Each\n"
     "call's deadline is 5 s unless --timeout says otherwise.",
     ctl_health_opts, ctl_on_health, NULL},
    {"stat", NULL, 0, 0, "usage, capacity, hit rate, chunks, sessions, namespaces",
     "Store-wide figures: bytes used and capacity, chunks, sessions, namespaces,\n"
     "lookup hit rate (online), and bits per element of the namespace on disk: every\n"
     "live chunk, listed by a session or not, each record with its 192-byte header\n"
     "(so a little above the frames-only bpe of `show` and `ls`).",
     NULL, ctl_on_stat, ctl_off_stat},
    {"ls", NULL, 0, 0, "list sessions of a namespace (paginated; filter by model, name prefix)",
     "Lists sessions of the namespace, one page at a time (--limit, --page-token),\n"
     "or all pages with --all. The next page token is printed last (and is\n"
     "\"next_page_token\" in --json output).",
     ctl_ls_opts, ctl_on_ls, ctl_off_ls},
    {"show", "SESSION", 1, 1, "one session: fingerprint, tokens, chunks, bytes, bpe",
     "Shows one session: model fingerprint, tokens, chunks, codec preset, bytes of\n"
     "its encoded frames, bits per element of those frames (frame bytes x 8 / (2 x\n"
     "layers x kv_heads x head_dim x tokens); record headers not counted: `stat`\n"
     "counts them), ratio to fp16, and when it was created and last used.",
     NULL, ctl_on_show, ctl_off_show},
    {"rm", "SESSION...", 1, 64,
     "delete sessions; their KV stays reusable until evicted (--purge: deleted too)",
     "Deletes sessions. Without --purge their chunks stay stored as prefix-cache\n"
     "entries until LRU eviction: a restore of the same tokens still finds them.\n"
     "With --purge each chunk of the session is deleted too, so no lookup or restore\n"
     "finds it again, except chunks another session lists (kept and counted). A\n"
     "chunk a running restore still reads or holds under its lookup lease is deleted\n"
     "by the daemon as soon as that ends (within --lookup-lease-ms of e8kvd, 30 s by\n"
     "default), unless a session lists it by then. Deleted records stay on disk as\n"
     "dead bytes until `e8kvctl compact` rewrites their segments (or a segment\n"
     "empties and is deleted). `e8kvctl gc` deletes chunks of sessions removed\n"
     "without --purge.",
     ctl_rm_opts, ctl_on_rm, NULL},
    {"verify", NULL, 0, 0, "CRC scan of every record; lists quarantined records",
     "Reads every stored record and checks its CRC32C. Records that fail are\n"
     "quarantined (never served) and listed. Exit 6 when any record is bad.\n"
     "Offline (--data-dir, read-only) bad records are counted, not quarantined.",
     ctl_verify_opts, ctl_on_verify, ctl_off_verify},
    {"compact", NULL, 0, 0, "copy live records out of mostly-dead segments",
     "Asks the daemon to compact: live records of mostly-dead segments are copied\n"
     "out and the segments freed. Prints bytes reclaimed.",
     ctl_compact_opts, ctl_on_compact, NULL},
    {"gc", NULL, 0, 0, "delete every chunk no session lists (prefix-cache entries)",
     "Deletes each chunk of the namespace that no session lists: chunks of sessions\n"
     "deleted without --purge, and chunks put without a session. Sessions keep all\n"
     "of theirs. A chunk a running restore still reads or holds under its lookup\n"
     "lease is deleted by the daemon when that ends (counted as pending). The\n"
     "deleted records are dead bytes until `e8kvctl compact`.",
     NULL, ctl_on_gc, NULL},
    {"export", "SESSION FILE", 2, 2, "write a session to a portable single file",
     "Writes the session (fingerprint, metadata, every chunk's token ids and encoded\n"
     "frames) to FILE in the e8kv export format (clients/cli/EXPORT.md): header\n"
     "with magic and version, CRC32C per record, SHA-256 over the file. FILE \"-\"\n"
     "is stdout. A file is written to a new FILE.tmpXXXXXX and renamed over FILE\n"
     "when complete (a symlink's target is replaced, the link kept); a device or\n"
     "FIFO (/dev/stdout, a named pipe) is written in place.",
     NULL, ctl_on_export, ctl_off_export},
    {"import", "FILE", 1, 1, "create a session from an export file",
     "Checks FILE completely (every CRC and the SHA-256) before sending anything,\n"
     "then creates the session and puts its chunks. A damaged file is refused with\n"
     "exit 6 and nothing is stored.",
     ctl_import_opts, ctl_on_import, NULL},
    {"bench", NULL, 0, 0, "put/get throughput with a synthetic shape",
     "Puts --chunks chunks of random KV of the given shape (raw fp16 for the daemon\n"
     "to encode, or E8 frames encoded here with --client-encode), gets the frames\n"
     "back, and reports tokens/s, GB/s and per-chunk latency\n"
     "percentiles. Uses a throwaway session in the namespace and deletes it with its\n"
     "chunks (as rm --purge), unless --session names one to create and keep (e.g.\n"
     "sample data for export tests).\n"
     "The shape is checked first, before anything is allocated: one chunk of fp16 KV\n"
     "(2 x layers x kv-heads x head-dim x chunk-tokens x 2 bytes) within\n"
     "--max-chunk-bytes, and chunks x chunk-tokens within the codec's last position.",
     ctl_bench_opts, ctl_on_bench, NULL},
    {NULL, NULL, 0, 0, NULL, NULL, NULL, NULL, NULL}};

int ctl_error(ctl_ctx *ctx, int exit_code, const char *status_name, const char *fmt, ...) {
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (ctx && ctx->json) {
    json_t *e = json_pack("{s:{s:s,s:i,s:s}}", "error", "code", status_name, "exit", exit_code,
                          "message", msg);
    if (e) ctl_out_json(stdout, e);
    json_decref(e);
  }
  fprintf(stderr, "e8kvctl: %s\n", msg);
  return exit_code;
}

int ctl_error_e8kv(ctl_ctx *ctx, const e8kv_error *err) {
  return ctl_error(ctx, ctl_exit_from_status(err->code), e8kv_status_name(err->code), "%s",
                   err->message);
}

/* Reads the first line of a token file into *out (malloc'd); returns an exit code. */
static int ctl_read_token(ctl_ctx *ctx, const char *path, char **out) {
  FILE *f = fopen(path, "r");
  if (!f)
    return ctl_error(ctx, CTL_EXIT_IO, "io", "cannot open token file %s: %s", path,
                     strerror(errno));
  char line[4096];
  char *ok = fgets(line, sizeof line, f);
  fclose(f);
  if (!ok) line[0] = '\0';
  line[strcspn(line, "\r\n")] = '\0';
  if (!line[0]) return ctl_error(ctx, CTL_EXIT_USAGE, "usage", "token file %s is empty", path);
  if (!(*out = strdup(line))) return ctl_error(ctx, CTL_EXIT_FAILURE, "nomem", "out of memory");
  return CTL_EXIT_OK;
}

/* Online the token picks the namespace; --namespace is then an assertion, checked
 * against the daemon's answer, never silently ignored. */
static int ctl_check_namespace(ctl_ctx *ctx) {
  E8kv__V1__GetStatsResponse *r = NULL;
  e8kv_error err;
  if (e8kv_get_stats(ctx->client, &r, &err)) return ctl_error_e8kv(ctx, &err);
  const char *have = r->namespace_stats && r->namespace_stats->namespace_name
                         ? r->namespace_stats->namespace_name : "";
  int rc = CTL_EXIT_OK;
  if (strcmp(have, ctx->opt[CTL_O_NAMESPACE]) != 0)
    rc = ctl_error(ctx, CTL_EXIT_AUTH, "PERMISSION_DENIED",
                   "--namespace %s: the token is for namespace \"%s\" (online, the token picks "
                   "the namespace)", ctx->opt[CTL_O_NAMESPACE], have);
  e8kv_msg_free(r);
  return rc;
}

/* A clear usage error for an address e8kvd could not listen on (proto/e8kv_addr.h, the
 * rule the daemon and libe8kv share: tcp://h:p and bare socket paths are what people try). */
static int ctl_check_addr(ctl_ctx *ctx, const char *a, const char *from) {
  char why[256];
  if (e8kv_addr_check(a, why, sizeof why) == 0) return 0;
  return ctl_error(ctx, CTL_EXIT_USAGE, "usage", "%s \"%s\": %s", from, a, why);
}

static int ctl_open_client(ctl_ctx *ctx) {
  e8kv_options o;
  e8kv_options_init(&o);
  const char *env = getenv("E8KV_ADDR");
  if (env && !*env) env = NULL; /* E8KV_ADDR= (set but empty) means unset, as for E8KV_TOKEN */
  const char *from = ctx->opt[CTL_O_ADDR] ? "--addr" : env ? "$E8KV_ADDR" : NULL;
  o.address = ctx->opt[CTL_O_ADDR] ? ctx->opt[CTL_O_ADDR] : env ? env : CTL_DEFAULT_ADDR;
  if (from && ctl_check_addr(ctx, o.address, from)) return CTL_EXIT_USAGE;
  char *token = NULL;
  int rc;
  if (ctx->opt[CTL_O_TOKEN_FILE] && (rc = ctl_read_token(ctx, ctx->opt[CTL_O_TOKEN_FILE], &token)))
    return rc;
  o.token = token ? token : getenv("E8KV_TOKEN");
  o.tls = ctx->opt[CTL_O_TLS] != NULL;
  o.tls_ca_file = ctx->opt[CTL_O_TLS_CA];
  o.tls_cert_file = ctx->opt[CTL_O_TLS_CERT];
  o.tls_key_file = ctx->opt[CTL_O_TLS_KEY];
  o.tls_server_name = ctx->opt[CTL_O_TLS_NAME];
  uint64_t ms;
  if (ctl_opt_ms(ctx, CTL_O_TIMEOUT, ctx->health ? CTL_HEALTH_TIMEOUT_MS : 30000,
                 CTL_MIN_TIMEOUT_MS, 86400000, &ms)) {
    free(token);
    return CTL_EXIT_USAGE;
  }
  o.deadline_ms = (uint32_t)ms;
  ctx->deadline_ms = ms;
  e8kv_error err;
  e8kv_status s = e8kv_client_open(&o, &ctx->client, &err);
  free(token);
  if (s) return ctl_error_e8kv(ctx, &err);
  return ctx->opt[CTL_O_NAMESPACE] ? ctl_check_namespace(ctx) : CTL_EXIT_OK;
}

/* gRPC's own log lines (e.g. "E1129 ... ssl_transport_security.cc ... Handshake failed")
 * would precede e8kvctl's one-line error, which already carries gRPC's reason; they come
 * back with GRPC_VERBOSITY set. */
static void ctl_grpc_log_drop(gpr_log_func_args *args) { (void)args; }

int main(int argc, char **argv) {
  ctl_ctx ctx;
  memset(&ctx, 0, sizeof ctx);
  ctx.prog = argv[0];
  if (!getenv("GRPC_VERBOSITY")) gpr_set_log_function(ctl_grpc_log_drop);
  /* --json is known before parsing, so that usage errors come as JSON too. */
  for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++)
    if (strcmp(argv[i], "--json") == 0 || strcmp(argv[i], "-j") == 0) ctx.json = 1;
  if (argc == 2 && strcmp(argv[1], "--help-markdown") == 0) {
    ctl_help_markdown(stdout);
    return CTL_EXIT_OK;
  }
  /* Global options up to the command name. */
  int n = ctl_parse_opts(&ctx, ctl_global_opts, NULL, argc, argv, 1);
  if (n < 0) return CTL_EXIT_USAGE;
  if (ctx.opt[CTL_O_VERSION]) { printf("e8kvctl %s\n", E8KV_VERSION); return CTL_EXIT_OK; }
  if (n == 0) {
    if (ctx.opt[CTL_O_HELP]) { ctl_help_main(stdout); return CTL_EXIT_OK; }
    ctl_help_main(stderr);
    return CTL_EXIT_USAGE;
  }
  if (strcmp(argv[1], "help") == 0) { /* `e8kvctl help [COMMAND]` = --help */
    ctx.json = ctx.opt[CTL_O_JSON] != NULL;
    const ctl_cmd *hc = n == 2 ? ctl_cmd_find(argv[2]) : NULL;
    if (n == 1) ctl_help_main(stdout);
    else if (hc) ctl_help_cmd(stdout, hc);
    else
      return ctl_error(&ctx, CTL_EXIT_USAGE, "usage", "help takes one command name at most%s%s",
                       n == 2 ? ", not " : "", n == 2 ? argv[2] : "");
    return CTL_EXIT_OK;
  }
  const ctl_cmd *cmd = ctl_cmd_find(argv[1]);
  if (!cmd) {
    ctx.json = ctx.opt[CTL_O_JSON] != NULL;
    return ctl_error(&ctx, CTL_EXIT_USAGE, "usage", "unknown command \"%s\" (see --help)", argv[1]);
  }
  /* The command's options, global ones allowed too, after the command name. */
  int cargc = n;
  char **cargv = argv + 1;
  int np = ctl_parse_opts(&ctx, ctl_global_opts, cmd->opts, cargc, cargv, 0);
  if (np < 0) return CTL_EXIT_USAGE;
  ctx.json = ctx.opt[CTL_O_JSON] != NULL;
  if (ctx.opt[CTL_O_HELP]) { ctl_help_cmd(stdout, cmd); return CTL_EXIT_OK; }
  if (np < cmd->min_args || np > cmd->max_args)
    return ctl_error(&ctx, CTL_EXIT_USAGE, "usage", "%s takes %s%s (see e8kvctl %s --help)",
                     cmd->name, cmd->args ? "arguments " : "no arguments",
                     cmd->args ? cmd->args : "", cmd->name);
  ctx.progress = !ctx.json && !ctx.opt[CTL_O_NO_PROGRESS] && isatty(STDOUT_FILENO);
  ctx.mode = ctx.opt[CTL_O_DATA_DIR] ? CTL_MODE_OFFLINE : CTL_MODE_ONLINE;
  ctx.health = cmd->run_online == ctl_on_health;
  int rc;
  if (ctx.mode == CTL_MODE_OFFLINE) {
    if (!cmd->run_offline)
      return ctl_error(&ctx, CTL_EXIT_UNSUPPORTED, "unsupported",
                       "%s needs a daemon; it cannot run on a data directory (--data-dir)",
                       cmd->name);
    rc = cmd->run_offline(&ctx, np, cargv + 1);
  } else {
    if ((rc = ctl_open_client(&ctx))) {
      e8kv_client_close(ctx.client); /* NULL when it did not open */
      return rc;
    }
    rc = cmd->run_online(&ctx, np, cargv + 1);
    e8kv_client_close(ctx.client);
  }
  return rc;
}
