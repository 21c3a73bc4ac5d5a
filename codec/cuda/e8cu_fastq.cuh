/* e8cu_fastq.cuh: the quantize kernel's fast paths, each a filter in front of the exact rule.
 *
 * The encoder must reproduce the CPU reference's bytes (FORMAT.md §4), whose decisions come
 * from fp32/f64 arithmetic in a fixed order: the stored scale (from an f64 sum of squares) and
 * the coset choice of the E8 search (from two fp32 distances, ties to D8). Redoing that
 * arithmetic per element is what made the kernel instruction-bound. Here each decision is
 * taken from a cheaper quantity whose distance to the exact real value is bounded; where the
 * bound cannot settle it (a near-tie: rare on real data, every block or vector of a tie-heavy
 * test), the caller runs the exact rule of e8cu_device.cuh. So the result is the reference's
 * on every input, and the fast path's cost is what a typical element pays.
 *
 * Units: u = 2^-24 (fp32 unit roundoff). Compiled with --fmad=false; the fma below are
 * explicit (__fmaf_rn) and used only where their single rounding is part of the argument. */
#ifndef E8CU_FASTQ_CUH
#define E8CU_FASTQ_CUH

#include "codec/cuda/e8cu_device.cuh"

/* ------------------------------------------------- division by a constant (item lookup) */

/* floor(v / d) for v < 2^31 by a multiply-high (Granlund & Montgomery 1994, N = 31):
 * l = ceil(log2 d), m = ceil(2^(31+l) / d) < 2^32, floor(v/d) = floor(v·m / 2^(31+l)),
 * computed as umulhi(2v, m) >> l. Set up once per thread (one 64-bit division). */
struct e8cu_fdiv {
    uint32_t m, l;
};

__device__ __forceinline__ e8cu_fdiv e8cu_fdiv_init(uint32_t d)
{
    e8cu_fdiv f;
    f.l = d > 1 ? 32u - (uint32_t)__clz(d - 1u) : 0u;
    f.m = (uint32_t)((((uint64_t)1 << (31 + f.l)) + d - 1u) / d);
    return f;
}

__device__ __forceinline__ uint32_t e8cu_fdiv_do(const e8cu_fdiv &f, uint32_t v)
{
    return __umulhi(v << 1, f.m) >> f.l;
}

/* ------------------------------------------------------------ scale (FORMAT §4) */

/* The scale code from an approximate sum of squares T~ (fp32, any order, fma allowed) of a
 * vector of n elements: returns 1 and sets *sc when it is proven equal to e8cu_scale_code's
 * from the exact f64 sum; 0 when the caller must compute the exact sum.
 * Bound: T~ sums at most 32 squares per lane plus a 5-level tree, each step one rounding of a
 * sum of nonnegative terms: |T~ - T| <= 40u·T. w = sqrt(T~/n)·step through rsqrtf (2 ulp) and
 * three products: |w - z| <= 2^-20.6·z, z = sqrt(T/n)·step the exact real value; the
 * reference's v = fp32(rms·step) is within u·z of z. The code rounds at 3 mantissa bits; its
 * decision points are the midpoints (low 20 bits of the fp32 pattern = 0x80000). When w's low
 * 20 bits are more than 256 units (2^-16 relative, over 20x both errors together) from that
 * midpoint, v lies on w's side of it and neither is a tie: same code. T~ in [2^-80, 2^80]
 * keeps v normal and far from the 0x0010 underflow rule, sf in [2^-51, 2^45] (so the fast
 * division of e8cu_device.cuh applies), and rejects NaN and inf (bad input: the exact path
 * reports it). */
__device__ __forceinline__ int e8cu_scale_fast(float T, float inv_n, float step, uint16_t *sc)
{
    if (!(T >= 0x1p-80f && T <= 0x1p80f)) return 0;
    const float a = T * inv_n;
    const float w = a * rsqrtf(a) * step;
    const uint32_t b = __float_as_uint(w);
    const uint32_t off = (b & 0xfffffu) - 0x80000u + 256u; /* in [0, 512] when within 256 of the midpoint */
    if (off <= 512u) return 0;
    *sc = (uint16_t)(((b + 0x80000u) & 0xfff00000u) >> 16);
    return 1;
}

/* ------------------------------------------------------------------ E8 (FORMAT §4) */

#define E8CU_RMAGIC 12582912.0f   /* 1.5·2^23: RN(t + M) - M = rint(t) for |t| < 2^22 */
#define E8CU_RMAGIC_BITS 0x4b400000u

/* The nearest E8 point of t as points2, packed two int16 per word (element 2i in the low half
 * of w[i]), given mt >= max|t_i| (any upper bound; mt < 2^22) and the two thresholds of
 * e8cu_e8_thresholds(mt). Returns 1 when the result is proven to be e8cu_e8_block's (the
 * reference's); 0 when the caller must run e8cu_e8_block (w is then garbage).
 *
 * D8 candidate: f = rint(t) (by the magic constant, |t| < 2^22; in the kernel |t| <=
 * sqrt(n)/(step·15/16) < 2^11 by FORMAT §4 and the step bounds [1/64, 16]), d = t - f exact,
 * odd0 = parity of Σf (low bit of the xor of the patterns of t + M). The reference's dist0
 * rounds the real value
 *   D0 = Σ d_i² + odd0·(1 - 2·max|d_i|)        ((|d_k| - 1)² = d_k² - 2|d_k| + 1)
 * with at most 6 roundings of nonnegative terms along any path: |dist0 - D0| <= 6.01u·D0 <= 19u
 * (D0 <= 3). D8+½ candidate: u = RN(t - 0.5), g = rint(u), d' = u - g. The guard
 * mn = min|d_i| >= 2^-22·(mt + 1) gives every |d_i| > ulp(u_i)/2 (ulp(u) <= 2^-23·(|t| + 0.5)),
 * so RN(t - 0.5) cannot reach the half-integer f_i - 0.5 and g_i = f_i - [d_i < 0]: odd1 = odd0
 * xor (parity of the negative d_i); it also gives |t_i| >= 2^-22 (the division's range, see
 * the kernel). And |d'_i| = 0.5 - |d_i| + δ_i with |δ_i| <= ulp(u_i)/2 <= 2^-24·(mt + 0.5), the
 * rounding of t - 0.5. Hence, in the reals,
 *   D1 - D0 = (2 - Σ|d_i|) + odd1·2·min|d_i| - odd0·(1 - 2·max|d_i|) + ε,
 *   |ε| <= Σ|δ_i| + 2·max|δ_i| <= 2^-20.6·(mt + 0.5),
 * and Δ~, that expression in fp32, is within 37u of its real value (Σ|d_i| of 8 terms <= 4:
 * 24u; 1 - 2·max by one fma: u; three sums of terms <= 4: 12u). So
 * |Δ~| > τ = 2^-17 + 2^-20·(mt + 1) > 2·19u + 37u + |ε| proves dist1 - dist0 has Δ~'s sign and
 * is not 0: c = (Δ~ < 0) is the reference's dist1 < dist0. The chosen candidate is then
 * computed exactly as the reference does (w = t - 0.5·c, rint, residual, the parity fix-up on
 * the first largest |residual|, rounding the other way by the residual's sign: never -0 here,
 * as |d_i| > 0 and u - g is +0 or nonzero). With the kernel's bound (mt ~ 10-25 for the
 * presets) about 1 block in 10^4 of Gaussian data goes to the exact rule; ties always do. */
struct e8cu_e8thr {
    float tau, guard;
};

__device__ __forceinline__ e8cu_e8thr e8cu_e8_thresholds(float mt)
{
    e8cu_e8thr h;
    h.tau = __fmaf_rn(mt, 0x1p-20f, 0x1p-17f + 0x1p-20f);
    h.guard = __fmaf_rn(mt, 0x1p-22f, 0x1p-22f);
    return h;
}

/* (a & 0x80000000) | one, one = 0x3f800000 in a register: copysign(1, a) in one instruction
 * (the compiler splits it in two when both masks are immediates) */
__device__ __forceinline__ float e8cu_sgn1(float a, uint32_t one)
{
    uint32_t r;
    asm("lop3.b32 %0, %1, 0x80000000, %2, 0xEA;" : "=r"(r) : "r"(__float_as_uint(a)), "r"(one));
    return __uint_as_float(r);
}

__device__ __forceinline__ int e8cu_e8_fast(const float t[8], const e8cu_e8thr &th, uint32_t w[4])
{
    float d[8];
    uint32_t xf = 0, xd = 0;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const float fm = __fadd_rn(t[i], E8CU_RMAGIC);
        d[i] = __fsub_rn(t[i], __fsub_rn(fm, E8CU_RMAGIC));
        xf ^= __float_as_uint(fm);
        xd ^= __float_as_uint(d[i]);
    }
    float a[8];
#pragma unroll
    for (int i = 0; i < 8; i++) a[i] = fabsf(d[i]);
    const float l1 = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
    const float mx = fmaxf(fmaxf(fmaxf(a[0], a[1]), fmaxf(a[2], a[3])), fmaxf(fmaxf(a[4], a[5]), fmaxf(a[6], a[7])));
    const float mn = fminf(fminf(fminf(a[0], a[1]), fminf(a[2], a[3])), fminf(fminf(a[4], a[5]), fminf(a[6], a[7])));
    const bool odd0 = (xf & 1u) != 0;
    const bool odd1 = ((xf ^ (xd >> 31)) & 1u) != 0;
    const float p1 = odd1 ? mn + mn : 0.0f;
    const float p0 = odd0 ? __fmaf_rn(-2.0f, mx, 1.0f) : 0.0f;
    const float delta = ((2.0f - l1) + p1) - p0;
    const int ok = fabsf(delta) > th.tau && mn >= th.guard; /* false on NaN */
    const int c = delta < 0.0f ? 1 : 0;

    /* the chosen candidate, exactly as e8c_ref.c d8_cand computes it */
    const float half = c ? 0.5f : 0.0f;
    float hm[8], dd[8];
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const float wv = __fsub_rn(t[i], half);
        hm[i] = __fadd_rn(wv, E8CU_RMAGIC);
        dd[i] = __fsub_rn(wv, __fsub_rn(hm[i], E8CU_RMAGIC));
    }
    const bool odd = c ? odd1 : odd0;
    const uint32_t one = 0x3f800000u;
    const float mxc = fmaxf(fmaxf(fmaxf(fabsf(dd[0]), fabsf(dd[1])), fmaxf(fabsf(dd[2]), fabsf(dd[3]))),
                            fmaxf(fmaxf(fabsf(dd[4]), fabsf(dd[5])), fmaxf(fabsf(dd[6]), fabsf(dd[7]))));
    bool done = !odd;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const bool eq = fabsf(dd[i]) == mxc;
        const bool hit = eq && !done;
        done = done || eq;
        hm[i] = hit ? __fadd_rn(hm[i], e8cu_sgn1(dd[i], one)) : hm[i];
    }
    const uint32_t k = (uint32_t)c - 2u * E8CU_RMAGIC_BITS; /* points2 = 2·(bits - MB) + c */
#pragma unroll
    for (int i = 0; i < 4; i++)
        w[i] = __byte_perm(2u * __float_as_uint(hm[2 * i]) + k, 2u * __float_as_uint(hm[2 * i + 1]) + k, 0x5410);
    return ok;
}

/* The nearest E8 point through the fast path (mt >= max|t_i|), the exact rule where it
 * cannot decide. */
__device__ __forceinline__ void e8cu_e8_point(const float t[8], float mt, uint32_t w[4])
{
    if (!e8cu_e8_fast(t, e8cu_e8_thresholds(mt), w)) {
        int16_t p[8];
        e8cu_e8_block(t, p);
#pragma unroll
        for (int i = 0; i < 4; i++) w[i] = (uint32_t)(uint16_t)p[2 * i] | ((uint32_t)(uint16_t)p[2 * i + 1] << 16);
    }
}

#endif
