/*
 * e8c_rans32.c: coding 3, 32-lane interleaved rANS ("rans32", FORMAT.md
 * section 5.4): the plain reference encoder/decoder, written like the spec,
 * and the fast scalar ones (same bytes; tests compare them).
 *
 * rANS: J. Duda, "Asymmetric numeral systems", arXiv:0902.0271 (2009);
 * interleaved states and 16-bit renormalization as described by F. Giesen,
 * "Interleaved entropy coders", arXiv:1402.3392 (2014).  Here: K
 * independent 32-bit states (symbol i uses lane i mod K), state interval
 * [2^16, 2^32), 12-bit frequencies, one 16-bit word per renormalization, so
 * every step is branch-free and lanes map onto SIMD lanes or warp lanes.
 *
 * Fast encoder: x / f exactly as (x * ceil(2^44 / f)) >> 44 in 64 bits.
 * Proof: x < f * 2^20 at that point (renormalization), m = ceil(2^44/f) =
 * (2^44 + e) / f with 0 <= e < f, so x*m / 2^44 = x/f + x*e/(f*2^44) and
 * x*e < f^2 * 2^20 <= 2^44 (f <= 4096): the error stays below 1/f and the
 * floor is exact; x*m < 2^64 for the same reason.
 * Fast decoder: 4096-entry slot tables (f, slot - start, symbol) and a
 * branch-free renormalization; whole rounds run without bounds checks while
 * at least K words are left, the tail checks every word.
 */
#include <pthread.h>
#include <string.h>

#include "codec/e8c_internal.h"

#define R32_M 4096u
#define R32_L 0x10000u

uint32_t e8c_rans32_lanes(size_t n)
{
    return n >= 65536 ? 32 : n >= 8192 ? 8 : 1;
}

/* ----------------------------------------------------------- tables */

/* u16 n_sym, then (u8 symbol, LEB128 f) for each f[s] > 0, ascending. */
static size_t table_put(const uint32_t f[256], uint8_t *dst)
{
    size_t h = 2, nsym = 0;
    for (int s = 0; s < 256; s++) {
        if (!f[s]) continue;
        dst[h++] = (uint8_t)s;
        uint32_t v = f[s];
        while (v >= 0x80) { dst[h++] = (uint8_t)(v | 0x80); v >>= 7; }
        dst[h++] = (uint8_t)v;
        nsym++;
    }
    e8c_put16(dst, (uint32_t)nsym);
    return h;
}

/* Parses the table at src[*off..len): f and start of every symbol; the
 * frequencies must be >= 1 and sum to 4096.  Returns n_sym or -1. */
static int table_get(const uint8_t *src, size_t len, size_t *off, uint32_t f[256],
                     uint32_t start[256])
{
    if (len - *off < 2) return -1;
    uint32_t nsym = e8c_get16(src + *off), acc = 0;
    int last = -1;
    *off += 2;
    if (nsym == 0 || nsym > 256) return -1;
    memset(f, 0, 256 * sizeof f[0]);
    for (uint32_t k = 0; k < nsym; k++) {
        if (*off >= len) return -1;
        int s = src[(*off)++];
        if (s <= last) return -1;
        last = s;
        uint32_t v = 0;
        for (int sh = 0;; sh += 7) {
            if (*off >= len || sh > 14) return -1;
            uint8_t b = src[(*off)++];
            v |= (uint32_t)(b & 0x7f) << sh;
            if (!(b & 0x80)) break;
        }
        if (v == 0 || v > R32_M - acc) return -1;
        f[s] = v;
        start[s] = acc;
        acc += v;
    }
    return acc == R32_M ? (int)nsym : -1;
}

static void freqs(const uint8_t *src, size_t n, uint32_t f[256], uint32_t start[256], int simd)
{
    uint32_t cnt[256] = {0}, c4[4][256];
    size_t i = 0;
#if defined(__x86_64__)
    if (simd) {
        e8c_hist_avx2(src, n, cnt);
        e8c_rans_normalize(cnt, n, f);
        for (uint32_t s = 0, acc = 0; s < 256; s++) { start[s] = acc; acc += f[s]; }
        return;
    }
#else
    (void)simd;
#endif
    memset(c4, 0, sizeof c4); /* four sub-histograms: no store-to-load stalls on repeats */
    for (; i + 4 <= n; i += 4) {
        c4[0][src[i]]++; c4[1][src[i + 1]]++; c4[2][src[i + 2]]++; c4[3][src[i + 3]]++;
    }
    for (; i < n; i++) cnt[src[i]]++;
    for (int s = 0; s < 256; s++) cnt[s] += c4[0][s] + c4[1][s] + c4[2][s] + c4[3][s];
    e8c_rans_normalize(cnt, n, f);
    for (uint32_t s = 0, acc = 0; s < 256; s++) { start[s] = acc; acc += f[s]; }
}

/* ------------------------------------------------------- reference */

/* FORMAT.md 5.4 encoder, line by line.  words: n u16 of scratch.  Returns
 * the stream size, or 0 if it would not fit in cap bytes. */
size_t e8c_rans32_encode_ref(const uint8_t *sym, size_t N, uint8_t *dst, size_t cap,
                             uint16_t *words)
{
    uint32_t f[256], start[256], x[32];
    uint8_t hdr[1 + 2 + 256 * 3];
    if (N == 0) return 0;
    freqs(sym, N, f, start, 0);
    uint32_t K = e8c_rans32_lanes(N);
    size_t R = (N + K - 1) / K, W = 0, end = N; /* words fill words[end - W .. end) */
    hdr[0] = (uint8_t)K;
    size_t h = 1 + table_put(f, hdr + 1);
    for (uint32_t l = 0; l < K; l++) x[l] = R32_L;
    for (size_t r = R; r-- > 0;)
        for (uint32_t l = K; l-- > 0;) {
            size_t i = r * K + l;
            if (i >= N) continue;
            uint32_t s = sym[i];
            if ((uint64_t)x[l] >= (uint64_t)f[s] << 20) {
                words[end - ++W] = (uint16_t)(x[l] & 0xFFFF);
                x[l] >>= 16;
            }
            x[l] = (x[l] / f[s]) * R32_M + (x[l] % f[s]) + start[s];
        }
    size_t total = h + 4 * (size_t)K + 2 * W;
    if (total > cap) return 0;
    memcpy(dst, hdr, h);
    for (uint32_t l = 0; l < K; l++) e8c_put32(dst + h + 4 * l, x[l]);
    for (size_t k = 0; k < W; k++) e8c_put16(dst + h + 4 * K + 2 * k, words[end - W + k]);
    return total;
}

/* FORMAT.md 5.4 decoder, line by line: exactly N symbols from src[0..len).
 * 0, or -1 if the stream is corrupt. */
int e8c_rans32_decode_ref(const uint8_t *src, size_t len, uint8_t *out, size_t N)
{
    uint32_t f[256], start[256], x[32];
    if (len < 1 || N == 0) return -1;
    uint32_t K = src[0];
    size_t off = 1;
    if (K < 1 || K > 32) return -1;
    if (table_get(src, len, &off, f, start) < 0) return -1;
    if (len - off < 4 * (size_t)K) return -1;
    for (uint32_t l = 0; l < K; l++) {
        x[l] = e8c_get32(src + off + 4 * l);
        if (x[l] < R32_L) return -1;
    }
    off += 4 * (size_t)K;
    if ((len - off) % 2) return -1;
    size_t W = (len - off) / 2, p = 0;
    for (size_t i = 0; i < N; i++) {
        uint32_t l = (uint32_t)(i % K), slot = x[l] & (R32_M - 1), s = 0;
        while (!(f[s] && start[s] <= slot && slot < start[s] + f[s])) s++;
        out[i] = (uint8_t)s;
        x[l] = f[s] * (x[l] >> 12) + slot - start[s];
        if (x[l] < R32_L) {
            if (p >= W) return -1;
            x[l] = (x[l] << 16) | e8c_get16(src + off + 2 * p++);
        }
    }
    if (p != W) return -1;
    for (uint32_t l = 0; l < K; l++)
        if (x[l] != R32_L) return -1;
    return 0;
}

/* ------------------------------------------------------------ fast */

typedef e8c_r32_esym r32_esym;
#define r32_put e8c_r32_put

/* One stream being encoded: lanes, symbol table, states, the words
 * written backwards from dst + cap, the header. */
typedef struct r32_enc {
    const uint8_t *sym;
    uint8_t *dst, *end, *wp;
    size_t i, cap, h, fixed;
    uint32_t K, x[32];
    uint32_t es32[256]; /* f | start << 16, for the AVX2 rounds */
    r32_esym es[256];
    uint8_t hdr[1 + 2 + 256 * 3];
} r32_enc;

/* Tables, header and the last (partial) round.  0, or -1: cannot fit. */
static int r32_enc_open(r32_enc *e, const uint8_t *sym, size_t N, uint8_t *dst, size_t cap, int simd)
{
    uint32_t f[256], start[256];
    if (N == 0) return -1;
    freqs(sym, N, f, start, simd);
    uint32_t K = e8c_rans32_lanes(N);
    e->K = K;
    e->hdr[0] = (uint8_t)K;
    e->h = 1 + table_put(f, e->hdr + 1);
    e->fixed = e->h + 4 * (size_t)K;
    if (e->fixed > cap) return -1;
    for (int s = 0; s < 256; s++) {
        e->es32[s] = f[s] | start[s] << 16;
        if (!f[s]) continue; /* symbols that do not occur: never looked up */
        uint32_t fs = f[s];
        e->es[s].xmax = (uint64_t)fs << 20;
        e->es[s].rcp = ((1ull << 44) + fs - 1) / fs;
        e->es[s].cmpl = R32_M - fs;
        e->es[s].start = start[s];
    }
    for (uint32_t l = 0; l < K; l++) e->x[l] = R32_L;
    e->sym = sym; e->dst = dst; e->cap = cap;
    e->end = e->wp = dst + cap;
    /* symbol i, from N-1 down: round descending, lane descending.  Words
     * may run down over the header's place (written last); fewer than 2K
     * bytes left below them means the total exceeds cap (fixed > 2K). */
    size_t full = N / K * K, i = N;
    while (i > full) { i--; e->x[i % K] = r32_put(e->x[i % K], &e->es[sym[i]], &e->wp); } /* room: fixed > 2K */
    e->i = i;
    return 0;
}

/* The remaining whole rounds, scalar.  0, or -1: cannot fit. */
static int r32_enc_rounds(r32_enc *e)
{
    const uint8_t *sym = e->sym, *dst = e->dst;
    const r32_esym *es = e->es;
    uint8_t *wp = e->wp;
    size_t i = e->i;
    uint32_t K = e->K, *x = e->x;
    int rc = 0;
    if (K == 1) {
        uint32_t x0 = x[0];
        while (i > 0) {
            if (wp - dst < 2) { rc = -1; break; } /* room for the speculative store */
            i--;
            x0 = r32_put(x0, &es[sym[i]], &wp);
        }
        x[0] = x0;
    } else if (K == 8) { /* lanes in registers */
        uint32_t x0 = x[0], x1 = x[1], x2 = x[2], x3 = x[3], x4 = x[4], x5 = x[5], x6 = x[6], x7 = x[7];
        while (i > 0) {
            if (wp - dst < 16) { rc = -1; break; }
            i -= 8;
            x7 = r32_put(x7, &es[sym[i + 7]], &wp); x6 = r32_put(x6, &es[sym[i + 6]], &wp);
            x5 = r32_put(x5, &es[sym[i + 5]], &wp); x4 = r32_put(x4, &es[sym[i + 4]], &wp);
            x3 = r32_put(x3, &es[sym[i + 3]], &wp); x2 = r32_put(x2, &es[sym[i + 2]], &wp);
            x1 = r32_put(x1, &es[sym[i + 1]], &wp); x0 = r32_put(x0, &es[sym[i]], &wp);
        }
        x[0] = x0; x[1] = x1; x[2] = x2; x[3] = x3; x[4] = x4; x[5] = x5; x[6] = x6; x[7] = x7;
    } else {
        while (i > 0) {
            if (wp - dst < (ptrdiff_t)(2 * K)) { rc = -1; break; }
            i -= K;
            for (uint32_t l = K; l-- > 0;) x[l] = r32_put(x[l], &es[sym[i + l]], &wp);
        }
    }
    e->wp = wp;
    e->i = i;
    return rc;
}

/* The rounds with AVX2 where they exist (8 and 32 lanes), B's one lane
 * (if any) alongside; then whatever is left, scalar. */
static int r32_enc_rounds_simd(r32_enc *e, r32_enc *b)
{
#if defined(__x86_64__)
    if (e->K == 8 || e->K == 32) {
        e8c_r32_side side, *sp = NULL;
        if (b && b->K == 1) {
            side = (e8c_r32_side){b->sym, b->i, b->x[0], b->es, b->wp, b->dst};
            sp = &side;
        }
        int rc = e8c_rans32_rounds_avx2(e->sym, e->i, e->K, e->x, e->es32, &e->wp, e->dst, sp);
        if (sp) { b->i = side.i; b->x[0] = side.x; b->wp = side.wp; }
        if (rc) return -1;
        e->i = 0;
    }
#else
    (void)b;
#endif
    return r32_enc_rounds(e);
}

/* Words behind the header and the states: the stream size, or 0. */
static size_t r32_enc_close(r32_enc *e)
{
    size_t W2 = (size_t)(e->end - e->wp);
    if (e->fixed + W2 > e->cap) return 0;
    memmove(e->dst + e->fixed, e->wp, W2);
    memcpy(e->dst, e->hdr, e->h);
    for (uint32_t l = 0; l < e->K; l++) e8c_put32(e->dst + e->h + 4 * l, e->x[l]);
    return e->fixed + W2;
}

/* Same bytes as e8c_rans32_encode_ref, without scratch: the words are
 * written backwards from dst + cap, then moved behind the states.  simd:
 * the whole rounds of 8 and 32 lanes with AVX2 (e8c_rans32_avx2.c; the
 * caller has checked the CPU). */
size_t e8c_rans32_encode_ex(const uint8_t *sym, size_t N, uint8_t *dst, size_t cap, int simd)
{
    r32_enc e;
    if (r32_enc_open(&e, sym, N, dst, cap, simd)) return 0;
    if (simd ? r32_enc_rounds_simd(&e, NULL) : r32_enc_rounds(&e)) return 0;
    return r32_enc_close(&e);
}

/* Two one-lane streams step by step side by side (each alone is a serial
 * chain of multiply and shift per symbol; two hide each other's latency),
 * while both have symbols and room; r32_enc_rounds finishes each (and
 * finds a stream that does not fit, as it would alone). */
static void r32_enc_two1(r32_enc *a, r32_enc *b)
{
    size_t i = a->i, j = b->i;
    uint32_t x = a->x[0], y = b->x[0];
    uint8_t *wa = a->wp, *wb = b->wp;
    const uint8_t *sa = a->sym, *sb = b->sym, *da = a->dst, *db = b->dst; /* locals: the word */
    const r32_esym *ea = a->es, *eb = b->es;                               /* stores alias */
    while (i > 0 && j > 0 && wa - da >= 2 && wb - db >= 2) {
        i--; j--;
        x = r32_put(x, &ea[sa[i]], &wa);
        y = r32_put(y, &eb[sb[j]], &wb);
    }
    a->i = i; a->x[0] = x; a->wp = wa;
    b->i = j; b->x[0] = y; b->wp = wb;
}

/* Two streams, the same bytes as two e8c_rans32_encode_ex calls (*lb: B's
 * size or 0).  Two one-lane streams (the scale streams of a frame) step
 * side by side (r32_enc_two1).  With simd, where A has 8 or 32 lanes and B one, B's steps
 * run inside A's AVX2 rounds (one per block of 8 A lanes): B's serial
 * chain on the scalar units while A's vector chain waits on latency. */
size_t e8c_rans32_encode2(const uint8_t *sa, size_t na, uint8_t *da, size_t capa,
                          const uint8_t *sb, size_t nb, uint8_t *db, size_t capb, size_t *lb,
                          int simd)
{
    r32_enc a, b;
    int fa = r32_enc_open(&a, sa, na, da, capa, simd), fb = r32_enc_open(&b, sb, nb, db, capb, simd);
    if (!fa && !fb && a.K == 1 && b.K == 1) r32_enc_two1(&a, &b);
    if (!fa) fa = simd ? r32_enc_rounds_simd(&a, fb ? NULL : &b) : r32_enc_rounds(&a);
    if (!fb) fb = simd ? r32_enc_rounds_simd(&b, NULL) : r32_enc_rounds(&b);
    *lb = fb ? 0 : r32_enc_close(&b);
    return fa ? 0 : r32_enc_close(&a);
}

/* A parsed coding-3 stream: lanes, table, states, words. */
typedef struct r32_dec {
    uint32_t K, x[32];
    int nsym, packed; /* packed: the one-load table (r32_table) */
    const uint8_t *wd;
    size_t W, p;
    uint32_t f[256], start[256];
} r32_dec;

/* Parses the header of src[0..len) for N symbols: 0, or -1 if corrupt. */
static int r32_open(r32_dec *d, const uint8_t *src, size_t len, size_t N)
{
    if (len < 1 || N == 0) return -1;
    d->K = src[0];
    size_t off = 1;
    if (d->K < 1 || d->K > 32) return -1;
    d->nsym = table_get(src, len, &off, d->f, d->start);
    if (d->nsym < 0 || len - off < 4 * (size_t)d->K) return -1;
    for (uint32_t l = 0; l < d->K; l++) {
        d->x[l] = e8c_get32(src + off + 4 * l);
        if (d->x[l] < R32_L) return -1;
    }
    off += 4 * (size_t)d->K;
    if ((len - off) % 2) return -1;
    d->wd = src + off;
    d->W = (len - off) / 2;
    d->p = 0;
    d->packed = d->K == 1;
    return 0;
}

/* Decoder slot tables, two kinds (E8C_R32_TAB / 2 bytes either way):
 *  - one lane (latency-bound: one load per step, and the table is a fill,
 *    cheap for the short streams that take K = 1): P[slot] = f << 20 |
 *    start << 8 | symbol (f <= 4095 whenever there are two symbols or
 *    more; a one-symbol table never reaches it);
 *  - 8 or more lanes (throughput-bound: no extraction work per step):
 *    u16 f[4096], u16 slot - start[4096], u8 symbol[4096]. */
/* p[0..n) = v, 32 bytes per step where it can */
static void fill32(uint32_t *p, uint32_t v, uint32_t n)
{
    uint32_t pat[8] = {v, v, v, v, v, v, v, v}, k = 0;
    for (; k + 8 <= n; k += 8) memcpy(p + k, pat, sizeof pat);
    for (; k < n; k++) p[k] = v;
}

static void fill16(uint16_t *p, uint16_t v, uint32_t n)
{
    uint16_t pat[16] = {v, v, v, v, v, v, v, v, v, v, v, v, v, v, v, v};
    uint32_t k = 0;
    for (; k + 16 <= n; k += 16) memcpy(p + k, pat, sizeof pat);
    for (; k < n; k++) p[k] = v;
}

static uint16_t r32_iota[R32_M]; /* 0, 1, ..., 4095 */
static pthread_once_t r32_iota_once = PTHREAD_ONCE_INIT;
static void iota_init(void)
{
    for (uint32_t k = 0; k < R32_M; k++) r32_iota[k] = (uint16_t)k;
}

static const uint16_t *iota16(void)
{
    pthread_once(&r32_iota_once, iota_init);
    return r32_iota;
}

/* The fills as block copies: byte-wise loops here were 6-7 % of a frame's
 * decode (perf, 3 heads x hd64 x 256 tokens). */
static void r32_table(const r32_dec *d, void *tab)
{
    if (d->packed) {
        uint32_t *P = tab;
        for (uint32_t s = 0; s < 256; s++)
            if (d->f[s]) fill32(P + d->start[s], d->f[s] << 20 | d->start[s] << 8 | s, d->f[s]);
        return;
    }
    uint16_t *tf = tab, *tb = tf + R32_M;
    uint8_t *ts = (uint8_t *)(tb + R32_M);
    const uint16_t *io = iota16();
    for (uint32_t s = 0; s < 256; s++) {
        uint32_t f = d->f[s], st = d->start[s];
        if (!f) continue;
        memset(ts + st, (int)s, f);
        fill16(tf + st, (uint16_t)f, f);
        memcpy(tb + st, io, 2 * (size_t)f);
    }
}

/* One decoding step of lane state x: symbol to o, x to the next state;
 * _P with the one-lane table P, _S with the split tables tf, tb, ts. */
#define R32_STEP_P(xl, o)                                                       \
    do {                                                                        \
        uint32_t slot_ = (xl) & (R32_M - 1), e_ = P[slot_];                     \
        (o) = (uint8_t)e_;                                                      \
        (xl) = (e_ >> 20) * ((xl) >> 12) + slot_ - ((e_ >> 8) & (R32_M - 1));   \
    } while (0)
#define R32_STEP_S(xl, o)                                                       \
    do {                                                                        \
        uint32_t slot_ = (xl) & (R32_M - 1);                                    \
        (o) = ts[slot_];                                                        \
        (xl) = (uint32_t)tf[slot_] * ((xl) >> 12) + tb[slot_];                  \
    } while (0)
/* Renormalization with word p (callers guarantee it exists): _C as a
 * conditional move (short dependency chain, for one lane), _T with masks
 * (fewer instructions, for 8 or 32 lanes side by side). */
#define R32_RENORM_C(xl, wd, p)                                                 \
    do {                                                                        \
        uint32_t w_ = e8c_get16((wd) + 2 * (p)), y_ = (xl) << 16 | w_;          \
        int need_ = (xl) < R32_L;                                               \
        (xl) = need_ ? y_ : (xl);                                               \
        (p) += (size_t)need_;                                                   \
    } while (0)
#define R32_RENORM_T(xl, wd, p)                                                 \
    do {                                                                        \
        uint32_t need_ = (uint32_t)(((uint64_t)(xl) - R32_L) >> 63);            \
        uint32_t w_ = e8c_get16((wd) + 2 * (p));                                \
        (xl) = ((xl) << (need_ << 4)) | (w_ & (0u - need_));                    \
        (p) += need_;                                                           \
    } while (0)

/* On x86-64 both are: compare, conditional move, add-with-carry (the
 * compare's borrow is "needed"): 3 instructions instead of about 8 and
 * fewer registers live across 8 lanes (K = 8 decodes ~20% faster).  Same
 * results as the C forms above. */
#if defined(__x86_64__) && defined(__GNUC__)
#undef R32_RENORM_T
#undef R32_RENORM_C
#define R32_RENORM_T(xl, wd, p)                                                 \
    do {                                                                        \
        uint32_t y_ = (xl) << 16 | e8c_get16((wd) + 2 * (p));                   \
        __asm__("cmpl $0x10000, %[x]\n\tcmovb %[y], %[x]\n\tadcq $0, %[q]"     \
                : [x] "+r"(xl), [q] "+r"(p) : [y] "r"(y_) : "cc");              \
    } while (0)
#define R32_RENORM_C(xl, wd, p) R32_RENORM_T(xl, wd, p)
#endif

/* Symbols i .. N-1 with every word checked, then the end conditions. */
static int r32_finish(r32_dec *d, const void *tab, uint8_t *out, size_t i, size_t N)
{
    uint32_t K = d->K, *x = d->x;
    const uint32_t *P = tab;
    const uint16_t *tf = tab, *tb = tf + R32_M;
    const uint8_t *ts = (const uint8_t *)(tb + R32_M), *wd = d->wd;
    size_t p = d->p;
    for (; i < N; i++) {
        uint32_t l = (uint32_t)(i % K);
        if (d->packed) R32_STEP_P(x[l], out[i]);
        else R32_STEP_S(x[l], out[i]);
        if (x[l] < R32_L) {
            if (p >= d->W) return -1;
            x[l] = (x[l] << 16) | e8c_get16(wd + 2 * p++);
        }
    }
    if (p != d->W) return -1;
    for (uint32_t l = 0; l < K; l++)
        if (x[l] != R32_L) return -1;
    return 0;
}

/* The one-symbol stream: f = 4096, the states never change, no words. */
static int r32_single(const r32_dec *d, uint8_t *out, size_t N)
{
    int s = 0;
    while (!d->f[s]) s++;
    memset(out, s, N);
    for (uint32_t l = 0; l < d->K; l++)
        if (d->x[l] != R32_L) return -1;
    return d->W == 0 ? 0 : -1;
}

/* Decodes whole rounds while at least K words are left (no checks), from
 * symbol *pi; leaves the states and p in d. */
static void r32_rounds(r32_dec *d, const void *tab, uint8_t *restrict out, size_t *pi, size_t N)
{
    uint32_t K = d->K;
    const uint32_t *P = tab;
    const uint16_t *tf = tab, *tb = tf + R32_M;
    const uint8_t *ts = (const uint8_t *)(tb + R32_M), *wd = d->wd;
    size_t i = *pi, p = d->p, W = d->W, full = N / K * K;
    if (K == 1) {
        uint32_t x0 = d->x[0];
        for (; i < N && p < W; i++) {
            R32_STEP_P(x0, out[i]);
            R32_RENORM_C(x0, wd, p);
        }
        d->x[0] = x0;
    } else if (K == 8) { /* lanes in registers */
        uint32_t x0 = d->x[0], x1 = d->x[1], x2 = d->x[2], x3 = d->x[3];
        uint32_t x4 = d->x[4], x5 = d->x[5], x6 = d->x[6], x7 = d->x[7];
        for (; i < full && W - p >= 8; i += 8) {
            R32_STEP_S(x0, out[i]); R32_RENORM_T(x0, wd, p);
            R32_STEP_S(x1, out[i + 1]); R32_RENORM_T(x1, wd, p);
            R32_STEP_S(x2, out[i + 2]); R32_RENORM_T(x2, wd, p);
            R32_STEP_S(x3, out[i + 3]); R32_RENORM_T(x3, wd, p);
            R32_STEP_S(x4, out[i + 4]); R32_RENORM_T(x4, wd, p);
            R32_STEP_S(x5, out[i + 5]); R32_RENORM_T(x5, wd, p);
            R32_STEP_S(x6, out[i + 6]); R32_RENORM_T(x6, wd, p);
            R32_STEP_S(x7, out[i + 7]); R32_RENORM_T(x7, wd, p);
        }
        d->x[0] = x0; d->x[1] = x1; d->x[2] = x2; d->x[3] = x3;
        d->x[4] = x4; d->x[5] = x5; d->x[6] = x6; d->x[7] = x7;
    } else {
        uint32_t *x = d->x;
        for (; i < full && W - p >= K; i += K)
            for (uint32_t l = 0; l < K; l++) {
                R32_STEP_S(x[l], out[i + l]);
                R32_RENORM_T(x[l], wd, p);
            }
    }
    d->p = p;
    *pi = i;
}

size_t e8c_rans32_encode(const uint8_t *sym, size_t N, uint8_t *dst, size_t cap)
{
    return e8c_rans32_encode_ex(sym, N, dst, cap, 0);
}

int e8c_rans32_decode_ex(const uint8_t *src, size_t len, uint8_t *out, size_t N, void *tab, int simd)
{
    r32_dec d;
    if (r32_open(&d, src, len, N)) return -1;
    if (d.nsym == 1) return r32_single(&d, out, N);
    size_t i = 0;
#if defined(__x86_64__)
    if (simd && d.K == 32) { /* 4 AVX2 registers; the tail as usual */
        d.packed = 1;
        r32_table(&d, tab);
        e8c_rans32_dec32_avx2(d.x, tab, d.wd, &d.p, d.W, out, &i, N);
        return r32_finish(&d, tab, out, i, N);
    }
#else
    (void)simd;
#endif
    r32_table(&d, tab);
    r32_rounds(&d, tab, out, &i, N);
    return r32_finish(&d, tab, out, i, N);
}

int e8c_rans32_decode(const uint8_t *src, size_t len, uint8_t *out, size_t N, void *tab)
{
    return e8c_rans32_decode_ex(src, len, out, N, tab, 0);
}

/* Two one-lane streams (the two scale streams of a frame) step by step
 * side by side: each alone is a serial chain of table load, multiply and
 * renormalization; two hide each other's latency.  Then each finishes as
 * e8c_rans32_decode_ex would. */
static int r32_two1(r32_dec *a, uint8_t *oa, size_t na, r32_dec *b, uint8_t *ob, size_t nb, void *tab)
{
    void *tb_ = (uint8_t *)tab + E8C_R32_TAB / 2;
    r32_table(a, tab);
    r32_table(b, tb_);
    const uint32_t *PA = tab, *PB = tb_;
    const uint8_t *wa = a->wd, *wb = b->wd;
    size_t i = 0, p = a->p, q = b->p;
    uint32_t x = a->x[0], y = b->x[0];
    for (; i < na && i < nb && p < a->W && q < b->W; i++) {
        { const uint32_t *P = PA; R32_STEP_P(x, oa[i]); }
        { const uint32_t *P = PB; R32_STEP_P(y, ob[i]); }
        R32_RENORM_C(x, wa, p);
        R32_RENORM_C(y, wb, q);
    }
    a->x[0] = x; b->x[0] = y; a->p = p; b->p = q;
    size_t j = i;
    r32_rounds(a, tab, oa, &i, na);
    r32_rounds(b, tb_, ob, &j, nb);
    return r32_finish(a, tab, oa, i, na) | r32_finish(b, tb_, ob, j, nb);
}

/* Two streams at once (E8C_R32_TAB bytes of tables): where A has 8 lanes
 * and B one (the coords and halves of a frame of up to 65535 halves), each
 * round of A also takes one step of B, so B's serial dependency chain runs
 * in the shadow of A's eight; two one-lane streams step side by side
 * (r32_two1); the rest of each stream (and every other case) decodes as
 * e8c_rans32_decode_ex does.  Same results and verdicts as
 * two e8c_rans32_decode calls (-1 if either stream is corrupt). */
int e8c_rans32_decode2(const uint8_t *sa, size_t la, uint8_t *oa, size_t na,
                       const uint8_t *sb, size_t lb, uint8_t *ob, size_t nb, void *tab, int simd)
{
    r32_dec a, b;
    void *tb_ = (uint8_t *)tab + E8C_R32_TAB / 2;
    if (r32_open(&a, sa, la, na) || r32_open(&b, sb, lb, nb)) return -1;
    if (a.K == 1 && b.K == 1 && a.nsym > 1 && b.nsym > 1) return r32_two1(&a, oa, na, &b, ob, nb, tab);
    if (a.K != 8 || b.K != 1 || a.nsym == 1 || b.nsym == 1)
        return e8c_rans32_decode_ex(sa, la, oa, na, tab, simd) | e8c_rans32_decode_ex(sb, lb, ob, nb, tb_, simd);
    r32_table(&a, tab);
    r32_table(&b, tb_);
    const uint16_t *tf = tab, *tb = tf + R32_M;
    const uint8_t *ts = (const uint8_t *)(tb + R32_M), *wa = a.wd, *wb = b.wd;
    const uint32_t *P = tb_;
    size_t i = 0, j = 0, p = a.p, q = b.p, full = na / 8 * 8;
    uint32_t x0 = a.x[0], x1 = a.x[1], x2 = a.x[2], x3 = a.x[3];
    uint32_t x4 = a.x[4], x5 = a.x[5], x6 = a.x[6], x7 = a.x[7], y = b.x[0];
    for (; i < full && a.W - p >= 8 && j < nb && q < b.W; i += 8, j++) {
        R32_STEP_P(y, ob[j]);
        R32_STEP_S(x0, oa[i]); R32_RENORM_T(x0, wa, p);
        R32_STEP_S(x1, oa[i + 1]); R32_RENORM_T(x1, wa, p);
        R32_STEP_S(x2, oa[i + 2]); R32_RENORM_T(x2, wa, p);
        R32_STEP_S(x3, oa[i + 3]); R32_RENORM_T(x3, wa, p);
        R32_RENORM_C(y, wb, q);
        R32_STEP_S(x4, oa[i + 4]); R32_RENORM_T(x4, wa, p);
        R32_STEP_S(x5, oa[i + 5]); R32_RENORM_T(x5, wa, p);
        R32_STEP_S(x6, oa[i + 6]); R32_RENORM_T(x6, wa, p);
        R32_STEP_S(x7, oa[i + 7]); R32_RENORM_T(x7, wa, p);
    }
    a.x[0] = x0; a.x[1] = x1; a.x[2] = x2; a.x[3] = x3;
    a.x[4] = x4; a.x[5] = x5; a.x[6] = x6; a.x[7] = x7; b.x[0] = y;
    a.p = p; b.p = q;
    r32_rounds(&a, tab, oa, &i, na);
    r32_rounds(&b, tb_, ob, &j, nb);
    return r32_finish(&a, tab, oa, i, na) | r32_finish(&b, tb_, ob, j, nb);
}
