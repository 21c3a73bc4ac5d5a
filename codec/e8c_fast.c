/*
 * e8c_fast.c: the fast CPU backend for baseline x86-64 (and any other CPU),
 * plus the run-time dispatch to the AVX2+F16C build of the same body
 * (e8c_fast_avx2.c).  The library therefore runs on every x86-64 and uses
 * AVX2 where the CPU has it.
 */
#include <pthread.h>
#if defined(__x86_64__)
#include <cpuid.h>
#endif

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

/* AVX2 and F16C by cpuid, and the OS saving YMM state (xgetbv). */
int e8c_cpu_has_avx2(void)
{
#if defined(__x86_64__)
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    int f16c = (c >> 29) & 1, osxsave = (c >> 27) & 1, avx = (c >> 28) & 1;
    if (!f16c || !osxsave || !avx) return 0;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & 6) != 6) return 0;
    if (__get_cpuid_max(0, NULL) < 7) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    return (b >> 5) & 1;
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
