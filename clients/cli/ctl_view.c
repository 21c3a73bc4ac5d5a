/*
 * ctl_view.c: session view (derived figures) and the column specs of the
 * human output of ls, show, stat and verify.
 *
 * Two bpe figures, labelled so: a session's (ls, show) counts its chunks' encoded frames
 * (SessionInfo.stored_bytes: payloads only; a chunk two sessions list counts in both); the
 * namespace's (stat) counts every live chunk of the namespace, listed or not, as stored on
 * disk: each record with its 192-byte header (NamespaceStats.stored_bytes). On small chunks
 * the header is a few percent, so the two differ even for a namespace of one session.
 */
#include <stdio.h>
#include <string.h>

#include "clients/cli/ctl_pbjson.h"
#include "clients/cli/ctl_view.h"

const char *ctl_view_preset(const E8kv__V1__CodecConfig *c, char *buf, size_t n) {
  /* kvstore.proto: `preset` if set, else key_bits/value_bits, else "K3V2". */
  if (c && c->preset && c->preset[0]) snprintf(buf, n, "%s", c->preset);
  else if (c && c->key_bits > 0 && c->value_bits > 0)
    snprintf(buf, n, "K%gV%g", (double)c->key_bits, (double)c->value_bits);
  else snprintf(buf, n, "K3V2");
  if (c && !(c->preset && c->preset[0]) && (c->key_step > 0 || c->value_step > 0)) {
    size_t l = strlen(buf);
    snprintf(buf + l, n - l, " (steps %g/%g)", (double)c->key_step, (double)c->value_step);
  }
  return buf;
}

json_t *ctl_view_session(const E8kv__V1__SessionInfo *s) {
  json_t *o = ctl_pb_to_json(&s->base);
  if (!o) return NULL;
  json_object_del(o, "chunk_keys");
  const E8kv__V1__ModelFingerprint *fp = s->fingerprint;
  char preset[64];
  json_object_set_new(o, "model_id", json_string(fp && fp->model_id ? fp->model_id : ""));
  json_object_set_new(o, "codec_preset",
                      json_string(ctl_view_preset(fp ? fp->codec : NULL, preset, sizeof preset)));
  double elems = fp ? 2.0 * fp->n_layers * fp->n_kv_heads * fp->head_dim * (double)s->n_tokens : 0;
  if (elems > 0 && s->stored_bytes > 0) {
    json_object_set_new(o, "raw_fp16_bytes", json_integer((json_int_t)(elems * 2)));
    json_object_set_new(o, "bpe", json_real((double)s->stored_bytes * 8.0 / elems));
    json_object_set_new(o, "ratio_to_fp16", json_real(elems * 2.0 / (double)s->stored_bytes));
  } else {
    json_object_set_new(o, "raw_fp16_bytes", json_integer((json_int_t)(elems * 2)));
    json_object_set_new(o, "bpe", json_null());
    json_object_set_new(o, "ratio_to_fp16", json_null());
  }
  return o;
}

const ctl_col ctl_cols_ls[] = {
    {"name", "SESSION", CTL_F_STR, 1},       {"model_id", "MODEL", CTL_F_STR, 1},
    {"n_tokens", "TOKENS", CTL_F_INT, 0},    {"n_chunks", "CHUNKS", CTL_F_INT, 0},
    {"stored_bytes", "STORED", CTL_F_BYTES, 0}, {"bpe", "BPE(FRAMES)", CTL_F_FLOAT, 2},
    {"updated_unix_ms", "UPDATED", CTL_F_TIME, 2}, {NULL, NULL, CTL_F_STR, 0}};

const ctl_col ctl_cols_show[] = {
    {"name", "session", CTL_F_STR, 0},
    {"model_id", "model", CTL_F_STR, 0},
    {"fingerprint_id", "fingerprint id", CTL_F_STR, 0},
    {"fingerprint.n_layers", "layers", CTL_F_INT, 0},
    {"fingerprint.n_kv_heads", "kv heads", CTL_F_INT, 0},
    {"fingerprint.head_dim", "head_dim", CTL_F_INT, 0},
    {"fingerprint.source_dtype", "source dtype", CTL_F_STR, 0},
    {"fingerprint.rope.theta", "rope theta", CTL_F_FLOAT, 0},
    {"fingerprint.rope.layout", "rope layout", CTL_F_STR, 0},
    {"fingerprint.rope.scaling", "rope scaling", CTL_F_STR, 0},
    {"codec_preset", "codec preset", CTL_F_STR, 0},
    {"chunk_tokens", "chunk tokens", CTL_F_INT, 0},
    {"n_tokens", "tokens", CTL_F_INT, 0},
    {"n_chunks", "chunks", CTL_F_INT, 0},
    {"stored_bytes", "stored (frames)", CTL_F_BYTES, 0},
    {"raw_fp16_bytes", "as fp16", CTL_F_BYTES, 0},
    {"bpe", "bpe (frames)", CTL_F_FLOAT, 0},
    {"ratio_to_fp16", "ratio to fp16", CTL_F_FLOAT, 0},
    {"created_unix_ms", "created", CTL_F_TIME, 0},
    {"updated_unix_ms", "updated", CTL_F_TIME, 0},
    {"metadata", "metadata", CTL_F_STR, 0},
    {NULL, NULL, CTL_F_STR, 0}};

const ctl_col ctl_cols_stat[] = {
    {"namespace.namespace_name", "namespace", CTL_F_STR, 0},
    {"namespace.sessions", "sessions", CTL_F_INT, 0},
    {"namespace.chunks", "chunks", CTL_F_INT, 0},
    {"namespace.tokens", "tokens", CTL_F_INT, 0},
    {"namespace.stored_bytes", "stored (on disk)", CTL_F_BYTES, 0},
    {"namespace.raw_fp16_bytes", "as fp16", CTL_F_BYTES, 0},
    {"namespace.chunks_purge_pending", "purge pending", CTL_F_INT, 0},
    {"namespace.bpe", "bpe (on disk, with record headers)", CTL_F_FLOAT, 0},
    {"hit_rate", "lookup hit rate", CTL_F_PCT, 0},
    {"store.used_bytes", "store used", CTL_F_BYTES, 0},
    {"store.capacity_bytes", "store capacity", CTL_F_LIMIT, 0},
    {"store.chunks", "store chunks", CTL_F_INT, 0},
    {"store.sessions", "store sessions", CTL_F_INT, 0},
    {"store.namespaces", "namespaces", CTL_F_INT, 0},
    {"store.segments", "segments", CTL_F_INT, 0},
    {"store.evictions", "evictions", CTL_F_INT, 0},
    {"store.quarantined", "quarantined", CTL_F_INT, 0},
    {"daemon.uptime_s", "daemon uptime s", CTL_F_INT, 0},
    {NULL, NULL, CTL_F_STR, 0}};

const ctl_col ctl_cols_verify[] = {
    {"records_checked", "records checked", CTL_F_INT, 0},
    {"bytes_checked", "bytes checked", CTL_F_BYTES, 0},
    {"corrupt_records", "corrupt records", CTL_F_INT, 0},
    {"complete", "complete", CTL_F_BOOL, 0},
    {NULL, NULL, CTL_F_STR, 0}};

const ctl_col ctl_cols_corrupt[] = {
    {"chunk_key", "CHUNK KEY", CTL_F_STR, 1}, {"segment", "SEGMENT", CTL_F_STR, 0},
    {"offset", "OFFSET", CTL_F_INT, 0},       {"reason", "REASON", CTL_F_STR, 1},
    {NULL, NULL, CTL_F_STR, 0}};
