/*
 * test_e8c_math.c: the numeric pieces against independent checks: E8
 * nearest point against brute force, Hadamard orthonormality, RoPE
 * frequencies for every variant, sincos against libm, RoPE removal then
 * restore within fp32 rounding at positions near and past 4096, 8192,
 * 131072.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <string.h>

#include "codec/e8c_internal.h"
#include "tests/codec/e8c_testgen.h"

static int in_e8(const int16_t *p2)
{
    int par = p2[0] & 1, sum = 0;
    for (int i = 0; i < 8; i++) {
        if ((p2[i] & 1) != par) return 0;
        sum += p2[i];
    }
    return (sum % 4) == 0; /* sum of the point = sum/2 must be even */
}

static double dist2(const float *t, const int16_t *p2)
{
    double d = 0;
    for (int i = 0; i < 8; i++) { double e = t[i] - 0.5 * p2[i]; d += e * e; }
    return d;
}

/* All lattice points with doubled coordinates within +-2 of 2t. */
static double brute_best(const float *t)
{
    int lo[8];
    for (int i = 0; i < 8; i++) lo[i] = (int)floor(2.0 * t[i]) - 2;
    double best = 1e30;
    int16_t p[8];
    for (int idx = 0; idx < 390625; idx++) {
        int k = idx;
        for (int i = 0; i < 8; i++) { p[i] = (int16_t)(lo[i] + k % 5); k /= 5; }
        if (!in_e8(p)) continue;
        double d = dist2(t, p);
        if (d < best) best = d;
    }
    return best;
}

static void test_e8_nearest_brute_force(void **state)
{
    (void)state;
    e8t_rng r = {42};
    for (int n = 0; n < 40; n++) {
        float t[8];
        double sc = n < 10 ? 0.7 : n < 30 ? 2.5 : 40;
        for (int i = 0; i < 8; i++) t[i] = (float)(e8t_gauss(&r) * sc);
        if (n == 0) for (int i = 0; i < 8; i++) t[i] = 0.5f; /* ties */
        if (n == 1) for (int i = 0; i < 8; i++) t[i] = (float)(i % 2); /* odd sum */
        if (n == 2) for (int i = 0; i < 8; i++) t[i] = 0.25f;
        int16_t p[8];
        e8c_ref_e8_block(t, p);
        assert_true(in_e8(p));
        double ours = dist2(t, p), best = brute_best(t);
        assert_true(ours <= best + 1e-5 * (1 + best));
    }
    /* many more: lattice membership and the 8-neighbourhood check only */
    for (int n = 0; n < 20000; n++) {
        float t[8];
        for (int i = 0; i < 8; i++) t[i] = (float)(e8t_gauss(&r) * 3);
        int16_t p[8], q[8];
        e8c_ref_e8_block(t, p);
        assert_true(in_e8(p));
        double d = dist2(t, p);
        /* moving by any root of E8 (+-1 on two coords) never gets closer */
        for (int i = 0; i < 8; i++)
            for (int j = i + 1; j < 8; j++)
                for (int s = 0; s < 4; s++) {
                    memcpy(q, p, sizeof q);
                    q[i] += (s & 1) ? 2 : -2;
                    q[j] += (s & 2) ? 2 : -2;
                    assert_true(dist2(t, q) >= d - 1e-5 * (1 + d));
                }
    }
}

static void test_hadamard_orthonormal(void **state)
{
    (void)state;
    const uint32_t dims[] = {8, 16, 24, 64, 72, 80, 96, 112, 128, 192, 256, 512};
    e8t_rng r = {7};
    for (size_t k = 0; k < sizeof dims / sizeof dims[0]; k++) {
        uint32_t n = dims[k];
        e8c_hplan hp;
        e8c_hplan_init(&hp, n, 1234);
        float x[512], y[512], tmp[512];
        double nx = 0, ny = 0;
        for (uint32_t j = 0; j < n; j++) { x[j] = (float)e8t_gauss(&r); nx += (double)x[j] * x[j]; }
        memcpy(y, x, sizeof(float) * n);
        e8c_hadamard_fwd(&hp, y, tmp);
        for (uint32_t j = 0; j < n; j++) ny += (double)y[j] * y[j];
        assert_true(fabs(nx - ny) < 1e-5 * nx);
        /* a unit vector in the last block reaches every output block */
        float e[512] = {0};
        e[n - 1] = 1;
        e8c_hadamard_fwd(&hp, e, tmp);
        for (uint32_t b = 0; b < hp.nblocks; b++) {
            double en = 0;
            for (uint32_t j = 0; j < hp.bsize[b]; j++) en += (double)e[hp.boff[b] + j] * e[hp.boff[b] + j];
            assert_true(en > 0.01 * hp.bsize[b] / n);
        }
        e8c_hadamard_inv(&hp, y, tmp);
        for (uint32_t j = 0; j < n; j++) assert_true(fabsf(y[j] - x[j]) < 1e-5f * (1 + fabsf(x[j])));
    }
}

static void test_sincos_vs_libm(void **state)
{
    (void)state;
    e8t_rng r = {9};
    for (int i = 0; i < 200000; i++) {
        float a = (float)((e8t_unif(&r) - 0.5) * (i < 100000 ? 20 : 4e5));
        float s, c;
        e8c_sincos(a, &s, &c);
        assert_true(fabs(s - sin((double)a)) < 2e-7);
        assert_true(fabs(c - cos((double)a)) < 2e-7);
    }
}

static void test_rope_inv_freq(void **state)
{
    (void)state;
    e8c_fingerprint fp;
    float inv[256], ref[256];
    e8t_fingerprint(&fp, 2, 1, 64, E8C_ROPE_DEFAULT, 0);
    assert_int_equal(e8c_rope_inv_freq(&fp, 100, inv), 0);
    for (int i = 0; i < 32; i++) assert_true(fabsf(inv[i] - (float)pow(100000.0, -i / 32.0)) <= 1e-7f * inv[i]);
    memcpy(ref, inv, sizeof ref);
    e8t_fingerprint(&fp, 2, 1, 64, E8C_ROPE_LINEAR, 0);
    e8c_rope_inv_freq(&fp, 100, inv);
    for (int i = 0; i < 32; i++) assert_true(fabsf(inv[i] * 4 - ref[i]) <= 1e-6f * ref[i]);
    e8t_fingerprint(&fp, 2, 1, 64, E8C_ROPE_DYNAMIC, 0);
    e8c_rope_inv_freq(&fp, 4096, inv); /* L <= original: default */
    assert_memory_equal(inv, ref, 32 * sizeof(float));
    e8c_rope_inv_freq(&fp, 8192, inv); /* NTK: larger base, lower frequencies */
    assert_true(inv[0] == ref[0] && inv[31] < ref[31]);
    e8t_fingerprint(&fp, 2, 1, 64, E8C_ROPE_YARN, 0);
    e8c_rope_inv_freq(&fp, 0, inv); /* high freqs extrapolated, low interpolated */
    assert_true(inv[0] == ref[0] && fabsf(inv[31] * 4 - ref[31]) <= 1e-6f * ref[31]);
    e8t_fingerprint(&fp, 2, 1, 64, E8C_ROPE_LLAMA3, 0);
    float def[256];
    e8c_fingerprint d = fp;
    memset(&d.rope, 0, sizeof d.rope);
    d.rope.type = E8C_ROPE_DEFAULT; d.rope.layout = 1; d.rope.rotary_dim = 64; d.rope.theta = 500000;
    e8c_rope_inv_freq(&d, 0, def);
    e8c_rope_inv_freq(&fp, 0, inv);
    assert_true(inv[0] == def[0] && fabsf(inv[31] * 8 - def[31]) <= 1e-6f * def[31]);
    e8t_fingerprint(&fp, 2, 1, 64, E8C_ROPE_LONGROPE, 0);
    float lo[256];
    e8c_rope_inv_freq(&fp, 4096, lo);
    e8c_rope_inv_freq(&fp, 4097, inv);
    for (int i = 0; i < 32; i++) {
        assert_true(fabsf(lo[i] * fp.rope.short_factor[i] - ref[i]) <= 2e-6f * ref[i]);
        assert_true(fabsf(inv[i] * fp.rope.long_factor[i] - ref[i]) <= 2e-6f * ref[i]);
    }
}

static void test_rope_roundtrip_all_variants(void **state)
{
    (void)state;
    const uint32_t types[] = {E8C_ROPE_DEFAULT, E8C_ROPE_LINEAR, E8C_ROPE_DYNAMIC, E8C_ROPE_YARN,
                              E8C_ROPE_LLAMA3, E8C_ROPE_LONGROPE};
    const uint32_t pos[] = {0, 1, 4095, 4096, 4097, 8191, 8192, 131071, 131072, 131073, 1000000};
    e8t_rng r = {11};
    for (size_t ti = 0; ti < 6; ti++)
        for (int il = 0; il < 2; il++)
            for (int partial = 0; partial < 2; partial++) {
                e8c_fingerprint fp;
                e8t_fingerprint(&fp, 2, 1, 128, types[ti], il);
                if (partial) {
                    fp.rope.rotary_dim = 32;
                    if (types[ti] == E8C_ROPE_LONGROPE) {
                        fp.rope.n_longrope = 16;
                        for (int i = 16; i < 64; i++) fp.rope.short_factor[i] = fp.rope.long_factor[i] = 0;
                    }
                }
                assert_int_equal(e8c_fingerprint_validate(&fp, NULL, 0), 0);
                for (size_t pi = 0; pi < sizeof pos / sizeof pos[0]; pi++) {
                    float c[64], s[64], x[128], y[128];
                    assert_int_equal(e8c_rope_cos_sin(&fp, pos[pi] + 1, pos[pi], 1, c, s), 0);
                    for (int j = 0; j < 128; j++) x[j] = (float)e8t_gauss(&r) * 10;
                    memcpy(y, x, sizeof x);
                    e8c_rope_remove(&fp.rope, y, c, s);
                    if (partial) for (int j = 32; j < 128; j++) assert_true(y[j] == x[j]);
                    e8c_rope_apply(&fp.rope, y, c, s);
                    for (int j = 0; j < 128; j++) assert_true(fabsf(y[j] - x[j]) <= 4e-6f * 30);
                }
            }
}

/* The fast E8 search (AVX2: the coset decided from one rounding with a
 * proven bound, the exact pair of candidates only on near-ties) against
 * the reference block by block, on data built to sit at its decision
 * points: coordinates at quarter- and half-integers (where D8 and D8+1/2
 * are equally far: |delta| ~ 0) and at integers (the guard), each moved
 * by a few ulp, plus Gaussian vectors; scales with every 3-bit mantissa.
 * Both the fast path and the fallback must be taken (counted). */
static void test_e8_fast_avx2_equals_ref(void **state)
{
    (void)state;
    if (!e8c_cpu_has_avx2()) { /* the baseline build runs the reference per block */
        fail_msg("this test needs an AVX2 CPU (the fast E8 filter is AVX2 code)");
    }
    e8t_rng r = {2026};
    float y[128], t[8];
    int16_t p[128], q[8];
    uint64_t slow = 0, groups = 0, diff = 0;
    for (int k = 0; k < 100000; k++) {
        uint32_t n = k & 1 ? 128 : 64;
        /* sf: a bf16 scale with a 3-bit mantissa, 2^-8 .. 2^8 */
        uint32_t e = 119 + (uint32_t)(e8t_u64(&r) % 17), m = (uint32_t)(e8t_u64(&r) % 8);
        uint32_t sbits = e << 23 | m << 20;
        float sf;
        memcpy(&sf, &sbits, 4);
        int kind = k % 5;
        for (uint32_t j = 0; j < n; j++) {
            double v;
            if (kind == 3) v = e8t_gauss(&r) * 2.5;
            else if (kind == 4) /* |d| = 1/4 + O(2^-20): |delta| near the rounding of the distances */
                v = (double)((int)(e8t_u64(&r) % 41) - 20) + ((j & 1) ? 0.25 : -0.25) +
                    ldexp((double)((int)(e8t_u64(&r) % 2001) - 1000), -30);
            else {
                double grid = kind == 0 ? 0.25 : kind == 1 ? 0.5 : 1.0;
                v = grid * (double)((int)(e8t_u64(&r) % 41) - 20);
                if (kind == 0 && (j & 1)) v = 0.25 + 0.5 * (double)((int)(e8t_u64(&r) % 21) - 10);
            }
            float tv = (float)v;
            uint32_t tb;
            memcpy(&tb, &tv, 4);
            if (tv != 0 && kind != 4 && e8t_u64(&r) % 3) tb += (uint32_t)(e8t_u64(&r) % 9) - 4; /* a few ulp */
            memcpy(&tv, &tb, 4);
            y[j] = tv * sf;
        }
        slow += e8c_e8_vec_avx2(y, n, sf, p);
        groups += n / 64;
        for (uint32_t b = 0; b < n; b += 8) {
            for (int i = 0; i < 8; i++) t[i] = y[b + i] / sf;
            e8c_ref_e8_block(t, q);
            diff += memcmp(q, p + b, sizeof q) != 0;
        }
    }
    assert_int_equal(diff, 0);
    assert_true(slow > 0 && slow < groups); /* both paths taken */
}

/* The AVX2 scale of four vectors (fp32 sums with a margin test, the f64
 * sums near a rounding midpoint of the 3-bit code) against the reference,
 * on vectors scaled so that rms * step sits at a midpoint, moved by up to
 * a few 2^-20 (inside and outside the margin), and on plain ones. */
static void test_scale4_avx2_equals_ref(void **state)
{
    (void)state;
    if (!e8c_cpu_has_avx2()) fail_msg("this test needs an AVX2 CPU (scale4 is AVX2 code)");
    e8t_rng r = {404};
    float y[4 * 128];
    uint64_t diff = 0;
    for (int k = 0; k < 40000; k++) {
        uint32_t n = k & 1 ? 128 : 64;
        float step = (k >> 1) % 3 == 0 ? 0.55f : (k >> 1) % 3 == 1 ? 1.2f : 0.25f;
        for (int b = 0; b < 4; b++) {
            double ss = 0;
            for (uint32_t j = 0; j < n; j++) {
                y[b * n + j] = (float)e8t_gauss(&r);
                ss += (double)y[b * n + j] * y[b * n + j];
            }
            /* target rms * step: a midpoint (odd sixteenths of the
             * mantissa) times (1 + delta), |delta| < 2^-14 */
            double mid = ldexp(1.0 + (double)(2 * (e8t_u64(&r) % 8) + 1) / 16.0, (int)(e8t_u64(&r) % 20) - 10);
            double delta = ldexp((double)((int)(e8t_u64(&r) % 2001) - 1000), -24);
            double c = mid * (1 + delta) / step / sqrt(ss / n);
            if (k % 5 == 4) c = 1; /* plain */
            for (uint32_t j = 0; j < n; j++) y[b * n + j] = (float)(y[b * n + j] * c);
        }
        uint16_t sc[4];
        e8c_scale4_avx2(y, n, step, sc);
        for (int b = 0; b < 4; b++) diff += sc[b] != e8c_ref_scale(y + b * n, n, step);
    }
    assert_int_equal(diff, 0);
}

/* The AVX2 layout of one head (e8c_pack_head: stored integers, the
 * decorrelation costs and mode, means, coordinate and half symbols,
 * escape flag) against FORMAT.md 5.2 written out here, for head_dims with
 * and without the 16-bit path (n % 16), token counts 1..300, points of
 * every size (escapes), rows that repeat (delta wins), columns with mean 0
 * (modes 1 and 3 tie: the lower wins) and forced modes. */
static uint32_t zzs(int64_t v) { return v >= 0 ? (uint32_t)(2 * v) : (uint32_t)(-2 * v - 1); }

static void test_pack_head_avx2_equals_spec(void **state)
{
    (void)state;
    if (!e8c_cpu_has_avx2()) fail_msg("this test needs an AVX2 CPU (pack_head is AVX2 code)");
    static const uint32_t dims[] = {16, 48, 64, 128, 8, 24, 80};
    e8t_rng r = {515};
    enum { QM = 300, NM = 128 };
    static int16_t p2[QM * NM];
    static int32_t S[QM * NM], ref[QM * NM], Mv[NM];
    static uint8_t cs[QM * NM], hs[QM * NM / 8 + 64];
    int tiesdone = 0;
    for (int k = 0; k < 700; k++) {
        uint32_t n = dims[k % 7], Q = 1 + (uint32_t)(e8t_u64(&r) % QM), forced = (uint32_t)(k % 9 < 6 ? 0 : k % 9 - 5);
        int kind = (k / 7) % 4;
        double sc = kind == 3 ? 300.0 : 2.0;
        for (uint32_t t = 0; t < Q; t++)
            for (uint32_t b = 0; b < n; b += 8) {
                float tv[8];
                for (int i = 0; i < 8; i++) {
                    double g = e8t_gauss(&r) * sc;
                    if (kind == 1 && t > 0) g = 0.5 * p2[(t - 1) * n + b + i] + 0.3 * e8t_gauss(&r); /* rows repeat */
                    tv[i] = (float)g;
                }
                e8c_ref_e8_block(tv, p2 + t * n + b);
                if (kind == 2 && (t & 1)) /* the negated previous row: column means 0 */
                    for (int i = 0; i < 8; i++) p2[t * n + b + i] = (int16_t)-p2[(t - 1) * n + b + i];
            }
        /* FORMAT.md 5.2 */
        for (size_t e = 0; e < (size_t)Q * n; e += 8) {
            int32_t c = p2[e] & 1;
            for (int i = 0; i < 8; i++) ref[e + i] = (p2[e + i] - c) >> (i == 7 ? 2 : 1);
        }
        int64_t M[NM];
        uint64_t cost[4] = {0, 0, 0, 0};
        for (uint32_t j = 0; j < n; j++) {
            int64_t col = 0;
            for (uint32_t t = 0; t < Q; t++) col += ref[t * n + j];
            int64_t num = col + Q / 2;
            M[j] = num >= 0 ? num / Q : -((-num + Q - 1) / Q);
            for (uint32_t t = 0; t < Q; t++) {
                int64_t v = ref[t * n + j];
                cost[1] += zzs(v);
                cost[2] += zzs(t ? v - ref[(t - 1) * n + j] : v);
                cost[3] += zzs(v - M[j]);
            }
        }
        uint32_t mode = forced;
        if (!forced) {
            mode = 1;
            if (cost[2] < cost[mode]) mode = 2;
            if (cost[3] < cost[mode]) mode = 3;
        }
        tiesdone |= !forced && cost[1] == cost[3] && cost[2] > cost[1];
        int bigz = 0;
        for (size_t i = (size_t)Q * n; i-- > 0;) {
            uint32_t t = (uint32_t)(i / n), j = (uint32_t)(i % n);
            int64_t v = ref[i];
            if (mode == 2 && t) v -= ref[i - n];
            else if (mode == 3) v -= M[j];
            ref[i] = (int32_t)v;
            bigz |= zzs(v) >= 255;
        }
        int esc = -1;
        uint32_t got = e8c_pack_head_avx2(p2, Q, n, forced, S, Mv, cs, hs, &esc);
        assert_int_equal(got, mode);
        assert_int_equal(esc, bigz);
        for (uint32_t j = 0; j < n; j++) assert_int_equal(Mv[j], M[j]);
        if (esc) {
            assert_memory_equal(S, ref, 4 * (size_t)Q * n);
            continue;
        }
        for (size_t e = 0, nc = 0, nh = 0; e < (size_t)Q * n; e += 8) {
            for (int i = 0; i < 7; i++) assert_int_equal(cs[nc++], zzs(ref[e + i]));
            assert_int_equal(hs[nh++], zzs(ref[e + 7]));
        }
    }
    assert_true(tiesdone); /* modes 1 and 3 tied at least once */
}

/* The AVX2 points-from-symbols of one head (e8c_head_points; 16-bit lanes
 * where head_dim % 16 == 0) against FORMAT.md 5.2's inverse written out
 * here: same points, and the same verdict on 255 symbols and on points
 * that leave int16 (drifting deltas, means at the limits, half
 * coordinates near +-8192). */
static void test_head_points_avx2_equals_spec(void **state)
{
    (void)state;
    if (!e8c_cpu_has_avx2()) fail_msg("this test needs an AVX2 CPU (head_points is AVX2 code)");
    static const uint32_t dims[] = {16, 48, 64, 128, 8, 24, 80};
    e8t_rng r = {616};
    enum { QM = 200, NM = 128 };
    static uint8_t cs[QM * NM], hs[QM * NM / 8 + 16], cos[QM * NM / 64 + 16];
    static int16_t got[QM * NM], want[QM * NM];
    static int32_t prev[NM];
    int32_t M[NM];
    int nbad = 0, ngood = 0;
    for (int k = 0; k < 12000; k++) {
        uint32_t n = dims[k % 7], Q = 1 + (uint32_t)(e8t_u64(&r) % QM);
        uint8_t mode = (uint8_t)(1 + (k / 7) % 3);
        int kind = (k / 21) % 4; /* 0 small, 1 drift, 2 means at the limits, 3 rare 255 */
        size_t nb = (size_t)Q * n / 8;
        for (size_t i = 0; i < nb * 7 + 16; i++) cs[i] = (uint8_t)(e8t_u64(&r) % (kind == 1 ? 255 : 9));
        for (size_t i = 0; i < nb + 2; i++) hs[i] = (uint8_t)(e8t_u64(&r) % (kind == 1 ? 255 : 9));
        if (kind == 3) { cs[e8t_u64(&r) % (nb * 7)] = 255; }
        if (kind == 1 && k % 2) /* one direction: deltas drift out of range */
            for (size_t i = 0; i < nb * 7; i++) cs[i] &= 0xFE;
        for (size_t i = 0; i < nb / 8 + 2; i++) cos[i] = (uint8_t)e8t_u64(&r);
        uint32_t jl = (uint32_t)(e8t_u64(&r) % n); /* kind 2: one column's mean at a limit */
        if (k % 2) jl |= 7; /* often a half column */
        for (uint32_t j = 0; j < n; j++) {
            int32_t lim = j % 8 == 7 ? 8192 : 16384;
            /* symbols < 9 give R in [-4, 4]: these means put the column's
             * extreme exactly at the limit or one past it */
            static const int32_t edge[4] = {3, 4, -4, -5};
            int32_t e = edge[e8t_u64(&r) % 4];
            M[j] = kind == 2 && j == jl ? (e > 0 ? -lim + e : lim + e) : (int32_t)(e8t_u64(&r) % 41) - 20;
        }
        /* the spec: S from zigzag, the mode's undo, q_7 = 2 S_7 + parity, P = 2 q + c, |P| < 2^15 */
        int bad = 0;
        int64_t pv[NM] = {0};
        for (size_t b = 0; b < nb; b++) {
            uint32_t j0 = (uint32_t)(b * 8 % n);
            int64_t S[8], par = 0;
            for (int i = 0; i < 8; i++) {
                uint32_t z = i < 7 ? cs[7 * b + i] : hs[b];
                bad |= z == 255;
                int64_t v = (z & 1) ? -(int64_t)(z >> 1) - 1 : (int64_t)(z >> 1);
                if (mode == 2) { v += pv[j0 + i]; pv[j0 + i] = v; }
                else if (mode == 3) v += M[j0 + i];
                S[i] = v;
            }
            int c = (cos[b / 8] >> (b % 8)) & 1;
            for (int i = 0; i < 7; i++) par += S[i];
            for (int i = 0; i < 8; i++) {
                int64_t q = i < 7 ? S[i] : 2 * S[7] + (par & 1), P = 2 * q + c;
                bad |= P < -32768 || P > 32767;
                want[8 * b + i] = (int16_t)P;
            }
        }
        uint32_t v = e8c_head_points_avx2(cs, hs, Q, n, mode, M, cos, 0, prev, got);
        assert_int_equal(v != 0, bad);
        if (!bad) assert_memory_equal(got, want, 2 * nb * 8);
        nbad += bad;
        ngood += !bad;
    }
    assert_true(nbad > 100 && ngood > 100);
}

/* Removal undoes the model's rotation: rotate with the HF formula in f64
 * (split-half), remove with the codec, compare with the pre-RoPE key. */
static void test_rope_removal_matches_hf(void **state)
{
    (void)state;
    e8c_fingerprint fp;
    e8t_fingerprint(&fp, 2, 1, 64, E8C_ROPE_DEFAULT, 0);
    e8t_rng r = {5};
    float inv[32];
    e8c_rope_inv_freq(&fp, 0, inv);
    for (uint32_t p = 0; p < 300; p += 7) {
        float k[64], rot[64], c[32], s[32];
        for (int j = 0; j < 64; j++) k[j] = (float)e8t_gauss(&r);
        for (int i = 0; i < 32; i++) {
            double a = (double)(float)(inv[i] * (float)p);
            rot[i] = (float)(k[i] * cos(a) - k[i + 32] * sin(a));
            rot[i + 32] = (float)(k[i + 32] * cos(a) + k[i] * sin(a));
        }
        e8c_rope_cos_sin(&fp, 0, p, 1, c, s);
        e8c_rope_remove(&fp.rope, rot, c, s);
        for (int j = 0; j < 64; j++) assert_true(fabsf(rot[j] - k[j]) < 1e-5f);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_e8_nearest_brute_force),
        cmocka_unit_test(test_e8_fast_avx2_equals_ref),
        cmocka_unit_test(test_scale4_avx2_equals_ref),
        cmocka_unit_test(test_pack_head_avx2_equals_spec),
        cmocka_unit_test(test_head_points_avx2_equals_spec),
        cmocka_unit_test(test_hadamard_orthonormal),
        cmocka_unit_test(test_sincos_vs_libm),
        cmocka_unit_test(test_rope_inv_freq),
        cmocka_unit_test(test_rope_roundtrip_all_variants),
        cmocka_unit_test(test_rope_removal_matches_hf),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
