/*
 * ctl_out.c: rendering of command results (JSON values) for people and
 * scripts; terminal width from TIOCGWINSZ.
 */
#include <inttypes.h>
#include <locale.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>
#include <wchar.h>

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

/* Length (1..4) and code point of the UTF-8 sequence at s; 0 when it is not one (a stray,
 * overlong or truncated byte sequence, a surrogate, beyond U+10FFFF). */
static int ctl_utf8_decode(const unsigned char *s, uint32_t *cp) {
  if (s[0] < 0x80) { *cp = s[0]; return 1; }
  int n = s[0] >= 0xF0 && s[0] <= 0xF4 ? 4 : s[0] >= 0xE0 ? 3 : s[0] >= 0xC2 && s[0] < 0xE0 ? 2 : 0;
  if (!n) return 0;
  uint32_t c = s[0] & (0x7F >> n);
  for (int i = 1; i < n; i++) {
    if ((s[i] & 0xC0) != 0x80) return 0;
    c = c << 6 | (s[i] & 0x3F);
  }
  static const uint32_t min[] = {0, 0, 0x80, 0x800, 0x10000};
  if (c < min[n] || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return 0;
  *cp = c;
  return n;
}

/* Terminal columns of one code point (glibc's wcwidth in a UTF-8 locale: 2 for CJK and
 * other wide characters, 0 for combining marks; 1 where it has no answer). */
static int ctl_cp_width(uint32_t cp) {
  if (cp < 0x80) return 1;
  static locale_t utf8;
  if (!utf8) utf8 = newlocale(LC_CTYPE_MASK, "C.UTF-8", (locale_t)0);
  if (!utf8) return 1;
  locale_t old = uselocale(utf8);
  int w = wcwidth((wchar_t)cp);
  uselocale(old);
  return w < 0 ? 1 : w;
}

/* Display width of the code point at s (a byte that starts none counts 1); *len its bytes. */
static size_t ctl_glyph(const char *s, size_t *len) {
  uint32_t cp;
  int n = ctl_utf8_decode((const unsigned char *)s, &cp);
  *len = n ? (size_t)n : 1;
  return n ? (size_t)ctl_cp_width(cp) : 1;
}

size_t ctl_utf8_width(const char *s) {
  size_t w = 0, len;
  for (; *s; s += len) w += ctl_glyph(s, &len);
  return w;
}

size_t ctl_text_safe(const char *in, char *out, size_t n) {
  size_t o = 0;
  if (!n) return 0;
  for (const unsigned char *p = (const unsigned char *)in; *p;) {
    char esc[12];
    uint32_t cp = 0;
    int len = ctl_utf8_decode(p, &cp);
    if (!len) snprintf(esc, sizeof esc, "\\x%02x", *p), len = 1;
    else if (cp == '\n') snprintf(esc, sizeof esc, "\\n");
    else if (cp == '\t') snprintf(esc, sizeof esc, "\\t");
    else if (cp == '\r') snprintf(esc, sizeof esc, "\\r");
    else if (cp < 0x20 || cp == 0x7F) snprintf(esc, sizeof esc, "\\x%02x", (unsigned)cp);
    else if (cp >= 0x80 && cp < 0xA0) snprintf(esc, sizeof esc, "\\u%04x", (unsigned)cp);
    else esc[0] = '\0';
    size_t add = esc[0] ? strlen(esc) : (size_t)len;
    if (o + add >= n) break; /* never half a code point or half an escape */
    memcpy(out + o, esc[0] ? esc : (const char *)p, add);
    o += add;
    p += len;
  }
  out[o] = '\0';
  return o;
}

/* Cuts s in place to at most `width` display columns, keeping its start and its end
 * around a "~" (names often differ only at the end: "chat-~0042"). */
static void ctl_utf8_cut(char *s, size_t width) {
  size_t w = ctl_utf8_width(s);
  if (w <= width || width == 0) return;
  size_t head = (width - 1) / 2 + (width - 1) % 2, tail = width - 1 - head;
  size_t h = 0, hw = 0, len, t = strlen(s);
  for (size_t gw; s[h] && hw + (gw = ctl_glyph(s + h, &len)) <= head; h += len) hw += gw;
  /* The tail: the longest suffix of at most `tail` columns that starts a code point. */
  for (size_t i = h; s[i]; i += len) {
    ctl_glyph(s + i, &len);
    if (ctl_utf8_width(s + i) <= tail) { t = i; break; }
  }
  s[h] = '~';
  memmove(s + h + 1, s + t, strlen(s + t) + 1);
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
    case CTL_F_LIMIT:
      if (json_is_number(v) && num == 0) { snprintf(buf, n, "unlimited"); return buf; }
      /* fall through */
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
  if (json_is_string(v)) ctl_text_safe(json_string_value(v), buf, n);
  else if (json_is_integer(v)) snprintf(buf, n, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
  else if (json_is_real(v)) snprintf(buf, n, "%g", json_real_value(v));
  else if (json_is_boolean(v)) snprintf(buf, n, "%s", json_is_true(v) ? "true" : "false");
  else {
    char *d = json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER);
    ctl_text_safe(d ? d : "?", buf, n);
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
  /* Fit the table to `width` (2 spaces between columns). */
  int *shown = malloc(nc * sizeof *shown);
  if (!shown) { free(cells); free(w); return; }
  for (size_t c = 0; c < nc; c++) shown[c] = 1;
  /* First leave out droppable columns while even the narrowest table would not fit. */
  for (;;) {
    size_t min_total = 0, first = 1, drop = nc;
    for (size_t c = 0; c < nc; c++) {
      if (!shown[c]) continue;
      size_t mw = cols[c].shrink == 1 && w[c] > CTL_MIN_SHRUNK ? CTL_MIN_SHRUNK : w[c];
      min_total += mw + (first ? 0 : 2);
      first = 0;
      if (cols[c].shrink == 2) drop = c;
    }
    if (width <= 0 || min_total <= (size_t)width || drop == nc) break;
    shown[drop] = 0;
  }
  /* Then cut the widest shrinkable column until the table fits. */
  for (;;) {
    size_t total = 0, first = 1;
    for (size_t c = 0; c < nc; c++)
      if (shown[c]) { total += w[c] + (first ? 0 : 2); first = 0; }
    if (width <= 0 || total <= (size_t)width) break;
    size_t best = nc;
    for (size_t c = 0; c < nc; c++)
      if (shown[c] && cols[c].shrink == 1 && w[c] > CTL_MIN_SHRUNK && (best == nc || w[c] > w[best]))
        best = c;
    if (best == nc) break;
    size_t over = total - (size_t)width;
    w[best] = over < w[best] - CTL_MIN_SHRUNK ? w[best] - over : CTL_MIN_SHRUNK;
  }
  size_t last = 0;
  for (size_t c = 0; c < nc; c++)
    if (shown[c]) last = c;
  for (size_t r = 0; r <= nr; r++) {
    int first = 1;
    for (size_t c = 0; c < nc; c++) {
      if (!shown[c]) continue;
      char *s = CELL(r, c);
      ctl_utf8_cut(s, w[c]);
      size_t pad = w[c] - ctl_utf8_width(s);
      int right = r > 0 && cols[c].fmt != CTL_F_STR && cols[c].fmt != CTL_F_TIME;
      if (!first) fputs("  ", f);
      first = 0;
      if (right) fprintf(f, "%*s%s", (int)pad, "", s);
      else if (c != last) fprintf(f, "%s%*s", s, (int)pad, "");
      else fputs(s, f);
    }
    fputc('\n', f);
  }
#undef CELL
  free(shown);
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
