/*
 * e8c_fast.c: the fast CPU backend for baseline x86-64 (and any other CPU),
 * plus the run-time dispatch to the AVX2+F16C build of the same body
 * (e8c_fast_avx2.c).  The library therefore runs on every x86-64 and uses
 * AVX2 where the CPU has it.
 */
#include <pthread.h>

#define E8C_SFX base
#include "codec/e8c_fast_body.h"

int64_t e8c_fast_quantize_layer_avx2(e8c_ctx *ctx, const e8c_layer_geom *g,
                                     const e8c_tensor *src, e8c_qlayer *q);
int64_t e8c_fast_dequantize_layer_avx2(e8c_ctx *ctx, const e8c_qlayer *q,
                                       const e8c_decode_params *dp, const e8c_tensor *dst);

static float e8c_f16_tab[65536];
static pthread_once_t e8c_f16_once = PTHREAD_ONCE_INIT;
static void f16_tab_init(void)
{
    for (uint32_t i = 0; i < 65536; i++) e8c_f16_tab[i] = e8c_f16_to_f32((uint16_t)i);
}
const float *e8c_f16_table(void)
{
    pthread_once(&e8c_f16_once, f16_tab_init);
    return e8c_f16_tab;
}

int e8c_cpu_has_avx2(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") ? 1 : 0;
#else
    return 0;
#endif
}

int64_t e8c_fast_quantize_layer(e8c_ctx *ctx, const e8c_layer_geom *g,
                                const e8c_tensor *src, e8c_qlayer *q)
{
#if defined(__x86_64__)
    if (ctx->backend == 3) return e8c_fast_quantize_layer_avx2(ctx, g, src, q);
#endif
    return e8c_fast_quantize_layer_base(ctx, g, src, q);
}

int64_t e8c_fast_dequantize_layer(e8c_ctx *ctx, const e8c_qlayer *q,
                                  const e8c_decode_params *dp, const e8c_tensor *dst)
{
#if defined(__x86_64__)
    if (ctx->backend == 3) return e8c_fast_dequantize_layer_avx2(ctx, q, dp, dst);
#endif
    return e8c_fast_dequantize_layer_base(ctx, q, dp, dst);
}
