/* kvd_main.c: e8kvd's main(): configuration, store, namespaces, metrics, gRPC server, then
 * wait for SIGTERM/SIGINT and shut down in order (stop accepting, finish or cancel in-flight
 * calls, stop maintenance, close the store), exit 0. Exit codes: 0 clean stop, 1 startup
 * failure (message logged), 2 bad flags. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "codec/e8codec.h"
#include "daemon/kvd_listen.h"
#include "daemon/kvd_log.h"
#include "daemon/kvd_service.h"
#include "store/e8store.h"

static volatile int g_stop_maint;

static double mono_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static char *slurp(const char *path, char *err, size_t cap) {
  FILE *f = fopen(path, "rb");
  if (!f) { snprintf(err, cap, "%s: %s", path, strerror(errno)); return NULL; }
  char *buf = malloc(1 << 20);
  size_t n = buf ? fread(buf, 1, (1 << 20) - 1, f) : 0;
  int big = !feof(f);
  fclose(f);
  if (!buf || big || n == 0) {
    snprintf(err, cap, "%s: empty, unreadable or over 1 MiB", path);
    free(buf);
    return NULL;
  }
  buf[n] = 0;
  return buf;
}

static int open_store(kvd_app *app, char *err, size_t cap) {
  const kvd_config *c = app->cfg;
  if (mkdir(c->data_dir, 0750) != 0 && errno != EEXIST) {
    snprintf(err, cap, "--data-dir %.300s: %s", c->data_dir, strerror(errno));
    return -1;
  }
  e8s_config sc;
  e8s_config_init(&sc);
  sc.dir = c->data_dir;
  sc.flags = E8S_OPEN_CREATE;
  sc.capacity_bytes = c->capacity_bytes;
  sc.segment_bytes = c->segment_bytes;
  sc.lease_ms = c->lookup_lease_ms;
  sc.io_engine = strcmp(c->io_engine, "uring") == 0    ? E8S_IO_URING
                 : strcmp(c->io_engine, "pwrite") == 0 ? E8S_IO_PWRITE
                                                       : E8S_IO_AUTO;
  int rc = e8s_open(&sc, &app->store);
  if (rc != E8S_OK) {
    snprintf(err, cap, "cannot open store %.300s: %s (%.300s)", c->data_dir, e8s_error_name(rc),
             e8s_last_error_detail());
    return -1;
  }
  for (size_t i = 0; i < kvd_auth_n_namespaces(app->auth); i++) {
    e8s_ns_info ni;
    const char *ns = kvd_auth_namespace(app->auth, i);
    rc = e8s_ns_get(app->store, ns, &ni);
    if (rc == E8S_ERR_NOTFOUND) rc = e8s_ns_create(app->store, ns, NULL, 0, &ni);
    if (rc == E8S_ERR_EXISTS) rc = E8S_OK;
    if (rc != E8S_OK) {
      snprintf(err, cap, "namespace %s: %s (%s)", ns, e8s_error_name(rc),
               e8s_last_error_detail());
      return -1;
    }
    kvd_auth_bind(app->auth, i, ni.id, ni.salt);
  }
  return 0;
}

static void store_gauges(void *ctx, FILE *f) {
  kvd_app *app = ctx;
  e8s_stats s;
  if (e8s_stats_get(app->store, &s) != E8S_OK) return;
  const struct { const char *name, *help; uint64_t v; } g[] = {
      {"e8kvd_store_used_bytes", "Live record bytes (headers + payloads).", s.used_bytes},
      {"e8kvd_store_capacity_bytes", "Store byte budget (0 = unlimited).", s.capacity_bytes},
      {"e8kvd_store_disk_bytes", "Bytes of all segment files, live and dead.", s.disk_bytes},
      {"e8kvd_store_chunks", "Chunks stored, all namespaces.", s.chunks},
      {"e8kvd_store_sessions", "Sessions, all namespaces.", s.sessions},
      {"e8kvd_store_segments", "Segment files.", s.segments},
      {"e8kvd_store_quarantined", "Chunks quarantined after a CRC failure.", s.quarantined},
      {"e8kvd_store_evictions", "Chunks evicted since start.", s.evictions},
  };
  for (size_t i = 0; i < sizeof g / sizeof g[0]; i++)
    fprintf(f, "# HELP %s %s\n# TYPE %s gauge\n%s %llu\n", g[i].name, g[i].help, g[i].name,
            g[i].name, (unsigned long long)g[i].v);
  uint64_t calls, recs;
  kvd_commit_stats(app->commit, &calls, &recs);
  fprintf(f, "# HELP e8kvd_store_writes_total Store put calls (e8s_put) made by PutChunks, "
             "one a batch; the store group-commits concurrent calls.\n"
             "# TYPE e8kvd_store_writes_total counter\ne8kvd_store_writes_total %llu\n"
             "# HELP e8kvd_store_written_chunks_total Chunks handed to those writes.\n"
             "# TYPE e8kvd_store_written_chunks_total counter\n"
             "e8kvd_store_written_chunks_total %llu\n",
          (unsigned long long)calls, (unsigned long long)recs);
}

static void on_call_done(void *ctx, int method, const char *path, const kvd_status *st,
                         double seconds, uint64_t in, uint64_t out) {
  kvd_app *app = ctx;
  kvd_metrics_call(app->metrics, method, st->code, seconds, in, out);
  if (st->code != KVD_OK) {
    char q[KVD_MSG_MAX + 8];
    KVD_INFO("call_error", "method=%s code=%s ms=%.1f msg=%s", path, kvd_code_name(st->code),
             seconds * 1e3, kvd_log_quote(st->msg, q, sizeof q));
  } else {
    KVD_DEBUG("call", "method=%s ms=%.3f in=%llu out=%llu", path, seconds * 1e3,
              (unsigned long long)in, (unsigned long long)out);
  }
}

/* Pending purges live in memory only (kvd_purge.h): a crash loses them and their chunks stay
 * stored. The list's marker file, left behind by such a crash, makes this start say so (a
 * warning naming the remedy) instead of the loss going unseen; then the new list takes it. */
static int purge_marker(kvd_app *app, char *err, size_t cap) {
  char path[4200];
  snprintf(path, sizeof path, "%s/e8kvd-purge-pending", app->cfg->data_dir);
  if (access(path, F_OK) == 0) {
    char q[600];
    KVD_WARN("purges_lost", "marker=%s msg=%s", path,
             kvd_log_quote("the previous e8kvd stopped (a crash, kill -9) while chunk purges "
                           "waited for a lease or a read: those chunks were not deleted; "
                           "`e8kvctl gc` in each namespace that purged deletes them", q,
                           sizeof q));
    if (unlink(path) != 0) KVD_WARN("purge_marker", "path=%s error=%s", path, strerror(errno));
  }
  if (kvd_purge_set_marker(app->purge, path) != 0) {
    snprintf(err, cap, "out of memory");
    return -1;
  }
  return 0;
}

static unsigned in_flight(const void *ctx) {
  const kvd_app *app = ctx;
  return app->server ? kvd_server_in_flight(app->server) : 0;
}

static void *maint_main(void *arg) {
  kvd_app *app = arg;
  while (!g_stop_maint) {
    for (int i = 0; i < 20 && !g_stop_maint; i++) nanosleep(&(struct timespec){0, 100000000}, NULL);
    int rc = e8s_maintain(app->store);
    if (rc != E8S_OK) KVD_WARN("maintain", "error=%s", e8s_error_name(rc));
    kvd_purge_run(app->purge, app->store); /* purges whose lease ended or expired */
  }
  return NULL;
}

/* What can be checked before anything is created: each unix socket's directory and path (the
 * bind checks them again) and the TLS files. A start refused here leaves no --data-dir behind
 * (a new user's trial: a typo in the socket directory created ./e8kv-data all the same). */
static int precheck(const kvd_config *c, char **cert, char **key, char *err, size_t cap) {
  for (int i = 0; i < c->n_listen; i++) {
    const char *a = c->listen_addrs[i];
    if (strncmp(a, "unix:", 5) != 0) continue;
    char why[512];
    if (kvd_listen_unix_check(a + 5 + (strncmp(a, "unix://", 7) == 0 ? 2 : 0), why,
                              sizeof why) != 0) {
      snprintf(err, cap, "cannot listen on '%s': %s", a, why);
      return -1;
    }
  }
  if (*c->tls_cert &&
      (!(*cert = slurp(c->tls_cert, err, cap)) || !(*key = slurp(c->tls_key, err, cap))))
    return -1;
  return 0;
}

static int start_server(kvd_app *app, char **cert, char **key, char *err, size_t cap) {
  const kvd_config *c = app->cfg;
  size_t n;
  const kvd_method *m = kvd_service_methods(&n);
  kvd_server_opts o = {
      .addrs = (const char *const *)c->listen_addrs, .n_addrs = c->n_listen,
      .tls_cert_pem = *cert, .tls_key_pem = *key, .max_message_bytes = c->max_message_bytes,
      .threads = c->threads, .unary_threads = c->unary_threads, .max_call_ms = c->max_call_ms,
      .stall_ms = c->stall_ms, .methods = m, .n_methods = n, .app = app,
      .on_done = on_call_done};
  return kvd_server_start(&o, &app->server, err, cap);
}

static int wait_signal(void) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  int sig = 0;
  while (sigwait(&set, &sig) != 0) {
  }
  return sig;
}

int main(int argc, char **argv) {
  static kvd_config cfg;
  switch (kvd_config_parse(&cfg, argc, argv, stdout, stderr)) {
    case KVD_CONFIG_EXIT_OK: return 0;
    case KVD_CONFIG_EXIT_ERR: return 2;
    case KVD_CONFIG_RUN: break;
  }
  kvd_log_set_level((kvd_log_level)kvd_log_level_parse(cfg.log_level));
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, NULL); /* every thread inherits: only sigwait sees them */
  signal(SIGPIPE, SIG_IGN);

  static kvd_app app;
  app.cfg = &cfg;
  app.started = mono_s();
  pthread_mutex_init(&app.locks_mu, NULL);
  char err[1024] = "";
  char *cert = NULL, *key = NULL;
  pthread_t maint;
  int maint_started = 0, rc = 1, port = 0;
  if (kvd_auth_load(cfg.tokens_file, &app.auth, err, sizeof err) != 0) goto out;
  if (precheck(&cfg, &cert, &key, err, sizeof err) != 0) goto out;
  if (open_store(&app, err, sizeof err) != 0) goto out;
  if (!(app.commit = kvd_commit_create(app.store)) ||
      !(app.purge = kvd_purge_create(cfg.max_purge_pending))) {
    snprintf(err, sizeof err, "out of memory");
    goto out;
  }
  if (purge_marker(&app, err, sizeof err) != 0) goto out;
  size_t n_methods;
  kvd_service_methods(&n_methods);
  app.metrics = kvd_metrics_create(kvd_service_method_names(), n_methods);
  kvd_metrics_set_in_flight(app.metrics, in_flight, &app);
  if (*cfg.metrics_listen &&
      kvd_metrics_serve(app.metrics, cfg.metrics_listen, store_gauges, &app, &port, err,
                        sizeof err) != 0)
    goto out;
  if (start_server(&app, &cert, &key, err, sizeof err) != 0) goto out;
  pthread_create(&maint, NULL, maint_main, &app);
  maint_started = 1;
  KVD_INFO("ready", "data_dir=%s threads=%u unary_threads=%u max_message_bytes=%llu metrics_port=%d "
                    "namespaces=%zu auth=%s io_engine=%s codec=\"%s\"",
           cfg.data_dir, cfg.threads, cfg.unary_threads, (unsigned long long)cfg.max_message_bytes, port,
           kvd_auth_n_namespaces(app.auth), *cfg.tokens_file ? "tokens" : "open",
           e8s_io_engine_used(app.store) == E8S_IO_URING ? "io_uring" : "pwrite",
           e8c_version());
  int sig = wait_signal();
  KVD_INFO("shutdown", "signal=%s in_flight=%u", sig == SIGTERM ? "SIGTERM" : "SIGINT",
           kvd_server_in_flight(app.server));
  kvd_server_shutdown(app.server, cfg.shutdown_grace_ms);
  rc = 0;
out:
  if (rc != 0) {
    char q[1100];
    KVD_ERROR("startup_failed", "msg=%s", kvd_log_quote(err, q, sizeof q));
  }
  if (maint_started) { g_stop_maint = 1; pthread_join(maint, NULL); }
  kvd_server_destroy(app.server);
  /* no call runs any more and the leases die with the process: purges that waited for a lease
   * happen now (the pending list is in memory only; a restart would keep those chunks) */
  if (rc == 0 && app.purge && kvd_purge_pending(app.purge, 0)) {
    e8s_leases_end(app.store);
    size_t done = kvd_purge_run(app.purge, app.store);
    KVD_INFO("purge_at_stop", "chunks_purged=%zu still_pending=%zu", done,
             kvd_purge_pending(app.purge, 0));
  }
  if (app.metrics) kvd_metrics_free(app.metrics);
  kvd_commit_free(app.commit);
  kvd_purge_free(app.purge);
  e8s_close(app.store);
  kvd_auth_free(app.auth);
  kvd_config_free(&cfg);
  free(cert);
  free(key);
  if (rc == 0) KVD_INFO("stopped", "clean=1");
  return rc;
}
