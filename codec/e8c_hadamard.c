/*
 * e8c_hadamard.c: the randomized orthonormal Hadamard rotation
 * (FORMAT.md section 3).
 *
 * head_dim n (a multiple of 8) is split into power-of-two blocks by its
 * binary expansion, largest first; each block gets a normalized
 * Walsh-Hadamard transform (butterflies in ascending stride order).  A
 * power-of-two n is one round: y = BH(sign0 . x).  Otherwise a second round
 * after a transpose-like permutation mixes every block with every other:
 * y = BH(sign1 . P BH(sign0 . x)).  Each factor is orthogonal (up to fp32
 * rounding of 1/sqrt(m) for m = 2*4^k), so the product is.
 */
#include <math.h>
#include <string.h>

#include "codec/e8c_internal.h"

static uint64_t splitmix64(uint64_t *state)
{
    *state += 0x9E3779B97F4A7C15ull;
    uint64_t z = *state;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

void e8c_hadamard_signs(uint64_t seed, uint32_t n, unsigned r, float *signs)
{
    uint64_t state = seed + (uint64_t)r * 0xD1B54A32D192ED03ull, word = 0;
    for (uint32_t j = 0; j < n; j++) {
        if (j % 64 == 0) word = splitmix64(&state);
        signs[j] = ((word >> (j % 64)) & 1u) ? -1.0f : 1.0f;
    }
}

void e8c_hplan_init(e8c_hplan *hp, uint32_t n, uint64_t seed)
{
    memset(hp, 0, sizeof *hp);
    hp->n = n;
    hp->pow2 = (n & (n - 1)) == 0;
    uint32_t off = 0;
    for (int b = 9; b >= 3; b--) {
        uint32_t m = 1u << b;
        if (!(n & m)) continue;
        hp->bsize[hp->nblocks] = m;
        hp->boff[hp->nblocks] = off;
        hp->gain[hp->nblocks] = (float)(1.0 / sqrt((double)m));
        hp->nblocks++;
        off += m;
    }
    e8c_hadamard_signs(seed, n, 0, hp->sign0);
    e8c_hadamard_signs(seed, n, 1, hp->sign1);
    uint32_t R = n / 8;
    for (uint32_t k = 0; k < n; k++) hp->perm[k] = (uint16_t)((k % R) * 8 + k / R);
}

/* One block-diagonal normalized Walsh-Hadamard transform, in place. */
static void bh(const e8c_hplan *hp, float *v)
{
    for (uint32_t b = 0; b < hp->nblocks; b++) {
        float *x = v + hp->boff[b];
        uint32_t m = hp->bsize[b];
        for (uint32_t hs = 1; hs < m; hs <<= 1)
            for (uint32_t j = 0; j < m; j++) {
                if (j & hs) continue;
                float a = x[j], c = x[j + hs];
                x[j] = a + c;
                x[j + hs] = a - c;
            }
        float g = hp->gain[b];
        for (uint32_t j = 0; j < m; j++) x[j] = x[j] * g;
    }
}

void e8c_hadamard_fwd(const e8c_hplan *hp, float *x, float *tmp)
{
    uint32_t n = hp->n;
    for (uint32_t j = 0; j < n; j++) x[j] = x[j] * hp->sign0[j];
    bh(hp, x);
    if (hp->pow2) return;
    for (uint32_t k = 0; k < n; k++) tmp[k] = x[hp->perm[k]] * hp->sign1[k];
    bh(hp, tmp);
    memcpy(x, tmp, sizeof(float) * n);
}

void e8c_hadamard_inv(const e8c_hplan *hp, float *y, float *tmp)
{
    uint32_t n = hp->n;
    if (!hp->pow2) {
        bh(hp, y);
        for (uint32_t k = 0; k < n; k++) tmp[hp->perm[k]] = y[k] * hp->sign1[k];
        memcpy(y, tmp, sizeof(float) * n);
    }
    bh(hp, y);
    for (uint32_t j = 0; j < n; j++) y[j] = y[j] * hp->sign0[j];
}
