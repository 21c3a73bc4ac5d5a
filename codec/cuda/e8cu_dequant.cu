/* e8cu_dequant.cu: the dequantization kernels (decode side) and their launcher.
 *
 * e8cu_dequantize_kernel: one group of P lanes per head vector, grid-stride over every
 * quantized vector of the launch. FORMAT.md §4 decoder: y = sf * (0.5 * points2), inverse
 * Hadamard (power of two: sign0 ⊙ BH(y); otherwise BH, sign1 and the inverse permutation,
 * BH, sign0), RoPE restore on keys at the stored or new positions, output dtype (§1).
 * e8cu_unraw_kernel: raw-kept tokens back into the output tensor; keys restored at new
 * positions are re-rotated: RoPE removed at the stored positions, applied at the new ones
 * (the CPU decoder's order). */
#include "codec/cuda/e8cu_device.cuh"

#define E8CU_THREADS 256

template <int P, int NB, int MB, bool FAST>
__global__ void __launch_bounds__(E8CU_THREADS, MB)
e8cu_dequantize_kernel(const __grid_constant__ e8cu_launch L)
{
    extern __shared__ double e8cu_smem[];
    const int tid = threadIdx.x, wl = tid & 31, lane = tid & (P - 1);
    const int gbase = wl & ~(P - 1);
    const unsigned gmask = P == 32 ? 0xffffffffu : (((1u << P) - 1u) << gbase);
    const int gpb = E8CU_THREADS / P, grp = tid / P;
    float *smf = (float *)(e8cu_smem + (size_t)grp * (P * NB * 8));
    const int n = (int)L.head_dim, R = (int)L.R;
    e8cu_hconst<NB> hc;
    e8cu_hconst_init<P, NB>(hc, lane, L);
    const uint64_t stride = (uint64_t)gridDim.x * gpb;
    const size_t esz = L.out_dtype == E8C_DTYPE_F32 ? 4 : 2;

    /* software pipeline: the next vector's points and scale are requested first */
    uint64_t v = (uint64_t)blockIdx.x * gpb + grp;
    uint4 np[NB];
    uint16_t nsc = 0;
    int nitem = 0;
    uint32_t nvi = 0; /* h * n_q + j: the vector's index in the qbatch arrays */
    if (v < L.n_vec) {
        nitem = e8cu_find_item(L, v, 0);
        const e8cu_kitem &it = L.items[nitem];
        nvi = (uint32_t)(v - it.vec_begin);
        nsc = ((const uint16_t *)(L.q + it.off_scales))[nvi];
        const int16_t *p2 = (const int16_t *)(L.q + it.off_points2) + (size_t)nvi * n;
#pragma unroll
        for (int s = 0; s < NB; s++)
            if (lane + P * s < R) np[s] = __ldg((const uint4 *)(p2 + 8 * (lane + P * s)));
    }
    for (; v < L.n_vec; v += stride) {
        const e8cu_kitem &it = L.items[nitem];
        const uint32_t vi = nvi;
        const uint16_t sc = nsc;
        uint4 cp[NB];
#pragma unroll
        for (int s = 0; s < NB; s++) cp[s] = np[s];
        if (v + stride < L.n_vec) {
            nitem = e8cu_find_item(L, v + stride, 0);
            const e8cu_kitem &nt = L.items[nitem];
            nvi = (uint32_t)(v + stride - nt.vec_begin);
            nsc = ((const uint16_t *)(L.q + nt.off_scales))[nvi];
            const int16_t *p2 = (const int16_t *)(L.q + nt.off_points2) + (size_t)nvi * n;
#pragma unroll
            for (int s = 0; s < NB; s++)
                if (lane + P * s < R) np[s] = __ldg((const uint4 *)(p2 + 8 * (lane + P * s)));
        }
        uint32_t h = e8cu_head_of(L, it, vi), j = vi - h * it.n_q;
        uint32_t tok = it.n_raw_head + j;
        float sf = e8cu_bf16_to_f32(sc);
        float x[NB][8];
#pragma unroll
        for (int s = 0; s < NB; s++) {
            int b = lane + P * s;
            if (b < R) {
                uint32_t ww[4] = {cp[s].x, cp[s].y, cp[s].z, cp[s].w};
#pragma unroll
                for (int i = 0; i < 4; i++) {
                    x[s][2 * i] = sf * (0.5f * (float)(int16_t)(ww[i] & 0xffffu));
                    x[s][2 * i + 1] = sf * (0.5f * (float)(int16_t)(ww[i] >> 16));
                }
            } else {
#pragma unroll
                for (int i = 0; i < 8; i++) x[s][i] = 0.0f;
            }
        }
        e8cu_bh<P, NB, FAST>(x, lane, gmask, hc);
        if (!FAST && !L.pow2) {
            /* tmp[perm[k]] = y[k] * sign1[k], perm[k] = (k mod R)*8 + k div R */
#pragma unroll
            for (int s = 0; s < NB; s++) {
                int b = lane + P * s;
                if (b < R) {
#pragma unroll
                    for (int i = 0; i < 8; i++) {
                        int k = 8 * b + i;
                        smf[(k % R) * 8 + k / R] = e8cu_flip(x[s][i], hc.sg1[s], i);
                    }
                }
            }
            __syncwarp(gmask);
#pragma unroll
            for (int s = 0; s < NB; s++) {
                int b = lane + P * s;
                if (b < R) {
#pragma unroll
                    for (int i = 0; i < 8; i++) x[s][i] = smf[8 * b + i];
                }
            }
            __syncwarp(gmask);
            e8cu_bh<P, NB, FAST>(x, lane, gmask, hc);
        }
#pragma unroll
        for (int s = 0; s < NB; s++)
#pragma unroll
            for (int i = 0; i < 8; i++) x[s][i] = e8cu_flip(x[s][i], hc.sg0[s], i);
        if (L.rope_on && it.kind == E8C_K) {
            size_t row = (size_t)(it.rope_row + tok) * (L.rotary_dim / 2);
            e8cu_rope<P, NB, FAST>(x, lane, gbase, gmask, L, L.rope_cos + row, L.rope_sin + row, 1, smf);
        }
        char *dst = (char *)it.src + ((int64_t)h * it.stride_head + (int64_t)tok * it.stride_token) * (int64_t)esz;
#pragma unroll
        for (int s = 0; s < NB; s++) {
            int b = lane + P * s;
            if (b < R) e8cu_store8(dst + (size_t)b * 8 * esz, L.out_dtype, x[s]);
        }
    }
}

/* Raw-kept tokens into the output: one group of 8 lanes... kept simple: one thread per
 * raw vector when keys must be re-rotated (pairs span the vector), else one per 8-block. */
__global__ void __launch_bounds__(E8CU_THREADS) e8cu_unraw_kernel(const __grid_constant__ e8cu_launch L)
{
    const uint64_t step = (uint64_t)gridDim.x * blockDim.x;
    const size_t ssz = L.src_dtype == E8C_DTYPE_F32 ? 4 : 2;
    const size_t osz = L.out_dtype == E8C_DTYPE_F32 ? 4 : 2;
    for (uint64_t g = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; g < L.n_raw_blocks; g += step) {
        const e8cu_kitem &it = L.items[e8cu_find_item(L, g, 1)];
        uint64_t lb = g - it.raw_begin;
        uint32_t b = (uint32_t)(lb % L.R);
        uint64_t rv = lb / L.R;
        uint32_t h = (uint32_t)(rv / it.n_raw), r = (uint32_t)(rv % it.n_raw);
        uint32_t n_tail = it.n_raw - it.n_raw_head;
        uint32_t tok = r < it.n_raw_head ? r : it.n_tokens - n_tail + (r - it.n_raw_head);
        const char *src = (const char *)(L.q + it.off_raw) + (rv * L.head_dim + (size_t)b * 8) * ssz;
        char *dst = (char *)it.src + ((int64_t)h * it.stride_head + (int64_t)tok * it.stride_token) * (int64_t)osz +
                    (size_t)b * 8 * osz;
        if (L.rope_cos2 && it.kind == E8C_K) {
            /* re-rotation: a pair may span blocks; each thread recomputes its 8 elements
             * from the pair partners it needs (reads only; each writes only its own block) */
            const int hr = (int)L.rotary_dim / 2;
            const float *c1 = L.rope_cos2 + (size_t)(it.rope_row2 + tok) * hr;
            const float *s1 = L.rope_sin2 + (size_t)(it.rope_row2 + tok) * hr;
            const float *c2 = L.rope_cos + (size_t)(it.rope_row + tok) * hr;
            const float *s2 = L.rope_sin + (size_t)(it.rope_row + tok) * hr;
            const char *vec = (const char *)(L.q + it.off_raw) + rv * L.head_dim * ssz;
            float y[8];
            e8cu_load8(src, L.src_dtype, y);
#pragma unroll
            for (int i = 0; i < 8; i++) {
                int e = 8 * (int)b + i, pa, pbi;
                if (L.rope_layout == E8C_ROPE_LAYOUT_INTERLEAVED) {
                    if (e >= 2 * hr) continue;
                    pa = e & ~1; pbi = pa + 1;
                } else {
                    if (e >= 2 * hr) continue;
                    pa = e < hr ? e : e - hr; pbi = pa + hr;
                }
                int pi = L.rope_layout == E8C_ROPE_LAYOUT_INTERLEAVED ? pa / 2 : pa;
                float a, bb;
                if (L.src_dtype == E8C_DTYPE_F32) { a = ((const float *)vec)[pa]; bb = ((const float *)vec)[pbi]; }
                else if (L.src_dtype == E8C_DTYPE_F16) { a = e8cu_f16_to_f32(((const uint16_t *)vec)[pa]); bb = e8cu_f16_to_f32(((const uint16_t *)vec)[pbi]); }
                else { a = e8cu_bf16_to_f32(((const uint16_t *)vec)[pa]); bb = e8cu_bf16_to_f32(((const uint16_t *)vec)[pbi]); }
                /* remove at the stored position */
                float ac = a * c1[pi], bs = bb * s1[pi], bc = bb * c1[pi], as = a * s1[pi];
                float a1 = ac + bs, b1 = bc - as;
                /* apply at the new position */
                float ac2 = a1 * c2[pi], bs2 = b1 * s2[pi], bc2 = b1 * c2[pi], as2 = a1 * s2[pi];
                y[i] = e == pa ? ac2 - bs2 : bc2 + as2;
            }
            e8cu_store8(dst, L.out_dtype, y);
        } else if (L.out_dtype == L.src_dtype) {
            if (ssz == 4) {
                ((uint4 *)dst)[0] = ((const uint4 *)src)[0];
                ((uint4 *)dst)[1] = ((const uint4 *)src)[1];
            } else {
                *(uint4 *)dst = *(const uint4 *)src;
            }
        } else {
            float y[8];
            e8cu_load8(src, L.src_dtype, y);
            e8cu_store8(dst, L.out_dtype, y);
        }
    }
}

template <int P, int NB, int MB, bool FAST = false>
static cudaError_t e8cu_launch_dq(const e8cu_launch *L, cudaStream_t stream, int sms)
{
    size_t smem = (size_t)(E8CU_THREADS / P) * P * NB * 8 * sizeof(double);
    uint64_t gpb = E8CU_THREADS / P;
    uint64_t need = (L->n_vec + gpb - 1) / gpb;
    unsigned grid = (unsigned)(need < (uint64_t)sms * MB ? need : (uint64_t)sms * MB);
    e8cu_dequantize_kernel<P, NB, MB, FAST><<<grid, E8CU_THREADS, smem, stream>>>(*L);
    return cudaGetLastError();
}

/* Two 8-blocks per lane (NB = 2): the fast kernel where e8cu_fast_ok, else the general one.
 * Residency: E8CU_FAST_DQ_MINBLOCKS (fast) or E8CU_WIDE_MINBLOCKS (general), 2..4 blocks per SM. */
template <int P>
static cudaError_t e8cu_launch_dq_wide(const e8cu_launch *L, cudaStream_t stream, int sms)
{
    if (e8cu_fast_ok(L, P, 2)) {
        int mb = e8cu_min_blocks("E8CU_FAST_DQ_MINBLOCKS", 3);
        return mb == 2 ? e8cu_launch_dq<P, 2, 2, true>(L, stream, sms)
             : mb == 3 ? e8cu_launch_dq<P, 2, 3, true>(L, stream, sms) : e8cu_launch_dq<P, 2, 4, true>(L, stream, sms);
    }
    return e8cu_min_blocks("E8CU_WIDE_MINBLOCKS", 2) == 2 ? e8cu_launch_dq<P, 2, 2>(L, stream, sms) : e8cu_launch_dq<P, 2, 3>(L, stream, sms);
}

extern "C" int e8cu_launch_dequantize(const e8cu_launch *L, cudaStream_t stream)
{
    int dev = 0, sms = 132;
    if (cudaGetDevice(&dev) == cudaSuccess)
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    cudaError_t e = cudaSuccess;
    if (L->n_vec > 0) {
        /* lanes per vector: two 8-blocks per lane (NB = 2) halves the per-vector work every
         * lane repeats (locating, scale) and the shuffle stages; E8CU_NARROW=1 selects one
         * 8-block per lane (a tuning knob; results are identical) */
        uint32_t R = L->R;
        int mb = e8cu_min_blocks("E8CU_DQ_MINBLOCKS", 4);
        const char *nw = getenv("E8CU_NARROW");
        if (nw && *nw == '1' && R <= 32) {
            e = R <= 8 ? e8cu_launch_dq<8, 1, 4>(L, stream, sms)
              : mb == 2 ? (R <= 16 ? e8cu_launch_dq<16, 1, 2>(L, stream, sms) : e8cu_launch_dq<32, 1, 2>(L, stream, sms))
              : mb == 3 ? (R <= 16 ? e8cu_launch_dq<16, 1, 3>(L, stream, sms) : e8cu_launch_dq<32, 1, 3>(L, stream, sms))
                        : (R <= 16 ? e8cu_launch_dq<16, 1, 4>(L, stream, sms) : e8cu_launch_dq<32, 1, 3>(L, stream, sms));
        } else if (R <= 8) e = e8cu_launch_dq<8, 1, 4>(L, stream, sms);
        else if (R > 32) e = e8cu_fast_ok(L, 32, 2) ? e8cu_launch_dq<32, 2, 2, true>(L, stream, sms) : e8cu_launch_dq<32, 2, 2>(L, stream, sms);
        else e = R <= 16 ? e8cu_launch_dq_wide<8>(L, stream, sms) : e8cu_launch_dq_wide<16>(L, stream, sms);
        if (e != cudaSuccess) return (int)e;
    }
    if (L->n_raw_blocks > 0) {
        uint64_t need = (L->n_raw_blocks + E8CU_THREADS - 1) / E8CU_THREADS;
        unsigned grid = (unsigned)(need < (uint64_t)sms * 8 ? need : (uint64_t)sms * 8);
        e8cu_unraw_kernel<<<grid, E8CU_THREADS, 0, stream>>>(*L);
        e = cudaGetLastError();
    }
    return (int)e;
}
