/* e8cu_quant.cu: the quantization kernels (encode side) and their launcher.
 *
 * e8cu_quantize_kernel: one group of P lanes per head vector (see e8cu_device.cuh), a
 * grid-stride loop over every quantized vector of the launch (all items: layers, K/V, chunks,
 * heads, tokens). Per vector, FORMAT.md §1-§4 in order: load and check (finite, |x| <= 2^64),
 * RoPE removal (keys), sign0, BH, [permutation, sign1, BH], sum of squares in f64 (per lane l
 * of 8, sequentially over j = l + 8k, through shared memory, then the fixed tree), the
 * scale code, E8 nearest point per 8-block, points2 and scale stores.
 * e8cu_raw_kernel: raw-kept tokens (sinks, recent window, protected layers): checked and
 * stored in the source dtype, bits copied when the input is already that dtype.
 * Bad input (NaN/inf; |x| > 2^64 or a raw value that overflows the source dtype) lowers the
 * item's status word to the key of the first bad element in the CPU path's scan order (see
 * e8cu_batch.c); the host turns it into E8C_ERR_NONFINITE / _RANGE. */
#include "codec/cuda/e8cu_device.cuh"

#define E8CU_THREADS 256
#define E8CU_MAX_ABS 18446744073709551616.0f /* 2^64 */

__device__ __forceinline__ int e8cu_check(float x)
{
    if (!isfinite(x)) return 1;
    return fabsf(x) > E8CU_MAX_ABS ? 2 : 0;
}

/* Records a bad input element: the status word keeps the smallest key (see e8cu_batch.c). */
__device__ __forceinline__ void e8cu_report(const e8cu_launch &L, const e8cu_kitem &it, uint64_t phase,
                                            uint64_t element, int code)
{
    unsigned long long key = (phase << 62) | (element << 1) | (uint64_t)(code == 2 ? 1 : 0);
    atomicMin((unsigned long long *)(L.q + it.off_status), key);
}

/* Where vector v of the launch lives: its item, head, quantized index and source address. */
struct e8cu_vec {
    int item;
    uint32_t h, j, tok;
    const char *src;
};

__device__ __forceinline__ e8cu_vec e8cu_locate(const e8cu_launch &L, uint64_t v)
{
    e8cu_vec r;
    r.item = e8cu_find_item(L, v, 0);
    const e8cu_kitem &it = L.items[r.item];
    uint32_t lv = (uint32_t)(v - it.vec_begin);
    r.h = lv / it.n_q;
    r.j = lv - r.h * it.n_q;
    r.tok = it.n_raw_head + r.j;
    int64_t esz = it.dtype == E8C_DTYPE_F32 ? 4 : 2;
    r.src = (const char *)it.src + ((int64_t)r.h * it.stride_head + (int64_t)r.tok * it.stride_token) * esz;
    return r;
}

template <int P, int NB, int MB, bool FAST>
__global__ void __launch_bounds__(E8CU_THREADS, MB)
e8cu_quantize_kernel(const __grid_constant__ e8cu_launch L)
{
    extern __shared__ double e8cu_smem[];
    const int tid = threadIdx.x, wl = tid & 31, lane = tid & (P - 1);
    const int gbase = wl & ~(P - 1);
    const unsigned gmask = P == 32 ? 0xffffffffu : (((1u << P) - 1u) << gbase);
    const int gpb = E8CU_THREADS / P, grp = tid / P;
    double *sm = e8cu_smem + (size_t)grp * (P * NB * 8);
    float *smf = (float *)sm;
    const int n = (int)L.head_dim, R = (int)L.R;
    const double inv_n = 1.0 / (double)n;
    e8cu_hconst<NB> hc;
    e8cu_hconst_init<P, NB>(hc, lane, L);
    const uint64_t stride = (uint64_t)gridDim.x * gpb;

    /* software pipeline: the next vector's bytes are requested before this one is processed */
    uint64_t v = (uint64_t)blockIdx.x * gpb + grp;
    uint4 nraw[NB][2];
    e8cu_vec nv = {0, 0, 0, 0, nullptr};
    if (v < L.n_vec) {
        nv = e8cu_locate(L, v);
#pragma unroll
        for (int s = 0; s < NB; s++)
            if (lane + P * s < R)
                e8cu_ld8(nv.src + (size_t)(lane + P * s) * 8 * (L.items[nv.item].dtype == E8C_DTYPE_F32 ? 4 : 2),
                         L.items[nv.item].dtype, nraw[s]);
    }
    for (; v < L.n_vec; v += stride) {
        const e8cu_vec cv = nv;
        const e8cu_kitem &it = L.items[cv.item];
        float x[NB][8];
        int bad = 0;
#pragma unroll
        for (int s = 0; s < NB; s++) {
            if (lane + P * s < R) {
                e8cu_cvt8(nraw[s], it.dtype, x[s]);
#pragma unroll
                for (int i = 0; i < 8; i++) bad |= !(fabsf(x[s][i]) <= E8CU_MAX_ABS); /* NaN, inf, > 2^64 */
            } else {
#pragma unroll
                for (int i = 0; i < 8; i++) x[s][i] = 0.0f;
            }
        }
        if (v + stride < L.n_vec) {
            nv = e8cu_locate(L, v + stride);
            const e8cu_kitem &nt = L.items[nv.item];
#pragma unroll
            for (int s = 0; s < NB; s++)
                if (lane + P * s < R)
                    e8cu_ld8(nv.src + (size_t)(lane + P * s) * 8 * (nt.dtype == E8C_DTYPE_F32 ? 4 : 2), nt.dtype,
                             nraw[s]);
        }
        if (bad) {
#pragma unroll
            for (int s = NB - 1; s >= 0; s--)
#pragma unroll
                for (int i = 7; i >= 0; i--) {
                    int c = e8cu_check(x[s][i]);
                    if (c) e8cu_report(L, it, 1, ((uint64_t)cv.h * it.n_q + cv.j) * n + 8 * (lane + P * s) + i, c);
                }
        }

        if (L.rope_on && it.kind == E8C_K) {
            size_t row = (size_t)(it.rope_row + cv.tok) * (L.rotary_dim / 2);
            e8cu_rope<P, NB, FAST>(x, lane, gbase, gmask, L, L.rope_cos + row, L.rope_sin + row, 0, smf);
        }

        /* Hadamard, FORMAT §3 */
#pragma unroll
        for (int s = 0; s < NB; s++)
#pragma unroll
            for (int i = 0; i < 8; i++) x[s][i] = e8cu_flip(x[s][i], hc.sg0[s], i);
        e8cu_bh<P, NB, FAST>(x, lane, gmask, hc);
        if (!FAST && !L.pow2) {
#pragma unroll
            for (int s = 0; s < NB; s++) {
                int b = lane + P * s;
                if (b < R) {
#pragma unroll
                    for (int i = 0; i < 8; i++) smf[8 * b + i] = x[s][i];
                }
            }
            __syncwarp(gmask);
#pragma unroll
            for (int s = 0; s < NB; s++) {
                int b = lane + P * s;
                if (b < R) {
#pragma unroll
                    for (int i = 0; i < 8; i++) {
                        int k = 8 * b + i;
                        x[s][i] = e8cu_flip(smf[(k % R) * 8 + k / R], hc.sg1[s], i);
                    }
                }
            }
            __syncwarp(gmask);
            e8cu_bh<P, NB, FAST>(x, lane, gmask, hc);
        }

        /* scale, FORMAT §4: A[l] = sum over j = l + 8k ascending, then the fixed tree */
#pragma unroll
        for (int s = 0; s < NB; s++) {
            int b = lane + P * s;
            if (b < R) {
                double2 *d2 = (double2 *)(sm + 8 * b);
#pragma unroll
                for (int i = 0; i < 8; i += 2)
                    d2[i / 2] = make_double2((double)x[s][i] * (double)x[s][i],
                                             (double)x[s][i + 1] * (double)x[s][i + 1]);
            }
        }
        __syncwarp(gmask);
        double A = 0.0;
        if (lane < 8)
            for (int k = 0; k < R; k++) A = A + sm[8 * k + lane];
        A = A + __shfl_xor_sync(gmask, A, 4);
        A = A + __shfl_xor_sync(gmask, A, 2);
        A = A + __shfl_xor_sync(gmask, A, 1);
        double T = __shfl_sync(gmask, A, gbase);
        __syncwarp(gmask);
        uint16_t sc = 0;
        if (T != 0.0) {
            /* T / n: for a power-of-two n the exact scaling by 1/n (T >= 2^-298, no underflow) */
            double rms = sqrt(L.pow2 ? T * inv_n : T / (double)n);
            float step = it.kind == E8C_K ? L.k_step : L.v_step;
            sc = e8cu_scale_code(rms, step);
        }
        const e8cu_div D = e8cu_div_init(e8cu_bf16_to_f32(sc));

        int16_t *p2 = (int16_t *)(L.q + it.off_points2) + ((size_t)cv.h * it.n_q + cv.j) * n;
#pragma unroll
        for (int s = 0; s < NB; s++) {
            int b = lane + P * s;
            if (b < R) {
                int16_t pt[8];
                if (sc == 0) {
#pragma unroll
                    for (int i = 0; i < 8; i++) pt[i] = 0;
                } else {
                    float t[8];
#pragma unroll
                    for (int i = 0; i < 8; i++) t[i] = e8cu_div_by(D, x[s][i]);
                    e8cu_e8_block(t, pt);
                }
                uint4 w;
                w.x = (uint32_t)(uint16_t)pt[0] | ((uint32_t)(uint16_t)pt[1] << 16);
                w.y = (uint32_t)(uint16_t)pt[2] | ((uint32_t)(uint16_t)pt[3] << 16);
                w.z = (uint32_t)(uint16_t)pt[4] | ((uint32_t)(uint16_t)pt[5] << 16);
                w.w = (uint32_t)(uint16_t)pt[6] | ((uint32_t)(uint16_t)pt[7] << 16);
                *(uint4 *)(p2 + 8 * b) = w;
            }
        }
        if (lane == 0) ((uint16_t *)(L.q + it.off_scales))[(size_t)cv.h * it.n_q + cv.j] = sc;
    }
}

/* Raw-kept tokens: one thread per 8-block. The raw array is [heads][n_raw][n] in the source
 * dtype: head tokens (0 .. n_raw_head-1), then tail tokens (n_tokens - n_raw_tail ..). */
__global__ void __launch_bounds__(E8CU_THREADS) e8cu_raw_kernel(const __grid_constant__ e8cu_launch L)
{
    const uint64_t step = (uint64_t)gridDim.x * blockDim.x;
    for (uint64_t g = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; g < L.n_raw_blocks; g += step) {
        const e8cu_kitem &it = L.items[e8cu_find_item(L, g, 1)];
        uint64_t lb = g - it.raw_begin;
        uint32_t b = (uint32_t)(lb % L.R);
        uint64_t rv = lb / L.R; /* raw vector: head * n_raw + r */
        uint32_t h = (uint32_t)(rv / it.n_raw), r = (uint32_t)(rv % it.n_raw);
        uint32_t n_tail = it.n_raw - it.n_raw_head;
        uint32_t tok = r < it.n_raw_head ? r : it.n_tokens - n_tail + (r - it.n_raw_head);
        size_t esz = it.dtype == E8C_DTYPE_F32 ? 4 : 2;
        const char *src = (const char *)it.src +
                          ((int64_t)h * it.stride_head + (int64_t)tok * it.stride_token) * (int64_t)esz +
                          (size_t)b * 8 * esz;
        float x[8];
        e8cu_load8(src, it.dtype, x);
        int code[8];
#pragma unroll
        for (int i = 0; i < 8; i++) code[i] = e8cu_check(x[i]);
        size_t ssz = L.src_dtype == E8C_DTYPE_F32 ? 4 : 2;
        char *dst = (char *)(L.q + it.off_raw) + (rv * L.head_dim + (size_t)b * 8) * ssz;
        if (it.dtype == L.src_dtype) {
            if (ssz == 4) {
                ((uint4 *)dst)[0] = __ldg((const uint4 *)src);
                ((uint4 *)dst)[1] = __ldg((const uint4 *)src + 1);
            } else {
                *(uint4 *)dst = __ldg((const uint4 *)src);
            }
        } else if (L.src_dtype == E8C_DTYPE_F32) {
            ((float4 *)dst)[0] = make_float4(x[0], x[1], x[2], x[3]);
            ((float4 *)dst)[1] = make_float4(x[4], x[5], x[6], x[7]);
        } else {
            uint32_t w[4];
#pragma unroll
            for (int i = 0; i < 4; i++) {
                uint16_t lo, hi;
                if (L.src_dtype == E8C_DTYPE_F16) {
                    int o1, o2;
                    lo = e8cu_f32_to_f16(x[2 * i], &o1);
                    hi = e8cu_f32_to_f16(x[2 * i + 1], &o2);
                    if (o1 && !code[2 * i]) code[2 * i] = 2;
                    if (o2 && !code[2 * i + 1]) code[2 * i + 1] = 2;
                } else {
                    lo = e8cu_f32_to_bf16(x[2 * i]);
                    hi = e8cu_f32_to_bf16(x[2 * i + 1]);
                    if ((lo & 0x7f80) == 0x7f80 && !code[2 * i]) code[2 * i] = 2;
                    if ((hi & 0x7f80) == 0x7f80 && !code[2 * i + 1]) code[2 * i + 1] = 2;
                }
                w[i] = (uint32_t)lo | ((uint32_t)hi << 16);
            }
            *(uint4 *)dst = make_uint4(w[0], w[1], w[2], w[3]);
        }
#pragma unroll
        for (int i = 7; i >= 0; i--)
            if (code[i]) e8cu_report(L, it, 0, ((uint64_t)h * it.n_tokens + tok) * L.head_dim + 8 * b + i, code[i]);
    }
}

template <int P, int NB, int MB, bool FAST = false>
static cudaError_t e8cu_launch_q(const e8cu_launch *L, cudaStream_t stream, int sms)
{
    size_t smem = (size_t)(E8CU_THREADS / P) * P * NB * 8 * sizeof(double);
    uint64_t gpb = E8CU_THREADS / P;
    uint64_t need = (L->n_vec + gpb - 1) / gpb;
    unsigned grid = (unsigned)(need < (uint64_t)sms * MB ? need : (uint64_t)sms * MB);
    e8cu_quantize_kernel<P, NB, MB, FAST><<<grid, E8CU_THREADS, smem, stream>>>(*L);
    return cudaGetLastError();
}

/* Two 8-blocks per lane (NB = 2): the fast kernel where e8cu_fast_ok, else the general one.
 * Residency: E8CU_FAST_Q_MINBLOCKS (fast) or E8CU_WIDE_MINBLOCKS (general), 2..4 blocks per SM. */
template <int P>
static cudaError_t e8cu_launch_q_wide(const e8cu_launch *L, cudaStream_t stream, int sms)
{
    if (e8cu_fast_ok(L, P, 2)) {
        int mb = e8cu_min_blocks("E8CU_FAST_Q_MINBLOCKS", 3);
        return mb == 2 ? e8cu_launch_q<P, 2, 2, true>(L, stream, sms)
             : mb == 3 ? e8cu_launch_q<P, 2, 3, true>(L, stream, sms) : e8cu_launch_q<P, 2, 4, true>(L, stream, sms);
    }
    return e8cu_min_blocks("E8CU_WIDE_MINBLOCKS", 2) == 2 ? e8cu_launch_q<P, 2, 2>(L, stream, sms) : e8cu_launch_q<P, 2, 3>(L, stream, sms);
}

static int e8cu_sm_count(void)
{
    int dev = 0, sms = 132;
    if (cudaGetDevice(&dev) == cudaSuccess)
        cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev);
    return sms;
}

extern "C" int e8cu_launch_quantize(const e8cu_launch *L, cudaStream_t stream)
{
    int sms = e8cu_sm_count();
    cudaError_t e = cudaSuccess;
    if (L->n_vec > 0) {
        /* lanes per vector: two 8-blocks per lane (NB = 2) halves the per-vector work every
         * lane repeats (locating, scale) and the shuffle stages; E8CU_NARROW=1 selects one
         * 8-block per lane (a tuning knob; results are identical) */
        uint32_t R = L->R;
        int mb = e8cu_min_blocks("E8CU_Q_MINBLOCKS", 3);
        const char *nw = getenv("E8CU_NARROW");
        if (nw && *nw == '1' && R <= 32) {
            e = R <= 8 ? e8cu_launch_q<8, 1, 4>(L, stream, sms)
              : mb == 2 ? (R <= 16 ? e8cu_launch_q<16, 1, 2>(L, stream, sms) : e8cu_launch_q<32, 1, 2>(L, stream, sms))
              : mb == 3 ? (R <= 16 ? e8cu_launch_q<16, 1, 3>(L, stream, sms) : e8cu_launch_q<32, 1, 3>(L, stream, sms))
                        : (R <= 16 ? e8cu_launch_q<16, 1, 4>(L, stream, sms) : e8cu_launch_q<32, 1, 3>(L, stream, sms));
        } else if (R <= 8) e = e8cu_launch_q<8, 1, 4>(L, stream, sms);
        else if (R > 32) e = e8cu_fast_ok(L, 32, 2) ? e8cu_launch_q<32, 2, 2, true>(L, stream, sms) : e8cu_launch_q<32, 2, 2>(L, stream, sms);
        else e = R <= 16 ? e8cu_launch_q_wide<8>(L, stream, sms) : e8cu_launch_q_wide<16>(L, stream, sms);
        if (e != cudaSuccess) return (int)e;
    }
    if (L->n_raw_blocks > 0) {
        uint64_t need = (L->n_raw_blocks + E8CU_THREADS - 1) / E8CU_THREADS;
        unsigned grid = (unsigned)(need < (uint64_t)sms * 8 ? need : (uint64_t)sms * 8);
        e8cu_raw_kernel<<<grid, E8CU_THREADS, 0, stream>>>(*L);
        e = cudaGetLastError();
    }
    return (int)e;
}
