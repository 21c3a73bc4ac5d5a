/* e8kv_fp.c: model fingerprint wire <-> codec conversion (see e8kv_fp.h for the rules). */
#include "proto/e8kv_fp.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

__attribute__((format(printf, 3, 4)))
static int fp_fail(char *msg, size_t n, const char *fmt, ...) {
  if (msg && n) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, n, fmt, ap);
    va_end(ap);
  }
  return -1;
}

/* ------------------------------------------------------------------ wire -> codec */

/* The codec format version a configuration writes (e8codec.h: 1 for E8C_ENTROPY_V1). */
static uint32_t fp_format_version(const e8c_config *c) {
  return c->entropy == E8C_ENTROPY_V1 ? 1u : E8C_FORMAT_VERSION;
}

static int rope_from_pb(const E8kv__V1__RopeConfig *r, uint32_t head_dim, e8c_rope *o,
                        char *msg, size_t n) {
  if (!r) return fp_fail(msg, n, "fingerprint.rope is required (theta = 0 for a model "
                                 "without RoPE)");
  memset(o, 0, sizeof *o);
  if (r->theta == 0) {
    o->type = E8C_ROPE_NONE;
    return 0;
  }
  static const uint32_t types[] = {E8C_ROPE_DEFAULT, E8C_ROPE_LINEAR, E8C_ROPE_DYNAMIC,
                                   E8C_ROPE_YARN, E8C_ROPE_LLAMA3, E8C_ROPE_LONGROPE};
  if ((unsigned)r->scaling >= sizeof types / sizeof types[0])
    return fp_fail(msg, n, "fingerprint.rope.scaling %d is unknown", r->scaling);
  o->type = types[r->scaling];
  if (r->layout != E8KV__V1__ROPE_LAYOUT__ROPE_LAYOUT_SPLIT_HALF &&
      r->layout != E8KV__V1__ROPE_LAYOUT__ROPE_LAYOUT_INTERLEAVED)
    return fp_fail(msg, n, "fingerprint.rope.layout must be SPLIT_HALF or INTERLEAVED when "
                           "theta > 0");
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
    return fp_fail(msg, n, "fingerprint.rope: short_factor and long_factor must have the same "
                           "length, at most %u", E8C_MAX_ROPE_FACTORS);
  o->n_longrope = (uint32_t)r->n_short_factor;
  for (size_t i = 0; i < r->n_short_factor; i++) {
    o->short_factor[i] = (float)r->short_factor[i];
    o->long_factor[i] = (float)r->long_factor[i];
  }
  return 0;
}

/* The preset a CodecConfig names: `preset`, else key_bits/value_bits, else "" (keep). */
static int codec_preset(const E8kv__V1__CodecConfig *c, char *name, size_t cap, char *msg,
                        size_t n) {
  *name = 0;
  if (*c->preset) {
    snprintf(name, cap, "%s", c->preset);
    return 0;
  }
  if (c->key_bits == 0 && c->value_bits == 0) return 0;
  float kb = c->key_bits, vb = c->value_bits;
  if (kb != floorf(kb) || vb != floorf(vb) || kb < 2 || kb > 4 || vb < 2 || vb > 4)
    return fp_fail(msg, n, "fingerprint.codec: key_bits %g / value_bits %g must be whole "
                           "numbers in 2..4 (presets K4V4 K4V3 K4V2 K3V3 K3V2 K2V2)", kb, vb);
  snprintf(name, cap, "K%dV%d", (int)kb, (int)vb);
  return 0;
}

static int codec_from_pb(const E8kv__V1__CodecConfig *c, uint32_t n_layers, e8c_config *o,
                         char *msg, size_t n) {
  e8c_config_default(o);
  if (!c) return 0; /* unset: the default configuration, sink token included */
  char name[E8C_PRESET_NAME_MAX];
  if (codec_preset(c, name, sizeof name, msg, n) != 0) return -1;
  if (*name && e8c_is_error(e8c_preset_apply(name, o)))
    return fp_fail(msg, n, "fingerprint.codec: unknown preset '%s' (known: K4V4 K4V3 K4V2 "
                           "K3V3 K3V2 K2V2)", name);
  if (c->key_step != 0) o->k_step = c->key_step;
  if (c->value_step != 0) o->v_step = c->value_step;
  for (size_t i = 0; i < c->n_protected_layers; i++) {
    uint32_t l = c->protected_layers[i];
    if (l >= n_layers || l >= E8C_MAX_LAYERS)
      return fp_fail(msg, n, "fingerprint.codec.protected_layers: layer %u is not below "
                             "n_layers %u", l, n_layers);
    o->protect_mask[l / 64] |= 1ull << (l % 64);
  }
  o->protect_first = c->protect_first_layers;
  o->protect_last = c->protect_last_layers;
  o->sink_tokens = c->sink_tokens; /* a count: 0 = none */
  o->recent_tokens = c->recent_window_tokens;
  if ((unsigned)c->decorrelation > E8C_DECOR_MEAN)
    return fp_fail(msg, n, "fingerprint.codec.decorrelation %d is unknown", c->decorrelation);
  o->decorrelation = (uint32_t)c->decorrelation; /* same numbering as e8c_decor */
  if (c->zstd_level != 0) o->zstd_level = c->zstd_level;
  if (c->hadamard_seed != 0) o->hadamard_seed = c->hadamard_seed;
  if ((unsigned)c->entropy > E8C_ENTROPY_V1)
    return fp_fail(msg, n, "fingerprint.codec.entropy %d is unknown", c->entropy);
  o->entropy = (uint32_t)c->entropy; /* same numbering as e8c_entropy */
  uint32_t version = fp_format_version(o);
  if (c->format_version != 0 && c->format_version != version)
    return fp_fail(msg, n, "fingerprint.codec.format_version %u does not match entropy %d, "
                           "which writes format %u", c->format_version, c->entropy, version);
  return 0;
}

int e8kv_utf8_valid(const char *str, size_t len) {
  const unsigned char *s = (const unsigned char *)str;
  size_t i = 0;
  while (i < len) {
    unsigned c = s[i];
    size_t k;
    unsigned lo = 0x80, hi = 0xbf; /* allowed range of the first continuation byte */
    if (c < 0x80) { i++; continue; }
    if (c >= 0xc2 && c <= 0xdf) k = 1;
    else if (c >= 0xe0 && c <= 0xef) { k = 2; if (c == 0xe0) lo = 0xa0; if (c == 0xed) hi = 0x9f; }
    else if (c >= 0xf0 && c <= 0xf4) { k = 3; if (c == 0xf0) lo = 0x90; if (c == 0xf4) hi = 0x8f; }
    else return 0;
    if (len - i <= k) return 0;
    if (s[i + 1] < lo || s[i + 1] > hi) return 0;
    for (size_t j = 2; j <= k; j++)
      if (s[i + j] < 0x80 || s[i + j] > 0xbf) return 0;
    i += k + 1;
  }
  return 1;
}

int e8kv_fingerprint_from_pb(const E8kv__V1__ModelFingerprint *pb, e8c_fingerprint *f,
                             uint8_t id[E8C_ID_SIZE], char *msg, size_t n) {
  memset(f, 0, sizeof *f);
  if (msg && n) *msg = 0;
  if (!pb) return fp_fail(msg, n, "fingerprint is required");
  size_t len = strlen(pb->model_id);
  if (len < 1 || len >= E8C_MODEL_ID_MAX)
    return fp_fail(msg, n, "fingerprint.model_id must be 1..%u bytes (got %zu)",
                   E8C_MODEL_ID_MAX - 1, len);
  if (!e8kv_utf8_valid(pb->model_id, len))
    return fp_fail(msg, n, "fingerprint.model_id is not valid UTF-8");
  memcpy(f->model_id, pb->model_id, len + 1);
  f->n_layers = pb->n_layers;
  f->n_kv_heads = pb->n_kv_heads;
  f->head_dim = pb->head_dim;
  if (pb->source_dtype < E8KV__V1__DTYPE__DTYPE_FP16 ||
      pb->source_dtype > E8KV__V1__DTYPE__DTYPE_FP32)
    return fp_fail(msg, n, "fingerprint.source_dtype must be FP16, BF16 or FP32");
  f->src_dtype = (uint32_t)pb->source_dtype; /* same numbering as e8c_dtype */
  if (rope_from_pb(pb->rope, pb->head_dim, &f->rope, msg, n) != 0) return -1;
  if (codec_from_pb(pb->codec, pb->n_layers, &f->config, msg, n) != 0) return -1;
  char why[256] = "";
  int64_t rc = e8c_fingerprint_validate(f, why, sizeof why);
  if (e8c_is_error(rc))
    return fp_fail(msg, n, "fingerprint: %s", *why ? why : e8c_error_string(rc));
  uint8_t tmp[E8C_ID_SIZE];
  rc = e8c_fingerprint_id(f, id ? id : tmp);
  if (e8c_is_error(rc)) return fp_fail(msg, n, "fingerprint: %s", e8c_error_string(rc));
  return 0;
}

int e8kv_fingerprint_from_pb_bytes(const void *buf, size_t size, e8c_fingerprint *f,
                                   uint8_t id[E8C_ID_SIZE], char *msg, size_t n) {
  memset(f, 0, sizeof *f);
  if (!buf && size) return fp_fail(msg, n, "fingerprint: NULL buffer");
  E8kv__V1__ModelFingerprint *pb = e8kv__v1__model_fingerprint__unpack(NULL, size, buf);
  if (!pb)
    return fp_fail(msg, n, "fingerprint: %zu bytes that do not parse as "
                           "e8kv.v1.ModelFingerprint", size);
  int rc = e8kv_fingerprint_from_pb(pb, f, id, msg, n);
  e8kv__v1__model_fingerprint__free_unpacked(pb, NULL);
  return rc;
}

/* ------------------------------------------------------------------ codec -> wire */

static void rope_to_pb(const e8c_rope *r, uint32_t head_dim, e8kv_fingerprint_pb *o) {
  E8kv__V1__RopeConfig *p = &o->rope;
  e8kv__v1__rope_config__init(p);
  if (r->type == E8C_ROPE_NONE || r->type == E8C_ROPE_UNSET) return; /* theta 0: no RoPE */
  switch (r->type) {
    case E8C_ROPE_LINEAR: p->scaling = E8KV__V1__ROPE_SCALING__ROPE_SCALING_LINEAR; break;
    case E8C_ROPE_DYNAMIC: p->scaling = E8KV__V1__ROPE_SCALING__ROPE_SCALING_DYNAMIC; break;
    case E8C_ROPE_YARN: p->scaling = E8KV__V1__ROPE_SCALING__ROPE_SCALING_YARN; break;
    case E8C_ROPE_LLAMA3: p->scaling = E8KV__V1__ROPE_SCALING__ROPE_SCALING_LLAMA3; break;
    case E8C_ROPE_LONGROPE: p->scaling = E8KV__V1__ROPE_SCALING__ROPE_SCALING_LONGROPE; break;
    default: p->scaling = E8KV__V1__ROPE_SCALING__ROPE_SCALING_NONE; break;
  }
  p->theta = r->theta;
  p->rotary_dim = r->rotary_dim == head_dim ? 0 : r->rotary_dim; /* 0 = head_dim */
  p->layout = (E8kv__V1__RopeLayout)r->layout; /* same numbering on both sides */
  p->factor = r->factor;
  p->original_max_position_embeddings = r->original_max_pos;
  p->low_freq_factor = r->low_freq_factor;
  p->high_freq_factor = r->high_freq_factor;
  p->beta_fast = r->beta_fast;
  p->beta_slow = r->beta_slow;
  p->attention_factor = r->attention_factor;
  p->yarn_no_truncate = r->yarn_no_truncate != 0;
  uint32_t n = r->n_longrope < E8C_MAX_ROPE_FACTORS ? r->n_longrope : E8C_MAX_ROPE_FACTORS;
  for (uint32_t i = 0; i < n; i++) {
    o->short_factor[i] = r->short_factor[i];
    o->long_factor[i] = r->long_factor[i];
  }
  p->n_short_factor = p->n_long_factor = n;
  p->short_factor = o->short_factor;
  p->long_factor = o->long_factor;
}

static void codec_to_pb(const e8c_config *c, uint32_t n_layers, e8kv_fingerprint_pb *o) {
  E8kv__V1__CodecConfig *p = &o->codec;
  e8kv__v1__codec_config__init(p);
  snprintf(o->preset, sizeof o->preset, "%s", c->preset);
  p->preset = o->preset;
  int kb, vb;
  if (sscanf(c->preset, "K%dV%d", &kb, &vb) == 2) {
    p->key_bits = (float)kb;
    p->value_bits = (float)vb;
  }
  p->key_step = c->k_step; /* explicit steps win over the preset's: exact either way */
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
  p->entropy = (E8kv__V1__Entropy)c->entropy;
  p->format_version = fp_format_version(c);
}

void e8kv_fingerprint_to_pb(const e8c_fingerprint *fp, e8kv_fingerprint_pb *o) {
  e8kv__v1__model_fingerprint__init(&o->m);
  snprintf(o->model_id, sizeof o->model_id, "%s", fp->model_id);
  o->m.model_id = o->model_id;
  o->m.n_layers = fp->n_layers;
  o->m.n_kv_heads = fp->n_kv_heads;
  o->m.head_dim = fp->head_dim;
  o->m.source_dtype = (E8kv__V1__DType)fp->src_dtype; /* same numbering */
  rope_to_pb(&fp->rope, fp->head_dim, o);
  codec_to_pb(&fp->config, fp->n_layers, o);
  o->m.rope = &o->rope;
  o->m.codec = &o->codec;
}
