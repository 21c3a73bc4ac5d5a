/* kvd_fp.c: fingerprint conversions between wire, codec and store (see kvd_fp.h). */
#include "daemon/kvd_fp.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int rope_from_pb(const E8kv__V1__RopeConfig *r, uint32_t head_dim, e8c_rope *o,
                        kvd_status *st) {
  if (!r) return kvd_error(st, KVD_INVALID, "fingerprint.rope is required (theta = 0 for a "
                                           "model without RoPE)");
  memset(o, 0, sizeof *o);
  if (r->theta == 0) {
    o->type = E8C_ROPE_NONE;
    return 0;
  }
  static const uint32_t types[] = {E8C_ROPE_DEFAULT, E8C_ROPE_LINEAR, E8C_ROPE_DYNAMIC,
                                   E8C_ROPE_YARN, E8C_ROPE_LLAMA3, E8C_ROPE_LONGROPE};
  if ((unsigned)r->scaling >= sizeof types / sizeof types[0])
    return kvd_error(st, KVD_INVALID, "fingerprint.rope.scaling %d is unknown", r->scaling);
  o->type = types[r->scaling];
  if (r->layout != E8KV__V1__ROPE_LAYOUT__ROPE_LAYOUT_SPLIT_HALF &&
      r->layout != E8KV__V1__ROPE_LAYOUT__ROPE_LAYOUT_INTERLEAVED)
    return kvd_error(st, KVD_INVALID, "fingerprint.rope.layout must be SPLIT_HALF or "
                                     "INTERLEAVED when theta > 0");
  o->layout = (uint32_t)r->layout; /* same numbering as e8c_rope_layout */
  o->rotary_dim = r->rotary_dim ? r->rotary_dim : head_dim;
  o->original_max_pos = r->original_max_position_embeddings;
  o->theta = r->theta;
  o->factor = r->factor;
  if (o->factor == 0 && o->type != E8C_ROPE_DEFAULT && o->type != E8C_ROPE_LONGROPE)
    o->factor = 1.0;
  o->low_freq_factor = r->low_freq_factor;
  o->high_freq_factor = r->high_freq_factor;
  o->beta_fast = r->beta_fast;
  o->beta_slow = r->beta_slow;
  o->attention_factor = r->attention_factor;
  o->yarn_no_truncate = r->yarn_no_truncate ? 1 : 0;
  if (r->n_short_factor > E8C_MAX_ROPE_FACTORS || r->n_long_factor != r->n_short_factor)
    return kvd_error(st, KVD_INVALID, "fingerprint.rope: short_factor and long_factor must "
                                     "have the same length, at most %u",
                    E8C_MAX_ROPE_FACTORS);
  o->n_longrope = (uint32_t)r->n_short_factor;
  for (size_t i = 0; i < r->n_short_factor; i++) {
    o->short_factor[i] = (float)r->short_factor[i];
    o->long_factor[i] = (float)r->long_factor[i];
  }
  return 0;
}

static int preset_from_bits(float kb, float vb, char *name, size_t cap, kvd_status *st) {
  if (kb != floorf(kb) || vb != floorf(vb) || kb < 2 || kb > 4 || vb < 2 || vb > 4)
    return kvd_error(st, KVD_INVALID, "fingerprint.codec: key_bits %g / value_bits %g must "
                                     "be whole numbers in 2..4 (presets K4V4 K4V3 K4V2 K3V3 "
                                     "K3V2 K2V2)", kb, vb);
  snprintf(name, cap, "K%dV%d", (int)kb, (int)vb);
  return 0;
}

static int codec_from_pb(const E8kv__V1__CodecConfig *c, uint32_t n_layers, e8c_config *o,
                         kvd_status *st) {
  e8c_config_default(o);
  if (!c) return 0;
  char name[E8C_PRESET_NAME_MAX] = "";
  if (*c->preset) snprintf(name, sizeof name, "%s", c->preset);
  else if (c->key_bits != 0 || c->value_bits != 0) {
    if (preset_from_bits(c->key_bits, c->value_bits, name, sizeof name, st) != 0) return -1;
  }
  if (*name && e8c_is_error(e8c_preset_apply(name, o)))
    return kvd_error(st, KVD_INVALID, "fingerprint.codec: unknown preset '%s' (known: K4V4 "
                                     "K4V3 K4V2 K3V3 K3V2 K2V2)", name);
  if (c->key_step != 0) o->k_step = c->key_step;
  if (c->value_step != 0) o->v_step = c->value_step;
  for (size_t i = 0; i < c->n_protected_layers; i++) {
    uint32_t l = c->protected_layers[i];
    if (l >= n_layers || l >= E8C_MAX_LAYERS)
      return kvd_error(st, KVD_INVALID, "fingerprint.codec.protected_layers: layer %u is not "
                                       "below n_layers %u", l, n_layers);
    o->protect_mask[l / 64] |= 1ull << (l % 64);
  }
  o->protect_first = c->protect_first_layers;
  o->protect_last = c->protect_last_layers;
  o->sink_tokens = c->sink_tokens;
  o->recent_tokens = c->recent_window_tokens;
  if ((unsigned)c->decorrelation > 3)
    return kvd_error(st, KVD_INVALID, "fingerprint.codec.decorrelation %d is unknown",
                    c->decorrelation);
  o->decorrelation = (uint32_t)c->decorrelation; /* same numbering as e8c_decor */
  if (c->zstd_level != 0) o->zstd_level = c->zstd_level;
  if (c->hadamard_seed != 0) o->hadamard_seed = c->hadamard_seed;
  if (c->format_version != 0 && c->format_version != E8C_FORMAT_VERSION)
    return kvd_error(st, KVD_INVALID, "fingerprint.codec.format_version %u is not supported "
                                     "(this daemon writes %u)", c->format_version,
                    E8C_FORMAT_VERSION);
  return 0;
}

int kvd_fp_resolve(const E8kv__V1__ModelFingerprint *pb, kvd_fp *out, kvd_status *st) {
  memset(out, 0, sizeof *out);
  if (!pb) return kvd_error(st, KVD_INVALID, "fingerprint is required");
  e8c_fingerprint *f = &out->fp;
  size_t n = strlen(pb->model_id);
  if (n < 1 || n >= E8C_MODEL_ID_MAX)
    return kvd_error(st, KVD_INVALID, "fingerprint.model_id must be 1..%u bytes (got %zu)",
                    E8C_MODEL_ID_MAX - 1, n);
  memcpy(f->model_id, pb->model_id, n + 1);
  f->n_layers = pb->n_layers;
  f->n_kv_heads = pb->n_kv_heads;
  f->head_dim = pb->head_dim;
  if (pb->source_dtype < E8KV__V1__DTYPE__DTYPE_FP16 ||
      pb->source_dtype > E8KV__V1__DTYPE__DTYPE_FP32)
    return kvd_error(st, KVD_INVALID, "fingerprint.source_dtype must be FP16, BF16 or FP32");
  f->src_dtype = (uint32_t)pb->source_dtype; /* same numbering as e8c_dtype */
  if (rope_from_pb(pb->rope, pb->head_dim, &f->rope, st) != 0) return -1;
  if (codec_from_pb(pb->codec, pb->n_layers, &f->config, st) != 0) return -1;
  char msg[256] = "";
  int64_t rc = e8c_fingerprint_validate(f, msg, sizeof msg);
  if (e8c_is_error(rc))
    return kvd_error(st, KVD_INVALID, "fingerprint: %s", *msg ? msg : e8c_error_string(rc));
  rc = e8c_fingerprint_id(f, out->id);
  if (e8c_is_error(rc))
    return kvd_error(st, KVD_INVALID, "fingerprint: %s", e8c_error_string(rc));
  return 0;
}

int kvd_fp_register(e8s_store *s, const kvd_fp *f, kvd_status *st) {
  uint8_t buf[E8S_FP_BLOB_MAX];
  int64_t n = e8c_fingerprint_serialize(&f->fp, buf, sizeof buf);
  if (e8c_is_error(n))
    return kvd_error(st, KVD_INTERNAL, "fingerprint serialization: %s", e8c_error_string(n));
  int rc = e8s_fp_register(s, f->id, buf, (size_t)n);
  if (rc != E8S_OK) return kvd_store_error(st, rc, "register fingerprint");
  return 0;
}

int kvd_fp_load(e8s_store *s, const uint8_t id[E8C_ID_SIZE], kvd_fp *out, kvd_status *st) {
  uint8_t buf[E8S_FP_BLOB_MAX];
  size_t n = 0;
  int rc = e8s_fp_get(s, id, buf, sizeof buf, &n);
  if (rc != E8S_OK) return kvd_store_error(st, rc, "read fingerprint");
  memset(out, 0, sizeof *out);
  int64_t r = e8c_fingerprint_parse(buf, n, &out->fp);
  if (e8c_is_error(r))
    return kvd_error(st, KVD_DATA_LOSS, "stored fingerprint does not parse: %s",
                    e8c_error_string(r));
  memcpy(out->id, id, E8C_ID_SIZE);
  return 0;
}

static void rope_to_pb(const e8c_rope *r, uint32_t head_dim, kvd_fp_pb *o) {
  E8kv__V1__RopeConfig *p = &o->rope;
  e8kv__v1__rope_config__init(p);
  if (r->type == E8C_ROPE_NONE || r->type == E8C_ROPE_UNSET) return;
  static const E8kv__V1__RopeScaling sc[] = {
      [E8C_ROPE_DEFAULT] = E8KV__V1__ROPE_SCALING__ROPE_SCALING_NONE,
      [E8C_ROPE_LINEAR] = E8KV__V1__ROPE_SCALING__ROPE_SCALING_LINEAR,
      [E8C_ROPE_DYNAMIC] = E8KV__V1__ROPE_SCALING__ROPE_SCALING_DYNAMIC,
      [E8C_ROPE_YARN] = E8KV__V1__ROPE_SCALING__ROPE_SCALING_YARN,
      [E8C_ROPE_LLAMA3] = E8KV__V1__ROPE_SCALING__ROPE_SCALING_LLAMA3,
      [E8C_ROPE_LONGROPE] = E8KV__V1__ROPE_SCALING__ROPE_SCALING_LONGROPE};
  p->theta = r->theta;
  p->rotary_dim = r->rotary_dim == head_dim ? 0 : r->rotary_dim;
  p->layout = (E8kv__V1__RopeLayout)r->layout;
  p->scaling = r->type <= E8C_ROPE_LONGROPE ? sc[r->type] : 0;
  p->factor = r->factor;
  p->original_max_position_embeddings = r->original_max_pos;
  p->low_freq_factor = r->low_freq_factor;
  p->high_freq_factor = r->high_freq_factor;
  p->beta_fast = r->beta_fast;
  p->beta_slow = r->beta_slow;
  p->attention_factor = r->attention_factor;
  p->yarn_no_truncate = r->yarn_no_truncate != 0;
  for (uint32_t i = 0; i < r->n_longrope && i < E8C_MAX_ROPE_FACTORS; i++) {
    o->short_factor[i] = r->short_factor[i];
    o->long_factor[i] = r->long_factor[i];
  }
  p->n_short_factor = p->n_long_factor = r->n_longrope;
  p->short_factor = o->short_factor;
  p->long_factor = o->long_factor;
}

static void codec_to_pb(const e8c_config *c, uint32_t n_layers, kvd_fp_pb *o) {
  E8kv__V1__CodecConfig *p = &o->codec;
  e8kv__v1__codec_config__init(p);
  snprintf(o->preset, sizeof o->preset, "%s", c->preset);
  p->preset = o->preset;
  int kb, vb;
  if (sscanf(c->preset, "K%dV%d", &kb, &vb) == 2) { p->key_bits = (float)kb; p->value_bits = (float)vb; }
  p->key_step = c->k_step;
  p->value_step = c->v_step;
  size_t n = 0;
  for (uint32_t l = 0; l < n_layers && l < E8C_MAX_LAYERS; l++)
    if (c->protect_mask[l / 64] >> (l % 64) & 1) o->protected_layers[n++] = l;
  p->n_protected_layers = n;
  p->protected_layers = o->protected_layers;
  p->protect_first_layers = c->protect_first;
  p->protect_last_layers = c->protect_last;
  p->sink_tokens = c->sink_tokens;
  p->recent_window_tokens = c->recent_tokens;
  p->decorrelation = (E8kv__V1__Decorrelation)c->decorrelation;
  p->zstd_level = c->zstd_level;
  p->hadamard_seed = c->hadamard_seed;
  p->format_version = E8C_FORMAT_VERSION;
}

void kvd_fp_to_pb(const e8c_fingerprint *fp, kvd_fp_pb *o) {
  e8kv__v1__model_fingerprint__init(&o->m);
  snprintf(o->model_id, sizeof o->model_id, "%s", fp->model_id);
  o->m.model_id = o->model_id;
  o->m.n_layers = fp->n_layers;
  o->m.n_kv_heads = fp->n_kv_heads;
  o->m.head_dim = fp->head_dim;
  o->m.source_dtype = (E8kv__V1__DType)fp->src_dtype;
  rope_to_pb(&fp->rope, fp->head_dim, o);
  codec_to_pb(&fp->config, fp->n_layers, o);
  o->m.rope = &o->rope;
  o->m.codec = &o->codec;
}

const char *kvd_hex8(const uint8_t *id, char out[17]) {
  for (int i = 0; i < 8; i++) snprintf(out + 2 * i, 3, "%02x", id[i]);
  return out;
}
