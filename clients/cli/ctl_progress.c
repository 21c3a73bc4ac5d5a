/*
 * ctl_progress.c: the progress bar of e8kvctl: "label [####....] 45% 12.0/27.0 MiB
 * 3.2 MiB/s ETA 4s", fitted to the terminal width.
 */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "clients/cli/ctl_out.h"
#include "clients/cli/ctl_progress.h"

static double ctl_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

void ctl_prog_begin(ctl_prog *p, int enabled, const char *label, uint64_t total, int bytes) {
  memset(p, 0, sizeof *p);
  p->enabled = enabled;
  p->label = label;
  p->total = total;
  p->bytes = bytes;
  p->t_start = ctl_now();
}

static void ctl_prog_amount(const ctl_prog *p, double v, char *buf, size_t n) {
  if (p->bytes) snprintf(buf, n, "%.1f", v / (1024.0 * 1024.0));
  else snprintf(buf, n, "%.0f", v);
}

void ctl_prog_render(const ctl_prog *p, double now, int width, char *buf, size_t n) {
  double el = now - p->t_start;
  double rate = el > 0 ? (double)p->done / el : 0;
  char done[32], total[32], tail[96];
  ctl_prog_amount(p, (double)p->done, done, sizeof done);
  const char *unit = p->bytes ? " MiB" : "";
  if (p->total) {
    ctl_prog_amount(p, (double)p->total, total, sizeof total);
    double left = rate > 0 && p->total > p->done ? (double)(p->total - p->done) / rate : 0;
    snprintf(tail, sizeof tail, " %3.0f%% %s/%s%s %.1f%s/s ETA %.0fs",
             100.0 * (double)p->done / (double)p->total, done, total, unit,
             p->bytes ? rate / (1024.0 * 1024.0) : rate, p->bytes ? " MiB" : "", left);
  } else {
    snprintf(tail, sizeof tail, " %s%s %.1f%s/s", done, unit,
             p->bytes ? rate / (1024.0 * 1024.0) : rate, p->bytes ? " MiB" : "");
  }
  int fixed = (int)strlen(p->label) + (int)strlen(tail) + 3;
  int bar = width - fixed - 1;
  if (!p->total || bar < 10) {
    snprintf(buf, n, "%s%s", p->label, tail);
    return;
  }
  if (bar > 50) bar = 50;
  int fill = (int)((double)bar * (double)p->done / (double)p->total);
  if (fill > bar) fill = bar;
  char b[64];
  memset(b, '#', (size_t)fill);
  memset(b + fill, '.', (size_t)(bar - fill));
  b[bar] = '\0';
  snprintf(buf, n, "%s [%s]%s", p->label, b, tail);
}

static void ctl_prog_draw(ctl_prog *p, double now) {
  char line[256];
  int w = ctl_term_width();
  ctl_prog_render(p, now, w > 0 ? w : 80, line, sizeof line);
  fprintf(stdout, "\r\033[K%s", line);
  fflush(stdout);
  p->t_drawn = now;
}

void ctl_prog_add(ctl_prog *p, uint64_t delta) {
  p->done += delta;
  if (!p->enabled) return;
  double now = ctl_now();
  if (now - p->t_drawn >= 0.1) ctl_prog_draw(p, now);
}

void ctl_prog_end(ctl_prog *p) {
  if (!p->enabled) return;
  fputs("\r\033[K", stdout);
  fflush(stdout);
}
