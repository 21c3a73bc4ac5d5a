/*
 * ctl_offline.c: e8kvctl commands on a data directory (--data-dir), opening
 * the store read-only (E8S_OPEN_READONLY: safe while a daemon runs).
 */
#include "clients/cli/ctl_exit.h"
#include "clients/cli/ctl_runs.h"

static int ctl_off_todo(ctl_ctx *ctx) {
  return ctl_error(ctx, CTL_EXIT_UNSUPPORTED, "unsupported",
                   "offline commands are not available in this build yet");
}
int ctl_off_stat(ctl_ctx *ctx, int argc, char **argv) { (void)argc; (void)argv; return ctl_off_todo(ctx); }
int ctl_off_ls(ctl_ctx *ctx, int argc, char **argv) { (void)argc; (void)argv; return ctl_off_todo(ctx); }
int ctl_off_show(ctl_ctx *ctx, int argc, char **argv) { (void)argc; (void)argv; return ctl_off_todo(ctx); }
int ctl_off_verify(ctl_ctx *ctx, int argc, char **argv) { (void)argc; (void)argv; return ctl_off_todo(ctx); }
int ctl_off_export(ctl_ctx *ctx, int argc, char **argv) { (void)argc; (void)argv; return ctl_off_todo(ctx); }
