/*
 * ctl_online.c: e8kvctl commands that go through e8kvd (libe8kv): health,
 * stat, ls, show, rm, verify, compact. export/import are in ctl_export.c,
 * bench in ctl_bench.c. Each builds its result as JSON (ctl_view.h shapes)
 * and prints it as JSON or for people.
 */
#include <string.h>
#include <time.h>

#include "clients/cli/ctl_exit.h"
#include "clients/cli/ctl_pbjson.h"
#include "clients/cli/ctl_runs.h"
#include "clients/cli/ctl_view.h"

static int ctl_nomem(ctl_ctx *ctx) {
  return ctl_error(ctx, CTL_EXIT_FAILURE, "nomem", "out of memory");
}

static uint64_t ctl_now_ms(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000 + (uint64_t)t.tv_nsec / 1000000;
}

/* health --wait: one more try is worth it after a failure of this kind (nothing listens
 * yet, the daemon is still starting, a call timed out); a refused token is not. */
static int ctl_health_retryable(e8kv_status s) {
  return s == E8KV_UNAVAILABLE || s == E8KV_DEADLINE_EXCEEDED;
}

int ctl_on_health(ctl_ctx *ctx, int argc, char **argv) {
  (void)argc;
  (void)argv;
  uint64_t wait_ms, timeout_ms = ctx->deadline_ms;
  if (ctl_opt_ms(ctx, CTL_O_WAIT, 0, 0, 3600000, &wait_ms)) return CTL_EXIT_USAGE;
  const uint64_t end = ctl_now_ms() + wait_ms;
  e8kv_error err;
  e8kv_status s;
  int serving = 0;
  for (;;) {
    s = e8kv_health_check(ctx->client, "", &serving, &err);
    if (s == E8KV_OK && serving == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING)
      break;
    if (s != E8KV_OK && !ctl_health_retryable(s)) break;
    uint64_t now = ctl_now_ms();
    if (now >= end) break;
    uint64_t left = end - now, nap = left < 200 ? left : 200;
    struct timespec ts = {(time_t)(nap / 1000), (long)(nap % 1000) * 1000000L};
    nanosleep(&ts, NULL);
    /* The last tries end by the end of --wait, not a whole deadline later (at least 100 ms). */
    left = end > ctl_now_ms() ? end - ctl_now_ms() : 0;
    if (left < timeout_ms) e8kv_client_set_deadline_ms(ctx->client, left < 100 ? 100 : (uint32_t)left);
  }
  if (s) return ctl_error_e8kv(ctx, &err);
  const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(
      &grpc__health__v1__health_check_response__serving_status__descriptor, serving);
  const char *name = ev ? ev->name : "UNKNOWN";
  int ok = serving == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
  if (ctx->json) {
    json_t *o = json_pack("{s:s,s:s,s:b}", "address", e8kv_client_address(ctx->client), "status",
                          name, "serving", ok);
    if (!o) return ctl_nomem(ctx);
    ctl_out_json(stdout, o);
    json_decref(o);
  } else {
    printf("%s: %s\n", e8kv_client_address(ctx->client), name);
  }
  if (!ok) fprintf(stderr, "e8kvctl: the daemon reports %s\n", name);
  return ok ? CTL_EXIT_OK : CTL_EXIT_UNREACHABLE;
}

int ctl_on_stat(ctl_ctx *ctx, int argc, char **argv) {
  (void)argc;
  (void)argv;
  e8kv_error err;
  E8kv__V1__GetStatsResponse *r = NULL;
  if (e8kv_get_stats(ctx->client, &r, &err)) return ctl_error_e8kv(ctx, &err);
  json_t *o = json_object();
  json_object_set_new(o, "namespace", ctl_pb_to_json(&r->namespace_stats->base));
  json_object_set_new(o, "store", r->store_stats ? ctl_pb_to_json(&r->store_stats->base) : json_null());
  json_object_set_new(o, "daemon", r->daemon_stats ? ctl_pb_to_json(&r->daemon_stats->base) : json_null());
  const E8kv__V1__DaemonStats *d = r->daemon_stats;
  json_object_set_new(o, "hit_rate", d && d->lookups ? json_real((double)d->lookup_hits / (double)d->lookups)
                                                     : json_null());
  e8kv_msg_free(r);
  if (ctx->json) ctl_out_json(stdout, o);
  else ctl_out_fields(stdout, ctl_cols_stat, o);
  json_decref(o);
  return CTL_EXIT_OK;
}

int ctl_on_ls(ctl_ctx *ctx, int argc, char **argv) {
  (void)argc;
  (void)argv;
  uint64_t limit;
  if (ctl_opt_u64(ctx, CTL_O_LIMIT, 100, 1, 1000, &limit)) return CTL_EXIT_USAGE;
  E8kv__V1__ListSessionsRequest req = E8KV__V1__LIST_SESSIONS_REQUEST__INIT;
  req.page_size = (uint32_t)limit;
  req.model_id = (char *)(ctx->opt[CTL_O_MODEL] ? ctx->opt[CTL_O_MODEL] : "");
  req.name_prefix = (char *)(ctx->opt[CTL_O_PREFIX] ? ctx->opt[CTL_O_PREFIX] : "");
  json_t *rows = json_array();
  char token[1024];
  snprintf(token, sizeof token, "%s", ctx->opt[CTL_O_PAGE_TOKEN] ? ctx->opt[CTL_O_PAGE_TOKEN] : "");
  do {
    req.page_token = token;
    E8kv__V1__ListSessionsResponse *r = NULL;
    e8kv_error err;
    if (e8kv_list_sessions(ctx->client, &req, &r, &err)) {
      json_decref(rows);
      return ctl_error_e8kv(ctx, &err);
    }
    for (size_t i = 0; i < r->n_sessions; i++) json_array_append_new(rows, ctl_view_session(r->sessions[i]));
    snprintf(token, sizeof token, "%s", r->next_page_token ? r->next_page_token : "");
    e8kv_msg_free(r);
  } while (ctx->opt[CTL_O_ALL] && token[0]);
  json_t *o = json_pack("{s:o,s:s}", "sessions", rows, "next_page_token", token);
  if (!o) return ctl_nomem(ctx);
  if (ctx->json) {
    ctl_out_json(stdout, o);
  } else {
    ctl_out_table(stdout, ctl_cols_ls, rows, ctl_term_width());
    if (token[0]) printf("more: --page-token %s\n", token);
  }
  json_decref(o);
  return CTL_EXIT_OK;
}

int ctl_on_show(ctl_ctx *ctx, int argc, char **argv) {
  (void)argc;
  E8kv__V1__GetSessionRequest req = E8KV__V1__GET_SESSION_REQUEST__INIT;
  req.name = argv[0];
  E8kv__V1__GetSessionResponse *r = NULL;
  e8kv_error err;
  if (e8kv_get_session(ctx->client, &req, &r, &err)) return ctl_error_e8kv(ctx, &err);
  if (!r->session) {
    e8kv_msg_free(r);
    return ctl_error(ctx, CTL_EXIT_FAILURE, "E_PROTOCOL", "GetSession: reply without a session");
  }
  json_t *o = ctl_view_session(r->session);
  e8kv_msg_free(r);
  if (!o) return ctl_nomem(ctx);
  if (ctx->json) ctl_out_json(stdout, o);
  else ctl_out_fields(stdout, ctl_cols_show, o);
  json_decref(o);
  return CTL_EXIT_OK;
}

/* One line of `rm --purge` (text output). */
static void ctl_rm_purged_line(const char *name, long long purged, long long kept,
                               long long pending) {
  printf("deleted %s and purged %lld chunks", name, purged);
  if (pending)
    printf("; %lld more are deleted when the read or lookup lease holding them ends (within "
           "--lookup-lease-ms of e8kvd, 30 s by default)", pending);
  if (kept > pending)
    printf("; %lld kept: another session lists them", kept - pending);
  printf("\n");
}

/* rm --purge --wait: polls GetStats until no purge of the namespace waits for a read or a
 * lease (NamespaceStats.chunks_purge_pending), at most `secs`. Sets *pending to what is left
 * (0 when done); returns an exit code (a failed GetStats). */
static int ctl_rm_wait(ctl_ctx *ctx, uint64_t secs, uint64_t *pending, double *waited) {
  struct timespec t0, now;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (;;) {
    E8kv__V1__GetStatsResponse *r = NULL;
    e8kv_error err;
    if (e8kv_get_stats(ctx->client, &r, &err)) return ctl_error_e8kv(ctx, &err);
    *pending = r->namespace_stats ? r->namespace_stats->chunks_purge_pending : 0;
    e8kv_msg_free(r);
    clock_gettime(CLOCK_MONOTONIC, &now);
    *waited = (double)(now.tv_sec - t0.tv_sec) + (double)(now.tv_nsec - t0.tv_nsec) / 1e9;
    if (*pending == 0 || *waited >= (double)secs) return CTL_EXIT_OK;
    nanosleep(&(struct timespec){0, 250000000}, NULL);
  }
}

int ctl_on_rm(ctl_ctx *ctx, int argc, char **argv) {
  uint64_t wait_s = 0;
  if (ctl_opt_u64(ctx, CTL_O_WAIT, 0, 1, 3600, &wait_s)) return CTL_EXIT_USAGE;
  if (wait_s && !ctx->opt[CTL_O_PURGE])
    return ctl_error(ctx, CTL_EXIT_USAGE, "usage", "--wait needs --purge");
  json_t *done = json_array();
  int rc = CTL_EXIT_OK;
  for (int i = 0; i < argc && rc == CTL_EXIT_OK; i++) {
    E8kv__V1__DeleteSessionRequest req = E8KV__V1__DELETE_SESSION_REQUEST__INIT;
    req.name = argv[i];
    req.purge_chunks = ctx->opt[CTL_O_PURGE] != NULL;
    E8kv__V1__DeleteSessionResponse *r = NULL;
    e8kv_error err;
    if (e8kv_delete_session(ctx->client, &req, &r, &err)) {
      /* Say what was already deleted before the failure. */
      if (!ctx->json)
        for (size_t k = 0; k < json_array_size(done); k++)
          printf("deleted %s\n", json_string_value(json_object_get(json_array_get(done, k), "name")));
      json_decref(done);
      return ctl_error_e8kv(ctx, &err);
    }
    json_t *e = json_pack("{s:s,s:i}", "name", argv[i], "chunks_unpinned",
                          (json_int_t)r->chunks_unpinned);
    if (e && req.purge_chunks) {
      json_object_set_new(e, "chunks_purged", json_integer(r->chunks_purged));
      json_object_set_new(e, "chunks_kept", json_integer(r->chunks_kept));
      json_object_set_new(e, "chunks_pending", json_integer(r->chunks_pending));
    }
    json_array_append_new(done, e);
    e8kv_msg_free(r);
  }
  uint64_t left = 0;
  double waited = 0;
  if (wait_s && (rc = ctl_rm_wait(ctx, wait_s, &left, &waited)) != CTL_EXIT_OK) {
    json_decref(done);
    return rc;
  }
  if (ctx->json) {
    json_t *o = json_pack("{s:o}", "deleted", done);
    if (wait_s) {
      json_object_set_new(o, "purge_pending", json_integer((json_int_t)left));
      json_object_set_new(o, "waited_s", json_real(waited));
    }
    ctl_out_json(stdout, o);
    json_decref(o);
  } else {
    for (size_t k = 0; k < json_array_size(done); k++) {
      json_t *e = json_array_get(done, k);
      const char *name = json_string_value(json_object_get(e, "name"));
      long long unpinned = json_integer_value(json_object_get(e, "chunks_unpinned"));
      if (json_object_get(e, "chunks_purged"))
        ctl_rm_purged_line(name, json_integer_value(json_object_get(e, "chunks_purged")),
                           json_integer_value(json_object_get(e, "chunks_kept")),
                           json_integer_value(json_object_get(e, "chunks_pending")));
      else
        printf("deleted %s (%lld chunks unpinned, still restorable until evicted; --purge "
               "deletes them)\n", name, unpinned);
    }
    json_decref(done);
    if (wait_s && !left) printf("no purge waits for a lease any more (waited %.1f s)\n", waited);
  }
  if (left) {
    fprintf(stderr, "e8kvctl: %llu chunks still wait for a read or lookup lease to end after "
            "%.0f s; e8kvd deletes them when it does\n", (unsigned long long)left, waited);
    return CTL_EXIT_FAILURE;
  }
  return rc;
}

int ctl_on_gc(ctl_ctx *ctx, int argc, char **argv) {
  (void)argc;
  (void)argv;
  E8kv__V1__PurgeUnlistedRequest req = E8KV__V1__PURGE_UNLISTED_REQUEST__INIT;
  E8kv__V1__PurgeUnlistedResponse *r = NULL;
  e8kv_error err;
  e8kv_client_set_deadline_ms(ctx->client, 3600000); /* a large namespace takes a while */
  if (e8kv_purge_unlisted(ctx->client, &req, &r, &err)) return ctl_error_e8kv(ctx, &err);
  json_t *o = json_pack("{s:I,s:I,s:I}", "chunks_purged", (json_int_t)r->chunks_purged,
                        "bytes_purged", (json_int_t)r->bytes_purged, "chunks_pending",
                        (json_int_t)r->chunks_pending);
  e8kv_msg_free(r);
  if (!o) return ctl_nomem(ctx);
  static const ctl_col cols[] = {
      {"chunks_purged", "chunks purged", CTL_F_INT, 0},
      {"bytes_purged", "bytes purged", CTL_F_BYTES, 0},
      {"chunks_pending", "pending (lease)", CTL_F_INT, 0},
      {NULL, NULL, CTL_F_STR, 0}};
  if (ctx->json) {
    ctl_out_json(stdout, o);
  } else {
    ctl_out_fields(stdout, cols, o);
    if (json_integer_value(json_object_get(o, "chunks_pending")))
      printf("(pending chunks are held by a read or a lookup lease; the daemon deletes them "
             "when it ends,\n within --lookup-lease-ms of e8kvd, 30 s by default)\n");
  }
  json_decref(o);
  return CTL_EXIT_OK;
}

/* Prints a verify result (online and offline share it); exit 6 when corrupt records exist. */
int ctl_verify_report(ctl_ctx *ctx, json_t *o) {
  json_int_t bad = json_integer_value(json_object_get(o, "corrupt_records"));
  if (ctx->json) {
    ctl_out_json(stdout, o);
  } else {
    ctl_out_fields(stdout, ctl_cols_verify, o);
    json_t *list = json_object_get(o, "corrupt");
    if (json_array_size(list)) {
      printf("\n");
      ctl_out_table(stdout, ctl_cols_corrupt, list, ctl_term_width());
    }
  }
  json_decref(o);
  if (bad > 0) {
    fprintf(stderr, "e8kvctl: verify found %lld corrupt record(s)\n", (long long)bad);
    return CTL_EXIT_CORRUPT;
  }
  return CTL_EXIT_OK;
}

int ctl_on_verify(ctl_ctx *ctx, int argc, char **argv) {
  (void)argc;
  (void)argv;
  E8kv__V1__VerifyRequest req = E8KV__V1__VERIFY_REQUEST__INIT;
  req.quarantine = !ctx->opt[CTL_O_NO_QUARANTINE];
  if (ctl_opt_u64(ctx, CTL_O_MAX_BYTES, 0, 0, UINT64_MAX, &req.max_bytes)) return CTL_EXIT_USAGE;
  E8kv__V1__VerifyResponse *r = NULL;
  e8kv_error err;
  /* A full scan can take long: use the stream deadline scale, not the unary one. */
  e8kv_client_set_deadline_ms(ctx->client, 3600000);
  if (ctx->progress) fprintf(stdout, "verifying (the daemon reads every record)...\r"), fflush(stdout);
  e8kv_status s = e8kv_verify(ctx->client, &req, &r, &err);
  if (ctx->progress) fputs("\r\033[K", stdout), fflush(stdout);
  if (s) return ctl_error_e8kv(ctx, &err);
  json_t *o = ctl_pb_to_json(&r->base);
  e8kv_msg_free(r);
  if (!o) return ctl_nomem(ctx);
  return ctl_verify_report(ctx, o);
}

int ctl_on_compact(ctl_ctx *ctx, int argc, char **argv) {
  (void)argc;
  (void)argv;
  E8kv__V1__CompactRequest req = E8KV__V1__COMPACT_REQUEST__INIT;
  if (ctl_opt_double(ctx, CTL_O_MIN_DEAD, 0.5, 0.0, 1.0, &req.min_dead_fraction) ||
      ctl_opt_u64(ctx, CTL_O_MAX_BYTES, 0, 0, UINT64_MAX, &req.max_bytes))
    return CTL_EXIT_USAGE;
  E8kv__V1__CompactResponse *r = NULL;
  e8kv_error err;
  e8kv_client_set_deadline_ms(ctx->client, 3600000);
  if (e8kv_compact(ctx->client, &req, &r, &err)) return ctl_error_e8kv(ctx, &err);
  json_t *o = ctl_pb_to_json(&r->base);
  e8kv_msg_free(r);
  if (!o) return ctl_nomem(ctx);
  static const ctl_col cols[] = {
      {"segments_compacted", "segments compacted", CTL_F_INT, 0},
      {"records_moved", "records moved", CTL_F_INT, 0},
      {"bytes_moved", "bytes moved", CTL_F_BYTES, 0},
      {"bytes_reclaimed", "bytes reclaimed", CTL_F_BYTES, 0},
      {NULL, NULL, CTL_F_STR, 0}};
  if (ctx->json) ctl_out_json(stdout, o);
  else ctl_out_fields(stdout, cols, o);
  json_decref(o);
  return CTL_EXIT_OK;
}
