/*
 * e8c_rans32_avx2.c: the rans32 encoder's whole rounds for 8 and 32 lanes
 * with AVX2 (built with -mavx2, codec.mk; called only where cpuid reports
 * AVX2, through e8c_rans32.c).  The same bytes as the scalar rounds
 * (FORMAT.md 5.4), 8 lanes per register, 32 lanes as 4 independent
 * registers:
 *  - renormalize where x >= f << 20, i.e. (x >> 20) >= f; the round's words
 *    (x & 0xFFFF of those lanes, ascending lane order) are compressed with a
 *    permutation table to the top of a 16-byte store that ends at wp, so
 *    the bytes below are scratch the next store overwrites (the caller's
 *    room check: at least 16 bytes below wp);
 *  - x / f without a divider for integers: q0 = trunc(float(x >> 1) *
 *    rcp2), rcp2 = float(2 / f), is within 1 of q = floor(x / f): x < f *
 *    2^20 after renormalization, so x / f < 2^20 and the three roundings
 *    together are off by less than 2^-22 relative (under 1/4 absolute); the
 *    dropped bit costs at most 1/f more, and where f = 1 (x < 2^20) every
 *    float step is exact, so q0 >= q - 1 there too (a scratch check over
 *    82 million (f, x) pairs, boundaries included, found no miss); then r =
 *    x - q0 * f is corrected once either way; x' = q * 4096 + r + start,
 *    exactly the spec's step.
 */
#include <immintrin.h>
#include <pthread.h>
#include <string.h>

#include "codec/e8c_internal.h"

static uint32_t r32_cmp_lut[256][8]; /* mask -> lanes, right-aligned, ascending */
static pthread_once_t r32_lut_once = PTHREAD_ONCE_INIT;

static void lut_init(void)
{
    for (uint32_t m = 0; m < 256; m++) {
        uint32_t c = (uint32_t)__builtin_popcount(m), k = 8 - c;
        for (uint32_t l = 0; l < 8; l++) r32_cmp_lut[m][l] = 0;
        for (uint32_t l = 0; l < 8; l++)
            if (m >> l & 1) r32_cmp_lut[m][k++] = l;
    }
}

#define R32_BLK 512u /* symbols per block of table look-ups (a multiple of 32) */

/* One 8-lane block of a round: state x, table entries E of its 8 symbols;
 * words stored ending at *wp. */
static inline __m256i enc8(__m256i x, const uint64_t *E, uint8_t **wp)
{
    const __m256i lo16 = _mm256_set1_epi32(0xFFFF), zero = _mm256_setzero_si256();
    const __m256i take = _mm256_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1,
                                          0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1);
    /* E[l] = (f | start << 16) | float(2 / f) << 32 of lane l's symbol,
     * looked up beforehand by scalar loads (two 8-wide gathers cost 24
     * cycles here, more than the rest of the round) */
    __m256 g0 = _mm256_loadu_ps((const float *)(const void *)E), g1 = _mm256_loadu_ps((const float *)(const void *)(E + 4));
    __m256i e = _mm256_permute4x64_epi64(_mm256_castps_si256(_mm256_shuffle_ps(g0, g1, 0x88)), 0xD8);
    __m256 rf = _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(_mm256_shuffle_ps(g0, g1, 0xDD)), 0xD8));
    __m256i f = _mm256_and_si256(e, lo16), st = _mm256_srli_epi32(e, 16);
    __m256i keep = _mm256_cmpgt_epi32(f, _mm256_srli_epi32(x, 20)); /* no word */
    uint32_t m = (uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(keep)) ^ 0xFFu;
    __m256i w = _mm256_permutevar8x32_epi32(x, _mm256_loadu_si256((const __m256i *)r32_cmp_lut[m]));
    w = _mm256_permute4x64_epi64(_mm256_shuffle_epi8(w, take), 0x08);
    _mm_storeu_si128((__m128i *)(*wp - 16), _mm256_castsi256_si128(w));
    *wp -= 2 * (uint32_t)__builtin_popcount(m);
    x = _mm256_blendv_epi8(_mm256_srli_epi32(x, 16), x, keep);
    /* q = floor(x / f), r = x mod f: q0 from float(x >> 1) * (2 / f), both
     * corrections from the same r0 (the chain of one register is the
     * encoder's latency at 8 lanes) */
    __m256i q = _mm256_cvttps_epi32(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(x, 1)), rf));
    __m256i r = _mm256_sub_epi32(x, _mm256_mullo_epi32(q, f));
    __m256i neg = _mm256_cmpgt_epi32(zero, r);                            /* q0 = q + 1 */
    __m256i big = _mm256_cmpgt_epi32(r, _mm256_sub_epi32(f, _mm256_set1_epi32(1))); /* q0 = q - 1 */
    q = _mm256_sub_epi32(_mm256_add_epi32(q, neg), big);
    r = _mm256_sub_epi32(_mm256_add_epi32(r, _mm256_and_si256(f, neg)), _mm256_and_si256(f, big));
    return _mm256_add_epi32(_mm256_add_epi32(_mm256_slli_epi32(q, 12), r), st);
}

/* B's next step, if it has symbols and room (else the scalar rounds
 * after these finish it, or find that it does not fit). */
#define SIDE_STEP()                                                                 \
    do {                                                                            \
        if (bi > 0 && bw - side->dst >= 2) {                                        \
            bi--;                                                                   \
            bx = e8c_r32_put(bx, &side->es[side->sym[bi]], &bw);                    \
        }                                                                           \
    } while (0)

/* Whole rounds i - K .. 0 (i a multiple of K, K = 8 or 32), descending.
 * es[s] = f | start << 16.  Returns 0, or -1 when fewer than 2K bytes are
 * left below the words before a round (then the stream cannot fit: see
 * e8c_rans32.c).  x and *wp are updated either way.  side: a one-lane
 * stream that takes one step per block of 8 lanes, or NULL. */
int e8c_rans32_rounds_avx2(const uint8_t *sym, size_t i, uint32_t K, uint32_t *x,
                           const uint32_t *es, uint8_t **wp, const uint8_t *dst,
                           e8c_r32_side *side)
{
    pthread_once(&r32_lut_once, lut_init);
    uint64_t e64[256], E[R32_BLK];
    for (int s = 0; s < 256; s++) {
        float rcp = (es[s] & 0xFFFF) ? 2.0f / (float)(es[s] & 0xFFFF) : 0.0f;
        uint32_t rb;
        memcpy(&rb, &rcp, 4);
        e64[s] = es[s] | (uint64_t)rb << 32;
    }
    e8c_r32_side none = {NULL, 0, 0, NULL, NULL, NULL};
    if (!side) side = &none;
    size_t bi = side->i;
    uint32_t bx = side->x;
    uint8_t *w = *wp, *bw = side->wp;
    int rc = 0;
    __m256i x0 = _mm256_loadu_si256((const __m256i *)x), x1 = x0, x2 = x0, x3 = x0;
    if (K == 32) {
        x1 = _mm256_loadu_si256((const __m256i *)(x + 8));
        x2 = _mm256_loadu_si256((const __m256i *)(x + 16));
        x3 = _mm256_loadu_si256((const __m256i *)(x + 24));
    }
    /* blocks of R32_BLK symbols (a multiple of K: i and lo stay multiples
     * of K): their table entries first, then their rounds */
    while (i > 0 && !rc) {
        size_t lo = i > R32_BLK ? i - R32_BLK : 0;
        for (size_t k = lo; k < i; k++) E[k - lo] = e64[sym[k]];
        if (K == 8)
            while (i > lo) {
                if (w - dst < 16) { rc = -1; break; }
                i -= 8;
                x0 = enc8(x0, E + (i - lo), &w);
                SIDE_STEP();
            }
        else
            while (i > lo) {
                if (w - dst < 64) { rc = -1; break; }
                i -= 32;
                x3 = enc8(x3, E + (i - lo) + 24, &w);
                x2 = enc8(x2, E + (i - lo) + 16, &w);
                SIDE_STEP();
                x1 = enc8(x1, E + (i - lo) + 8, &w);
                x0 = enc8(x0, E + (i - lo), &w);
                SIDE_STEP();
            }
    }
    _mm256_storeu_si256((__m256i *)x, x0);
    if (K == 32) {
        _mm256_storeu_si256((__m256i *)(x + 8), x1);
        _mm256_storeu_si256((__m256i *)(x + 16), x2);
        _mm256_storeu_si256((__m256i *)(x + 24), x3);
    }
    side->i = bi;
    side->x = bx;
    side->wp = bw;
    *wp = w;
    return rc;
}

/* ------------------------------------------------------------ decoder */

static uint32_t r32_exp_lut[256][8]; /* mask -> for each lane, its word's rank */
static pthread_once_t r32_exp_once = PTHREAD_ONCE_INIT;

static void exp_init(void)
{
    for (uint32_t m = 0; m < 256; m++)
        for (uint32_t l = 0, c = 0; l < 8; l++) {
            r32_exp_lut[m][l] = c;
            c += m >> l & 1;
        }
}

/* One 8-lane block of a decoding round (FORMAT.md 5.4): P[slot] = f << 20
 * | start << 8 | symbol; the lanes below 2^16 take the next words in
 * ascending lane order (at least 8 words readable at wd + 2 * *p). */
static inline __m256i dec8(__m256i x, const int *P, const uint8_t *wd, size_t *p, uint8_t *out)
{
    const __m256i m12 = _mm256_set1_epi32(4095), sg = _mm256_set1_epi32((int)0x80000000u);
    const __m256i lim = _mm256_set1_epi32((int)(0x80000000u | 0x10000u));
    const __m256i take = _mm256_setr_epi8(0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1,
                                          0, 4, 8, 12, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1, -1);
    __m256i slot = _mm256_and_si256(x, m12);
    __m256i e = _mm256_i32gather_epi32(P, slot, 4);
    __m256i st = _mm256_and_si256(_mm256_srli_epi32(e, 8), m12);
    x = _mm256_add_epi32(_mm256_mullo_epi32(_mm256_srli_epi32(e, 20), _mm256_srli_epi32(x, 12)),
                         _mm256_sub_epi32(slot, st));
    __m256i sy = _mm256_shuffle_epi8(e, take); /* low byte of each lane */
    uint64_t b8 = (uint32_t)_mm256_extract_epi32(sy, 0) | (uint64_t)(uint32_t)_mm256_extract_epi32(sy, 4) << 32;
    memcpy(out, &b8, 8);
    __m256i need = _mm256_cmpgt_epi32(lim, _mm256_xor_si256(x, sg)); /* x < 2^16, unsigned */
    uint32_t m = (uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(need));
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(wd + 2 * *p)));
    w = _mm256_permutevar8x32_epi32(w, _mm256_loadu_si256((const __m256i *)r32_exp_lut[m]));
    *p += (uint32_t)__builtin_popcount(m);
    return _mm256_blendv_epi8(x, _mm256_or_si256(_mm256_slli_epi32(x, 16), w), need);
}

/* Whole 32-lane rounds from symbol *pi while at least 32 words are left
 * (4 independent registers; one register alone is latency-bound and no
 * faster than the scalar 8-lane loop, so 8 lanes stay scalar).  P: the
 * one-load table above.  Updates x, *pi and *pp. */
void e8c_rans32_dec32_avx2(uint32_t *x, const uint32_t *P, const uint8_t *wd, size_t *pp, size_t W,
                           uint8_t *out, size_t *pi, size_t N)
{
    pthread_once(&r32_exp_once, exp_init);
    const int *T = (const int *)P;
    size_t i = *pi, p = *pp, full = N / 32 * 32;
    __m256i x0 = _mm256_loadu_si256((const __m256i *)x), x1 = _mm256_loadu_si256((const __m256i *)(x + 8));
    __m256i x2 = _mm256_loadu_si256((const __m256i *)(x + 16)), x3 = _mm256_loadu_si256((const __m256i *)(x + 24));
    for (; i < full && W - p >= 32; i += 32) {
        x0 = dec8(x0, T, wd, &p, out + i);
        x1 = dec8(x1, T, wd, &p, out + i + 8);
        x2 = dec8(x2, T, wd, &p, out + i + 16);
        x3 = dec8(x3, T, wd, &p, out + i + 24);
    }
    _mm256_storeu_si256((__m256i *)x, x0); _mm256_storeu_si256((__m256i *)(x + 8), x1);
    _mm256_storeu_si256((__m256i *)(x + 16), x2); _mm256_storeu_si256((__m256i *)(x + 24), x3);
    *pi = i;
    *pp = p;
}

/* ---------------------------------------------------------- histogram */

/* Adds the byte counts of src[0..n) to cnt.  Lattice symbols are mostly
 * below 16: those are counted 32 at a time with compares into byte
 * counters (flushed before they wrap); the bytes of a 32-byte block above
 * 15 are counted one by one.  The same counts as the scalar loop. */
void e8c_hist_avx2(const uint8_t *src, size_t n, uint32_t cnt[256])
{
    const __m256i lim = _mm256_set1_epi8(15), zero = _mm256_setzero_si256();
    __m256i acc[16];
    for (int k = 0; k < 16; k++) acc[k] = zero;
    size_t i = 0;
    uint32_t iter = 0;
    for (; i + 32 <= n; i += 32) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(src + i));
        uint32_t big = ~(uint32_t)_mm256_movemask_epi8(_mm256_cmpeq_epi8(_mm256_max_epu8(v, lim), lim));
        while (big) {
            cnt[src[i + (uint32_t)__builtin_ctz(big)]]++;
            big &= big - 1;
        }
        for (int k = 0; k < 16; k++)
            acc[k] = _mm256_sub_epi8(acc[k], _mm256_cmpeq_epi8(v, _mm256_set1_epi8((char)k)));
        if (++iter == 255 || i + 64 > n) { /* flush the byte counters */
            for (int k = 0; k < 16; k++) {
                __m256i sums = _mm256_sad_epu8(acc[k], zero); /* four u64 partial sums */
                __m128i s2 = _mm_add_epi64(_mm256_castsi256_si128(sums), _mm256_extracti128_si256(sums, 1));
                cnt[k] += (uint32_t)(_mm_cvtsi128_si64(s2) + _mm_extract_epi64(s2, 1));
                acc[k] = zero;
            }
            iter = 0;
        }
    }
    for (; i < n; i++) cnt[src[i]]++;
}
