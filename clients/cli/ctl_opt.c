/*
 * ctl_opt.c: e8kvctl option parsing with glibc getopt_long, driven by the
 * ctl_optdef tables, and --help text printed from the same tables.
 */
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "clients/cli/ctl_cmd.h"
#include "clients/cli/ctl_exit.h"

#define CTL_MAX_OPTS 64

static size_t ctl_optdef_count(const ctl_optdef *t) {
  size_t n = 0;
  while (t && t[n].name) n++;
  return n;
}

/* Parses options of tables a and b (b may be NULL) from argv[0..argc), argv[0]
 * being the program or command name. The non-option arguments are moved to
 * argv[1..]; returns their count, or -1 after printing a usage error. stop_at_nonopt: stop at the
 * first non-option (global options before the command). */
int ctl_parse_opts(ctl_ctx *ctx, const ctl_optdef *a, const ctl_optdef *b, int argc,
                   char **argv, int stop_at_nonopt) {
  struct option lo[CTL_MAX_OPTS + 1];
  const ctl_optdef *defs[CTL_MAX_OPTS];
  char shorts[2 * CTL_MAX_OPTS + 4];
  size_t n = 0, ns = 0;
  shorts[ns++] = stop_at_nonopt ? '+' : '-';
  shorts[ns++] = ':';
  const ctl_optdef *tabs[2] = {a, b};
  for (int t = 0; t < 2; t++) {
    size_t k = ctl_optdef_count(tabs[t]);
    for (size_t i = 0; i < k && n < CTL_MAX_OPTS; i++, n++) {
      const ctl_optdef *d = &tabs[t][i];
      defs[n] = d;
      lo[n] = (struct option){d->name, d->arg ? required_argument : no_argument, NULL,
                              d->short_name ? d->short_name : 1000 + (int)n};
      if (d->short_name) {
        shorts[ns++] = (char)d->short_name;
        if (d->arg) shorts[ns++] = ':';
      }
    }
  }
  lo[n] = (struct option){NULL, 0, NULL, 0};
  shorts[ns] = '\0';
  /* Non-options are collected in order (the "-" mode returns them as 1). */
  char **pos = calloc((size_t)argc + 1, sizeof *pos);
  if (!pos) return -1;
  int npos = 0;
  optind = 0; /* 0: glibc re-reads the optstring mode (+ or -) on every scan */
  opterr = 0;
  int c, li;
  while ((c = getopt_long(argc, argv, shorts, lo, &li)) != -1) {
    if (c == 1) { pos[npos++] = optarg; continue; }
    if (c == '?' || c == ':') {
      const char *what = argv[optind - 1];
      if (c == '?')
        ctl_error(ctx, CTL_EXIT_USAGE, "usage", "unknown option %s (see --help)", what);
      else
        ctl_error(ctx, CTL_EXIT_USAGE, "usage", "option %s needs a value (see --help)", what);
      free(pos);
      return -1;
    }
    const ctl_optdef *d = NULL;
    for (size_t i = 0; i < n && !d; i++)
      if ((defs[i]->short_name && defs[i]->short_name == c) || 1000 + (int)i == c) d = defs[i];
    if (!d) { free(pos); return -1; }
    ctx->opt[d->id] = d->arg ? optarg : "1";
  }
  /* Put the non-options (collected, then the rest after "--" or a stop) after argv[0]. */
  int rest = argc - optind;
  int first = 1;
  char **tail = argv + optind;
  memmove(argv + first + npos, tail, (size_t)rest * sizeof *argv);
  memcpy(argv + first, pos, (size_t)npos * sizeof *argv);
  free(pos);
  return npos + rest;
}

static void ctl_help_opts(FILE *f, const ctl_optdef *t) {
  for (size_t i = 0; t && t[i].name; i++) {
    char left[64];
    const ctl_optdef *d = &t[i];
    if (d->short_name)
      snprintf(left, sizeof left, "-%c, --%s%s%s", d->short_name, d->name, d->arg ? " " : "",
               d->arg ? d->arg : "");
    else
      snprintf(left, sizeof left, "    --%s%s%s", d->name, d->arg ? " " : "", d->arg ? d->arg : "");
    fprintf(f, "  %-28s %s", left, d->help);
    if (d->deflt) fprintf(f, " (default: %s)", d->deflt);
    fputc('\n', f);
  }
}

void ctl_help_main(FILE *f) {
  fprintf(f,
          "usage: e8kvctl [OPTIONS] COMMAND [COMMAND OPTIONS] [ARGS]\n"
          "\n"
          "Admin tool of e8kv, the compressed KV-cache store. Online, it talks to e8kvd\n"
          "over gRPC; with --data-dir it reads a data directory directly, read-only (safe\n"
          "while a daemon runs). Tables for people, --json for scripts.\n"
          "\ncommands:\n");
  for (const ctl_cmd *c = ctl_commands; c->name; c++)
    fprintf(f, "  %-9s %-13s %s%s\n", c->name, c->args ? c->args : "", c->summary,
            !c->run_offline ? " [online only]" : "");
  fprintf(f, "\noptions (before or after the command):\n");
  ctl_help_opts(f, ctl_global_opts);
  fprintf(f, "\nenvironment: E8KV_ADDR (default address), E8KV_TOKEN (bearer token; a\n"
             "  token file is safer than the command line, which other users can see).\n");
  fprintf(f, "\nexit codes:\n");
  for (const ctl_exit_info *e = ctl_exit_table; e->name; e++)
    fprintf(f, "  %2d  %-12s %s\n", e->code, e->name, e->meaning);
  fprintf(f, "\n`e8kvctl COMMAND --help` (or `e8kvctl help COMMAND`) shows a command's options.\n");
}

void ctl_help_markdown(FILE *f) {
  fprintf(f, "| command | what | modes |\n| --- | --- | --- |\n");
  for (const ctl_cmd *c = ctl_commands; c->name; c++)
    fprintf(f, "| `%s%s%s` | %s | %s |\n", c->name, c->args ? " " : "", c->args ? c->args : "",
            c->summary, c->run_offline ? "online, offline" : "online");
  fprintf(f, "\n| exit | name | meaning |\n| --- | --- | --- |\n");
  for (const ctl_exit_info *e = ctl_exit_table; e->name; e++)
    fprintf(f, "| %d | `%s` | %s |\n", e->code, e->name, e->meaning);
}

void ctl_help_cmd(FILE *f, const ctl_cmd *cmd) {
  fprintf(f, "usage: e8kvctl [OPTIONS] %s [COMMAND OPTIONS]%s%s\n\n%s\n", cmd->name,
          cmd->args ? " " : "", cmd->args ? cmd->args : "", cmd->description);
  fprintf(f, "\nmodes: %s\n",
          cmd->run_online && cmd->run_offline
              ? "online (through e8kvd) and offline (--data-dir, read-only)"
              : cmd->run_online ? "online only (through e8kvd)" : "offline only (--data-dir)");
  if (cmd->opts && cmd->opts[0].name) {
    fprintf(f, "\ncommand options:\n");
    ctl_help_opts(f, cmd->opts);
  }
  fprintf(f, "\nglobal options: see `e8kvctl --help` (exit codes are listed there too).\n");
}

const ctl_cmd *ctl_cmd_find(const char *name) {
  for (const ctl_cmd *c = ctl_commands; c->name; c++)
    if (strcmp(c->name, name) == 0) return c;
  return NULL;
}

/* The long name of option id, for messages. */
static const char *ctl_opt_name(int id) {
  for (const ctl_optdef *d = ctl_global_opts; d->name; d++)
    if (d->id == id) return d->name;
  for (const ctl_cmd *c = ctl_commands; c->name; c++)
    for (size_t i = 0; c->opts && c->opts[i].name; i++)
      if (c->opts[i].id == id) return c->opts[i].name;
  return "?";
}

int ctl_opt_double(ctl_ctx *ctx, int id, double deflt, double min, double max, double *out) {
  const char *v = ctx->opt[id];
  if (!v) { *out = deflt; return 0; }
  char *end;
  errno = 0;
  double x = strtod(v, &end);
  if (errno || end == v || *end || !(x >= min && x <= max)) {
    ctl_error(ctx, CTL_EXIT_USAGE, "usage", "--%s: \"%s\" is not a number in [%g, %g]",
              ctl_opt_name(id), v, min, max);
    return -1;
  }
  *out = x;
  return 0;
}

int ctl_opt_u64(ctl_ctx *ctx, int id, uint64_t deflt, uint64_t min, uint64_t max, uint64_t *out) {
  const char *v = ctx->opt[id];
  if (!v) { *out = deflt; return 0; }
  const char *name = ctl_opt_name(id);
  char *end;
  errno = 0;
  unsigned long long x = strtoull(v, &end, 10);
  if (errno || end == v || *end || *v == '-' || x < min || x > max) {
    ctl_error(ctx, CTL_EXIT_USAGE, "usage",
              "--%s: \"%s\" is not a whole number in [%" PRIu64 ", %" PRIu64 "]", name, v, min,
              max);
    return -1;
  }
  *out = x;
  return 0;
}

int ctl_opt_size(ctl_ctx *ctx, int id, uint64_t deflt, uint64_t min, uint64_t max,
                 uint64_t *out) {
  const char *v = ctx->opt[id];
  if (!v) { *out = deflt; return 0; }
  char *end;
  errno = 0;
  unsigned long long x = strtoull(v, &end, 10);
  unsigned shift = 0;
  const char *units = "KMGT", *u = *end ? strchr(units, toupper((unsigned char)*end)) : NULL;
  if (u) {
    shift = 10 * (unsigned)(u - units + 1);
    end++;
    if (*end == 'i') end++;
  }
  if (*end == 'B' || *end == 'b') end++;
  if (errno || end == v || *v == '-' || *v == '+' || *end || x > (UINT64_MAX >> shift) ||
      (x << shift) < min || (x << shift) > max) {
    ctl_error(ctx, CTL_EXIT_USAGE, "usage",
              "--%s: \"%s\" is not a size in [%" PRIu64 ", %" PRIu64 "] bytes (a whole number, "
              "optionally with K, M, G or T: \"256M\")", ctl_opt_name(id), v, min, max);
    return -1;
  }
  *out = (uint64_t)x << shift;
  return 0;
}

int ctl_opt_ms(ctl_ctx *ctx, int id, uint64_t deflt, uint64_t min_ms, uint64_t max_ms,
               uint64_t *out) {
  const char *v = ctx->opt[id];
  if (!v) { *out = deflt; return 0; }
  const char *name = ctl_opt_name(id);
  char *end;
  errno = 0;
  unsigned long long x = strtoull(v, &end, 10);
  uint64_t scale = strcmp(end, "s") == 0 ? 1000 : (!*end || strcmp(end, "ms") == 0) ? 1 : 0;
  if (errno || end == v || *v == '-' || *v == '+' || !scale || x > max_ms / scale) {
    ctl_error(ctx, CTL_EXIT_USAGE, "usage",
              "--%s: \"%s\" is not a duration: a whole number of milliseconds, or with a unit "
              "(\"2500ms\", \"30s\"), at most %" PRIu64 " s", name, v, max_ms / 1000);
    return -1;
  }
  uint64_t ms = x * scale;
  if (ms < min_ms) {
    ctl_error(ctx, CTL_EXIT_USAGE, "usage",
              "--%s %s: %" PRIu64 " ms is too short for a call (at least %" PRIu64 " ms; a "
              "number without a unit is milliseconds: --%s %llus means %llu seconds)",
              name, v, ms, min_ms, name, x, x);
    return -1;
  }
  *out = ms;
  return 0;
}
