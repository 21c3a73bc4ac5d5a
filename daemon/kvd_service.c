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
  X("Compact", KVD_RPC_UNARY, kvd_rpc_compact)                          \
  X("PurgeUnlisted", KVD_RPC_UNARY, kvd_rpc_purge_unlisted)

KVD_RPCS(RPC)

static const kvd_method g_methods[] = {KVD_RPCS(ROW)};

#define NAME(name, kind, fn) name,
static const char *const g_names[] = {KVD_RPCS(NAME)};

const kvd_method *kvd_service_methods(size_t *n) {
  *n = sizeof g_methods / sizeof g_methods[0];
  return g_methods;
}

const char *const *kvd_service_method_names(void) { return g_names; }

/* Next varint of d[*i..n) into *v; -1 when it runs past n. */
static int wire_varint(const uint8_t *d, size_t n, size_t *i, uint64_t *v) {
  *v = 0;
  for (unsigned s = 0; *i < n && s < 64; s += 7) {
    uint8_t b = d[(*i)++];
    *v |= (uint64_t)(b & 0x7f) << s;
    if (!(b & 0x80)) return 0;
  }
  return -1;
}

/* The wire walk of kvd_wire_strings_check; 1 = a NUL found (*field named). */
static int wire_nul(const ProtobufCMessageDescriptor *desc, const uint8_t *d, size_t n,
                    const char **field, int depth) {
  size_t i = 0;
  uint64_t tag, len;
  while (i < n) {
    if (wire_varint(d, n, &i, &tag) != 0) return 0;
    switch (tag & 7) {
      case 0: if (wire_varint(d, n, &i, &len) != 0) return 0; break;
      case 1: i += 8; break;
      case 5: i += 4; break;
      case 2: {
        if (wire_varint(d, n, &i, &len) != 0 || len > n - i) return 0;
        const ProtobufCFieldDescriptor *f =
            protobuf_c_message_descriptor_get_field(desc, (unsigned)(tag >> 3));
        if (f && f->type == PROTOBUF_C_TYPE_STRING && memchr(d + i, 0, (size_t)len)) {
          *field = f->name;
          return 1;
        }
        if (f && f->type == PROTOBUF_C_TYPE_MESSAGE && depth < 16 &&
            wire_nul(f->descriptor, d + i, (size_t)len, field, depth + 1))
          return 1;
        i += (size_t)len;
        break;
      }
      default: return 0; /* groups: protobuf-c refuses them already */
    }
  }
  return 0;
}

int kvd_wire_strings_check(const ProtobufCMessageDescriptor *desc, const uint8_t *d, size_t n,
                           kvd_status *st) {
  const char *field = "";
  if (!wire_nul(desc, d, n, &field, 0)) return 0;
  return kvd_error(st, KVD_INVALID, "%s: string field '%s' holds a NUL byte", desc->name,
                   field);
}

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
  if (m && kvd_wire_strings_check(desc, d, n, st) != 0) {
    protobuf_c_message_free_unpacked(m, NULL);
    kvd_call_recv_release(call);
    return NULL;
  }
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
