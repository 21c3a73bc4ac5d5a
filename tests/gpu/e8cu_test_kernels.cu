/* e8cu_test_kernels.cu: device entry points for test_e8cu_kernels.c: the quantize kernel's
 * building blocks (e8cu_device.cuh) run alone, so the test can check them exhaustively or on
 * crafted inputs that whole frames rarely reach (ties in the E8 search, extreme quotients). */
#include "codec/cuda/e8cu_fastq.cuh"

/* x of sweep item g: exhaustive (mode 0: every fp32 in [1, 2), 2^23 of them, per scale) or
 * hashed (mode 1: any 32-bit pattern, NaN and inf included) */
__device__ __forceinline__ uint32_t e8cu_tk_hash(uint64_t g)
{
    g ^= g >> 33; g *= 0xff51afd7ed558ccdull; g ^= g >> 33; g *= 0xc4ceb9fe1a85ec53ull; g ^= g >> 33;
    return (uint32_t)g;
}

__global__ void e8cu_tk_div_kernel(const float *scales, uint32_t n_scales, uint32_t per_scale, int mode,
                                   unsigned long long *bad, unsigned long long *first)
{
    const uint64_t total = (uint64_t)n_scales * per_scale;
    for (uint64_t g = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; g < total; g += (uint64_t)gridDim.x * blockDim.x) {
        const uint32_t k = (uint32_t)(g / per_scale), j = (uint32_t)(g % per_scale);
        const float sf = scales[k];
        const uint32_t xb = mode == 0 ? 0x3f800000u + j : e8cu_tk_hash(g);
        const float x = __uint_as_float(xb);
        const e8cu_div D = e8cu_div_init(sf);
        const float q = e8cu_div_by(D, x), ref = x / sf;
        if (__float_as_uint(q) != __float_as_uint(ref)) {
            atomicAdd(bad, 1ull);
            atomicMin(first, ((unsigned long long)__float_as_uint(sf) << 32) | xb);
        }
    }
}

/* Divides with e8cu_div_by and compares with IEEE x / sf bit for bit. Returns a cudaError_t;
 * *bad = mismatches, *first = (sf bits << 32 | x bits) of the smallest mismatch. */
extern "C" int e8cu_test_div(const float *h_scales, uint32_t n_scales, uint32_t per_scale, int mode,
                             unsigned long long *bad, unsigned long long *first)
{
    float *d_s = NULL;
    unsigned long long *d_r = NULL, init[2] = {0, ~0ull};
    cudaError_t e = cudaMalloc((void **)&d_s, n_scales * sizeof(float));
    if (!e) e = cudaMalloc((void **)&d_r, sizeof init);
    if (!e) e = cudaMemcpy(d_s, h_scales, n_scales * sizeof(float), cudaMemcpyHostToDevice);
    if (!e) e = cudaMemcpy(d_r, init, sizeof init, cudaMemcpyHostToDevice);
    if (!e) {
        e8cu_tk_div_kernel<<<1024, 256>>>(d_s, n_scales, per_scale, mode, d_r, d_r + 1);
        e = cudaGetLastError();
    }
    if (!e) e = cudaMemcpy(init, d_r, sizeof init, cudaMemcpyDeviceToHost);
    *bad = init[0];
    *first = init[1];
    cudaFree(d_s);
    cudaFree(d_r);
    return (int)e;
}

/* mode 0: the exact rule (e8cu_e8_block); mode 1: the fast path with its fallback
 * (e8cu_e8_point), counting in *n_fast the blocks the fast path decided alone */
__global__ void e8cu_tk_e8_kernel(const float *t, int16_t *p2, size_t n_blocks, int mode, unsigned long long *n_fast)
{
    unsigned long long nf = 0;
    for (size_t b = (size_t)blockIdx.x * blockDim.x + threadIdx.x; b < n_blocks; b += (size_t)gridDim.x * blockDim.x) {
        float x[8];
        int16_t p[8];
#pragma unroll
        for (int i = 0; i < 8; i++) x[i] = t[8 * b + i];
        if (mode == 0) {
            e8cu_e8_block(x, p);
        } else {
            /* the bound the fast path is given: max|t_i| itself (the tightest), or (odd
             * blocks) a loose one, 16 times larger, as the kernel's per-vector bound is */
            float mt = 0.0f;
#pragma unroll
            for (int i = 0; i < 8; i++) mt = fmaxf(mt, fabsf(x[i]));
            if (b & 1) mt *= 16.0f;
            uint32_t w[4];
            nf += (unsigned long long)e8cu_e8_fast(x, e8cu_e8_thresholds(mt), w);
            e8cu_e8_point(x, mt, w);
#pragma unroll
            for (int i = 0; i < 8; i++) p[i] = (int16_t)(w[i / 2] >> (16 * (i & 1)));
        }
#pragma unroll
        for (int i = 0; i < 8; i++) p2[8 * b + i] = p[i];
    }
    if (mode) atomicAdd(n_fast, nf);
}

/* Nearest E8 points (as points2) of n_blocks 8-blocks h_t on the device, by the exact rule
 * (mode 0) or the fast path and its fallback (mode 1; *n_fast: blocks the fast path decided).
 * Returns a cudaError_t. */
extern "C" int e8cu_test_e8(const float *h_t, int16_t *h_p2, size_t n_blocks, int mode, unsigned long long *n_fast)
{
    float *d_t = NULL;
    int16_t *d_p = NULL;
    unsigned long long *d_n = NULL;
    *n_fast = 0;
    cudaError_t e = cudaMalloc((void **)&d_t, n_blocks * 8 * sizeof(float));
    if (!e) e = cudaMalloc((void **)&d_p, n_blocks * 8 * sizeof(int16_t));
    if (!e) e = cudaMalloc((void **)&d_n, sizeof *d_n);
    if (!e) e = cudaMemset(d_n, 0, sizeof *d_n);
    if (!e) e = cudaMemcpy(d_t, h_t, n_blocks * 8 * sizeof(float), cudaMemcpyHostToDevice);
    if (!e) {
        e8cu_tk_e8_kernel<<<512, 256>>>(d_t, d_p, n_blocks, mode, d_n);
        e = cudaGetLastError();
    }
    if (!e) e = cudaMemcpy(h_p2, d_p, n_blocks * 8 * sizeof(int16_t), cudaMemcpyDeviceToHost);
    if (!e) e = cudaMemcpy(n_fast, d_n, sizeof *d_n, cudaMemcpyDeviceToHost);
    cudaFree(d_t);
    cudaFree(d_p);
    cudaFree(d_n);
    return (int)e;
}

/* One thread per vector of n (power of two) elements: the scale code through e8cu_scale_fast
 * (from an fp32 fma sum of squares), or where it cannot decide, e8cu_scale_code from the exact
 * f64 sum of FORMAT §4. *n_fast counts the vectors the fast path decided. */
__global__ void e8cu_tk_scale_kernel(const float *y, uint32_t n, size_t n_vec, float step, uint16_t *sc,
                                     unsigned long long *n_fast)
{
    unsigned long long nf = 0;
    for (size_t v = (size_t)blockIdx.x * blockDim.x + threadIdx.x; v < n_vec; v += (size_t)gridDim.x * blockDim.x) {
        const float *x = y + v * n;
        float T = 0.0f;
        for (uint32_t j = 0; j < n; j++) T = __fmaf_rn(x[j], x[j], T);
        uint16_t s = 0;
        if (e8cu_scale_fast(T, 1.0f / (float)n, step, &s)) {
            nf++;
        } else {
            double A[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (uint32_t j = 0; j < n; j++) A[j % 8] = A[j % 8] + (double)x[j] * (double)x[j];
            double Td = ((A[0] + A[4]) + (A[2] + A[6])) + ((A[1] + A[5]) + (A[3] + A[7]));
            s = Td == 0.0 ? 0 : e8cu_scale_code(sqrt(Td / n), step);
        }
        sc[v] = s;
    }
    atomicAdd(n_fast, nf);
}

/* Scale codes of n_vec vectors of n elements (h_y) on the device, see e8cu_tk_scale_kernel.
 * Returns a cudaError_t. */
extern "C" int e8cu_test_scale(const float *h_y, uint32_t n, size_t n_vec, float step, uint16_t *h_sc,
                               unsigned long long *n_fast)
{
    float *d_y = NULL;
    uint16_t *d_s = NULL;
    unsigned long long *d_n = NULL;
    *n_fast = 0;
    cudaError_t e = cudaMalloc((void **)&d_y, n_vec * n * sizeof(float));
    if (!e) e = cudaMalloc((void **)&d_s, n_vec * sizeof(uint16_t));
    if (!e) e = cudaMalloc((void **)&d_n, sizeof *d_n);
    if (!e) e = cudaMemset(d_n, 0, sizeof *d_n);
    if (!e) e = cudaMemcpy(d_y, h_y, n_vec * n * sizeof(float), cudaMemcpyHostToDevice);
    if (!e) {
        e8cu_tk_scale_kernel<<<256, 128>>>(d_y, n, n_vec, step, d_s, d_n);
        e = cudaGetLastError();
    }
    if (!e) e = cudaMemcpy(h_sc, d_s, n_vec * sizeof(uint16_t), cudaMemcpyDeviceToHost);
    if (!e) e = cudaMemcpy(n_fast, d_n, sizeof *d_n, cudaMemcpyDeviceToHost);
    cudaFree(d_y);
    cudaFree(d_s);
    cudaFree(d_n);
    return (int)e;
}

__global__ void e8cu_tk_f16_kernel(uint64_t n_groups, int bf16, unsigned long long *bad, unsigned long long *first)
{
    for (uint64_t g = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; g < n_groups; g += (uint64_t)gridDim.x * blockDim.x) {
        float x[8];
#pragma unroll
        for (int i = 0; i < 8; i++) x[i] = __uint_as_float((uint32_t)(8 * g + i));
        uint4 w;
        e8cu_store8(&w, bf16 ? E8C_DTYPE_BF16 : E8C_DTYPE_F16, x);
        const uint32_t ww[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int i = 0; i < 8; i++) {
            uint16_t got = (uint16_t)(ww[i / 2] >> (16 * (i & 1)));
            uint16_t want = bf16 ? e8cu_f32_to_bf16(x[i]) : e8cu_f32_to_f16_sat(x[i]);
            if (got != want) {
                atomicAdd(bad, 1ull);
                atomicMin(first, (unsigned long long)(8 * g + i));
            }
        }
    }
}

/* The decoder's fp16 (bf16 = 0) or bf16 store (e8cu_store8: packed conversion, the per-element
 * rule redone where a half came out inf or NaN) against the per-element rule, for the fp32
 * bit patterns 0 .. 8·n_groups-1 (2^29 groups: all). */
extern "C" int e8cu_test_f16_store(uint64_t n_groups, int bf16, unsigned long long *bad, unsigned long long *first)
{
    unsigned long long *d_r = NULL, init[2] = {0, ~0ull};
    cudaError_t e = cudaMalloc((void **)&d_r, sizeof init);
    if (!e) e = cudaMemcpy(d_r, init, sizeof init, cudaMemcpyHostToDevice);
    if (!e) {
        e8cu_tk_f16_kernel<<<2048, 256>>>(n_groups, bf16, d_r, d_r + 1);
        e = cudaGetLastError();
    }
    if (!e) e = cudaMemcpy(init, d_r, sizeof init, cudaMemcpyDeviceToHost);
    *bad = init[0];
    *first = init[1];
    cudaFree(d_r);
    return (int)e;
}
