/*
 * e8c_rans.c: static order-0 rANS over bytes (FORMAT.md section 5.3).
 *
 * Range asymmetric numeral systems (J. Duda, "Asymmetric numeral systems",
 * arXiv:0902.0271, 2009; byte-wise renormalization as in F. Giesen's
 * public-domain rans_byte description).  Two interleaved 32-bit states
 * (symbol i uses state i mod 2, which halves the dependency chain), 12-bit
 * probabilities, states kept in [2^23, 2^31).  Used for the lattice
 * coordinate streams, whose symbols are nearly independent with a skewed
 * small alphabet: there it beats zstd (whose match finder spends bits on
 * chance repeats) by 0.1-0.4 bits per symbol.
 *
 * Stream bytes: u16 n_sym, n_sym x (u8 symbol ascending, LEB128 freq), the
 * final encoder states x0, x1 (u32 LE each), then the renormalization bytes
 * in the order the decoder reads them.
 */
#include <string.h>

#include "codec/e8c_internal.h"

#define RANS_BITS 12u
#define RANS_M (1u << RANS_BITS)
#define RANS_L (1u << 23)

/* FORMAT.md 5.3: counts -> frequencies summing to 4096, deterministic.
 * Shared with coding 3 (e8c_rans32.c). */
void e8c_rans_normalize(const uint32_t cnt[256], size_t n, uint32_t f[256])
{
    uint32_t sum = 0;
    for (int s = 0; s < 256; s++) {
        f[s] = 0;
        if (!cnt[s]) continue;
        uint64_t v = ((uint64_t)cnt[s] * RANS_M + n / 2) / n;
        f[s] = v ? (uint32_t)v : 1;
        sum += f[s];
    }
    while (sum != RANS_M) {
        int k = 0;
        for (int s = 1; s < 256; s++)
            if (f[s] > f[k]) k = s;
        if (sum > RANS_M) {
            uint32_t d = sum - RANS_M, room = f[k] - 1;
            uint32_t t = d < room ? d : room;
            if (t == 0) t = 1; /* cannot happen: f[k] >= 16 while sum > M */
            f[k] -= t;
            sum -= t;
        } else {
            f[k] += RANS_M - sum;
            sum = RANS_M;
        }
    }
}

static size_t leb(uint8_t *p, uint32_t v)
{
    size_t k = 0;
    while (v >= 0x80) { p[k++] = (uint8_t)(v | 0x80); v >>= 7; }
    p[k++] = (uint8_t)v;
    return k;
}

/* Encodes src[0..n) into dst; returns the size, or 0 if it needs more than
 * cap bytes (the caller then stores the stream as is).  tmp: n + 16 bytes. */
size_t e8c_rans_encode(const uint8_t *src, size_t n, uint8_t *dst, size_t cap, uint8_t *tmp)
{
    uint32_t cnt[256] = {0}, f[256], start[256];
    for (size_t i = 0; i < n; i++) cnt[src[i]]++;
    e8c_rans_normalize(cnt, n, f);
    size_t h = 2, nsym = 0;
    uint8_t table[256 * 3];
    for (int s = 0, acc = 0; s < 256; s++) {
        start[s] = (uint32_t)acc;
        acc += (int)f[s];
        if (!f[s]) continue;
        table[h - 2] = (uint8_t)s;
        h += 1 + leb(table + h - 1, f[s]);
        nsym++;
    }
    if (h + 8 > cap) return 0;
    dst[0] = (uint8_t)nsym;
    dst[1] = (uint8_t)(nsym >> 8);
    memcpy(dst + 2, table, h - 2);
    /* encode backwards; bytes go to tmp from its end */
    uint8_t *end = tmp + n + 16, *p = end;
    size_t budget = cap - h - 8;
    double rcp[256];
    for (int s = 0; s < 256; s++) rcp[s] = f[s] ? 1.0 / f[s] : 0;
    uint32_t xs[2] = {RANS_L, RANS_L};
    for (size_t i = n; i-- > 0;) {
        uint32_t x = xs[i & 1], fs = f[src[i]];
        uint32_t xmax = ((RANS_L >> RANS_BITS) << 8) * fs;
        while (x >= xmax) {
            if ((size_t)(end - p) >= budget || p == tmp) return 0;
            *--p = (uint8_t)x;
            x >>= 8;
        }
        /* exact x / fs through a double reciprocal, corrected by one */
        uint32_t qd = (uint32_t)((double)x * rcp[src[i]]);
        if (qd * fs > x) qd--;
        else if ((qd + 1) * fs <= x) qd++;
        xs[i & 1] = (qd << RANS_BITS) + (x - qd * fs) + start[src[i]];
    }
    e8c_put32(dst + h, xs[0]);
    e8c_put32(dst + h + 4, xs[1]);
    memcpy(dst + h + 8, p, (size_t)(end - p));
    return h + 8 + (size_t)(end - p);
}

/* Decodes exactly n symbols from src[0..len); every byte must be used and
 * the final state must be the initial one.  0 or -1 (corrupt). */
int e8c_rans_decode(const uint8_t *src, size_t len, uint8_t *dst, size_t n)
{
    if (len < 2) return -1;
    uint32_t nsym = e8c_get16(src), f[256] = {0}, start[256] = {0};
    static __thread uint8_t slot_sym[RANS_M];
    size_t off = 2;
    uint32_t acc = 0;
    int last = -1;
    if (nsym == 0 || nsym > 256) return -1;
    for (uint32_t k = 0; k < nsym; k++) {
        if (off >= len) return -1;
        int s = src[off++];
        if (s <= last) return -1;
        last = s;
        uint32_t v = 0;
        for (int sh = 0;; sh += 7) {
            if (off >= len || sh > 14) return -1;
            uint8_t b = src[off++];
            v |= (uint32_t)(b & 0x7f) << sh;
            if (!(b & 0x80)) break;
        }
        if (v == 0 || v > RANS_M - acc) return -1;
        f[s] = v;
        start[s] = acc;
        memset(slot_sym + acc, s, v);
        acc += v;
    }
    if (acc != RANS_M || len - off < 8) return -1;
    uint32_t xs[2] = {e8c_get32(src + off), e8c_get32(src + off + 4)};
    off += 8;
    if (xs[0] < RANS_L || xs[1] < RANS_L) return -1;
    for (size_t i = 0; i < n; i++) {
        uint32_t x = xs[i & 1];
        uint32_t slot = x & (RANS_M - 1);
        uint8_t s = slot_sym[slot];
        dst[i] = s;
        x = f[s] * (x >> RANS_BITS) + slot - start[s];
        while (x < RANS_L) {
            if (off >= len) return -1;
            x = (x << 8) | src[off++];
        }
        xs[i & 1] = x;
    }
    return (off == len && xs[0] == RANS_L && xs[1] == RANS_L) ? 0 : -1;
}
