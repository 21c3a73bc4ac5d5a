/*
 * test_e8c_rans32.c: coding 3 (FORMAT.md 5.4) on its own.
 *  - the fast encoders (scalar, and AVX2 where the CPU has it) write the
 *    reference's bytes, for every lane count
 *    (N around 8192 and 65536), skewed, uniform and one-symbol streams,
 *    and tight output capacities;
 *  - both decoders return the symbols;
 *  - hostile streams: bad K, malformed tables, truncations, states below
 *    2^16, odd and leftover words, missing words, flipped bits; the fast
 *    decoder accepts exactly what the reference accepts.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "codec/e8c_internal.h"
#include "tests/codec/e8c_testgen.h"

#define MAXN 140000u
static uint8_t *g_sym, *g_a, *g_b, *g_out, *g_out2;
static uint16_t *g_words;
static uint32_t g_tab[E8C_R32_TAB / 4];
static uint8_t *g_c, *g_o3, *g_o4;

static int setup(void **state)
{
    (void)state;
    g_sym = malloc(MAXN); g_a = malloc(2 * MAXN + 1024); g_b = malloc(2 * MAXN + 1024);
    g_out = malloc(MAXN); g_out2 = malloc(MAXN); g_words = malloc(2 * MAXN);
    g_c = malloc(2 * MAXN + 1024); g_o3 = malloc(MAXN); g_o4 = malloc(MAXN);
    return !g_sym || !g_a || !g_b || !g_out || !g_out2 || !g_words || !g_c || !g_o3 || !g_o4;
}

static int teardown(void **state)
{
    (void)state;
    free(g_sym); free(g_a); free(g_b); free(g_out); free(g_out2); free(g_words);
    free(g_c); free(g_o3); free(g_o4);
    return 0;
}

/* kind 0: lattice-like (zigzag of a rounded Gaussian), 1: uniform bytes,
 * 2: one symbol, 3: two symbols, one rare */
static void fill(e8t_rng *r, uint8_t *s, size_t n, int kind, double sigma)
{
    for (size_t i = 0; i < n; i++) {
        if (kind == 1) { s[i] = (uint8_t)e8t_u64(r); continue; }
        if (kind == 2) { s[i] = 42; continue; }
        if (kind == 3) { s[i] = e8t_u64(r) % 5000 == 0 ? 7 : 3; continue; }
        long v = lround(e8t_gauss(r) * sigma);
        uint32_t z = v >= 0 ? (uint32_t)(2 * v) : (uint32_t)(-2 * v - 1);
        s[i] = (uint8_t)(z > 255 ? 255 : z);
    }
}

static size_t encode_both(size_t n, size_t cap)
{
    size_t a = e8c_rans32_encode_ref(g_sym, n, g_a, cap, g_words);
    size_t b = e8c_rans32_encode(g_sym, n, g_b, cap);
    assert_int_equal(a, b);
    if (a) assert_memory_equal(g_a, g_b, a);
    if (e8c_cpu_has_avx2()) { /* the AVX2 rounds (8 and 32 lanes): the same bytes */
        memset(g_b, 0xEE, a);
        size_t c = e8c_rans32_encode_ex(g_sym, n, g_b, cap, 1);
        assert_int_equal(a, c);
        if (a) assert_memory_equal(g_a, g_b, a);
    }
    return a;
}

static void test_ref_equals_fast(void **state)
{
    (void)state;
    static const size_t ns[] = {1, 2, 3, 31, 100, 4097, 8191, 8192, 8193, 8199, 20000,
                                65535, 65536, 65537, 65567, 100003, 131072};
    e8t_rng r = {11};
    for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++)
        for (int kind = 0; kind < 4; kind++) {
            size_t n = ns[k];
            fill(&r, g_sym, n, kind, 0.3 + (double)(k % 5));
            size_t len = encode_both(n, 2 * n + 1024);
            assert_true(len > 0);
            assert_int_equal(g_a[0], e8c_rans32_lanes(n));
            assert_int_equal(g_a[0], n >= 65536 ? 32 : n >= 8192 ? 8 : 1);
            memset(g_out, 0xAA, n);
            assert_int_equal(e8c_rans32_decode_ref(g_a, len, g_out, n), 0);
            assert_memory_equal(g_out, g_sym, n);
            memset(g_out2, 0x55, n);
            assert_int_equal(e8c_rans32_decode(g_a, len, g_out2, n, g_tab), 0);
            assert_memory_equal(g_out2, g_sym, n);
            if (e8c_cpu_has_avx2()) {
                memset(g_out2, 0x55, n);
                assert_int_equal(e8c_rans32_decode_ex(g_a, len, g_out2, n, g_tab, 1), 0);
                assert_memory_equal(g_out2, g_sym, n);
            }
            /* tight capacities: both fail or both write the same bytes */
            for (size_t cap = len - 3; cap <= len + 1; cap++) {
                size_t got = encode_both(n, cap);
                assert_int_equal(got, cap >= len ? len : 0);
            }
            if (kind == 2) assert_int_equal(len, 1 + 2 + 3 + 4 * (size_t)g_a[0]); /* no words */
        }
}

/* Both decoders agree on a (possibly hostile) stream: same verdict and, on
 * success, the same symbols.  Returns the verdict. */
static int agree(const uint8_t *s, size_t len, size_t n)
{
    int a = e8c_rans32_decode_ref(s, len, g_out, n);
    int b = e8c_rans32_decode(s, len, g_out2, n, g_tab);
    assert_int_equal(a, b);
    if (a == 0) assert_memory_equal(g_out, g_out2, n);
    if (e8c_cpu_has_avx2()) { /* the AVX2 decoder (32 lanes): same verdict and symbols */
        memset(g_out2, 0x5A, n);
        assert_int_equal(e8c_rans32_decode_ex(s, len, g_out2, n, g_tab, 1), a);
        if (a == 0) assert_memory_equal(g_out, g_out2, n);
    }
    return a;
}

static void test_hostile_streams(void **state)
{
    (void)state;
    e8t_rng r = {12};
    static const size_t ns[] = {300, 9000, 70000};
    for (size_t k = 0; k < 3; k++) {
        size_t n = ns[k];
        fill(&r, g_sym, n, 0, 1.5);
        size_t len = encode_both(n, 2 * n + 1024);
        uint32_t K = g_a[0];
        size_t nsym = e8c_get16(g_a + 1), tab_end = 3;
        for (size_t s = 0; s < nsym; s++) { tab_end++; while (g_a[tab_end] & 0x80) tab_end++; tab_end++; }
        size_t states = tab_end, words = states + 4 * (size_t)K;
        assert_true(len > words + 4);
        assert_int_equal(agree(g_a, len, n), 0);
        /* bad K */
        static const uint8_t badk[] = {0, 33, 255};
        for (int b = 0; b < 3; b++) {
            memcpy(g_b, g_a, len);
            g_b[0] = badk[b];
            assert_int_equal(agree(g_b, len, n), -1);
        }
        /* another valid K with these states and words does not decode */
        memcpy(g_b, g_a, len);
        g_b[0] = (uint8_t)(K == 1 ? 2 : K - 1);
        assert_int_equal(agree(g_b, len, n), -1);
        /* every truncation (dense near the header, sparse in the words) */
        for (size_t t = 0; t < len; t += t < words + 64 ? 1 : 1 + t / 50)
            assert_int_equal(agree(g_a, t, n), -1);
        /* leftover words, an odd byte */
        memcpy(g_b, g_a, len);
        g_b[len] = 0x12; g_b[len + 1] = 0x34;
        assert_int_equal(agree(g_b, len + 2, n), -1);
        assert_int_equal(agree(g_b, len + 1, n), -1);
        /* one symbol too many or too few */
        assert_int_equal(agree(g_a, len, n + 1), -1);
        assert_int_equal(agree(g_a, len, n - 1), -1);
        /* states below 2^16, or another state in range */
        for (uint32_t l = 0; l < K; l++) {
            memcpy(g_b, g_a, len);
            e8c_put32(g_b + states + 4 * l, 0xFFFF);
            assert_int_equal(agree(g_b, len, n), -1);
            e8c_put32(g_b + states + 4 * l, 0);
            assert_int_equal(agree(g_b, len, n), -1);
            memcpy(g_b, g_a, len);
            e8c_put32(g_b + states + 4 * l, e8c_get32(g_a + states + 4 * l) ^ 0x40000);
            agree(g_b, len, n);
        }
        /* malformed tables: zero symbols, a zero frequency, sum != 4096,
         * symbols not ascending */
        memcpy(g_b, g_a, len);
        e8c_put16(g_b + 1, 0);
        assert_int_equal(agree(g_b, len, n), -1);
        memcpy(g_b, g_a, len);
        e8c_put16(g_b + 1, 300);
        assert_int_equal(agree(g_b, len, n), -1);
        if (nsym >= 2) {
            memcpy(g_b, g_a, len);
            g_b[3] = g_a[3 + 1 + (g_a[4] & 0x80 ? 2 : 1)]; /* first symbol = second */
            assert_int_equal(agree(g_b, len, n), -1);
        }
        memcpy(g_b, g_a, len);
        g_b[4] ^= 1; /* first frequency +-1: sum != 4096 */
        assert_int_equal(agree(g_b, len, n), -1);
        /* flipped bits anywhere: the two decoders agree, nothing crashes */
        for (int it = 0; it < 400; it++) {
            memcpy(g_b, g_a, len);
            size_t at = it < 200 ? e8t_u64(&r) % (words + 8) : e8t_u64(&r) % len;
            g_b[at] ^= (uint8_t)(1u << (e8t_u64(&r) % 8));
            agree(g_b, len, n);
        }
        /* a dropped word in the middle */
        memcpy(g_b, g_a, len);
        size_t mid = words + 2 * ((len - words) / 4);
        memmove(g_b + mid, g_b + mid + 2, len - mid - 2);
        assert_int_equal(agree(g_b, len - 2, n), -1);
    }
    /* one-symbol table with a word or a state off 2^16 */
    memset(g_sym, 9, 100);
    size_t len = encode_both(100, 1000);
    assert_int_equal(agree(g_a, len, 100), 0);
    memcpy(g_b, g_a, len);
    g_b[len] = 1; g_b[len + 1] = 0;
    assert_int_equal(agree(g_b, len + 2, 100), -1);
    e8c_put32(g_b + len - 4, 0x10001);
    assert_int_equal(agree(g_b, len, 100), -1);
    assert_int_equal(agree(g_a, len, 0), -1);
}

/* e8c_rans32_decode2 (two streams side by side) gives the reference's
 * symbols and verdicts for both streams: every pair of lane counts, then
 * the 8-lane + 1-lane pair it interleaves with one stream damaged
 * (truncated, flipped bits, a word dropped, a symbol count off). */
static void test_decode2(void **state)
{
    (void)state;
    e8t_rng r = {13};
    /* pairs of (8 or 32 lanes, 1 lane), and of (1 lane, 1 lane): the scale
     * streams side by side, either one the longer */
    static const size_t na_[] = {43008, 9000, 70000, 3000, 43008, 20000, 70000, 2048, 500};
    static const size_t nb_[] = {6144, 6144, 5000, 700, 12000, 1, 9000, 2048, 4000};
    for (size_t k = 0; k < 9; k++) {
        size_t na = na_[k], nb = nb_[k];
        fill(&r, g_sym, na, 0, 1.5);
        size_t la = encode_both(na, 2 * na + 1024);
        fill(&r, g_sym, nb, k == 5 ? 2 : 0, 0.8);
        size_t lb = e8c_rans32_encode_ref(g_sym, nb, g_c, 2 * nb + 1024, g_words);
        assert_true(la > 0 && lb > 0);
        for (int it = 0; it < 60; it++) {
            memcpy(g_b, g_a, la);
            uint8_t *c2 = g_b + la + 16; /* B's copy */
            memcpy(c2, g_c, lb);
            size_t la2 = la, lb2 = lb, na2 = na, nb2 = nb;
            uint8_t *hit = it % 2 ? c2 : g_b;
            size_t hl = it % 2 ? lb : la;
            switch (it % 12 / 2) {
            case 0: break;                                            /* intact */
            case 1: hit[e8t_u64(&r) % hl] ^= (uint8_t)(1u << (e8t_u64(&r) % 8)); break;
            case 2: if (it % 2) lb2 -= 1 + e8t_u64(&r) % lb; else la2 -= 1 + e8t_u64(&r) % la; break;
            case 3: if (it % 2) nb2++; else na2--; break;
            case 4: if (hl > 200) memmove(hit + hl / 2, hit + hl / 2 + 2, hl / 2 - 2);
                    if (it % 2) lb2 -= hl > 200 ? 2 : 0; else la2 -= hl > 200 ? 2 : 0; break;
            default: hit[hl - 1 - e8t_u64(&r) % 8] ^= 0x80; break;
            }
            int ra = e8c_rans32_decode_ref(g_b, la2, g_out, na2);
            int rb = e8c_rans32_decode_ref(c2, lb2, g_o3, nb2);
            for (int simd = 0; simd <= e8c_cpu_has_avx2(); simd++) {
                int both = e8c_rans32_decode2(g_b, la2, g_out2, na2, c2, lb2, g_o4, nb2, g_tab, simd);
                assert_int_equal(both, ra | rb);
                if (both == 0) {
                    assert_memory_equal(g_out, g_out2, na2);
                    assert_memory_equal(g_o3, g_o4, nb2);
                }
            }
            if (it == 0) assert_int_equal(ra | rb, 0);
        }
    }
}

/* e8c_rans32_encode2 (two streams; with AVX2, B's lane inside A's
 * rounds; two one-lane streams side by side) writes the reference's bytes for both, also with capacities
 * around the sizes (each stream fits or not on its own). */
static void test_encode2(void **state)
{
    (void)state;
    e8t_rng r = {14};
    /* the last three: two one-lane streams (side by side), like a frame's scales */
    static const size_t na_[] = {43008, 9000, 70000, 3000, 43008, 20000, 65536, 765, 300, 8191};
    static const size_t nb_[] = {6144, 6144, 5000, 700, 12000, 1, 8000, 765, 5000, 8191};
    uint8_t *sb = g_o3, *ra = g_out, *rb = g_out2;
    for (size_t k = 0; k < 10; k++) {
        size_t na = na_[k], nb = nb_[k];
        fill(&r, g_sym, na, k == 6 ? 1 : 0, 1.5);
        fill(&r, sb, nb, k == 5 ? 2 : 0, 0.8);
        size_t la = e8c_rans32_encode_ref(g_sym, na, g_a, 2 * na + 1024, g_words);
        size_t lb = e8c_rans32_encode_ref(sb, nb, g_c, 2 * nb + 1024, g_words);
        assert_true(la > 0 && lb > 0);
        for (int simd = 0; simd <= e8c_cpu_has_avx2(); simd++)
            for (int c = 0; c < 6; c++) {
                size_t capa = c < 3 ? la + 1 - (size_t)c : la + 5;
                size_t capb = c >= 3 ? lb + 4 - (size_t)c : lb + 7;
                size_t got_b = 99, got_a = e8c_rans32_encode2(g_sym, na, g_b, capa, sb, nb, ra, capb, &got_b, simd);
                assert_int_equal(got_a, capa >= la ? la : 0);
                assert_int_equal(got_b, capb >= lb ? lb : 0);
                if (got_a) assert_memory_equal(g_b, g_a, la);
                if (got_b) assert_memory_equal(ra, g_c, lb);
                (void)rb;
            }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ref_equals_fast),
        cmocka_unit_test(test_hostile_streams),
        cmocka_unit_test(test_decode2),
        cmocka_unit_test(test_encode2),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
