/* e8cu_test_kernels.cu: device entry points for test_e8cu_kernels.c: the quantize kernel's
 * building blocks (e8cu_device.cuh) run alone, so the test can check them exhaustively or on
 * crafted inputs that whole frames rarely reach (ties in the E8 search, extreme quotients). */
#include "codec/cuda/e8cu_device.cuh"

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

__global__ void e8cu_tk_e8_kernel(const float *t, int16_t *p2, size_t n_blocks)
{
    for (size_t b = (size_t)blockIdx.x * blockDim.x + threadIdx.x; b < n_blocks; b += (size_t)gridDim.x * blockDim.x) {
        float x[8];
        int16_t p[8];
#pragma unroll
        for (int i = 0; i < 8; i++) x[i] = t[8 * b + i];
        e8cu_e8_block(x, p);
#pragma unroll
        for (int i = 0; i < 8; i++) p2[8 * b + i] = p[i];
    }
}

/* Nearest E8 points (as points2) of n_blocks 8-blocks h_t on the device. Returns a cudaError_t. */
extern "C" int e8cu_test_e8(const float *h_t, int16_t *h_p2, size_t n_blocks)
{
    float *d_t = NULL;
    int16_t *d_p = NULL;
    cudaError_t e = cudaMalloc((void **)&d_t, n_blocks * 8 * sizeof(float));
    if (!e) e = cudaMalloc((void **)&d_p, n_blocks * 8 * sizeof(int16_t));
    if (!e) e = cudaMemcpy(d_t, h_t, n_blocks * 8 * sizeof(float), cudaMemcpyHostToDevice);
    if (!e) {
        e8cu_tk_e8_kernel<<<512, 256>>>(d_t, d_p, n_blocks);
        e = cudaGetLastError();
    }
    if (!e) e = cudaMemcpy(h_p2, d_p, n_blocks * 8 * sizeof(int16_t), cudaMemcpyDeviceToHost);
    cudaFree(d_t);
    cudaFree(d_p);
    return (int)e;
}

__global__ void e8cu_tk_f16_kernel(uint64_t n_groups, unsigned long long *bad, unsigned long long *first)
{
    for (uint64_t g = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; g < n_groups; g += (uint64_t)gridDim.x * blockDim.x) {
        float x[8];
#pragma unroll
        for (int i = 0; i < 8; i++) x[i] = __uint_as_float((uint32_t)(8 * g + i));
        uint4 w;
        e8cu_store8(&w, E8C_DTYPE_F16, x);
        const uint32_t ww[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
        for (int i = 0; i < 8; i++) {
            uint16_t got = (uint16_t)(ww[i / 2] >> (16 * (i & 1))), want = e8cu_f32_to_f16_sat(x[i]);
            if (got != want) {
                atomicAdd(bad, 1ull);
                atomicMin(first, (unsigned long long)(8 * g + i));
            }
        }
    }
}

/* The decoder's fp16 store (e8cu_store8: packed conversion, saturating redo) against the
 * per-element saturating rule, for the fp32 bit patterns 0 .. 8·n_groups-1 (2^29 groups: all). */
extern "C" int e8cu_test_f16_store(uint64_t n_groups, unsigned long long *bad, unsigned long long *first)
{
    unsigned long long *d_r = NULL, init[2] = {0, ~0ull};
    cudaError_t e = cudaMalloc((void **)&d_r, sizeof init);
    if (!e) e = cudaMemcpy(d_r, init, sizeof init, cudaMemcpyHostToDevice);
    if (!e) {
        e8cu_tk_f16_kernel<<<2048, 256>>>(n_groups, d_r, d_r + 1);
        e = cudaGetLastError();
    }
    if (!e) e = cudaMemcpy(init, d_r, sizeof init, cudaMemcpyDeviceToHost);
    *bad = init[0];
    *first = init[1];
    cudaFree(d_r);
    return (int)e;
}
