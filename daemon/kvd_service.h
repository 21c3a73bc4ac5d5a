/* kvd_service.h: the e8kv.v1.KVStore service: shared state and the method table.
 *
 * kvd_app is everything a handler needs: configuration, the store, tokens, metrics, the
 * per-session write locks. The method table (kvd_service_methods) lists each RPC with its
 * handler; kvd_service.c wraps every handler so that the bearer token is checked before the
 * handler runs and the request message is decoded in one place.
 *
 * Handlers (kvd_rpc_*.c) all have the shape
 *   void kvd_rpc_x(kvd_app *app, kvd_call *call, const kvd_principal *who, kvd_status *st)
 * and never touch gRPC or another namespace's data: every store call passes who->ns_id, and
 * every chunk key is computed with who->salt.
 */
#ifndef KVD_SERVICE_H
#define KVD_SERVICE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "daemon/kvd_auth.h"
#include "daemon/kvd_commit.h"
#include "daemon/kvd_config.h"
#include "daemon/kvd_grpc.h"
#include "daemon/kvd_metrics.h"
#include "daemon/kvd_purge.h"
#include "daemon/kvd_status.h"
#include "store/e8store.h"

#define KVD_SESSION_LOCKS 256

typedef struct kvd_app {
  const kvd_config *cfg;
  e8s_store *store;
  kvd_commit *commit;                 /* group commit of PutChunks batches */
  kvd_auth *auth;
  kvd_metrics *metrics;
  kvd_server *server;
  kvd_purge *purge;                   /* purges waiting for a read or lease to end */
  double started;                     /* CLOCK_MONOTONIC seconds at start */
  pthread_mutex_t locks_mu;           /* guards the session write locks below */
  struct {
    uint32_t ns_id;
    char name[E8S_NAME_MAX + 1];
  } locks[KVD_SESSION_LOCKS];         /* sessions being written now (ns_id 0 = free) */
} kvd_app;

typedef void (*kvd_rpc_fn)(kvd_app *app, kvd_call *call, const kvd_principal *who,
                           kvd_status *st);

/* The KVStore method table (paths "/e8kv.v1.KVStore/<Name>") and their short names for
 * metrics. */
const kvd_method *kvd_service_methods(size_t *n);
const char *const *kvd_service_method_names(void);

/* Session write locks: one call at a time may change a session. 0 on success; -1 with ABORTED
 * in st if another call holds it. */
int kvd_session_lock(kvd_app *app, uint32_t ns_id, const char *name, kvd_status *st);
void kvd_session_unlock(kvd_app *app, uint32_t ns_id, const char *name);

/* 0 if no `string` field in the wire bytes d[0..n) of a message of type desc (sub-messages and
 * map entries included) holds a NUL byte; else -1 with INVALID naming the field. protobuf-c
 * keeps strings NUL-terminated, so "a\0b" would silently be read as "a": a model_id or session
 * name cut that way would address another model's or session's data. */
int kvd_wire_strings_check(const ProtobufCMessageDescriptor *desc, const uint8_t *d, size_t n,
                           kvd_status *st);

/* Reads the single request message of a unary or server-streaming call and decodes it with
 * desc. Returns the message (free with protobuf_c_message_free_unpacked) or NULL with st set
 * (INVALID for malformed bytes or a string holding a NUL, CANCELLED/DEADLINE for a broken
 * call). */
ProtobufCMessage *kvd_recv_request(kvd_call *call, const ProtobufCMessageDescriptor *desc,
                                   kvd_status *st);

/* The handlers. */
void kvd_rpc_put_chunks(kvd_app *, kvd_call *, const kvd_principal *, kvd_status *);
void kvd_rpc_lookup(kvd_app *, kvd_call *, const kvd_principal *, kvd_status *);
void kvd_rpc_get_chunks(kvd_app *, kvd_call *, const kvd_principal *, kvd_status *);
void kvd_rpc_create_session(kvd_app *, kvd_call *, const kvd_principal *, kvd_status *);
void kvd_rpc_append_session(kvd_app *, kvd_call *, const kvd_principal *, kvd_status *);
void kvd_rpc_get_session(kvd_app *, kvd_call *, const kvd_principal *, kvd_status *);
void kvd_rpc_list_sessions(kvd_app *, kvd_call *, const kvd_principal *, kvd_status *);
void kvd_rpc_delete_session(kvd_app *, kvd_call *, const kvd_principal *, kvd_status *);
void kvd_rpc_get_stats(kvd_app *, kvd_call *, const kvd_principal *, kvd_status *);
void kvd_rpc_verify(kvd_app *, kvd_call *, const kvd_principal *, kvd_status *);
void kvd_rpc_compact(kvd_app *, kvd_call *, const kvd_principal *, kvd_status *);
void kvd_rpc_purge_unlisted(kvd_app *, kvd_call *, const kvd_principal *, kvd_status *);

#endif
