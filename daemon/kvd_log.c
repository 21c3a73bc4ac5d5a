/* kvd_log.c: one-line logfmt logs on stderr (see kvd_log.h). */
#include "daemon/kvd_log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static kvd_log_level g_level = KVD_LOG_INFO;
static const char *const g_names[] = {"error", "warn", "info", "debug"};

void kvd_log_set_level(kvd_log_level lv) { g_level = lv; }

int kvd_log_enabled(kvd_log_level lv) { return lv <= g_level; }

int kvd_log_level_parse(const char *s) {
  for (int i = 0; i < 4; i++)
    if (strcmp(s, g_names[i]) == 0) return i;
  return -1;
}

void kvd_log(kvd_log_level lv, const char *event, const char *fmt, ...) {
  if (!kvd_log_enabled(lv)) return;
  char line[2048];
  struct timespec ts;
  struct tm tm;
  clock_gettime(CLOCK_REALTIME, &ts);
  gmtime_r(&ts.tv_sec, &tm);
  int n = snprintf(line, sizeof line,
                   "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s event=%s ",
                   tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                   tm.tm_sec, ts.tv_nsec / 1000000, g_names[lv], event);
  if (n < 0) return;
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
  va_end(ap);
  size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
  if (len > sizeof line - 2) len = sizeof line - 2;
  while (len > 0 && line[len - 1] == ' ') len--;
  line[len++] = '\n';
  ssize_t w = write(STDERR_FILENO, line, len);
  (void)w;
}

const char *kvd_log_quote(const char *s, char *out, unsigned cap) {
  if (cap == 0) return out;
  int need = (*s == 0) || strpbrk(s, " \"=\t\n\\") != NULL;
  unsigned o = 0;
  if (need && o + 1 < cap) out[o++] = '"';
  for (; *s && o + 3 < cap; s++) {
    unsigned char ch = (unsigned char)*s;
    if (ch == '"' || ch == '\\') { out[o++] = '\\'; out[o++] = (char)ch; }
    else out[o++] = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
  }
  if (need && o + 1 < cap) out[o++] = '"';
  out[o] = 0;
  return out;
}
