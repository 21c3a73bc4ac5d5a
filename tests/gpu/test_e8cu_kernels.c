/*
 * test_e8cu_kernels.c: the quantize kernel's building blocks on the GPU against the CPU
 * reference, on inputs whole frames rarely reach (needs an NVIDIA GPU; run by `make test-gpu`
 * / codec/cuda/gpu-run.sh test).
 *
 * - The division by a vector's scale (e8cu_div_by: one reciprocal per vector, an fma-corrected
 *   quotient where that is proven exact, IEEE division elsewhere) equals IEEE x / sf bit for
 *   bit: every fp32 x in [1, 2) against the 8 significands a stored scale can have (the case
 *   that proves every normal exponent, see e8cu_device.cuh), and hashed 32-bit patterns of x
 *   (NaN, inf, subnormals) against all 4096 scale codes (zero, subnormal, negative, inf, NaN).
 * - The branch-free E8 search (e8cu_e8_block) and the fast path with its exact fallback
 *   (e8cu_e8_point, e8cu_fastq.cuh) equal e8c_ref_e8_block on blocks full of ties (multiples of
 *   1/8 and 1/4, half-integers: equal |residuals|, equal distances of the two cosets), on
 *   Gaussian blocks of several sizes and on the fast path's edge cases (ties plus jitter around
 *   its threshold, tiny and small values, ±0.5 and integers ± ulps); both paths must run.
 * - The scale code from an fp32 sum of squares (e8cu_scale_fast) with its exact f64 fallback
 *   equals e8c_ref_scale, also on vectors whose rms·step sits on the code's rounding midpoints.
 * - The decoder's fp16 and bf16 stores (one packed conversion per pair, the per-element rule
 *   redone where a half came out inf or NaN) equal the per-element conversions (fp16:
 *   saturating) for every fp32 bit pattern.
 * GPU_QUICK=1 runs a reduced set (for compute-sanitizer).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include <cmocka.h>

#include "codec/e8c_internal.h"
#include "tests/gpu/e8cu_testmain.h"
#include "tests/codec/e8c_testgen.h"

int e8cu_test_div(const float *h_scales, uint32_t n_scales, uint32_t per_scale, int mode,
                  unsigned long long *bad, unsigned long long *first);
int e8cu_test_e8(const float *h_t, int16_t *h_p2, size_t n_blocks, int mode, unsigned long long *n_fast);
int e8cu_test_scale(const float *h_y, uint32_t n, size_t n_vec, float step, uint16_t *h_sc,
                    unsigned long long *n_fast);
int e8cu_test_f16_store(uint64_t n_groups, int bf16, unsigned long long *bad, unsigned long long *first);

static int quick;

static float f32_bits(uint32_t u)
{
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static void check_div(const float *s, uint32_t ns, uint32_t per, int mode, const char *what)
{
    unsigned long long bad = 0, first = 0;
    int e = e8cu_test_div(s, ns, per, mode, &bad, &first);
    if (e) fail_msg("%s: CUDA error %d", what, e);
    if (bad)
        fail_msg("%s: %llu quotients differ from IEEE x / sf, first: sf bits 0x%08llx, x bits 0x%08llx", what, bad,
                 first >> 32, first & 0xffffffffull);
    printf("division, %s: %llu quotients identical\n", what, (unsigned long long)ns * per);
}

static void test_div_exhaustive(void **state)
{
    (void)state;
    float m[8];
    for (int k = 0; k < 8; k++) m[k] = 1.0f + 0.125f * (float)k; /* the significands of a stored scale */
    check_div(m, 8, quick ? (1u << 16) : (1u << 23), 0, "every x in [1, 2) by the 8 scale significands");
}

static void test_div_all_scales(void **state)
{
    (void)state;
    float *s = malloc(4096 * sizeof(float));
    for (uint32_t k = 0; k < 4096; k++) s[k] = f32_bits(k << 20); /* bf16 codes with 3 mantissa bits */
    check_div(s, 4096, quick ? 256 : (1u << 16), 1, "hashed x by all 4096 scale codes");
    free(s);
}

/* a block of kind k: multiples of 1/8, 1/4 or 1/2 in a small range (ties of |residuals| and of
 * the coset distances), Gaussian of several sizes, or (kinds 7-13, for the fast path's filter)
 * small and tiny Gaussians (t - 0.5 inexact, |t| < 2^-24), ties plus jitter below and around
 * the filter's threshold 2^-16, ties mixed with Gaussians, values at ±0.5 and integers ± a few
 * ulps, negative values around -2^-25, powers of two and integers up to 2^10 ± ulps (t - 0.5
 * rounds there) */
#define E8_KINDS 15
static void make_block(e8t_rng *r, float t[8], int kind)
{
    static const float scale[4] = {0.3f, 2.0f, 40.0f, 1500.0f};
    for (int i = 0; i < 8; i++) {
        int64_t q = (int64_t)(e8t_u64(r) % 129) - 64;
        int64_t k = (int64_t)(e8t_u64(r) % 17) - 8;
        switch (kind) {
        case 0: t[i] = (float)q / 8.0f; break;
        case 1: t[i] = (float)q / 4.0f; break;
        case 2: t[i] = (float)q / 2.0f; break;
        case 7: t[i] = (float)(e8t_gauss(r) * 0.05); break;
        case 8: t[i] = (float)(e8t_gauss(r) * 1e-6); break;
        case 9: t[i] = (float)q / 4.0f + (float)k * 0x1p-22f; break;
        case 10: t[i] = (float)q / 4.0f + (float)k * ((e8t_u64(r) & 1) ? 0x1p-17f : 0x1p-14f); break;
        case 11: t[i] = (i & 1) ? (float)q / 8.0f : (float)(e8t_gauss(r) * 0.3); break;
        case 12: t[i] = ((e8t_u64(r) & 1) ? 0.5f * (float)(q % 5) : (float)(q % 7)) + (float)k * 0x1p-24f; break;
        case 13: t[i] = (e8t_u64(r) & 1) ? -(float)(k + 9) * 0x1p-26f : (float)(e8t_gauss(r) * 0.7); break;
        case 14: {
            int ex = (int)(e8t_u64(r) % 11);
            float v = (e8t_u64(r) & 1) ? ldexpf(1.0f - (float)(e8t_u64(r) % 4) * 0x1p-24f, ex)
                                       : ldexpf(1.0f, ex) + (float)k * ldexpf(1.0f, ex - 23);
            t[i] = (e8t_u64(r) & 1) ? -v : v;
            if (e8t_u64(r) % 4 == 0) t[i] = (float)(e8t_gauss(r) * 3.0);
            break;
        }
        default: t[i] = (float)(e8t_gauss(r) * scale[kind - 3]); break;
        }
    }
}

static void check_e8(int mode)
{
    const size_t n = quick ? 8192 : (size_t)1 << 22;
    float *t = malloc(n * 8 * sizeof(float));
    int16_t *g = malloc(n * 8 * sizeof(int16_t)), ref[8];
    e8t_rng r = {20261129};
    for (size_t b = 0; b < n; b++) make_block(&r, t + 8 * b, (int)(b % E8_KINDS));
    unsigned long long nfast = 0;
    int e = e8cu_test_e8(t, g, n, mode, &nfast);
    if (e) fail_msg("e8cu_test_e8: CUDA error %d", e);
    size_t bad = 0;
    for (size_t b = 0; b < n; b++) {
        e8c_ref_e8_block(t + 8 * b, ref);
        if (memcmp(ref, g + 8 * b, sizeof ref)) {
            if (bad < 3)
                fprintf(stderr, "block %zu (kind %d): t = %a %a %a %a %a %a %a %a: GPU %d %d %d %d %d %d %d %d, "
                        "CPU %d %d %d %d %d %d %d %d\n", b, (int)(b % E8_KINDS), t[8 * b], t[8 * b + 1], t[8 * b + 2],
                        t[8 * b + 3], t[8 * b + 4], t[8 * b + 5], t[8 * b + 6], t[8 * b + 7], g[8 * b], g[8 * b + 1],
                        g[8 * b + 2], g[8 * b + 3], g[8 * b + 4], g[8 * b + 5], g[8 * b + 6], g[8 * b + 7], ref[0],
                        ref[1], ref[2], ref[3], ref[4], ref[5], ref[6], ref[7]);
            bad++;
        }
    }
    printf("E8 search (%s): %zu blocks, %zu differ from the CPU reference", mode ? "fast path + exact fallback" : "exact rule",
           n, bad);
    if (mode) printf(", %llu decided by the fast path", nfast);
    printf("\n");
    free(t);
    free(g);
    assert_int_equal(bad, 0);
    /* both paths must have run: the Gaussian kinds pass the filter, the tie kinds do not */
    if (mode) assert_true(nfast > n / 4 && nfast < n - n / 8);
}

static void test_e8_ties_and_gauss(void **state)
{
    (void)state;
    check_e8(0);
}

static void test_e8_fast_filter(void **state)
{
    (void)state;
    check_e8(1);
}

/* The scale code's fast path (e8cu_scale_fast) and its exact fallback against e8c_ref_scale, on
 * Gaussian vectors of 128 elements scaled so that rms·step lands at random places, and on
 * vectors scaled onto the rounding midpoints of the 3-bit code ± a few ulps (where only the
 * exact sum decides), at the extremes of the fast range (2^±80 sums) and on zero vectors. */
static void test_scale_fast(void **state)
{
    (void)state;
    const uint32_t n = 128;
    const size_t nv = quick ? 4096 : 1u << 18;
    const float step = 0.55f;
    float *y = malloc(nv * n * sizeof(float));
    uint16_t *sc = malloc(nv * sizeof(uint16_t));
    e8t_rng r = {777};
    for (size_t v = 0; v < nv; v++) {
        float *x = y + v * n;
        double ss = 0;
        for (uint32_t j = 0; j < n; j++) {
            x[j] = (float)e8t_gauss(&r);
            ss += (double)x[j] * x[j];
        }
        double z = sqrt(ss / n) * step, want;
        int kind = (int)(v % 4);
        if (kind == 0) {
            want = ldexp(1.0 + (double)(e8t_u64(&r) % 1000) / 1000.0, (int)(e8t_u64(&r) % 40) - 20);
        } else if (kind == 3) {
            want = ldexp(1.0 + (double)(e8t_u64(&r) % 1000) / 1000.0, (e8t_u64(&r) & 1) ? 36 : -44);
        } else {
            /* a midpoint of the 3-bit code, (1 + (2m+1)/16)·2^e, times 1 + k·2^-21 */
            int m = (int)(e8t_u64(&r) % 8), k = (int)(e8t_u64(&r) % 65) - 32;
            want = ldexp(1.0 + (2.0 * m + 1.0) / 16.0, (int)(e8t_u64(&r) % 20) - 10) * (1.0 + k * 0x1p-21);
        }
        float g = (float)(want / z);
        for (uint32_t j = 0; j < n; j++) x[j] *= g;
        if (v % 97 == 0) memset(x, 0, n * sizeof(float));
    }
    unsigned long long nfast = 0;
    int e = e8cu_test_scale(y, n, nv, step, sc, &nfast);
    if (e) fail_msg("e8cu_test_scale: CUDA error %d", e);
    size_t bad = 0;
    for (size_t v = 0; v < nv; v++) {
        uint16_t ref = e8c_ref_scale(y + v * n, n, step);
        if (ref != sc[v]) {
            if (bad < 3) fprintf(stderr, "vector %zu: GPU scale 0x%04x, CPU 0x%04x\n", v, sc[v], ref);
            bad++;
        }
    }
    printf("scale code (fast path + exact fallback): %zu vectors, %zu differ from the CPU reference, %llu decided "
           "by the fast path\n", nv, bad, nfast);
    free(y);
    free(sc);
    assert_int_equal(bad, 0);
    assert_true(nfast > nv / 8 && nfast < nv - nv / 8);
}

static void check_store(int bf16)
{
    unsigned long long bad = 0, first = 0;
    uint64_t groups = quick ? (1u << 16) : (1ull << 29);
    const char *name = bf16 ? "bf16" : "fp16";
    int e = e8cu_test_f16_store(groups, bf16, &bad, &first);
    if (e) fail_msg("e8cu_test_f16_store(%s): CUDA error %d", name, e);
    if (bad) fail_msg("%s store: %llu of %llu values differ from the per-element rule, first: fp32 bits 0x%08llx", name,
                      bad, (unsigned long long)groups * 8, first);
    printf("%s store: %llu fp32 bit patterns identical to the per-element rule\n", name,
           (unsigned long long)groups * 8);
}

static void test_f16_store_all_floats(void **state)
{
    (void)state;
    check_store(0);
}

static void test_bf16_store_all_floats(void **state)
{
    (void)state;
    check_store(1);
}

int main(void)
{
    quick = e8cu_test_start("test_e8cu_kernels");
    if (quick < 0) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_div_exhaustive),
        cmocka_unit_test(test_div_all_scales),
        cmocka_unit_test(test_e8_ties_and_gauss),
        cmocka_unit_test(test_e8_fast_filter),
        cmocka_unit_test(test_scale_fast),
        cmocka_unit_test(test_f16_store_all_floats),
        cmocka_unit_test(test_bf16_store_all_floats),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
