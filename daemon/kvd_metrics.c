/* kvd_metrics.c: counters, histograms and the libmicrohttpd endpoint (see kvd_metrics.h). */
#include "daemon/kvd_metrics.h"
#include "daemon/kvd_config.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <microhttpd.h>

#define N_CODES 15
#define N_BUCKETS 15
static const double g_bounds[N_BUCKETS] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                           0.1,    0.25,  0.5,    1,     2.5,  5,    10,  30};

typedef struct kvd_mcalls {
  atomic_ullong calls, bytes_in, bytes_out;
  atomic_ullong errors[N_CODES];
  atomic_ullong buckets[N_BUCKETS + 1]; /* last = +Inf */
  atomic_ullong sum_us;
} kvd_mcalls;

struct kvd_metrics {
  const char *const *names;
  size_t n;              /* table methods; then [n] = unknown, [n+1] = Health/Check */
  kvd_mcalls *per;
  atomic_ullong counters[KVD_M_N_COUNTERS];
  unsigned (*in_flight)(const void *);
  const void *in_flight_ctx;
  struct MHD_Daemon *httpd;
  kvd_gauges_fn gauges;
  void *gctx;
};

kvd_metrics *kvd_metrics_create(const char *const *names, size_t n) {
  kvd_metrics *m = calloc(1, sizeof *m);
  if (!m) return NULL;
  m->names = names;
  m->n = n;
  m->per = calloc(n + 2, sizeof *m->per);
  if (!m->per) { free(m); return NULL; }
  return m;
}

void kvd_metrics_free(kvd_metrics *m) {
  if (!m) return;
  kvd_metrics_stop(m);
  free(m->per);
  free(m);
}

void kvd_metrics_call(kvd_metrics *m, int method, kvd_code code, double seconds,
                      uint64_t bytes_in, uint64_t bytes_out) {
  size_t i = method >= 0 && (size_t)method < m->n ? (size_t)method
             : method == -2                         ? m->n + 1
                                                    : m->n;
  kvd_mcalls *c = &m->per[i];
  atomic_fetch_add(&c->calls, 1);
  atomic_fetch_add(&c->bytes_in, bytes_in);
  atomic_fetch_add(&c->bytes_out, bytes_out);
  if (code != KVD_OK && (unsigned)code < N_CODES) atomic_fetch_add(&c->errors[code], 1);
  size_t b = 0;
  while (b < N_BUCKETS && seconds > g_bounds[b]) b++;
  atomic_fetch_add(&c->buckets[b], 1);
  atomic_fetch_add(&c->sum_us, (unsigned long long)(seconds * 1e6));
}

void kvd_metrics_add(kvd_metrics *m, kvd_counter c, uint64_t v) {
  atomic_fetch_add(&m->counters[c], v);
}

uint64_t kvd_metrics_counter(kvd_metrics *m, kvd_counter c) {
  return atomic_load(&m->counters[c]);
}

void kvd_metrics_bytes(kvd_metrics *m, uint64_t *in, uint64_t *out) {
  *in = *out = 0;
  for (size_t i = 0; i < m->n + 2; i++) {
    *in += atomic_load(&m->per[i].bytes_in);
    *out += atomic_load(&m->per[i].bytes_out);
  }
}

void kvd_metrics_set_in_flight(kvd_metrics *m, unsigned (*fn)(const void *), const void *ctx) {
  m->in_flight = fn;
  m->in_flight_ctx = ctx;
}

static const char *method_name(const kvd_metrics *m, size_t i) {
  return i < m->n ? m->names[i] : i == m->n ? "unknown" : "Health/Check";
}

static void render_calls(kvd_metrics *m, FILE *f) {
  static const char *const heads[] = {
      "e8kvd_requests_total counter Calls finished, by method.",
      "e8kvd_received_bytes_total counter Request message bytes received, by method.",
      "e8kvd_sent_bytes_total counter Response message bytes sent, by method."};
  for (int h = 0; h < 3; h++) {
    char name[64];
    const char *sp = strchr(heads[h], ' ');
    snprintf(name, sizeof name, "%.*s", (int)(sp - heads[h]), heads[h]);
    const char *sp2 = strchr(sp + 1, ' ');
    fprintf(f, "# HELP %s %s\n# TYPE %s %.*s\n", name, sp2 + 1, name, (int)(sp2 - sp - 1),
            sp + 1);
    for (size_t i = 0; i < m->n + 2; i++) {
      kvd_mcalls *c = &m->per[i];
      unsigned long long v = h == 0 ? atomic_load(&c->calls)
                             : h == 1 ? atomic_load(&c->bytes_in)
                                      : atomic_load(&c->bytes_out);
      fprintf(f, "%s{method=\"%s\"} %llu\n", name, method_name(m, i), v);
    }
  }
  fprintf(f, "# HELP e8kvd_errors_total Calls finished with a non-OK gRPC status.\n"
             "# TYPE e8kvd_errors_total counter\n");
  for (size_t i = 0; i < m->n + 2; i++)
    for (int k = 1; k < N_CODES; k++) {
      unsigned long long v = atomic_load(&m->per[i].errors[k]);
      if (v)
        fprintf(f, "e8kvd_errors_total{method=\"%s\",code=\"%s\"} %llu\n", method_name(m, i),
                kvd_code_name((kvd_code)k), v);
    }
  fprintf(f, "# HELP e8kvd_request_seconds Call latency, from arrival to status sent.\n"
             "# TYPE e8kvd_request_seconds histogram\n");
  for (size_t i = 0; i < m->n + 2; i++) {
    kvd_mcalls *c = &m->per[i];
    unsigned long long acc = 0;
    for (int b = 0; b <= N_BUCKETS; b++) {
      acc += atomic_load(&c->buckets[b]);
      if (b < N_BUCKETS)
        fprintf(f, "e8kvd_request_seconds_bucket{method=\"%s\",le=\"%g\"} %llu\n",
                method_name(m, i), g_bounds[b], acc);
      else
        fprintf(f, "e8kvd_request_seconds_bucket{method=\"%s\",le=\"+Inf\"} %llu\n",
                method_name(m, i), acc);
    }
    fprintf(f, "e8kvd_request_seconds_sum{method=\"%s\"} %.6f\n", method_name(m, i),
            (double)atomic_load(&c->sum_us) * 1e-6);
    fprintf(f, "e8kvd_request_seconds_count{method=\"%s\"} %llu\n", method_name(m, i), acc);
  }
}

static void render_counters(kvd_metrics *m, FILE *f) {
  static const char *const names[KVD_M_N_COUNTERS][2] = {
      {"e8kvd_lookups_total", "Lookup calls answered."},
      {"e8kvd_lookup_hits_total", "Lookups that matched at least one chunk."},
      {"e8kvd_lookup_misses_total", "Lookups that matched nothing."},
      {"e8kvd_lookup_matched_tokens_total", "Tokens matched by lookups."},
      {"e8kvd_chunks_stored_total", "Chunks newly written by PutChunks."},
      {"e8kvd_chunks_deduplicated_total", "Chunks PutChunks found already stored."},
      {"e8kvd_chunks_read_total", "Chunks sent by GetChunks."},
      {"e8kvd_raw_chunks_encoded_total", "Raw chunks the daemon encoded with the CPU codec."}};
  for (int i = 0; i < KVD_M_N_COUNTERS; i++)
    fprintf(f, "# HELP %s %s\n# TYPE %s counter\n%s %llu\n", names[i][0], names[i][1],
            names[i][0], names[i][0], atomic_load(&m->counters[i]));
}

static void render_process(kvd_metrics *m, FILE *f) {
  unsigned long long rss = 0, hwm = 0;
  FILE *s = fopen("/proc/self/status", "r");
  char line[256];
  while (s && fgets(line, sizeof line, s)) {
    if (strncmp(line, "VmRSS:", 6) == 0) rss = strtoull(line + 6, NULL, 10) * 1024;
    if (strncmp(line, "VmHWM:", 6) == 0) hwm = strtoull(line + 6, NULL, 10) * 1024;
  }
  if (s) fclose(s);
  fprintf(f, "# HELP process_resident_memory_bytes Resident memory size in bytes.\n"
             "# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes %llu\n"
             "# HELP e8kvd_resident_memory_peak_bytes Peak resident memory (VmHWM).\n"
             "# TYPE e8kvd_resident_memory_peak_bytes gauge\n"
             "e8kvd_resident_memory_peak_bytes %llu\n", rss, hwm);
  if (m->in_flight)
    fprintf(f, "# HELP e8kvd_calls_in_flight Calls being served now.\n"
               "# TYPE e8kvd_calls_in_flight gauge\ne8kvd_calls_in_flight %u\n",
            m->in_flight(m->in_flight_ctx));
}

char *kvd_metrics_render(kvd_metrics *m, kvd_gauges_fn gauges, void *gctx, size_t *len) {
  char *buf = NULL;
  size_t n = 0;
  FILE *f = open_memstream(&buf, &n);
  if (!f) return NULL;
  render_calls(m, f);
  render_counters(m, f);
  render_process(m, f);
  if (gauges) gauges(gctx, f);
  fclose(f);
  *len = n;
  return buf;
}

static enum MHD_Result on_http(void *cls, struct MHD_Connection *conn, const char *url,
                               const char *method, const char *version,
                               const char *upload_data, size_t *upload_size, void **con_cls) {
  (void)version; (void)upload_data; (void)upload_size; (void)con_cls;
  kvd_metrics *m = cls;
  struct MHD_Response *r;
  unsigned code = MHD_HTTP_OK;
  if (strcmp(method, "GET") != 0 || strcmp(url, "/metrics") != 0) {
    static const char nf[] = "e8kvd: only GET /metrics is served here\n";
    r = MHD_create_response_from_buffer(sizeof nf - 1, (void *)nf, MHD_RESPMEM_PERSISTENT);
    code = MHD_HTTP_NOT_FOUND;
  } else {
    size_t len = 0;
    char *body = kvd_metrics_render(m, m->gauges, m->gctx, &len);
    if (!body) return MHD_NO;
    r = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    MHD_add_response_header(r, "Content-Type", "text/plain; version=0.0.4; charset=utf-8");
  }
  enum MHD_Result ret = MHD_queue_response(conn, code, r);
  MHD_destroy_response(r);
  return ret;
}

int kvd_metrics_serve(kvd_metrics *m, const char *hostport, kvd_gauges_fn gauges, void *gctx,
                      int *port_out, char *err, size_t cap) {
  struct sockaddr_storage ss;
  socklen_t sl;
  if (kvd_config_hostport(hostport, &ss, &sl) != 0) { /* checked at parse time too */
    snprintf(err, cap, "--metrics-listen '%s': expected host:port (IPv4 or [IPv6])",
             hostport);
    return -1;
  }
  m->gauges = gauges;
  m->gctx = gctx;
  unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_POLL;
  if (ss.ss_family == AF_INET6) flags |= MHD_USE_IPv6;
  m->httpd = MHD_start_daemon(flags, 0, NULL, NULL, on_http, m, MHD_OPTION_SOCK_ADDR,
                              (struct sockaddr *)&ss, MHD_OPTION_CONNECTION_LIMIT, 64u,
                              MHD_OPTION_CONNECTION_TIMEOUT, 10u, MHD_OPTION_END);
  if (!m->httpd) {
    snprintf(err, cap, "cannot serve metrics on '%s' (address in use?)", hostport);
    return -1;
  }
  const union MHD_DaemonInfo *di = MHD_get_daemon_info(m->httpd, MHD_DAEMON_INFO_BIND_PORT);
  *port_out = di ? di->port : 0;
  (void)sl;
  return 0;
}

void kvd_metrics_stop(kvd_metrics *m) {
  if (m->httpd) MHD_stop_daemon(m->httpd);
  m->httpd = NULL;
}
