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
#include "codec/cuda/e8cu_fastq.cuh"

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

/* Item and head of vector v: by multiply-high (e8cu_fastq.cuh) where the host set the magic
 * numbers (every item has the same vector count, fewer than 2^31 vectors: the launch's
 * constants, no registers), else by division. */
__device__ __forceinline__ e8cu_vec e8cu_locate(const e8cu_launch &L, uint64_t v)
{
    e8cu_vec r;
    uint32_t lv;
    if (L.vec_magic) {
        r.item = (int)(__umulhi((uint32_t)v << 1, L.vec_magic) >> L.vec_shift);
        lv = (uint32_t)v - (uint32_t)r.item * L.vec_per_item;
        r.h = __umulhi(lv << 1, L.nq_magic) >> L.nq_shift;
        r.j = lv - r.h * L.nq_uni;
    } else if (L.vb_shift != 0xffu) {
        r.item = e8cu_find_item(L, v, 0); /* the bucket table; n_vec < 2^31 */
        const e8cu_kitem &it = L.items[r.item];
        lv = (uint32_t)v - (uint32_t)it.vec_begin;
        r.h = __umulhi(lv << 1, it.nq_magic) >> it.nq_shift;
        r.j = lv - r.h * it.n_q;
    } else {
        r.item = e8cu_find_item(L, v, 0);
        const e8cu_kitem &it = L.items[r.item];
        lv = (uint32_t)(v - it.vec_begin);
        r.h = lv / it.n_q;
        r.j = lv - r.h * it.n_q;
    }
    const e8cu_kitem &it = L.items[r.item];
    r.tok = it.n_raw_head + r.j;
    int64_t esz = it.dtype == E8C_DTYPE_F32 ? 4 : 2;
    r.src = (const char *)it.src + ((int64_t)r.h * it.stride_head + (int64_t)r.tok * it.stride_token) * esz;
    return r;
}

/* Load of 8-block b of a vector at src, and its conversion to fp32. DT: 0 any dtype (two
 * 16-byte words per block held, fp32 possible), 1 or 2: every item of the launch is fp16 or
 * bf16 (one word, a conversion without a dtype test). */
template <int DT>
__device__ __forceinline__ void e8cu_ldv(const char *src, int b, uint32_t dtype, uint4 (&r)[DT ? 1 : 2])
{
    constexpr bool W16 = DT != 0;
    if (W16) {
        r[0] = __ldg((const uint4 *)(src + (size_t)b * 16));
    } else {
        r[0] = __ldg((const uint4 *)(src + (size_t)b * 8 * (dtype == E8C_DTYPE_F32 ? 4 : 2)));
        if (dtype == E8C_DTYPE_F32) r[W16 ? 0 : 1] = __ldg((const uint4 *)(src + (size_t)b * 32) + 1);
    }
}

template <int DT>
__device__ __forceinline__ void e8cu_cvtv(const uint4 (&r)[DT ? 1 : 2], uint32_t dtype, float x[8])
{
    uint4 rr[2] = {r[0], r[DT ? 0 : 1]};
    e8cu_cvt8(rr, DT == 1 ? (uint32_t)E8C_DTYPE_F16 : DT == 2 ? (uint32_t)E8C_DTYPE_BF16 : dtype, x);
}

/* FORMAT §1 on the group's vector (quantized index vq of its item, at src), read again from
 * its source: every bad element reported. Arguments by value: a struct by reference would
 * live in local memory in the caller's hot loop. */
template <int P, int NB>
__device__ __noinline__ void e8cu_check_vec(const e8cu_launch &L, int item, const char *src, uint64_t vq, int lane)
{
    const e8cu_kitem &it = L.items[item];
    const int R = (int)L.R, n = (int)L.head_dim;
    for (int s = NB - 1; s >= 0; s--) {
        const int b = lane + P * s;
        if (b >= R) continue;
        float x[8];
        e8cu_load8(src + (size_t)b * 8 * (it.dtype == E8C_DTYPE_F32 ? 4 : 2), it.dtype, x);
        for (int i = 7; i >= 0; i--) {
            int c = e8cu_check(x[i]);
            if (c) e8cu_report(L, it, 1, vq * n + 8 * b + i, c);
        }
    }
}

/* FORMAT §4's scale from the f64 sum of squares: A[l] = sum over j = l + 8k ascending (through
 * shared memory), then the fixed tree. All P lanes of the group call it together. */
template <int P, int NB, bool FAST>
__device__ __forceinline__ uint16_t e8cu_scale_exact(const float x[NB][8], double *sm, int lane, int gbase,
                                                     unsigned gmask, const e8cu_launch &L, float step)
{
    const int R = (int)L.R, n = (int)L.head_dim;
#pragma unroll
    for (int s = 0; s < NB; s++) {
        int b = lane + P * s;
        if (FAST || b < R) {
            double2 *d2 = (double2 *)(sm + 8 * b);
#pragma unroll
            for (int i = 0; i < 8; i += 2)
                d2[i / 2] = make_double2((double)x[s][i] * (double)x[s][i], (double)x[s][i + 1] * (double)x[s][i + 1]);
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
    if (T == 0.0) return 0;
    /* T / n: for a power-of-two n the exact scaling by 1/n (T >= 2^-298, no underflow) */
    double rms = sqrt(L.pow2 ? T * (1.0 / (double)n) : T / (double)n);
    return e8cu_scale_code(rms, step);
}

template <int P, int NB, int MB, bool FAST, int DT = 0, bool CREGS = true>
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
    e8cu_hconst<NB> hc;
    e8cu_hconst_init<P, NB>(hc, lane, L);
    const uint64_t stride = (uint64_t)gridDim.x * gpb;
    /* exact: FAST implies a power-of-two n. CREGS: 1/n and the Hadamard gain are read from the
     * launch constants where they are used, so that they take no registers (with them in
     * registers the bench's kernel spilled one value in the loop: a store and a load per
     * vector, and 1/n: a load per vector) */
    const float inv_n = FAST && CREGS ? L.inv_n : 1.0f / (float)n;

    /* FAST launches follow each other with programmatic dependent launch (e8cu_launch_q):
     * the next launch may start its blocks once every block of this one runs */
    if (FAST) asm volatile("griddepcontrol.launch_dependents;" ::: "memory");

    /* software pipeline: the next vector's bytes are requested before this one is processed */
    uint64_t v = (uint64_t)blockIdx.x * gpb + grp;
    uint4 nraw[NB][DT ? 1 : 2]; /* DT: every item 16-bit, one 16-byte load per 8-block */
    e8cu_vec nv = {0, 0, 0, 0, nullptr};
    if (v < L.n_vec) {
        nv = e8cu_locate(L, v);
#pragma unroll
        for (int s = 0; s < NB; s++)
            if (FAST || lane + P * s < R)
                e8cu_ldv<DT>(nv.src, lane + P * s, L.items[nv.item].dtype, nraw[s]);
    }
    for (; v < L.n_vec; v += stride) {
        const e8cu_vec cv = nv;
        const e8cu_kitem &it = L.items[cv.item];
        float x[NB][8];
        int bad = 0;
#pragma unroll
        for (int s = 0; s < NB; s++) {
            if (FAST || lane + P * s < R) {
                e8cu_cvtv<DT>(nraw[s], it.dtype, x[s]);
                if (!FAST) {
#pragma unroll
                    for (int i = 0; i < 8; i++) bad |= !(fabsf(x[s][i]) <= E8CU_MAX_ABS); /* NaN, inf, > 2^64 */
                }
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
                if (FAST || lane + P * s < R)
                    e8cu_ldv<DT>(nv.src, lane + P * s, nt.dtype, nraw[s]);
        }
        if (!FAST && bad) {
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
        e8cu_bh<P, NB, FAST, FAST && CREGS>(x, lane, gmask, hc, L.gain_n);
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

        /* scale, FORMAT §4. FAST: from an fp32 sum of squares where e8cu_scale_fast proves the
         * code equal to the exact one; else (a near-tie of the code, extreme or bad input: then
         * also the input check of FORMAT §1) the exact f64 sum. The group decides together. */
        const float step = it.kind == E8C_K ? L.k_step : L.v_step;
        uint16_t sc = 0;
        int fastsc = 0;
        float Tq = 0.0f;
        if (FAST) {
            float a0 = x[0][0] * x[0][0], a1 = x[NB - 1][0] * x[NB - 1][0];
#pragma unroll
            for (int i = 1; i < 8; i++) {
                a0 = __fmaf_rn(x[0][i], x[0][i], a0);
                a1 = __fmaf_rn(x[NB - 1][i], x[NB - 1][i], a1);
            }
            float T = NB == 2 ? a0 + a1 : a0;
#pragma unroll
            for (int m = 1; m < P; m <<= 1) T += __shfl_xor_sync(gmask, T, m);
            Tq = T;
            fastsc = e8cu_scale_fast(T, inv_n, step, &sc);
            if (!fastsc) e8cu_check_vec<P, NB>(L, cv.item, cv.src, (uint64_t)cv.h * it.n_q + cv.j, lane);
        }
        if (!fastsc) sc = e8cu_scale_exact<P, NB, FAST>(x, sm, lane, gbase, gmask, L, step);
        const e8cu_div D = e8cu_div_init(e8cu_bf16_to_f32(sc));
        /* FAST: a bound on every |t| of the vector for e8cu_e8_fast: |y_j| <= sqrt(T) and T~ is
         * within 40u of T, sqrt by rsqrtf within 2 ulp; 1.01 covers both and the division */
        e8cu_e8thr th = {0.0f, 0.0f};
        if (FAST && fastsc) th = e8cu_e8_thresholds(1.01f * (Tq * rsqrtf(Tq)) * D.r);

        int16_t *p2 = (int16_t *)(L.q + it.off_points2) + ((size_t)cv.h * it.n_q + cv.j) * n;
        /* all blocks' fast paths first, fallbacks after: the blocks' E8 searches are
         * independent, so their long dependency chains can interleave */
        uint32_t w[NB][4];
        int ok[NB];
#pragma unroll
        for (int s = 0; s < NB; s++) {
            ok[s] = 0;
            if ((FAST || lane + P * s < R) && fastsc) {
                /* the fast division of e8cu_div_by without its range checks: the scale is in
                 * its range here, and e8cu_e8_fast fails on any |t| < 2^-22 (where the
                 * quotient might not be exact; its guard is >= 2^-22), |t| < 2^11 by the scale */
                float t[8];
#pragma unroll
                for (int i = 0; i < 8; i++) {
                    const float q0 = __fmul_rn(x[s][i], D.r);
                    t[i] = __fmaf_rn(__fmaf_rn(-q0, D.sf, x[s][i]), D.r, q0);
                }
                ok[s] = e8cu_e8_fast(t, th, w[s]);
            }
        }
#pragma unroll
        for (int s = 0; s < NB; s++) {
            int b = lane + P * s;
            if (FAST || b < R) {
                if (!ok[s]) {
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
#pragma unroll
                    for (int i = 0; i < 4; i++)
                        w[s][i] = (uint32_t)(uint16_t)pt[2 * i] | ((uint32_t)(uint16_t)pt[2 * i + 1] << 16);
                }
                *(uint4 *)(p2 + 8 * b) = make_uint4(w[s][0], w[s][1], w[s][2], w[s][3]);
            }
        }
        if (lane == 0) ((uint16_t *)(L.q + it.off_scales))[(size_t)cv.h * it.n_q + cv.j] = sc;
    }
    /* a block ends only after the previous kernel of the stream has completed (and its
     * writes are visible): so this launch completes after it, and whatever the stream runs
     * next without the attribute waits for both, as in plain stream order. Returns at once
     * when the launch did not overlap a previous kernel. */
    if (FAST) asm volatile("griddepcontrol.wait;" ::: "memory");
}

/* Raw-kept tokens: one thread per 8-block. The raw array is [heads][n_raw][n] in the source
 * dtype: head tokens (0 .. n_raw_head-1), then tail tokens (n_tokens - n_raw_tail ..). */
__global__ void __launch_bounds__(E8CU_THREADS) e8cu_raw_kernel(const __grid_constant__ e8cu_launch L)
{
    /* may overlap the previous launch's kernels and be overlapped by the next: see
     * e8cu_quantize_kernel and e8cu_launch_pdl */
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
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
    asm volatile("griddepcontrol.wait;" ::: "memory");
}

/* Launches kernel k with (pdl = 1) or without programmatic dependent launch (Hopper): with
 * it, k's blocks may start on the multiprocessors that the stream's previous kernel (this
 * call's previous quantize or raw kernel, which lets its dependents start at once) leaves
 * idle at its end; k's blocks end with griddepcontrol.wait, so k still completes after that
 * kernel and the stream's later work waits for both, as in plain stream order. E8CU_PDL=0:
 * plain launches. */
static __thread int e8cu_pdl_next; /* e8cu_launch_quantize -> e8cu_launch_q */

static cudaError_t e8cu_launch_pdl(void (*k)(const e8cu_launch), unsigned grid, size_t smem, cudaStream_t stream,
                                   int pdl, const e8cu_launch *L)
{
    const char *v = getenv("E8CU_PDL");
    if (pdl && !(v && *v == '0')) {
        cudaLaunchConfig_t cfg = {};
        cudaLaunchAttribute at[1];
        at[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        at[0].val.programmaticStreamSerializationAllowed = 1;
        cfg.gridDim = dim3(grid);
        cfg.blockDim = dim3(E8CU_THREADS);
        cfg.dynamicSmemBytes = smem;
        cfg.stream = stream;
        cfg.attrs = at;
        cfg.numAttrs = 1;
        return cudaLaunchKernelEx(&cfg, k, *L);
    }
    k<<<grid, E8CU_THREADS, smem, stream>>>(*L);
    return cudaGetLastError();
}

template <int P, int NB, int MB, bool FAST = false, int DT = 0, bool CREGS = true>
static cudaError_t e8cu_launch_q(const e8cu_launch *L, cudaStream_t stream, int sms)
{
    size_t smem = (size_t)(E8CU_THREADS / P) * P * NB * 8 * sizeof(double);
    uint64_t gpb = E8CU_THREADS / P;
    uint64_t need = (L->n_vec + gpb - 1) / gpb;
    /* fast kernels: E8CU_Q_GRID resident waves of blocks (default 8): blocks that finish
     * early are replaced, so warps that ran slower do not leave multiprocessors idle at the
     * end of a launch (a grid of exactly one wave left them idle ~30% of the time; H200,
     * 2026-11-29: 1 wave 410 GB/s, 2: 520, 4: 616, 8: 676, 32: 622) */
    uint64_t waves = 1;
    if (FAST) {
        const char *g = getenv("E8CU_Q_GRID");
        int gv = g ? atoi(g) : 8;
        waves = gv >= 1 && gv <= 64 ? (uint64_t)gv : 8;
    }
    uint64_t cap = (uint64_t)sms * MB * waves;
    unsigned grid = (unsigned)(need < cap ? need : cap);
    /* only the fast kernels end with griddepcontrol.wait */
    return e8cu_launch_pdl(e8cu_quantize_kernel<P, NB, MB, FAST, DT, CREGS>, grid, smem, stream, FAST && e8cu_pdl_next, L);
}

/* E8CU_CREGS=0: the fast kernel of the bench's shape (P = 8: head_dim 128, 3 blocks per SM)
 * with 1/n and the Hadamard gain in registers, i.e. session 5's kernel, for same-run A/B
 * measurements; results are identical. */
template <int P, int MB, int DT>
static cudaError_t e8cu_launch_q_lv(const e8cu_launch *L, cudaStream_t stream, int sms)
{
    if constexpr (P == 8 && MB == 3) {
        const char *c = getenv("E8CU_CREGS");
        if (c && *c == '0') return e8cu_launch_q<P, 2, MB, true, DT, false>(L, stream, sms);
    }
    return e8cu_launch_q<P, 2, MB, true, DT>(L, stream, sms);
}

/* The fast kernel, specialised where every item is fp16 or every item bf16 (E8CU_W16=0
 * turns that off). */
template <int P, int MB>
static cudaError_t e8cu_launch_q_fast(const e8cu_launch *L, cudaStream_t stream, int sms)
{
    const char *w = getenv("E8CU_W16");
    if (!(w && *w == '0')) {
        if (L->all16 == 1) return e8cu_launch_q_lv<P, MB, 1>(L, stream, sms);
        if (L->all16 == 2) return e8cu_launch_q_lv<P, MB, 2>(L, stream, sms);
    }
    return e8cu_launch_q_lv<P, MB, 0>(L, stream, sms);
}

/* Two 8-blocks per lane (NB = 2): the fast kernel where e8cu_fast_ok, else the general one.
 * Residency: E8CU_FAST_Q_MINBLOCKS (fast) or E8CU_WIDE_MINBLOCKS (general), 2..4 blocks per SM. */
template <int P>
static cudaError_t e8cu_launch_q_wide(const e8cu_launch *L, cudaStream_t stream, int sms)
{
    if (e8cu_fast_ok(L, P, 2)) {
        int mb = e8cu_min_blocks("E8CU_FAST_Q_MINBLOCKS", 3);
        return mb == 2 ? e8cu_launch_q_fast<P, 2>(L, stream, sms)
             : mb == 3 ? e8cu_launch_q_fast<P, 3>(L, stream, sms) : e8cu_launch_q_fast<P, 4>(L, stream, sms);
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
    /* the raw kernel (tiny) first: then the quantize kernel follows a kernel of this call
     * and may overlap it (e8cu_launch_pdl); L->pdl: the stream's previous operation is the
     * previous launch's kernel */
    e8cu_pdl_next = (int)L->pdl;
    if (L->n_raw_blocks > 0) {
        uint64_t need = (L->n_raw_blocks + E8CU_THREADS - 1) / E8CU_THREADS;
        unsigned grid = (unsigned)(need < (uint64_t)sms * 8 ? need : (uint64_t)sms * 8);
        e = e8cu_launch_pdl(e8cu_raw_kernel, grid, 0, stream, e8cu_pdl_next, L);
        if (e != cudaSuccess) return (int)e;
        e8cu_pdl_next = 1;
    }
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
        else if (R > 32) e = e8cu_fast_ok(L, 32, 2) ? e8cu_launch_q_fast<32, 2>(L, stream, sms) : e8cu_launch_q<32, 2, 2>(L, stream, sms);
        else e = R <= 16 ? e8cu_launch_q_wide<8>(L, stream, sms) : e8cu_launch_q_wide<16>(L, stream, sms);
    }
    return (int)e;
}
