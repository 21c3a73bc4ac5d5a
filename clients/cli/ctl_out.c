/*
 * ctl_out.c: rendering of command results (JSON values) for people and
 * scripts; terminal width from TIOCGWINSZ.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include "clients/cli/ctl_out.h"

#define CTL_CELL_MAX 256
#define CTL_MIN_SHRUNK 8

int ctl_term_width(void) {
  if (!isatty(STDOUT_FILENO)) return 0;
  struct winsize ws;
  if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0) return ws.ws_col;
  const char *c = getenv("COLUMNS");
  int w = c ? atoi(c) : 0;
  return w > 0 ? w : 80;
}

size_t ctl_utf8_width(const char *s) {
  size_t w = 0;
  for (; *s; s++)
    if (((unsigned char)*s & 0xC0) != 0x80) w++;
  return w;
}

/* Cuts s in place to at most `width` display columns, ending with "~" when cut. */
static void ctl_utf8_cut(char *s, size_t width) {
  if (ctl_utf8_width(s) <= width || width == 0) return;
  size_t w = 0;
  char *p = s;
  for (; *p; p++) {
    if (((unsigned char)*p & 0xC0) != 0x80) {
      if (w == width - 1) break;
      w++;
    }
  }
  p[0] = '~';
  p[1] = '\0';
}

json_t *ctl_json_path(const json_t *obj, const char *path) {
  char part[128];
  const json_t *cur = obj;
  while (cur && *path) {
    const char *dot = strchr(path, '.');
    size_t len = dot ? (size_t)(dot - path) : strlen(path);
    if (len >= sizeof part) return NULL;
    memcpy(part, path, len);
    part[len] = '\0';
    cur = json_is_object(cur) ? json_object_get(cur, part) : NULL;
    path += len + (dot ? 1 : 0);
  }
  return (json_t *)cur;
}

static void ctl_fmt_bytes(double b, char *buf, size_t n) {
  static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  int u = 0;
  while (b >= 1024 && u < 5) { b /= 1024; u++; }
  if (u == 0) snprintf(buf, n, "%.0f B", b);
  else snprintf(buf, n, "%.1f %s", b, units[u]);
}

const char *ctl_fmt_value(const json_t *v, ctl_fmt f, char *buf, size_t n) {
  if (!v || json_is_null(v)) { snprintf(buf, n, "-"); return buf; }
  double num = json_is_number(v) ? json_number_value(v) : 0;
  switch (f) {
    case CTL_F_BYTES:
      if (json_is_number(v)) { ctl_fmt_bytes(num, buf, n); return buf; }
      break;
    case CTL_F_INT:
      if (json_is_integer(v)) { snprintf(buf, n, "%" JSON_INTEGER_FORMAT, json_integer_value(v)); return buf; }
      break;
    case CTL_F_FLOAT:
      if (json_is_number(v)) { snprintf(buf, n, "%.3f", num); return buf; }
      break;
    case CTL_F_PCT:
      if (json_is_number(v)) { snprintf(buf, n, "%.1f%%", num * 100.0); return buf; }
      break;
    case CTL_F_TIME:
      if (json_is_integer(v)) {
        time_t t = (time_t)(json_integer_value(v) / 1000);
        struct tm tm;
        if (t <= 0 || !gmtime_r(&t, &tm)) { snprintf(buf, n, "-"); return buf; }
        strftime(buf, n, "%Y-%m-%d %H:%M:%SZ", &tm);
        return buf;
      }
      break;
    case CTL_F_BOOL:
      if (json_is_boolean(v)) { snprintf(buf, n, "%s", json_is_true(v) ? "yes" : "no"); return buf; }
      break;
    case CTL_F_STR: break;
  }
  if (json_is_string(v)) snprintf(buf, n, "%s", json_string_value(v));
  else if (json_is_integer(v)) snprintf(buf, n, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
  else if (json_is_real(v)) snprintf(buf, n, "%g", json_real_value(v));
  else if (json_is_boolean(v)) snprintf(buf, n, "%s", json_is_true(v) ? "true" : "false");
  else {
    char *d = json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER);
    snprintf(buf, n, "%s", d ? d : "?");
    free(d);
  }
  return buf;
}

void ctl_out_table(FILE *f, const ctl_col *cols, const json_t *rows, int width) {
  size_t nc = 0, nr = json_array_size(rows);
  while (cols[nc].key) nc++;
  if (nr == 0) { fprintf(f, "(none)\n"); return; }
  char *cells = malloc((nr + 1) * nc * CTL_CELL_MAX);
  size_t *w = calloc(nc, sizeof *w);
  if (!cells || !w) { free(cells); free(w); fprintf(f, "(out of memory)\n"); return; }
#define CELL(r, c) (cells + ((r) * nc + (c)) * CTL_CELL_MAX)
  for (size_t c = 0; c < nc; c++) {
    snprintf(CELL(0, c), CTL_CELL_MAX, "%s", cols[c].title);
    w[c] = ctl_utf8_width(CELL(0, c));
    for (size_t r = 0; r < nr; r++) {
      ctl_fmt_value(ctl_json_path(json_array_get(rows, r), cols[c].key), cols[c].fmt,
                    CELL(r + 1, c), CTL_CELL_MAX);
      size_t cw = ctl_utf8_width(CELL(r + 1, c));
      if (cw > w[c]) w[c] = cw;
    }
  }
  /* Shrink the widest shrinkable column until the table fits (2 spaces between columns). */
  for (;;) {
    size_t total = 0;
    for (size_t c = 0; c < nc; c++) total += w[c] + (c ? 2 : 0);
    if (width <= 0 || total <= (size_t)width) break;
    size_t best = nc;
    for (size_t c = 0; c < nc; c++)
      if (cols[c].shrink && w[c] > CTL_MIN_SHRUNK && (best == nc || w[c] > w[best])) best = c;
    if (best == nc) break;
    size_t over = total - (size_t)width;
    w[best] = w[best] - over >= CTL_MIN_SHRUNK && over < w[best] ? w[best] - over : CTL_MIN_SHRUNK;
  }
  for (size_t r = 0; r <= nr; r++) {
    for (size_t c = 0; c < nc; c++) {
      char *s = CELL(r, c);
      ctl_utf8_cut(s, w[c]);
      size_t pad = w[c] - ctl_utf8_width(s);
      int right = r > 0 && cols[c].fmt != CTL_F_STR && cols[c].fmt != CTL_F_TIME;
      if (c) fputs("  ", f);
      if (right) fprintf(f, "%*s%s", (int)pad, "", s);
      else if (c + 1 < nc) fprintf(f, "%s%*s", s, (int)pad, "");
      else fputs(s, f);
    }
    fputc('\n', f);
  }
#undef CELL
  free(cells);
  free(w);
}

void ctl_out_fields(FILE *f, const ctl_col *cols, const json_t *obj) {
  size_t lw = 0;
  for (const ctl_col *c = cols; c->key; c++)
    if (strlen(c->title) > lw) lw = strlen(c->title);
  char buf[CTL_CELL_MAX];
  for (const ctl_col *c = cols; c->key; c++)
    fprintf(f, "%s:%*s %s\n", c->title, (int)(lw - strlen(c->title)), "",
            ctl_fmt_value(ctl_json_path(obj, c->key), c->fmt, buf, sizeof buf));
}

int ctl_out_json(FILE *f, const json_t *v) {
  int rc = json_dumpf(v, f, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
  fputc('\n', f);
  return rc;
}
