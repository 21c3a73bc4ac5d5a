/*
 * e8kv_rpc.c: the unary RPCs of e8kv.v1.KVStore and grpc.health.v1.Health,
 * each one line over kvc_unary with its method path and reply descriptor.
 */
#include "clients/c/e8kv_int.h"

#define KVC_SVC "/e8kv.v1.KVStore/"

void e8kv_msg_free(void *msg) {
  if (msg) protobuf_c_message_free_unpacked((ProtobufCMessage *)msg, NULL);
}

/* Typed wrapper: checks arguments, runs the call, casts the reply. */
#define KVC_UNARY_FN(fn, Method, Req, Resp, desc)                                          \
  e8kv_status fn(e8kv_client *c, const Req *req, Resp **out, e8kv_error *err) {             \
    if (!c || !req || !out) return kvc_fail(err, E8KV_E_USAGE, #fn ": NULL argument");     \
    return kvc_unary(c, KVC_SVC Method, &req->base, &desc, (ProtobufCMessage **)out, err); \
  }

KVC_UNARY_FN(e8kv_lookup, "Lookup", E8kv__V1__LookupRequest, E8kv__V1__LookupResponse,
             e8kv__v1__lookup_response__descriptor)
KVC_UNARY_FN(e8kv_create_session, "CreateSession", E8kv__V1__CreateSessionRequest,
             E8kv__V1__CreateSessionResponse, e8kv__v1__create_session_response__descriptor)
KVC_UNARY_FN(e8kv_append_session, "AppendSession", E8kv__V1__AppendSessionRequest,
             E8kv__V1__AppendSessionResponse, e8kv__v1__append_session_response__descriptor)
KVC_UNARY_FN(e8kv_get_session, "GetSession", E8kv__V1__GetSessionRequest,
             E8kv__V1__GetSessionResponse, e8kv__v1__get_session_response__descriptor)
KVC_UNARY_FN(e8kv_list_sessions, "ListSessions", E8kv__V1__ListSessionsRequest,
             E8kv__V1__ListSessionsResponse, e8kv__v1__list_sessions_response__descriptor)
KVC_UNARY_FN(e8kv_delete_session, "DeleteSession", E8kv__V1__DeleteSessionRequest,
             E8kv__V1__DeleteSessionResponse, e8kv__v1__delete_session_response__descriptor)
KVC_UNARY_FN(e8kv_purge_unlisted, "PurgeUnlisted", E8kv__V1__PurgeUnlistedRequest,
             E8kv__V1__PurgeUnlistedResponse, e8kv__v1__purge_unlisted_response__descriptor)
KVC_UNARY_FN(e8kv_verify, "Verify", E8kv__V1__VerifyRequest, E8kv__V1__VerifyResponse,
             e8kv__v1__verify_response__descriptor)
KVC_UNARY_FN(e8kv_compact, "Compact", E8kv__V1__CompactRequest, E8kv__V1__CompactResponse,
             e8kv__v1__compact_response__descriptor)

e8kv_status e8kv_get_stats(e8kv_client *c, E8kv__V1__GetStatsResponse **out, e8kv_error *err) {
  if (!c || !out) return kvc_fail(err, E8KV_E_USAGE, "e8kv_get_stats: NULL argument");
  E8kv__V1__GetStatsRequest req = E8KV__V1__GET_STATS_REQUEST__INIT;
  return kvc_unary(c, KVC_SVC "GetStats", &req.base, &e8kv__v1__get_stats_response__descriptor,
                   (ProtobufCMessage **)out, err);
}

e8kv_status e8kv_health_check(e8kv_client *c, const char *service, int *serving,
                              e8kv_error *err) {
  if (!c || !serving) return kvc_fail(err, E8KV_E_USAGE, "e8kv_health_check: NULL argument");
  Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  req.service = (char *)(service ? service : "");
  Grpc__Health__V1__HealthCheckResponse *resp = NULL;
  e8kv_status s = kvc_unary(c, "/grpc.health.v1.Health/Check", &req.base,
                            &grpc__health__v1__health_check_response__descriptor,
                            (ProtobufCMessage **)&resp, err);
  if (s) return s;
  *serving = (int)resp->status;
  e8kv_msg_free(resp);
  return E8KV_OK;
}
