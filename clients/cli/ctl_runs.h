/*
 * ctl_runs.h: the runners of e8kvctl's commands: online ones (ctl_online.c,
 * through libe8kv) and offline ones (ctl_offline.c, the store read-only).
 */
#ifndef CTL_RUNS_H
#define CTL_RUNS_H

#include "clients/cli/ctl_cmd.h"

int ctl_on_health(ctl_ctx *ctx, int argc, char **argv);
int ctl_on_stat(ctl_ctx *ctx, int argc, char **argv);
int ctl_on_ls(ctl_ctx *ctx, int argc, char **argv);
int ctl_on_show(ctl_ctx *ctx, int argc, char **argv);
int ctl_on_rm(ctl_ctx *ctx, int argc, char **argv);
int ctl_on_verify(ctl_ctx *ctx, int argc, char **argv);
int ctl_on_compact(ctl_ctx *ctx, int argc, char **argv);
int ctl_on_gc(ctl_ctx *ctx, int argc, char **argv);
int ctl_on_export(ctl_ctx *ctx, int argc, char **argv);
int ctl_on_import(ctl_ctx *ctx, int argc, char **argv);
int ctl_on_bench(ctl_ctx *ctx, int argc, char **argv);

/* Prints a verify result JSON (consumed); exit 6 when it lists corrupt records. */
int ctl_verify_report(ctl_ctx *ctx, json_t *o);

int ctl_off_stat(ctl_ctx *ctx, int argc, char **argv);
int ctl_off_ls(ctl_ctx *ctx, int argc, char **argv);
int ctl_off_show(ctl_ctx *ctx, int argc, char **argv);
int ctl_off_verify(ctl_ctx *ctx, int argc, char **argv);
int ctl_off_export(ctl_ctx *ctx, int argc, char **argv);

#endif /* CTL_RUNS_H */
