/* e8cu_device.cuh: device functions shared by the quantize and dequantize kernels.
 *
 * Data layout of one head vector in a kernel: a "group" of P lanes of one warp (P = 8, 16 or
 * 32) holds the vector's n = 8·R elements, lane l holding the 8-blocks b = l + P·s for slots
 * s < NB (NB = 1, or 2 when R > 32), 8 consecutive elements per block in registers. So an E8
 * block is one thread's registers, and the Hadamard butterflies of stride 1, 2, 4 are
 * in-thread, larger strides cross lanes (__shfl_xor_sync) or, for stride 8·P, slots.
 *
 * Every float operation is the one FORMAT.md writes, in its order; files including this are
 * compiled with --fmad=false and IEEE division/sqrt, so results are bit-identical to the CPU
 * reference (codec/e8c_ref.c). Register arrays are indexed with compile-time constants only. */
#ifndef E8CU_DEVICE_CUH
#define E8CU_DEVICE_CUH

#include <stdint.h>
#include <stdlib.h>
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include "codec/cuda/e8cu_internal.h"

/* ----------------------------------------------------------- conversions (FORMAT §1) */

__device__ __forceinline__ float e8cu_bf16_to_f32(uint16_t b) { return __uint_as_float((uint32_t)b << 16); }

/* RNE on the fp32 bits, for finite input (FORMAT §4, e8c_f32_to_bf16). */
__device__ __forceinline__ uint16_t e8cu_f32_to_bf16(float f)
{
    uint32_t u = __float_as_uint(f);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (uint16_t)(u >> 16);
}

__device__ __forceinline__ float e8cu_f16_to_f32(uint16_t h) { return __half2float(__ushort_as_half(h)); }

/* fp32 -> fp16 RNE; *overflow set when the result would be inf (|f| >= 65520). */
__device__ __forceinline__ uint16_t e8cu_f32_to_f16(float f, int *overflow)
{
    uint16_t h = __half_as_ushort(__float2half_rn(f));
    *overflow = (h & 0x7c00) == 0x7c00;
    return h;
}

/* fp32 -> fp16 RNE, saturating to +-65504 (the decoder's output rule). */
__device__ __forceinline__ uint16_t e8cu_f32_to_f16_sat(float f)
{
    int ovf;
    uint16_t h = e8cu_f32_to_f16(f, &ovf);
    return ovf ? (uint16_t)((h & 0x8000) | 0x7bff) : h;
}

/* Loads 8 consecutive elements of dtype at p (16-byte aligned) as fp32. */
__device__ __forceinline__ void e8cu_load8(const void *p, uint32_t dtype, float x[8])
{
    if (dtype == E8C_DTYPE_F32) {
        float4 a = __ldg((const float4 *)p), b = __ldg((const float4 *)p + 1);
        x[0] = a.x; x[1] = a.y; x[2] = a.z; x[3] = a.w;
        x[4] = b.x; x[5] = b.y; x[6] = b.z; x[7] = b.w;
    } else {
        uint4 r = __ldg((const uint4 *)p);
        uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
        for (int i = 0; i < 4; i++) {
            uint16_t lo = (uint16_t)(w[i] & 0xffffu), hi = (uint16_t)(w[i] >> 16);
            if (dtype == E8C_DTYPE_F16) { x[2 * i] = e8cu_f16_to_f32(lo); x[2 * i + 1] = e8cu_f16_to_f32(hi); }
            else { x[2 * i] = e8cu_bf16_to_f32(lo); x[2 * i + 1] = e8cu_bf16_to_f32(hi); }
        }
    }
}

/* Stores 8 fp32 values at p (16-byte aligned) in dtype with the decoder's rounding. fp16 and
 * bf16: pairs converted by one packed RNE conversion; a word where either half came out inf
 * or NaN (exponent field all ones: adding 1 to it carries into the half's sign bit) is redone
 * by the per-element rule, so the result is e8cu_f32_to_f16_sat's / e8cu_f32_to_bf16's for
 * every input (for finite inputs whose result is finite both are RNE of the same value; the
 * rules differ only on inf/NaN results: fp16 saturates, bf16's integer rule keeps NaN
 * payloads the hardware canonicalises). */
__device__ __forceinline__ void e8cu_store8(void *p, uint32_t dtype, const float x[8])
{
    if (dtype == E8C_DTYPE_F32) {
        ((float4 *)p)[0] = make_float4(x[0], x[1], x[2], x[3]);
        ((float4 *)p)[1] = make_float4(x[4], x[5], x[6], x[7]);
    } else if (dtype == E8C_DTYPE_F16) {
        uint32_t w[4], over = 0;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            __half2 h = __floats2half2_rn(x[2 * i], x[2 * i + 1]);
            w[i] = *(const uint32_t *)&h;
            over |= ((w[i] & 0x7c007c00u) + 0x04000400u) & 0x80008000u;
        }
        if (over) {
#pragma unroll
            for (int i = 0; i < 4; i++)
                w[i] = (uint32_t)e8cu_f32_to_f16_sat(x[2 * i]) | ((uint32_t)e8cu_f32_to_f16_sat(x[2 * i + 1]) << 16);
        }
        *(uint4 *)p = make_uint4(w[0], w[1], w[2], w[3]);
    } else {
        uint32_t w[4], over = 0;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            __nv_bfloat162 h = __floats2bfloat162_rn(x[2 * i], x[2 * i + 1]);
            w[i] = *(const uint32_t *)&h;
            over |= ((w[i] & 0x7f807f80u) + 0x00800080u) & 0x80008000u;
        }
        if (over) {
#pragma unroll
            for (int i = 0; i < 4; i++)
                w[i] = (uint32_t)e8cu_f32_to_bf16(x[2 * i]) | ((uint32_t)e8cu_f32_to_bf16(x[2 * i + 1]) << 16);
        }
        *(uint4 *)p = make_uint4(w[0], w[1], w[2], w[3]);
    }
}

/* ------------------------------------------------------------- E8 (FORMAT §4) */

/* The stored scale (FORMAT §4, e8c_scale_code): v = fp32(rms * step), rounded to nearest even
 * at 3 mantissa bits, kept as bf16 bits (low 4 bits zero); 0x0010 if that underflows. */
__device__ __forceinline__ uint16_t e8cu_scale_code(double rms, float step)
{
    float v = (float)(rms * (double)step);
    uint32_t u = __float_as_uint(v);
    u = (u + 0x7ffffu + ((u >> 20) & 1u)) & 0xfff00000u;
    uint16_t s = (uint16_t)(u >> 16);
    return s == 0 ? (uint16_t)0x0010 : s;
}

/* Conway & Sloane's nearest point of D8 to u, in parts: f gets rint(u); when the sum of f is
 * odd, the reference also rounds coordinate k (the first of the largest |u_i - f_i|) the other
 * way, f_k + sgn(d_k): that fix-up is returned as *kfix = k (-1 when the sum is even) and
 * *sfix = sgn(d_k), and applied by the caller to the candidate it keeps. Returns the squared
 * distance of the fixed point in the fixed tree order. Mirrors e8c_ref.c d8_cand, without
 * branches: a data-dependent branch (odd parity, then which coordinate) splits a warp into up
 * to 9 serialized paths. The fixed coordinate's residual is d_k - sgn(d_k), which is exactly
 * u_k - (f_k + sgn(d_k)) as the reference computes it: d_k = u_k - f_k is exact, so both round
 * the same real number once. sgn(d) is taken from d's sign bit: d = u - rint(u) is never -0
 * or NaN (u is finite and bounded, FORMAT §4), so that is exactly the reference's d >= 0 ? 1 : -1. */
__device__ __forceinline__ float e8cu_d8_cand(const float u[8], float f[8], int *kfix, float *sfix)
{
    /* the parity of the sum of the rounded coordinates; |u| < 2^24 (FORMAT §4 bounds t by
     * sqrt(n)/step), so the float sum of integers is exact, as the CPU's integer sum */
    float d[8];
#pragma unroll
    for (int i = 0; i < 8; i++) {
        f[i] = rintf(u[i]);
        d[i] = u[i] - f[i];
    }
    float sum = f[0];
#pragma unroll
    for (int i = 1; i < 8; i++) sum += f[i];
    const bool odd = (__float2int_rz(sum) & 1) != 0;
    int k = 0;
    float dk = fabsf(d[0]), ds = d[0];
#pragma unroll
    for (int i = 1; i < 8; i++) {
        const bool gt = fabsf(d[i]) > dk;
        k = gt ? i : k;
        dk = gt ? fabsf(d[i]) : dk;
        ds = gt ? d[i] : ds;
    }
    const float sg = __uint_as_float((__float_as_uint(ds) & 0x80000000u) | 0x3f800000u);
    const float da = ds - sg, ea = da * da;
    k = odd ? k : -1;
    float e[8];
#pragma unroll
    for (int i = 0; i < 8; i++) {
        const float ei = d[i] * d[i];
        e[i] = k == i ? ea : ei;
    }
    *kfix = k;
    *sfix = sg;
    return ((e[0] + e[1]) + (e[2] + e[3])) + ((e[4] + e[5]) + (e[6] + e[7]));
}

/* Nearest E8 point of t, written as points2 (the point times 2). Mirrors e8c_ref_e8_block;
 * the coset choice and the parity fix-up are selects, not branches. */
__device__ __forceinline__ void e8cu_e8_block(const float t[8], int16_t p2[8])
{
    float f[8], g[8], u[8];
    int k0, k1;
    float s0, s1;
    float dist0 = e8cu_d8_cand(t, f, &k0, &s0);
#pragma unroll
    for (int i = 0; i < 8; i++) u[i] = t[i] - 0.5f;
    float dist1 = e8cu_d8_cand(u, g, &k1, &s1);
    const int c = dist1 < dist0 ? 1 : 0;
    const int kc = c ? k1 : k0;
    const float sc = c ? s1 : s0;
#pragma unroll
    for (int i = 0; i < 8; i++) {
        float h = c ? g[i] : f[i];
        h = kc == i ? h + sc : h;
        p2[i] = (int16_t)(2 * __float2int_rz(h) + c);
    }
}

/* Division t = x / sf of a vector's 8-blocks by its scale (FORMAT §4), correctly rounded like
 * the IEEE division the reference does, with sf's reciprocal computed once per vector:
 * q0 = RN(x·r), rem = x - sf·q0 (exact, by fma), q = RN(q0 + rem·r), r = RN(1/sf). The
 * fast path is taken only where it is proven to round exactly: sf a normal number in
 * [2^-60, 2^60] with at most 4 significant bits (every stored scale has 3 mantissa bits), and
 * |q| in [2^-30, 2^30] (so x, rem and every product stay normal and rem is exact). Under those
 * bounds the result is a power-of-two scaling of the case x, sf in [1, 2), which
 * tests/gpu/e8cu_divcheck.c verifies exhaustively on the host (every fp32 x in [1, 2) against
 * the 8 possible scale significands). Every other element takes the IEEE division. */
struct e8cu_div {
    float sf, r;
    bool fast;
};

__device__ __forceinline__ e8cu_div e8cu_div_init(float sf)
{
    e8cu_div D;
    const uint32_t b = __float_as_uint(sf);
    D.sf = sf;
    D.r = __frcp_rn(sf);
    D.fast = (b & 0x000fffffu) == 0 && (b & 0x7fffffffu) >= 0x21800000u && (b & 0x7fffffffu) <= 0x5d800000u;
    return D;
}

__device__ __forceinline__ float e8cu_div_by(const e8cu_div &D, float x)
{
    const float q0 = __fmul_rn(x, D.r);
    const float rem = __fmaf_rn(-q0, D.sf, x);
    const float q = __fmaf_rn(rem, D.r, q0);
    const uint32_t a = __float_as_uint(q) & 0x7fffffffu;
    if (!D.fast || a < 0x30800000u || a > 0x4e800000u) return x / D.sf;
    return q;
}

/* ------------------------------------------------------- Hadamard (FORMAT §3) */

/* Per-thread constants of the Hadamard step, computed once per kernel: for each slot, log2 of
 * the size (in 8-blocks) of the BH block holding the thread's 8-block, that block's gain, and
 * the sign bits of rounds 0 and 1 for the thread's 8 elements (bit i set: multiply by -1,
 * done as a sign-bit flip, which is exactly x * -1.0f). */
template <int NB>
struct e8cu_hconst {
    int lg[NB];
    float gain[NB];
    uint32_t sg0[NB], sg1[NB];
};

template <int P, int NB>
__device__ __forceinline__ void e8cu_hconst_init(e8cu_hconst<NB> &hc, int lane, const e8cu_launch &L)
{
#pragma unroll
    for (int s = 0; s < NB; s++) {
        int b = lane + P * s;
        uint32_t m0 = 0, m1 = 0;
        hc.lg[s] = 0;
        if (b < (int)L.R) {
            hc.lg[s] = L.bh_log2[b];
            m0 = L.sgn_bits[0][b];
            m1 = L.pow2 ? 0u : L.sgn_bits[1][b];
        }
        hc.gain[s] = L.bh_gain[hc.lg[s]];
        hc.sg0[s] = m0;
        hc.sg1[s] = m1;
    }
}

/* x with its sign flipped where bit i of mask is set: the bit shifted to the top, then one
 * lop3 ((s & 0x80000000) ^ x; the compiler otherwise masks and flips in two instructions) */
__device__ __forceinline__ float e8cu_flip(float x, uint32_t mask, int i)
{
    uint32_t r;
    asm("lop3.b32 %0, %1, 0x80000000, %2, 0x6A;" : "=r"(r) : "r"(mask << (31 - i)), "r"(__float_as_uint(x)));
    return __uint_as_float(r);
}

/* BH on a group's vector: in-thread strides 1, 2, 4; cross-lane strides 8·m (m < P); for
 * NB = 2 the stride 8·P between slots; then the block gain. Lanes past the vector (b >= R)
 * hold zeros and take part in the shuffles only. FULL: the caller guarantees one BH block
 * of P·NB 8-blocks (a power-of-two head_dim of exactly P·NB 8-blocks: the fast kernels).
 * CGAIN (with FULL): the gain is gain_n, the caller's launch constant (e8cu_launch.gain_n), which
 * the compiler reads from the constant bank instead of keeping hc.gain in registers. */
template <int P, int NB, bool FULL = false, bool CGAIN = false>
__device__ __forceinline__ void e8cu_bh(float x[NB][8], int lane, unsigned gmask, const e8cu_hconst<NB> &hc,
                                        float gain_n = 0.0f)
{
#pragma unroll
    for (int s = 0; s < NB; s++) {
#pragma unroll
        for (int h = 1; h < 8; h <<= 1) {
#pragma unroll
            for (int i = 0; i < 8; i++) {
                if ((i & h) == 0) {
                    float a = x[s][i], c = x[s][i + h];
                    x[s][i] = a + c;
                    x[s][i + h] = a - c;
                }
            }
        }
    }
    /* cross-lane stride m: the lower lane of a pair gets x + p, the upper one p - x, which is
     * exactly p + (-x) (IEEE subtraction is addition of the negation; the sum commutes). Both
     * are one fma by ±1: x·(±1) is exact (signed zeros included), so fma(x, ±1, p) rounds the
     * same real sum once, like the add: one instruction, no sign flip, no select */
#pragma unroll
    for (int m = 1; m < P; m <<= 1) {
        const float sgn = (lane & m) ? -1.0f : 1.0f;
#pragma unroll
        for (int s = 0; s < NB; s++) {
            const bool on = FULL || (1 << hc.lg[s]) > m;
#pragma unroll
            for (int i = 0; i < 8; i++) {
                const float p = __shfl_xor_sync(gmask, x[s][i], m);
                const float y = __fmaf_rn(x[s][i], sgn, p);
                x[s][i] = on ? y : x[s][i];
            }
        }
    }
    if (NB == 2) {
        /* stride 8·P: only a block of more than P 8-blocks (n = 512) spans both slots */
        if (FULL || (1 << hc.lg[0]) > P) {
#pragma unroll
            for (int i = 0; i < 8; i++) {
                float a = x[0][i], c = x[NB - 1][i];
                x[0][i] = a + c;
                x[NB - 1][i] = a - c;
            }
        }
    }
#pragma unroll
    for (int s = 0; s < NB; s++) {
#pragma unroll
        for (int i = 0; i < 8; i++) x[s][i] = x[s][i] * (CGAIN ? gain_n : hc.gain[s]);
    }
}

/* Item of flat vector (raw = 0) or raw 8-block (raw = 1) index v: a division when every item
 * of the launch has the same count, else a binary search (items sorted by begin). */
__device__ __forceinline__ int e8cu_find_item(const e8cu_launch &L, uint64_t v, int raw)
{
    uint32_t per = raw ? L.raw_per_item : L.vec_per_item;
    if (per) return (int)((uint32_t)v / per);
    if (!raw && L.vb_shift != 0xffu) {
        /* the bucket table (e8cu_internal.h): one read, then rarely a step or two */
        const uint32_t v32 = (uint32_t)v;
        int i = L.vbucket[v32 >> L.vb_shift];
        while (i + 1 < (int)L.n_items && v32 >= (uint32_t)L.items[i + 1].vec_begin) i++;
        return i;
    }
    int lo = 0, hi = (int)L.n_items - 1;
    while (lo < hi) {
        int mid = (lo + hi + 1) >> 1;
        uint64_t b = raw ? L.items[mid].raw_begin : L.items[mid].vec_begin;
        if (b <= v) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

/* Head of local vector lv (< the item's vector count) of item it: lv / it.n_q, by a
 * multiply-high where the host set the magic numbers (e8cu_internal.h), else a division. */
__device__ __forceinline__ uint32_t e8cu_head_of(const e8cu_launch &L, const e8cu_kitem &it, uint32_t lv)
{
    if (L.vec_magic) return __umulhi(lv << 1, L.nq_magic) >> L.nq_shift;
    if (L.vb_shift != 0xffu) return __umulhi(lv << 1, it.nq_magic) >> it.nq_shift;
    return lv / it.n_q;
}

/* Raw loads of 8 elements (16 bytes, or 32 for fp32), then conversion to fp32: split so that
 * the next vector's load can be issued before the current one is processed. */
__device__ __forceinline__ void e8cu_ld8(const void *p, uint32_t dtype, uint4 r[2])
{
    r[0] = __ldg((const uint4 *)p);
    if (dtype == E8C_DTYPE_F32) r[1] = __ldg((const uint4 *)p + 1);
}

__device__ __forceinline__ void e8cu_cvt8(const uint4 r[2], uint32_t dtype, float x[8])
{
    if (dtype == E8C_DTYPE_F32) {
        x[0] = __uint_as_float(r[0].x); x[1] = __uint_as_float(r[0].y);
        x[2] = __uint_as_float(r[0].z); x[3] = __uint_as_float(r[0].w);
        x[4] = __uint_as_float(r[1].x); x[5] = __uint_as_float(r[1].y);
        x[6] = __uint_as_float(r[1].z); x[7] = __uint_as_float(r[1].w);
        return;
    }
    uint32_t w[4] = {r[0].x, r[0].y, r[0].z, r[0].w};
#pragma unroll
    for (int i = 0; i < 4; i++) {
        uint16_t lo = (uint16_t)(w[i] & 0xffffu), hi = (uint16_t)(w[i] >> 16);
        if (dtype == E8C_DTYPE_F16) { x[2 * i] = e8cu_f16_to_f32(lo); x[2 * i + 1] = e8cu_f16_to_f32(hi); }
        else { x[2 * i] = e8cu_bf16_to_f32(lo); x[2 * i + 1] = e8cu_bf16_to_f32(hi); }
    }
}

/* ----------------------------------------------------------------- RoPE (FORMAT §2.3) */

/* Removes (restore = 0) or re-applies (restore = 1) RoPE on a group's key vector, with
 * cos/sin rows c, s (rotary_dim/2 entries). Same products and sums as e8c_rope_remove /
 * e8c_rope_apply: ac = a*c, bs = b*s, bc = b*c, as = a*s; remove: a' = ac + bs, b' = bc - as;
 * apply: a' = ac - bs, b' = bc + as. Interleaved pairs live in one thread; split-half pairs
 * with rotary_dim/2 a multiple of 8 in lanes (or slots) rotary_dim/16 apart; any other
 * split-half goes through shared memory (smf: the group's n floats). FAST: the caller
 * guarantees the in-thread split-half case (NB = 2, rotary_dim = 16·P, see e8cu_fast_ok), and
 * the other cases are compiled out (their registers are what limits the kernels' occupancy). */
template <int P, int NB, bool FAST>
__device__ __forceinline__ void e8cu_rope(float x[NB][8], int lane, int gbase, unsigned gmask,
                                          const e8cu_launch &L, const float *c, const float *s,
                                          int restore, float *smf)
{
    const int hr = (int)L.rotary_dim / 2;
    if (!FAST && L.rope_layout == E8C_ROPE_LAYOUT_INTERLEAVED) {
#pragma unroll
        for (int sl = 0; sl < NB; sl++) {
            int b = lane + P * sl;
#pragma unroll
            for (int p = 0; p < 4; p++) {
                int i = 4 * b + p;
                if (i < hr) {
                    float a = x[sl][2 * p], bb = x[sl][2 * p + 1];
                    float ci = __ldg(c + i), si = __ldg(s + i);
                    float ac = a * ci, bs = bb * si, bc = bb * ci, as = a * si;
                    x[sl][2 * p] = restore ? ac - bs : ac + bs;
                    x[sl][2 * p + 1] = restore ? bc + as : bc - as;
                }
            }
        }
        return;
    }
    if (FAST || (NB == 2 && hr == 8 * P)) {
        /* pairs within a thread: slot 0 holds a = x[i], slot 1 its partner b = x[i + hr]
         * (head_dim 128 with P = 8: the common case); every lane has both halves */
        const int i0 = 8 * lane;
        float4 c0 = __ldg((const float4 *)(c + i0)), c1 = __ldg((const float4 *)(c + i0 + 4));
        float4 s0 = __ldg((const float4 *)(s + i0)), s1 = __ldg((const float4 *)(s + i0 + 4));
        const float cc[8] = {c0.x, c0.y, c0.z, c0.w, c1.x, c1.y, c1.z, c1.w};
        const float ss[8] = {s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w};
#pragma unroll
        for (int i = 0; i < 8; i++) {
            float a = x[0][i], bb = x[NB - 1][i], ci = cc[i], si = ss[i];
            float ac = a * ci, bs = bb * si, bc = bb * ci, as = a * si;
            x[0][i] = restore ? ac - bs : ac + bs;
            x[NB - 1][i] = restore ? bc + as : bc - as;
        }
        return;
    }
    if ((hr & 7) == 0) {
        /* gather every slot's partner values first, then rotate (slots change in place) */
        const int hb = hr / 8;
        float px[NB][8];
        int role[NB], pbk[NB];
#pragma unroll
        for (int sl = 0; sl < NB; sl++) {
            int b = lane + P * sl;
            role[sl] = b < hb ? 0 : (b < 2 * hb ? 1 : 2); /* a of a pair, b of a pair, none */
            int pb = role[sl] == 0 ? b + hb : (role[sl] == 1 ? b - hb : b);
            pbk[sl] = pb;
            int pl = pb % P, ps = pb / P;
#pragma unroll
            for (int i = 0; i < 8; i++) {
                float v0 = __shfl_sync(gmask, x[0][i], gbase + pl);
                float v1 = NB == 2 ? __shfl_sync(gmask, x[NB - 1][i], gbase + pl) : v0;
                px[sl][i] = ps == 0 ? v0 : v1;
            }
        }
#pragma unroll
        for (int sl = 0; sl < NB; sl++) {
            if (role[sl] == 2) continue;
            int b = lane + P * sl;
            int i0 = 8 * (role[sl] == 0 ? b : pbk[sl]);
            float4 c0 = __ldg((const float4 *)(c + i0)), c1 = __ldg((const float4 *)(c + i0 + 4));
            float4 s0 = __ldg((const float4 *)(s + i0)), s1 = __ldg((const float4 *)(s + i0 + 4));
            const float cc[8] = {c0.x, c0.y, c0.z, c0.w, c1.x, c1.y, c1.z, c1.w};
            const float ss[8] = {s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w};
#pragma unroll
            for (int i = 0; i < 8; i++) {
                float ci = cc[i], si = ss[i];
                float a = role[sl] == 0 ? x[sl][i] : px[sl][i];
                float bb = role[sl] == 0 ? px[sl][i] : x[sl][i];
                float ac = a * ci, bs = bb * si, bc = bb * ci, as = a * si;
                if (role[sl] == 0) x[sl][i] = restore ? ac - bs : ac + bs;
                else x[sl][i] = restore ? bc + as : bc - as;
            }
        }
        return;
    }
    /* general split-half through shared memory */
#pragma unroll
    for (int sl = 0; sl < NB; sl++) {
        int b = lane + P * sl;
        if (b < (int)L.R) {
#pragma unroll
            for (int i = 0; i < 8; i++) smf[8 * b + i] = x[sl][i];
        }
    }
    __syncwarp(gmask);
#pragma unroll
    for (int sl = 0; sl < NB; sl++) {
        int b = lane + P * sl;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int e = 8 * b + i;
            if (e < hr) {
                float a = x[sl][i], bb = smf[e + hr];
                float ci = __ldg(c + e), si = __ldg(s + e);
                float ac = a * ci, bs = bb * si;
                x[sl][i] = restore ? ac - bs : ac + bs;
            } else if (e < 2 * hr) {
                float a = smf[e - hr], bb = x[sl][i];
                float ci = __ldg(c + e - hr), si = __ldg(s + e - hr);
                float bc = bb * ci, as = a * si;
                x[sl][i] = restore ? bc + as : bc - as;
            }
        }
    }
    __syncwarp(gmask);
}

/* Kernel residency target (blocks of 256 threads per multiprocessor; the compiler caps
 * registers to fit): `dflt`, or 2..4 from the environment variable `name` (a tuning knob for
 * bench-gpu; results are identical for every value). */
static inline int e8cu_min_blocks(const char *name, int dflt)
{
    const char *v = getenv(name);
    int b = v ? atoi(v) : dflt;
    return b >= 2 && b <= 4 ? b : dflt;
}

/* The fast kernels (template FAST = true) cover launches with a power-of-two head_dim (one
 * Hadamard round) whose keys carry no RoPE or split-half RoPE with pairs in one thread
 * (two 8-blocks per lane, rotary_dim = 16·P); every other launch takes the general kernels.
 * E8CU_FAST=0 in the environment selects the general kernels always (results are identical). */
static inline bool e8cu_fast_ok(const e8cu_launch *L, int P, int NB)
{
    const char *v = getenv("E8CU_FAST");
    if ((v && *v == '0') || !L->pow2 || NB != 2 || L->R != 2u * (uint32_t)P) return false;
    if (!L->rope_on) return true;
    return L->rope_layout != E8C_ROPE_LAYOUT_INTERLEAVED && L->rotary_dim == 16u * (uint32_t)P;
}

#endif
