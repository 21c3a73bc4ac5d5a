/* kvd_service.c: the KVStore method table, authentication before every handler, the
 * request decoder and the session write locks (see kvd_service.h). */
#include "daemon/kvd_service.h"

#include <stdio.h>
#include <string.h>

#define RPC(name, kind, fn)                                                        \
  static void wrap_##fn(void *app, kvd_call *call, kvd_status *st) {               \
    kvd_principal who;                                                             \
    size_t len = 0;                                                                \
    const char *v = kvd_call_metadata(call, "authorization", &len);                \
    if (kvd_auth_check(((kvd_app *)app)->auth, v, len, &who, st) != 0) return;     \
    fn((kvd_app *)app, call, &who, st);                                            \
  }
#define ROW(name, kind, fn) {"/e8kv.v1.KVStore/" name, kind, wrap_##fn},

#define KVD_RPCS(X)                                                     \
  X("PutChunks", KVD_RPC_CLIENT_STREAM, kvd_rpc_put_chunks)             \
  X("Lookup", KVD_RPC_UNARY, kvd_rpc_lookup)                            \
  X("GetChunks", KVD_RPC_SERVER_STREAM, kvd_rpc_get_chunks)             \
  X("CreateSession", KVD_RPC_UNARY, kvd_rpc_create_session)             \
  X("AppendSession", KVD_RPC_UNARY, kvd_rpc_append_session)             \
  X("GetSession", KVD_RPC_UNARY, kvd_rpc_get_session)                   \
  X("ListSessions", KVD_RPC_UNARY, kvd_rpc_list_sessions)               \
  X("DeleteSession", KVD_RPC_UNARY, kvd_rpc_delete_session)             \
  X("GetStats", KVD_RPC_UNARY, kvd_rpc_get_stats)                       \
  X("Verify", KVD_RPC_UNARY, kvd_rpc_verify)                            \
  X("Compact", KVD_RPC_UNARY, kvd_rpc_compact)

KVD_RPCS(RPC)

static const kvd_method g_methods[] = {KVD_RPCS(ROW)};

#define NAME(name, kind, fn) name,
static const char *const g_names[] = {KVD_RPCS(NAME)};

const kvd_method *kvd_service_methods(size_t *n) {
  *n = sizeof g_methods / sizeof g_methods[0];
  return g_methods;
}

const char *const *kvd_service_method_names(void) { return g_names; }

ProtobufCMessage *kvd_recv_request(kvd_call *call, const ProtobufCMessageDescriptor *desc,
                                   kvd_status *st) {
  const uint8_t *d;
  size_t n;
  if (kvd_call_recv(call, &d, &n) != 1) {
    kvd_call_check(call, st);
    if (st->code == KVD_OK) kvd_fail(st, KVD_INVALID, "%s: no request message", desc->name);
    return NULL;
  }
  ProtobufCMessage *m = protobuf_c_message_unpack(desc, NULL, n, d);
  kvd_call_recv_release(call);
  if (!m) kvd_fail(st, KVD_INVALID, "malformed %s: %zu bytes that do not decode as protobuf",
                   desc->name, n);
  return m;
}

int kvd_session_lock(kvd_app *app, uint32_t ns_id, const char *name, kvd_status *st) {
  int free_i = -1, rc = 0;
  pthread_mutex_lock(&app->locks_mu);
  for (int i = 0; i < KVD_SESSION_LOCKS; i++) {
    if (app->locks[i].ns_id == 0) { if (free_i < 0) free_i = i; continue; }
    if (app->locks[i].ns_id == ns_id && strcmp(app->locks[i].name, name) == 0) {
      kvd_fail(st, KVD_ABORTED, "session '%s' is being changed by another call; retry when "
                                "it has finished", name);
      rc = -1;
      break;
    }
  }
  if (rc == 0 && free_i < 0) {
    kvd_fail(st, KVD_RESOURCE, "more than %d sessions are being written at once; retry",
             KVD_SESSION_LOCKS);
    rc = -1;
  }
  if (rc == 0) {
    app->locks[free_i].ns_id = ns_id;
    snprintf(app->locks[free_i].name, sizeof app->locks[free_i].name, "%s", name);
  }
  pthread_mutex_unlock(&app->locks_mu);
  return rc;
}

void kvd_session_unlock(kvd_app *app, uint32_t ns_id, const char *name) {
  pthread_mutex_lock(&app->locks_mu);
  for (int i = 0; i < KVD_SESSION_LOCKS; i++)
    if (app->locks[i].ns_id == ns_id && strcmp(app->locks[i].name, name) == 0) {
      app->locks[i].ns_id = 0;
      break;
    }
  pthread_mutex_unlock(&app->locks_mu);
}
