/*
 * ctl_progress.h: a one-line progress bar for long commands (export, import,
 * verify, bench). Own small module: Debian ships no C progress-bar library.
 *
 * Drawn on stdout only when it is enabled (stdout is a terminal and --json is
 * off), redrawn at most 10 times a second, erased by ctl_prog_end so the
 * result that follows starts on a clean line. A total of 0 means unknown
 * (a counter with a rate, no bar).
 */
#ifndef CTL_PROGRESS_H
#define CTL_PROGRESS_H

#include <stdint.h>

typedef struct ctl_prog {
  int enabled;
  const char *label;
  uint64_t total;   /* units of work expected, 0 = unknown */
  uint64_t done;    /* units done */
  int bytes;        /* 1: units are bytes (shown as MiB, rate in MiB/s) */
  double t_start;   /* monotonic seconds */
  double t_drawn;   /* last redraw */
} ctl_prog;

void ctl_prog_begin(ctl_prog *p, int enabled, const char *label, uint64_t total, int bytes);
/* Adds `delta` units done and redraws when due. */
void ctl_prog_add(ctl_prog *p, uint64_t delta);
/* Erases the line. */
void ctl_prog_end(ctl_prog *p);
/* Renders the line into buf for a terminal `width` columns wide (used by the drawer,
 * exposed for tests). */
void ctl_prog_render(const ctl_prog *p, double now, int width, char *buf, size_t n);

#endif /* CTL_PROGRESS_H */
