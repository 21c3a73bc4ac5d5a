/* kvd_session.h: sessions as e8kvd keeps them in libe8store.
 *
 * A store session holds the fingerprint id, the chain of chunk keys and an opaque metadata
 * blob. e8kvd's blob is a serialized e8kv.v1.SessionInfo with only `chunk_tokens` and
 * `metadata` (the user's map) set, so a session remembers its chunk size.
 * Session names: 1..255 bytes of [A-Za-z0-9._:/@+=-]; metadata: at most 64 entries, keys
 * 1..128 bytes, values at most 4096 bytes, all UTF-8, the packed blob at most
 * KVD_META_BYTES_MAX (the store's E8S_META_MAX).
 */
#ifndef KVD_SESSION_H
#define KVD_SESSION_H

#include "daemon/kvd_fp.h"
#include "daemon/kvd_service.h"

#define KVD_META_ENTRIES_MAX 64
#define KVD_META_KEY_MAX 128
#define KVD_META_VALUE_MAX 4096
#define KVD_META_BYTES_MAX E8S_META_MAX
#define KVD_CHUNK_TOKENS_DEFAULT 256
#define KVD_CHUNK_TOKENS_MAX 65536

/* A loaded session. */
typedef struct kvd_sess {
  e8s_session_info info;
  uint8_t (*keys)[E8S_KEY_BYTES];   /* info.n_chunks keys when loaded with keys, else NULL */
  E8kv__V1__SessionInfo *meta;      /* chunk_tokens + metadata (never NULL once loaded) */
} kvd_sess;

/* Checks a session name: INVALID with the rule on failure. */
int kvd_sess_name_check(const char *name, kvd_status *st);
/* Checks user metadata entries (n pairs keys[i]/values[i]). */
int kvd_sess_meta_check(size_t n, char *const *keys, char *const *values, kvd_status *st);
/* 0 -> 256; checks 1..65536. */
int kvd_sess_chunk_tokens(uint32_t in, uint32_t *out, kvd_status *st);

/* Loads session `name` of namespace ns (with its keys if want_keys). NOT_FOUND names it. */
int kvd_sess_load(e8s_store *s, uint32_t ns, const char *name, int want_keys, kvd_sess *out,
                  kvd_status *st);
void kvd_sess_free(kvd_sess *s);

/* Serializes the metadata blob: chunk_tokens + entries. *out is malloc'ed (free it). The
 * entries are `base` (may be NULL) overlaid with n pairs keys/values (set or replace). */
int kvd_sess_meta_pack(uint32_t chunk_tokens, const E8kv__V1__SessionInfo *base, size_t n,
                       char *const *keys, char *const *values, uint8_t **out, size_t *len,
                       kvd_status *st);

/* A SessionInfo message built for a reply; kvd_sess_pb_free releases its memory. */
typedef struct kvd_sess_pb {
  E8kv__V1__SessionInfo m;
  e8kv_fingerprint_pb fp;
  ProtobufCBinaryData *keys;
  char name[E8S_NAME_MAX + 1];
} kvd_sess_pb;

/* Fills out from s (fingerprint read from the store; stored_bytes summed over the chunks when
 * s has keys; chunk keys included when include_keys). out->m borrows s->meta's strings, so s
 * must outlive out. */
int kvd_sess_to_pb(e8s_store *store, uint32_t ns, const kvd_sess *s, int include_keys,
                   kvd_sess_pb *out, kvd_status *st);
void kvd_sess_pb_free(kvd_sess_pb *out);

#endif
