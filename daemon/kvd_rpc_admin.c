/* kvd_rpc_admin.c: GetStats (any caller: its namespace; admin: the whole store too), Verify
 * and Compact (admin only). Long scans stop early when the call is cancelled or its deadline
 * passes (the store's progress callback asks). */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "daemon/kvd_session.h"

static double mono_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int count_sessions(kvd_app *app, uint32_t ns, uint64_t *n) {
  e8s_session_info buf[256];
  char after[E8S_NAME_MAX + 1] = "";
  int more = 1;
  *n = 0;
  while (more) {
    size_t got = 0;
    int e = e8s_session_list(app->store, ns, NULL, after, buf, 256, &got, &more);
    if (e != E8S_OK) return e;
    if (!got) break;
    *n += got;
    snprintf(after, sizeof after, "%s", buf[got - 1].name);
  }
  return E8S_OK;
}

void kvd_rpc_get_stats(kvd_app *app, kvd_call *call, const kvd_principal *who,
                       kvd_status *st) {
  ProtobufCMessage *rq = kvd_recv_request(call, &e8kv__v1__get_stats_request__descriptor, st);
  if (!rq) return;
  protobuf_c_message_free_unpacked(rq, NULL);
  E8kv__V1__NamespaceStats ns;
  E8kv__V1__StoreStats ss;
  E8kv__V1__DaemonStats ds;
  e8kv__v1__namespace_stats__init(&ns);
  e8kv__v1__store_stats__init(&ss);
  e8kv__v1__daemon_stats__init(&ds);
  e8s_ns_info ni;
  int e = e8s_ns_get_by_id(app->store, who->ns_id, &ni);
  if (e == E8S_OK) e = count_sessions(app, who->ns_id, &ns.sessions);
  e8s_stats s;
  if (e == E8S_OK) e = e8s_stats_get(app->store, &s);
  if (e != E8S_OK) { kvd_status_from_store(st, e, "stats"); return; }
  ns.namespace_name = (char *)who->ns;
  ns.chunks = ni.chunks;
  ns.stored_bytes = ni.used_bytes;
  ns.tokens = ni.tokens;
  ns.raw_fp16_bytes = ni.raw_bytes; /* PutChunks gives each chunk's fp16 K+V size */
  ns.chunks_purge_pending = app->purge ? kvd_purge_pending(app->purge, who->ns_id) : 0;
  /* bits per stored KV element: an fp16 element is 2 bytes */
  ns.bpe = ni.raw_bytes ? (double)ni.used_bytes * 8.0 / (double)(ni.raw_bytes / 2) : 0.0;
  E8kv__V1__GetStatsResponse r;
  e8kv__v1__get_stats_response__init(&r);
  r.namespace_stats = &ns;
  if (who->admin) {
    ss.capacity_bytes = s.capacity_bytes;
    ss.used_bytes = s.disk_bytes;
    ss.live_bytes = s.used_bytes;
    ss.chunks = s.chunks;
    ss.sessions = s.sessions;
    ss.segments = s.segments;
    ss.evictions = s.evictions;
    ss.quarantined = s.quarantined;
    ss.namespaces = s.namespaces;
    r.store_stats = &ss;
  }
  ds.uptime_s = (uint64_t)(mono_now() - app->started);
  /* The Lookup RPC's own counters, as /metrics reports them (e8kvd_lookup_*_total): a hit is
   * a lookup that matched at least one chunk. */
  ds.lookups = kvd_metrics_counter(app->metrics, KVD_M_LOOKUPS);
  ds.lookup_hits = kvd_metrics_counter(app->metrics, KVD_M_LOOKUP_HITS);
  ds.calls_in_flight = kvd_server_in_flight(app->server);
  ds.lookup_matched_tokens = kvd_metrics_counter(app->metrics, KVD_M_LOOKUP_MATCHED_TOKENS);
  kvd_metrics_bytes(app->metrics, &ds.bytes_in, &ds.bytes_out);
  r.daemon_stats = &ds;
  if (kvd_call_send(call, &r.base) != 0) kvd_call_check(call, st);
}

/* Progress of a Verify or Compact scan. The store updates its report before each callback,
 * so `bytes` (pointing into the report) tells how far the scan got: max_bytes stops it after
 * the record (Verify) or segment (Compact) that reached the bound. */
typedef struct scan_ctx {
  kvd_call *call;
  kvd_status probe;
  const uint64_t *bytes;  /* rep.bytes_checked / rep.bytes_moved */
  uint64_t max_bytes;     /* 0 = no bound */
  int stopped;            /* max_bytes stopped the scan */
} scan_ctx;

static int scan_progress(void *ctx, uint64_t done, uint64_t total) {
  scan_ctx *c = ctx;
  if (kvd_call_check(c->call, &c->probe) != 0) return 1; /* nonzero stops the scan */
  if (c->max_bytes && *c->bytes >= c->max_bytes && done < total) c->stopped = 1;
  return c->stopped;
}

void kvd_rpc_verify(kvd_app *app, kvd_call *call, const kvd_principal *who, kvd_status *st) {
  E8kv__V1__VerifyRequest *rq = (E8kv__V1__VerifyRequest *)kvd_recv_request(
      call, &e8kv__v1__verify_request__descriptor, st);
  if (!rq) return;
  e8s_verify_report rep;
  memset(&rep, 0, sizeof rep);
  scan_ctx sc = {.call = call, .bytes = &rep.bytes_checked, .max_bytes = rq->max_bytes};
  e8kv__v1__verify_request__free_unpacked(rq, NULL);
  if (!who->admin) {
    kvd_fail(st, KVD_PERMISSION, "Verify needs an admin token");
    return;
  }
  kvd_status_ok(&sc.probe);
  int e = e8s_verify(app->store, &rep, scan_progress, &sc);
  if (sc.probe.code != KVD_OK) { *st = sc.probe; return; }
  if (e != E8S_OK) { kvd_status_from_store(st, e, "verify"); return; }
  enum { MAXQ = 1000 };
  e8s_quarantine_entry *q = calloc(MAXQ, sizeof *q);
  E8kv__V1__QuarantinedRecord *qr = calloc(MAXQ, sizeof *qr);
  E8kv__V1__QuarantinedRecord **qp = calloc(MAXQ, sizeof *qp);
  char (*names)[32] = calloc(MAXQ, sizeof *names);
  size_t nq = 0;
  int more = 0;
  if (!q || !qr || !qp || !names) kvd_fail(st, KVD_RESOURCE, "out of memory");
  else e = e8s_quarantine_list(app->store, NULL, q, MAXQ, &nq, &more);
  if (st->code == KVD_OK && e != E8S_OK) kvd_status_from_store(st, e, "quarantine list");
  if (st->code == KVD_OK) {
    for (size_t i = 0; i < nq; i++) {
      e8kv__v1__quarantined_record__init(&qr[i]);
      qr[i].chunk_key = (ProtobufCBinaryData){E8S_KEY_BYTES, q[i].key};
      snprintf(names[i], sizeof names[i], "%016llx.seg", (unsigned long long)q[i].segment_id);
      qr[i].segment = names[i];
      qr[i].offset = q[i].offset;
      qr[i].reason = q[i].stored_crc != q[i].found_crc ? "crc mismatch" : "unreadable";
      qp[i] = &qr[i];
    }
    E8kv__V1__VerifyResponse r;
    e8kv__v1__verify_response__init(&r);
    r.records_checked = rep.chunks_checked;
    r.bytes_checked = rep.bytes_checked;
    r.corrupt_records = rep.quarantined;
    r.n_corrupt = nq;
    r.corrupt = qp;
    r.complete = !sc.stopped;
    if (kvd_call_send(call, &r.base) != 0) kvd_call_check(call, st);
  }
  free(q);
  free(qr);
  free(qp);
  free(names);
}

void kvd_rpc_compact(kvd_app *app, kvd_call *call, const kvd_principal *who, kvd_status *st) {
  E8kv__V1__CompactRequest *rq = (E8kv__V1__CompactRequest *)kvd_recv_request(
      call, &e8kv__v1__compact_request__descriptor, st);
  if (!rq) return;
  double ratio = rq->min_dead_fraction ? rq->min_dead_fraction : 0.5;
  e8s_compact_report rep;
  memset(&rep, 0, sizeof rep);
  scan_ctx sc = {.call = call, .bytes = &rep.bytes_moved, .max_bytes = rq->max_bytes};
  e8kv__v1__compact_request__free_unpacked(rq, NULL);
  if (!who->admin) { kvd_fail(st, KVD_PERMISSION, "Compact needs an admin token"); return; }
  if (!(ratio > 0 && ratio <= 1)) {
    kvd_fail(st, KVD_INVALID, "min_dead_fraction %g must be in (0, 1]", ratio);
    return;
  }
  kvd_status_ok(&sc.probe);
  int e = e8s_compact(app->store, ratio, &rep, scan_progress, &sc);
  if (sc.probe.code != KVD_OK) { *st = sc.probe; return; }
  if (e != E8S_OK) { kvd_status_from_store(st, e, "compact"); return; }
  E8kv__V1__CompactResponse r;
  e8kv__v1__compact_response__init(&r);
  r.segments_compacted = rep.segments_compacted;
  r.records_moved = rep.records_moved;
  r.bytes_moved = rep.bytes_moved;
  r.bytes_reclaimed = rep.bytes_reclaimed;
  r.complete = !sc.stopped;
  if (kvd_call_send(call, &r.base) != 0) kvd_call_check(call, st);
}
