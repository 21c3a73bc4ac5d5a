/* kvd_listen.c: listen address checks before gRPC binds, and gRPC's log routed into ours
 * (see kvd_listen.h). gRPC reports a failed bind only as a log line (an absl status dump) and
 * a 0 port; e8kvd checks the usual causes of a unix socket itself first, and for anything else
 * takes the system call and OS error out of gRPC's last error line. */
#include "daemon/kvd_listen.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <grpc/support/log.h>

#include "daemon/kvd_log.h"

int kvd_listen_unix_check(const char *path, char *why, size_t cap) {
  size_t n = strlen(path);
  if (n >= sizeof ((struct sockaddr_un *)0)->sun_path) {
    snprintf(why, cap, "the socket path is %zu bytes, over the %zu a unix socket address holds; "
                       "choose a shorter path", n, sizeof ((struct sockaddr_un *)0)->sun_path - 1);
    return -1;
  }
  char dir[sizeof ((struct sockaddr_un *)0)->sun_path];
  const char *slash = strrchr(path, '/');
  if (!slash) snprintf(dir, sizeof dir, ".");
  else if (slash == path) snprintf(dir, sizeof dir, "/");
  else snprintf(dir, sizeof dir, "%.*s", (int)(slash - path), path);
  struct stat st;
  if (stat(dir, &st) != 0) {
    if (errno == ENOENT)
      snprintf(why, cap, "directory %s does not exist (e8kvd does not create it): create it "
                         "(mkdir -p %s) or choose a socket path in an existing directory", dir, dir);
    else
      snprintf(why, cap, "cannot use directory %s: %s", dir, strerror(errno));
    return -1;
  }
  if (!S_ISDIR(st.st_mode)) {
    snprintf(why, cap, "%s is not a directory", dir);
    return -1;
  }
  if (access(dir, W_OK | X_OK) != 0) {
    snprintf(why, cap, "directory %s is not writable by this user (uid %u), and e8kvd creates "
                       "the socket file there: %s", dir, (unsigned)geteuid(), strerror(errno));
    return -1;
  }
  if (lstat(path, &st) == 0 && !S_ISSOCK(st.st_mode)) {
    snprintf(why, cap, "%s exists and is not a socket (e8kvd replaces only a stale socket "
                       "file): remove it or choose another path", path);
    return -1;
  }
  return 0;
}

/* ------------------------------------------------------------------ gRPC's log */

static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_capture;      /* 1 between capture_begin and capture_end */
static char g_last[1024]; /* the last gRPC error line of the capture ("" = none) */

static void grpc_log_line(gpr_log_func_args *a) {
  const char *file = a->file ? a->file : "?";
  const char *base = strrchr(file, '/');
  char q[2048];
  kvd_log_quote(a->message ? a->message : "", q, sizeof q);
  int kept = 0;
  if (a->severity == GPR_LOG_SEVERITY_ERROR) {
    pthread_mutex_lock(&g_lock);
    if (g_capture) snprintf(g_last, sizeof g_last, "%s", a->message ? a->message : "");
    kept = g_capture;
    pthread_mutex_unlock(&g_lock);
  }
  if (a->severity == GPR_LOG_SEVERITY_ERROR && !kept) {
    KVD_WARN("grpc", "src=%s:%d msg=%s", base ? base + 1 : file, a->line, q);
  } else {
    KVD_DEBUG("grpc", "src=%s:%d msg=%s", base ? base + 1 : file, a->line, q);
  }
}

void kvd_listen_grpc_log_init(void) {
  if (getenv("GRPC_VERBOSITY") || getenv("GRPC_TRACE")) return;
  gpr_set_log_function(grpc_log_line);
}

void kvd_listen_grpc_capture_begin(void) {
  pthread_mutex_lock(&g_lock);
  g_capture = 1;
  g_last[0] = 0;
  pthread_mutex_unlock(&g_lock);
}

/* The quoted value after key (e.g. os_error:"...") in s, into out; 0 if found. */
static int field(const char *s, const char *key, char *out, size_t cap) {
  const char *p = strstr(s, key);
  if (!p) return -1;
  p += strlen(key);
  const char *e = strchr(p, '"');
  if (!e) return -1;
  snprintf(out, cap, "%.*s", (int)(e - p), p);
  return 0;
}

int kvd_listen_grpc_capture_end(char *out, size_t cap) {
  char last[sizeof g_last];
  pthread_mutex_lock(&g_lock);
  memcpy(last, g_last, sizeof last);
  g_capture = 0;
  pthread_mutex_unlock(&g_lock);
  out[0] = 0;
  if (!last[0]) return -1;
  char sys[64], os[256];
  if (field(last, "os_error:\"", os, sizeof os) == 0) {
    if (field(last, "syscall:\"", sys, sizeof sys) == 0) snprintf(out, cap, "%s: %s", sys, os);
    else snprintf(out, cap, "%s", os);
  } else {
    snprintf(out, cap, "%.200s", last);
  }
  return 0;
}
