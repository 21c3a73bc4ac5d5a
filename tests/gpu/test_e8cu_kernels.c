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
 * - The branch-free E8 search (e8cu_e8_block) equals e8c_ref_e8_block on blocks full of ties
 *   (multiples of 1/8 and 1/4, half-integers: equal |residuals|, equal distances of the two
 *   cosets) and on Gaussian blocks of several sizes.
 * - The decoder's fp16 store (one packed conversion per pair, the saturating rule redone where
 *   a half overflowed) equals the per-element saturating conversion for every fp32 bit pattern.
 * GPU_QUICK=1 runs a reduced set (for compute-sanitizer).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "codec/e8c_internal.h"
#include "tests/gpu/e8cu_testmain.h"
#include "tests/codec/e8c_testgen.h"

int e8cu_test_div(const float *h_scales, uint32_t n_scales, uint32_t per_scale, int mode,
                  unsigned long long *bad, unsigned long long *first);
int e8cu_test_e8(const float *h_t, int16_t *h_p2, size_t n_blocks);
int e8cu_test_f16_store(uint64_t n_groups, unsigned long long *bad, unsigned long long *first);

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

/* a block of kind k: multiples of 1/8 or 1/4 in a small range, half-integers, or Gaussian */
static void make_block(e8t_rng *r, float t[8], int kind)
{
    static const float scale[4] = {0.3f, 2.0f, 40.0f, 1500.0f};
    for (int i = 0; i < 8; i++) {
        int64_t q = (int64_t)(e8t_u64(r) % 129) - 64;
        switch (kind) {
        case 0: t[i] = (float)q / 8.0f; break;
        case 1: t[i] = (float)q / 4.0f; break;
        case 2: t[i] = (float)q / 2.0f; break;
        default: t[i] = (float)(e8t_gauss(r) * scale[kind - 3]); break;
        }
    }
}

static void test_e8_ties_and_gauss(void **state)
{
    (void)state;
    const size_t n = quick ? 4096 : (size_t)1 << 21;
    float *t = malloc(n * 8 * sizeof(float));
    int16_t *g = malloc(n * 8 * sizeof(int16_t)), ref[8];
    e8t_rng r = {20261129};
    for (size_t b = 0; b < n; b++) make_block(&r, t + 8 * b, (int)(b % 7));
    int e = e8cu_test_e8(t, g, n);
    if (e) fail_msg("e8cu_test_e8: CUDA error %d", e);
    size_t bad = 0;
    for (size_t b = 0; b < n; b++) {
        e8c_ref_e8_block(t + 8 * b, ref);
        if (memcmp(ref, g + 8 * b, sizeof ref)) {
            if (!bad)
                fprintf(stderr, "block %zu (kind %d): t = %g %g %g %g %g %g %g %g: GPU %d %d %d %d %d %d %d %d, "
                        "CPU %d %d %d %d %d %d %d %d\n", b, (int)(b % 7), t[8 * b], t[8 * b + 1], t[8 * b + 2],
                        t[8 * b + 3], t[8 * b + 4], t[8 * b + 5], t[8 * b + 6], t[8 * b + 7], g[8 * b], g[8 * b + 1],
                        g[8 * b + 2], g[8 * b + 3], g[8 * b + 4], g[8 * b + 5], g[8 * b + 6], g[8 * b + 7], ref[0],
                        ref[1], ref[2], ref[3], ref[4], ref[5], ref[6], ref[7]);
            bad++;
        }
    }
    printf("E8 search: %zu blocks, %zu differ from the CPU reference\n", n, bad);
    free(t);
    free(g);
    assert_int_equal(bad, 0);
}

static void test_f16_store_all_floats(void **state)
{
    (void)state;
    unsigned long long bad = 0, first = 0;
    uint64_t groups = quick ? (1u << 16) : (1ull << 29);
    int e = e8cu_test_f16_store(groups, &bad, &first);
    if (e) fail_msg("e8cu_test_f16_store: CUDA error %d", e);
    if (bad) fail_msg("fp16 store: %llu of %llu values differ from the saturating rule, first: fp32 bits 0x%08llx", bad,
                      (unsigned long long)groups * 8, first);
    printf("fp16 store: %llu fp32 bit patterns identical to the saturating rule\n", (unsigned long long)groups * 8);
}

int main(void)
{
    quick = e8cu_test_start("test_e8cu_kernels");
    if (quick < 0) return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_div_exhaustive),
        cmocka_unit_test(test_div_all_scales),
        cmocka_unit_test(test_e8_ties_and_gauss),
        cmocka_unit_test(test_f16_store_all_floats),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
