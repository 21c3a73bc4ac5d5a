/*
 * e8c_testgen.h: test helpers for the codec: fingerprints for every RoPE
 * variant, random KV tensors (Gaussian with per-channel bias and outliers,
 * like real keys), and a generator of valid random frames.
 */
#ifndef E8C_TESTGEN_H
#define E8C_TESTGEN_H

#include <stddef.h>
#include <stdint.h>

#include "codec/e8codec.h"

/* Deterministic PRNG (splitmix64). */
typedef struct e8t_rng { uint64_t s; } e8t_rng;
uint64_t e8t_u64(e8t_rng *r);
double e8t_unif(e8t_rng *r);   /* [0, 1) */
double e8t_gauss(e8t_rng *r);  /* N(0, 1) */

/* A valid fingerprint: SmolLM2-like geometry with the given head_dim and
 * RoPE type (E8C_ROPE_*), split-half unless interleaved, preset K3V2. */
void e8t_fingerprint(e8c_fingerprint *fp, uint32_t n_layers, uint32_t heads,
                     uint32_t head_dim, uint32_t rope_type, int interleaved);

/* Fills n floats of a [heads][tokens][head_dim] tensor with KV-like data:
 * N(0,1) plus a per-(head, dim) bias, and a few 20-sigma outliers. */
void e8t_kv(e8t_rng *r, float *x, uint32_t heads, uint32_t tokens, uint32_t head_dim);

/* Converts an fp32 array to dtype (RNE) into dst. */
void e8t_convert(const float *src, void *dst, size_t n, e8c_dtype dtype);

/* A valid random frame for ctx: random geometry within (max_tokens), random
 * data, random K/V and layer.  Returns its size or an error. */
int64_t e8t_random_frame(e8c_ctx *ctx, e8t_rng *r, uint32_t max_tokens, uint8_t *dst,
                         size_t cap);

#endif
