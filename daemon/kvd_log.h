/* kvd_log.h: e8kvd's structured logs.
 *
 * One line per event on stderr, logfmt style (key=value, values with spaces quoted):
 *   ts=2026-11-29T08:01:02.123Z level=info event=listen addr=127.0.0.1:50051 tls=0
 * Lines are written with one write(2) each, so lines of concurrent threads never interleave.
 * Thread safe. The level is set once at start (kvd_log_set_level) before threads exist.
 */
#ifndef KVD_LOG_H
#define KVD_LOG_H

typedef enum kvd_log_level {
  KVD_LOG_ERROR = 0,
  KVD_LOG_WARN = 1,
  KVD_LOG_INFO = 2,
  KVD_LOG_DEBUG = 3
} kvd_log_level;

void kvd_log_set_level(kvd_log_level lv);
/* 1 if lines of level lv are written. */
int kvd_log_enabled(kvd_log_level lv);
/* Parses "error", "warn", "info", "debug"; returns -1 for anything else. */
int kvd_log_level_parse(const char *s);

/* Writes one line: ts, level, event=<event>, then `fmt` (already "k=v k=v" text; use
 * kvd_log_quote for free text). */
void kvd_log(kvd_log_level lv, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Copies s into out (cap bytes) as a logfmt value: quoted with \" and \\ escapes and control
 * characters replaced by '?' when it holds spaces, quotes or '='; truncated to fit. Returns out. */
const char *kvd_log_quote(const char *s, char *out, unsigned cap);

#define KVD_ERROR(ev, ...) kvd_log(KVD_LOG_ERROR, ev, __VA_ARGS__)
#define KVD_WARN(ev, ...) kvd_log(KVD_LOG_WARN, ev, __VA_ARGS__)
#define KVD_INFO(ev, ...) kvd_log(KVD_LOG_INFO, ev, __VA_ARGS__)
#define KVD_DEBUG(ev, ...) \
  do { if (kvd_log_enabled(KVD_LOG_DEBUG)) kvd_log(KVD_LOG_DEBUG, ev, __VA_ARGS__); } while (0)

#endif
