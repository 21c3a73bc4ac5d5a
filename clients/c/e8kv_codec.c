/*
 * e8kv_codec.c: libe8codec on the caller's side: encode-and-send of one chunk,
 * decode of a received chunk. (The fingerprint's wire form: proto/e8kv_fp.c.)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clients/c/e8kv_int.h"

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

/* Decodes the frames of an E8_LAYER_FRAMES chunk (K then V per layer of
 * [ch->layer_begin, ch->layer_end)) into dst, layers [layer_begin, layer_end). */
static e8kv_status kvc_frames_decode(e8c_ctx *ctx, const e8kv_chunk *ch, uint32_t lb,
                                     uint32_t le, void *dst, e8c_dtype dtype, size_t dst_size,
                                     e8kv_error *err) {
  if (lb < ch->layer_begin || le > ch->layer_end || lb >= le)
    return kvc_fail(err, E8KV_E_USAGE, "chunk %u holds layers [%u, %u), not [%u, %u)",
                    ch->index, ch->layer_begin, ch->layer_end, lb, le);
  const e8c_fingerprint *fp = e8c_ctx_fingerprint(ctx);
  size_t one = (size_t)fp->n_kv_heads * ch->n_tokens * fp->head_dim * e8c_dtype_size(dtype);
  if (dst_size < one * 2 * (le - lb))
    return kvc_fail(err, E8KV_E_USAGE, "dst holds %zu bytes, layers [%u, %u) need %zu",
                    dst_size, lb, le, one * 2 * (le - lb));
  size_t off = 0;
  for (uint32_t i = 0; i < 2 * (ch->layer_end - ch->layer_begin); i++) {
    e8c_frame_info fi;
    int64_t r = e8c_frame_info_get(ch->data + off, ch->bytes - off, &fi);
    uint32_t layer = ch->layer_begin + i / 2;
    if (e8c_is_error(r) || fi.layer != layer || fi.kind != i % 2)
      return kvc_fail(err, E8KV_E_CODEC, "chunk %u: frame %u: %s", ch->index, i,
                      e8c_is_error(r) ? e8c_error_string(r) : "not the layer/kind expected");
    if (layer >= lb && layer < le) {
      uint8_t *d = (uint8_t *)dst + one * (2 * (layer - lb) + i % 2);
      e8c_tensor t = e8c_tensor_contiguous(d, dtype, ch->n_tokens, fp->head_dim);
      r = e8c_frame_decode_into(ctx, ch->data + off, (size_t)fi.frame_size, NULL, &t,
                                ch->n_tokens);
      if (e8c_is_error(r)) {
        const char *m = e8c_ctx_last_error(ctx);
        return kvc_fail(err, E8KV_E_CODEC, "decode of chunk %u, layer %u: %s: %s", ch->index,
                        layer, e8c_error_name(r), m && *m ? m : e8c_error_string(r));
      }
    }
    off += (size_t)fi.frame_size;
  }
  return E8KV_OK;
}

e8kv_status e8kv_chunk_decode(e8c_ctx *ctx, const e8kv_chunk *ch, uint32_t layer_begin,
                              uint32_t layer_end, void *dst, e8c_dtype dtype, size_t dst_size,
                              e8kv_error *err) {
  if (!ctx || !ch || !dst) return kvc_fail(err, E8KV_E_USAGE, "e8kv_chunk_decode: NULL argument");
  if (ch->encoding == E8KV__V1__ENCODING__ENCODING_E8_LAYER_FRAMES)
    return kvc_frames_decode(ctx, ch, layer_begin, layer_end, dst, dtype, dst_size, err);
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
