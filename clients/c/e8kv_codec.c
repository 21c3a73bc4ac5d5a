/*
 * e8kv_codec.c: libe8codec on the caller's side: codec fingerprint -> wire
 * message (every value explicit, so the daemon resolves it to the same
 * fingerprint id), encode-and-send of one chunk, decode of a received chunk.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clients/c/e8kv_int.h"

static void kvc_rope_to_pb(const e8c_rope *r, uint32_t head_dim, e8kv_fingerprint_pb *o) {
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
  p->layout = (E8kv__V1__RopeLayout)r->layout;   /* same numbering on both sides */
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

static void kvc_codec_to_pb(const e8c_config *c, uint32_t n_layers, e8kv_fingerprint_pb *o) {
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
  p->format_version = E8C_FORMAT_VERSION;
}

void e8kv_fingerprint_to_pb(const e8c_fingerprint *fp, e8kv_fingerprint_pb *o) {
  e8kv__v1__model_fingerprint__init(&o->m);
  snprintf(o->model_id, sizeof o->model_id, "%s", fp->model_id);
  o->m.model_id = o->model_id;
  o->m.n_layers = fp->n_layers;
  o->m.n_kv_heads = fp->n_kv_heads;
  o->m.head_dim = fp->head_dim;
  o->m.source_dtype = (E8kv__V1__DType)fp->src_dtype; /* same numbering */
  kvc_rope_to_pb(&fp->rope, fp->head_dim, o);
  kvc_codec_to_pb(&fp->config, fp->n_layers, o);
  o->m.rope = &o->rope;
  o->m.codec = &o->codec;
}

e8kv_status e8kv_put_chunk_encode(e8kv_put *p, e8c_ctx *ctx, const e8c_chunk_params *cp,
                                  const void *raw, e8c_dtype dtype, const uint32_t *token_ids,
                                  size_t n_token_ids, e8kv_error *err) {
  if (!p || !ctx || !cp || !raw || !token_ids || n_token_ids != cp->n_tokens)
    return kvc_fail(err, E8KV_E_USAGE, "e8kv_put_chunk_encode: NULL argument or %zu token ids "
                    "for a chunk of %u tokens", n_token_ids, cp ? cp->n_tokens : 0);
  int64_t cap = e8c_chunk_max_size(ctx, cp->n_tokens);
  if (e8c_is_error(cap))
    return kvc_fail(err, E8KV_E_CODEC, "e8c_chunk_max_size: %s", e8c_ctx_last_error(ctx));
  void *buf = malloc((size_t)cap);
  if (!buf) return kvc_fail(err, E8KV_E_NOMEM, "out of memory for a %lld-byte frame", (long long)cap);
  int64_t n = e8c_chunk_encode(ctx, cp, raw, dtype, buf, (size_t)cap);
  e8kv_status st;
  if (e8c_is_error(n)) {
    const char *m = e8c_ctx_last_error(ctx);
    st = kvc_fail(err, E8KV_E_CODEC, "encode: %s: %s", e8c_error_name(n), m && *m ? m : e8c_error_string(n));
  } else {
    st = e8kv_put_chunk(p, token_ids, n_token_ids, buf, (size_t)n, NULL, 0, err);
  }
  free(buf);
  return st;
}

e8kv_status e8kv_chunk_decode(e8c_ctx *ctx, const e8kv_chunk *ch, uint32_t layer_begin,
                              uint32_t layer_end, void *dst, e8c_dtype dtype, size_t dst_size,
                              e8kv_error *err) {
  if (!ctx || !ch || !dst) return kvc_fail(err, E8KV_E_USAGE, "e8kv_chunk_decode: NULL argument");
  if (ch->encoding != E8KV__V1__ENCODING__ENCODING_E8_FRAME)
    return kvc_fail(err, E8KV_E_USAGE, "chunk %u is not an E8 frame (ask GetChunks for "
                    "ENCODING_E8_FRAME)", ch->index);
  int64_t r = e8c_chunk_decode(ctx, ch->data, ch->bytes, layer_begin, layer_end, NULL, dst,
                               dtype, dst_size);
  if (e8c_is_error(r)) {
    const char *m = e8c_ctx_last_error(ctx);
    return kvc_fail(err, E8KV_E_CODEC, "decode of chunk %u: %s: %s", ch->index, e8c_error_name(r),
                    m && *m ? m : e8c_error_string(r));
  }
  return E8KV_OK;
}
