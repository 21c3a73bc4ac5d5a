/* kvd_metrics.h: e8kvd's Prometheus metrics, served as text over HTTP by libmicrohttpd.
 *
 * GET /metrics on --metrics-listen returns the Prometheus text format (version 0.0.4):
 *   e8kvd_requests_total{method}             calls finished, by method
 *   e8kvd_errors_total{method,code}          calls finished with a non-OK status
 *   e8kvd_request_seconds{method} histogram  call latency (start to status sent)
 *   e8kvd_received_bytes_total{method}       request message bytes
 *   e8kvd_sent_bytes_total{method}           response message bytes
 *   e8kvd_lookups_total, e8kvd_lookup_hits_total, e8kvd_lookup_misses_total,
 *   e8kvd_lookup_matched_tokens_total, e8kvd_chunks_stored_total,
 *   e8kvd_chunks_deduplicated_total, e8kvd_chunks_read_total, e8kvd_raw_chunks_encoded_total
 *   e8kvd_calls_in_flight, process_resident_memory_bytes, e8kvd_resident_memory_peak_bytes
 *   plus the store gauges the daemon writes from its gauges callback (e8kvd_store_*).
 * Method names are the RPC names ("PutChunks", "Health/Check"); "unknown" for methods this
 * server does not implement.
 * Thread safety: every update is an atomic add; any thread may call them.
 */
#ifndef KVD_METRICS_H
#define KVD_METRICS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "daemon/kvd_status.h"

typedef struct kvd_metrics kvd_metrics;

typedef enum kvd_counter {
  KVD_M_LOOKUPS = 0,
  KVD_M_LOOKUP_HITS,
  KVD_M_LOOKUP_MISSES,
  KVD_M_LOOKUP_MATCHED_TOKENS,
  KVD_M_CHUNKS_STORED,
  KVD_M_CHUNKS_DEDUP,
  KVD_M_CHUNKS_READ,
  KVD_M_RAW_ENCODED,
  KVD_M_N_COUNTERS
} kvd_counter;

/* Writes extra metric lines (with their # TYPE lines) at scrape time. */
typedef void (*kvd_gauges_fn)(void *ctx, FILE *out);

/* names[0..n): metric label of each method index. */
kvd_metrics *kvd_metrics_create(const char *const *names, size_t n);
void kvd_metrics_free(kvd_metrics *m);

/* Records one finished call; method -1 = unknown method, -2 = Health/Check. */
void kvd_metrics_call(kvd_metrics *m, int method, kvd_code code, double seconds,
                      uint64_t bytes_in, uint64_t bytes_out);
void kvd_metrics_add(kvd_metrics *m, kvd_counter c, uint64_t v);
/* Current value of a counter; request/response bytes summed over every method. */
uint64_t kvd_metrics_counter(kvd_metrics *m, kvd_counter c);
void kvd_metrics_bytes(kvd_metrics *m, uint64_t *in, uint64_t *out);
void kvd_metrics_set_in_flight(kvd_metrics *m, unsigned (*fn)(const void *), const void *ctx);

/* The whole text page; free() it. */
char *kvd_metrics_render(kvd_metrics *m, kvd_gauges_fn gauges, void *gctx, size_t *len);

/* Serves /metrics on host:port (IPv4 or [IPv6]; port 0 = any free port, *port_out tells).
 * -1 with a message in err on failure. */
int kvd_metrics_serve(kvd_metrics *m, const char *hostport, kvd_gauges_fn gauges, void *gctx,
                      int *port_out, char *err, size_t cap);
/* Stops the HTTP server (if any). */
void kvd_metrics_stop(kvd_metrics *m);

#endif
