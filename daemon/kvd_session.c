/* kvd_session.c: session names, metadata blobs, loading and reply messages
 * (see kvd_session.h). */
#include "daemon/kvd_session.h"

#include <stdlib.h>
#include <string.h>

int kvd_sess_name_check(const char *name, kvd_status *st) {
  size_t n = strlen(name);
  if (n < 1 || n > E8S_NAME_MAX)
    return kvd_error(st, KVD_INVALID, "session name must be 1..%d bytes (got %zu)",
                     E8S_NAME_MAX, n);
  for (const char *p = name; *p; p++) {
    char c = *p;
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
          strchr("._:/@+=-", c)))
      return kvd_error(st, KVD_INVALID, "session name may only hold [A-Za-z0-9._:/@+=-] "
                                        "(byte 0x%02x at offset %zu)",
                       (unsigned char)c, (size_t)(p - name));
  }
  return 0;
}

int kvd_sess_meta_check(size_t n, char *const *keys, char *const *values, kvd_status *st) {
  if (n > KVD_META_ENTRIES_MAX)
    return kvd_error(st, KVD_INVALID, "session metadata: %zu entries, at most %d", n,
                     KVD_META_ENTRIES_MAX);
  for (size_t i = 0; i < n; i++) {
    size_t kl = strlen(keys[i]), vl = strlen(values[i]);
    if (kl < 1 || kl > KVD_META_KEY_MAX)
      return kvd_error(st, KVD_INVALID, "session metadata key %zu must be 1..%d bytes", i,
                       KVD_META_KEY_MAX);
    if (vl > KVD_META_VALUE_MAX)
      return kvd_error(st, KVD_INVALID, "session metadata value of '%s' is %zu bytes, at "
                                        "most %d", keys[i], vl, KVD_META_VALUE_MAX);
    /* proto3 strings: a malformed one would make every later GetSession / ListSessions
     * reply undecodable for conforming clients (Python, Go, Java refuse such messages). */
    if (!e8kv_utf8_valid(keys[i], kl))
      return kvd_error(st, KVD_INVALID, "session metadata key %zu is not valid UTF-8", i);
    if (!e8kv_utf8_valid(values[i], vl))
      return kvd_error(st, KVD_INVALID, "session metadata value %zu is not valid UTF-8", i);
  }
  return 0;
}

int kvd_sess_chunk_tokens(uint32_t in, uint32_t *out, kvd_status *st) {
  *out = in ? in : KVD_CHUNK_TOKENS_DEFAULT;
  if (*out > KVD_CHUNK_TOKENS_MAX)
    return kvd_error(st, KVD_INVALID, "chunk_tokens %u is over the limit of %d", in,
                     KVD_CHUNK_TOKENS_MAX);
  return 0;
}

int kvd_sess_load(e8s_store *s, uint32_t ns, const char *name, int want_keys, kvd_sess *out,
                  kvd_status *st) {
  memset(out, 0, sizeof *out);
  static __thread uint8_t meta[E8S_META_MAX];
  int rc = e8s_session_get(s, ns, name, &out->info, NULL, 0, meta, sizeof meta);
  for (int tries = 0; rc == E8S_OK && want_keys && out->info.n_chunks > 0 && tries < 8;
       tries++) { /* the chain may grow between the two reads: size again */
    uint64_t n = out->info.n_chunks;
    free(out->keys);
    out->keys = NULL;
    out->keys = malloc((size_t)n * E8S_KEY_BYTES);
    if (!out->keys) return kvd_error(st, KVD_RESOURCE, "out of memory for session keys");
    rc = e8s_session_get(s, ns, name, &out->info, out->keys, n, meta, sizeof meta);
    if (rc == E8S_ERR_RANGE) rc = E8S_OK;
    if (rc == E8S_OK && out->info.n_chunks <= n) break;
    free(out->keys); /* grew again (or failed) */
    out->keys = NULL;
  }
  if (rc == E8S_OK && want_keys && out->info.n_chunks > 0 && !out->keys)
    return kvd_error(st, KVD_ABORTED, "session '%s' kept changing while being read; retry",
                     name);
  if (rc == E8S_ERR_NOTFOUND) {
    kvd_sess_free(out);
    return kvd_error(st, KVD_NOT_FOUND, "session '%s' not found", name);
  }
  if (rc != E8S_OK) {
    kvd_sess_free(out);
    return kvd_store_error(st, rc, "read session");
  }
  out->meta = e8kv__v1__session_info__unpack(NULL, out->info.meta_bytes, meta);
  if (!out->meta) {
    kvd_sess_free(out);
    return kvd_error(st, KVD_DATA_LOSS, "session '%s': stored metadata does not parse", name);
  }
  return 0;
}

void kvd_sess_free(kvd_sess *s) {
  free(s->keys);
  s->keys = NULL;
  if (s->meta) e8kv__v1__session_info__free_unpacked(s->meta, NULL);
  s->meta = NULL;
}

int kvd_sess_meta_pack(uint32_t chunk_tokens, const E8kv__V1__SessionInfo *base, size_t n,
                       char *const *keys, char *const *values, uint8_t **out, size_t *len,
                       kvd_status *st) {
  size_t nb = base ? base->n_metadata : 0, m = 0;
  E8kv__V1__SessionInfo__MetadataEntry *ents = calloc(nb + n + 1, sizeof *ents);
  E8kv__V1__SessionInfo__MetadataEntry **ptrs = calloc(nb + n + 1, sizeof *ptrs);
  if (!ents || !ptrs) {
    free(ents);
    free(ptrs);
    return kvd_error(st, KVD_RESOURCE, "out of memory");
  }
  for (size_t i = 0; i < nb + n; i++) {
    const char *k = i < nb ? base->metadata[i]->key : keys[i - nb];
    const char *v = i < nb ? base->metadata[i]->value : values[i - nb];
    size_t j = 0;
    while (j < m && strcmp(ents[j].key, k) != 0) j++;
    if (j == m) {
      e8kv__v1__session_info__metadata_entry__init(&ents[m]);
      ptrs[m] = &ents[m];
      m++;
    }
    ents[j].key = (char *)k;
    ents[j].value = (char *)v;
  }
  int rc = 0;
  if (m > KVD_META_ENTRIES_MAX) {
    rc = kvd_error(st, KVD_INVALID, "session metadata would have %zu entries, at most %d", m,
                   KVD_META_ENTRIES_MAX);
  } else {
    E8kv__V1__SessionInfo si;
    e8kv__v1__session_info__init(&si);
    si.chunk_tokens = chunk_tokens;
    si.n_metadata = m;
    si.metadata = ptrs;
    *len = e8kv__v1__session_info__get_packed_size(&si);
    *out = NULL;
    if (*len > KVD_META_BYTES_MAX) /* the store's bound on a session's metadata blob */
      rc = kvd_error(st, KVD_INVALID, "session metadata would take %zu bytes, at most %u in "
                                      "all (keys, values and their framing)", *len,
                     KVD_META_BYTES_MAX);
    else if (!(*out = malloc(*len + 1))) rc = kvd_error(st, KVD_RESOURCE, "out of memory");
    else e8kv__v1__session_info__pack(&si, *out);
  }
  free(ents);
  free(ptrs);
  return rc;
}

int kvd_sess_to_pb(e8s_store *store, uint32_t ns, const kvd_sess *s, int include_keys,
                   kvd_sess_pb *out, kvd_status *st) {
  memset(out, 0, sizeof *out);
  E8kv__V1__SessionInfo *m = &out->m;
  e8kv__v1__session_info__init(m);
  snprintf(out->name, sizeof out->name, "%s", s->info.name);
  m->name = out->name;
  m->fingerprint_id.data = (uint8_t *)s->info.fp_id;
  m->fingerprint_id.len = E8S_KEY_BYTES;
  kvd_fp fp;
  if (kvd_fp_load(store, s->info.fp_id, &fp, st) != 0) return -1;
  e8kv_fingerprint_to_pb(&fp.fp, &out->fp);
  m->fingerprint = &out->fp.m;
  m->chunk_tokens = s->meta->chunk_tokens;
  m->n_tokens = s->info.n_tokens;
  m->n_chunks = (uint32_t)s->info.n_chunks;
  m->created_unix_ms = (int64_t)(s->info.created_ns / 1000000);
  m->updated_unix_ms = (int64_t)(s->info.updated_ns / 1000000);
  m->n_metadata = s->meta->n_metadata;
  m->metadata = s->meta->metadata;
  if (s->keys) {
    for (uint64_t i = 0; i < s->info.n_chunks; i++) {
      e8s_chunk_info ci;
      if (e8s_chunk_stat(store, ns, s->keys[i], &ci) == E8S_OK) m->stored_bytes += ci.payload_bytes;
    }
  }
  if (include_keys && s->keys && s->info.n_chunks) {
    out->keys = calloc(s->info.n_chunks, sizeof *out->keys);
    if (!out->keys) return kvd_error(st, KVD_RESOURCE, "out of memory");
    for (uint64_t i = 0; i < s->info.n_chunks; i++)
      out->keys[i] = (ProtobufCBinaryData){E8S_KEY_BYTES, s->keys[i]};
    m->n_chunk_keys = s->info.n_chunks;
    m->chunk_keys = out->keys;
  }
  return 0;
}

void kvd_sess_pb_free(kvd_sess_pb *out) {
  free(out->keys);
  out->keys = NULL;
}
