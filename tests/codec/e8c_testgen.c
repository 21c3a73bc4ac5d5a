/*
 * e8c_testgen.c: see e8c_testgen.h.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tests/codec/e8c_testgen.h"

uint64_t e8t_u64(e8t_rng *r)
{
    r->s += 0x9E3779B97F4A7C15ull;
    uint64_t z = r->s;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

double e8t_unif(e8t_rng *r) { return (double)(e8t_u64(r) >> 11) * 0x1p-53; }

double e8t_gauss(e8t_rng *r)
{
    double u = e8t_unif(r), v = e8t_unif(r);
    return sqrt(-2 * log(u + 1e-300)) * cos(6.283185307179586 * v);
}

void e8t_fingerprint(e8c_fingerprint *fp, uint32_t L, uint32_t H, uint32_t n, uint32_t type,
                     int interleaved)
{
    memset(fp, 0, sizeof *fp);
    strcpy(fp->model_id, "test/e8kv-model");
    fp->n_layers = L;
    fp->n_kv_heads = H;
    fp->head_dim = n;
    fp->src_dtype = E8C_DTYPE_F16;
    e8c_config_default(&fp->config);
    e8c_rope *r = &fp->rope;
    r->type = type;
    if (type == E8C_ROPE_NONE) return;
    r->layout = interleaved ? E8C_ROPE_LAYOUT_INTERLEAVED : E8C_ROPE_LAYOUT_SPLIT_HALF;
    r->rotary_dim = n;
    r->theta = 100000;
    switch (type) {
    case E8C_ROPE_LINEAR: r->factor = 4; break;
    case E8C_ROPE_DYNAMIC: r->factor = 2; r->original_max_pos = 4096; break;
    case E8C_ROPE_YARN:
        r->factor = 4; r->original_max_pos = 4096; r->beta_fast = 32; r->beta_slow = 1;
        r->attention_factor = 0.1 * log(4.0) + 1;
        break;
    case E8C_ROPE_LLAMA3:
        r->theta = 500000; r->factor = 8; r->original_max_pos = 8192;
        r->low_freq_factor = 1; r->high_freq_factor = 4;
        break;
    case E8C_ROPE_LONGROPE:
        r->original_max_pos = 4096; r->attention_factor = 1.19;
        r->n_longrope = n / 2;
        for (uint32_t i = 0; i < n / 2; i++) {
            r->short_factor[i] = 1.0f + 0.05f * (float)i;
            r->long_factor[i] = 1.5f + 0.5f * (float)i;
        }
        break;
    default: break;
    }
}

void e8t_kv(e8t_rng *r, float *x, uint32_t H, uint32_t T, uint32_t n)
{
    for (uint32_t h = 0; h < H; h++) {
        float bias[E8C_MAX_HEAD_DIM];
        for (uint32_t j = 0; j < n; j++) bias[j] = (float)(e8t_gauss(r) * (j % 7 == 0 ? 3 : 0.5));
        for (uint32_t t = 0; t < T; t++)
            for (uint32_t j = 0; j < n; j++) {
                float v = (float)e8t_gauss(r) + bias[j];
                if (e8t_u64(r) % 997 == 0) v *= 20;
                x[((size_t)h * T + t) * n + j] = v;
            }
    }
}

static uint16_t to_f16(float f)
{
    /* via the codec's own public decode path would be circular; plain RNE */
    uint32_t u;
    memcpy(&u, &f, 4);
    uint32_t sign = (u >> 16) & 0x8000, a = u & 0x7fffffffu;
    if (a >= 0x477ff000u) return (uint16_t)(sign | 0x7bff); /* saturate */
    if (a < 0x38800000u) {
        float v;
        memcpy(&v, &a, 4);
        return (uint16_t)(sign | (uint32_t)rintf(v * 0x1p24f));
    }
    uint32_t r = a + 0xfffu + ((a >> 13) & 1u);
    return (uint16_t)(sign | ((r - 0x38000000u) >> 13));
}

void e8t_convert(const float *src, void *dst, size_t n, e8c_dtype dtype)
{
    for (size_t i = 0; i < n; i++) {
        if (dtype == E8C_DTYPE_F32) { ((float *)dst)[i] = src[i]; continue; }
        if (dtype == E8C_DTYPE_F16) { ((uint16_t *)dst)[i] = to_f16(src[i]); continue; }
        uint32_t u;
        memcpy(&u, &src[i], 4);
        u += 0x7fffu + ((u >> 16) & 1u);
        ((uint16_t *)dst)[i] = (uint16_t)(u >> 16);
    }
}

int64_t e8t_random_frame(e8c_ctx *ctx, e8t_rng *r, uint32_t max_tokens, uint8_t *dst, size_t cap)
{
    const e8c_fingerprint *fp = e8c_ctx_fingerprint(ctx);
    uint32_t T = 1 + (uint32_t)(e8t_u64(r) % max_tokens);
    size_t ne = (size_t)fp->n_kv_heads * T * fp->head_dim;
    float *x = malloc(sizeof(float) * ne);
    void *buf = malloc(4 * ne);
    if (!x || !buf) { free(x); free(buf); return E8C_ERR_NOMEM; }
    e8t_kv(r, x, fp->n_kv_heads, T, fp->head_dim);
    e8c_dtype dt = (e8c_dtype)(1 + e8t_u64(r) % 3);
    e8t_convert(x, buf, ne, dt);
    e8c_frame_params p = {(uint32_t)(e8t_u64(r) % fp->n_layers), (uint32_t)(e8t_u64(r) % 2), T,
                          (uint32_t)(e8t_u64(r) % 5000), 0, 0};
    e8c_tensor t = e8c_tensor_contiguous(buf, dt, T, fp->head_dim);
    int64_t rc = e8c_frame_encode(ctx, &p, &t, dst, cap);
    free(x);
    free(buf);
    return rc;
}
